"""Training data: calibration hold-outs, pose checks, image tensors with augmentation, pose targets.

Positions given to the networks are normalised: ``(p - position_mean) / position_scale``
(metres in, unitless out), with robust statistics (median centre, MAD scale) so that one absurd
pose cannot stretch the scale; quaternions wxyz camera-to-world with ``w >= 0``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..datasets import DatasetSplit, Frame, load_rgb
from ..geometry import canonical_quat
from ..preprocess import crop, normalize, resize_shorter

log = logging.getLogger("pae.train.data")

#: a train position farther than this many robust scales (1.4826 MAD, largest axis) from the
#: median position, on any axis, is an outlier (a walk across a 5 m room has |p - median| < 3 scales)
OUTLIER_SCALES = 25.0
#: |coordinate| above this (m) cannot be trained on in float32 networks
MAX_ABS_COORDINATE_M = 1e7


def frame_key(f: Frame) -> str:
    """A stable id of a frame: ``scene/sequence/image file name``."""
    return f"{f.scene}/{f.sequence}/{f.image_path.name}"


def frame_source(f: Frame) -> str:
    """Where a frame's pose came from, for messages: the reader's ``source`` (file:line) when it
    records one, else the 7Scenes pose file next to the image, else the image path."""
    src = getattr(f, "source", None)
    if src:
        return str(src)
    name = f.image_path.name
    if name.endswith(".color.png"):
        return str(f.image_path.with_name(name[: -len(".color.png")] + ".pose.txt"))
    return f"{f.image_path} (sequence {f.sequence})"


class BadPoseError(ValueError):
    """Train poses that cannot be trained on (non-finite or far outliers); the message names them."""


def check_poses(frames: list[Frame], skip_bad: bool = False) -> tuple[list[Frame], list[str]]:
    """Find non-finite, absurdly large and outlier train poses.

    Outliers: any axis farther than :data:`OUTLIER_SCALES` robust scales from the median of the
    finite poses. Raises :class:`BadPoseError` naming each bad frame (by pose file / line), or with
    ``skip_bad`` drops them and returns ``(kept frames, reasons)`` (logged as a warning).
    """
    bad: list[str] = []
    keep_mask = np.ones(len(frames), bool)
    if frames:
        P = np.stack([np.asarray(f.position, np.float64) for f in frames])
        Q = np.stack([np.asarray(f.quaternion, np.float64) for f in frames])
        with np.errstate(invalid="ignore", over="ignore"):
            finite = np.isfinite(P).all(1) & np.isfinite(Q).all(1) & (np.abs(P) < MAX_ABS_COORDINATE_M).all(1)
            finite &= np.linalg.norm(np.where(np.isfinite(Q), Q, 0), axis=1) > 1e-6
        for i in np.where(~finite)[0]:
            bad.append(f"{frame_source(frames[i])}: pose not finite or not usable "
                       f"(position {P[i].tolist()}, quaternion {Q[i].tolist()})")
        keep_mask &= finite
        if finite.sum() >= 3:
            med = np.median(P[finite], axis=0)
            scale = _robust_scale(P[finite])
            dev = np.abs(P - med).max(1) / scale
            out = finite & (dev > OUTLIER_SCALES)
            for i in np.where(out)[0]:
                bad.append(f"{frame_source(frames[i])}: position {P[i].tolist()} m is {dev[i]:.3g} robust scales "
                           f"({scale:.3g} m) from the median {med.round(3).tolist()} m (outlier limit {OUTLIER_SCALES:g})")
            keep_mask &= ~out
    if bad and not skip_bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise BadPoseError(f"{len(bad)} bad train pose(s): " + "; ".join(bad[:5]) + more
                           + "; fix them or pass --skip-bad to drop them")
    if bad:
        log.warning("skipped %d bad train pose(s) (--skip-bad): %s", len(bad), "; ".join(bad[:5]))
    return [f for f, k in zip(frames, keep_mask) if k], bad


def _robust_scale(p: np.ndarray) -> float:
    """Largest per-axis 1.4826 * MAD (m; the std for Gaussian data), falling back to the largest
    per-axis std when the MAD is 0 (over half the poses share a coordinate), floored at 1 cm."""
    p = np.asarray(p, np.float64)
    if len(p) == 0:
        return 0.01
    mad = 1.4826 * np.median(np.abs(p - np.median(p, axis=0)), axis=0).max()
    if not mad > 0:
        mad = float(p.std(0).max())
    return float(max(mad, 0.01))


def walk_folds(frames: list[Frame], folds: int, fraction: float) -> list[list[Frame]]:
    """Held-out frames of each calibration fold: whole walks (sequences) per scene.

    Fold ``i`` holds out, in every scene with ``W >= 2`` walks, the ``i``-th best covered walk:
    walks ranked by the median coverage distance of their frames to the scene's other walks
    (:func:`pae_ros.coverage.coverage_distance`, nearest similar-view camera; ties by name). A
    query walk is recorded in the mapped area; the least covered walks explore parts no other
    walk sees, so errors on them would overstate the test errors (on the built-in scenes even the
    best covered train walk lies farther from the others than the test walks from the train
    walks). In a scene with one walk: its ``i``-th contiguous stretch of ``fraction`` of the frames
    counted from the end (a stretch touches training frames at one or two ends only, unlike short
    blocks). Folds beyond a scene's walk count repeat no walk: that scene contributes nothing to
    them. Frames keep their input order.
    """
    from ..coverage import coverage_distance

    if fraction <= 0 or folds < 1:
        return []
    by_scene: dict[str, dict[str, list[Frame]]] = {}
    for f in frames:
        by_scene.setdefault(f.scene, {}).setdefault(f.sequence, []).append(f)
    held_sets: list[set[int]] = [set() for _ in range(folds)]
    for walks in by_scene.values():
        names = sorted(walks)
        if len(names) >= 2:
            def median_coverage(name):
                mine = walks[name]
                others = [f for n in names if n != name for f in walks[n]]
                d = coverage_distance(np.stack([f.position for f in mine]), np.stack([f.quaternion for f in mine]),
                                      np.stack([f.position for f in others]), np.stack([f.quaternion for f in others]))
                return float(np.median(d))

            ranked = sorted(names, key=lambda n: (median_coverage(n), n))
            for i in range(min(folds, len(names))):
                held_sets[i] |= {id(f) for f in walks[ranked[i]]}
        else:
            seq = walks[names[0]]
            n = len(seq)
            m = int(round(n * fraction))
            if m == 0 or n - m < 2:
                continue
            for i in range(folds):
                end = n - i * m
                if end - m < 1:
                    break
                held_sets[i] |= {id(f) for f in seq[end - m:end]}
    return [[f for f in frames if id(f) in s] for s in held_sets if s]


def holdout_split(frames: list[Frame], fraction: float, block: int = 8) -> tuple[list[Frame], list[Frame]]:
    """Hold back ``fraction`` of every (scene, sequence) for calibration, in short blocks.

    Blocks of ``block`` consecutive frames spread evenly along each sequence: a held-back frame
    then has its nearest training poses about half a block away. These near-duplicates of their
    neighbours make the errors on them small, so sigma fitted on them is too small on new
    viewpoints (docs/RESULTS.md): ``holdout: walk`` (:func:`walk_folds`) is the default.
    """
    if fraction <= 0:
        return list(frames), []
    groups: dict[tuple[str, str], list[Frame]] = {}
    for f in frames:
        groups.setdefault((f.scene, f.sequence), []).append(f)
    fit, held = [], []
    for seq_frames in groups.values():
        n = len(seq_frames)
        n_hold = int(round(n * fraction))
        if n - n_hold < 2 or n_hold == 0:
            fit += seq_frames
            continue
        b = max(1, min(block, n_hold))
        n_blocks = int(np.ceil(n_hold / b))
        mask = np.zeros(n, bool)
        for i in range(n_blocks):
            start = int(round((i + 0.5) * n / n_blocks - b / 2))
            mask[max(0, start):min(n, start + b)] = True
        fit += [f for f, m in zip(seq_frames, mask) if not m]
        held += [f for f, m in zip(seq_frames, mask) if m]
    return fit, held


@dataclass
class PoseNormalization:
    """``x = (p - mean) / scale``; mean (3,) m: the per-axis **median** (robust centre; the header
    key keeps the name ``position_mean``), scale m: the largest per-axis 1.4826 MAD (the std for
    Gaussian data; one pose at 1e5 m among 600 leaves it unchanged), at least 1 cm."""

    mean: np.ndarray
    scale: float

    @classmethod
    def fit(cls, positions: np.ndarray) -> "PoseNormalization":
        p = np.asarray(positions, np.float64)
        if len(p) == 0 or not np.isfinite(p).all():
            raise BadPoseError(f"cannot normalise {len(p)} positions: empty or not finite")
        return cls(np.median(p, axis=0), _robust_scale(p))

    def apply(self, p: np.ndarray) -> np.ndarray:
        return (np.asarray(p, np.float64) - self.mean) / self.scale


def color_jitter(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and saturation factors in [1 - s, 1 + s] (uint8 RGB in/out)."""
    x = img.astype(np.float32)
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    x = x * b
    x = (x - x.mean()) * c + x.mean()
    gray = x.mean(axis=2, keepdims=True)
    x = (x - gray) * s + gray
    return np.clip(x, 0, 255).astype(np.uint8)


class FrameImages(Dataset):
    """Images of frames resized (shorter side = ``resize``) once and kept in memory as uint8.

    ``train=True``: random crop (if enabled) + colour jitter; else centre crop. Items:
    ``(image (3,S,S) float, x_norm (3,), q (4,), scene_idx, index)``.
    """

    def __init__(self, frames: list[Frame], scenes: list[str], norm: PoseNormalization, resize: int, crop_size: int,
                 train: bool = False, random_crop: bool = True, jitter: float = 0.0, seed: int = 0,
                 show_progress: bool = False, image_cache: dict | None = None):
        """``image_cache``: optional dict ``frame_key -> resized image`` shared between datasets of
        the same resize (calibration folds reuse the images the main stages loaded)."""
        from ..progress import tqdm

        self.frames = frames
        self.resize, self.crop_size = resize, crop_size
        self.train, self.random_crop, self.jitter, self.seed = train, random_crop, jitter, seed
        cache = {} if image_cache is None else image_cache
        it = tqdm(frames, desc="loading images", unit="img", disable=not show_progress, leave=False)
        self.images = []
        for f in it:
            key = frame_key(f)
            img = cache.get(key)
            if img is None:
                img = cache[key] = resize_shorter(load_rgb(f.image_path), resize)
            self.images.append(img)
        self.x = torch.as_tensor(norm.apply(np.stack([f.position for f in frames])), dtype=torch.float32)
        self.q = torch.as_tensor(canonical_quat(np.stack([f.quaternion for f in frames])), dtype=torch.float32)
        self.scene_idx = torch.as_tensor([scenes.index(f.scene) for f in frames], dtype=torch.long)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.frames)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def view(self, i: int) -> np.ndarray:
        img = self.images[i]
        if not self.train:
            return crop(img, self.crop_size)
        rng = np.random.default_rng((self.seed, self.epoch, i))
        h, w = img.shape[:2]
        if self.random_crop:
            img = crop(img, self.crop_size, int(rng.integers(0, h - self.crop_size + 1)),
                       int(rng.integers(0, w - self.crop_size + 1)))
        else:
            img = crop(img, self.crop_size)
        if self.jitter > 0:
            img = color_jitter(img, self.jitter, rng)
        return img

    def __getitem__(self, i: int):
        return normalize(self.view(i)[None])[0], self.x[i], self.q[i], self.scene_idx[i], i

    def centre_batch(self, indices) -> torch.Tensor:
        """Normalised centre crops (no augmentation) of the given items, as one batch."""
        return normalize(np.stack([crop(self.images[i], self.crop_size) for i in indices]))


def frames_positions(frames: list[Frame]) -> np.ndarray:
    return np.stack([f.position for f in frames]) if frames else np.zeros((0, 3))


def frames_quaternions(frames: list[Frame]) -> np.ndarray:
    return canonical_quat(np.stack([f.quaternion for f in frames])) if frames else np.zeros((0, 4))


def scenes_of(split: DatasetSplit) -> list[str]:
    """Scene names in first-seen order (the bundle's scene index order)."""
    out: list[str] = []
    for f in split.frames:
        if f.scene not in out:
            out.append(f.scene)
    return out
