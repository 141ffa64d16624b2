"""A small ray-cast room with high-frequency wall textures (SIFT-friendly), for the geometric tests
(the session's copy of it and the tiny bundle trained on it: ``textured_room``, ``textured_bundle``
in :mod:`support.fixtures`).

Same box geometry, walks and 7Scenes on-disk format as :mod:`pae_ros.datasets.synthetic`, but each
wall is textured with a seeded blob-noise image (corners and blobs at every scale) so local
features find thousands of keypoints; renders 160x120 in ~2 ms with numpy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pae_ros.datasets.synthetic import Room, cast_rays, walk
from pae_ros.datasets.types import CameraIntrinsics
from pae_ros.datasets.writers import write_7scenes_frame, write_7scenes_splits, write_intrinsics

PX_PER_M = 40  # texture resolution on the walls


def textures(seed: int = 0, size: int = 512) -> np.ndarray:
    """(6, size, size, 3) float textures: sums of random blobs at three scales."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.zeros((6, size, size, 3), np.float32)
    for w in range(6):
        t = np.zeros((size, size, 3), np.float32)
        for cells, amp in ((8, 0.5), (32, 0.35), (96, 0.25)):
            small = rng.uniform(-1, 1, (cells, cells, 3)).astype(np.float32)
            t += amp * cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
        out[w] = np.clip(0.5 + 0.5 * t, 0, 1)
    return out


def render_textured(room: Room, tex: np.ndarray, position, quaternion, intr: CameraIntrinsics) -> np.ndarray:
    """RGB uint8 (H, W, 3) image of the room with ``tex`` on its walls, from a camera-to-world pose."""
    wall, a, b, _, _ = cast_rays(room, position, quaternion, intr)
    n = tex.shape[1]
    ia = np.clip((a * PX_PER_M).astype(int), 0, n - 1)
    ib = np.clip((b * PX_PER_M).astype(int), 0, n - 1)
    col = tex[wall, ib, ia]
    return (np.clip(col, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_textured_room(out_dir, scene: str = "room", train_walks: int = 3, test_walks: int = 1, frames: int = 20,
                        width: int = 160, height: int = 120, seed: int = 0, step_m: float = 0.15) -> Path:
    """A 7Scenes-format dataset of the textured room (6 x 8 x 3 m); returns the scene folder."""
    room = Room(size=(8.0, 6.0, 3.0), seed=seed)
    tex = textures(seed, size=int(8 * PX_PER_M))
    intr = CameraIntrinsics(width, height, 0.8 * width, 0.8 * width, (width - 1) / 2, (height - 1) / 2)
    scene_dir = Path(out_dir) / scene
    for s in range(train_walks + test_walks):
        positions, quats = walk(room, frames, seed * 1000 + s, step_m)
        for i in range(frames):
            write_7scenes_frame(scene_dir, s + 1, i, render_textured(room, tex, positions[i], quats[i], intr),
                                positions[i], quats[i])
    write_7scenes_splits(scene_dir, list(range(1, train_walks + 1)),
                         list(range(train_walks + 1, train_walks + test_walks + 1)))
    write_intrinsics(scene_dir, intr)
    return scene_dir


def train_tiny_bundle(root: Path, width: int = 160, height: int = 120, intrinsics_file: bool = True,
                      apr_epochs: int = 2) -> Path:
    """The textured room under ``root / "data"`` (``width`` x ``height`` px) and a tiny bundle (APR + PAE,
    no decoder) trained on it by ``pae train`` (``root / "model.pae"``); shared by the geometric test
    files. ``intrinsics_file=False``: trained before the scene's ``intrinsics.json`` exists (deleted;
    the bundle header then holds the format's default camera). ``apr_epochs``: 2 is enough where a
    test hands the Localizer a retrieval shortlist; more where the APR pose alone must find it."""
    import json

    import torch
    import yaml

    from support.fixtures import TINY_CONFIG
    from pae_ros.cli import main

    torch.set_num_threads(2)
    scene_dir = write_textured_room(root / "data", train_walks=3, test_walks=1, frames=14, step_m=0.15,
                                    width=width, height=height)
    if not intrinsics_file:
        (scene_dir / "intrinsics.json").unlink()
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["apr"]["epochs"], cfg["pae"]["epochs"] = apr_epochs, 5
    cfg["decoder"] = {"enabled": False}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = root / "model.pae"
    assert main(["train", "--data", str(root / "data"), "--format", "7scenes", "--out", str(out),
                 "--config", str(root / "cfg.yaml"), "--device", "cpu", "--quiet"]) == 0
    return out
