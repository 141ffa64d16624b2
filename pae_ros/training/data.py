"""Training data: hold-out split for calibration, image tensors with augmentation, pose targets.

Positions given to the networks are normalised: ``(p - position_mean) / position_scale``
(metres in, unitless out); quaternions wxyz camera-to-world with ``w >= 0``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..datasets import DatasetSplit, Frame, load_rgb
from ..geometry import canonical_quat
from ..preprocess import crop, normalize, resize_shorter


def holdout_split(frames: list[Frame], fraction: float, block: int = 8) -> tuple[list[Frame], list[Frame]]:
    """Hold back ``fraction`` of every (scene, sequence) for calibration, in short blocks.

    Blocks of ``block`` consecutive frames spread evenly along each sequence: a held-back frame
    then has its nearest training poses about half a block away, like a test frame that passes
    near a training walk. (Holding back each sequence's tail instead made the held-back frames
    much harder than the test walks and the fitted sigma ~2x too large on them.)
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
    """``x = (p - mean) / scale``; mean (3,) m, scale m (largest per-axis std, at least 1 cm)."""

    mean: np.ndarray
    scale: float

    @classmethod
    def fit(cls, positions: np.ndarray) -> "PoseNormalization":
        p = np.asarray(positions, np.float64)
        return cls(p.mean(0), float(max(p.std(0).max(), 0.01)))

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
                 show_progress: bool = False):
        from ..progress import tqdm

        self.frames = frames
        self.resize, self.crop_size = resize, crop_size
        self.train, self.random_crop, self.jitter, self.seed = train, random_crop, jitter, seed
        it = tqdm(frames, desc="loading images", unit="img", disable=not show_progress, leave=False)
        self.images = [resize_shorter(load_rgb(f.image_path), resize) for f in it]
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
