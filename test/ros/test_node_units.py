"""Unit tests of the node's building blocks (no DDS traffic, fast): TF buffer and REP 105
composition, keep-latest slot, QoS choice, message conversions, diagnostics, parameter table."""
from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from pae_ros import geometry as G  # noqa: E402
from pae_ros.pipeline import Estimate  # noqa: E402
from pae_ros.ros import conversions as cv  # noqa: E402
from pae_ros.ros.diagnostics import NodeStats, diagnostic_array, diagnostic_values  # noqa: E402
from pae_ros.ros.inference_worker import LatestSlot  # noqa: E402
from pae_ros.ros.params import PARAMETERS  # noqa: E402
from pae_ros.ros.qos import choose_image_reliability  # noqa: E402
from pae_ros.ros.tf_buffer import TfBuffer, map_to_odom  # noqa: E402
from support import REPO  # noqa: E402

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


class _FakeBundle:
    header: dict = {}


class _FakeLocalizer:
    """A :class:`pae_ros.ros.localizer_protocol.LocalizerLike` returning real Estimates."""

    info = {"bundle_id": "fake", "device": "cpu", "refine": True, "k": 3, "steps": 30, "decoder": True}
    geometric = None

    def __init__(self):
        self.mode = "ok"
        self.bundle = _FakeBundle()

    def warmup(self) -> float:
        return 0.0

    def localize(self, rgb, geometric=None):  # the node always passes geometric=False
        if self.mode == "raise":
            raise RuntimeError("boom")
        est = Estimate(position=np.array([1.0, 2.0, 3.0]), quaternion=np.array([1.0, 0, 0, 0]),
                       apr_position=np.array([1.1, 2.0, 3.0]), apr_quaternion=np.array([1.0, 0, 0, 0]),
                       confidence=0.5, sigma_position_m=0.5, sigma_orientation_rad=0.1,
                       covariance=np.eye(6) * 0.25, scene="room", refined=True, method="refined")
        if self.mode == "nan":
            est.position = np.array([np.nan, 0.0, 0.0])
            est.finite = False
        if self.mode == "low":
            est.confidence = 0.1
        return est

    def localize_geometric(self, rgb, prior, descriptor=None, intrinsics=None):
        return prior

    def reconstruct(self, position, quaternion, scene=None):
        return np.full((8, 8, 3), 7, np.uint8)


def test_the_pipeline_localizer_has_what_the_node_needs():
    """Every method of LocalizerLike exists on the real Localizer with the same parameters (names,
    defaults), and the test stand-in here has them too."""
    import inspect

    from pae_ros.pipeline import Localizer
    from pae_ros.ros.localizer_protocol import LocalizerLike

    methods = [n for n, v in vars(LocalizerLike).items() if inspect.isfunction(v) and not n.startswith("_")]
    assert {"localize", "localize_geometric", "reconstruct", "warmup"} <= set(methods)
    for name in methods:
        want = [(p.name, p.default) for p in inspect.signature(getattr(LocalizerLike, name)).parameters.values()]
        for impl in (Localizer, _FakeLocalizer):
            got = [(p.name, p.default) for p in inspect.signature(getattr(impl, name)).parameters.values()]
            assert got[:len(want)] == want, (impl.__name__, name, got)
    assert isinstance(inspect.getattr_static(Localizer, "info"), property)


def _stub_outputs(node, names=("pub_pose", "pub_pose_cov", "pub_apr")) -> dict:
    """Replace the node's publishers by recorders (``pub_tf``: the TF output's; ``pub_diag`` the
    node's own; the rest the pose output's)."""
    stubs = {k: _Stub() for k in names}
    for k, v in stubs.items():
        if k == "pub_tf":
            node.output.tf_out._pub = v
        elif k == "pub_diag":
            node.pub_diag = v
        else:
            setattr(node.output, k, v)
    return stubs


def test_worker_survives_nan_and_exceptions_and_counts_them():
    """In-process node around a fake pipeline: NaN estimates and inference exceptions are counted
    by reason and publish nothing; good frames publish pose, covariance, APR pose, TF and the
    reconstruction with the image stamp; below the gate no TF."""
    from support import ros_harness  # noqa: F401  (isolated domain)
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
        stubs = _stub_outputs(node, ("pub_pose", "pub_pose_cov", "pub_apr", "pub_tf", "pub_recon"))
        rgb = np.zeros((6, 8, 3), np.uint8)
        msg = cv.rgb_to_image(cv.header(cv.stamp_from_ns(42_000_000_123), "cam"), rgb)
        for mode in ("nan", "raise", "ok", "low"):
            fake.mode = mode
            node.worker.process(msg, time.monotonic())
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


# --------------------------------------------------------------------------- TF history, base frame, timing

def test_tf_history_interpolates_and_refuses_out_of_range():
    """Per-edge history: a stamp between two samples is interpolated (translation linear, rotation
    slerp); out-of-order samples are inserted at their stamp and never replace a newer one; older
    than the history -> too_old, newer than the newest sample -> future (wait_for waits, bounded)."""
    from pae_ros.ros.tf_buffer import TfLookupError

    buf = TfBuffer(history_s=1.0)
    yaw = lambda a: np.array([np.cos(a / 2), 0, 0, np.sin(a / 2)])  # noqa: E731
    S = 1_000_000_000
    # delivered out of order: 2 s, then 1 s, then 1.5 s
    for s, x, a in ((2 * S, 2.0, 0.2), (1 * S, 1.0, 0.0), (3 * S // 2, 1.5, 0.1)):
        assert buf.set_transform("odom", "base", [x, 0, 0], yaw(a), s)
    t, q = buf.lookup_or_raise("odom", "base", 1_250_000_000)
    np.testing.assert_allclose(t, [1.25, 0, 0], atol=1e-12)
    np.testing.assert_allclose(q, yaw(0.05), atol=1e-12)
    t, _ = buf.lookup_or_raise("odom", "base")  # no stamp: the newest sample, not the last delivered
    np.testing.assert_allclose(t, [2.0, 0, 0])
    with pytest.raises(TfLookupError) as e:
        buf.lookup_or_raise("odom", "base", 2 * S + 1)
    assert e.value.reason == "future"
    with pytest.raises(TfLookupError) as e:
        buf.lookup_or_raise("odom", "base", S - 1)
    assert e.value.reason == "too_old"
    # a sample older than the history window is refused; the window slides with the newest sample
    assert buf.set_transform("odom", "base", [3.0, 0, 0], yaw(0.3), 3 * S)
    assert not buf.set_transform("odom", "base", [9.0, 0, 0], yaw(0.0), S)
    with pytest.raises(TfLookupError):
        buf.lookup_or_raise("odom", "base", 1_250_000_000)
    # static edges answer at any stamp; a dynamic sample never replaces a static edge
    assert buf.set_transform("base", "cam", [0.3, 0, 1.2], [1, 0, 0, 0], 0, static=True)
    assert not buf.set_transform("base", "cam", [9, 9, 9], [1, 0, 0, 0], 5 * S)
    t, _ = buf.lookup_or_raise("odom", "cam", 2_500_000_000)
    np.testing.assert_allclose(t, [2.5 + 0.3 * np.cos(0.25), 0.3 * np.sin(0.25), 1.2], atol=1e-9)
    # bounded wait: a sample arriving 50 ms later is found; none within the timeout -> future
    threading.Timer(0.05, lambda: buf.set_transform("odom", "base", [4.0, 0, 0], yaw(0.4), 4 * S)).start()
    t, _ = buf.wait_for("odom", "base", 3_500_000_000, 2.0)
    np.testing.assert_allclose(t, [3.5, 0, 0], atol=1e-12)
    t0 = time.monotonic()
    with pytest.raises(TfLookupError):
        buf.wait_for("odom", "base", 10 * S, 0.1)
    assert 0.09 < time.monotonic() - t0 < 1.0


def _mount():
    """Camera optical frame in base_link: 0.3 m forward, 1.2 m up, pitched down 10 deg
    (base: x forward, y left, z up; optical: x right, y down, z forward)."""
    R_level = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # columns: optical axes in base
    p = np.radians(10.0)
    R_pitch = np.array([[np.cos(p), 0, np.sin(p)], [0, 1, 0], [-np.sin(p), 0, np.cos(p)]])  # +y: nose down
    return np.array([0.3, 0.0, 1.2]), G.rotmat_to_quat(R_pitch @ R_level)


def _set_up_with_mount(node):
    """Set ``node`` up around a :class:`_PoseLocalizer` with stubbed outputs and the :func:`_mount`
    on /tf_static; returns (the localizer, the output stubs by name, (mount translation m, quaternion wxyz))."""
    from tf2_msgs.msg import TFMessage

    fake = _PoseLocalizer()
    node.setup(fake)
    stubs = _stub_outputs(node, ("pub_pose", "pub_pose_cov", "pub_apr", "pub_tf"))
    t_bc, q_bc = _mount()
    node.tf._on_static(TFMessage(transforms=[cv.transform_stamped(cv.stamp_from_ns(0), "base_link",
                                                                  "camera_optical", t_bc, q_bc)]))
    return fake, stubs, (t_bc, q_bc)


def test_camera_to_base_with_a_known_mount_and_its_covariance():
    """T_map_base = T_map_cam * T_cam_base recovers the base pose; the covariance carried to the
    base matches a Monte Carlo propagation of the camera's (world-frame rotation errors move the
    base by the lever arm)."""
    from pae_ros.ros.frames import camera_to_base

    t_bc, q_bc = _mount()
    # the optical axis points 10 deg below the horizon
    z_opt = G.quat_to_rotmat(q_bc)[:, 2]
    assert np.degrees(np.arcsin(-z_opt[2])) == pytest.approx(10.0)
    t_mb = np.array([2.0, -1.0, 0.0])
    q_mb = np.array([np.cos(np.radians(15)), 0, 0, np.sin(np.radians(15))])  # yaw 30 deg
    t_mc, q_mc = G.compose_poses(t_mb, q_mb, t_bc, q_bc)
    t_cb, q_cb = G.invert_pose(t_bc, q_bc)
    cov = np.diag([0.04, 0.09, 0.01, 0.002, 0.003, 0.005])
    t, q, cov_b = camera_to_base(t_mc, q_mc, cov, t_cb, q_cb)
    np.testing.assert_allclose(t, t_mb, atol=1e-12)
    assert min(np.abs(q - q_mb).max(), np.abs(q + q_mb).max()) < 1e-12
    # Monte Carlo: perturb the camera pose (dp in map, dtheta about map axes), move to the base
    rng = np.random.default_rng(0)
    n = 20000
    d = rng.multivariate_normal(np.zeros(6), cov, size=n)
    R_mc = G.quat_to_rotmat(q_mc)
    samples = []
    for dp, dth in zip(d[:, :3], d[:, 3:]):
        ang = np.linalg.norm(dth)
        K = np.array([[0, -dth[2], dth[1]], [dth[2], 0, -dth[0]], [-dth[1], dth[0], 0]])
        dR = np.eye(3) + np.sin(ang) / ang * K + (1 - np.cos(ang)) / ang ** 2 * K @ K
        samples.append(np.concatenate([t_mc + dp + dR @ R_mc @ t_cb, dth]))
    emp = np.cov(np.asarray(samples).T)
    np.testing.assert_allclose(cov_b, emp, atol=4e-3)
    # the lever arm matters: 1.2 m x 0.05 rad gives the base x/y more variance than the camera's
    assert cov_b[0, 0] > cov[0, 0] + 1e-3 and cov_b[1, 1] > cov[1, 1] + 1e-3
    assert abs(cov_b[0, 4]) > 1e-3  # correlated with pitch


def test_flatten_2d():
    from pae_ros.ros.frames import flatten_2d, yaw_of

    rng = np.random.default_rng(1)
    q = G.canonical_quat(rng.normal(size=4))
    t2, q2, c2 = flatten_2d(np.array([1.0, 2.0, 3.0]), q, np.ones((6, 6)))
    assert t2.tolist() == [1.0, 2.0, 0.0]
    R2 = G.quat_to_rotmat(q2)
    np.testing.assert_allclose(R2[:, 2], [0, 0, 1], atol=1e-12)  # no roll / pitch
    assert yaw_of(q2) == pytest.approx(yaw_of(q))
    assert (c2[2] == 0).all() and (c2[:, 3] == 0).all() and c2[5, 5] == 1 and c2[0, 1] == 1


def test_camera_info_check_against_training_intrinsics():
    from pae_ros.ros.frames import compare_cameras, training_camera

    train = training_camera({"room": {"width": 640, "height": 480, "fx": 585.0, "fy": 585.0, "cx": 320, "cy": 240}},
                            "room")
    ok, text = compare_cameras(train, 320, 240, 292.5, 292.5)  # same camera at half resolution
    assert ok, text
    ok, text = compare_cameras(train, 640, 480, 400.0, 400.0)  # wider lens
    assert not ok and "horizontal FOV" in text and "57.4 deg" in text and "77.3 deg" in text
    ok, text = compare_cameras(train, 640, 360, 585.0, 585.0)  # 16:9 crop
    assert not ok and "aspect" in text and "1.778" in text and "1.333" in text
    assert training_camera(None) is None and training_camera({"room": None}) is None


# --------------------------------------------------------------------------- parameters on the command line

def test_command_line_parameters_are_checked_before_rcl_drops_them(tmp_path):
    """With --params-file, rcl drops a -p of another type (k:=abc) and keeps unknown names: the
    raw command line is checked against the parameter table."""
    from pae_ros.ros.params import ConfigError, check_command_line, command_line_parameters

    cfg = str(REPO / "config" / "localize.yaml")
    base = ["prog", "--ros-args", "--params-file", cfg, "-p", "bundle:=/b.pae"]
    check_command_line(base, "/pae_localizer")  # the shipped YAML + a bundle is valid
    check_command_line(base + ["-p", "tf_mode:=map->odom", "-p", "refine:=true", "-p", "confidence_gate:=1"],
                       "/pae_localizer")
    cases = {"k:=abc": "parameter 'k' must be an integer", "confidence_gate:=high": "'confidence_gate' must be a number",
             "refine:=maybe": "'refine' must be auto, true or false",
             "confidence_gte:=0.9": "unknown parameter 'confidence_gte'",
             "tf_mode:=map->base": "'tf_mode' must be one of map_odom, map_camera, none"}
    for arg, needle in cases.items():
        with pytest.raises(ConfigError, match=re.escape(needle)):
            check_command_line(base + ["-p", arg], "/pae_localizer")
    # the same mistakes in a params file, and node-name keys that address (or not) this node
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**:\n  ros__parameters:\n    confidence_gte: 0.9\n"
                   "/robot1/pae_localizer:\n  ros__parameters:\n    k: abc\nother_node:\n  ros__parameters:\n    x: 1\n")
    with pytest.raises(ConfigError) as e:
        check_command_line(["p", "--ros-args", "--params-file", str(bad), "-p", "bundle:=b"], "/robot1/pae_localizer")
    assert "confidence_gte" in str(e.value) and "'k' must be an integer" in str(e.value) and "'x'" not in str(e.value)
    names = [n for n, _, _ in command_line_parameters(["p", "--ros-args", "--params-file", str(bad)], "/pae_localizer")]
    assert names == ["confidence_gte"]
    # later sources win, as in rcl: the YAML's empty bundle is fine when -p gives one
    assert dict((n, v) for n, v, _ in command_line_parameters(base, "/pae_localizer"))["bundle"] == "/b.pae"


class _PoseLocalizer(_FakeLocalizer):
    """Returns a given camera pose (the truth at the image stamp: a perfect estimate)."""

    def __init__(self):
        super().__init__()
        self.pose = (np.zeros(3), np.array([1.0, 0, 0, 0]))

    def localize(self, rgb, geometric=None):
        est = super().localize(rgb, geometric)
        est.position, est.quaternion = self.pose
        est.covariance = np.diag([0.01, 0.01, 0.01, 0.001, 0.001, 0.001])
        est.confidence = 0.9
        return est


def _in_process_node(overrides: dict):
    from support import ros_harness  # noqa: F401  (isolated domain)
    import rclpy
    from rclpy.context import Context
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    from pae_ros.ros.localizer_node import LocalizerNode

    ctx = Context()
    rclpy.init(context=ctx, args=[], signal_handler_options=SignalHandlerOptions.NO)
    node = LocalizerNode(context=ctx, parameter_overrides=[Parameter("bundle", value="unused")] +
                         [Parameter(k, value=v) for k, v in overrides.items()])
    return ctx, node


def test_moving_robot_map_to_odom_at_the_image_stamp():
    """A robot driving a circle (1 m/s, 0.5 rad/s), odometry on /tf at 50 Hz (delivered shuffled),
    the camera mount on /tf_static, the image processed 300 ms after its stamp with a perfect
    estimate: map -> odom (stamped image + transform_tolerance) composed with odom -> base now
    gives the true base pose now (composing with the newest odometry instead is 30 cm off);
    pae/pose is the base pose with the covariance carried; the correction is re-published with
    newer stamps; odometry that lags is waited for (bounded), a frame older than the history is
    counted."""
    import rclpy
    from tf2_msgs.msg import TFMessage

    from pae_ros.ros.conversions import stamp_from_ns, transform_from_msg, transform_stamped

    v, w, S = 1.0, 0.5, 1_000_000_000

    def base(t):
        r = v / w
        return np.array([r * np.sin(w * t), r * (1 - np.cos(w * t)), 0.0]), \
            np.array([np.cos(w * t / 2), 0.0, 0.0, np.sin(w * t / 2)])

    ctx, node = _in_process_node({"tf_mode": "map_odom", "tf_wait": 0.5, "transform_tolerance": 0.1,
                                  "tf_publish_rate": 0.0, "tracking": False})  # map -> odom per estimate
    try:
        fake, stubs, (t_bc, q_bc) = _set_up_with_mount(node)
        tf_stub = stubs["pub_tf"]
        t_img, lat = 100.013, 0.3
        stamps = [k * S // 50 for k in range(int(round((t_img - 2) * 50)), int(round((t_img + lat) * 50)) + 1)]
        rng = np.random.default_rng(0)
        for i in rng.permutation(len(stamps)):
            node.tf._on_tf(TFMessage(transforms=[transform_stamped(stamp_from_ns(stamps[i]), "odom", "base_link",
                                                                *base(stamps[i] / S))]))
        s_img = int(round(t_img * S))
        fake.pose = G.compose_poses(*base(t_img), t_bc, q_bc)
        rgb = np.zeros((6, 8, 3), np.uint8)
        node.worker.process(cv.rgb_to_image(cv.header(cv.stamp_from_ns(s_img), "camera_optical"), rgb), time.monotonic())
        (tf,) = tf_stub.msgs[0].transforms
        parent, child, t_mo, q_mo, stamp = transform_from_msg(tf)
        assert (parent, child, stamp) == ("map", "odom", s_img + 100_000_000)
        now = t_img + lat
        t_mb, q_mb = G.compose_poses(t_mo, q_mo, *base(now))
        t_true, q_true = base(now)
        assert np.linalg.norm(t_mb - t_true) < 1e-4 and np.abs(q_mb - q_true).max() < 1e-4
        # the old behaviour (newest odom -> camera) would have been ~30 cm off
        t_old, q_old = map_to_odom(*fake.pose, *G.compose_poses(*base(now), t_bc, q_bc))
        assert np.linalg.norm(G.compose_poses(t_old, q_old, *base(now))[0] - t_true) > 0.25
        # pae/pose: the base pose at the image stamp; its covariance carried with the lever arm
        p, q = cv.pose_from_msg(stubs["pub_pose"].msgs[0])
        np.testing.assert_allclose(p, base(t_img)[0], atol=1e-9)
        cov = np.asarray(stubs["pub_pose_cov"].msgs[0].pose.covariance).reshape(6, 6)
        assert cov[0, 0] > 0.01 and cov[3, 3] == pytest.approx(0.001)
        # re-published: same correction, a newer stamp (now + tolerance on the node clock)
        node.output.tf_out._republish()
        parent, child, t_re, _, stamp_re = transform_from_msg(tf_stub.msgs[-1].transforms[0])
        assert len(tf_stub.msgs) == 2 and stamp_re > stamp and np.allclose(t_re, t_mo)
        # odometry lags the image: waited for (a sample arrives 100 ms later), bounded
        s_late = int(round((t_img + lat + 0.01) * S))
        fake.pose = G.compose_poses(*base(s_late / S), t_bc, q_bc)
        s_next = s_late + 10_000_000
        threading.Timer(0.1, lambda: node.tf._on_tf(TFMessage(transforms=[transform_stamped(
            stamp_from_ns(s_next), "odom", "base_link", *base(s_next / S))]))).start()
        node.worker.process(cv.rgb_to_image(cv.header(cv.stamp_from_ns(s_late), "camera_optical"), rgb), time.monotonic())
        assert transform_from_msg(tf_stub.msgs[-1].transforms[0])[4] == s_late + 100_000_000
        # too old for the 10 s history: counted, no TF; nothing newer arrives: timeout counted
        n = len(tf_stub.msgs)
        for s_bad in (s_img - 20 * S, s_next + 5 * S):
            node.worker.process(cv.rgb_to_image(cv.header(cv.stamp_from_ns(s_bad), "camera_optical"), rgb), time.monotonic())
        assert len(tf_stub.msgs) == n
        counters = node.stats.snapshot()["counters"]
        assert counters.get("tf_too_old") == 1 and counters.get("tf_timeout") == 1, counters
    finally:
        node.close()
        rclpy.try_shutdown(context=ctx)


def test_out_of_scene_or_low_confidence_moves_no_tf_and_no_initial_pose():
    """Estimate.in_scene False (the refine helper's out-of-scene gate) or confidence below the gate:
    the pose is still published, but no TF and nothing on /initialpose even when armed."""
    import rclpy

    ctx, node = _in_process_node({"tf_mode": "map_camera", "confidence_gate": 0.3, "pose_frame": "camera",
                                  "initial_pose_confidence": 0.0})
    try:
        fake = _PoseLocalizer()
        node.setup(fake)
        stubs = _stub_outputs(node, ("pub_pose", "pub_pose_cov", "pub_apr", "pub_tf"))
        tf_stub = stubs["pub_tf"]
        init = node.reloc._pub = _Stub()
        rgb = np.zeros((6, 8, 3), np.uint8)
        orig = fake.localize

        def out_of_scene(img, geometric=None):
            est = orig(img, geometric)
            est.in_scene = False
            return est
        fake.localize = out_of_scene
        node.reloc._armed = True
        node.worker.process(cv.rgb_to_image(cv.header(cv.stamp_from_ns(5), "cam"), rgb), time.monotonic())
        assert len(node.output.pub_pose.msgs) == 1 and not tf_stub.msgs and not init.msgs
        fake.localize = orig
        node.worker.process(cv.rgb_to_image(cv.header(cv.stamp_from_ns(6), "cam"), rgb), time.monotonic())
        assert len(tf_stub.msgs) == 1 and len(init.msgs) == 1  # confident and in scene: both
        assert node.stats.snapshot()["counters"]["out_of_scene"] == 1
    finally:
        node.close()
        rclpy.try_shutdown(context=ctx)


def test_set_enabled_jump_seeding_and_camera_info_warning():
    """~/set_enabled false ignores images (counted as paused) and true resumes; publish_initial_pose
    seeds /initialpose on the first confident pose and again only after a jump > initial_pose_jump;
    a camera_info whose field of view differs > 5 % from the bundle's training camera raises WARN in
    /diagnostics with both values."""
    import rclpy
    from sensor_msgs.msg import CameraInfo
    from std_srvs.srv import SetBool

    ctx, node = _in_process_node({"tf_mode": "none", "pose_frame": "camera", "publish_initial_pose": True,
                                  "initial_pose_jump": 1.0, "initial_pose_confidence": 0.5})
    try:
        fake = _PoseLocalizer()
        fake.bundle = type("B", (), {"header": {"intrinsics": {"room": {"width": 640, "height": 480, "fx": 585.0,
                                                                           "fy": 585.0, "cx": 320, "cy": 240}}}})()
        fake.info = dict(fake.info, scenes=["room"])
        node.setup(fake)
        _stub_outputs(node, ("pub_pose", "pub_pose_cov", "pub_apr", "pub_diag"))
        init = node.reloc._pub = _Stub()
        rgb = np.zeros((6, 8, 3), np.uint8)
        msg = cv.rgb_to_image(cv.header(cv.stamp_from_ns(7), "cam"), rgb)
        # pause / resume
        resp = node.reloc._on_set_enabled(SetBool.Request(data=False), SetBool.Response())
        assert resp.success and "paused" in resp.message
        node._on_image(msg)
        assert node.stats.snapshot()["counters"]["paused"] == 1 and node.stats.frames_in == 0
        node.reloc._on_set_enabled(SetBool.Request(data=True), SetBool.Response())
        node._on_image(msg)
        assert node.stats.frames_in == 1
        # jump rule
        for x in (0.0, 0.5, 0.9, 2.0, 2.5):
            fake.pose = (np.array([x, 0.0, 0.0]), np.array([1.0, 0, 0, 0]))
            node.worker.process(msg, time.monotonic())
        assert [cv.pose_from_msg(m)[0][0] for m in init.msgs] == [0.0, 2.0]
        # camera_info: same camera at half resolution is fine, a wider lens warns
        node._on_camera_info(CameraInfo(width=320, height=240, k=[292.5, 0, 160, 0, 292.5, 120, 0, 0, 1]))
        node._publish_diagnostics()
        st = node.pub_diag.msgs[-1].status[0]
        assert st.level == bytes([0]), st.message
        node._on_camera_info(CameraInfo(width=640, height=480, k=[400.0, 0, 320, 0, 400.0, 240, 0, 0, 1]))
        node._publish_diagnostics()
        st = node.pub_diag.msgs[-1].status[0]
        assert st.level == bytes([1]) and "77.3 deg vs training 57.4 deg" in st.message, st.message
    finally:
        node.close()
        rclpy.try_shutdown(context=ctx)


def test_two_d_mode_flattens_map_to_odom_and_the_base_pose():
    """two_d_mode: a tilted, lifted estimate gives a map -> odom and a base pose with z = 0 and
    no roll / pitch (yaw kept)."""
    import rclpy
    from tf2_msgs.msg import TFMessage

    from pae_ros.ros.conversions import stamp_from_ns, transform_from_msg, transform_stamped
    from pae_ros.ros.frames import yaw_of

    ctx, node = _in_process_node({"tf_mode": "map_odom", "two_d_mode": True, "tf_wait": 0.0, "tracking": False})
    try:
        fake, stubs, (t_bc, q_bc) = _set_up_with_mount(node)
        tf_stub = stubs["pub_tf"]
        node.tf._on_static(TFMessage(transforms=[transform_stamped(stamp_from_ns(0), "odom", "base_link",
                                                            [1.0, 0, 0], [1.0, 0, 0, 0])]))
        tilt = G.quat_multiply(np.array([np.cos(0.3), 0, 0, np.sin(0.3)]),      # yaw 0.6 rad
                               np.array([np.cos(0.05), np.sin(0.05), 0, 0]))    # roll 0.1 rad
        fake.pose = G.compose_poses(np.array([3.0, 2.0, 0.4]), tilt, t_bc, q_bc)
        node.worker.process(cv.rgb_to_image(cv.header(cv.stamp_from_ns(9), "camera_optical"),
                                      np.zeros((6, 8, 3), np.uint8)), time.monotonic())
        _, _, t_mo, q_mo, _ = transform_from_msg(tf_stub.msgs[0].transforms[0])
        p, q = cv.pose_from_msg(node.output.pub_pose.msgs[0])
        for t_, q_ in ((t_mo, q_mo), (p, q)):
            assert t_[2] == 0.0
            np.testing.assert_allclose(G.quat_to_rotmat(q_)[:, 2], [0, 0, 1], atol=1e-12)
        assert yaw_of(q) == pytest.approx(yaw_of(tilt), abs=0.02) and p[0] == pytest.approx(3.0, abs=0.05)
        cov = np.asarray(node.output.pub_pose_cov.msgs[0].pose.covariance).reshape(6, 6)
        assert cov[2, 2] == 0 and cov[3, 3] == 0 and cov[5, 5] > 0
    finally:
        node.close()
        rclpy.try_shutdown(context=ctx)
