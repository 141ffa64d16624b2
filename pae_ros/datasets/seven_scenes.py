"""Reader of the Microsoft 7Scenes on-disk format (one scene directory).

Layout: ``<scene>/TrainSplit.txt`` and ``TestSplit.txt`` list sequences as ``sequenceN``
(``seq-NN`` accepted too), one per line; ``<scene>/seq-NN/frame-XXXXXX.color.png`` with
``frame-XXXXXX.pose.txt``, a 4x4 homogeneous **camera-to-world** matrix (translation in
metres, camera axes x right, y down, z forward as for OpenCV), four whitespace-separated rows.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .. import geometry
from .common import Issues, canonical, parse_floats, where
from .types import DatasetError, Frame

SPLIT_FILES = {"train": "TrainSplit.txt", "test": "TestSplit.txt"}
_SEQ_LINE = re.compile(r"^(?:sequence|seq-?)(\d+)$", re.IGNORECASE)
_FRAME_FILE = re.compile(r"^frame-(\d+)\.(color\.png|pose\.txt)$")

#: tolerance on max |R^T R - I| and on the bottom row of a pose matrix
RIGID_TOL = 1e-3


def sequence_dir_name(seq: int | str) -> str:
    """``1`` / ``"sequence1"`` / ``"seq-1"`` / ``"seq-01"`` -> ``"seq-01"``."""
    if isinstance(seq, (int, np.integer)):
        return f"seq-{int(seq):02d}"
    m = _SEQ_LINE.match(str(seq).strip())
    if not m:
        raise ValueError(f"not a 7Scenes sequence name: {seq!r}")
    return f"seq-{int(m.group(1)):02d}"


def is_scene_dir(d: Path) -> bool:
    """True when ``d`` looks like a 7Scenes scene (a split file or a ``seq-NN`` folder)."""
    if any((d / f).is_file() for f in SPLIT_FILES.values()):
        return True
    return d.is_dir() and any(c.is_dir() and re.fullmatch(r"seq-\d+", c.name) for c in d.iterdir())


def read_split_file(path: Path, issues: Issues) -> list[str]:
    """Sequence folder names (``seq-NN``) listed in a split file, in file order."""
    if not path.is_file():
        raise DatasetError(f"{path}: split file missing")
    seqs: list[str] = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read split file: {e}") from None
    if not text.strip():
        issues.report(f"{path}: split file is empty (expected one 'sequenceN' per line)")
        return seqs
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        m = _SEQ_LINE.match(line)
        if not m:
            issues.report(f"{where(path, n)}: expected 'sequenceN' or 'seq-NN', got {line!r}")
            continue
        name = f"seq-{int(m.group(1)):02d}"
        if name not in seqs:
            seqs.append(name)
    return seqs


def read_pose_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(position (3,) m, quaternion (4,) wxyz w>=0) of a camera-to-world 4x4 pose file.

    Raises DatasetError naming the file (and line) for a missing file, a malformed or
    non-finite row, or a matrix that is not a rigid transform.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DatasetError(f"{path}: pose file missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read pose file: {e}") from None
    rows = []
    for n, raw in enumerate(text.splitlines(), start=1):
        tokens = raw.split()
        if not tokens:
            continue
        if len(tokens) != 4 or len(rows) == 4:
            raise DatasetError(f"{where(path, n)}: expected 4 rows of 4 numbers, got {raw.strip()!r}")
        rows.append(parse_floats(tokens, path, n))
    if len(rows) != 4:
        raise DatasetError(f"{path}: expected 4 rows of 4 numbers, found {len(rows)} row(s)")
    T = np.stack(rows)
    R = T[:3, :3]
    if (np.max(np.abs(R.T @ R - np.eye(3))) > RIGID_TOL or np.linalg.det(R) <= 0
            or np.max(np.abs(T[3] - [0.0, 0.0, 0.0, 1.0])) > RIGID_TOL):
        raise DatasetError(f"{path}: lines 1-4: not a rigid camera-to-world transform "
                           f"(rotation not orthonormal with det +1, or bottom row not 0 0 0 1)")
    pos, quat = geometry.matrix_to_pose(T)
    return pos, canonical(quat)


def read_scene(scene_dir: Path, split: str, issues: Issues, check_images: bool = True) -> list[Frame]:
    """Frames of one 7Scenes scene directory for ``split`` ("train" / "test")."""
    scene_dir = Path(scene_dir).resolve()
    scene = scene_dir.name
    frames: list[Frame] = []
    for seq in read_split_file(scene_dir / SPLIT_FILES[split], issues):
        seq_dir = scene_dir / seq
        if not seq_dir.is_dir():
            issues.report(f"{seq_dir}: sequence folder missing (listed in {SPLIT_FILES[split]})")
            continue
        found: dict[int, dict[str, str]] = {}
        for name in os.listdir(seq_dir):
            m = _FRAME_FILE.match(name)
            if m:
                found.setdefault(int(m.group(1)), {})[m.group(2)] = name
        for idx in sorted(found):
            names = found[idx]
            stem = next(iter(names.values())).split(".", 1)[0]  # "frame-XXXXXX"
            image = seq_dir / names.get("color.png", stem + ".color.png")
            pose = seq_dir / names.get("pose.txt", stem + ".pose.txt")
            if "pose.txt" not in names:
                issues.report(f"{pose}: pose file missing for image {image.name}")
                continue
            if check_images and "color.png" not in names:
                issues.report(f"{image}: image missing (pose file {pose.name} exists)")
                continue
            try:
                pos, quat = read_pose_file(pose)
            except DatasetError as e:
                issues.report(str(e))
                continue
            frames.append(Frame(image, pos, quat, scene, seq))
    return frames
