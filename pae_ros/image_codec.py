"""ROS-free decoding of ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` fields.

The node (:mod:`pae_ros.ros.localizer_node`) passes the message *fields* here, so this module
imports no rclpy and can be tested (and reused by the bag tools) without ROS.

Output everywhere: ``np.uint8`` arrays of shape ``(H, W, 3)`` in **RGB** order (the core's image
convention, see :mod:`pae_ros`).

Every rejected input raises :class:`ImageDecodeError` whose ``reason`` is one short, stable
string, usable as a counter key in ``/diagnostics``:

==================== =========================================================================
reason               meaning
==================== =========================================================================
``empty``            zero width/height, or no data
``too_large``        width or height above ``max_dim`` (default :data:`DEFAULT_MAX_DIM`), or
                     width * height above ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`)
``bad_aspect``       longer / shorter side above ``max_aspect`` (default :data:`DEFAULT_MAX_ASPECT`):
                     resizing the shorter side to the network input would blow it up
``bad_dimensions``   negative / non-integer width, height or step, odd width for yuv422
``unknown_encoding`` raw encoding not in :data:`SUPPORTED_ENCODINGS`
``bad_step``         ``step`` smaller than ``width * bytes_per_pixel``
``size_mismatch``    ``len(data) != step * height``
``unsupported_format`` compressed format that is not JPEG or PNG (e.g. ``compressedDepth``)
``corrupt_compressed`` compressed bytes that are not a complete, decodable JPEG or PNG
``corrupt``          a JPEG that decodes only with libjpeg's corruption warnings (scrambled or
                     damaged scan data, premature end): the pixels are partly garbage
==================== =========================================================================

All size checks (sides, area, aspect) run on the header fields / the JPEG or PNG header
*before* any pixel is decoded or allocated. Bytes after a JPEG's end-of-image marker or a PNG's
IEND chunk (UVC / MJPEG buffers are padded) are ignored.

libjpeg and libpng print their warnings straight to the process's stderr (file descriptor 2).
:func:`imdecode` captures them around each decode (under a lock), so they never print once per
frame: corruption warnings become the ``corrupt`` rejection, harmless ones are logged through
:mod:`logging` at most once per :data:`LOG_EVERY_S` seconds per message, and anything else that
another thread wrote to stderr meanwhile is passed on unchanged.

Raw decoding is zero-copy where possible: for ``rgb8`` (and ``rgba8`` / padded rows of it) the
result is a (possibly read-only, possibly strided) *view* of ``data``; callers must not write
into it. Other encodings produce one new contiguous array.

Validation is split from decoding so that a subscriber can reject malformed messages cheaply in
its callback (:func:`check_image`, :func:`check_compressed`: O(1), no pixel work) and do the
pixel work elsewhere (:func:`decode_image`, :func:`decode_compressed`, which validate again).
"""
from __future__ import annotations

import logging
import os
import re
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("pae_ros.image_codec")

#: default limit on width and height, pixels (both raw and compressed images)
DEFAULT_MAX_DIM = 8192
#: default limit on width * height, pixels (24 MP: 6144 x 4096; 8192 x 8192 is refused)
DEFAULT_MAX_PIXELS = 6144 * 4096
#: default limit on longer side / shorter side (the shorter side is resized to the network input)
DEFAULT_MAX_ASPECT = 8.0
#: seconds between two log lines of the same codec message
LOG_EVERY_S = 30.0

#: encoding -> (channels, bytes per channel). ``8UC1``/``8UC3``/``16UC1`` are accepted as
#: aliases of ``mono8`` / ``bgr8`` (OpenCV's default order) / ``mono16``.
SUPPORTED_ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "mono16": (1, 2),
    "8UC1": (1, 1),
    "8UC3": (3, 1),
    "16UC1": (1, 2),
    # colour-filter-array mosaics (ROS image_encodings names), demosaiced by OpenCV
    "bayer_rggb8": (1, 1),
    "bayer_bggr8": (1, 1),
    "bayer_gbrg8": (1, 1),
    "bayer_grbg8": (1, 1),
    # 4:2:2 packed YUV: "yuv422" is ROS's UYVY (U Y0 V Y1), "yuv422_yuy2" is YUYV (Y0 U Y1 V)
    "yuv422": (2, 1),
    "uyvy": (2, 1),
    "yuv422_yuy2": (2, 1),
    "yuyv": (2, 1),
}

#: mosaic encoding -> OpenCV code giving RGB (OpenCV names a pattern by its second row, hence
#: the apparent swap: ROS rggb = OpenCV BayerBG, as in cv_bridge)
_BAYER_TO_RGB = {"bayer_rggb8": "COLOR_BayerBG2RGB", "bayer_bggr8": "COLOR_BayerRG2RGB",
                 "bayer_gbrg8": "COLOR_BayerGR2RGB", "bayer_grbg8": "COLOR_BayerGB2RGB"}
_YUV_TO_RGB = {"yuv422": "COLOR_YUV2RGB_UYVY", "uyvy": "COLOR_YUV2RGB_UYVY",
               "yuv422_yuy2": "COLOR_YUV2RGB_YUYV", "yuyv": "COLOR_YUV2RGB_YUYV"}

#: every reason string :class:`ImageDecodeError` can carry
REASONS = ("empty", "too_large", "bad_aspect", "bad_dimensions", "unknown_encoding", "bad_step",
           "size_mismatch", "unsupported_format", "corrupt_compressed", "corrupt")


class ImageDecodeError(ValueError):
    """A message that cannot be turned into an RGB image.

    ``reason`` is one of :data:`REASONS` (a counter key); ``detail`` a human-readable sentence.
    """

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail or reason
        super().__init__(f"{reason}: {self.detail}")


@dataclass(frozen=True)
class ImageFields:
    """The fields of a ``sensor_msgs/Image`` (what :func:`encode_image` returns)."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes


def _nbytes(data) -> int:
    if data is None:
        return 0
    if isinstance(data, np.ndarray):
        return int(data.nbytes)
    return memoryview(data).nbytes


def _as_uint8(data) -> np.ndarray:
    """Flat uint8 view of bytes / bytearray / memoryview / array.array / ndarray (no copy)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    mv = memoryview(data)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    return np.frombuffer(mv, dtype=np.uint8)


def check_size(height, width, max_dim: int = DEFAULT_MAX_DIM, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_aspect: float = DEFAULT_MAX_ASPECT) -> tuple[int, int]:
    """Validate an image size in pixels before anything is allocated: each side <= ``max_dim``,
    ``width * height <= max_pixels``, ``longer / shorter <= max_aspect``. Returns ``(h, w)``;
    raises :class:`ImageDecodeError` (``empty``, ``bad_dimensions``, ``too_large``, ``bad_aspect``)."""
    try:
        h, w = int(height), int(width)
    except (TypeError, ValueError, OverflowError):
        raise ImageDecodeError("bad_dimensions", f"width/height not integers: {width!r} x {height!r}") from None
    if h < 0 or w < 0:
        raise ImageDecodeError("bad_dimensions", f"negative size {w}x{h}")
    if h == 0 or w == 0:
        raise ImageDecodeError("empty", f"image is {w}x{h} pixels")
    if h > max_dim or w > max_dim:
        raise ImageDecodeError("too_large", f"image is {w}x{h} pixels, limit {max_dim}x{max_dim}")
    if h * w > max_pixels:
        raise ImageDecodeError("too_large", f"image is {w}x{h} = {h * w / 1e6:.1f} MP, limit {max_pixels / 1e6:.1f} MP")
    if max(h, w) > max_aspect * min(h, w):
        raise ImageDecodeError("bad_aspect", f"image is {w}x{h} pixels, aspect {max(h, w) / min(h, w):.1f}:1 "
                                             f"above the limit {max_aspect:g}:1")
    return h, w


def check_image(height: int, width: int, encoding: str, step: int, data_len: int,
                max_dim: int = DEFAULT_MAX_DIM, max_pixels: int = DEFAULT_MAX_PIXELS,
                max_aspect: float = DEFAULT_MAX_ASPECT) -> tuple[int, int]:
    """Validate raw ``sensor_msgs/Image`` fields without touching pixels.

    ``data_len`` is ``len(msg.data)`` in bytes. Returns ``(channels, bytes_per_channel)``.
    Size limits: see :func:`check_size`. Raises :class:`ImageDecodeError`.
    """
    h, w = check_size(height, width, max_dim, max_pixels, max_aspect)
    if data_len == 0:
        raise ImageDecodeError("empty", "no pixel data")
    enc = SUPPORTED_ENCODINGS.get(str(encoding))
    if enc is None:
        raise ImageDecodeError(
            "unknown_encoding",
            f"encoding {str(encoding)[:40]!r} not supported (use one of {', '.join(SUPPORTED_ENCODINGS)})")
    ch, bpc = enc
    if str(encoding) in _YUV_TO_RGB and w % 2:
        raise ImageDecodeError("bad_dimensions", f"{encoding} needs an even width, got {w}")
    try:
        step = int(step)
    except (TypeError, ValueError):
        raise ImageDecodeError("bad_dimensions", f"step not an integer: {step!r}") from None
    row = w * ch * bpc
    if step < row:
        raise ImageDecodeError("bad_step", f"step {step} < width*bytes_per_pixel = {row}")
    if data_len != step * h:
        raise ImageDecodeError("size_mismatch", f"data has {data_len} bytes, step*height = {step * h}")
    return ch, bpc


def decode_image(height: int, width: int, encoding: str, step: int, is_bigendian,
                 data, max_dim: int = DEFAULT_MAX_DIM, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_aspect: float = DEFAULT_MAX_ASPECT) -> np.ndarray:
    """Decode raw ``sensor_msgs/Image`` fields into an RGB ``uint8`` array ``(H, W, 3)``.

    Supports ``rgb8, bgr8, rgba8, bgra8, mono8, mono16``, the Bayer mosaics ``bayer_rggb8,
    bayer_bggr8, bayer_gbrg8, bayer_grbg8`` (demosaiced by OpenCV, bilinear) and 4:2:2 YUV
    ``yuv422`` / ``uyvy`` (UYVY) and ``yuv422_yuy2`` / ``yuyv`` (YUYV), BT.601 as OpenCV
    converts them (+ aliases, see :data:`SUPPORTED_ENCODINGS`). ``step`` is the row length in
    bytes (rows may be padded);
    ``is_bigendian`` is honoured for ``mono16``, which is scaled to 8 bit by ``v >> 8``
    (full 16-bit range -> full 8-bit range, like cv_bridge's mono16 -> mono8).
    ``data`` may be bytes, bytearray, memoryview, ``array.array`` (what rclpy gives) or ndarray.

    ``rgb8`` returns a read-only view of ``data`` (no copy); everything else one new array.
    Raises :class:`ImageDecodeError`.
    """
    ch, bpc = check_image(height, width, encoding, step, _nbytes(data), max_dim, max_pixels, max_aspect)
    h, w, step = int(height), int(width), int(step)
    rows = _as_uint8(data).reshape(h, step)[:, : w * ch * bpc]
    enc = str(encoding)
    if enc in _BAYER_TO_RGB or enc in _YUV_TO_RGB:
        import cv2

        code = getattr(cv2, _BAYER_TO_RGB.get(enc) or _YUV_TO_RGB[enc])
        src = np.ascontiguousarray(rows) if enc in _BAYER_TO_RGB else np.ascontiguousarray(rows).reshape(h, w, 2)
        return cv2.cvtColor(src, code)
    if bpc == 2:  # mono16 / 16UC1
        dt = np.dtype(">u2" if is_bigendian else "<u2")
        if rows.flags.c_contiguous:
            g16 = rows.view(dt)
        else:
            g16 = np.ascontiguousarray(rows).view(dt)
        g = (g16 >> 8).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    px = rows.reshape(h, w, ch)
    if enc in ("mono8", "8UC1"):
        return np.repeat(px, 3, axis=2)
    if enc == "rgb8":
        return px
    if enc == "rgba8":
        return np.ascontiguousarray(px[:, :, :3])
    # bgr8, 8UC3, bgra8: reverse the first three channels
    return np.ascontiguousarray(px[:, :, 2::-1])


# --------------------------------------------------------------------------- compressed

_JPEG_SOI = b"\xff\xd8"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
#: JPEG start-of-frame markers (carry the image size): C0-CF except DHT (C4), JPG (C8), DAC (CC)
_SOF = {m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)}


def _format_kind(fmt: str) -> str | None:
    """'jpeg' | 'png' | None (not stated) from a CompressedImage ``format`` string.

    Accepts ``"jpeg"``, ``"jpg"``, ``"png"`` and image_transport's
    ``"rgb8; jpeg compressed bgr8"``; raises ``unsupported_format`` for anything naming another
    codec or ``compressedDepth``.
    """
    f = (fmt or "").strip().lower()
    if not f:
        return None
    if "compresseddepth" in f:
        raise ImageDecodeError("unsupported_format", f"format {fmt[:60]!r} is a depth image")
    if "jpeg" in f or "jpg" in f:
        return "jpeg"
    if "png" in f:
        return "png"
    raise ImageDecodeError("unsupported_format", f"format {fmt[:60]!r} is neither jpeg nor png")


def _jpeg_size(buf: bytes) -> tuple[int, int]:
    """(width, height) from the first SOF segment of a JPEG; raises corrupt_compressed."""
    i, n = 2, len(buf)
    while i + 4 <= n:
        if buf[i] != 0xFF:
            raise ImageDecodeError("corrupt_compressed", f"JPEG: no marker at byte {i}")
        m = buf[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m == 0x01 or 0xD0 <= m <= 0xD7:  # markers without length
            i += 2
            continue
        if m in (0xD9, 0xDA):  # EOI / start of scan before any SOF
            break
        seg = (buf[i + 2] << 8) | buf[i + 3]
        if seg < 2:
            raise ImageDecodeError("corrupt_compressed", "JPEG: bad segment length")
        if m in _SOF:
            if i + 9 > n:
                break
            h = (buf[i + 5] << 8) | buf[i + 6]
            w = (buf[i + 7] << 8) | buf[i + 8]
            return w, h
        i += 2 + seg
    raise ImageDecodeError("corrupt_compressed", "JPEG: no frame header")


def compressed_size(data) -> tuple[str, int, int]:
    """Sniff ``(kind, width, height)`` of JPEG / PNG bytes from their headers (no decoding)."""
    buf = data if isinstance(data, (bytes, bytearray)) else bytes(memoryview(data).cast("B")[:262144])
    if buf[:2] == _JPEG_SOI:
        w, h = _jpeg_size(buf)
        return "jpeg", w, h
    if buf[:8] == _PNG_SIG:
        if len(buf) < 24 or buf[12:16] != b"IHDR":
            raise ImageDecodeError("corrupt_compressed", "PNG: no IHDR chunk")
        w, h = struct.unpack(">II", buf[16:24])
        return "png", w, h
    raise ImageDecodeError("corrupt_compressed", "data is neither JPEG nor PNG (bad signature)")


def check_compressed(fmt: str, data, max_dim: int = DEFAULT_MAX_DIM, max_pixels: int = DEFAULT_MAX_PIXELS,
                     max_aspect: float = DEFAULT_MAX_ASPECT) -> tuple[str, int, int]:
    """Validate a ``sensor_msgs/CompressedImage`` cheaply (format string, signature, the size in
    the header against :func:`check_size`'s limits, a JPEG's end marker anywhere after its
    header, so padding after it is fine) without decoding. Returns ``(kind, width, height)``."""
    n = _nbytes(data)
    if n == 0:
        raise ImageDecodeError("empty", "no compressed data")
    stated = _format_kind(fmt)
    kind, w, h = compressed_size(data)
    if stated is not None and stated != kind:
        raise ImageDecodeError("corrupt_compressed", f"format says {stated} but the data is {kind}")
    check_size(h, w, max_dim, max_pixels, max_aspect)
    if kind == "jpeg":
        buf = data if isinstance(data, (bytes, bytearray)) else _as_uint8(data).tobytes()
        sos = buf.find(b"\xff\xda", 2)  # the end marker must follow the (first) start of scan
        if sos < 0 or buf.rfind(b"\xff\xd9", sos) < 0:
            raise ImageDecodeError("corrupt_compressed", "JPEG: truncated (no end-of-image marker)")
    return kind, w, h


#: libjpeg / libpng / OpenCV messages (what a decode may print on stderr)
_CODEC_LINE = re.compile(r"^(Corrupt JPEG data|Premature end of JPEG|Invalid SOS|Inconsistent progression|"
                         r"Bogus |Warning: |Unknown Adobe|Application transferred|JFIF|Invalid JPEG|Not a JPEG|"
                         r"Unsupported |Huffman|Quantization|libpng (warning|error)|\[ ?(WARN|ERROR|INFO)[:\] ])")
#: the libjpeg warnings that mean the pixels are (partly) garbage
_JPEG_CORRUPT = re.compile(r"Corrupt JPEG data(?!: bad ICC marker)|Premature end of JPEG|Invalid SOS|"
                           r"Inconsistent progression|Application transferred too few")

_capture_lock = threading.Lock()
_capture_fd_num: int | None = None  # a process-lifetime anonymous file (raw fd: nothing to close)
_last_logged: dict[str, float] = {}


def _capture_fd() -> int:
    global _capture_fd_num
    if _capture_fd_num is None:
        try:
            _capture_fd_num = os.memfd_create("pae_ros_codec_stderr", os.MFD_CLOEXEC)
        except (AttributeError, OSError):
            fd, name = tempfile.mkstemp(prefix="pae_ros_codec_stderr.")
            os.unlink(name)
            _capture_fd_num = fd
    return _capture_fd_num


def _log_throttled(message: str) -> None:
    key = re.sub(r"\d+", "N", message)[:80]
    now = time.monotonic()
    if now - _last_logged.get(key, -1e9) >= LOG_EVERY_S:
        _last_logged[key] = now
        log.warning("image codec: %s (repeats are logged at most every %g s)", message, LOG_EVERY_S)


def capture_stderr(fn):
    """Run ``fn()`` with file descriptor 2 redirected into a private buffer; returns
    ``(result, codec_lines)``. Lines that are not codec messages (another thread's) are written
    back to the real stderr, also when ``fn`` raises. One capture at a time (a lock); without a
    usable fd 2 it just runs ``fn``."""
    with _capture_lock:
        try:
            fd = _capture_fd()
            try:
                sys.stderr.flush()
            except (AttributeError, ValueError, OSError):
                pass
            saved = os.dup(2)
        except OSError:
            return fn(), []
        text = ""
        try:
            os.dup2(fd, 2)
            try:
                result = fn()
            finally:
                os.dup2(saved, 2)
        finally:
            os.close(saved)
            size = os.lseek(fd, 0, os.SEEK_CUR)
            if size:
                text = os.pread(fd, size, 0).decode("utf-8", "replace")
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
            lines = _pass_on_others(text)
    return result, lines


def _pass_on_others(text: str) -> list[str]:
    """Split captured text into codec lines (returned) and others (written to the real stderr)."""
    lines, other = [], []
    for line in text.splitlines():
        if _CODEC_LINE.match(line.strip()):
            lines.append(line.strip())
        elif line.strip():
            other.append(line)
    if other:
        try:
            os.write(2, ("\n".join(other) + "\n").encode())
        except OSError:
            pass
    return lines


def imdecode(data, flags=None):
    """``cv2.imdecode`` without stderr noise: returns ``(image or None, codec messages)``.

    The messages are libjpeg's / libpng's / OpenCV's lines this decode printed; see
    :func:`jpeg_corruption` for the ones that mean corrupt pixels."""
    import cv2

    buf = _as_uint8(data)
    return capture_stderr(lambda: cv2.imdecode(buf, cv2.IMREAD_COLOR if flags is None else flags))


def jpeg_corruption(messages: list[str]) -> str | None:
    """The first libjpeg message that means corrupt pixels, or None; the others are logged
    (throttled) as harmless."""
    bad = None
    for m in messages:
        if bad is None and _JPEG_CORRUPT.search(m):
            bad = m
        elif not _JPEG_CORRUPT.search(m):
            _log_throttled(m)
    return bad


def decode_compressed(fmt: str, data, max_dim: int = DEFAULT_MAX_DIM, max_pixels: int = DEFAULT_MAX_PIXELS,
                      max_aspect: float = DEFAULT_MAX_ASPECT) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (``format`` string, ``data`` bytes) into RGB
    ``uint8`` ``(H, W, 3)``. JPEG and PNG (8 or 16 bit, grey or colour, alpha dropped).

    The size in the header is checked (sides, area, aspect) *before* decoding, so a small file
    claiming a huge image cannot allocate gigabytes. A JPEG that libjpeg decodes only with
    corruption warnings is rejected as ``corrupt``. Raises :class:`ImageDecodeError`.
    """
    import cv2

    kind, w, h = check_compressed(fmt, data, max_dim, max_pixels, max_aspect)
    bgr, messages = imdecode(data)
    bad = jpeg_corruption(messages) if kind == "jpeg" else None
    if kind != "jpeg":
        for m in messages:
            _log_throttled(m)
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ImageDecodeError("corrupt_compressed", "the codec could not decode the data"
                               + (f" ({messages[0][:120]})" if messages else ""))
    if bad is not None:
        raise ImageDecodeError("corrupt", f"JPEG decodes with damage: {bad[:120]}")
    if bgr.shape[:2] != (h, w):
        raise ImageDecodeError("corrupt_compressed", f"decoded {bgr.shape[1]}x{bgr.shape[0]}, header says {w}x{h}")
    if bgr.dtype != np.uint8:  # defensive: IMREAD_COLOR gives 8 bit already
        bgr = (bgr >> 8).astype(np.uint8)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------- encoding (tests, bags)

def encode_image(rgb: np.ndarray, encoding: str = "rgb8", row_padding: int = 0,
                 bigendian: bool = False) -> ImageFields:
    """Encode an RGB ``uint8`` ``(H, W, 3)`` array into ``sensor_msgs/Image`` fields.

    ``encoding``: rgb8, bgr8, rgba8 (alpha 255), bgra8, mono8 (ITU-R 601 luma), mono16
    (``mono8 * 257``, so that decoding round-trips mono8 exactly), the Bayer mosaics
    ``bayer_rggb8`` etc. (each pixel keeps the one channel its filter passes), and the 4:2:2
    YUV encodings (BT.601 limited range, chroma averaged over pixel pairs; even width).
    ``row_padding`` extra bytes at the end of every row (exercises ``step``).
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    h, w = rgb.shape[:2]
    alpha = np.full((h, w, 1), 255, np.uint8)
    if encoding == "rgb8":
        px = rgb
    elif encoding == "bgr8":
        px = rgb[:, :, ::-1]
    elif encoding == "rgba8":
        px = np.concatenate([rgb, alpha], axis=2)
    elif encoding == "bgra8":
        px = np.concatenate([rgb[:, :, ::-1], alpha], axis=2)
    elif encoding in ("mono8", "mono16"):
        g = np.round(rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)
        px = g if encoding == "mono8" else (g.astype(np.uint16) * 257).astype(">u2" if bigendian else "<u2")
    elif encoding in _BAYER_TO_RGB:
        pattern = encoding[len("bayer_"):len("bayer_") + 4]  # e.g. "rggb": (0,0) (0,1) (1,0) (1,1)
        px = np.empty((h, w), np.uint8)
        for k, c in enumerate(pattern):
            px[k // 2::2, k % 2::2] = rgb[k // 2::2, k % 2::2, "rgb".index(c)]
    elif encoding in _YUV_TO_RGB:
        if w % 2:
            raise ValueError(f"{encoding} needs an even width, got {w}")
        f = rgb.astype(np.float64) / 255.0
        y = 16 + f @ np.array([65.481, 128.553, 24.966])
        u = 128 + f @ np.array([-37.797, -74.203, 112.0])
        v = 128 + f @ np.array([112.0, -93.786, -18.214])
        u2, v2 = (u[:, 0::2] + u[:, 1::2]) / 2, (v[:, 0::2] + v[:, 1::2]) / 2
        q = lambda a: np.round(a).clip(0, 255).astype(np.uint8)  # noqa: E731
        px = np.empty((h, w // 2, 4), np.uint8)
        if _YUV_TO_RGB[encoding].endswith("UYVY"):
            px[..., 0], px[..., 1], px[..., 2], px[..., 3] = q(u2), q(y[:, 0::2]), q(v2), q(y[:, 1::2])
        else:
            px[..., 0], px[..., 1], px[..., 2], px[..., 3] = q(y[:, 0::2]), q(u2), q(y[:, 1::2]), q(v2)
    else:
        raise ValueError(f"cannot encode {encoding!r}")
    rows = np.ascontiguousarray(px).reshape(h, -1).view(np.uint8)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((h, row_padding), np.uint8)], axis=1)
    return ImageFields(height=h, width=w, encoding=encoding,
                       is_bigendian=int(bool(bigendian) and encoding == "mono16"),
                       step=int(rows.shape[1]), data=rows.tobytes())


def encode_compressed(rgb: np.ndarray, kind: str = "jpeg", quality: int = 95) -> tuple[str, bytes]:
    """Encode RGB ``uint8`` ``(H, W, 3)`` as JPEG or PNG. Returns ``(format, data)`` with
    image_transport's format string (``"rgb8; jpeg compressed bgr8"`` / ``"rgb8; png compressed bgr8"``).
    """
    import cv2

    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    if kind in ("jpeg", "jpg"):
        ok, buf = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
        fmt = "rgb8; jpeg compressed bgr8"
    elif kind == "png":
        ok, buf = cv2.imencode(".png", bgr)
        fmt = "rgb8; png compressed bgr8"
    else:
        raise ValueError(f"cannot encode {kind!r}")
    if not ok:
        raise ValueError("encoding failed")
    return fmt, buf.tobytes()
