"""The node's tracking filter (parameter ``tracking``, :mod:`pae_ros.ros.tracking_output`), over
real rclpy: odometry arrives on /tf from the probe, outputs (``pae/filtered_pose``, ``map -> odom``
on /tf, /diagnostics) are received by the probe. The localizer is a stand-in returning real
:class:`pae_ros.pipeline.Estimate` s from a script (good estimates of a moving camera and gross
outliers), so every figure checked is known.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import ros_harness as H  # noqa: E402  (isolated ROS domain before any context exists)

from pae_ros import geometry as G  # noqa: E402
from pae_ros.pipeline import Estimate  # noqa: E402

pytestmark = pytest.mark.timeout(240)

MS = 1_000_000
ODOM, CAM = "trk_odom", "trk_cam"
#: the true map -> odom (m, wxyz) and the camera's optical rotation on the robot
T_MO = (np.array([2.0, -1.0, 0.3]), np.array([np.cos(0.2), 0.0, 0.0, np.sin(0.2)]))
Q_OPTICAL = np.array([0.5, -0.5, 0.5, -0.5])
SIG_T, SIG_R = 0.02, 0.005
COV = np.diag([SIG_T ** 2] * 3 + [SIG_R ** 2] * 3)
MAX_STEP_M, MAX_STEP_RAD = 0.004, 0.001
N_FRAMES, OUTLIERS = 36, (9, 16, 23, 30)


def _odom_camera(k: int):
    """``odom -> camera`` of frame ``k`` (10 Hz): a robot on a 2 m circle at 0.5 m/s."""
    a = 0.025 * k
    t = np.array([2.0 * np.sin(a), 2.0 * (1.0 - np.cos(a)), 0.4])
    return t, G.quat_multiply(np.array([np.cos(a / 2), 0.0, 0.0, np.sin(a / 2)]), Q_OPTICAL)


def _estimate(t, q, cov=COV, method="refined") -> Estimate:
    return Estimate(position=np.asarray(t, np.float64), quaternion=np.asarray(q, np.float64),
                    apr_position=np.asarray(t, np.float64), apr_quaternion=np.asarray(q, np.float64),
                    confidence=0.9, sigma_position_m=SIG_T, sigma_orientation_rad=SIG_R,
                    covariance=np.asarray(cov, np.float64), scene="room", refined=True, method=method)


def _script(rng) -> list[Estimate]:
    """One estimate per frame: the truth with noise of ``COV``; at ``OUTLIERS`` 4 to 8 m off."""
    out = []
    for k in range(N_FRAMES):
        t, q = G.compose_poses(*T_MO, *_odom_camera(k))
        t = t + rng.normal(0.0, SIG_T, 3)
        w = rng.normal(0.0, SIG_R, 3)
        q = G.quat_multiply(np.concatenate([[np.cos(np.linalg.norm(w) / 2)],
                                            np.sin(np.linalg.norm(w) / 2) * w / np.linalg.norm(w)]), q)
        if k in OUTLIERS:
            d = rng.normal(size=3)
            t = t + d / np.linalg.norm(d) * rng.uniform(4.0, 8.0)
        out.append(_estimate(t, q, method="apr" if k in OUTLIERS else "refined"))
    return out


class _ScriptLocalizer:
    """A :class:`pae_ros.ros.localizer_protocol.LocalizerLike` returning ``next`` (a real Estimate)."""

    info = {"bundle_id": "script", "device": "cpu", "refine": True, "k": 3, "steps": 30, "decoder": False}
    geometric = None
    bundle = type("B", (), {"header": {}})()

    def __init__(self):
        self.next: Estimate | None = None

    def warmup(self) -> float:
        return 0.0

    def localize(self, rgb, geometric=None):
        return self.next

    def localize_geometric(self, rgb, prior, descriptor=None, intrinsics=None):
        return prior

    def reconstruct(self, position, quaternion, scene=None):
        return None


def _map_odom_tfs(tf_col, stamps: set[int]) -> list:
    from pae_ros.ros.conversions import transform_from_msg

    return [transform_from_msg(t) for m in tf_col.msgs() for t in m.transforms
            if (t.header.frame_id, t.child_frame_id) == ("map", ODOM) and H.stamp_key(t.header.stamp) in stamps]


@pytest.fixture(scope="module")
def run(probe):
    """The node (tf_mode map_odom, no re-publish) fed the script: per frame, odometry on /tf at the
    image stamp, then the image. Yields what went in and what came out; the node stays up for the
    tests that follow."""
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from tf2_msgs.msg import TFMessage

    from pae_ros.ros import conversions as cv
    from pae_ros.ros.qos import TF_QOS

    ns = "/trk"
    filtered = probe.collect(f"{ns}/pae/filtered_pose", PoseWithCovarianceStamped)
    tf_col = probe.collect("/tf", TFMessage, TF_QOS)
    H.add_output_collectors(probe)  # /diagnostics among them
    loc = _ScriptLocalizer()
    node = H.InProcessNode(ns, {"tf_mode": "map_odom", "odom_frame": ODOM, "tf_publish_rate": 0.0, "tf_wait": 0.5,
                                "pose_transient_local": False, "initial_pose_topic": f"{ns}/initialpose",
                                "tracking_max_step_m": MAX_STEP_M, "tracking_max_step_rad": MAX_STEP_RAD,
                                # the 1.8 m walk starts from its first frames (the spread rule: unit tests)
                                "tracking_init_min_spread_m": 0.0}, loc)
    try:
        n = node.node
        dyn = probe.publisher("/tf", TFMessage, TF_QOS)
        H.wait_matched(dyn)
        H.wait_matched(n.tracking._pub)
        script = _script(np.random.default_rng(7))
        base = H.fresh_stamp()
        stamps = []
        rgb = np.zeros((6, 8, 3), np.uint8)
        for k, est in enumerate(script):
            s = base + k * 100 * MS
            stamps.append(s)
            dyn.publish(TFMessage(transforms=[cv.transform_stamped(cv.stamp_from_ns(s), ODOM, CAM, *_odom_camera(k))]))
            H.wait_until(lambda: n.tf.buffer.lookup(ODOM, CAM, s) is not None, 10, what="odometry in the node")
            before = len(filtered.msgs())
            loc.next = est
            n.worker.process(cv.rgb_to_image(cv.header(cv.stamp_from_ns(s), CAM), rgb), time.monotonic())
            if n.tracking.filter.T is not None:  # once the track exists, every frame gives a filtered pose
                H.wait_until(lambda: len(filtered.msgs()) > before, 10, what=f"filtered pose of frame {k}")
        yield {"node": node, "script": script, "stamps": stamps, "filtered": filtered, "tf": tf_col,
               "loc": loc, "ns": ns, "dyn": dyn}
    finally:
        node.close()


def test_outliers_rejected_and_map_to_odom_slews(run, probe):
    """(a) Gross outliers are counted as rejected (in the filter and on /diagnostics), the good
    estimates accepted; the published map -> odom moves at most the slew bound per estimate after
    the start and ends near the truth; pae/filtered_pose (the camera: no mount on TF) follows the
    true camera pose."""
    from pae_ros.ros.conversions import pose_from_msg
    from pae_ros.ros.frames import rotation_angle

    node, stamps = run["node"], run["stamps"]
    counts = node.node.tracking.filter.counts
    assert counts["rejected"] == len(OUTLIERS), counts
    assert counts["initialisations"] == 1 and counts["jumps"] == 0 and counts["relocalisations"] == 0, counts
    assert counts["accepted"] == N_FRAMES - len(OUTLIERS) - 3, counts  # 3 start the track
    tfs = H.wait_until(lambda: (lambda v: v if len(v) == N_FRAMES - 2 else None)(_map_odom_tfs(run["tf"], set(stamps) | {
        s + 100 * MS for s in stamps})), 10, what="one map -> odom per frame from the start on")
    steps_t = [np.linalg.norm(b[2] - a[2]) for a, b in zip(tfs, tfs[1:])]
    steps_r = [rotation_angle(G.quat_multiply(b[3], G.invert_pose(np.zeros(3), a[3])[1])) for a, b in zip(tfs, tfs[1:])]
    assert max(steps_t) <= MAX_STEP_M + 1e-9 and max(steps_r) <= MAX_STEP_RAD + 1e-7, (max(steps_t), max(steps_r))
    assert max(steps_t) >= MAX_STEP_M - 1e-9  # the bound was active, not just never reached
    assert np.linalg.norm(tfs[-1][2] - T_MO[0]) < 0.05
    assert max(abs(tf[4] - s) for tf, s in zip(tfs, stamps[2:])) == 100 * MS  # image stamp + tolerance
    msgs = run["filtered"].msgs()
    assert len(msgs) == N_FRAMES - 2 and all(m.header.frame_id == "map" for m in msgs)
    t_last, _ = pose_from_msg(msgs[-1])
    assert np.linalg.norm(t_last - G.compose_poses(*T_MO, *_odom_camera(N_FRAMES - 1))[0]) < 0.05
    v = H.wait_diag(probe, node.status, lambda v: v.get("tracking.accepted") == str(counts["accepted"]))
    assert v["tracking.rejected"] == str(len(OUTLIERS)) and v["tracking.state"] == "tracking"
    assert v["tracking.model"] == "odometry" and float(v["tracking.last_mahalanobis"]) >= 0.0


def test_filtered_poses_equal_an_offline_replay(run):
    """(b) The filtered poses the node published equal ``TrackingFilter`` fed offline the same
    odometry and estimates, with the same settings, to 1e-6."""
    from pae_ros.ros.conversions import pose_from_msg
    from pae_ros.ros.tracking_output import tracking_params
    from pae_ros.tracking import TrackingFilter

    f = TrackingFilter(tracking_params(run["node"].node.params, True, False))
    want = []
    for k, (s, est) in enumerate(zip(run["stamps"], run["script"])):
        f.add_odometry(s / 1e9, *_odom_camera(k))
        f.add_estimate(s / 1e9, est.position, est.quaternion, est.covariance, method=est.method)
        out = f.publish()
        if out.pose_position is not None:
            want.append((out.pose_position, out.pose_quaternion, out.pose_covariance))
    msgs = run["filtered"].msgs()[:len(want)]
    assert len(want) == N_FRAMES - 2 and len(msgs) == len(want)
    for m, (t, q, cov) in zip(msgs, want):
        t_m, q_m = pose_from_msg(m)
        np.testing.assert_allclose(t_m, t, atol=1e-6)
        assert min(np.abs(q_m - q).max(), np.abs(q_m + q).max()) < 1e-6
        np.testing.assert_allclose(np.asarray(m.pose.covariance).reshape(6, 6), cov, atol=1e-6)


def test_a_late_geometric_fix_is_fused_at_its_own_stamp(run):
    """A geometric fix arriving after newer images is fused with the odometry of its own image: the
    true pose at an older stamp is accepted, the same pose given the newest stamp (the robot has
    driven on ~0.7 m since) is rejected."""
    from pae_ros.ros import conversions as cv

    node = run["node"].node
    counts = node.tracking.filter.counts
    k_old = N_FRAMES - 15
    fix = _estimate(*G.compose_poses(*T_MO, *_odom_camera(k_old)), method="geometric")
    accepted, rejected = counts["accepted"], counts["rejected"]
    for k in (k_old, N_FRAMES - 1):
        s = run["stamps"][k]
        node.output.publish_fix((cv.stamp_from_ns(s), s, CAM), fix)
    assert (counts["accepted"], counts["rejected"]) == (accepted + 1, rejected + 1)
    assert node.stats.snapshot()["counters"]["geometric_published"] == 2


def test_initialpose_moves_the_track_and_relocalize_restarts_it(run, probe):
    """(c) A PoseWithCovarianceStamped on /initialpose (here ``<ns>/initialpose``) in map sets the
    track: the next filtered pose is the given one and map -> odom jumps (counted); one in another
    frame is a counted drop. ``~/relocalize`` restarts the track (state initialising)."""
    from geometry_msgs.msg import PoseWithCovarianceStamped
    from std_srvs.srv import Trigger

    from pae_ros.ros import conversions as cv
    from pae_ros.ros.qos import INITIAL_POSE_QOS

    node = run["node"].node
    filtered = run["filtered"]
    pub = probe.publisher(f"{run['ns']}/initialpose", PoseWithCovarianceStamped, INITIAL_POSE_QOS)
    H.wait_matched(pub)
    t_new = np.array([5.0, 4.0, 0.5])
    q_new = G.quat_multiply(np.array([np.cos(0.6), 0.0, 0.0, np.sin(0.6)]), Q_OPTICAL)
    cov = np.diag([0.04, 0.04, 0.0, 0.0, 0.0, 0.01])  # as RViz sends it: no z / roll / pitch variance
    own = cv.pose_with_covariance(cv.header(cv.stamp_from_ns(123), "map"), t_new, q_new, cov)
    node.reloc._armed = True
    assert node.reloc.offer(own, t_new, True)  # the node's own /initialpose: not a pose for its filter
    assert node.tracking.set_initial_pose(own) == "own"
    wrong = cv.pose_with_covariance(cv.header(cv.stamp_from_ns(0), "elsewhere"), t_new, q_new, cov)
    pub.publish(wrong)
    H.wait_until(lambda: node.stats.snapshot()["counters"].get("tracking_initialpose_dropped.wrong_frame") == 1, 10,
                 what="the wrong-frame /initialpose counted")
    before = len(filtered.msgs())
    pub.publish(cv.pose_with_covariance(cv.header(cv.stamp_from_ns(0), "map"), t_new, q_new, cov))
    H.wait_until(lambda: len(filtered.msgs()) > before, 10, what="the filtered pose after /initialpose")
    t_f, q_f = cv.pose_from_msg(filtered.msgs()[-1])
    np.testing.assert_allclose(t_f, t_new, atol=1e-6)
    assert min(np.abs(q_f - q_new).max(), np.abs(q_f + q_new).max()) < 1e-6
    assert node.tracking.filter.counts["jumps"] == 1 and node.tracking.filter.counts.get("set_pose") == 1
    # map -> odom jumped to the set pose; the newest image's stamp was sent already, so the
    # re-publish (tf_publish_rate, off here) carries it rather than a repeated stamp
    t_mo, _ = G.compose_poses(t_new, q_new, *G.invert_pose(*_odom_camera(N_FRAMES - 1)))
    np.testing.assert_allclose(node.output.tf_out.correction[0], t_mo, atol=1e-6)
    resp = node.reloc._on_relocalize(Trigger.Request(), Trigger.Response())
    assert resp.success and node.tracking.filter.state.value == "initialising"


def test_bad_estimates_are_counted_drops_and_leave_the_track(run):
    """(d) A NaN covariance never reaches the filter (counted ``nonfinite_estimate``); a covariance
    that is not positive definite is a counted filter drop; neither moves the track."""
    from pae_ros.ros import conversions as cv

    from tf2_msgs.msg import TFMessage

    node, loc, dyn = run["node"].node, run["loc"], run["dyn"]

    rgb = np.zeros((6, 8, 3), np.uint8)
    s0 = run["stamps"][-1]
    t, q = G.compose_poses(*T_MO, *_odom_camera(N_FRAMES - 1))
    for k, cov in enumerate((np.full((6, 6), np.nan), np.zeros((6, 6))), start=1):
        s = s0 + k * 1000 * MS
        dyn.publish(TFMessage(transforms=[cv.transform_stamped(cv.stamp_from_ns(s), ODOM, CAM,
                                                               *_odom_camera(N_FRAMES - 1))]))
        H.wait_until(lambda: node.tf.buffer.lookup(ODOM, CAM, s) is not None, 10, what="odometry in the node")
        f = node.tracking.filter
        T_before = None if f.T is None else f.T.copy()
        init_before = list(f._init)
        loc.next = _estimate(t, q, cov)
        node.worker.process(cv.rgb_to_image(cv.header(cv.stamp_from_ns(s), CAM), rgb), time.monotonic())
        assert (f.T is None and T_before is None) or np.array_equal(f.T, T_before)
        assert len(f._init) == len(init_before)
    assert node.stats.snapshot()["bad"].get("nonfinite_estimate") == 1
    assert node.tracking.filter.counts.get("dropped.covariance_not_positive") == 1
    assert node.tracking.diagnostics()["tracking.dropped.covariance_not_positive"] == "1"


def test_without_odometry_the_random_walk_model_tracks_the_camera(probe):
    """tf_mode map_camera: no odometry; the filter's random-walk model starts from three consistent
    estimates and publishes the camera pose, rejecting a gross outlier; no map -> odom."""
    from geometry_msgs.msg import PoseWithCovarianceStamped

    from pae_ros.ros import conversions as cv

    ns = "/trk_rw"
    filtered = probe.collect(f"{ns}/pae/filtered_pose", PoseWithCovarianceStamped)
    loc = _ScriptLocalizer()
    node = H.InProcessNode(ns, {"tf_mode": "map_camera", "pose_frame": "camera", "pose_transient_local": False,
                                "initial_pose_topic": f"{ns}/initialpose"}, loc)
    try:
        n = node.node
        assert not n.tracking.uses_odometry
        H.wait_matched(n.tracking._pub)
        base = H.fresh_stamp()
        t0, q0 = np.array([1.0, 2.0, 0.5]), Q_OPTICAL
        offsets = [0.0, 0.01, -0.01, 0.0, 6.0, 0.01]
        for k, dx in enumerate(offsets):
            loc.next = _estimate(t0 + [dx, 0.0, 0.0], q0)
            n.worker.process(cv.rgb_to_image(cv.header(cv.stamp_from_ns(base + k * 100 * MS), CAM),
                                             np.zeros((6, 8, 3), np.uint8)), time.monotonic())
        counts = n.tracking.filter.counts
        assert counts["initialisations"] == 1 and counts["rejected"] == 1 and counts["accepted"] == 2, counts
        msgs = H.wait_until(lambda: (lambda m: m if len(m) == 4 else None)(filtered.msgs()), 10,
                            what="a filtered pose per frame from the start")
        assert np.linalg.norm(cv.pose_from_msg(msgs[-1])[0] - t0) < 0.02
        assert cv.stamp_ns(msgs[-1].header.stamp) == base + 5 * 100 * MS
        assert n.tracking.diagnostics()["tracking.model"] == "random_walk"
    finally:
        node.close()


def test_map_odom_without_a_chain_uses_the_random_walk_until_odometry_comes(probe):
    """tf_mode map_odom with no ``odom -> camera`` on TF: the random-walk model tracks (filtered
    pose, no map -> odom); once odometry appears the filter switches to it (the track restarts,
    both switches counted) and publishes map -> odom again from consistent estimates."""
    from tf2_msgs.msg import TFMessage

    from pae_ros.ros import conversions as cv

    loc = _ScriptLocalizer()
    node = H.InProcessNode("/trk_sw", {"tf_mode": "map_odom", "odom_frame": "trk_sw_odom", "tf_wait": 0.0,
                                       "tf_publish_rate": 0.0, "initial_pose_topic": "/trk_sw/initialpose",
                                       "tracking_init_min_spread_m": 0.0}, loc)
    try:
        n = node.node
        base = H.fresh_stamp()
        rgb = np.zeros((6, 8, 3), np.uint8)
        t_oc, q_oc = _odom_camera(0)
        t_mc, q_mc = G.compose_poses(*T_MO, t_oc, q_oc)

        def frame(k):
            loc.next = _estimate(t_mc, q_mc)
            n.worker.process(cv.rgb_to_image(cv.header(cv.stamp_from_ns(base + k * 100 * MS), "trk_sw_cam"), rgb),
                             time.monotonic())
        for k in range(3):
            frame(k)
        assert not n.tracking.uses_odometry and n.tracking.filter.state.value == "tracking"
        assert n.output.tf_out.correction is None
        for k in range(3, 7):  # odometry at every stamp from now on
            n.tf._on_tf(TFMessage(transforms=[cv.transform_stamped(cv.stamp_from_ns(base + k * 100 * MS),
                                                                   "trk_sw_odom", "trk_sw_cam", t_oc, q_oc)]))
            frame(k)
        assert n.tracking.uses_odometry and n.tracking.filter.counts["initialisations"] == 1
        assert n.stats.snapshot()["counters"]["tracking_model_switches"] == 2
        t_mo, _ = n.output.tf_out.correction
        np.testing.assert_allclose(t_mo, T_MO[0], atol=1e-6)
    finally:
        node.close()


def test_tracking_parameters_are_checked_and_auto_trusted_follow_the_geometric_stage():
    """``tracking_trusted_methods``: auto, or a list of known methods (anything else is one clear
    error); auto means geometric fixes only when there is a geometric stage."""
    from pae_ros.ros.params import SPECS, check_value
    from pae_ros.ros.tracking_output import tracking_params

    assert check_value("tracking_trusted_methods", "geometric, refined") is None
    msg = check_value("tracking_trusted_methods", "apr,lidar")
    assert "tracking_trusted_methods" in msg and "apr, refined, geometric" in msg
    assert check_value("tracking_trusted_methods", " , ") is not None
    assert "(0, 1)" in check_value("tracking_gate_probability", 1.0)
    assert check_value("tracking_init_count", 1) is not None and check_value("tracking_max_step_m", 0.0) is not None
    params = {name: spec.default for name, spec in SPECS.items()}
    assert tracking_params(params, True, True).trusted_methods == ("geometric",)
    assert tracking_params(params, True, False).trusted_methods == ("apr", "refined", "geometric")
    assert tracking_params(dict(params, tracking_trusted_methods="refined"), True, True).trusted_methods == ("refined",)
    assert not tracking_params(dict(params, two_d_mode=True), False, False).two_d_mode  # camera tilt is not planar
