"""The node's geometric thread: real rclpy over DDS, the real Localizer on the textured room's tiny
bundle + map (``textured_mapped``).

* every frame gets its APR/PAE pose while the geometric stage is slower than the camera (made
  slow for real: the images are 4x upscaled, so SIFT + matching + PnP take ~130 ms against a
  frame every 100 ms; no sleep, no mock); fixes come later, stamped with their own image's stamp,
  equal to the stage's fix of that very image (covariance included), TF never repeats a stamp;
  fallbacks are counted by reason and published nowhere; /diagnostics shows the stage;
* the rate bound holds (query starts >= 1 / geometric_rate_hz apart, counted over the frames);
* ``geometric:=off`` gives none; ``auto`` finds the map beside the bundle through the real start-up;
* a bad map path / a corrupt map / a bad rate: one clear error at start.
Plus units without DDS: the worker's counting and the TF output's newer_only rule.
"""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("rclpy")

from support import ros_harness as H  # noqa: E402  (isolated ROS domain before any context exists)

pytestmark = pytest.mark.timeout(300)

UPSCALE = 4  # slows the stage down for real (features on 16x the pixels)


@pytest.fixture(scope="module")
def scene(textured_mapped):
    """The Localizer the node runs (with the table descriptors the tiny bundle lacks), two test
    images whose fix is accepted (far apart, so a fix with the wrong stamp cannot pass) and one
    that falls back, at 1x and 4x, with the stage's own answer for each (offline reference)."""
    import cv2

    from pae_ros.datasets import load_rgb, read_dataset
    from pae_ros.pipeline import Localizer

    root, out, desc = textured_mapped
    loc = Localizer.from_bundle(out, device="cpu", table_descriptors=desc, threads=1)
    te = read_dataset(root / "data", "7scenes", "test")
    base = [(load_rgb(f.image_path), f.position) for f in te.frames]
    rng = np.random.default_rng(0)
    # fallback candidates: a mirrored view (SIFT is not mirror-invariant), grey, noise; the first
    # one the out-of-scene gate lets through (else the node would not offer it) is used
    base += [(img[:, ::-1].copy(), np.full(3, np.nan)) for img, _ in base[:3]]
    base += [(np.full_like(base[0][0], 128), np.full(3, np.nan)),
             (rng.integers(0, 256, base[0][0].shape, dtype=np.uint8), np.full(3, np.nan))]
    scales = {}
    for s in (1, UPSCALE):
        rows = []
        for img, pos in base:
            if s > 1:
                img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)
            prior = loc.localize(img, geometric=False)
            rows.append((img, pos, prior, loc.localize_geometric(img, prior)))
        scales[s] = rows
    n = len(te.frames)
    ok = [i for i in range(n) if all(scales[s][i][3].method == "geometric" for s in scales)]
    bad = [i for i in range(len(base)) if all(scales[s][i][3].method != "geometric" and scales[s][i][2].in_scene
                                                and "geometric_reason" in scales[s][i][3].extras for s in scales)]
    assert len(ok) >= 2 and bad, [(r[3].extras.get("geometric_reason"), r[2].in_scene) for r in scales[1]]
    a, b = ok[0], ok[-1]
    assert np.linalg.norm(te.frames[a].position - te.frames[b].position) > 0.5
    # the prior's own descriptor (what the node hands the thread) gives the same fix, with no second forward
    img, _, prior, fix = scales[1][a]
    assert prior.descriptor is not None and prior.descriptor.shape == (loc.retrieval.descriptors.shape[1],)
    again = loc.localize_geometric(img, prior, descriptor=prior.descriptor)
    np.testing.assert_allclose(again.position, fix.position)
    np.testing.assert_allclose(again.covariance, fix.covariance)
    return SimpleNamespace(loc=loc, out=out, picks=(a, b, bad[0]), rows=scales)


def _io(probe, ns: str, node: H.InProcessNode):
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from tf2_msgs.msg import TFMessage

    from pae_ros.ros.qos import TF_QOS

    cols = {"pose": probe.collect(f"{ns}/pae/pose", PoseStamped),
            "cov": probe.collect(f"{ns}/pae/pose_with_covariance", PoseWithCovarianceStamped),
            "tf": probe.collect("/tf", TFMessage, TF_QOS),
            "diag": probe.collect("/diagnostics", DiagnosticArray)}
    pub = probe.publisher(f"{ns}/cam", Image, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    H.wait_matched(pub)
    H.wait_matched(node.node.output.pub_pose)
    H.wait_matched(node.node.output.pub_pose_cov)
    return cols, pub


def _by_stamp(collector, stamps) -> dict[int, list]:
    out: dict[int, list] = {s: [] for s in stamps}
    for m in collector.msgs():
        k = H.stamp_key(m.header.stamp)
        if k in out:
            out[k].append(m)
    return out


def _warm(pub, cols, rgb, frame_id):
    """Publish until a pose comes back (every DDS hop discovered)."""
    end = time.monotonic() + 40
    while time.monotonic() < end:
        s = H.fresh_stamp()
        pub.publish(H.image_msg(rgb, s, frame_id))
        try:
            H.wait_until(lambda: _by_stamp(cols["pose"], [s])[s], 3.0)
            return
        except AssertionError:
            continue
    raise AssertionError("the node never answered")


def _diag_msgs(cols, status):
    out = []
    for m in cols["diag"].msgs():
        for st in m.status:
            if st.name == status:
                out.append({kv.key: kv.value for kv in st.values})
    return out


def _stream(pub, frames, hz, frame_id):
    """Publish ``frames`` [(rgb, stamp)] at ``hz``; returns (t_first, t_last) monotonic."""
    t0 = time.monotonic()
    for i, (rgb, s) in enumerate(frames):
        delay = t0 + i / hz - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        pub.publish(H.image_msg(rgb, s, frame_id))
    return t0, time.monotonic()


def test_apr_pose_every_frame_fix_later_with_its_own_stamp(scene, probe):
    from pae_ros.ros.conversions import pose_from_msg

    ns, frame_id = "/geo_slow", "geo_cam"
    node = H.InProcessNode(ns, {"geometric_rate_hz": 0.0, "tf_mode": "map_camera", "pose_frame": "camera",
                              "tf_publish_rate": 0.0}, localizer=scene.loc)
    try:
        geo = node.node.geo
        assert geo is not None and node.node.info["geometric"].endswith(".map")
        cols, pub = _io(probe, ns, node)
        rows = scene.rows[UPSCALE]
        _warm(pub, cols, rows[scene.picks[0]][0], frame_id)
        H.wait_until(geo.idle, 30, what="geometric thread idle")
        g0, n0 = geo.snapshot(), node.node.stats.snapshot()
        c0 = dict(n0["counters"])
        n = 24
        which = [scene.picks[i % 3] for i in range(n)]          # accepted, accepted, fallback, ...
        stamps = [H.fresh_stamp() for _ in range(n)]
        t_first, t_last = _stream(pub, [(rows[w][0], s) for w, s in zip(which, stamps)], 10.0, frame_id)

        def settled():
            st = node.node.stats.snapshot()
            got = sum(1 for v in _by_stamp(cols["pose"], stamps).values() if v)
            done = got + st["frames_dropped"] - n0["frames_dropped"] >= n
            return done and geo.idle() and (st["counters"].get("geometric_published", 0) -
                                            c0.get("geometric_published", 0)) == geo.fixes - g0["fixes"]
        H.wait_until(settled, 60, what="every frame answered and the geometric thread drained")
        time.sleep(0.5)  # the last messages in flight
        g1, n1 = geo.snapshot(), node.node.stats.snapshot()
        poses, covs = _by_stamp(cols["pose"], stamps), _by_stamp(cols["cov"], stamps)
        dropped = n1["frames_dropped"] - n0["frames_dropped"]
        answered = [s for s in stamps if poses[s]]
        # every frame the inference slot did not replace has its APR/PAE pose (first message of its stamp)
        assert len(answered) + dropped == n and dropped <= n // 4, (len(answered), dropped)
        queries = g1["queries"] - g0["queries"]
        fixes, fallbacks = g1["fixes"] - g0["fixes"], g1["fallbacks"] - g0["fallbacks"]
        # the stage is slower than the camera: fewer queries than frames, older frames dropped and counted
        assert queries < len(answered) and g1["dropped"] > g0["dropped"]
        assert g1["offered"] - g0["offered"] == queries + (g1["dropped"] - g0["dropped"])
        assert queries == fixes + fallbacks and fixes >= 2 and not g1["errors"]
        fix_stamps = []
        for w, s in zip(which, stamps):
            ref_prior, ref_fix = rows[w][2], rows[w][3]
            if not poses[s]:
                continue
            first = pose_from_msg(poses[s][0])[0]
            np.testing.assert_allclose(first, ref_prior.position, atol=1e-5)  # the APR/PAE pose first
            if ref_fix.method != "geometric":
                assert len(poses[s]) == 1 and len(covs[s]) == 1, "a fallback publishes nothing extra"
                continue
            assert len(poses[s]) in (1, 2) and len(covs[s]) == len(poses[s])
            if len(poses[s]) == 2:  # the fix of this very image, with its own stamp and covariance
                fix_stamps.append(s)
                np.testing.assert_allclose(pose_from_msg(poses[s][1])[0], ref_fix.position, atol=1e-5)
                assert np.linalg.norm(ref_fix.position - rows[w][1]) < 0.1
                cov = np.asarray(covs[s][1].pose.covariance).reshape(6, 6)
                np.testing.assert_allclose(cov, ref_fix.covariance, rtol=1e-6, atol=1e-12)
                assert np.trace(cov[:3, :3]) < np.trace(np.asarray(covs[s][0].pose.covariance).reshape(6, 6)[:3, :3])
        assert len(fix_stamps) == fixes
        # TF (map_camera): one map -> camera per stamp; a fix never repeats its image's stamp
        tfs = [H.stamp_key(t.header.stamp) for m in cols["tf"].msgs() for t in m.transforms
               if t.child_frame_id == frame_id and H.stamp_key(t.header.stamp) in set(stamps)]
        assert len(tfs) == len(set(tfs)) == len(answered)
        assert n1["counters"].get("geometric_tf_refused", 0) - c0.get("geometric_tf_refused", 0) == fixes
        # /diagnostics: the method, the counters, seconds per query, the CPU share of one core
        H.wait_until(lambda: any(int(d.get("geometric.queries", -1)) >= g1["queries"]
                                 for d in _diag_msgs(cols, node.status)), 10, what="diagnostics")
        diags = _diag_msgs(cols, node.status)
        last = diags[-1]
        assert last["geometric"].endswith(".map") and float(last["geometric.rate_limit_hz"]) == 0.0
        assert any(d.get("geometric.last_method") == "geometric" for d in diags)
        reason = rows[scene.picks[2]][3].extras["geometric_reason"]
        if fallbacks:
            assert int(last[f"geometric.fallback.{reason}"]) >= fallbacks
        assert 0.02 < float(last["geometric.query_p50_s"]) < 5.0
        shares = [float(d["geometric.cpu_share"]) for d in diags if "geometric.cpu_share" in d]
        assert 0.05 < max(shares) <= 1.3, shares  # one OpenCV thread: at most about one core
    finally:
        node.close()


def test_rate_bound_holds(scene, probe):
    from pae_ros.ros.conversions import pose_from_msg

    ns, frame_id, rate = "/geo_rate", "geo_rate_cam", 2.0
    node = H.InProcessNode(ns, {"geometric_rate_hz": rate, "tf_mode": "none", "pose_frame": "camera"},
                         localizer=scene.loc)
    try:
        geo = node.node.geo
        cols, pub = _io(probe, ns, node)
        rows = scene.rows[1]  # small images: ~50 ms per query, ~10 Hz without the bound
        a, b, _ = scene.picks
        _warm(pub, cols, rows[a][0], frame_id)
        H.wait_until(geo.idle, 30, what="geometric thread idle")
        time.sleep(1.0 / rate)  # the next query may start right away
        g0 = geo.snapshot()
        n = 30
        which = [(a, b)[i % 2] for i in range(n)]
        stamps = [H.fresh_stamp() for _ in range(n)]
        t_first, t_last = _stream(pub, [(rows[w][0], s) for w, s in zip(which, stamps)], 10.0, frame_id)
        H.wait_until(lambda: geo.idle() and geo.offered - g0["offered"] >= n - 3, 30, what="drained")
        time.sleep(0.5)
        g1 = geo.snapshot()
        queries, fixes = g1["queries"] - g0["queries"], g1["fixes"] - g0["fixes"]
        span = t_last - t_first
        # starts >= 1/rate apart: at most rate x span + 1 queries (the last frame may wait one period)
        assert 2 <= fixes <= queries <= int(rate * span) + 2, (fixes, queries, span)
        assert g1["dropped"] - g0["dropped"] >= n - queries - 3
        poses = _by_stamp(cols["pose"], stamps)
        second = {id(v[1]) for v in poses.values() if len(v) == 2}   # the fix: a stamp's second pose
        fix_times = sorted(t for t, m in cols["pose"].timed() if id(m) in second)
        assert len(fix_times) == fixes
        starts = [t for t in geo.query_starts if t >= t_first]
        assert len(starts) == queries and np.diff(starts).min() >= 1.0 / rate - 1e-6, np.diff(starts)
        # fixes arrive about 1/rate apart (minus the jitter of the query time under load)
        assert np.diff(fix_times).min() > 0.25 / rate, np.diff(fix_times)
        # APR/PAE poses still for (nearly) every frame, at the camera's rate
        assert sum(1 for s in stamps if poses[s]) >= n - 3
        for w, s in zip(which, stamps):
            if len(poses[s]) == 2:
                np.testing.assert_allclose(pose_from_msg(poses[s][1])[0], rows[w][3].position, atol=1e-5)
    finally:
        node.close()


def test_geometric_off_gives_no_fixes_and_auto_finds_the_map(scene, probe):
    ns, frame_id = "/geo_off", "geo_off_cam"
    from pae_ros.ros.params import check_command_line

    # `-p geometric:=off` reaches the node as the YAML boolean false: accepted, read as off
    check_command_line(["localizer", "--ros-args", "-p", "geometric:=off"], "/pae_localizer")
    node = H.InProcessNode(ns, {"geometric": False, "tf_mode": "none", "pose_frame": "camera"}, bundle=scene.out)
    try:  # the real start-up path: the Localizer is built with geometric=off
        assert node.node.params["geometric"] == "off" and node.node.geo is None and node.node.localizer.geometric is None
        assert node.node.info["geometric"] == "off"
        cols, pub = _io(probe, ns, node)
        rows = scene.rows[1]
        _warm(pub, cols, rows[scene.picks[0]][0], frame_id)
        stamps = [H.fresh_stamp() for _ in range(6)]
        _stream(pub, [(rows[scene.picks[i % 2]][0], s) for i, s in enumerate(stamps)], 10.0, frame_id)
        H.wait_until(lambda: sum(1 for v in _by_stamp(cols["pose"], stamps).values() if v) +
                     node.node.stats.snapshot()["frames_dropped"] >= 6, 20, what="poses")
        time.sleep(1.0)
        assert all(len(v) <= 1 for v in _by_stamp(cols["pose"], stamps).values())
        H.wait_until(lambda: _diag_msgs(cols, node.status), 10, what="diagnostics")
        d = _diag_msgs(cols, node.status)[-1]
        assert d["geometric"] == "off" and not any(k.startswith("geometric.") for k in d)
    finally:
        node.close()
    auto = H.InProcessNode("/geo_auto", {"tf_mode": "none"}, bundle=scene.out)
    try:  # default geometric:=auto: the map beside the bundle, through the real start-up
        assert auto.node.geo is not None and auto.node.info["geometric"] == str(scene.out) + ".map"
        worker = auto.node.geo
        assert worker.running
    finally:
        auto.close()
    assert not worker.running  # joined on close


def test_camera_info_intrinsics_reach_the_geometric_stage(scene):
    """camera_info K (a camera with a 3x longer lens than the map's) is handed to the stage with each
    frame, and changes its result as the same intrinsics do offline; a corrected camera_info is
    used from the next frame on; the map's own intrinsics before any camera_info."""
    from sensor_msgs.msg import CameraInfo

    from pae_ros.datasets.types import CameraIntrinsics

    img, _, prior, fix = scene.rows[1][scene.picks[0]]
    assert fix.method == "geometric"
    h, w = img.shape[:2]
    mine = scene.loc.geometric.map_camera(0)
    long_lens = CameraIntrinsics(w, h, 3 * mine.fx * w / mine.width, 3 * mine.fy * h / mine.height, w / 2, h / 2)
    offline = scene.loc.localize_geometric(img, prior, descriptor=prior.descriptor, intrinsics=long_lens)
    assert offline.method != "geometric" or np.linalg.norm(offline.position - fix.position) > 0.05
    rec = H.RecordingLocalizer(scene.loc)
    node = H.InProcessNode("/geo_intr", {"tf_mode": "none", "pose_frame": "camera", "geometric_rate_hz": 0.0},
                         localizer=rec)
    try:
        n = node.node
        msg = H.image_msg(img, H.fresh_stamp(), "geo_cam")

        def query():
            before = n.geo.queries
            n.worker.process(msg, 0.0)
            H.wait_until(lambda: n.geo.idle() and n.geo.queries == before + 1, 30, what="geometric query")
            return n.geo.snapshot()

        assert query()["last_method"] == "geometric" and rec.intrinsics[-1] is None  # the map's
        k = [long_lens.fx, 0, long_lens.cx, 0, long_lens.fy, long_lens.cy, 0, 0, 1]
        n._on_camera_info(CameraInfo(width=w, height=h, k=k))
        snap = query()
        assert rec.intrinsics[-1] == long_lens
        assert (snap["last_method"], snap["last_reason"]) == (offline.method, offline.extras["geometric_reason"])
        n._on_camera_info(CameraInfo(width=mine.width, height=mine.height,
                                     k=[mine.fx, 0, mine.cx, 0, mine.fy, mine.cy, 0, 0, 1]))
        assert query()["last_method"] == "geometric" and rec.intrinsics[-1] == mine
        n._on_camera_info(CameraInfo(width=w, height=h, k=[0.0] * 9))  # invalid: the last valid one stays
        assert "no valid intrinsics" in n.camera.warning and n.camera.intrinsics == mine
    finally:
        node.close()


def test_unusable_image_fallback_is_counted_by_name(scene):
    """The stage refusing an image ("unusable image: ...", a ValueError inside the stage) is a
    fallback counted as ``geometric.fallback.unusable_image``, its detail in ``last_reason``."""
    from pae_ros.ros.geometric_worker import GeometricWorker

    _, _, prior, _ = scene.rows[1][scene.picks[0]]
    loc = scene.loc
    w = GeometricWorker(lambda rgb, p, intr: loc.localize_geometric(rgb, p, descriptor=p.descriptor, intrinsics=intr),
                        lambda ctx, est: None, rate_hz=0.0, threads=1)
    w.start()
    try:
        w.offer(np.zeros((4, 4, 3), np.uint8), prior, None)  # smaller than any image the stage takes
        H.wait_until(lambda: w.idle() and w.queries == 1, 30, what="geometric query")
        d = w.diagnostics()
        assert d["geometric.fallback.unusable_image"] == "1" and d["geometric.fallbacks"] == "1", d
        assert d["geometric.last_reason"].startswith("unusable image: ")
        assert not any(k.startswith("geometric.errors.") for k in d), d
    finally:
        w.stop(5)


def test_bad_map_path_corrupt_map_or_bad_rate_one_clear_error(scene, tmp_path):
    from pae_ros.ros.localizer_node import ConfigError, StartupError

    # the executable: a missing map path -> exit 1, one error line naming the parameter
    missing = tmp_path / "nope.map"
    proc = H.NodeProcess(H.node_command(scene.out, {"device": "cpu", "geometric": str(missing)}))
    try:
        assert proc.wait(120) == 1, proc.text()
        errors = [ln for ln in proc.text().splitlines() if "cannot start" in ln]
        assert len(errors) == 1 and "parameter 'geometric'" in errors[0] and str(missing) in errors[0], proc.text()
    finally:
        proc.stop()
    # a corrupt map: refused at start with the same parameter named
    bad = tmp_path / "corrupt.map"
    bad.write_bytes(b"not a map")
    with pytest.raises(StartupError, match="parameter 'geometric'"):
        H.InProcessNode("/geo_bad", {"geometric": str(bad)}, bundle=scene.out)
    for name, value in (("geometric_rate_hz", -1.0), ("geometric_threads", -2), ("geometric", "")):
        with pytest.raises(ConfigError, match=name):
            H.InProcessNode("/geo_badp", {name: value}, bundle=scene.out)


# --------------------------------------------------------------------------- units (no DDS)

def _estimate(method: str, reason: str):
    from pae_ros.pipeline import Estimate

    return Estimate(position=np.zeros(3), quaternion=np.array([1.0, 0, 0, 0]), apr_position=np.zeros(3),
                    apr_quaternion=np.array([1.0, 0, 0, 0]), confidence=0.9, sigma_position_m=0.1,
                    sigma_orientation_rad=0.01, covariance=np.eye(6) * 0.01, scene="room", refined=True,
                    method=method, extras={"geometric_reason": reason})


def test_worker_counts_drops_fallbacks_and_errors():
    from pae_ros.ros.geometric_worker import GeometricWorker

    gate = threading.Event()
    published = []

    def stage(rgb, prior, intrinsics):
        gate.wait(5)
        if prior == "boom":
            raise RuntimeError("boom")
        ok = prior % 2 == 0
        return _estimate("geometric" if ok else "refined", "accepted" if ok else "too_few_inliers")

    errors = []
    w = GeometricWorker(stage, lambda ctx, est: published.append(ctx), rate_hz=0.0, threads=1,
                        on_error=lambda kind, text: errors.append(kind))
    w.start()
    w.offer(None, 0, "c0")
    H.wait_until(lambda: w._busy, 5)       # 0 is being processed (held at the gate)
    for i in range(1, 5):
        w.offer(None, i, f"c{i}")          # 1, 2, 3 are replaced by 4 while the stage is busy
    gate.set()
    H.wait_until(w.idle, 5)
    w.offer(None, "boom", "cb")
    H.wait_until(lambda: w.idle() and w.queries == 3, 5)
    snap = w.snapshot()
    assert (snap["offered"], snap["dropped"], snap["queries"], snap["fixes"]) == (6, 3, 3, 2)
    assert published == ["c0", "c4"] and errors == ["stage"] and snap["errors"] == {"stage": 1}
    assert snap["fallbacks"] == 0 and snap["opencv_threads"] == 1
    d = w.diagnostics()
    assert d["geometric.fixes"] == "2" and d["geometric.errors.stage"] == "1"
    assert w.stop(5) and not w.running
    assert w.offer(None, 7, "late") is False  # stopped: nothing queued
    with pytest.raises(ValueError, match="rate_hz"):
        GeometricWorker(stage, print, rate_hz=-1.0)


def test_tf_output_never_lets_an_older_fix_over_a_newer_image():
    from pae_ros.ros.conversions import transform_from_msg
    from pae_ros.ros.tf_publisher import TfOutput

    class Pub:
        def __init__(self):
            self.sent = []

        def publish(self, msg):
            self.sent += [transform_from_msg(t) for t in msg.transforms]

    now = [50_000_000_000]
    clock = SimpleNamespace(now=lambda: SimpleNamespace(nanoseconds=now[0]))
    params = {"tf_mode": "map_odom", "map_frame": "map", "odom_frame": "odom", "transform_tolerance": 0.1,
              "tf_publish_rate": 10.0, "two_d_mode": False}
    out = TfOutput(SimpleNamespace(get_clock=lambda: clock), params)
    out._pub = pub = Pub()
    q = np.array([1.0, 0, 0, 0])
    S = 1_000_000_000
    assert out.set_correction(10 * S, np.array([1.0, 0, 0]), q)            # APR/PAE, image 10 s
    assert out.set_correction(11 * S, np.array([2.0, 0, 0]), q)            # APR/PAE, image 11 s
    assert not out.set_correction(10 * S, np.array([9.0, 0, 0]), q, newer_only=True)  # fix of image 10: refused
    assert np.allclose(out.correction[0], [2, 0, 0]) and len(pub.sent) == 2
    assert out.set_correction(11 * S, np.array([2.5, 0, 0]), q, newer_only=True)      # fix of image 11: held,
    assert len(pub.sent) == 2 and np.allclose(out.correction[0], [2.5, 0, 0])        # not re-sent at 11.1 s
    out._republish()                                                       # ...the re-publish carries it
    assert pub.sent[-1][4] == now[0] + S // 10 and np.allclose(pub.sent[-1][2], [2.5, 0, 0])
    assert out.set_correction(12 * S, np.array([3.0, 0, 0]), q, newer_only=True)      # newer image: sent
    assert pub.sent[-1][4] == 12 * S + S // 10
    cam = TfOutput(None, dict(params, tf_mode="map_camera"))
    cam._pub = pub2 = Pub()
    assert cam.camera(5 * S, "cam", np.zeros(3), q)
    assert not cam.camera(5 * S, "cam", np.ones(3), q, newer_only=True)   # its image's stamp went first
    assert cam.camera(6 * S, "cam", np.ones(3), q, newer_only=True) and len(pub2.sent) == 2
