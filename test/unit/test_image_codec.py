"""pae_ros.image_codec: raw / compressed image decoding without ROS (fast)."""
from __future__ import annotations

import array
import os
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest

from pae_ros.image_codec import (DEFAULT_MAX_ASPECT, REASONS, ImageDecodeError, capture_stderr, check_compressed,
                                 check_image, check_size, decode_compressed, decode_image, encode_compressed,
                                 encode_image)
from pae_ros.preprocess import prepare, resize_shorter

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
    assert _reason(_decode, f, encoding="nv12") == "unknown_encoding"
    assert _reason(_decode, f, encoding="yuv422") == "bad_dimensions"  # the fixture's width 37 is odd
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
    # header says 8x8 on a 37x23 body: libjpeg decodes it only with a warning (extraneous bytes)
    assert _reason(decode_compressed, fmt, _jpeg_claiming(jpg, 8, 8)) in ("corrupt", "corrupt_compressed")
    # garbage in the entropy-coded body of a complete file: libjpeg warns, so it is corrupt
    body = bytearray(jpg)
    body[len(body) // 2: len(body) // 2 + 20] = b"\xff" * 20
    assert _reason(decode_compressed, fmt, bytes(body)) in ("corrupt", "corrupt_compressed")


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


def _camera_like(h=240, w=320) -> np.ndarray:
    rng = np.random.default_rng(3)
    return cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


def _scan_range(jpg: bytes) -> tuple[int, int]:
    """(first, end) byte offsets of the entropy-coded scan data of a baseline JPEG."""
    sos = jpg.index(b"\xff\xda")
    start = sos + 2 + ((jpg[sos + 2] << 8) | jpg[sos + 3])
    return start, jpg.rindex(b"\xff\xd9")


def test_scrambled_jpeg_is_counted_corrupt_and_prints_nothing(capfd):
    """JPEGs with scrambled, cut or junk-padded scan data are refused as corrupt (never decoded as
    a good image), and libjpeg's warnings are captured, not printed to stderr."""
    fmt, jpg = encode_compressed(_camera_like(), "jpeg", quality=90)
    start, end = _scan_range(jpg)
    rng = np.random.default_rng(0)
    cases = []
    for seed in range(5):  # shuffle a quarter of the scan bytes
        seg = np.frombuffer(jpg[start + (end - start) // 4: start + (end - start) // 2], np.uint8).copy()
        np.random.default_rng(seed).shuffle(seg)
        cases.append(jpg[: start + (end - start) // 4] + seg.tobytes() + jpg[start + (end - start) // 2:])
    cut = jpg[: start + (end - start) // 2] + b"\xff\xd9"  # scan cut short, EOI still there
    cases.append(cut)
    junk = jpg[:end] + bytes(rng.integers(0, 255, 40, dtype=np.uint8)) + jpg[end:]  # junk before EOI
    cases.append(junk)
    capfd.readouterr()
    for data in cases:
        assert _reason(decode_compressed, fmt, data) in ("corrupt", "corrupt_compressed")
    assert [_reason(decode_compressed, fmt, c) for c in cases[:1]] == ["corrupt"]
    out, err = capfd.readouterr()
    assert err == "", f"libjpeg printed to stderr: {err[:200]!r}"
    # the clean file still decodes, and quietly
    assert decode_compressed(fmt, jpg).shape == (240, 320, 3)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("pad", [b"\x00" * 64, b"\x00" * 4096, b"\xff" * 100, bytes(range(256)) * 2])
def test_padding_after_the_end_marker_is_accepted(pad):
    """A valid JPEG or PNG with bytes after its end marker (UVC/MJPEG buffers pad them) decodes
    like the unpadded image."""
    rgb = _camera_like(48, 64)
    for kind in ("jpeg", "png"):
        fmt, data = encode_compressed(rgb, kind)
        ref = decode_compressed(fmt, data)
        assert check_compressed(fmt, data + pad)[1:] == (64, 48)
        np.testing.assert_array_equal(decode_compressed(fmt, data + pad), ref)
    # a JPEG with no end marker at all is still truncated
    fmt, data = encode_compressed(rgb, "jpeg")
    assert _reason(decode_compressed, fmt, data[: data.rindex(b"\xff\xd9")] + pad) == "corrupt_compressed"


def test_capture_passes_other_stderr_lines_through(capfd):
    def noisy():
        os.write(2, b"Corrupt JPEG data: premature end of data segment\nsome other thread's line\n")
        return 7

    result, lines = capture_stderr(noisy)
    assert result == 7 and lines == ["Corrupt JPEG data: premature end of data segment"]
    assert capfd.readouterr().err == "some other thread's line\n"


def _png_black(w, h) -> bytes:
    """A real, valid black 8-bit RGB PNG of w x h built with zlib (cv2 would need the pixels)."""
    import zlib

    row = b"\x00" * (1 + 3 * w)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_size_amplification_is_refused_before_decoding():
    """Small inputs that would decode to huge images (a 1x8192 rgb8 image, a sub-kilobyte JPEG or
    PNG claiming 8192x8192) are refused from their sizes alone, before any decoding; each side
    is within the per-side limit, so the aspect and area bounds do it."""
    import time

    thin = encode_image(np.zeros((1, 8192, 3), np.uint8), "rgb8")
    assert len(thin.data) == 24576
    t0 = time.perf_counter()
    assert _reason(decode_image, thin.height, thin.width, "rgb8", thin.step, 0, thin.data) == "bad_aspect"
    assert _reason(check_image, 8192, 1, "mono8", 1, 8192) == "bad_aspect"
    fmt, small = encode_compressed(np.zeros((16, 16, 3), np.uint8), "jpeg")
    claim = _jpeg_claiming(small, 8192, 8192)
    assert len(claim) < 1000
    assert _reason(decode_compressed, fmt, claim) == "too_large"
    assert _reason(decode_compressed, "png", _png_claiming(8192, 8192)) == "too_large"
    assert _reason(decode_compressed, "png", _png_claiming(8192, 2)) == "bad_aspect"
    assert time.perf_counter() - t0 < 1.0  # nothing was decoded (a generous bound, not a benchmark)
    # limits: 8:1 passes, above it does not; area independent of the sides
    assert check_size(100, 800) == (100, 800)
    assert _reason(check_size, 100, 801) == "bad_aspect"
    assert _reason(check_size, 5000, 6000) == "too_large"
    assert check_size(4000, 6000) == (4000, 6000)
    assert _reason(check_size, 300, 300, max_pixels=300 * 299) == "too_large"
    assert check_size(10, 100, max_aspect=10) == (10, 100)
    # the preprocessing refuses thin images before the shorter-side resize blows them up
    with pytest.raises(ImageDecodeError) as ei:
        resize_shorter(np.zeros((1, 8192, 3), np.uint8), 128)
    assert ei.value.reason == "bad_aspect"
    with pytest.raises(ValueError, match="aspect"):
        prepare(np.zeros((2, 17 * 2 * int(DEFAULT_MAX_ASPECT), 3), np.uint8), 64, 64)
    assert prepare(np.zeros((40, 320, 3), np.uint8), 64, 64).shape == (64, 64, 3)


def test_real_black_8192_png_is_refused_cheaply():
    png = _png_black(8192, 8192)
    assert len(png) < 300_000
    assert _reason(decode_compressed, "png", png) == "too_large"


BAYER = ["bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"]
YUV = ["yuv422", "uyvy", "yuv422_yuy2", "yuyv"]


@pytest.mark.parametrize("encoding", BAYER)
@pytest.mark.parametrize("padding", [0, 3])
def test_bayer_mosaics_demosaic_to_rgb(encoding, padding):
    rgb = cv2.resize(_camera_like(6, 8), (64, 48), interpolation=cv2.INTER_LINEAR)  # smooth, like optics
    f = encode_image(rgb, encoding, row_padding=padding)
    assert f.step == 64 + padding and len(f.data) == f.step * 48
    out = _decode(f)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    err = np.abs(out.astype(int) - rgb.astype(int))[2:-2, 2:-2]  # bilinear demosaicing: borders differ
    assert err.mean() < 3.0, f"{encoding}: mean error {err.mean():.1f}"
    # a wrong pattern (another mosaic read as this one) is far off: the test would catch a swap
    for other in BAYER:
        if other != encoding:
            wrong = decode_image(f.height, f.width, other, f.step, 0, f.data)
            assert np.abs(wrong.astype(int) - rgb.astype(int))[2:-2, 2:-2].mean() > 3 * err.mean() + 5


@pytest.mark.parametrize("encoding", YUV)
def test_yuv422_decodes_to_rgb(encoding):
    rgb = np.repeat(_camera_like(48, 32), 2, axis=1)  # pixel pairs share chroma: exact up to rounding
    f = encode_image(rgb, encoding, row_padding=2)
    assert f.step == 2 * 64 + 2
    out = _decode(f)
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb.astype(int)).max() <= 3
    other = {"yuv422": "yuyv", "uyvy": "yuyv", "yuv422_yuy2": "uyvy", "yuyv": "uyvy"}[encoding]
    wrong = decode_image(f.height, f.width, other, f.step, 0, f.data)
    assert np.abs(wrong.astype(int) - rgb.astype(int)).mean() > 20
    assert _reason(decode_image, 2, 3, encoding, 6, 0, bytes(12)) == "bad_dimensions"  # odd width
    assert _reason(decode_image, 2, 4, encoding, 8, 0, bytes(15)) == "size_mismatch"


@pytest.mark.slow  # a fresh interpreter
def test_module_imports_no_ros():
    code = "import sys, pae_ros.image_codec; assert not any(m.startswith('rclpy') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_capture_is_clean_after_an_exception(capfd):
    def fails():
        os.write(2, b"Corrupt JPEG data: bad Huffman code\nunrelated line\n")
        raise RuntimeError("decoder blew up")

    with pytest.raises(RuntimeError):
        capture_stderr(fails)
    assert capfd.readouterr().err == "unrelated line\n"
    assert capture_stderr(lambda: 1) == (1, [])  # nothing left over for the next decode
