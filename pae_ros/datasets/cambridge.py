"""Reader of the Cambridge Landmarks on-disk format (one scene directory).

``<scene>/dataset_train.txt`` / ``dataset_test.txt``: three header lines, then one line per
image ``seqN/frameXXXXX.png X Y Z W P Q R`` where (X, Y, Z) is the camera centre in the
world (metres, up to the reconstruction's scale) and (W, P, Q, R) a wxyz quaternion of the
**world-to-camera** rotation (the camera orientation as stored by the SfM reconstruction).

Frames returned carry the camera-to-world rotation, i.e. the conjugate of the stored
quaternion (normalised first: some stored quaternions are not unit length); the position is
the stored camera centre unchanged.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import Issues, canonical, parse_floats, unit_quat, where
from .types import DatasetError, Frame

HEADER_LINES = 3


def split_file(scene_dir: Path, split: str) -> Path:
    """``<scene_dir>/dataset_<split>.txt``."""
    return Path(scene_dir) / f"dataset_{split}.txt"


def is_scene_dir(d: Path) -> bool:
    """True when ``d`` holds a ``dataset_train.txt`` or ``dataset_test.txt``."""
    return any(split_file(d, s).is_file() for s in ("train", "test"))


def world_to_camera_to_c2w(q_wxyz: np.ndarray) -> np.ndarray:
    """Camera-to-world quaternion (w >= 0) from a unit world-to-camera quaternion: the conjugate."""
    q = np.asarray(q_wxyz, dtype=np.float64) * np.array([1.0, -1.0, -1.0, -1.0])
    return canonical(q)


def parse_line(line: str, path: Path, n: int) -> tuple[str, np.ndarray, np.ndarray]:
    """(relative image path, centre (3,) m, camera-to-world quat (4,)) of one data line."""
    tokens = line.split()
    if len(tokens) != 8:
        raise DatasetError(f"{where(path, n)}: expected 'image X Y Z W P Q R' (8 fields), "
                           f"got {len(tokens)}: {line.strip()!r}")
    vals = parse_floats(tokens[1:], path, n)
    q_w2c = unit_quat(vals[3:], path, n)
    return tokens[0], vals[:3], world_to_camera_to_c2w(q_w2c)


def read_scene(scene_dir: Path, split: str, issues: Issues, check_images: bool = True) -> list[Frame]:
    """Frames of one Cambridge Landmarks scene directory for ``split`` ("train" / "test")."""
    scene_dir = Path(scene_dir).resolve()
    path = split_file(scene_dir, split)
    if not path.is_file():
        raise DatasetError(f"{path}: split file missing")
    frames: list[Frame] = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read split file: {e}") from None
    if not any(line.strip() for line in lines[HEADER_LINES:]):
        issues.report(f"{path}: split file lists no images (after its {HEADER_LINES} header lines)")
        return frames
    for n, line in enumerate(lines, start=1):
        if n <= HEADER_LINES or not line.strip():
            continue
        try:
            rel, pos, quat = parse_line(line, path, n)
        except DatasetError as e:
            issues.report(str(e))
            continue
        image = scene_dir / rel
        if check_images and not image.is_file():
            issues.report(f"{where(path, n)}: image missing: {image}")
            continue
        seq = Path(rel).parts[0] if len(Path(rel).parts) > 1 else ""
        frames.append(Frame(image, pos, quat, scene_dir.name, seq))
    return frames
