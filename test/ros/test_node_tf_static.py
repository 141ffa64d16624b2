"""The camera mount on /tf_static reaches the node whatever durability its publisher offers.

* A recording written by another tool with ``rosbags`` (no offered QoS in its metadata; its own
  topic and frame names: ``/cam0/image_raw/compressed``, ``base_link -> cam0_link ->
  cam0_optical_frame`` as two /tf_static messages, ``odom -> base_link`` on /tf) replayed by
  ``pae bag play`` into the node (the real Localizer on the tiny bundle): every pose is the
  base_link pose (the camera estimate moved by the mount) and ``map -> odom`` is published.
* A volatile /tf_static publisher that starts after the node: the node names it as incompatible
  with its transient-local subscription, and still receives the mount it publishes.
Real rclpy over DDS, real rosbags, no fakes.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import ros_harness as H  # noqa: E402  (isolated ROS domain before any context exists)

from pae_ros import geometry as G  # noqa: E402

pytestmark = pytest.mark.timeout(180)

S = 1_000_000_000
T0 = 1_000_000_000 * S  # bag time base (ns), far from the stamps other tests use
#: the two-edge mount: base_link -> cam0_link (m, wxyz), cam0_link -> cam0_optical_frame
MOUNT = [("base_link", "cam0_link", [0.3, 0.0, 1.2], [np.cos(0.1), 0.0, 0.0, np.sin(0.1)]),
         ("cam0_link", "cam0_optical_frame", [0.0, 0.0, 0.0], [0.5, -0.5, 0.5, -0.5])]
OPTICAL = "cam0_optical_frame"


def _camera_to_base():
    """``T_optical_base`` of :data:`MOUNT` (translation m, quaternion wxyz)."""
    (_, _, t1, q1), (_, _, t2, q2) = MOUNT
    t_bo, q_bo = G.compose_poses(np.array(t1), np.array(q1), np.array(t2), np.array(q2))
    return G.invert_pose(t_bo, q_bo)


def _write_foreign_bag(path: Path, images: list[np.ndarray]) -> None:
    """A rosbag2 as another tool writes it with rosbags: no offered QoS profiles."""
    import cv2
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    M = ts.types

    def header(t_ns, frame):
        return M["std_msgs/msg/Header"](stamp=M["builtin_interfaces/msg/Time"](sec=t_ns // S, nanosec=t_ns % S),
                                        frame_id=frame)

    def tf(t_ns, parent, child, t, q_wxyz):
        w, x, y, z = (float(v) for v in q_wxyz)
        tr = M["geometry_msgs/msg/Transform"](translation=M["geometry_msgs/msg/Vector3"](x=t[0], y=t[1], z=t[2]),
                                              rotation=M["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w))
        return M["geometry_msgs/msg/TransformStamped"](header=header(t_ns, parent), child_frame_id=child,
                                                       transform=tr)

    tfm, cim = "tf2_msgs/msg/TFMessage", "sensor_msgs/msg/CompressedImage"
    with Writer(path, version=9) as w:
        c_static = w.add_connection("/tf_static", tfm, typestore=ts)
        c_tf = w.add_connection("/tf", tfm, typestore=ts)
        c_img = w.add_connection("/cam0/image_raw/compressed", cim, typestore=ts)
        msgs = [(T0 + i, c_static, ts.serialize_cdr(M[tfm](transforms=[tf(T0, *edge)]), tfm))
                for i, edge in enumerate(MOUNT)]  # one message per edge, as two static broadcasters send them
        msgs += [(T0 + k * S // 50, c_tf, ts.serialize_cdr(M[tfm](transforms=[
            tf(T0 + k * S // 50, "odom", "base_link", [0.01 * k, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0])]), tfm))
            for k in range(1, 50 * (len(images) // 4 + 2))]
        for i, rgb in enumerate(images):
            t_ns = T0 + S // 2 + i * S // 4  # 4 Hz after half a second
            ok, jpg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]))
            assert ok
            msg = M[cim](header=header(t_ns, OPTICAL), format="jpeg", data=np.asarray(jpg, np.uint8).ravel())
            msgs.append((t_ns, c_img, ts.serialize_cdr(msg, cim)))
        for t_ns, conn, data in sorted(msgs, key=lambda m: m[0]):
            w.write(conn, t_ns, data)


@pytest.fixture(scope="module")
def localizer(tiny_bundle):
    from pae_ros.pipeline import Localizer

    return Localizer.from_bundle(tiny_bundle, device="cpu")


def test_foreign_bag_replayed_gives_base_poses_and_map_to_odom(tiny_dataset, localizer, probe, tmp_path):
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from tf2_msgs.msg import TFMessage

    from pae_ros.datasets import load_rgb, read_dataset
    from pae_ros.ros.conversions import pose_from_msg, transform_from_msg
    from pae_ros.ros.qos import TF_QOS

    images = [load_rgb(f.image_path) for f in read_dataset(tiny_dataset, "7scenes", "test").frames[:8]]
    bag = tmp_path / "foreign"
    _write_foreign_bag(bag, images)
    ns = "/foreign"
    poses = probe.collect(f"{ns}/pae/pose_with_covariance", PoseWithCovarianceStamped)
    tfs = probe.collect("/tf", TFMessage, TF_QOS)
    rec = H.RecordingLocalizer(localizer)
    node = H.InProcessNode(ns, {"image_topic": "/cam0/image_raw", "compressed": True, "confidence_gate": 0.0,
                          "image_qos": "reliable", "tf_publish_rate": 0.0, "tf_wait": 0.5,
                                "tracking": False}, rec)  # map -> odom per in-scene estimate
    try:
        # the probe hears the poses only once its subscription matched the node's new publisher
        H.wait_matched(node.node.output.pub_pose_cov)
        play = subprocess.run([sys.executable, "-m", "pae_ros.ros.bag_play", str(bag), "--wait-subscribers",
                               "/cam0/image_raw/compressed:1", "--wait-timeout", "60"],
                              capture_output=True, text=True, timeout=120, cwd=str(H.REPO))
        assert play.returncode == 0, play.stderr
        assert "/tf_static [tf2_msgs/msg/TFMessage] 2 msgs, reliable, transient_local, depth 10" in play.stderr
        H.wait_until(lambda: len(rec.estimates) >= 6 and node.node.stats.frames_localized == len(rec.estimates)
                     and poses.msgs(), 60, what="every frame localized and a pose received")
        t_cb, q_cb = _camera_to_base()
        # the pose topic keeps the last message only (depth 1), so a loaded machine may deliver fewer poses
        # than frames: each that arrived is some frame's estimate moved by the mount (base_link, not camera)
        wanted = np.array([G.compose_poses(e.position, e.quaternion, t_cb, q_cb)[0] for e in rec.estimates])
        for msg in poses.msgs():
            assert np.abs(wanted - pose_from_msg(msg)[0]).max(1).min() < 1e-6
        assert "base_tf_missing" not in node.node.stats.snapshot()["counters"]
        in_scene = [e for e in rec.estimates if e.in_scene]
        assert in_scene, "no in-scene estimate: nothing could move map -> odom"

        def map_odom():
            return [transform_from_msg(t) for m in tfs.msgs() for t in m.transforms
                    if (t.header.frame_id, t.child_frame_id) == ("map", "odom") and T0 <= transform_from_msg(t)[4] < T0 + 10 * S]

        def tf_late():  # frames without odom -> camera in time (a loaded machine): counted, whether
            # /tf had not reached the stamp within tf_wait or /tf_static had not arrived yet (no chain)
            snap = node.node.stats.snapshot()
            c = snap["counters"]
            return c.get("tf_timeout", 0) + c.get("tf_too_old", 0) + snap["tf_missing"]

        # every in-scene frame either moved map -> odom (counted where the node sends it: the probe's
        # /tf subscription may match the node's new publisher after the first one) or was counted late
        def sent():
            return node.node.output.tf_out.published

        try:
            H.wait_until(lambda: sent() + tf_late() == len(in_scene), 10, what="map -> odom at the bag's stamps")
        except AssertionError as e:
            snap = node.node.stats.snapshot()
            raise AssertionError(f"{e}: {sent()} map -> odom sent, {tf_late()} late, {len(in_scene)} in scene; "
                                 f"tf_missing {snap['tf_missing']}, counters {snap['counters']}") from None
        # what arrived is stamped at the bag's images (+ transform_tolerance), at least one of them
        H.wait_until(lambda: map_odom(), 10, what="a map -> odom at the bag's stamps on /tf")
        assert len(map_odom()) <= sent()
    finally:
        node.close()


def test_volatile_tf_static_publisher_after_the_node_is_named_and_heard(localizer, probe):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from tf2_msgs.msg import TFMessage

    from pae_ros.ros.conversions import header, rgb_to_image, stamp_from_ns, transform_stamped

    node = H.InProcessNode("/late_static", {"image_topic": "/late_static/cam", "tf_mode": "map_odom",
                                      "tf_wait": 0.0}, localizer)
    try:
        n = node.node
        img = rgb_to_image(header(stamp_from_ns(H.fresh_stamp()), OPTICAL), np.full((48, 64, 3), 90, np.uint8))
        n.worker.process(img, 0.0)  # before the mount: the camera pose, counted
        assert n.stats.snapshot()["counters"]["base_tf_missing"] == 1 and n._tf_static_warning() is None
        volatile = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.VOLATILE)
        pub = probe.publisher("/tf_static", TFMessage, volatile)
        H.wait_matched(pub)  # the node's volatile /tf_static subscription
        H.wait_until(lambda: "/pae_test_probe (volatile, reliable)" in (n.tf.incompatible or ""), 10,
                     what="the incompatible-QoS event naming the publisher")
        assert "/pae_test_probe" in n._tf_static_warning()  # named in /diagnostics while the mount is missing
        assert n.stats.snapshot()["counters"]["tf_static_incompatible_qos"] >= 1
        pub.publish(TFMessage(transforms=[transform_stamped(stamp_from_ns(0), *edge) for edge in MOUNT]))
        H.wait_until(lambda: n.tf.buffer.lookup(OPTICAL, "base_link") is not None, 10, what="the mount")
        est = localizer.localize(np.full((48, 64, 3), 90, np.uint8), geometric=False)
        t, q, _ = n.output.output_pose(0, OPTICAL, est)
        t_want, q_want = G.compose_poses(est.position, est.quaternion, *_camera_to_base())
        np.testing.assert_allclose(t, t_want, atol=1e-9)
        assert not n.output.base_missing and n._tf_static_warning() is None
        probe.node.destroy_publisher(pub)
    finally:
        node.close()
