"""Camera walks over the plaza whose test walks leave the train walks (numpy only).

Train walks: random smooth walks (Catmull-Rom through control points 4-7 m apart) at head
height (1.45-1.75 m), looking around, kept inside ``WALK_LIMIT`` and out of the obstacle discs.

Test walks follow a stretch of a train walk and then leave it, by recipe (test walk j uses
recipe ``j % 3``):

- 0 ``sidestep``: same direction, a smooth sideways excursion up to 3.5-5 m in the middle
  of the walk, back onto the train path at both ends, head height;
- 1 ``turnaround``: walks the stretch forward near the train path, turns round and walks
  back with the heading reversed, drifting 1.5-3 m sideways, at 1.1-1.2 m (a robot or a
  child);
- 2 ``high``: same direction, 1-2.5 m to the side, at 2.0-2.2 m (a camera on a vehicle).

So test frames span both regimes: near a similar-view train frame (< 1 m) and well away from
any (> 2 m, or no train frame looking that way), as measured by
:func:`pae_ros.coverage.coverage_distance`.

Poses are camera-to-world: position = camera centre in the world (metres, z up); quaternion
wxyz with OpenCV optical camera axes (x right, y down, z forward).
"""
from __future__ import annotations

import math

import numpy as np

from ..coverage import coverage_distance
from .plaza import WALK_LIMIT, obstacles as plaza_obstacles
from .walks import Walk, _arc_length, _catmull_rom, _Path, _smooth, _walking_heading, look_quaternion

RECIPES = ("sidestep", "turnaround", "high")
#: per recipe, the share of its frames meant to be > 2 m and < 1 m from a similar-view train frame
_GOALS = {"sidestep": (0.45, 0.35), "turnaround": (0.45, 0.4), "high": (0.5, 0.1)}


def _clear(xy: np.ndarray, obs: np.ndarray, limit: float) -> np.ndarray:
    """(N,) whether points (N, 2) are inside the walk square and outside every obstacle disc."""
    inside = np.abs(xy).max(-1) <= limit
    d = np.linalg.norm(xy[:, None, :] - obs[None, :, :2], axis=-1)
    return inside & np.all(d >= obs[None, :, 2], axis=1)


def _push_out(xy: np.ndarray, obs: np.ndarray, limit: float, iters: int = 6) -> np.ndarray:
    """Move points out of the obstacle discs (radially) and into the walk square, smoothing in
    between so the walk stays smooth."""
    xy = xy.copy()
    for it in range(iters):
        for x, y, r in obs:
            v = xy - np.array([x, y])
            d = np.linalg.norm(v, axis=1)
            bad = d < r
            if bad.any():
                v[bad] /= np.maximum(d[bad, None], 1e-9)
                xy[bad] = np.array([x, y]) + v[bad] * (r + 0.02)
        xy = np.clip(xy, -limit, limit)
        if it < iters - 1 and len(xy) >= 5:
            k = np.ones(5) / 5
            xy = np.stack([np.convolve(np.pad(xy[:, i], 2, mode="edge"), k, mode="valid") for i in range(2)], 1)
    return xy


def _train_path(rng: np.random.Generator, length: float, obs: np.ndarray, limit: float) -> _Path:
    for _attempt in range(300):
        while True:
            p = rng.uniform(-limit + 1.0, limit - 1.0, 2)
            if _clear(p[None], obs + np.array([0, 0, 0.5]), limit - 1.0)[0]:
                break
        heading = rng.uniform(0, 2 * np.pi)
        pts = [p]
        n_pts = int(length / 4.0) + 5
        ok = True
        while len(pts) < n_pts:
            for _ in range(80):
                h = heading + rng.normal(0.0, 0.7)
                q = pts[-1] + rng.uniform(4.0, 7.0) * np.array([math.cos(h), math.sin(h)])
                seg = pts[-1][None] + np.linspace(0, 1, 30)[:, None] * (q - pts[-1])[None]
                if _clear(seg, obs + np.array([0, 0, 0.4]), limit - 0.5).all():
                    heading = h
                    pts.append(q)
                    break
            else:
                ok = False
                break
        if not ok:
            continue
        xy = _catmull_rom(np.array(pts), per_seg=60)
        if not _clear(xy, obs, limit).all():
            continue
        xy, s, total = _arc_length(xy)
        if total < length:
            continue
        heading = _walking_heading(xy, s, 15)
        yaw = heading + _smooth(rng, s, 0.45, (4.0, 16.0))                 # looking around, ~26 deg
        pitch = -0.05 + _smooth(rng, s, 0.06, (4.0, 12.0))
        roll = _smooth(rng, s, 0.03, (3.0, 8.0))
        height = rng.uniform(1.45, 1.75) + 0.02 * np.sin(2 * np.pi * s / 0.75) + _smooth(rng, s, 0.03)
        return _Path(s, xy, yaw, pitch, roll, height)
    raise RuntimeError("could not generate a camera walk inside the plaza")


def _bump(t: np.ndarray, a: float = 0.2, b: float = 0.8) -> np.ndarray:
    """0 outside [a, b] of t in 0..1, smoothly up to 1 in the middle (raised cosine)."""
    u = np.clip((t - a) / (b - a), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(2 * np.pi * u)


def _ramp(t: np.ndarray, a: float, b: float) -> np.ndarray:
    u = np.clip((t - a) / max(b - a, 1e-9), 0.0, 1.0)
    return u * u * (3 - 2 * u)


def _test_walk(rng: np.random.Generator, base: _Path, train_span: float, n: int, step: float, recipe: str,
               obs: np.ndarray, limit: float, max_offset: float) -> tuple[np.ndarray, np.ndarray]:
    L = min(float(base.s[-1]), train_span)
    if recipe == "turnaround":
        half = (n + 1) // 2
        st = step
        if (half - 1) * st > L:
            st = L / max(half - 1, 1)
        s0 = rng.uniform(0.0, max(0.0, L - (half - 1) * st))
        fwd = s0 + st * np.arange(half)
        s = np.concatenate([fwd, fwd[::-1][:n - half]])
    else:
        st = step if (n - 1) * step <= L else L / max(n - 1, 1)
        s0 = rng.uniform(0.0, max(0.0, L - (n - 1) * st))
        s = s0 + st * np.arange(n)
    s = np.clip(s, 0.0, L)
    t = np.linspace(0.0, 1.0, n)
    xy, yaw, pitch, roll, height = base.at(s)
    tang = base.at(np.clip(s + 0.1, 0, L))[0] - base.at(np.clip(s - 0.1, 0, L))[0]
    tang /= np.maximum(np.linalg.norm(tang, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-tang[:, 1], tang[:, 0]], 1)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    jitter = _smooth(rng, s if recipe != "turnaround" else t * n * step, 0.15, (3.0, 10.0))
    if recipe == "sidestep":
        off = sign * rng.uniform(0.7, 1.0) * max_offset * _bump(t, 0.15, 0.85) + jitter
        height = height + rng.uniform(-0.06, 0.06)
    elif recipe == "turnaround":
        off = sign * rng.uniform(1.5, 3.0) * _ramp(t, 0.5, 0.8) + jitter
        turn = _ramp(t, 0.42, 0.58)
        yaw = yaw + math.pi * turn
        height = rng.uniform(1.1, 1.2) + 0.015 * np.sin(2 * np.pi * t * n * step / 0.6) + _smooth(rng, s, 0.02)
    elif recipe == "high":
        off = sign * rng.uniform(1.0, 2.5) + _smooth(rng, s, 0.4, (5.0, 15.0))
        height = rng.uniform(2.0, 2.2) + _smooth(rng, s, 0.03)
        pitch = pitch - 0.05
    else:
        raise ValueError(f"unknown test walk recipe {recipe!r}")
    off = np.clip(off, -max_offset, max_offset)
    xy = _push_out(xy + off[:, None] * normal, obs, limit)
    yaw = yaw + _smooth(rng, s, 0.15, (4.0, 12.0))
    pitch = pitch + _smooth(rng, s, 0.04, (4.0, 12.0))
    roll = roll + _smooth(rng, s, 0.02, (3.0, 8.0))
    pos = np.concatenate([xy, height[:, None]], 1)
    return pos, look_quaternion(yaw, pitch, roll)


def make_plaza_walks(seed: int, n_train: int = 4, n_test: int = 3, train_frames: int = 200,
                     test_frames: int = 100, step: float = 0.25, max_offset: float = 5.0,
                     candidates: int = 12) -> list[Walk]:
    """The camera walks of the plaza for ``seed``.

    Returns ``n_train`` train walks (``seq-01`` ..) of ``train_frames`` frames, ``step`` m apart
    along the path, then ``n_test`` test walks (numbered on) of ``test_frames`` frames; test
    walk j follows a stretch of train walk ``j % n_train`` by recipe ``RECIPES[j % 3]`` (see the
    module docstring), at most ``max_offset`` m to its side. Of ``candidates`` random draws of
    each test walk the one whose coverage (shares of frames > 2 m and < 1 m from a similar-view
    train frame, :func:`pae_ros.coverage.coverage_distance`) is nearest its recipe's goal is kept,
    so that a chance crossing of another train walk does not undo the recipe.
    """
    if n_train < 1 or train_frames < 1 or n_test < 0 or (n_test > 0 and test_frames < 1):
        raise ValueError("need at least one train walk with one frame, and test_frames >= 1")
    rng = np.random.default_rng([int(seed), 8003])
    obs = np.array(plaza_obstacles(), np.float64)
    walks: list[Walk] = []
    paths: list[_Path] = []
    for i in range(n_train):
        length = max(step * (train_frames - 1), 1.0)
        path = _train_path(rng, length, obs, WALK_LIMIT)
        paths.append(path)
        xy, yaw, pitch, roll, height = path.at(step * np.arange(train_frames))
        walks.append(Walk(f"seq-{i + 1:02d}", "train", np.concatenate([xy, height[:, None]], 1),
                          look_quaternion(yaw, pitch, roll)))
    train_p = np.concatenate([w.positions for w in walks])
    train_q = np.concatenate([w.quaternions for w in walks])
    for j in range(n_test):
        recipe = RECIPES[j % len(RECIPES)]
        far_goal, near_goal = _GOALS[recipe]
        best = None
        for _try in range(candidates):      # keep the candidate nearest its recipe's goal
            pos, quat = _test_walk(rng, paths[j % n_train], step * (train_frames - 1), test_frames, step,
                                   recipe, obs, WALK_LIMIT, max_offset)
            d = coverage_distance(pos, quat, train_p, train_q)
            score = abs(float(np.mean(d > 2.0)) - far_goal) + abs(float(np.mean(d < 1.0)) - near_goal)
            if best is None or score < best[0]:
                best = (score, pos, quat)
        walks.append(Walk(f"seq-{n_train + j + 1:02d}", "test", best[1], best[2]))
    return walks
