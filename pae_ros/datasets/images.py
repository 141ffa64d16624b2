"""Image file I/O: RGB ``uint8`` arrays in memory, files on disk via OpenCV (BGR on disk).

Reading goes through :mod:`pae_ros.image_codec`: the size in a JPEG / PNG header is checked
(sides, area, aspect) before decoding, a JPEG that libjpeg decodes only with corruption warnings
is refused as corrupt, and libjpeg / libpng / OpenCV print nothing on stderr.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .. import image_codec as codec
from .types import DatasetError


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file missing") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: is a directory, not an image file") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read image file: {e.strerror or e}") from None
    if not data:
        raise DatasetError(f"{path}: corrupt image: empty file (0 bytes)")
    return data


def _decode(path: Path, data: bytes, flags: int) -> np.ndarray:
    """Checked, quiet decode of file bytes with ``cv2.imdecode`` ``flags``; DatasetError naming the file."""
    kind = None
    try:
        kind = codec.check_compressed("", data)[0]  # JPEG / PNG: header size, EOI, before decoding
    except codec.ImageDecodeError as e:
        if not (e.reason == "corrupt_compressed" and "signature" in e.detail):  # other formats: cv2 decides
            raise DatasetError(f"{path}: corrupt image ({e.reason}: {e.detail}; {len(data)} bytes)") from None
    img, messages = codec.imdecode(data, flags)
    bad = codec.jpeg_corruption(messages) if kind == "jpeg" else None
    if img is None or img.size == 0:
        why = f": {messages[0][:120]}" if messages else ""
        raise DatasetError(f"{path}: corrupt or unsupported image ({len(data)} bytes){why}")
    if bad is not None:
        raise DatasetError(f"{path}: corrupt image: {bad[:120]}")
    if kind is None:
        try:
            codec.check_size(img.shape[0], img.shape[1])
        except codec.ImageDecodeError as e:
            raise DatasetError(f"{path}: {e.reason}: {e.detail}") from None
    return img


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as an ``(H, W, 3)`` ``uint8`` **RGB** array.

    Grey images are expanded to 3 channels, alpha is dropped, 16-bit images are scaled to 8 bit.
    Raises DatasetError naming the file when it is missing, empty, unreadable, not a decodable
    image, corrupt (libjpeg warnings), or larger than :mod:`pae_ros.image_codec`'s limits.
    """
    path = Path(path)
    img = _decode(path, _read_bytes(path), cv2.IMREAD_COLOR)
    if img.ndim != 3 or img.shape[2] != 3:
        raise DatasetError(f"{path}: corrupt or unsupported image (decoded shape {img.shape})")
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def check_image_file(path: str | Path) -> None:
    """Raise DatasetError (as :func:`load_rgb` would) when ``path`` is not a good image; cheaper
    than loading it (a JPEG is decoded at 1/8 scale, every byte of its scan data still checked)."""
    path = Path(path)
    _decode(path, _read_bytes(path), cv2.IMREAD_REDUCED_GRAYSCALE_8)


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
