"""rclpy message <-> numpy conversions used by the node.

Quaternions: ours are **wxyz**, ROS messages store **xyzw**. The one conversion between the two
orders is :func:`pae_ros.bags.msgs.wxyz_to_ros` / :func:`pae_ros.bags.msgs.ros_to_wxyz` (shared
with the bag tools); :func:`set_quaternion` / :func:`get_quaternion` apply it to message fields.
Positions and translations are metres. Stamps are ``builtin_interfaces/Time`` or integer ns.
"""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import (PoseStamped, PoseWithCovarianceStamped, TransformStamped)
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from pae_ros.bags.msgs import pose_from_msg as stamped_pose_fields
from pae_ros.bags.msgs import ros_to_wxyz, stamp_to_ns, wxyz_to_ros
from pae_ros.image_codec import (DEFAULT_MAX_DIM, check_compressed, check_image, decode_compressed,
                                 decode_image)


def set_quaternion(msg_q, q_wxyz) -> None:
    """Write our wxyz quaternion into a ``geometry_msgs/Quaternion`` (x, y, z, w fields)."""
    msg_q.x, msg_q.y, msg_q.z, msg_q.w = wxyz_to_ros(q_wxyz)


def get_quaternion(msg_q) -> np.ndarray:
    """Read a ``geometry_msgs/Quaternion`` into our (4,) wxyz array."""
    return ros_to_wxyz(msg_q.x, msg_q.y, msg_q.z, msg_q.w)


def stamp_ns(stamp: Time) -> int:
    """Integer nanoseconds of a ``builtin_interfaces/Time``."""
    return stamp_to_ns(stamp)


def stamp_from_ns(t_ns: int) -> Time:
    sec, nsec = divmod(int(t_ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nsec)


def header(stamp: Time, frame_id: str) -> Header:
    return Header(stamp=stamp, frame_id=frame_id)


def pose_stamped(hdr: Header, position, q_wxyz) -> PoseStamped:
    """``PoseStamped`` of a camera-to-``hdr.frame_id`` pose (position m, quaternion wxyz)."""
    msg = PoseStamped(header=hdr)
    p = np.asarray(position, dtype=np.float64).reshape(3)
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in p)
    set_quaternion(msg.pose.orientation, q_wxyz)
    return msg


def pose_with_covariance(hdr: Header, position, q_wxyz, covariance) -> PoseWithCovarianceStamped:
    """``PoseWithCovarianceStamped``; ``covariance`` (6, 6) over (x, y, z, rot x, rot y, rot z),
    m^2 / rad^2, stored row-major as ROS expects."""
    msg = PoseWithCovarianceStamped(header=hdr)
    ps = pose_stamped(hdr, position, q_wxyz)
    msg.pose.pose = ps.pose
    cov = np.asarray(covariance, dtype=np.float64).reshape(6, 6)
    msg.pose.covariance = [float(v) for v in cov.reshape(-1)]
    return msg


def pose_from_msg(msg) -> tuple[np.ndarray, np.ndarray]:
    """(position (3,) m, quaternion (4,) wxyz) from a ``PoseStamped`` or ``PoseWithCovarianceStamped``."""
    _, position, quaternion = stamped_pose_fields(msg)
    return position, quaternion


def transform_stamped(stamp: Time, parent: str, child: str, translation, q_wxyz) -> TransformStamped:
    """``TransformStamped`` ``parent -> child``: translation = child origin in parent (m),
    rotation = child-to-parent (wxyz in, xyzw in the message)."""
    msg = TransformStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = parent
    msg.child_frame_id = child
    t = np.asarray(translation, dtype=np.float64).reshape(3)
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = (float(v) for v in t)
    set_quaternion(msg.transform.rotation, q_wxyz)
    return msg


def transform_from_msg(msg: TransformStamped) -> tuple[str, str, np.ndarray, np.ndarray, int]:
    """(parent, child, translation (3,) m, quaternion (4,) wxyz, stamp ns) of a ``TransformStamped``."""
    tr = msg.transform.translation
    return (msg.header.frame_id, msg.child_frame_id, np.array([tr.x, tr.y, tr.z], dtype=np.float64),
            get_quaternion(msg.transform.rotation), stamp_ns(msg.header.stamp))


def check_image_msg(msg, max_dim: int = DEFAULT_MAX_DIM) -> None:
    """Cheap validation of an ``Image`` / ``CompressedImage`` (no pixel work); raises
    :class:`pae_ros.image_codec.ImageDecodeError`."""
    if isinstance(msg, CompressedImage):
        check_compressed(msg.format, msg.data, max_dim)
    else:
        check_image(msg.height, msg.width, msg.encoding, msg.step, len(msg.data), max_dim)


def image_to_rgb(msg, max_dim: int = DEFAULT_MAX_DIM) -> np.ndarray:
    """RGB ``uint8`` (H, W, 3) from an ``Image`` or ``CompressedImage``; raises
    :class:`pae_ros.image_codec.ImageDecodeError`. Raw rgb8 is a zero-copy view of ``msg.data``."""
    if isinstance(msg, CompressedImage):
        return decode_compressed(msg.format, msg.data, max_dim)
    return decode_image(msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian, msg.data, max_dim)


def rgb_to_image(hdr: Header, rgb: np.ndarray) -> Image:
    """``Image`` rgb8 of an RGB ``uint8`` (H, W, 3) array."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    return Image(header=hdr, height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
                 data=rgb.tobytes())
