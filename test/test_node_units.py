"""Unit tests of the node's building blocks (no DDS traffic, fast): TF buffer and REP 105
composition, keep-latest slot, QoS choice, message conversions, diagnostics, parameter table."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from pae_ros import geometry as G  # noqa: E402
from pae_ros.ros import conversions as cv  # noqa: E402
from pae_ros.ros.diagnostics import NodeStats, diagnostic_array, diagnostic_values  # noqa: E402
from pae_ros.ros.localizer_node import PARAMETERS, LatestSlot  # noqa: E402
from pae_ros.ros.qos import choose_image_reliability  # noqa: E402
from pae_ros.ros.tf import TfBuffer, map_to_odom  # noqa: E402

pytestmark = pytest.mark.timeout(30)


def _rand_pose(rng):
    return rng.normal(size=3), G.canonical_quat(rng.normal(size=4))


def _T(t, q):
    return G.pose_to_matrix(t, q)


def test_tf_buffer_chains_through_the_tree():
    rng = np.random.default_rng(0)
    buf = TfBuffer()
    edges = {("odom", "base_link"): _rand_pose(rng), ("base_link", "camera_link"): _rand_pose(rng),
             ("camera_link", "camera_optical"): _rand_pose(rng), ("map", "odom"): _rand_pose(rng),
             ("base_link", "lidar"): _rand_pose(rng)}
    for (p, c), (t, q) in edges.items():
        assert buf.set_transform(p, c, t, q)
    T = {k: _T(*v) for k, v in edges.items()}
    want = T["odom", "base_link"] @ T["base_link", "camera_link"] @ T["camera_link", "camera_optical"]
    t, q = buf.lookup("odom", "camera_optical")
    np.testing.assert_allclose(_T(t, q), want, atol=1e-12)
    # the inverse direction and a lookup across branches (lowest common ancestor base_link)
    t, q = buf.lookup("camera_optical", "odom")
    np.testing.assert_allclose(_T(t, q), np.linalg.inv(want), atol=1e-12)
    t, q = buf.lookup("lidar", "camera_link")
    np.testing.assert_allclose(_T(t, q), np.linalg.inv(T["base_link", "lidar"]) @ T["base_link", "camera_link"],
                               atol=1e-12)
    assert buf.lookup("odom", "unknown") is None
    assert buf.lookup("odom", "odom")[0].tolist() == [0, 0, 0]
    # latest wins; leading slashes are ignored; junk is refused
    t2, q2 = _rand_pose(rng)
    buf.set_transform("/odom", "/base_link", t2, q2)
    assert buf.has("odom", "base_link")
    assert not buf.set_transform("a", "a", [0, 0, 0], [1, 0, 0, 0])
    assert not buf.set_transform("a", "b", [0, 0, 0], [0, 0, 0, 0])
    assert not buf.set_transform("a", "b", [np.nan, 0, 0], [1, 0, 0, 0])
    # a loop in malformed input does not hang
    buf.set_transform("x", "y", [0, 0, 0], [1, 0, 0, 0])
    buf.set_transform("y", "x", [0, 0, 0], [1, 0, 0, 0])
    assert buf.lookup("x", "odom") is None


def test_map_to_odom_reproduces_the_estimate():
    rng = np.random.default_rng(1)
    for _ in range(20):
        t_mc, q_mc = _rand_pose(rng)
        t_oc, q_oc = _rand_pose(rng)
        t_mo, q_mo = map_to_odom(t_mc, q_mc, t_oc, q_oc)
        t, q = G.compose_poses(t_mo, q_mo, t_oc, q_oc)
        np.testing.assert_allclose(t, t_mc, atol=1e-9)
        assert G.orientation_error_rad(q, q_mc) < 1e-7


def test_latest_slot_keeps_only_the_newest():
    slot = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True   # 1 dropped
    assert slot.put(3) is True   # 2 dropped
    assert slot.take(0.1) == 3
    assert slot.take(0.05) is None
    got = []
    th = threading.Thread(target=lambda: got.append(slot.take()))
    th.start()
    time.sleep(0.05)
    slot.put(4)
    th.join(2)
    assert got == [4]
    th = threading.Thread(target=lambda: got.append(slot.take()))
    th.start()
    slot.close()
    th.join(2)
    assert not th.is_alive() and got[-1] is None


def test_image_qos_choice():
    from rclpy.qos import ReliabilityPolicy as R

    assert choose_image_reliability("auto", [])[0] == "reliable"
    assert choose_image_reliability("auto", [R.RELIABLE, R.RELIABLE])[0] == "reliable"
    assert choose_image_reliability("auto", [R.RELIABLE, R.BEST_EFFORT])[0] == "best_effort"
    assert choose_image_reliability("best_effort", [R.RELIABLE])[0] == "best_effort"
    assert choose_image_reliability("reliable", [R.BEST_EFFORT])[0] == "reliable"


def test_quaternion_order_and_pose_messages():
    q = G.canonical_quat(np.array([0.9, 0.1, -0.2, 0.3]))  # wxyz
    hdr = cv.header(cv.stamp_from_ns(1_700_000_000_123_456_789), "map")
    msg = cv.pose_stamped(hdr, [1.0, 2.0, 3.0], q)
    o = msg.pose.orientation
    assert (o.x, o.y, o.z, o.w) == pytest.approx((q[1], q[2], q[3], q[0]))
    p, q2 = cv.pose_from_msg(msg)
    np.testing.assert_allclose(q2, q)
    assert cv.stamp_ns(msg.header.stamp) == 1_700_000_000_123_456_789
    cov = np.diag([1.0, 2, 3, 4, 5, 6])
    cov[0, 1] = 0.5
    m2 = cv.pose_with_covariance(hdr, p, q, cov)
    np.testing.assert_array_equal(np.asarray(m2.pose.covariance).reshape(6, 6), cov)  # row-major
    tr = cv.transform_stamped(hdr.stamp, "map", "cam", p, q)
    parent, child, t, q3, ns = cv.transform_from_msg(tr)
    assert (parent, child) == ("map", "cam") and ns == 1_700_000_000_123_456_789
    np.testing.assert_allclose(q3, q)


def test_image_message_round_trip():
    from pae_ros.image_codec import encode_compressed, encode_image
    from sensor_msgs.msg import CompressedImage, Image

    rgb = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    msg = cv.rgb_to_image(cv.header(cv.stamp_from_ns(5), "cam"), rgb)
    cv.check_image_msg(msg)
    np.testing.assert_array_equal(cv.image_to_rgb(msg), rgb)
    f = encode_image(rgb, "bgr8", row_padding=2)
    m = Image(height=f.height, width=f.width, encoding=f.encoding, step=f.step, data=f.data)
    np.testing.assert_array_equal(cv.image_to_rgb(m), rgb)
    fmt, data = encode_compressed(rgb, "png")
    np.testing.assert_array_equal(cv.image_to_rgb(CompressedImage(format=fmt, data=data)), rgb)


def test_diagnostics_message():
    from builtin_interfaces.msg import Time

    st = NodeStats()
    st.frame_in(False)
    st.frame_in(True)
    st.bad_input("bad_step")
    st.bad_input("bad_step")
    st.localized(0.010, 0.7, below_gate=False)
    st.localized(0.030, 0.2, below_gate=True)
    snap = st.snapshot()
    arr = diagnostic_array(Time(), "/pae_localizer", snap, {"device": "cpu", "bundle_id": "abc"})
    v = diagnostic_values(arr)
    assert arr.status[0].name == "/pae_localizer: localization"
    assert v["frames_in"] == "2" and v["frames_dropped"] == "1" and v["frames_localized"] == "2"
    assert v["bad_input.bad_step"] == "2" and v["bad_inputs"] == "2" and v["frames_below_gate"] == "1"
    assert float(v["latency_p50_ms"]) == pytest.approx(20.0) and float(v["latency_p95_ms"]) > 20.0
    assert v["device"] == "cpu" and v["bundle_id"] == "abc" and "state" in v
    assert arr.status[0].level == b"\x01"  # WARN: bad inputs this period


def test_parameter_table_is_consistent():
    names = [p.name for p in PARAMETERS]
    assert len(names) == len(set(names))
    for p in PARAMETERS:
        assert p.description, p.name
        assert isinstance(p.default, (bool, int, float, str))
        if p.check is not None:
            assert p.check(p.default) is None or p.name == "bundle", p.name  # defaults are valid


class _Stub:
    def __init__(self):
        self.msgs = []

    def publish(self, msg):
        self.msgs.append(msg)

    def get_subscription_count(self):
        return 1


class _FakeLocalizer:
    info = {"bundle_id": "fake", "device": "cpu", "refine": True, "k": 3, "steps": 30, "decoder": True}

    def __init__(self):
        self.mode = "ok"

    def localize(self, rgb):
        from types import SimpleNamespace

        if self.mode == "raise":
            raise RuntimeError("boom")
        est = SimpleNamespace(position=np.array([1.0, 2.0, 3.0]), quaternion=np.array([1.0, 0, 0, 0]),
                              apr_position=np.array([1.1, 2.0, 3.0]), apr_quaternion=np.array([1.0, 0, 0, 0]),
                              confidence=0.5, covariance=np.eye(6) * 0.25, finite=True, scene="room")
        if self.mode == "nan":
            est.position = np.array([np.nan, 0.0, 0.0])
            est.finite = False
        if self.mode == "low":
            est.confidence = 0.1
        return est

    def reconstruct(self, position, quaternion, scene=None):
        return np.full((8, 8, 3), 7, np.uint8)


def test_worker_survives_nan_and_exceptions_and_counts_them():
    """In-process node around a fake pipeline: NaN estimates and inference exceptions are counted
    by reason and publish nothing; good frames publish pose, covariance, APR pose, TF and the
    reconstruction with the image stamp; below the gate no TF."""
    import ros_harness  # noqa: F401  (isolated domain)
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    from pae_ros.ros.localizer_node import LocalizerNode

    ctx = Context()
    rclpy.init(context=ctx, args=[], signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        node = LocalizerNode(context=ctx, parameter_overrides=[
            Parameter("bundle", value="unused"), Parameter("tf_mode", value="map->camera"),
            Parameter("publish_reconstruction", value=True), Parameter("confidence_gate", value=0.3)])
        fake = _FakeLocalizer()
        node.setup(fake)
        stubs = {k: _Stub() for k in ("pub_pose", "pub_pose_cov", "pub_apr", "pub_tf", "pub_recon")}
        for k, v in stubs.items():
            setattr(node, k, v)
        node.tf_out._pub = stubs["pub_tf"]
        rgb = np.zeros((6, 8, 3), np.uint8)
        msg = cv.rgb_to_image(cv.header(cv.stamp_from_ns(42_000_000_123), "cam"), rgb)
        for mode in ("nan", "raise", "ok", "low"):
            fake.mode = mode
            node._process(msg, time.monotonic())
        bad = cv.rgb_to_image(cv.header(cv.stamp_from_ns(1), "cam"), rgb)
        bad.encoding = "weird"
        node._on_image(bad)
        snap = node.stats.snapshot()
        assert snap["bad"] == {"nonfinite_estimate": 1, "inference_error": 1, "unknown_encoding": 1}
        assert snap["frames_localized"] == 2 and snap["frames_below_gate"] == 1
        assert len(stubs["pub_pose"].msgs) == 2 and len(stubs["pub_apr"].msgs) == 2
        assert len(stubs["pub_tf"].msgs) == 1  # the low-confidence frame has none
        tf = stubs["pub_tf"].msgs[0].transforms[0]
        assert (tf.header.frame_id, tf.child_frame_id) == ("map", "cam")
        assert cv.stamp_ns(tf.header.stamp) == 42_000_000_123
        for k in ("pub_pose", "pub_pose_cov", "pub_apr"):
            m = stubs[k].msgs[0]
            assert m.header.frame_id == "map" and cv.stamp_ns(m.header.stamp) == 42_000_000_123
        assert np.asarray(stubs["pub_pose_cov"].msgs[0].pose.covariance)[0] == 0.25
        assert cv.pose_from_msg(stubs["pub_apr"].msgs[0])[0][0] == 1.1
        recon = stubs["pub_recon"].msgs[0]
        assert (recon.height, recon.width, recon.encoding, recon.header.frame_id) == (8, 8, "rgb8", "cam")
    finally:
        if node is not None:
            node.close()
        rclpy.try_shutdown(context=ctx)


def test_stage_times_reach_the_diagnostics():
    """Where latency goes (wait / decode / inference / publish) is published per stage, in ms."""
    from pae_ros.ros.diagnostics import NodeStats, diagnostic_array, diagnostic_values
    from builtin_interfaces.msg import Time

    stats = NodeStats()
    for inf in (0.004, 0.006, 0.005):
        stats.frame_in(False)
        stats.localized(0.010, 0.7, False, {"wait": 0.001, "decode": 0.0001, "inference": inf, "publish": 0.002})
    snap = stats.snapshot()
    assert snap["stage_inference_p50_ms"] == pytest.approx(5.0)
    assert snap["stage_publish_p50_ms"] == pytest.approx(2.0)
    values = diagnostic_values(diagnostic_array(Time(), "/pae_localizer", snap, {"device": "cpu"}))
    assert float(values["stage_inference_p50_ms"]) == pytest.approx(5.0)
    assert set(k for k in values if k.startswith("stage_")) == {
        "stage_wait_p50_ms", "stage_decode_p50_ms", "stage_inference_p50_ms", "stage_publish_p50_ms"}
