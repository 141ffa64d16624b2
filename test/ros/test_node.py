"""The localizer node over real DDS, in separate processes, in an isolated ROS domain.

Two node processes serve most tests (a node start costs seconds here):

* ``launched``: started the way launch/localize.launch.py starts it (``--params-file
  config/localize.yaml -p bundle:=... -r /camera/image_raw:=/test/cam``; tf_mode map_odom and
  pose_frame auto from the YAML), shared with test_launch.py;
* ``gated``: in namespace ``/gate``, ``compressed:=true``, ``confidence_gate:=1.0``,
  ``tf_mode:=map->camera`` (the old spelling, still accepted), image_qos auto facing a best-effort
  publisher.

The real ``ros2 launch`` / ``ros2 lifecycle`` / ``ros2 service call`` run in test_launch.py; the
TF timing with a moving robot, the base-frame maths and the services in-process in
test_node_units.py.

Reference poses come from ``Localizer.localize`` in this process on the same images (CPU).
"""
from __future__ import annotations

import signal
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")

from support import ros_harness as H  # noqa: E402  (sets ROS_DOMAIN_ID before any rclpy context)

from pae_ros import geometry as G  # noqa: E402

# generous: the first test also pays for training the session's tiny bundle
pytestmark = pytest.mark.timeout(300)

STATUS = "/pae_localizer: localization"
GATE_STATUS = "/gate/pae_localizer: localization"


# --------------------------------------------------------------------------- fixtures / helpers

@pytest.fixture(scope="module")
def images(tiny_dataset) -> list[np.ndarray]:
    from pae_ros.datasets import load_rgb, read_dataset

    split = read_dataset(tiny_dataset, "7scenes", "test")
    step = max(1, len(split.frames) // 6)
    return [load_rgb(f.image_path) for f in split.frames[::step][:6]]


@pytest.fixture(scope="module")
def reference(tiny_bundle):
    """The pipeline in this process, set up as the node sets it up (refine on, bundle k/steps)."""
    from pae_ros.pipeline import Localizer

    return Localizer.from_bundle(tiny_bundle, device="cpu", refine=True)


@pytest.fixture(scope="module")
def cam_pub(launched, probe):
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    pub = probe.publisher(H.LAUNCHED_IMAGE_TOPIC, _image_type(),
                          QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    H.wait_matched(pub)
    return pub


def _image_type():
    from sensor_msgs.msg import Image

    return Image


def _poses(probe, topic_key="pose", ns=""):
    return H.add_output_collectors(probe, ns)[topic_key]


def _by_stamp(collector, stamps: set[int]) -> dict[int, list]:
    out: dict[int, list] = {}
    for m in collector.msgs():
        k = H.stamp_key(m.header.stamp)
        if k in stamps:
            out.setdefault(k, []).append(m)
    return out


def _wait_pose(probe, stamp: int, ns: str = "", timeout: float = 20.0):
    col = _poses(probe, "pose", ns)
    return H.wait_until(lambda: next((m for m in col.msgs() if H.stamp_key(m.header.stamp) == stamp), None),
                        timeout, what=f"pose stamped {stamp}")


def _flowing(probe, pub, rgb, frame_id: str, ns: str = "", make=None) -> None:
    """Publish until one pose comes back (discovery of every hop done)."""
    end = time.monotonic() + 40
    while time.monotonic() < end:
        s = H.fresh_stamp()
        pub.publish(make(rgb, s) if make else H.image_msg(rgb, s, frame_id))
        try:
            _wait_pose(probe, s, ns, timeout=3.0)
            return
        except AssertionError:
            continue
    raise AssertionError("the node never answered")


def _assert_pose_close(msg, position, quaternion, atol):
    from pae_ros.ros.conversions import pose_from_msg

    p, q = pose_from_msg(msg)
    np.testing.assert_allclose(p, position, atol=atol)
    q_ref = np.asarray(quaternion, float)
    assert min(np.abs(q - q_ref).max(), np.abs(q + q_ref).max()) < atol, (q, q_ref)


# --------------------------------------------------------------------------- (a) one pose per image

def test_one_pose_per_image_equal_to_the_pipeline(launched, probe, cam_pub, images, reference):
    """Slow stream: exactly one pose / pose_with_covariance / apr_pose per image, stamped like the
    image, frame map, equal to Localizer.localize on the same image within 1e-4; raw encodings
    rgb8, bgr8 (padded rows), rgba8 and bgra8 all decode to the same pixels."""
    _flowing(probe, cam_pub, images[0], "cam_a")
    encodings = [("rgb8", 0), ("bgr8", 4), ("rgba8", 0), ("bgra8", 2), ("rgb8", 3)]
    stamps = []
    for i, (enc, pad) in enumerate(encodings):
        s = H.fresh_stamp()
        stamps.append(s)
        cam_pub.publish(H.image_msg(images[i % len(images)], s, "cam_a", enc, pad))
        _wait_pose(probe, s)
    time.sleep(0.5)  # a duplicate would arrive by now
    outs = {k: _by_stamp(_poses(probe, k), set(stamps)) for k in ("pose", "pose_cov", "apr")}
    for i, s in enumerate(stamps):
        est = reference.localize(images[i % len(images)])
        for k in outs:
            assert len(outs[k].get(s, [])) == 1, f"{k}: {len(outs[k].get(s, []))} messages for stamp {s}"
            assert outs[k][s][0].header.frame_id == "map"
        _assert_pose_close(outs["pose"][s][0], est.position, est.quaternion, 1e-4)
        _assert_pose_close(outs["pose_cov"][s][0], est.position, est.quaternion, 1e-4)
        _assert_pose_close(outs["apr"][s][0], est.apr_position, est.apr_quaternion, 1e-4)
        cov = np.asarray(outs["pose_cov"][s][0].pose.covariance).reshape(6, 6)
        np.testing.assert_allclose(cov, est.covariance, rtol=1e-4, atol=1e-9)


# --------------------------------------------------------------------------- (b) fast stream

def test_fast_stream_keeps_only_the_latest_frame(launched, probe, cam_pub, images):
    """A burst far faster than inference (150 frames back to back, ~1 kHz; the tiny model runs
    at ~100 Hz here): old frames are dropped and counted, the newest frame is localized right
    after the burst (no backlog), latency stays bounded."""
    import cv2

    small = [cv2.resize(im, (80, 60)) for im in images]
    _flowing(probe, cam_pub, small[0], "cam_b")
    before = H.wait_diag(probe, STATUS, lambda v: True)
    # what backend auto picked on the CPU, and why, is in /diagnostics
    assert before["backend"] == "onnx-cpu" and before["backend_reason"].startswith("onnx-cpu fp32: first available")
    n = 150
    stamps = [H.fresh_stamp() for _ in range(n)]
    msgs = [H.image_msg(small[i % len(small)], s, "cam_b") for i, s in enumerate(stamps)]
    t0 = time.monotonic()
    for m in msgs:
        cam_pub.publish(m)
    t_last = time.monotonic()
    _wait_pose(probe, stamps[-1], timeout=10.0)
    arrivals = [(t, H.stamp_key(m.header.stamp)) for t, m in _poses(probe).timed()
                if H.stamp_key(m.header.stamp) in set(stamps)]
    t_final = max(t for t, s in arrivals if s == stamps[-1])
    after = H.wait_diag(probe, STATUS, lambda v: int(v["frames_dropped"]) > int(before["frames_dropped"]), 5.0)
    localized = [s for _, s in arrivals]
    assert len(localized) == len(set(localized)), "a frame was localized twice"
    assert localized == sorted(localized), "frames were localized out of order"
    assert len(localized) < n, f"{len(localized)} of {n} frames localized: nothing was dropped"
    dropped = int(after["frames_dropped"]) - int(before["frames_dropped"])
    assert dropped > 0
    # no queue: the newest frame comes out within a few inference times of the burst's end
    assert t_final - t_last < 3.0, f"newest frame localized {t_final - t_last:.2f} s after the burst"
    lat = float(H.wait_diag(probe, STATUS, lambda v: int(v["frames_localized"]) >= int(before["frames_localized"])
                            + len(localized))["latency_p95_ms"])
    assert lat < 2000.0, f"p95 latency {lat} ms"
    print(f"burst {n} frames in {t_last - t0:.2f} s: {len(localized)} localized, {dropped} dropped in the slot, "
          f"newest out {1000 * (t_final - t_last):.0f} ms after the burst, p95 latency {lat:.0f} ms")


# --------------------------------------------------------------------------- (c) fuzz

def _malformed_raw(rgb) -> list[tuple[str, object]]:
    """(expected reason, Image) for 240 malformed messages."""
    from sensor_msgs.msg import Image

    good = H.image_msg(rgb, 0, "cam_c")
    h, w, step, data = good.height, good.width, good.step, bytes(good.data)
    kinds = [
        ("bad_step", dict(height=h, width=w, encoding="rgb8", step=w * 3 - 1, data=data[: (w * 3 - 1) * h])),
        ("size_mismatch", dict(height=h, width=w, encoding="rgb8", step=step, data=data[:-7])),
        ("unknown_encoding", dict(height=h, width=w, encoding="nv21", step=step, data=data)),
        ("empty", dict(height=0, width=w, encoding="rgb8", step=step, data=b"")),
        ("empty", dict(height=h, width=w, encoding="rgb8", step=step, data=b"")),
        ("too_large", dict(height=200000, width=100000, encoding="rgb8", step=300000, data=data[:64])),
    ]
    out = []
    for i in range(40):
        for reason, f in kinds:
            msg = Image(**f)
            msg.header.stamp.sec = 7 + i
            msg.header.frame_id = "cam_c"
            out.append((reason, msg))
    return out


def test_fuzzed_raw_images_are_counted_and_survived(launched, probe, cam_pub, images):
    """240 malformed Image messages (bad step, size mismatch, unknown encoding, zero size, no data,
    huge claimed size): the node survives, counts each by reason in /diagnostics, and still
    localizes a good frame afterwards."""
    _flowing(probe, cam_pub, images[0], "cam_c")
    before = H.wait_diag(probe, STATUS, lambda v: True)
    bad = _malformed_raw(images[0])
    for _, msg in bad:
        cam_pub.publish(msg)
        time.sleep(0.003)
    s = H.fresh_stamp()
    cam_pub.publish(H.image_msg(images[1], s, "cam_c"))
    _wait_pose(probe, s, timeout=20.0)
    expected: dict[str, int] = {}
    for reason, _ in bad:
        expected[reason] = expected.get(reason, 0) + 1

    def delta(v, r):
        return int(v.get(f"bad_input.{r}", 0)) - int(before.get(f"bad_input.{r}", 0))

    after = H.wait_diag(probe, STATUS, lambda v: int(v["bad_inputs"]) - int(before["bad_inputs"]) >= len(bad), 10.0)
    assert {r: delta(after, r) for r in expected} == expected
    assert int(after["bad_inputs"]) - int(before["bad_inputs"]) == len(bad)
    assert launched.alive()
    assert "bad image dropped" in launched.text()  # logged (throttled)
    assert launched.text().count("bad image dropped") < 40, "warnings are not throttled"


# --------------------------------------------------------------------------- (f) TF, REP 105

def test_map_to_odom_composes_with_odometry(launched, probe, cam_pub, images):
    """tf_mode map_odom: odom -> base_link on /tf_static, base_link -> camera_optical on /tf moving
    (samples 50 ms before and after the image stamp, delivered newest first). The published
    map -> odom (stamped image stamp + transform_tolerance, 0.1 s) composed with odom -> camera
    **interpolated at the image stamp** reproduces the estimated camera pose within 1e-6; the
    correction is then re-published between images (tf_publish_rate) with newer stamps."""
    from tf2_msgs.msg import TFMessage

    from pae_ros.ros.conversions import stamp_from_ns, transform_from_msg, transform_stamped
    from pae_ros.ros.qos import TF_QOS, TF_STATIC_PUB_QOS

    rng = np.random.default_rng(5)
    t_ob, q_ob = np.array([1.5, -0.7, 0.1]), G.canonical_quat(rng.normal(size=4))
    t_bc, q_bc = np.array([0.2, 0.05, 0.9]), G.canonical_quat(rng.normal(size=4))
    d = np.array([0.1, -0.2, 0.05])  # the camera moves 2 * d in 100 ms
    static = probe.publisher("/tf_static", TFMessage, TF_STATIC_PUB_QOS)
    dyn = probe.publisher("/tf", TFMessage, TF_QOS)
    static.publish(TFMessage(transforms=[transform_stamped(stamp_from_ns(1), "odom", "base_link", t_ob, q_ob)]))
    H.wait_matched(static)
    H.wait_matched(dyn)
    s = time.time_ns() - 50_000_000  # a real stamp (re-published ones are now + tolerance on the node clock)
    for ds, dt in ((50_000_000, d), (-50_000_000, -d)):  # out of order: the newer sample first
        dyn.publish(TFMessage(transforms=[transform_stamped(stamp_from_ns(s + ds), "base_link",
                                                            "camera_optical", t_bc + dt, q_bc)]))
    time.sleep(0.3)
    tf_col = _poses(probe, "tf")
    cam_pub.publish(H.image_msg(images[2], s, "camera_optical"))
    pose = _wait_pose(probe, s)
    tol = 100_000_000

    def map_odom(pred):
        return [t for m in tf_col.msgs() for t in m.transforms
                if t.header.frame_id == "map" and t.child_frame_id == "odom" and pred(H.stamp_key(t.header.stamp))]

    t_mo_msg = H.wait_until(lambda: (map_odom(lambda k: k == s + tol) or [None])[0], 10.0,
                            what="map -> odom on /tf stamped image + transform_tolerance")
    _, _, t_mo, q_mo, _ = transform_from_msg(t_mo_msg)
    t_oc, q_oc = G.compose_poses(t_ob, q_ob, t_bc, q_bc)  # interpolated at s: the midpoint
    t_mc, q_mc = G.compose_poses(t_mo, q_mo, t_oc, q_oc)
    # pae/pose is the base_link pose (pose_frame auto, TF has base_link -> camera_optical)
    t_cam_base = G.invert_pose(t_bc, q_bc)
    t_mb, q_mb = G.compose_poses(t_mc, q_mc, *t_cam_base)
    _assert_pose_close(pose, t_mb, q_mb, 1e-6)
    assert pose.header.frame_id == "map"
    # re-published with the same correction and newer stamps while no image comes
    later = H.wait_until(lambda: map_odom(lambda k: k > s + tol + 1), 5.0, what="re-published map -> odom")
    np.testing.assert_allclose(transform_from_msg(later[-1])[2], t_mo, atol=1e-12)
    # and no map -> camera TF competes with the odometry
    assert not any(t.child_frame_id == "camera_optical" and t.header.frame_id == "map"
                   for m in tf_col.msgs() for t in m.transforms)


# --------------------------------------------------------------------------- the gated, compressed node

@pytest.fixture(scope="module")
def gated(tiny_bundle, probe):
    H.add_output_collectors(probe, "/gate")
    node = H.NodeProcess(H.node_command(
        tiny_bundle, {"device": "cpu", "compressed": True, "confidence_gate": 1.0, "tf_mode": "map->camera",
                      "image_topic": "/gate/cam", "diagnostics_period": 0.5, "publish_reconstruction": True},
        [("__ns", "/gate")]))
    node.wait_for_log("ready", 120)
    yield node
    node.stop(signal.SIGTERM)


def _jpeg_msg(rgb, stamp_ns, frame_id="gate_cam", quality=95):
    from sensor_msgs.msg import CompressedImage

    from pae_ros.image_codec import encode_compressed
    from pae_ros.ros.conversions import header, stamp_from_ns

    fmt, data = encode_compressed(rgb, "jpeg", quality)
    return CompressedImage(header=header(stamp_from_ns(stamp_ns), frame_id), format=fmt, data=data)


@pytest.fixture(scope="module")
def gate_pub(gated, probe):
    """A best-effort CompressedImage publisher created after the node is up: image_qos auto must
    switch the node's subscription to best effort."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage

    pub = probe.publisher("/gate/cam/compressed", CompressedImage, qos_profile_sensor_data)
    gated.wait_for_log("/gate/cam/compressed: best_effort", 15)
    H.wait_matched(pub)
    return pub


def test_below_confidence_gate_pose_without_tf(gated, gate_pub, probe, images, reference):
    """confidence_gate 1.0: the pose (from a JPEG on <image_topic>/compressed, in the node's
    namespace) is still published and equals the pipeline's, but no TF; counted in diagnostics.
    publish_reconstruction: the decoder's image at the pose comes out on pae/reconstruction."""
    from sensor_msgs.msg import Image

    from pae_ros.image_codec import decode_compressed

    recon = probe.collect("/gate/pae/reconstruction", Image)

    _flowing(probe, gate_pub, images[3], "gate_cam", "/gate", make=_jpeg_msg)
    s = H.fresh_stamp()
    msg = _jpeg_msg(images[3], s)
    est = reference.localize(decode_compressed(msg.format, bytes(msg.data)))
    assert est.confidence < 1.0
    pose = None
    for _ in range(5):  # best effort: allow a lost frame
        gate_pub.publish(msg)
        try:
            pose = _wait_pose(probe, s, "/gate", timeout=4.0)
            break
        except AssertionError:
            continue
    assert pose is not None
    _assert_pose_close(pose, est.position, est.quaternion, 1e-4)
    time.sleep(1.0)
    tf_col = _poses(probe, "tf")
    assert not any(t.child_frame_id == "gate_cam" for m in tf_col.msgs() for t in m.transforms)
    v = H.wait_diag(probe, GATE_STATUS, lambda v: int(v["frames_below_gate"]) >= 2)
    assert v["image_qos"] == "best_effort" and v["tf_mode"] == "map_camera"  # old spelling normalised
    if reference.decoder is not None:
        img = H.wait_until(lambda: next((m for m in recon.msgs() if H.stamp_key(m.header.stamp) == s), None), 5.0,
                           what="reconstruction")
        want = reference.reconstruct(est.position, est.quaternion, est.scene)
        assert (img.encoding, img.height, img.width, img.header.frame_id) == ("rgb8", *want.shape[:2], "gate_cam")
        got = np.frombuffer(bytes(img.data), np.uint8).reshape(want.shape)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    else:
        assert "no decoder" in gated.text()


def test_fuzzed_compressed_images(gated, gate_pub, probe, images):
    """Corrupt / truncated JPEG, garbage, a PNG claiming 60000x60000, empty data and a depth
    format: counted by reason, node alive, next good JPEG localized."""
    from sensor_msgs.msg import CompressedImage

    from pae_ros.image_codec import encode_compressed

    fmt, jpg = encode_compressed(images[0], "jpeg")
    png_huge = (b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + (60000).to_bytes(4, "big")
                + (60000).to_bytes(4, "big") + bytes([8, 2, 0, 0, 0]) + b"\0" * 4)
    kinds = [("corrupt_compressed", fmt, bytes(jpg[: len(jpg) // 2])),
             ("corrupt_compressed", fmt, bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8))),
             ("too_large", "png", png_huge),
             ("empty", fmt, b""),
             ("unsupported_format", "16UC1; compressedDepth png", b"\x89PNG\r\n\x1a\n" + b"\0" * 30)]
    before = H.wait_diag(probe, GATE_STATUS, lambda v: True)
    sent = 0
    for i in range(10):
        for _, f, d in kinds:
            gate_pub.publish(CompressedImage(format=f, data=d))
            sent += 1
            time.sleep(0.003)
    pose = None
    for _ in range(5):
        s = H.fresh_stamp()
        gate_pub.publish(_jpeg_msg(images[4], s))
        try:
            pose = _wait_pose(probe, s, "/gate", timeout=4.0)
            break
        except AssertionError:
            continue
    assert pose is not None and gated.alive()
    after = H.wait_diag(probe, GATE_STATUS, lambda v: int(v["bad_inputs"]) > int(before["bad_inputs"]))
    for reason in {k[0] for k in kinds}:
        assert int(after.get(f"bad_input.{reason}", 0)) > int(before.get(f"bad_input.{reason}", 0)), reason
    assert int(after["bad_inputs"]) - int(before["bad_inputs"]) <= sent


def _stops_cleanly(proc, sig) -> None:
    """``sig`` stops ``proc`` within 15 s with exit code 0, the worker joined, no traceback."""
    t0 = time.monotonic()
    rc = proc.stop(sig)
    assert rc == 0, proc.text()
    assert time.monotonic() - t0 < 15
    assert "Traceback" not in proc.text()
    assert "stopped" in proc.text()


def test_sigterm_exits_zero(gated):
    """SIGTERM: clean shutdown, exit code 0, worker joined, no traceback."""
    _stops_cleanly(gated, signal.SIGTERM)


# --------------------------------------------------------------------------- (d) start-up failures

def test_bad_bundle_or_parameters_one_error_line(tiny_bundle, tmp_path):
    """Missing, corrupt, truncated bundle (exit 1) and bad parameter values (exit 2): one clear
    error line each, naming the bundle / the parameter."""
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a bundle" * 100)
    truncated = tmp_path / "truncated.safetensors"
    data = tiny_bundle.read_bytes() if hasattr(tiny_bundle, "read_bytes") else open(tiny_bundle, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    cases = {
        "missing": (H.node_command(tmp_path / "nope.safetensors"), 1, ["bundle not found", "nope.safetensors"]),
        "garbage": (H.node_command(garbage), 1, ["bad bundle", "garbage.safetensors"]),
        "truncated": (H.node_command(truncated), 1, ["bad bundle", "truncated.safetensors"]),
        "params": (H.node_command(tiny_bundle, {"tf_mode": "map->base", "confidence_gate": 1.5}), 2,
                   ["'tf_mode'", "'confidence_gate'"]),
        "type": (H.node_command(tiny_bundle, {"refine": "maybe"}, params_file=None), 2, ["'refine'"]),
        # with the params file (the launch path) rcl drops a -p of another type: checked all the same
        "k_abc": (H.node_command(tiny_bundle, {"k": "abc"}), 2, ["'k' must be an integer", "-p k:=abc"]),
        "gate_high": (H.node_command(tiny_bundle, {"confidence_gate": "high"}), 2, ["'confidence_gate'", "high"]),
        "refine_maybe": (H.node_command(tiny_bundle, {"refine": "maybe"}), 2, ["'refine'", "maybe"]),
        "misspelled": (H.node_command(tiny_bundle, {"confidence_gte": 0.9}), 2,
                       ["unknown parameter 'confidence_gte'", "confidence_gate"]),
        "k_above_table": (H.node_command(tiny_bundle, {"k": 100000, "device": "cpu"}), 2,
                          ["'k' = 100000 is larger than the bundle's pose table"]),
        "no_bundle": (H.node_command(None), 2, ["'bundle'"]),
        "tensorrt_on_cpu": (H.node_command(tiny_bundle, {"backend": "tensorrt", "device": "cpu"}), 1,
                            ["backend 'tensorrt' is not available"]),
        "precision": (H.node_command(tiny_bundle, {"precision": "int8"}), 2, ["'precision'", "int8"]),
    }
    procs = {k: H.NodeProcess(c[0]) for k, c in cases.items()}
    try:
        for k, proc in procs.items():
            rc = proc.wait(60)
            if rc is not None and rc < 0:
                # killed by a signal before printing anything (a rare crash of the middleware when a
                # dozen processes start at once on two cores): that case runs again, alone
                proc = procs[k] = H.NodeProcess(cases[k][0])
                rc = proc.wait(60)
            lines = [ln for ln in proc.text().splitlines() if ln.strip()]
            _, want_rc, needles = cases[k]
            assert rc == want_rc, f"{k}: rc {rc}\n{proc.text()}"
            assert len(lines) == 1, f"{k}: expected one line, got:\n{proc.text()}"
            assert "ERROR" in lines[0] and all(n in lines[0] for n in needles), f"{k}: {lines[0]}"
    finally:
        for proc in procs.values():
            proc.stop(signal.SIGKILL, timeout=5)


# --------------------------------------------------------------------------- (e) SIGINT (last: stops the shared node)

def test_sigint_exits_zero(launched):
    """SIGINT (what Ctrl-C and launch send first): exit code 0, worker joined, no traceback."""
    assert launched.alive()
    _stops_cleanly(launched, signal.SIGINT)
