"""A small TF buffer (no tf2_ros here, see ``shared/docs/ros.md``) and the REP 105 composition.

The buffer keeps, per child frame, the **latest** transform received on ``/tf`` or
``/tf_static`` (no time interpolation: the node uses the newest ``odom -> camera`` it has seen,
which is what a localizer publishing ``map -> odom`` at the image stamp needs when odometry is
much faster than localization). TF is a tree: every child has exactly one parent, so a lookup
walks both frames up to their lowest common ancestor and chains the transforms on the way.

Transforms are given as ``T_parent_child``: translation (3,) metres = the child's origin in the
parent frame, rotation quaternion (4,) **wxyz** rotating child-frame vectors into the parent
frame -- the same convention as ``geometry_msgs/TransformStamped`` (``header.frame_id`` = parent,
``child_frame_id`` = child) and as our camera-to-world poses.

This module imports no rclpy; :mod:`pae_ros.ros.conversions` turns ``TFMessage`` into the tuples
:meth:`TfBuffer.set_transform` takes.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from pae_ros.geometry import compose_poses, invert_pose, matrix_to_pose, pose_to_matrix

#: deepest chain a lookup follows (guards against loops in malformed input)
MAX_CHAIN = 64


@dataclass(frozen=True)
class StoredTransform:
    parent: str
    translation: np.ndarray   # (3,) m, child origin in parent
    quaternion: np.ndarray    # (4,) wxyz, child -> parent rotation
    stamp_ns: int
    static: bool


class TfBuffer:
    """Latest transform per child frame; thread-safe; :meth:`lookup` chains through the tree."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_child: dict[str, StoredTransform] = {}

    def set_transform(self, parent: str, child: str, translation, quaternion_wxyz,
                      stamp_ns: int = 0, static: bool = False) -> bool:
        """Store ``T_parent_child``. Ignores (returns False) empty names, self-loops and
        non-finite or zero quaternions. A dynamic transform never replaces a static one of the same
        child with an older stamp."""
        parent = parent.lstrip("/")
        child = child.lstrip("/")
        t = np.asarray(translation, dtype=np.float64).reshape(3)
        q = np.asarray(quaternion_wxyz, dtype=np.float64).reshape(4)
        n = float(np.linalg.norm(q))
        if not parent or not child or parent == child or not np.all(np.isfinite(t)) \
                or not np.all(np.isfinite(q)) or n < 1e-9:
            return False
        with self._lock:
            self._by_child[child] = StoredTransform(parent, t, q / n, int(stamp_ns), bool(static))
        return True

    def frames(self) -> dict[str, str]:
        """child -> parent of everything known."""
        with self._lock:
            return {c: s.parent for c, s in self._by_child.items()}

    def has(self, parent: str, child: str) -> bool:
        """Whether a direct ``parent -> child`` edge is known."""
        with self._lock:
            s = self._by_child.get(child.lstrip("/"))
        return s is not None and s.parent == parent.lstrip("/")

    def _up(self, frame: str) -> dict[str, np.ndarray]:
        """{ancestor: 4x4 pose of ``frame`` in ancestor}, from ``frame`` itself upwards."""
        out = {frame: np.eye(4)}
        T = np.eye(4)
        cur = frame
        with self._lock:
            for _ in range(MAX_CHAIN):
                s = self._by_child.get(cur)
                if s is None or s.parent in out:
                    break
                T = pose_to_matrix(s.translation, s.quaternion) @ T
                cur = s.parent
                out[cur] = T
        return out

    def lookup(self, target: str, source: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``T_target_source`` (the pose of ``source`` in ``target``: translation m, quat wxyz),
        or ``None`` when the two frames are not connected."""
        target = target.lstrip("/")
        source = source.lstrip("/")
        if target == source:
            return np.zeros(3), np.array([1.0, 0.0, 0.0, 0.0])
        up_source = self._up(source)
        up_target = self._up(target)
        for frame, T_anc_target in up_target.items():  # nearest ancestor of target first
            if frame in up_source:
                T = np.linalg.inv(T_anc_target) @ up_source[frame]
                return matrix_to_pose(T)
        return None


def map_to_odom(t_map_cam, q_map_cam, t_odom_cam, q_odom_cam) -> tuple[np.ndarray, np.ndarray]:
    """REP 105: ``T_map_odom = T_map_camera * inv(T_odom_camera)``.

    ``T_map_camera`` is the estimated camera pose (camera-to-map), ``T_odom_camera`` the camera's
    pose in odom from TF. Publishing the result keeps ``odom -> base -> camera`` owned by the
    odometry while making ``map -> camera`` equal the estimate.
    """
    ti, qi = invert_pose(t_odom_cam, q_odom_cam)
    return compose_poses(t_map_cam, q_map_cam, ti, qi)
