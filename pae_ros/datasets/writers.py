"""Writers of the on-disk formats read by :func:`pae_ros.datasets.read_dataset`.

All poses passed in are **camera-to-world**: position = camera centre in the world (metres),
quaternion wxyz (normalised here) rotating camera-frame vectors (OpenCV optical axes) into the
world frame. Numbers are written with 17 significant digits, so a write / read round trip
reproduces positions and quaternions (up to sign, readers return ``w >= 0``) to ~1e-15.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .. import geometry
from .cambridge import HEADER_LINES, split_file
from .common import INTRINSICS_FILE
from .images import write_rgb
from .label_csv import COLUMNS, row_convention
from .seven_scenes import SPLIT_FILES, sequence_dir_name
from .types import CameraIntrinsics, Frame

CAMBRIDGE_HEADER = ["Visual Landmark Dataset V1", "ImageFile, Camera Position [X Y Z W P Q R]", ""]
assert len(CAMBRIDGE_HEADER) == HEADER_LINES


def _fmt(values: Iterable[float]) -> list[str]:
    return [f"{float(v):.17g}" for v in values]


def _pose(position, quaternion) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(position, dtype=np.float64).reshape(3)
    q = geometry.normalize_quat(np.asarray(quaternion, dtype=np.float64).reshape(4))
    if not np.all(np.isfinite(p)):
        raise ValueError(f"position not finite: {p}")
    return p, q


def write_7scenes_frame(scene_dir: str | Path, sequence: int | str, index: int,
                        rgb_uint8_HxWx3: np.ndarray | None, position, quaternion) -> tuple[Path, Path]:
    """Write ``<scene_dir>/seq-NN/frame-XXXXXX.color.png`` (RGB array, stored BGR by OpenCV) and
    ``frame-XXXXXX.pose.txt`` (4x4 camera-to-world matrix, metres).

    ``sequence``: ``1`` / ``"seq-01"`` / ``"sequence1"``. ``rgb_uint8_HxWx3=None`` writes only the
    pose file. Returns (image path, pose path).
    """
    seq_dir = Path(scene_dir) / sequence_dir_name(sequence)
    seq_dir.mkdir(parents=True, exist_ok=True)
    stem = f"frame-{int(index):06d}"
    image, pose = seq_dir / f"{stem}.color.png", seq_dir / f"{stem}.pose.txt"
    p, q = _pose(position, quaternion)
    T = geometry.pose_to_matrix(p, q)
    pose.write_text("".join(" ".join(_fmt(row)) + "\n" for row in T))
    if rgb_uint8_HxWx3 is not None:
        write_rgb(image, rgb_uint8_HxWx3)
    return image, pose


def write_7scenes_splits(scene_dir: str | Path, train_seqs: Sequence[int | str],
                         test_seqs: Sequence[int | str]) -> None:
    """Write ``TrainSplit.txt`` / ``TestSplit.txt`` with one ``sequenceN`` line per sequence."""
    scene_dir = Path(scene_dir)
    scene_dir.mkdir(parents=True, exist_ok=True)
    for split, seqs in (("train", train_seqs), ("test", test_seqs)):
        lines = [f"sequence{int(sequence_dir_name(s)[4:])}" for s in seqs]
        (scene_dir / SPLIT_FILES[split]).write_text("".join(line + "\n" for line in lines))


def write_intrinsics(scene_dir: str | Path, intrinsics: CameraIntrinsics) -> Path:
    """Write ``<scene_dir>/intrinsics.json`` (pixels). Returns its path."""
    path = Path(scene_dir) / INTRINSICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(intrinsics.to_json(), indent=2) + "\n")
    return path


def write_cambridge(scene_dir: str | Path, split: str,
                    rows: Iterable[tuple[str, Sequence[float], Sequence[float]]]) -> Path:
    """Write ``<scene_dir>/dataset_<split>.txt`` in the Cambridge Landmarks format.

    ``rows``: (image path relative to ``scene_dir`` e.g. ``"seq1/frame00001.png"``, camera centre
    (3,) m, **camera-to-world** quaternion wxyz). The file stores the centre and the
    **world-to-camera** quaternion (the conjugate), after three header lines. Images are not
    written (use :func:`pae_ros.datasets.images.write_rgb`). Returns the file path.
    """
    path = split_file(Path(scene_dir), split)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = list(CAMBRIDGE_HEADER)
    for rel, position, quaternion in rows:
        p, q = _pose(position, quaternion)
        rel = str(rel).replace("\\", "/")
        if not rel or any(c.isspace() for c in rel):
            raise ValueError(f"Cambridge image path must be non-empty without spaces: {rel!r}")
        lines.append(" ".join([rel] + _fmt(p) + _fmt(geometry.quat_conjugate(q))))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_label_csv(path: str | Path, frames: Iterable[Frame], split: str, data_root: str | Path,
                    quat_convention: str = "auto", append: bool = False) -> Path:
    """Write frames as an MS-Transformer label CSV (``scene,split,seq,img_path,t1..q4``).

    ``img_path`` is written relative to ``data_root`` (POSIX separators); quaternions are stored
    in the per-row convention of :func:`pae_ros.datasets.label_csv.row_convention` (so Cambridge
    style rows get the world-to-camera quaternion, like the published files), which the reader
    undoes. ``append=True`` adds rows to an existing file (header written only if new).
    """
    path = Path(path)
    root = Path(data_root).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not (append and path.is_file() and path.stat().st_size > 0)
    with open(path, "a" if append else "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        if new:
            w.writerow(COLUMNS)
        for f in frames:
            rel = Path(os.path.relpath(Path(f.image_path).resolve(), root)).as_posix()
            p, q = _pose(f.position, f.quaternion)
            if row_convention(rel, quat_convention) == "world_to_camera":
                q = geometry.quat_conjugate(q)
            w.writerow([f.scene, split, f.sequence, rel] + _fmt(p) + _fmt(q))
    return path
