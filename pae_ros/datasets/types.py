"""Data types of :mod:`pae_ros.datasets`: frames, splits, camera intrinsics, the error type.

Frames and units follow the package conventions: positions in metres, camera centre in the
world frame; quaternions unit **wxyz** (canonical, ``w >= 0``) of the **camera-to-world**
rotation; camera axes OpenCV optical (x right, y down, z forward); pixels for intrinsics.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np


class DatasetError(Exception):
    """A dataset cannot be read: a missing or malformed file, line, pose or image.

    The message names the offending file (and line number where there is one).
    """


@dataclass(frozen=True, eq=False)
class Frame:
    """One posed colour image.

    Attributes:
        image_path: absolute path of the colour image.
        position: (3,) float64, camera centre in the world frame, metres.
        quaternion: (4,) float64 unit wxyz (``w >= 0``), camera-to-world rotation
            (rotates camera-frame vectors, OpenCV optical axes, into the world frame).
        scene: scene name, e.g. ``"heads"`` / ``"ShopFacade"``.
        sequence: sequence name as on disk, e.g. ``"seq-01"`` (7Scenes) / ``"seq2"`` (Cambridge).

    The arrays are stored read-only; equality is identity (arrays make value equality ambiguous).
    """

    image_path: Path
    position: np.ndarray
    quaternion: np.ndarray
    scene: str
    sequence: str

    def __post_init__(self) -> None:
        pos = np.array(self.position, dtype=np.float64).reshape(-1)
        quat = np.array(self.quaternion, dtype=np.float64).reshape(-1)
        if pos.shape != (3,) or quat.shape != (4,):
            raise ValueError(f"Frame needs position (3,) and quaternion (4,), got {pos.shape}, {quat.shape}")
        pos.setflags(write=False)
        quat.setflags(write=False)
        object.__setattr__(self, "image_path", Path(self.image_path))
        object.__setattr__(self, "position", pos)
        object.__setattr__(self, "quaternion", quat)


@dataclass
class CameraIntrinsics:
    """Pinhole intrinsics of the colour camera in pixels (image ``width`` x ``height`` px).

    ``fx, fy`` focal lengths, ``cx, cy`` principal point; pixel (u, v) = (fx x/z + cx, fy y/z + cy)
    for a point (x, y, z) in OpenCV optical camera axes.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        self.width = int(self.width)
        self.height = int(self.height)
        self.fx, self.fy, self.cx, self.cy = (float(v) for v in (self.fx, self.fy, self.cx, self.cy))
        vals = (self.fx, self.fy, self.cx, self.cy)
        if self.width <= 0 or self.height <= 0 or not all(math.isfinite(v) for v in vals) \
                or self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"invalid camera intrinsics {self}")

    @property
    def K(self) -> np.ndarray:
        """3x3 calibration matrix (pixels)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable dict ``{"width","height","fx","fy","cx","cy"}``."""
        return {"width": self.width, "height": self.height,
                "fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy}

    @classmethod
    def from_json(cls, data: dict[str, Any] | str) -> "CameraIntrinsics":
        """Build from a dict (or JSON text) with the keys of :meth:`to_json`.

        Raises ValueError naming a missing key or an invalid value.
        """
        if isinstance(data, str):
            data = json.loads(data)
        if not isinstance(data, dict):
            raise ValueError("intrinsics must be a JSON object")
        keys = ("width", "height", "fx", "fy", "cx", "cy")
        missing = [k for k in keys if k not in data]
        if missing:
            raise ValueError(f"intrinsics missing key(s) {missing}")
        for k in keys:
            if isinstance(data[k], bool) or not isinstance(data[k], (int, float)):
                raise ValueError(f"intrinsics key {k!r} must be a number, got {data[k]!r}")
        return cls(**{k: data[k] for k in keys})


#: 7Scenes Kinect colour camera (the commonly used calibration).
SEVEN_SCENES_INTRINSICS = CameraIntrinsics(640, 480, 585.0, 585.0, 320.0, 240.0)


@dataclass
class DatasetSplit:
    """The frames of one split (train or test) of one or more scenes.

    Attributes:
        frames: the frames, ordered by scene, sequence, frame.
        skipped: human-readable reasons of dropped entries (``on_error="skip"``).
        intrinsics: scene -> :class:`CameraIntrinsics`, or None where unknown.
        intrinsics_files: scene -> its ``intrinsics.json`` path (in the scene folder), whether or
            not the file exists.
        intrinsics_source: scene -> ``"file"`` (read from that file) or ``"default"`` (the
            format's default camera); absent where the intrinsics are unknown.
    """

    frames: list[Frame]
    skipped: list[str] = field(default_factory=list)
    intrinsics: dict[str, CameraIntrinsics | None] = field(default_factory=dict)
    intrinsics_files: dict[str, Path] = field(default_factory=dict)
    intrinsics_source: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[Frame]:
        return iter(self.frames)

    def __getitem__(self, i: int) -> Frame:
        return self.frames[i]

    @property
    def positions(self) -> np.ndarray:
        """(N, 3) float64 camera centres in the world frame, metres."""
        if not self.frames:
            return np.zeros((0, 3))
        return np.stack([f.position for f in self.frames])

    @property
    def quaternions(self) -> np.ndarray:
        """(N, 4) float64 unit wxyz camera-to-world quaternions."""
        if not self.frames:
            return np.zeros((0, 4))
        return np.stack([f.quaternion for f in self.frames])

    @property
    def scenes(self) -> list[str]:
        """Per-frame scene names (N,)."""
        return [f.scene for f in self.frames]

    @property
    def sequences(self) -> list[str]:
        """Per-frame sequence names (N,)."""
        return [f.sequence for f in self.frames]

    @property
    def image_paths(self) -> list[Path]:
        """Per-frame absolute image paths (N,)."""
        return [f.image_path for f in self.frames]

    def by_scene(self) -> dict[str, "DatasetSplit"]:
        """Split per scene (scene order of first appearance); ``skipped`` stays with the parent."""
        out: dict[str, DatasetSplit] = {}
        for f in self.frames:
            if f.scene not in out:
                keep = lambda d: {f.scene: d[f.scene]} if f.scene in d else {}  # noqa: E731
                out[f.scene] = DatasetSplit([], [], {f.scene: self.intrinsics.get(f.scene)},
                                            keep(self.intrinsics_files), keep(self.intrinsics_source))
            out[f.scene].frames.append(f)
        return out
