"""Out-of-scene test images for the gating report of ``pae eval --ood``.

Kinds (RGB uint8 (H, W, 3), the size of the test frames they are made from):

* ``black``, ``white``: constant 0 / 255 images;
* ``noise``: uniform random pixels (seeded);
* ``upside_down``: test frames flipped vertically;
* ``mirrored``: test frames flipped left-right;
* ``rotated``: test frames rotated by 90 deg (the image becomes W x H);
* ``other_scene``: frames of another scene folder, when one is given.

None of these is a view of the scene a bundle was trained on, so a good out-of-scene gate rejects
all of them (the upside-down, mirrored and rotated frames keep the scene's colours and textures: the hard ones).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

KINDS = ("black", "white", "noise", "upside_down", "mirrored", "rotated", "other_scene")


def pick_evenly(n_total: int, n: int) -> np.ndarray:
    return np.unique(np.linspace(0, max(n_total - 1, 0), min(n, n_total)).astype(int))


def out_of_scene_images(test_images: list[np.ndarray], per_kind: int = 16, seed: int = 0,
                        other_scene_images: list[np.ndarray] | None = None,
                        kinds: tuple[str, ...] = KINDS) -> list[tuple[str, np.ndarray]]:
    """``[(kind, rgb uint8 (H, W, 3)), ...]``: ``per_kind`` images of each kind, made from evenly
    spaced ``test_images`` (their sizes); ``other_scene`` only when ``other_scene_images`` is given."""
    if not test_images:
        raise ValueError("out-of-scene images need at least one test image (for the image size)")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown out-of-scene kinds {unknown} (known: {', '.join(KINDS)})")
    rng = np.random.default_rng(seed)
    out: list[tuple[str, np.ndarray]] = []
    src = [np.asarray(test_images[i]) for i in pick_evenly(len(test_images), per_kind)]
    shape = src[0].shape
    for kind in kinds:
        if kind == "black":
            out += [(kind, np.zeros(shape, np.uint8)) for _ in range(per_kind)]
        elif kind == "white":
            out += [(kind, np.full(shape, 255, np.uint8)) for _ in range(per_kind)]
        elif kind == "noise":
            out += [(kind, rng.integers(0, 256, size=shape, dtype=np.uint8)) for _ in range(per_kind)]
        elif kind == "upside_down":
            out += [(kind, np.ascontiguousarray(im[::-1])) for im in src]
        elif kind == "mirrored":
            out += [(kind, np.ascontiguousarray(im[:, ::-1])) for im in src]
        elif kind == "rotated":
            out += [(kind, np.ascontiguousarray(np.rot90(im))) for im in src]
        elif kind == "other_scene" and other_scene_images:
            out += [(kind, np.asarray(other_scene_images[i])) for i in pick_evenly(len(other_scene_images), per_kind)]
    return out


def load_other_scene(root: str | Path, fmt: str, split: str = "test", limit: int = 16) -> list[np.ndarray]:
    """Up to ``limit`` evenly spaced RGB frames of the ``split`` of a dataset folder (any format)."""
    from ..datasets import load_rgb, read_dataset

    frames = read_dataset(root, fmt, split).frames
    if not frames:
        raise ValueError(f"{root}: no {split} frames for the out-of-scene images")
    return [load_rgb(frames[i].image_path) for i in pick_evenly(len(frames), limit)]
