"""A synthetic robot recording with known ground truth, written straight with ``rosbags``' writers
(ROS 2 sqlite3 / MCAP, zstd-compressed MCAP, any ROS 2 distro's types, or a ROS 1 ``.bag``): the
input of ``pae bag export``'s tests and bench. No rclpy.

The robot drives a circle of radius 2 m at 0.5 m/s in ``map`` with a small heave and pitch; TF:
``map -> odom`` (static), ``odom -> base_link`` (``/tf`` at ``odom_hz``, a rate unlike the
camera's), ``base_link -> camera_link`` (the mount, ``/tf_static``) and ``camera_link ->
camera_optical`` (REP 103 optical rotation, ``/tf_static``). Images (random texture, new every
frame) carry ``image_frame`` in their header; ``/camera/camera_info`` gives K (and distortion
``D``). Optionally a ``PoseStamped`` of ``base_link`` in ``map`` at ``pose_hz`` whose stamps lag
the truth by ``pose_clock_lag_s``. Stamps are integer ns since the epoch; the log time of each
message is its header stamp.

:func:`write_recording` returns the ground truth: per image, the stamp and the camera-to-map pose
of the **optical** camera frame (metres, quaternion wxyz).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import geometry
from ..image_codec import encode_compressed
from . import msgs
from .tf_tree import BODY_TO_OPTICAL_WXYZ

START_NS = 1_700_000_000_000_000_000
#: T_map_odom: where odometry started in the map
MAP_ODOM = (np.array([1.0, -0.5, 0.0]), np.array([np.cos(0.15), 0.0, 0.0, np.sin(0.15)]))
#: T_base_camera_link: 0.2 m forward, 0.5 m up, pitched 10 degrees down (REP 103 body axes)
MOUNT = (np.array([0.2, 0.0, 0.5]), np.array([np.cos(np.radians(5)), 0.0, np.sin(np.radians(5)), 0.0]))
#: an example pinhole camera for 64 x 48 images, pixels
DEFAULT_K = (60.0, 60.0, 31.5, 23.5)


def _yaw_pitch(yaw: float, pitch: float) -> np.ndarray:
    qz = np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])
    qy = np.array([np.cos(pitch / 2), 0.0, np.sin(pitch / 2), 0.0])
    return geometry.quat_multiply(qz, qy)


def base_in_map(t_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth ``T_map_base_link`` at ``t_s`` seconds after the start (m, wxyz)."""
    a = 0.25 * t_s
    p = np.array([2.0 * np.cos(a), 2.0 * np.sin(a), 0.1 * np.sin(0.5 * t_s)])
    return p, _yaw_pitch(a + np.pi / 2, 0.05 * np.sin(t_s))


def camera_in_map(t_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth pose of ``camera_optical`` in ``map`` (camera-to-world, m, wxyz)."""
    t, q = geometry.compose_poses(*base_in_map(t_s), *MOUNT)
    t, q = geometry.compose_poses(t, q, np.zeros(3), BODY_TO_OPTICAL_WXYZ)
    return t, geometry.canonical_quat(q)


@dataclass
class RecordingSpec:
    """What to write (rates in Hz, sizes in pixels, times in seconds)."""

    storage: str = "mcap"            # mcap | mcap-zstd | sqlite3 | ros1
    distro: str = "ros2_humble"      # rosbags Stores value for ROS 2 bags
    n_images: int = 20
    camera_hz: float = 10.0
    odom_hz: float = 37.0
    width: int = 64
    height: int = 48
    K: tuple = DEFAULT_K
    D: list = field(default_factory=lambda: [0.0] * 5)
    distortion_model: str = "plumb_bob"
    compressed: bool = False
    tf_static: bool = True           # False: no /tf_static (mount given with --static-tf)
    image_frame: str = "camera_optical"
    pose_hz: float = 0.0             # > 0: /base_pose of base_link in map, of type pose_type
    pose_type: str = "geometry_msgs/msg/PoseStamped"  # or PoseWithCovarianceStamped, nav_msgs Odometry,
                                                      # TransformStamped (these two name base_link)
    pose_clock_lag_s: float = 0.0
    seed: int = 0
    start_ns: int = START_NS
    images: list | None = None       # optional (H, W, 3) uint8 RGB images, one per frame
    corrupt_frames: tuple = ()       # frame indices whose compressed data is cut short
    info_change_at: int | None = None  # from this frame on camera_info's fx is 10 % larger


class _Out:
    """One bag being written: ROS 2 (rosbags.rosbag2.Writer) or ROS 1 (rosbags.rosbag1.Writer)."""

    def __init__(self, path: Path, spec: RecordingSpec) -> None:
        from rosbags.typesys import Stores, get_typestore

        self.ros1 = spec.storage == "ros1"
        if self.ros1:
            from rosbags.rosbag1 import Writer

            from rosbags.typesys import get_types_from_msg

            self.ts = get_typestore(Stores.ROS1_NOETIC)
            # noetic's store lacks tf2_msgs; its definition is one line
            self.ts.register(get_types_from_msg("geometry_msgs/TransformStamped[] transforms",
                                                "tf2_msgs/msg/TFMessage"))
            self.w = Writer(path)
        else:
            from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

            self.ts = get_typestore(Stores(spec.distro))
            plugin = StoragePlugin.SQLITE3 if spec.storage == "sqlite3" else StoragePlugin.MCAP
            self.w = Writer(path, version=9 if spec.distro in ("ros2_jazzy", "ros2_kilted") else 8,
                            storage_plugin=plugin)
            if spec.storage == "mcap-zstd":
                self.w.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self.conns: dict[str, object] = {}
        self.w.open()

    def T(self, name: str):
        return self.ts.types[name]

    def header(self, t_ns: int, frame: str):
        sec, nsec = divmod(int(t_ns), 1_000_000_000)
        stamp = self.T("builtin_interfaces/msg/Time")(sec=sec, nanosec=nsec)
        if self.ros1:
            return self.T("std_msgs/msg/Header")(seq=0, stamp=stamp, frame_id=frame)
        return self.T("std_msgs/msg/Header")(stamp=stamp, frame_id=frame)

    def write(self, topic: str, msgtype: str, t_ns: int, msg) -> None:
        if topic not in self.conns:
            self.conns[topic] = self.w.add_connection(topic, msgtype, typestore=self.ts)
        data = self.ts.serialize_ros1(msg, msgtype) if self.ros1 else self.ts.serialize_cdr(msg, msgtype)
        self.w.write(self.conns[topic], int(t_ns), data)

    def close(self) -> None:
        self.w.close()

    # message builders (ROS 1 and ROS 2 differ in Header.seq and CameraInfo's upper-case arrays)
    def transform(self, t_ns: int, parent: str, child: str, t, q):
        T = self.T
        x, y, z, w = msgs.wxyz_to_ros(q)
        tr = T("geometry_msgs/msg/Transform")(
            translation=T("geometry_msgs/msg/Vector3")(x=float(t[0]), y=float(t[1]), z=float(t[2])),
            rotation=T("geometry_msgs/msg/Quaternion")(x=x, y=y, z=z, w=w))
        return T("geometry_msgs/msg/TransformStamped")(header=self.header(t_ns, parent), child_frame_id=child,
                                                       transform=tr)

    def tf(self, transforms: list):
        return self.T("tf2_msgs/msg/TFMessage")(transforms=transforms)

    def pose(self, msgtype: str, t_ns: int, frame: str, t, q):
        """A pose of ``base_link`` in ``frame`` as ``msgtype``."""
        T = self.T
        if msgtype.endswith("TransformStamped"):
            return self.transform(t_ns, frame, "base_link", t, q)
        x, y, z, w = msgs.wxyz_to_ros(q)
        pose = T("geometry_msgs/msg/Pose")(
            position=T("geometry_msgs/msg/Point")(x=float(t[0]), y=float(t[1]), z=float(t[2])),
            orientation=T("geometry_msgs/msg/Quaternion")(x=x, y=y, z=z, w=w))
        if msgtype.endswith("/PoseStamped"):
            return T(msgtype)(header=self.header(t_ns, frame), pose=pose)
        pwc = T("geometry_msgs/msg/PoseWithCovariance")(pose=pose, covariance=np.eye(6).reshape(-1) * 1e-4)
        if msgtype.endswith("PoseWithCovarianceStamped"):
            return T(msgtype)(header=self.header(t_ns, frame), pose=pwc)
        v = T("geometry_msgs/msg/Vector3")(x=0.0, y=0.0, z=0.0)
        twist = T("geometry_msgs/msg/TwistWithCovariance")(twist=T("geometry_msgs/msg/Twist")(linear=v, angular=v),
                                                           covariance=np.zeros(36))
        return T(msgtype)(header=self.header(t_ns, frame), child_frame_id="base_link", pose=pwc, twist=twist)

    def camera_info(self, t_ns: int, frame: str, spec: RecordingSpec, changed: bool = False):
        fx, fy, cx, cy = spec.K
        fx = fx * 1.1 if changed else fx
        k = np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], np.float64)
        p = np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], np.float64)
        arrays = {"d": np.asarray(spec.D, np.float64), "k": k, "r": np.eye(3).reshape(-1), "p": p}
        if self.ros1:
            arrays = {name.upper(): v for name, v in arrays.items()}
        roi = self.T("sensor_msgs/msg/RegionOfInterest")(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return self.T("sensor_msgs/msg/CameraInfo")(
            header=self.header(t_ns, frame), height=spec.height, width=spec.width,
            distortion_model=spec.distortion_model, binning_x=0, binning_y=0, roi=roi, **arrays)

    def image(self, t_ns: int, frame: str, rgb: np.ndarray, compressed: bool):
        if compressed:
            fmt, data = encode_compressed(rgb, "jpeg", 95)
            return self.T("sensor_msgs/msg/CompressedImage")(header=self.header(t_ns, frame), format=fmt,
                                                             data=np.frombuffer(data, np.uint8).copy())
        h, w = rgb.shape[:2]
        return self.T("sensor_msgs/msg/Image")(header=self.header(t_ns, frame), height=h, width=w, encoding="rgb8",
                                               is_bigendian=0, step=3 * w, data=np.ascontiguousarray(rgb).reshape(-1))


IMAGE_TOPIC = "/camera/image_raw"
INFO_TOPIC = "/camera/camera_info"
POSE_TOPIC = "/base_pose"


def write_recording(path: Path | str, spec: RecordingSpec) -> dict:
    """Write the recording at ``path`` (a folder for ROS 2, a ``.bag`` file for ROS 1).

    Returns ``{"stamps_ns": [...], "positions": (N, 3), "quaternions": (N, 4)}``: the optical
    camera's ground-truth camera-to-map pose at each image's header stamp.
    """
    path = Path(path)
    out = _Out(path, spec)
    rng = np.random.default_rng(spec.seed)
    dt_img = 1.0 / spec.camera_hz
    # odometry covers the images with margin on both sides, so every image can be interpolated
    t_end = (spec.n_images - 1) * dt_img + 0.2
    events: list[tuple[int, int, str, object]] = []   # (log ns, order, kind, payload)
    to_ns = lambda s: spec.start_ns + int(round(s * 1e9))  # noqa: E731
    odom_map = geometry.invert_pose(*MAP_ODOM)
    k = 0
    while k / spec.odom_hz <= t_end:
        s = k / spec.odom_hz - 0.1
        events.append((to_ns(s), 0, "odom", s))
        k += 1
    if spec.pose_hz > 0:
        k = 0
        while k / spec.pose_hz <= t_end:
            s = k / spec.pose_hz - 0.1
            events.append((to_ns(s), 1, "pose", s))
            k += 1
    for i in range(spec.n_images):
        events.append((to_ns(i * dt_img), 2, "image", i))
    events.sort(key=lambda e: (e[0], e[1]))

    statics = [("map", "odom", *MAP_ODOM)]
    if spec.tf_static:
        statics.append(("base_link", "camera_link", *MOUNT))
        statics.append(("camera_link", "camera_optical", np.zeros(3), BODY_TO_OPTICAL_WXYZ))
    else:
        statics = statics[:1]
    t0 = spec.start_ns - 200_000_000
    out.write("/tf_static", "tf2_msgs/msg/TFMessage", t0,
              out.tf([out.transform(t0, p, c, t, q) for p, c, t, q in statics]))
    gt_stamps, gt_pos, gt_quat = [], [], []
    for t_ns, _, kind, payload in events:
        if kind == "odom":
            tb, qb = geometry.compose_poses(*odom_map, *base_in_map(payload))
            out.write("/tf", "tf2_msgs/msg/TFMessage", t_ns, out.tf([out.transform(t_ns, "odom", "base_link", tb, qb)]))
        elif kind == "pose":
            lagged = t_ns - int(round(spec.pose_clock_lag_s * 1e9))
            out.write(POSE_TOPIC, spec.pose_type, t_ns, out.pose(spec.pose_type, lagged, "map", *base_in_map(payload)))
        else:
            i = payload
            rgb = spec.images[i] if spec.images is not None else \
                rng.integers(0, 256, (spec.height, spec.width, 3), dtype=np.uint8)
            changed = spec.info_change_at is not None and i >= spec.info_change_at
            out.write(INFO_TOPIC, "sensor_msgs/msg/CameraInfo", t_ns,
                      out.camera_info(t_ns, spec.image_frame, spec, changed))
            mt = "sensor_msgs/msg/CompressedImage" if spec.compressed else "sensor_msgs/msg/Image"
            topic = IMAGE_TOPIC + "/compressed" if spec.compressed else IMAGE_TOPIC
            msg = out.image(t_ns, spec.image_frame, rgb, spec.compressed)
            if i in spec.corrupt_frames:
                msg.data = msg.data[: len(msg.data) // 2]
            out.write(topic, mt, t_ns, msg)
            p, q = camera_in_map(i * dt_img)
            gt_stamps.append(t_ns)
            gt_pos.append(p)
            gt_quat.append(q)
    out.close()
    return {"stamps_ns": gt_stamps, "positions": np.array(gt_pos), "quaternions": np.array(gt_quat)}
