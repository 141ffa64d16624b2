"""pae_ros.image_codec: raw / compressed image decoding without ROS (fast)."""
from __future__ import annotations

import array
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from pae_ros.image_codec import (REASONS, ImageDecodeError, check_compressed, check_image,
                                 decode_compressed, decode_image, encode_compressed, encode_image)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    # smooth-ish content so that JPEG round trips stay close
    base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return cv2.resize(base, (37, 23), interpolation=cv2.INTER_LINEAR)  # odd sizes on purpose


def _decode(f, data=None, **over):
    kw = dict(height=f.height, width=f.width, encoding=f.encoding, step=f.step,
              is_bigendian=f.is_bigendian, data=f.data if data is None else data)
    kw.update(over)
    return decode_image(**kw)


def _luma(rgb):
    return np.round(rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("padding", [0, 3])
def test_colour_encodings_round_trip_exactly(rgb, encoding, padding):
    f = encode_image(rgb, encoding, row_padding=padding)
    assert f.step == rgb.shape[1] * (4 if "a" in encoding else 3) + padding
    out = _decode(f)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("encoding,big", [("mono8", False), ("mono16", False), ("mono16", True)])
@pytest.mark.parametrize("padding", [0, 2, 1])
def test_mono_encodings_give_grey_rgb(rgb, encoding, big, padding):
    f = encode_image(rgb, encoding, row_padding=padding, bigendian=big)
    assert f.is_bigendian == int(big)
    out = _decode(f)
    g = _luma(rgb)
    assert out.shape == rgb.shape
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], g)


def test_mono16_endianness_is_honoured():
    v = np.array([[0x1234, 0xFF00]], dtype=">u2")
    data = v.tobytes()  # big-endian bytes: 12 34 ff 00
    big = decode_image(1, 2, "mono16", 4, 1, data)
    little = decode_image(1, 2, "mono16", 4, 0, data)
    assert big[0, :, 0].tolist() == [0x12, 0xFF]
    assert little[0, :, 0].tolist() == [0x34, 0x00]


def test_rgb8_is_zero_copy_and_accepts_ros_buffers(rgb):
    f = encode_image(rgb, "rgb8")
    buf = bytearray(f.data)
    out = decode_image(f.height, f.width, "rgb8", f.step, 0, buf)
    assert np.shares_memory(out, np.frombuffer(buf, np.uint8))
    # rclpy hands uint8[] fields over as array.array('B'); memoryview works too
    np.testing.assert_array_equal(decode_image(f.height, f.width, "rgb8", f.step, 0, array.array("B", f.data)), rgb)
    np.testing.assert_array_equal(decode_image(f.height, f.width, "rgb8", f.step, 0, memoryview(f.data)), rgb)
    arr = np.frombuffer(f.data, np.uint8)
    np.testing.assert_array_equal(decode_image(f.height, f.width, "rgb8", f.step, 0, arr), rgb)


def test_alias_encodings(rgb):
    f = encode_image(rgb, "bgr8")
    np.testing.assert_array_equal(_decode(f, encoding="8UC3"), rgb)


def _reason(fn, *a, **kw) -> str:
    with pytest.raises(ImageDecodeError) as ei:
        fn(*a, **kw)
    assert ei.value.reason in REASONS
    return ei.value.reason


def test_bad_raw_inputs_have_stable_reasons(rgb):
    f = encode_image(rgb, "rgb8")
    assert _reason(_decode, f, step=f.step - 1) == "bad_step"
    assert _reason(_decode, f, step=f.step + 1) == "size_mismatch"
    assert _reason(_decode, f, data=f.data[:-1]) == "size_mismatch"
    assert _reason(_decode, f, data=f.data + b"\0") == "size_mismatch"
    assert _reason(_decode, f, encoding="yuv422") == "unknown_encoding"
    assert _reason(_decode, f, encoding="") == "unknown_encoding"
    assert _reason(_decode, f, height=0) == "empty"
    assert _reason(_decode, f, width=0, step=0, data=b"") == "empty"
    assert _reason(_decode, f, data=b"") == "empty"
    assert _reason(_decode, f, height=100000, width=100000, step=300000) == "too_large"
    assert _reason(_decode, f, height=-1) == "bad_dimensions"
    # huge claimed sizes are rejected before any allocation, whatever the data length
    assert _reason(_decode, f, height=2**31, width=2**31, step=3 * 2**31) == "too_large"


def test_max_dim_is_configurable(rgb):
    f = encode_image(rgb, "rgb8")
    assert _reason(decode_image, f.height, f.width, "rgb8", f.step, 0, f.data, max_dim=16) == "too_large"
    check_image(f.height, f.width, "rgb8", f.step, len(f.data), max_dim=37)


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_compressed_round_trip(rgb, kind):
    fmt, data = encode_compressed(rgb, kind, quality=100)
    assert check_compressed(fmt, data)[1:] == (rgb.shape[1], rgb.shape[0])
    for f in (fmt, kind, "", "jpg" if kind == "jpeg" else "png"):
        out = decode_compressed(f, data)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        if kind == "png":
            np.testing.assert_array_equal(out, rgb)
        else:
            ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
            np.testing.assert_array_equal(out, ref)
            assert np.abs(out.astype(int) - rgb.astype(int)).mean() < 10.0  # chroma subsampling
    # rclpy buffer type
    np.testing.assert_array_equal(decode_compressed(fmt, array.array("B", data)), decode_compressed(fmt, data))


def test_compressed_colour_order_is_rgb():
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    for kind in ("jpeg", "png"):
        out = decode_compressed(*encode_compressed(red, kind))
        assert out[8, 8, 0] > 240 and out[8, 8, 2] < 15


def _png_claiming(w, h) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0\0\0\0"


def _jpeg_claiming(data: bytes, w, h) -> bytes:
    """Patch the size in the SOF0 header of a real JPEG."""
    i = data.index(b"\xff\xc0")
    return data[: i + 5] + struct.pack(">HH", h, w) + data[i + 9:]


def test_bad_compressed_inputs(rgb):
    fmt, jpg = encode_compressed(rgb, "jpeg")
    _, png = encode_compressed(rgb, "png")
    assert _reason(decode_compressed, fmt, b"") == "empty"
    assert _reason(decode_compressed, fmt, b"\x00" * 100) == "corrupt_compressed"
    assert _reason(decode_compressed, fmt, jpg[: len(jpg) // 2]) == "corrupt_compressed"  # truncated
    assert _reason(decode_compressed, "png", png[: len(png) // 2]) == "corrupt_compressed"
    assert _reason(decode_compressed, "jpeg", png) == "corrupt_compressed"  # format lies
    assert _reason(decode_compressed, "16UC1; compressedDepth png", png) == "unsupported_format"
    assert _reason(decode_compressed, "tiff", png) == "unsupported_format"
    assert _reason(decode_compressed, "png", _png_claiming(60000, 60000)) == "too_large"
    assert _reason(decode_compressed, fmt, _jpeg_claiming(jpg, 60000, 60000)) == "too_large"
    assert _reason(decode_compressed, fmt, _jpeg_claiming(jpg, 0, 10)) == "empty"
    # header says 8x8 on a 37x23 body: libjpeg decodes an 8x8 image (with a warning) or rejects it
    try:
        assert decode_compressed(fmt, _jpeg_claiming(jpg, 8, 8)).shape == (8, 8, 3)
    except ImageDecodeError as e:
        assert e.reason == "corrupt_compressed"
    # garbage in the entropy-coded body of a complete file: decodes or is rejected, never crashes
    body = bytearray(jpg)
    body[len(body) // 2: len(body) // 2 + 20] = b"\xff" * 20
    try:
        out = decode_compressed(fmt, bytes(body))
        assert out.shape == rgb.shape
    except ImageDecodeError as e:
        assert e.reason == "corrupt_compressed"


def test_fuzz_random_fields_never_raise_anything_else(rgb):
    rng = np.random.default_rng(1)
    f = encode_image(rgb, "rgb8")
    encs = ["rgb8", "bgr8", "mono16", "mono8", "rgba8", "weird", ""]
    for _ in range(300):
        h = int(rng.choice([0, 1, f.height, 9000, 2**20]))
        w = int(rng.choice([0, 1, f.width, 9000]))
        step = int(rng.choice([0, 1, f.step, f.step * 2, w * 3]))
        data = f.data[: int(rng.integers(0, len(f.data) + 1))]
        try:
            out = decode_image(h, w, str(rng.choice(encs)), step, int(rng.integers(0, 2)), data)
            assert out.shape == (h, w, 3)
        except ImageDecodeError as e:
            assert e.reason in REASONS
        blob = bytes(rng.integers(0, 256, int(rng.integers(0, 64)), dtype=np.uint8))
        for prefix in (b"", b"\xff\xd8", b"\x89PNG\r\n\x1a\n"):
            try:
                decode_compressed("jpeg" if prefix != b"\x89PNG\r\n\x1a\n" else "png", prefix + blob)
            except ImageDecodeError as e:
                assert e.reason in REASONS


def test_module_imports_no_ros():
    code = "import sys, pae_ros.image_codec; assert not any(m.startswith('rclpy') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
