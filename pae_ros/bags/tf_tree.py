"""Offline TF tree of a whole recording: every ``/tf`` and ``/tf_static`` edge, looked up at any
stamp, for turning a bag into posed images (``pae bag export``). No rclpy.

Transforms are ``T_parent_child``: translation (3,) metres = the child's origin in the parent
frame; rotation a unit quaternion **wxyz** rotating child-frame vectors into the parent frame
(``geometry_msgs/TransformStamped`` semantics; ROS messages store the quaternion xyzw).

Unlike the node's short live buffer, a :class:`Track` keeps the whole history of one edge and a
lookup is strict, because a wrong training label is worse than a dropped frame:

* inside the samples: linear translation and slerp rotation between the two samples around the
  stamp, refused (``tf_gap``) when they are further apart than ``max_gap_ns``;
* before the first / after the last sample: refused (``tf_extrapolation``), never extrapolated;
* static edges hold at every stamp.

Each refusal is a :class:`TfError` with a ``reason`` usable as a drop counter key.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass, field

import numpy as np

from .. import geometry
from ..tracking.lie import pose_inverse
from . import msgs

#: deepest chain a lookup follows (guards against loops in malformed input)
MAX_CHAIN = 64

#: ``T_body_optical``: the optical frame (x right, y down, z forward) of a REP 103 body-convention
#: camera frame (x forward, y left, z up), i.e. the usual ``camera_link -> camera_optical_frame``
#: static transform (roll -90 deg, yaw -90 deg); xyzw (-0.5, 0.5, -0.5, 0.5)
BODY_TO_OPTICAL_WXYZ = np.array([0.5, -0.5, 0.5, -0.5])
OPTICAL_SUFFIXES = ("_optical", "_optical_frame")


class TfError(ValueError):
    """A transform that cannot be given; ``reason``: ``no_tf_path``, ``tf_extrapolation``,
    ``tf_gap``, ``no_pose_in_tolerance``, ``bad_static_tf``."""

    def __init__(self, reason: str, text: str):
        super().__init__(text)
        self.reason = reason


@dataclass
class Track:
    """Stamped samples of one moving transform (an edge of the tree, or a pose topic).

    ``add`` in any order; ``finish`` sorts once (later duplicates of a stamp win); then
    ``interpolate`` / ``nearest`` answer (metres, wxyz).
    """

    name: str
    # compact growing buffers: 64 bytes a sample (Python tuples of floats take several times more)
    stamps: array = field(default_factory=lambda: array("q"))
    values: array = field(default_factory=lambda: array("d"))   # 7 per sample: x y z qw qx qy qz
    _t: np.ndarray | None = None
    _v: np.ndarray | None = None

    def add(self, stamp_ns: int, translation, quaternion_wxyz) -> None:
        self.stamps.append(int(stamp_ns))
        self.values.extend([float(v) for v in translation] + [float(v) for v in quaternion_wxyz])
        self._t = None

    def finish(self) -> None:
        if self._t is not None:
            return
        t = np.frombuffer(self.stamps, dtype=np.int64) if len(self.stamps) else np.zeros(0, np.int64)
        v = (np.frombuffer(self.values, dtype=np.float64) if len(self.values) else np.zeros(0)).reshape(-1, 7)
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
        last = np.ones(len(t), bool)
        last[:-1] = t[1:] != t[:-1]  # keep the last sample of each stamp
        t, v = t[last], v[last]
        good = np.all(np.isfinite(v), axis=1) & (np.linalg.norm(v[:, 3:], axis=1) > 1e-9)
        t, v = t[good], v[good]
        v[:, 3:] /= np.linalg.norm(v[:, 3:], axis=1, keepdims=True)
        self._t, self._v = t, v

    def __len__(self) -> int:
        self.finish()
        return len(self._t)

    def interpolate(self, stamp_ns: int, max_gap_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """``(translation, quaternion wxyz)`` at ``stamp_ns``; raises ``tf_extrapolation`` /
        ``tf_gap``."""
        self.finish()
        t, v = self._t, self._v
        s = int(stamp_ns)
        if len(t) == 0 or s < t[0] or s > t[-1]:
            where = "no samples" if len(t) == 0 else (
                f"{(t[0] - s) / 1e6:.1f} ms before its first sample" if s < t[0]
                else f"{(s - t[-1]) / 1e6:.1f} ms after its last sample")
            raise TfError("tf_extrapolation", f"{self.name}: stamp {s} is {where} (no extrapolation)")
        i = int(np.searchsorted(t, s))
        if t[i] == s:
            return v[i, :3].copy(), v[i, 3:].copy()
        t0, t1 = int(t[i - 1]), int(t[i])
        if t1 - t0 > max_gap_ns:
            raise TfError("tf_gap", f"{self.name}: samples around stamp {s} are {(t1 - t0) / 1e9:.3f} s apart, "
                                    f"more than the allowed {max_gap_ns / 1e9:.3f} s")
        a = (s - t0) / (t1 - t0)
        return (1 - a) * v[i - 1, :3] + a * v[i, :3], geometry.slerp(v[i - 1, 3:], v[i, 3:], a)

    def nearest(self, stamp_ns: int, max_diff_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """The sample nearest ``stamp_ns`` when within ``max_diff_ns``; raises ``no_pose_in_tolerance``."""
        self.finish()
        t, v = self._t, self._v
        if len(t) == 0:
            raise TfError("no_pose_in_tolerance", f"{self.name}: no samples")
        i = int(np.searchsorted(t, int(stamp_ns)))
        cands = [j for j in (i - 1, i) if 0 <= j < len(t)]
        j = min(cands, key=lambda k: abs(int(t[k]) - int(stamp_ns)))
        diff = abs(int(t[j]) - int(stamp_ns))
        if diff > max_diff_ns:
            raise TfError("no_pose_in_tolerance", f"{self.name}: nearest sample is {diff / 1e6:.1f} ms from stamp "
                                                  f"{int(stamp_ns)}, more than {max_diff_ns / 1e6:.1f} ms")
        return v[j, :3].copy(), v[j, 3:].copy()


def parse_static_tf(text: str) -> tuple[str, str, np.ndarray, np.ndarray]:
    """``PARENT:CHILD:x,y,z,qx,qy,qz,qw`` (metres; quaternion in **ROS order xyzw**) ->
    ``(parent, child, translation, quaternion wxyz)``. Raises ``bad_static_tf``."""
    parts = text.split(":")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise TfError("bad_static_tf", f"--static-tf {text!r}: expected PARENT:CHILD:x,y,z,qx,qy,qz,qw")
    try:
        vals = np.array([float(v) for v in parts[2].split(",")], dtype=np.float64)
    except ValueError:
        raise TfError("bad_static_tf", f"--static-tf {text!r}: not a number in {parts[2]!r}") from None
    if vals.shape != (7,) or not np.all(np.isfinite(vals)):
        raise TfError("bad_static_tf", f"--static-tf {text!r}: need 7 finite numbers x,y,z,qx,qy,qz,qw, "
                                       f"got {len(vals)}")
    q = msgs.ros_to_wxyz(*vals[3:7])
    n = float(np.linalg.norm(q))
    if abs(n - 1.0) > 1e-3:
        raise TfError("bad_static_tf", f"--static-tf {text!r}: quaternion (qx,qy,qz,qw) has norm {n:.6f}, "
                                       f"not 1 (ROS order is x,y,z,w)")
    return parts[0].lstrip("/"), parts[1].lstrip("/"), vals[:3], q / n


def is_optical(frame: str) -> bool:
    """Whether a frame name says OpenCV optical axes (REP 103 ``_optical`` / ``_optical_frame``)."""
    return frame.rstrip("/").endswith(OPTICAL_SUFFIXES)


class TfTree:
    """Every edge of a recording's TF tree: ``child -> (parent, static transform or Track)``."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}
        self._static: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._dynamic: dict[str, Track] = {}
        self._static_T: dict[str, np.ndarray] = {}
        self.overridden: list[str] = []    # children whose bag edge a command-line edge replaced
        self.given: set[str] = set()       # children of command-line static edges
        self.conflicts: dict[str, int] = {}

    def _claim(self, parent: str, child: str) -> bool:
        known = self._parent.get(child)
        if known is None:
            self._parent[child] = parent
            return True
        if known != parent:  # a frame has one parent in a tree; later contradictions are counted
            key = f"{parent} -> {child} (tree has {known} -> {child})"
            self.conflicts[key] = self.conflicts.get(key, 0) + 1
            return False
        return True

    def add(self, parent: str, child: str, stamp_ns: int, translation, quaternion_wxyz, static: bool) -> None:
        """Store one ``TransformStamped`` (frame names without a leading ``/``)."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child or not self._claim(parent, child):
            return
        if static:
            if child not in self._dynamic:
                self._static[child] = (np.asarray(translation, np.float64), np.asarray(quaternion_wxyz, np.float64))
            return
        if child in self._static:
            return  # a dynamic sample never replaces a static edge
        self._dynamic.setdefault(child, Track(f"TF {parent} -> {child}")).add(stamp_ns, translation, quaternion_wxyz)

    def set_static(self, parent: str, child: str, translation, quaternion_wxyz) -> None:
        """An override from the command line: replaces whatever the bag says about ``child``."""
        if child in self._parent:
            self.overridden.append(child)
        self.given.add(child)
        self._parent[child] = parent
        self._dynamic.pop(child, None)
        self._static_T.pop(child, None)
        self._static[child] = (np.asarray(translation, np.float64), np.asarray(quaternion_wxyz, np.float64))

    def frames(self) -> list[str]:
        """Every frame named by an edge, sorted."""
        return sorted(set(self._parent) | set(self._parent.values()))

    def edges(self) -> list[dict]:
        """``{parent, child, static, samples}`` per edge (provenance)."""
        return [{"parent": p, "child": c, "static": c in self._static,
                 "samples": 1 if c in self._static else len(self._dynamic[c])}
                for c, p in sorted(self._parent.items())]

    def static_edge(self, child: str) -> dict | None:
        """The static transform to ``child`` (translation m, quaternion xyzw as in ROS) or None."""
        if child not in self._static:
            return None
        t, q = self._static[child]
        return {"parent": self._parent[child], "child": child, "translation": [float(v) for v in t],
                "rotation_xyzw": list(msgs.wxyz_to_ros(q)),
                "source": "--static-tf" if child in self.given else "bag /tf_static"}

    def _chain(self, frame: str) -> list[str]:
        out = [frame]
        for _ in range(MAX_CHAIN):
            p = self._parent.get(out[-1])
            if p is None or p in out:
                break
            out.append(p)
        return out

    def has_path(self, target: str, source: str) -> bool:
        return target == source or any(f in self._chain(source) for f in self._chain(target))

    def require_path(self, target: str, source: str, where: str) -> None:
        """Raise ``no_tf_path`` naming the frames the recording has when ``target`` and ``source``
        are not connected."""
        if not self.has_path(target, source):
            have = ", ".join(self.frames()) or "none"
            raise TfError("no_tf_path", f"{where}: no TF path between {target!r} and {source!r}; frames in the "
                                        f"recording: {have} (add a missing static edge with --static-tf)")

    def lookup(self, target: str, source: str, stamp_ns: int, max_gap_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """``T_target_source`` at ``stamp_ns``: the pose of ``source`` in ``target`` (m, wxyz), each
        moving edge interpolated at the stamp. Raises :class:`TfError`."""
        return geometry.matrix_to_pose(self.lookup_matrix(target, source, stamp_ns, max_gap_ns))

    def lookup_matrix(self, target: str, source: str, stamp_ns: int, max_gap_ns: int) -> np.ndarray:
        """:meth:`lookup` as a 4x4 homogeneous matrix (composing matrices is the fast path)."""
        if target == source:
            return np.eye(4)
        cs, ct = self._chain(source), self._chain(target)
        common = next((f for f in ct if f in cs), None)
        if common is None:
            self.require_path(target, source, "lookup")
        return pose_inverse(self._up_to(target, common, stamp_ns, max_gap_ns)) @ \
            self._up_to(source, common, stamp_ns, max_gap_ns)

    def _up_to(self, frame: str, ancestor: str, stamp_ns: int, max_gap_ns: int) -> np.ndarray:
        T = np.eye(4)
        cur = frame
        while cur != ancestor:
            if cur in self._static:
                E = self._static_T.get(cur)
                if E is None:
                    E = self._static_T[cur] = geometry.pose_to_matrix(*self._static[cur])
            else:
                E = geometry.pose_to_matrix(*self._dynamic[cur].interpolate(stamp_ns, max_gap_ns))
            T = E @ T
            cur = self._parent[cur]
        return T

