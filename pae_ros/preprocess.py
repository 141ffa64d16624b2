"""Image preprocessing, the one place: resize the shorter side, crop, ImageNet-normalise.

Input images are ``(H, W, 3)`` uint8 **RGB**. Output tensors are float32 ``(B, 3, S, S)``.

Resizing the shorter side to ``size`` makes the longer side ``size * aspect``: a 1 x 8192 image
would become 128 x 1,048,576 pixels (400 MB). Images whose aspect (longer / shorter side) is
above :data:`pae_ros.image_codec.DEFAULT_MAX_ASPECT` are therefore refused with
:class:`pae_ros.image_codec.ImageDecodeError` (reason ``bad_aspect``, a ``ValueError``) before
any resize.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from .bundle import IMAGENET_MEAN, IMAGENET_STD
from .image_codec import DEFAULT_MAX_ASPECT, ImageDecodeError

_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32) * 255.0
_INV_STD = 1.0 / (np.asarray(IMAGENET_STD, dtype=np.float32) * 255.0)


def resize_shorter(rgb: np.ndarray, size: int, max_aspect: float = DEFAULT_MAX_ASPECT) -> np.ndarray:
    """Resize so the shorter side is ``size`` px, keeping the aspect ratio (area interpolation).

    Raises :class:`~pae_ros.image_codec.ImageDecodeError` (``empty`` / ``bad_aspect``) for an
    empty image or one whose longer side is more than ``max_aspect`` times the shorter."""
    h, w = rgb.shape[:2]
    if min(h, w) <= 0:
        raise ImageDecodeError("empty", f"image is {w}x{h} pixels")
    if max(h, w) > max_aspect * min(h, w):
        raise ImageDecodeError("bad_aspect", f"image is {w}x{h} pixels, aspect {max(h, w) / min(h, w):.1f}:1 above "
                                             f"the limit {max_aspect:g}:1 (resizing it would blow it up)")
    if min(h, w) == size:
        return rgb
    s = size / min(h, w)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(rgb, (nw, nh), interpolation=interp)


def crop(rgb: np.ndarray, size: int, top: int | None = None, left: int | None = None) -> np.ndarray:
    """Square crop of ``size`` px; centred unless ``top``/``left`` are given."""
    h, w = rgb.shape[:2]
    if top is None:
        top = (h - size) // 2
    if left is None:
        left = (w - size) // 2
    return rgb[top:top + size, left:left + size]


def normalize(rgb_batch: np.ndarray) -> torch.Tensor:
    """(B, S, S, 3) uint8 RGB -> (B, 3, S, S) float32 ImageNet-normalised."""
    x = (rgb_batch.astype(np.float32) - _MEAN) * _INV_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def prepare(rgb: np.ndarray, resize: int, crop_size: int) -> np.ndarray:
    """Test-time geometry: resize shorter side then centre crop. Returns (S, S, 3) uint8 RGB."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}")
    return crop(resize_shorter(rgb, resize), crop_size)


def to_batch(images: list[np.ndarray], resize: int, crop_size: int) -> torch.Tensor:
    """Test-time preprocessing of a list of RGB images into one normalised batch."""
    return normalize(np.stack([prepare(im, resize, crop_size) for im in images]))
