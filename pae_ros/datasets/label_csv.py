"""Reader of MS-Transformer / PAE label CSV files.

Header ``scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4`` (extra columns are ignored), one
row per image: ``img_path`` relative to a data root, (t1, t2, t3) the camera centre in the
world (metres), (q1..q4) a wxyz quaternion.

Quaternion convention. The published label files copy each dataset's own convention:
7Scenes rows (``seq-NN/frame-XXXXXX.color.png``) hold the **camera-to-world** rotation of
``pose.txt``; Cambridge rows (``seqN/frameXXXXX.png``) hold the stored **world-to-camera**
quaternion of ``dataset_*.txt`` unchanged (checked on the reference ShopFacade labels: read
as world-to-camera every camera's y axis points to world -z, i.e. the cameras are upright,
and 99% of the viewing rays meet in front of the cameras; read as camera-to-world they do
not). ``quat_convention="auto"`` applies that rule per row (any other path pattern is read
as camera-to-world), so the same scene read from ``dataset_*.txt`` or from its CSV gives the
same camera-to-world poses. Pass ``"camera_to_world"`` / ``"world_to_camera"`` to force one.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path, PurePosixPath

import numpy as np

from .common import Issues, canonical, load_intrinsics, parse_floats, unit_quat, where
from .types import SEVEN_SCENES_INTRINSICS, CameraIntrinsics, DatasetError, Frame

COLUMNS = ("scene", "split", "seq", "img_path", "t1", "t2", "t3", "q1", "q2", "q3", "q4")
CONVENTIONS = ("auto", "camera_to_world", "world_to_camera")

_CAMBRIDGE_PATH = re.compile(r"(?:^|/)seq\d+/frame\d+\.png$", re.IGNORECASE)
_SEVEN_SCENES_PATH = re.compile(r"(?:^|/)seq-\d+/frame-\d+\.color\.png$", re.IGNORECASE)


def row_convention(img_path: str, quat_convention: str = "auto") -> str:
    """``"camera_to_world"`` or ``"world_to_camera"``: how a row's quaternion is stored."""
    if quat_convention not in CONVENTIONS:
        raise ValueError(f"quat_convention must be one of {CONVENTIONS}, got {quat_convention!r}")
    if quat_convention != "auto":
        return quat_convention
    p = img_path.replace("\\", "/")
    return "world_to_camera" if _CAMBRIDGE_PATH.search(p) else "camera_to_world"


def is_seven_scenes_path(img_path: str) -> bool:
    return bool(_SEVEN_SCENES_PATH.search(img_path.replace("\\", "/")))


def stored_to_c2w(q_unit: np.ndarray, convention: str) -> np.ndarray:
    """Camera-to-world quaternion (w >= 0) from a stored unit quaternion of ``convention``."""
    q = np.asarray(q_unit, dtype=np.float64)
    if convention == "world_to_camera":
        q = q * np.array([1.0, -1.0, -1.0, -1.0])
    return canonical(q)


def read_label_csv(path: Path, split: str, issues: Issues, scenes: list[str] | None = None,
                   data_root: Path | None = None, check_images: bool = True,
                   quat_convention: str = "auto",
                   ) -> tuple[list[Frame], dict[str, CameraIntrinsics | None]]:
    """Frames of the rows whose ``split`` column equals ``split`` (and scene in ``scenes``).

    Returns (frames, intrinsics per scene: ``<data_root>/<scene>/intrinsics.json`` if present,
    else the 7Scenes default for 7Scenes-style paths, else None).
    """
    path = Path(path).resolve()
    root = Path(data_root).resolve() if data_root is not None else path.parent
    row_convention("", quat_convention)  # validate the argument early
    if not path.is_file():
        raise DatasetError(f"{path}: label CSV missing")
    frames: list[Frame] = []
    seven_style: dict[str, bool] = {}
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{where(path, 1)}: empty label CSV (no header)")
        header = [h.strip() for h in header]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise DatasetError(f"{where(path, 1)}: header lacks column(s) {missing}; "
                               f"expected {','.join(COLUMNS)}")
        col = {c: header.index(c) for c in COLUMNS}
        for row in reader:
            n = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                issues.report(f"{where(path, n)}: expected {len(header)} fields, got {len(row)}")
                continue
            if row[col["split"]].strip() != split:
                continue
            scene = row[col["scene"]].strip()
            if scenes is not None and scene not in scenes:
                continue
            rel = row[col["img_path"]].strip()
            try:
                vals = parse_floats([row[col[c]] for c in COLUMNS[4:]], path, n)
                q = unit_quat(vals[3:], path, n)
            except DatasetError as e:
                issues.report(str(e))
                continue
            if not rel:
                issues.report(f"{where(path, n)}: empty img_path")
                continue
            image = root / PurePosixPath(rel.replace("\\", "/"))
            if check_images and not image.is_file():
                issues.report(f"{where(path, n)}: image missing: {image}")
                continue
            quat = stored_to_c2w(q, row_convention(rel, quat_convention))
            seven_style[scene] = seven_style.get(scene, True) and is_seven_scenes_path(rel)
            frames.append(Frame(image, vals[:3], quat, scene, row[col["seq"]].strip()))
    intrinsics = {s: load_intrinsics(root / s, SEVEN_SCENES_INTRINSICS if seven else None)
                  for s, seven in seven_style.items()}
    return frames, intrinsics
