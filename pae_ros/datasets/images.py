"""Image file I/O: RGB ``uint8`` arrays in memory, files on disk via OpenCV (BGR on disk)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .types import DatasetError


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as an ``(H, W, 3)`` ``uint8`` **RGB** array.

    Grey images are expanded to 3 channels, alpha is dropped, 16-bit images are scaled to 8 bit.
    Raises DatasetError naming the file when it is missing, unreadable or not a decodable image.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file missing") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read image file: {e}") from None
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None or img.ndim != 3 or img.shape[2] != 3 or img.size == 0:
        raise DatasetError(f"{path}: corrupt or unsupported image ({len(data)} bytes)")
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def write_rgb(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an ``(H, W, 3)`` ``uint8`` RGB array to ``path`` (format from the suffix, e.g. .png).

    Creates parent folders. Returns the path. Raises ValueError for a bad array, OSError when
    encoding or writing fails.
    """
    path = Path(path)
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    ok, buf = cv2.imencode(path.suffix or ".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: cannot encode image as {path.suffix!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.tobytes())
    return path
