"""A procedural, ray-cast room: a fast synthetic scene with exact poses, for tests.

The room is the box ``[0, Lx] x [0, Ly] x [0, Lz]`` metres (world z up). Every wall carries a
different procedural texture (colour gradients, stripes and seeded "posters"), so the image
depends on the pose. Cameras follow smooth walks at head height; train and test walks are
separate walks over the same area. Rendering is vectorised numpy (~1 ms for 64x48).
Poses are camera-to-world, OpenCV optical axes; pixel (u, v) integer coordinates are pixel
centres, so a point projects to ``K @ p_cam`` exactly as :func:`pae_ros.geometry.camera_project`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..geometry import quat_to_rotmat, rotmat_to_quat
from .types import CameraIntrinsics
from .writers import write_7scenes_frame, write_7scenes_splits, write_intrinsics


@dataclass
class Room:
    size: tuple[float, float, float] = (8.0, 6.0, 3.0)
    seed: int = 0

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        # per wall (6): base colour, stripe frequency/phase, and 6 posters (u0, v0, w, h, rgb)
        self.base = rng.uniform(0.2, 0.9, size=(6, 3))
        self.freq = rng.uniform(0.5, 3.0, size=(6, 2))
        self.phase = rng.uniform(0, 2 * np.pi, size=(6, 2))
        self.posters = rng.uniform(0, 1, size=(6, 6, 7))


def look_quat(yaw: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """Camera-to-world quaternions (wxyz, OpenCV axes) looking along yaw (about world z, rad)
    and pitch (up positive, rad), with no roll."""
    f = np.stack([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)], -1)
    up = np.array([0.0, 0.0, 1.0])
    x = np.cross(f, up)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    y = np.cross(f, x)
    return rotmat_to_quat(np.stack([x, y, f], axis=-1))


def cast_rays(room: Room, position: np.ndarray, quaternion: np.ndarray, intr: CameraIntrinsics):
    """Where each pixel's ray from a camera-to-world pose meets the room's walls.

    Returns ``(wall, a, b, other, tmin)``, each (H, W): the wall index (0..5: axis * 2, + 1 for the
    far wall of that axis), the hit's 2-D wall coordinates ``a``, ``b`` in metres along the world
    axes ``other[..., 0]``, ``other[..., 1]`` (``other``: (H, W, 2)), and ``tmin``, the hit's depth
    along the optical axis in metres."""
    L = np.asarray(room.size)
    u, v = np.meshgrid(np.arange(intr.width), np.arange(intr.height))
    d_cam = np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, np.ones_like(u, float)], -1)
    d = d_cam @ quat_to_rotmat(quaternion).T
    o = np.asarray(position, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(d > 0, L, 0.0)
        t = (bound - o) / d
    t = np.where(np.isfinite(t) & (t > 0), t, np.inf)
    axis = np.argmin(t, axis=-1)
    tmin = np.take_along_axis(t, axis[..., None], -1)[..., 0]
    hit = o + d * tmin[..., None]
    wall = axis * 2 + (np.take_along_axis(d, axis[..., None], -1)[..., 0] > 0)
    # 2-D wall coordinates in metres: the two other axes
    other = np.array([[1, 2], [0, 2], [0, 1]])[axis]
    a = np.take_along_axis(hit, other[..., :1], -1)[..., 0]
    b = np.take_along_axis(hit, other[..., 1:], -1)[..., 0]
    return wall, a, b, other, tmin


def render(room: Room, position: np.ndarray, quaternion: np.ndarray, intr: CameraIntrinsics) -> np.ndarray:
    """RGB uint8 (H, W, 3) image of the room from a camera-to-world pose."""
    L = np.asarray(room.size)
    wall, a, b, other, tmin = cast_rays(room, position, quaternion, intr)
    col = room.base[wall].copy()
    stripes = 0.5 + 0.5 * np.sin(room.freq[wall, 0] * a * 2 + room.phase[wall, 0]) * np.cos(
        room.freq[wall, 1] * b * 2 + room.phase[wall, 1])
    col *= (0.6 + 0.4 * stripes)[..., None]
    ua = a / L[other[..., 0]]
    vb = b / L[other[..., 1]]
    for k in range(room.posters.shape[1]):
        p = room.posters[wall, k]
        inside = (ua > p[..., 0] * 0.8) & (ua < p[..., 0] * 0.8 + 0.05 + 0.15 * p[..., 2]) & \
                 (vb > p[..., 1] * 0.7) & (vb < p[..., 1] * 0.7 + 0.1 + 0.2 * p[..., 3])
        col = np.where(inside[..., None], p[..., 4:7], col)
    shade = np.clip(1.0 - 0.04 * tmin, 0.4, 1.0)[..., None]
    return (np.clip(col * shade, 0, 1) * 255 + 0.5).astype(np.uint8)


def walk(room: Room, n: int, seed: int, step_m: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """A smooth walk of n poses at head height inside the room (1 m margin). -> (positions, quats)."""
    rng = np.random.default_rng(seed)
    L = np.asarray(room.size)
    lo, hi = np.array([1.0, 1.0]), L[:2] - 1.0
    p = rng.uniform(lo, hi)
    heading = rng.uniform(-np.pi, np.pi)
    yaw = heading + rng.uniform(-0.5, 0.5)
    pos, yaws, pitches = [], [], []
    pitch = 0.0
    for _ in range(n):
        heading += rng.normal(0, 0.15)
        nxt = p + step_m * np.array([np.cos(heading), np.sin(heading)])
        if np.any(nxt < lo) or np.any(nxt > hi):
            heading += np.pi * 0.5
            nxt = np.clip(p, lo, hi)
        p = nxt
        yaw += 0.5 * np.angle(np.exp(1j * (heading - yaw))) * 0.2 + rng.normal(0, 0.03)
        pitch = np.clip(0.9 * pitch + rng.normal(0, 0.03), -0.3, 0.3)
        pos.append([p[0], p[1], 1.5 + 0.05 * np.sin(len(pos) * 0.3)])
        yaws.append(yaw)
        pitches.append(pitch)
    return np.asarray(pos), look_quat(np.asarray(yaws), np.asarray(pitches))


def write_room_dataset(out_dir: str | Path, scene: str = "room", train_walks: int = 3, test_walks: int = 1,
                       frames: int = 80, width: int = 64, height: int = 48, seed: int = 0,
                       step_m: float = 0.05) -> Path:
    """Write a 7Scenes-format dataset of the room; returns the scene folder."""
    room = Room(seed=seed)
    intr = CameraIntrinsics(width, height, 0.8 * width, 0.8 * width, (width - 1) / 2, (height - 1) / 2)
    scene_dir = Path(out_dir) / scene
    n_seq = train_walks + test_walks
    for s in range(n_seq):
        positions, quats = walk(room, frames, seed * 1000 + s, step_m)
        for i in range(frames):
            write_7scenes_frame(scene_dir, s + 1, i, render(room, positions[i], quats[i], intr), positions[i], quats[i])
    write_7scenes_splits(scene_dir, list(range(1, train_walks + 1)), list(range(train_walks + 1, n_seq + 1)))
    write_intrinsics(scene_dir, intr)
    return scene_dir
