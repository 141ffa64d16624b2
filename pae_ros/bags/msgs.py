"""Message building and reading with the ``rosbags`` Kilted type store (no rclpy), TUM export.

Conventions: stamps are integer nanoseconds since the Unix epoch; positions in metres;
our quaternions are unit **wxyz**, ROS messages store **xyzw** — the only conversion between
the two orders is :func:`wxyz_to_ros` / :func:`ros_to_wxyz`. Poses are camera-to-world: the
pose of the ``camera_optical`` frame (x right, y down, z forward) in the ``map`` frame.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .. import image_codec
from .io import typestore

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
POSE_TYPE = "geometry_msgs/msg/PoseStamped"
POSE_COV_TYPE = "geometry_msgs/msg/PoseWithCovarianceStamped"
POSE_TYPES = (POSE_TYPE, POSE_COV_TYPE)
TF_TYPE = "tf2_msgs/msg/TFMessage"

#: ``format`` of CompressedImage as image_transport's compressed publisher writes it
JPEG_FORMAT = "rgb8; jpeg compressed bgr8"


def _t(name: str):
    return typestore().types[name]


# --------------------------------------------------------------------------- quaternion order
def wxyz_to_ros(q_wxyz) -> tuple[float, float, float, float]:
    """Our unit quaternion (w, x, y, z) -> ROS ``geometry_msgs/Quaternion`` order (x, y, z, w)."""
    w, x, y, z = (float(v) for v in np.asarray(q_wxyz, dtype=np.float64).reshape(4))
    return x, y, z, w


def ros_to_wxyz(x: float, y: float, z: float, w: float) -> np.ndarray:
    """ROS quaternion components (x, y, z, w) -> our (4,) float64 array (w, x, y, z)."""
    return np.array([w, x, y, z], dtype=np.float64)


# --------------------------------------------------------------------------- stamps / header
def stamp_from_ns(t_ns: int):
    """``builtin_interfaces/Time`` from integer nanoseconds since the epoch (exact)."""
    sec, nsec = divmod(int(t_ns), 1_000_000_000)
    return _t("builtin_interfaces/msg/Time")(sec=sec, nanosec=nsec)


def stamp_to_ns(stamp) -> int:
    """Integer nanoseconds of a ``builtin_interfaces/Time`` (type-store or rclpy object)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header(t_ns: int, frame_id: str):
    """``std_msgs/Header`` stamped ``t_ns`` (ns since epoch) in ``frame_id``."""
    return _t("std_msgs/msg/Header")(stamp=stamp_from_ns(t_ns), frame_id=frame_id)


# --------------------------------------------------------------------------- images / camera
def image_msg(rgb: np.ndarray, t_ns: int, frame_id: str):
    """``sensor_msgs/Image`` ``rgb8`` (row-major, step = 3 * width, little endian) of an (H, W, 3) uint8 RGB array."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    return _t(IMAGE_TYPE)(header=header(t_ns, frame_id), height=h, width=w, encoding="rgb8",
                          is_bigendian=0, step=3 * w, data=rgb.reshape(-1))


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of an (H, W, 3) uint8 RGB image (OpenCV, given quality 0..100)."""
    return image_codec.encode_compressed(rgb, "jpeg", quality)[1]


def compressed_image_msg(jpeg: bytes, t_ns: int, frame_id: str):
    """``sensor_msgs/CompressedImage`` with JPEG bytes (format ``rgb8; jpeg compressed bgr8``)."""
    return _t(COMPRESSED_TYPE)(header=header(t_ns, frame_id), format=JPEG_FORMAT,
                               data=np.frombuffer(bytes(jpeg), dtype=np.uint8).copy())


def camera_info_msg(t_ns: int, frame_id: str, width: int, height: int,
                    fx: float = 0.0, fy: float = 0.0, cx: float = 0.0, cy: float = 0.0, d=None):
    """``sensor_msgs/CameraInfo`` of a pinhole camera (pixels), ``plumb_bob`` distortion.

    ``K = [fx 0 cx; 0 fy cy; 0 0 1]``, ``R = I``, ``P = [K | 0]`` (the rectified camera is the
    undistorted pinhole K), ``D = d`` (k1, k2, p1, p2, k3; default all zeros). With ``fx = 0``
    (unknown intrinsics) K, R and P are all zeros, the ROS convention for an uncalibrated camera.
    """
    if fx > 0 and fy > 0:
        k = np.array([fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])
        r = np.eye(3).reshape(-1)
        p = np.array([fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])
    else:
        k, r, p = np.zeros(9), np.zeros(9), np.zeros(12)
    dist = np.zeros(5) if d is None else np.asarray(d, dtype=np.float64).reshape(-1)
    if dist.shape != (5,) or not np.all(np.isfinite(dist)):
        raise ValueError(f"plumb_bob distortion needs 5 finite coefficients, got {dist.tolist()}")
    roi = _t("sensor_msgs/msg/RegionOfInterest")(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return _t(CAMERA_INFO_TYPE)(header=header(t_ns, frame_id), height=int(height), width=int(width),
                                distortion_model="plumb_bob", d=dist, k=k, r=r, p=p,
                                binning_x=0, binning_y=0, roi=roi)


def decode_image(msg, max_dim: int = image_codec.DEFAULT_MAX_DIM, max_pixels: int = image_codec.DEFAULT_MAX_PIXELS,
                 max_aspect: float = image_codec.DEFAULT_MAX_ASPECT) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a type-store ``Image`` or ``CompressedImage`` (ROS 1 or ROS 2).

    The node's decoder, :mod:`pae_ros.image_codec`, does the work, so a bag tool accepts and
    refuses exactly what the node does: every encoding it supports, sizes bounded before any
    pixel is allocated, corrupt JPEGs refused. Raises
    :class:`pae_ros.image_codec.ImageDecodeError` (a ``ValueError``) whose ``reason`` names why.
    ``rgb8`` may come back as a read-only view of ``msg.data``.
    """
    if hasattr(msg, "format"):
        return image_codec.decode_compressed(msg.format, msg.data, max_dim, max_pixels, max_aspect)
    return image_codec.decode_image(msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian,
                                    msg.data, max_dim, max_pixels, max_aspect)


# --------------------------------------------------------------------------- TF
def transform_msg(parent: str, child: str, translation, quaternion_wxyz, t_ns: int):
    """``geometry_msgs/TransformStamped``: the pose of ``child`` in ``parent`` (m, unit wxyz) at ``t_ns``."""
    p = np.asarray(translation, dtype=np.float64).reshape(3)
    x, y, z, w = wxyz_to_ros(quaternion_wxyz)
    tr = _t("geometry_msgs/msg/Transform")(
        translation=_t("geometry_msgs/msg/Vector3")(x=float(p[0]), y=float(p[1]), z=float(p[2])),
        rotation=_t("geometry_msgs/msg/Quaternion")(x=x, y=y, z=z, w=w))
    return _t("geometry_msgs/msg/TransformStamped")(header=header(t_ns, parent), child_frame_id=child,
                                                    transform=tr)


def tf_msg(transforms: Sequence) -> object:
    """``tf2_msgs/TFMessage`` of :func:`transform_msg` results (``/tf`` and ``/tf_static``)."""
    return _t(TF_TYPE)(transforms=list(transforms))


# --------------------------------------------------------------------------- poses
def pose_stamped_msg(position, quaternion_wxyz, t_ns: int, frame_id: str):
    """``geometry_msgs/PoseStamped``: ``position`` (3,) m and unit ``quaternion_wxyz`` in ``frame_id``."""
    p = np.asarray(position, dtype=np.float64).reshape(3)
    x, y, z, w = wxyz_to_ros(quaternion_wxyz)
    pose = _t("geometry_msgs/msg/Pose")(
        position=_t("geometry_msgs/msg/Point")(x=float(p[0]), y=float(p[1]), z=float(p[2])),
        orientation=_t("geometry_msgs/msg/Quaternion")(x=x, y=y, z=z, w=w))
    return _t(POSE_TYPE)(header=header(t_ns, frame_id), pose=pose)


def pose_with_covariance_msg(position, quaternion_wxyz, covariance, t_ns: int, frame_id: str):
    """``geometry_msgs/PoseWithCovarianceStamped``; ``covariance`` (6, 6) row-major (x y z rotx roty rotz)."""
    ps = pose_stamped_msg(position, quaternion_wxyz, t_ns, frame_id)
    cov = np.asarray(covariance, dtype=np.float64).reshape(36)
    pwc = _t("geometry_msgs/msg/PoseWithCovariance")(pose=ps.pose, covariance=cov)
    return _t(POSE_COV_TYPE)(header=ps.header, pose=pwc)


def pose_from_msg(msg) -> tuple[int, np.ndarray, np.ndarray]:
    """(header stamp ns, position (3,) m, quaternion (4,) wxyz) of a PoseStamped or PoseWithCovarianceStamped."""
    pose = msg.pose.pose if hasattr(msg.pose, "covariance") else msg.pose
    p, o = pose.position, pose.orientation
    return (stamp_to_ns(msg.header.stamp), np.array([p.x, p.y, p.z], dtype=np.float64),
            ros_to_wxyz(o.x, o.y, o.z, o.w))


# --------------------------------------------------------------------------- TUM
def format_tum_stamp(t_ns: int) -> str:
    """Seconds with 9 decimals, exact (``1700000000.100000000``)."""
    sec, nsec = divmod(int(t_ns), 1_000_000_000)
    return f"{sec}.{nsec:09d}"


def write_tum(path: Path | str, stamps_ns: Sequence[int], positions, quaternions_wxyz) -> int:
    """Write a TUM trajectory ``timestamp tx ty tz qx qy qz qw`` (s, m, unit xyzw) for evo.

    Returns the number of poses written.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    quats = np.asarray(quaternions_wxyz, dtype=np.float64).reshape(-1, 4)
    if not (len(stamps_ns) == len(positions) == len(quats)):
        raise ValueError("stamps, positions and quaternions differ in length")
    lines = []
    for t, p, q in zip(stamps_ns, positions, quats):
        x, y, z, w = wxyz_to_ros(q)
        lines.append(f"{format_tum_stamp(t)} {p[0]:.9f} {p[1]:.9f} {p[2]:.9f} {x:.9f} {y:.9f} {z:.9f} {w:.9f}")
    Path(path).write_text("".join(line + "\n" for line in lines))
    return len(lines)


def read_tum(path: Path | str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Read a TUM file written by :func:`write_tum`: (stamps ns, positions (N,3), quats wxyz (N,4))."""
    stamps, pos, quat = [], [], []
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        f = line.split()
        sec, _, frac = f[0].partition(".")
        stamps.append(int(sec) * 1_000_000_000 + int((frac + "000000000")[:9]))
        pos.append([float(v) for v in f[1:4]])
        x, y, z, w = (float(v) for v in f[4:8])
        quat.append(ros_to_wxyz(x, y, z, w))
    return stamps, np.array(pos).reshape(-1, 3), np.array(quat).reshape(-1, 4)
