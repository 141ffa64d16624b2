"""Camera walks over the courtyard: smooth, head-height, looking around (numpy only).

Train walks are random walks through control points joined by a Catmull-Rom spline and
resampled at a constant step along the path. Test walks re-walk a stretch of a train walk with
a smooth sideways offset (<= ``max_offset``, default 0.8 m) and their own head motion, so test
views are near, never identical to, train views (as the 7Scenes test sequences are).

Poses are camera-to-world: position = camera centre in the world frame (metres, z up);
quaternion wxyz with OpenCV optical camera axes (x right, y down, z forward).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..geometry import rotmat_to_quat
from .assets import CENTRE_CLEARANCE, WALK_HALF


@dataclass
class Walk:
    """One sequence: ``name`` (e.g. ``"seq-01"``), ``split`` ("train" | "test"),
    ``positions`` (N, 3) m and ``quaternions`` (N, 4) wxyz camera-to-world (OpenCV axes)."""

    name: str
    split: str
    positions: np.ndarray
    quaternions: np.ndarray


@dataclass
class _Path:
    """A walk densely sampled by arc length s (m): xy, yaw, pitch, roll (rad), height (m)."""

    s: np.ndarray
    xy: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    height: np.ndarray

    def at(self, s: np.ndarray) -> tuple[np.ndarray, ...]:
        yaw_u = np.unwrap(self.yaw)
        x = np.interp(s, self.s, self.xy[:, 0])
        y = np.interp(s, self.s, self.xy[:, 1])
        return (np.stack([x, y], 1), np.interp(s, self.s, yaw_u), np.interp(s, self.s, self.pitch),
                np.interp(s, self.s, self.roll), np.interp(s, self.s, self.height))


def look_rotation(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Camera-to-world rotation matrices (N, 3, 3), OpenCV camera axes, world z up.

    yaw: azimuth of the optical axis, radians from world +x towards +y.
    pitch: elevation of the optical axis above the horizon, radians (positive looks up).
    roll: rotation about the optical axis, radians (positive turns the image clockwise).
    """
    yaw, pitch, roll = (np.atleast_1d(np.asarray(a, np.float64)) for a in (yaw, pitch, roll))
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    z = np.stack([cp * cy, cp * sy, sp], -1)                      # optical axis
    x0 = np.stack([sy, -cy, np.zeros_like(sy)], -1)               # right, horizontal
    y0 = np.cross(z, x0)                                          # down
    cr, sr = np.cos(roll)[:, None], np.sin(roll)[:, None]
    x = cr * x0 + sr * y0
    y = -sr * x0 + cr * y0
    return np.stack([x, y, z], -1)


def look_quaternion(yaw, pitch, roll) -> np.ndarray:
    """Quaternions (N, 4) wxyz of :func:`look_rotation`."""
    return rotmat_to_quat(look_rotation(yaw, pitch, roll))


def _smooth(rng: np.random.Generator, s: np.ndarray, amp: float, wl=(2.5, 12.0), k: int = 4) -> np.ndarray:
    """Smooth random signal of arc length s (sum of ``k`` sinusoids, wavelengths in ``wl`` m),
    standard deviation about ``amp``."""
    out = np.zeros_like(s)
    for _ in range(k):
        lam = rng.uniform(*wl)
        out += np.sin(2 * np.pi * s / lam + rng.uniform(0, 2 * np.pi))
    return out * amp * math.sqrt(2.0 / k)


def _inside(xy: np.ndarray, half: float, clearance: float) -> np.ndarray:
    return (np.abs(xy).max(-1) <= half) & (np.linalg.norm(xy, axis=-1) >= clearance)


def _seg_clear(a: np.ndarray, b: np.ndarray, r: float) -> bool:
    """Whether segment a-b keeps distance >= r from the origin."""
    d = b - a
    t = np.clip(-np.dot(a, d) / max(np.dot(d, d), 1e-12), 0.0, 1.0)
    return float(np.linalg.norm(a + t * d)) >= r


def _catmull_rom(pts: np.ndarray, per_seg: int = 40) -> np.ndarray:
    """Uniform Catmull-Rom spline through pts[1:-1] (pts[0], pts[-1] are end tangents)."""
    out = []
    t = np.linspace(0, 1, per_seg, endpoint=False)[:, None]
    for i in range(1, len(pts) - 2):
        p0, p1, p2, p3 = pts[i - 1], pts[i], pts[i + 1], pts[i + 2]
        out.append(0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    out.append(pts[-2][None])
    return np.concatenate(out, 0)


def _arc_length(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """A polyline (N, 2) m -> (its points without zero-length steps, their arc length s (m), total length m)."""
    seg = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    keep = np.concatenate([[True], seg > 1e-9])
    return xy[keep], s[keep], float(s[-1])


def _walking_heading(xy: np.ndarray, s: np.ndarray, window: int) -> np.ndarray:
    """Heading (rad, unwrapped) along a path, box-smoothed over ``window`` (odd) samples: a walker
    looks ahead, not along the spline's tangent."""
    d = np.gradient(xy, s, axis=0)
    heading = np.unwrap(np.arctan2(d[:, 1], d[:, 0]))
    k = np.ones(window) / window
    return np.convolve(np.pad(heading, window // 2, mode="edge"), k, mode="valid")


def _train_path(rng: np.random.Generator, length: float) -> _Path:
    """A random smooth walk at least ``length`` m long inside the walk area."""
    half, clear = WALK_HALF, CENTRE_CLEARANCE
    for _attempt in range(200):
        while True:
            p = rng.uniform(-half, half, 2)
            if _inside(p[None], half - 0.5, clear + 0.5)[0]:
                break
        heading = rng.uniform(0, 2 * np.pi)
        pts = [p]
        n_pts = int(length / 2.5) + 5
        ok = True
        while len(pts) < n_pts:
            for _ in range(60):
                h = heading + rng.normal(0.0, 0.9)
                q = pts[-1] + rng.uniform(2.5, 4.0) * np.array([math.cos(h), math.sin(h)])
                if _inside(q[None], half - 0.3, clear + 0.3)[0] and _seg_clear(pts[-1], q, clear + 0.3):
                    heading = h
                    pts.append(q)
                    break
            else:
                ok = False
                break
        if not ok:
            continue
        xy = _catmull_rom(np.array(pts))
        if not _inside(xy, half, clear).all():
            continue
        xy, s, total = _arc_length(xy)
        if total < length:
            continue
        heading = _walking_heading(xy, s, 9)
        yaw = heading + _smooth(rng, s, 0.45)                              # looking around, ~26 deg
        pitch = -0.06 + _smooth(rng, s, 0.07, (3.0, 9.0))                  # ~ -3 +- 4 deg
        roll = _smooth(rng, s, 0.03, (2.0, 6.0))                           # ~ 2 deg
        height = rng.uniform(1.45, 1.75) + 0.02 * np.sin(2 * np.pi * s / 0.75) + _smooth(rng, s, 0.03)
        return _Path(s, xy, yaw, pitch, roll, height)
    raise RuntimeError("could not generate a camera walk inside the courtyard")


def _sample(path: _Path, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xy, yaw, pitch, roll, height = path.at(s)
    pos = np.concatenate([xy, height[:, None]], 1)
    return pos, look_quaternion(yaw, pitch, roll)


def _test_path_samples(rng: np.random.Generator, base: _Path, train_span: float, n: int, step: float,
                       max_offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Test walk along the first ``train_span`` m of ``base`` (the part its train frames cover);
    a test walk longer than that is walked with a shorter step."""
    L = min(float(base.s[-1]), train_span)
    if n > 1 and (n - 1) * step > L:
        step = L / (n - 1)
    span = (n - 1) * step
    for attempt in range(100):
        s0 = rng.uniform(0.0, max(0.0, L - span))
        s = np.clip(s0 + step * np.arange(n), 0.0, L)
        xy, yaw, pitch, roll, height = base.at(s)
        d = np.gradient(xy, axis=0) if n > 1 else np.array([[math.cos(yaw[0]), math.sin(yaw[0])]])
        normal = np.stack([-d[:, 1], d[:, 0]], 1)
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-9)
        scale = 1.0 if attempt < 80 else 0.0
        off = np.clip(rng.uniform(-0.3, 0.3) + _smooth(rng, s, 0.35, (3.0, 10.0)), -max_offset, max_offset) * scale
        xy = xy + off[:, None] * normal
        if not _inside(xy, WALK_HALF + 0.3, CENTRE_CLEARANCE - 0.6).all():
            continue
        yaw = yaw + _smooth(rng, s, 0.15)
        pitch = pitch + _smooth(rng, s, 0.04, (3.0, 9.0))
        roll = roll + _smooth(rng, s, 0.02, (2.0, 6.0))
        height = height + rng.uniform(-0.08, 0.08) + _smooth(rng, s, 0.02)
        pos = np.concatenate([xy, height[:, None]], 1)
        return pos, look_quaternion(yaw, pitch, roll)
    raise RuntimeError("could not generate a test walk")


def make_walks(seed: int, n_train: int = 4, n_test: int = 2, train_frames: int = 150,
               test_frames: int = 100, step: float = 0.12, max_offset: float = 0.8) -> list[Walk]:
    """The camera walks of the demo scene for ``seed``.

    Returns ``n_train`` train walks (``seq-01`` ..) of ``train_frames`` frames, then ``n_test``
    test walks (numbered on) of ``test_frames`` frames each. ``step`` is the distance between
    consecutive frames along the path (m); test walk i follows train walk ``i % n_train`` with
    a sideways offset of at most ``max_offset`` m, over the stretch its train frames cover
    (with a shorter step when ``test_frames`` would not fit).
    """
    if n_train < 1 or train_frames < 1 or n_test < 0 or (n_test > 0 and test_frames < 1):
        raise ValueError("need at least one train walk with one frame, and test_frames >= 1")
    rng = np.random.default_rng([int(seed), 7002])
    walks: list[Walk] = []
    paths: list[_Path] = []
    for i in range(n_train):
        length = max(step * (train_frames - 1), 1.0)
        path = _train_path(rng, length)
        paths.append(path)
        pos, quat = _sample(path, step * np.arange(train_frames))
        walks.append(Walk(f"seq-{i + 1:02d}", "train", pos, quat))
    for j in range(n_test):
        pos, quat = _test_path_samples(rng, paths[j % n_train], step * (train_frames - 1), test_frames,
                                       step, max_offset)
        walks.append(Walk(f"seq-{n_train + j + 1:02d}", "test", pos, quat))
    return walks
