"""One image decoder for every ROS message: the bag tools refuse exactly what the node refuses.

The bag tools decode type-store messages with :func:`pae_ros.bags.msgs.decode_image`; the node
decodes rclpy messages with :func:`pae_ros.ros.conversions.image_to_rgb`. Both must end in
:mod:`pae_ros.image_codec` and give the same ``reason`` for the same malformed input.
"""
from __future__ import annotations

import numpy as np
import pytest

from pae_ros import image_codec
from pae_ros.bags import msgs
from pae_ros.bags.io import typestore

pytestmark = pytest.mark.timeout(60)

RGB = np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def _jpeg() -> bytes:
    return image_codec.encode_compressed(RGB, "jpeg", 90)[1]


def _png_claiming(w: int, h: int) -> bytes:
    """A PNG whose header claims ``w x h`` pixels (its data is a tiny real image)."""
    data = bytearray(image_codec.encode_compressed(RGB[:2, :2], "png")[1])
    data[16:24] = int(w).to_bytes(4, "big") + int(h).to_bytes(4, "big")
    return bytes(data)


def _scrambled_jpeg() -> bytes:
    data = bytearray(_jpeg())
    sos = data.find(b"\xff\xda")
    for i in range(sos + 40, len(data) - 4, 7):
        data[i] = 0xFF if data[i] != 0xFF else 0x00
    return bytes(data)


#: (name, fields of a raw Image or a CompressedImage, expected image_codec reason)
RAW_CASES = [
    ("zero_size", dict(height=0, width=0, encoding="rgb8", step=0, data=b""), "empty"),
    ("huge_claim", dict(height=60000, width=60000, encoding="rgb8", step=180000, data=bytes(12)), "too_large"),
    ("over_area", dict(height=8000, width=8000, encoding="mono8", step=8000, data=bytes(12)), "too_large"),
    ("thin", dict(height=2, width=64, encoding="rgb8", step=192, data=bytes(384)), "bad_aspect"),
    ("unknown_encoding", dict(height=2, width=2, encoding="32FC1", step=8, data=bytes(16)), "unknown_encoding"),
    ("short_step", dict(height=2, width=4, encoding="rgb8", step=6, data=bytes(12)), "bad_step"),
    ("short_data", dict(height=2, width=4, encoding="rgb8", step=12, data=bytes(20)), "size_mismatch"),
    ("odd_yuv", dict(height=2, width=3, encoding="yuv422", step=6, data=bytes(12)), "bad_dimensions"),
]
COMPRESSED_CASES = [
    ("no_data", dict(format="jpeg", data=b""), "empty"),
    ("truncated_jpeg", dict(format="jpeg", data=_jpeg()[:200]), "corrupt_compressed"),
    ("scrambled_jpeg", dict(format="jpeg", data=_scrambled_jpeg()), "corrupt"),
    ("png_claims_huge", dict(format="png", data=_png_claiming(50000, 50000)), "too_large"),
    ("depth", dict(format="16UC1; compressedDepth", data=_jpeg()), "unsupported_format"),
    ("not_an_image", dict(format="jpeg", data=b"hello world, no image here"), "corrupt_compressed"),
    ("format_lies", dict(format="png", data=_jpeg()), "corrupt_compressed"),
]


def _store_msg(fields: dict):
    """A type-store message (what the bag tools read) with the given fields."""
    t = typestore().types
    hdr = msgs.header(0, "camera_optical")
    data = np.frombuffer(fields["data"], dtype=np.uint8).copy()
    if "format" in fields:
        return t[msgs.COMPRESSED_TYPE](header=hdr, format=fields["format"], data=data)
    return t[msgs.IMAGE_TYPE](header=hdr, height=fields["height"], width=fields["width"],
                              encoding=fields["encoding"], is_bigendian=0, step=fields["step"], data=data)


def _codec_reason(fields: dict) -> str:
    """The reason image_codec's field-level entry points (the node's) give."""
    with pytest.raises(image_codec.ImageDecodeError) as e:
        if "format" in fields:
            image_codec.decode_compressed(fields["format"], fields["data"])
        else:
            image_codec.decode_image(fields["height"], fields["width"], fields["encoding"], fields["step"], 0,
                                     fields["data"])
    return e.value.reason


CASES = RAW_CASES + COMPRESSED_CASES


@pytest.mark.parametrize("name,fields,reason", CASES, ids=[c[0] for c in CASES])
def test_bag_decoder_refuses_what_the_codec_refuses(name, fields, reason):
    with pytest.raises(image_codec.ImageDecodeError) as e:
        msgs.decode_image(_store_msg(fields))
    assert e.value.reason == reason
    assert _codec_reason(fields) == reason


@pytest.mark.parametrize("name,fields,reason", CASES, ids=[c[0] for c in CASES])
def test_node_decoder_gives_the_same_refusal(name, fields, reason):
    """The node's entry (rclpy messages) and the bag tools' entry (type-store messages) agree."""
    pytest.importorskip("rclpy")
    from sensor_msgs.msg import CompressedImage, Image

    from pae_ros.ros.conversions import image_to_rgb

    if "format" in fields:
        msg = CompressedImage(format=fields["format"], data=fields["data"])
    else:
        msg = Image(height=fields["height"], width=fields["width"], encoding=fields["encoding"],
                    is_bigendian=0, step=fields["step"], data=fields["data"])
    with pytest.raises(image_codec.ImageDecodeError) as node_err:
        image_to_rgb(msg)
    with pytest.raises(image_codec.ImageDecodeError) as bag_err:
        msgs.decode_image(_store_msg(fields))
    assert node_err.value.reason == bag_err.value.reason == reason


def test_bag_decoder_reads_every_encoding_the_node_reads():
    """Encodings the old bag decoder refused (bgra8, mono16, Bayer, YUV) decode like the codec."""
    t = typestore().types
    for enc in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "bayer_rggb8", "yuv422", "yuv422_yuy2"):
        f = image_codec.encode_image(RGB, enc, row_padding=4)
        msg = t[msgs.IMAGE_TYPE](header=msgs.header(0, "c"), height=f.height, width=f.width, encoding=f.encoding,
                                 is_bigendian=f.is_bigendian, step=f.step, data=np.frombuffer(f.data, np.uint8).copy())
        expected = image_codec.decode_image(f.height, f.width, f.encoding, f.step, f.is_bigendian, f.data)
        np.testing.assert_array_equal(msgs.decode_image(msg), expected)
    fmt, data = image_codec.encode_compressed(RGB, "png")
    msg = t[msgs.COMPRESSED_TYPE](header=msgs.header(0, "c"), format=fmt, data=np.frombuffer(data, np.uint8).copy())
    np.testing.assert_array_equal(msgs.decode_image(msg), RGB)


def test_bag_decoder_honours_a_smaller_size_limit():
    msg = msgs.image_msg(RGB, 0, "c")
    assert msgs.decode_image(msg).shape == RGB.shape
    with pytest.raises(image_codec.ImageDecodeError) as e:
        msgs.decode_image(msg, max_dim=16)
    assert e.value.reason == "too_large"
