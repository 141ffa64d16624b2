"""Dataset readers (7Scenes, Cambridge Landmarks, MS-Transformer label CSV) and writers.

Every reader returns camera-to-world poses: position = camera centre in the world frame
(metres), quaternion unit wxyz with ``w >= 0``, camera axes OpenCV optical (x right, y down,
z forward). Images are read as ``(H, W, 3)`` ``uint8`` RGB by :func:`load_rgb`.

Modules: ``types`` (Frame, DatasetSplit, CameraIntrinsics, DatasetError), ``seven_scenes``,
``cambridge``, ``label_csv`` (one reader each), ``reader`` (:func:`read_dataset`),
``writers``, ``images``.
"""
from .images import load_rgb, write_rgb
from .reader import FORMATS, SPLITS, find_scene_dirs, read_dataset
from .types import SEVEN_SCENES_INTRINSICS, CameraIntrinsics, DatasetError, DatasetSplit, Frame
from .writers import (write_7scenes_frame, write_7scenes_splits, write_cambridge, write_intrinsics,
                      write_label_csv)

__all__ = [
    "Frame", "DatasetSplit", "CameraIntrinsics", "DatasetError", "SEVEN_SCENES_INTRINSICS",
    "read_dataset", "find_scene_dirs", "FORMATS", "SPLITS", "load_rgb", "write_rgb",
    "write_7scenes_frame", "write_7scenes_splits", "write_intrinsics", "write_cambridge",
    "write_label_csv",
]
