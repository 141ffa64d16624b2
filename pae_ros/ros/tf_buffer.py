"""A small TF buffer with per-edge history (no tf2_ros here, see ``shared/docs/ros.md``), and the
REP 105 composition.

Every edge ``parent -> child`` keeps a short, stamp-sorted history (``history_s`` seconds behind its
newest sample) of the transforms received on ``/tf``; ``/tf_static`` edges keep one sample valid at
every time. :meth:`TfBuffer.lookup` chains the edges between two frames through their lowest
common ancestor, each edge **interpolated at the requested stamp** (linear translation, slerp
rotation), as tf2 does. Semantics, as tf2's:

* ``stamp_ns=None`` (or 0): the newest sample of each edge;
* a stamp inside an edge's history: interpolated between the two samples around it;
* a stamp older than an edge's oldest sample: :class:`TfLookupError` ``too_old``;
* newer than its newest sample (odometry lags the image): ``future`` -- callers may
  :meth:`TfBuffer.wait_for` it (bounded);
* disconnected frames: ``unconnected``.

Messages arriving out of order are inserted at their stamp, never overwrite a newer sample, and a
sample with the stamp of one already stored replaces it only for the same stamp. A dynamic sample
never replaces a static edge of the same child.

Transforms are ``T_parent_child``: translation (3,) metres = the child's origin in the parent frame,
rotation quaternion (4,) **wxyz** rotating child-frame vectors into the parent frame -- the
convention of ``geometry_msgs/TransformStamped`` and of our camera-to-world poses. No rclpy here;
:mod:`pae_ros.ros.conversions` turns ``TFMessage`` into what :meth:`TfBuffer.set_transform` takes.
"""
from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from pae_ros.geometry import compose_poses, invert_pose, matrix_to_pose, pose_to_matrix, slerp
from pae_ros.tracking.lie import pose_inverse

#: deepest chain a lookup follows (guards against loops in malformed input)
MAX_CHAIN = 64
#: samples kept per edge at most (besides the time window)
MAX_SAMPLES = 2000


class TfLookupError(Exception):
    """A lookup that cannot be answered; ``reason`` is too_old | future | unconnected."""

    def __init__(self, reason: str, text: str):
        super().__init__(text)
        self.reason = reason


@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: list = field(default_factory=list)   # int ns, sorted
    t: list = field(default_factory=list)        # (3,) arrays
    q: list = field(default_factory=list)        # (4,) wxyz arrays


class TfBuffer:
    """Per-edge TF history; thread-safe; :meth:`lookup` chains and interpolates."""

    def __init__(self, history_s: float = 10.0) -> None:
        self.history_ns = int(history_s * 1e9)
        self._cond = threading.Condition()
        self._by_child: dict[str, _Edge] = {}

    def set_transform(self, parent: str, child: str, translation, quaternion_wxyz,
                      stamp_ns: int = 0, static: bool = False) -> bool:
        """Store ``T_parent_child`` at ``stamp_ns``. Returns False (ignored) for empty names,
        self-loops, non-finite or zero quaternions, a dynamic sample for a static edge, and a
        sample older than the edge's history window."""
        parent = parent.lstrip("/")
        child = child.lstrip("/")
        t = np.asarray(translation, dtype=np.float64).reshape(3)
        q = np.asarray(quaternion_wxyz, dtype=np.float64).reshape(4)
        n = float(np.linalg.norm(q))
        if not parent or not child or parent == child or not np.all(np.isfinite(t)) \
                or not np.all(np.isfinite(q)) or n < 1e-9:
            return False
        q = q / n
        s = int(stamp_ns)
        with self._cond:
            e = self._by_child.get(child)
            if static:
                self._by_child[child] = _Edge(parent, True, [s], [t], [q])
            else:
                if e is not None and e.static:
                    return False
                if e is None or e.parent != parent:  # a re-parented frame starts a new history
                    e = self._by_child[child] = _Edge(parent, False)
                if e.stamps and s < e.stamps[-1] - self.history_ns:
                    return False  # older than anything we keep
                i = bisect.bisect_left(e.stamps, s)
                if i < len(e.stamps) and e.stamps[i] == s:
                    e.t[i], e.q[i] = t, q
                else:
                    e.stamps.insert(i, s)
                    e.t.insert(i, t)
                    e.q.insert(i, q)
                cut = bisect.bisect_left(e.stamps, e.stamps[-1] - self.history_ns)
                cut = max(cut, len(e.stamps) - MAX_SAMPLES)
                if cut > 0:
                    del e.stamps[:cut], e.t[:cut], e.q[:cut]
            self._cond.notify_all()
        return True

    def frames(self) -> dict[str, str]:
        """child -> parent of everything known."""
        with self._cond:
            return {c: e.parent for c, e in self._by_child.items()}

    def has(self, parent: str, child: str) -> bool:
        """Whether a direct ``parent -> child`` edge is known."""
        with self._cond:
            e = self._by_child.get(child.lstrip("/"))
        return e is not None and e.parent == parent.lstrip("/")

    def newest_stamp(self, child: str) -> int | None:
        with self._cond:
            e = self._by_child.get(child.lstrip("/"))
            return None if e is None or e.static or not e.stamps else e.stamps[-1]

    def _edge_at(self, child: str, e: _Edge, stamp_ns: int | None) -> np.ndarray:
        """4x4 ``T_parent_child`` of edge ``e`` at ``stamp_ns`` (lock held)."""
        if e.static or not stamp_ns or len(e.stamps) == 0:
            return pose_to_matrix(e.t[-1], e.q[-1])
        if stamp_ns > e.stamps[-1]:
            raise TfLookupError("future", f"{e.parent} -> {child}: newest sample is "
                                          f"{(stamp_ns - e.stamps[-1]) / 1e6:.1f} ms older than the stamp")
        if stamp_ns < e.stamps[0]:
            raise TfLookupError("too_old", f"{e.parent} -> {child}: stamp is "
                                           f"{(e.stamps[0] - stamp_ns) / 1e6:.1f} ms older than the history kept")
        i = bisect.bisect_left(e.stamps, stamp_ns)
        if e.stamps[i] == stamp_ns:
            return pose_to_matrix(e.t[i], e.q[i])
        s0, s1 = e.stamps[i - 1], e.stamps[i]
        a = (stamp_ns - s0) / (s1 - s0)
        t = (1 - a) * e.t[i - 1] + a * e.t[i]
        return pose_to_matrix(t, slerp(e.q[i - 1], e.q[i], a))

    def _chain(self, frame: str) -> list[str]:
        out = [frame]
        for _ in range(MAX_CHAIN):
            e = self._by_child.get(out[-1])
            if e is None or e.parent in out:
                break
            out.append(e.parent)
        return out

    def lookup_or_raise(self, target: str, source: str, stamp_ns: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``T_target_source`` at ``stamp_ns`` (the pose of ``source`` in ``target``: translation m,
        quat wxyz); raises :class:`TfLookupError`."""
        target = target.lstrip("/")
        source = source.lstrip("/")
        if target == source:
            return np.zeros(3), np.array([1.0, 0.0, 0.0, 0.0])
        with self._cond:
            cs, ct = self._chain(source), self._chain(target)
            common = next((f for f in ct if f in cs), None)
            if common is None:
                raise TfLookupError("unconnected", f"no TF chain {target} -> {source}")
            up_source = self._up_to(source, common, stamp_ns)
            up_target = self._up_to(target, common, stamp_ns)
        return matrix_to_pose(pose_inverse(up_target) @ up_source)

    def _up_to(self, frame: str, ancestor: str, stamp_ns: int | None) -> np.ndarray:
        T = np.eye(4)
        cur = frame
        for _ in range(MAX_CHAIN):
            if cur == ancestor:
                return T
            e = self._by_child[cur]
            T = self._edge_at(cur, e, stamp_ns) @ T
            cur = e.parent
        raise TfLookupError("unconnected", f"TF chain from {frame} too deep")

    def lookup(self, target: str, source: str, stamp_ns: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """Like :meth:`lookup_or_raise`, or ``None`` when it cannot be answered."""
        try:
            return self.lookup_or_raise(target, source, stamp_ns)
        except TfLookupError:
            return None

    def wait_for(self, target: str, source: str, stamp_ns: int | None, timeout_s: float) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`lookup_or_raise`, waiting up to ``timeout_s`` while the answer is ``future`` or
        ``unconnected`` (a sample may still come). ``too_old`` raises at once."""
        end = time.monotonic() + max(0.0, timeout_s)
        while True:
            try:
                return self.lookup_or_raise(target, source, stamp_ns)
            except TfLookupError as e:
                remaining = end - time.monotonic()
                if e.reason == "too_old" or remaining <= 0:
                    raise
                with self._cond:
                    self._cond.wait(min(remaining, 0.05))


def map_to_odom(t_map_cam, q_map_cam, t_odom_cam, q_odom_cam) -> tuple[np.ndarray, np.ndarray]:
    """REP 105: ``T_map_odom = T_map_camera * inv(T_odom_camera)``.

    ``T_map_camera`` is the estimated camera pose (camera-to-map), ``T_odom_camera`` the camera's
    pose in odom from TF (at the image stamp). Publishing the result keeps ``odom -> base -> camera``
    owned by the odometry while making ``map -> camera`` equal the estimate at that stamp.
    """
    ti, qi = invert_pose(t_odom_cam, q_odom_cam)
    return compose_poses(t_map_cam, q_map_cam, ti, qi)
