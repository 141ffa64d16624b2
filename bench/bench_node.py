"""The localizer node end to end over real DDS: latency, throughput, drops, overhead over the pipeline.

The node runs as its own process, started the way the launch file starts it
(``python -m pae_ros.ros.localizer_node --ros-args --params-file config/localize.yaml -p ...
-r ...``), in an isolated ROS domain (``ROS_DOMAIN_ID`` 80-89 by pid, or
``PAE_BENCH_ROS_DOMAIN``) on localhost only. This process publishes 640 x 480 rgb8
``sensor_msgs/Image`` at 30 Hz (reliable, keep-last 5; stamps = ``time.time_ns()``) for a
warm-up, then for ``--duration`` s, and subscribes to ``/pae/pose`` and ``/diagnostics``.

Printed figures:

* pose latency p50 / p95: receive time of ``/pae/pose`` in this process minus the image's header
  stamp (same clock, same process), i.e. transport in + queueing + processing + transport out;
* throughput: poses received per second for the measured frames;
* frames dropped: the node's keep-latest drops (``frames_dropped`` in ``/diagnostics``, counter
  difference over the measured window) and frames lost in transport;
* node per-frame time: ``latency_p50_ms`` of ``/diagnostics``, which the node measures from the
  image callback to the publication of the pose (decode + ``Localizer.localize`` + publishing);
  compared with ``Localizer.localize`` on the same 640 x 480 image in this process (median,
  measured before and after the node run): overhead % = (node - pipeline) / pipeline, target
  <= 15 % (PASS / MISS). The node's time includes the CPU contention of receiving ~27 MB/s of
  images and of this publisher on a small machine: a second run at 5 Hz (``--rates``) shows the
overhead with little transport load. One fresh node per rate.

    .venv/bin/python bench/bench_node.py [--device cpu|cuda|auto] [--rates 30 5] [--duration 10]

``--geometric --data DATASET --bundle BUNDLE`` (a bundle with its map beside it, e.g.
``out/demo/model.pae`` + ``model.pae.map`` and ``data/demo_scene``) measures instead the geometric
thread: the dataset's first ``--frames`` test images, cycled at each ``--rates`` value, through one
node with ``geometric:=off`` and one with ``geometric:=auto`` (``--geometric-rate-hz``, default
the node's 2.0; 0 = unbounded). Printed: APR/PAE poses per second (stamps with a pose on
``/pae/pose`` over the publishing time) for both, fixes per second (stamps with a second pose,
the fix), the node's ``geometric.query_p50_s`` and mean ``geometric.cpu_share`` (of one core)
from ``/diagnostics``, and, for comparison, ``Localizer.localize`` with the stage inline on every
frame in this process.

``--tf-timing`` prints instead the map-pose error that TF timing alone causes (no DDS, no model):
a robot driving a circle at 1 m/s and 0.5 rad/s, odometry on /tf at 50 Hz equal to the truth, a
perfect camera estimate at the image stamp, the image processed 0 / 100 / 300 ms after its
stamp. "before": ``map -> odom`` composed with the *newest* ``odom -> camera`` (the naive way);
"after": with ``odom -> camera`` interpolated at the image stamp (what the node does). Error =
distance / angle between ``map -> odom * odom -> base(now)`` and the true base pose now.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET_OVERHEAD_PCT = 15.0
IMAGE_TOPIC = "/bench/camera/image_raw"
STATUS_NAME = "/pae_localizer: localization"
_procs: list[subprocess.Popen] = []


def isolate_ros() -> str:
    """Own ROS domain on localhost only (must run before any rclpy context exists)."""
    # 80-89: unused by the demo (90-99), the bag tests (100-199) and the node tests (200-232);
    # Fast DDS refuses ids above 232 (its port numbers would overflow)
    dom = os.environ.get("PAE_BENCH_ROS_DOMAIN", str(80 + os.getpid() % 10))
    os.environ["ROS_DOMAIN_ID"] = dom
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    os.environ["PYTHONUNBUFFERED"] = "1"
    os.environ["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
    return dom


@atexit.register
def _kill_leftovers() -> None:
    for p in _procs:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def start_node(bundle: Path, device: str, log: Path, threads: int | None = None,
               backend: str = "auto", extra: dict | None = None) -> subprocess.Popen:
    """The node as the launch file starts it, with the same inference settings as the in-process
    pipeline it is compared with (``backend``, ``threads``; the node's own default is 1 thread)."""
    cmd = [sys.executable, "-m", "pae_ros.ros.localizer_node", "--ros-args",
           "--params-file", str(common.REPO / "config" / "localize.yaml"),
           "-p", f"bundle:={bundle}", "-p", f"device:={device}", "-p", "tf_mode:=map_camera", "-p", "pose_frame:=camera",
           "-p", f"backend:={backend}", "-p", f"threads:={threads or 1}",
           "-p", "diagnostics_period:=0.5", "-r", f"/camera/image_raw:={IMAGE_TOPIC}"]
    for k, v in (extra or {}).items():
        cmd[-2:-2] = ["-p", f"{k}:={v}"]
    env = dict(os.environ)
    if threads:  # torch reads OMP_NUM_THREADS at start-up: the node gets what this process uses
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(common.REPO), env=env)
    _procs.append(proc)
    return proc


def stop_node(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def wait_for_log(proc: subprocess.Popen, log: Path, needle: str, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if needle in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"node not {needle!r} within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def wait_until(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def pipeline_ms(loc, rgb, repeats: int, rate_hz: float | None = None) -> float:
    """Median ``Localizer.localize`` time in ms: back to back, or paced at ``rate_hz`` like the
    stream the node sees (between frames of a stream, caches cool down and the CPU idles, so
    the paced call is slower: docs/RESULTS.md)."""
    if not rate_hz:
        return common.median_ms(common.time_fn(lambda: loc.localize(rgb), 3, repeats, loc.device))
    period = 1.0 / rate_hz
    times = []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        loc.localize(rgb)
        dt = time.perf_counter() - t0
        if i >= 3:
            times.append(dt)
        time.sleep(max(0.0, period - dt))
    return common.median_ms(times)


class Probe:
    """rclpy side of the benchmark: an image publisher, pose and diagnostics collectors."""

    def __init__(self):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import Image

        self.context = Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("pae_bench_probe", context=self.context)
        rel = lambda depth: QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,  # noqa: E731
                                       reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        self.lock = threading.Lock()
        self.poses: list[tuple[int, int]] = []     # (stamp ns, receive time ns)
        self.diags: list[tuple[float, dict]] = []  # (monotonic s, values)
        self.pub = self.node.create_publisher(Image, IMAGE_TOPIC, rel(5))
        self.node.create_subscription(PoseStamped, "/pae/pose", self._on_pose, rel(100))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, rel(10))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:
            pass

    def _on_pose(self, msg) -> None:
        t = time.time_ns()
        with self.lock:
            self.poses.append((int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec), t))

    def _on_diag(self, msg) -> None:
        for st in msg.status:
            if st.name == STATUS_NAME:
                with self.lock:
                    self.diags.append((time.monotonic(), {kv.key: kv.value for kv in st.values}))

    def diag_after(self, t: float, timeout: float = 5.0) -> dict:
        """The first diagnostics values received after monotonic time ``t``."""
        box = {}

        def check():
            with self.lock:
                for tt, v in self.diags:
                    if tt > t:
                        box["v"] = v
                        return True
            return False
        wait_until(check, timeout, "a /diagnostics message of the node")
        return box["v"]

    def publish_for(self, msg, rate_hz: float, seconds: float) -> list[int]:
        """Publish ``msg`` (or a list of messages, cycled) at ``rate_hz`` for ``seconds`` with fresh
        stamps; returns the stamps (ns)."""
        from builtin_interfaces.msg import Time

        msgs = msg if isinstance(msg, list) else [msg]
        period = 1.0 / rate_hz
        stamps = []
        t_next = time.perf_counter()
        t_end = t_next + seconds
        while t_next < t_end:
            msg = msgs[len(stamps) % len(msgs)]
            ns = time.time_ns()
            msg.header.stamp = Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)
            self.pub.publish(msg)
            stamps.append(ns)
            t_next += period
            delay = t_next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:  # fell behind (a slow publish): do not burst to catch up
                t_next = time.perf_counter()
        return stamps

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def run_device(bundle: Path, dev: str, rate: float, args, rgb, tmp: Path) -> None:
    import numpy as np

    from pae_ros.image_codec import encode_image
    from pae_ros.pipeline import Localizer

    # the APR/PAE path alone in both (a map beside the bundle would add the geometric stage: --geometric)
    loc = Localizer.from_bundle(bundle, device=dev, backend=args.backend, threads=args.threads or 1, geometric="off")
    loc.warmup()
    pipe_before = pipeline_ms(loc, rgb, args.pipeline_repeats, rate)
    log = tmp / f"node_{dev}_{rate:g}.log"
    node = start_node(bundle, dev, log, args.threads, args.backend, {"geometric": "off"})
    probe = None
    try:
        wait_for_log(node, log, "ready:", args.ready_timeout)
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header

        probe = Probe()
        f = encode_image(rgb, "rgb8")
        msg = Image(header=Header(frame_id="camera_optical"), height=f.height, width=f.width, encoding=f.encoding,
                    is_bigendian=f.is_bigendian, step=f.step, data=f.data)
        wait_until(lambda: probe.pub.get_subscription_count() >= 1, 30, f"the node's subscription to {IMAGE_TOPIC}")
        wait_until(lambda: probe.node.count_publishers("/pae/pose") >= 1, 30, "the node's /pae/pose publisher")
        probe.diag_after(time.monotonic(), timeout=10)
        probe.publish_for(msg, rate, args.warmup_s)      # warm-up: not measured
        time.sleep(1.0)
        d0 = probe.diag_after(time.monotonic())
        t0 = time.perf_counter()
        stamps = probe.publish_for(msg, rate, args.duration)
        pub_s = time.perf_counter() - t0
        measured = set(stamps)
        # let the last frames through (no new pose for 1 s, at most 5 s), then a fresh diagnostics
        end = time.monotonic() + 5.0
        last_n, last_change = -1, time.monotonic()
        while time.monotonic() < end and time.monotonic() - last_change < 1.0:
            with probe.lock:
                n = len(probe.poses)
            if n != last_n:
                last_n, last_change = n, time.monotonic()
            time.sleep(0.05)
        d1 = probe.diag_after(time.monotonic())
        with probe.lock:
            poses = list(probe.poses)
    finally:
        if probe is not None:
            probe.close()
        rc = stop_node(node)
    pipe_after = pipeline_ms(loc, rgb, args.pipeline_repeats, rate)
    pipe_b2b = pipeline_ms(loc, rgb, args.pipeline_repeats)
    del loc

    got = [(s, r) for s, r in poses if s in measured]
    lat = np.array([(r - s) / 1e6 for s, r in got]) if got else np.array([np.nan])
    n_pub = len(stamps)
    delta = {k: int(d1[k]) - int(d0[k]) for k in ("frames_in", "frames_localized", "frames_dropped")}
    import torch

    base = {"device": dev, "rate_hz": f"{rate:g}", "image": f"{rgb.shape[1]}x{rgb.shape[0]}",
            "frames": n_pub, "threads": torch.get_num_threads()}
    common.line("node_pose_latency", {**base, "stat": "p50"}, float(np.percentile(lat, 50)), "ms",
                f"/pae/pose receive - image stamp, {len(got)} poses; p95 {np.percentile(lat, 95):.1f} ms; "
                f"max {lat.max():.1f} ms")
    common.line("node_pose_latency", {**base, "stat": "p95"}, float(np.percentile(lat, 95)), "ms",
                "receive - image stamp")
    common.line("node_throughput", base, len(got) / pub_s, "poses/s",
                f"{len(got)} poses for {n_pub} images published in {pub_s:.1f} s "
                f"({n_pub / pub_s:.1f} Hz achieved)")
    common.line("node_frames_dropped", base, delta["frames_dropped"], "frames",
                f"keep-latest drops in /diagnostics over the window ({100 * delta['frames_dropped'] / max(n_pub, 1):.0f} %"
                f" of published); node received {delta['frames_in']} of {n_pub} "
                f"(transport loss {n_pub - delta['frames_in']}), localized {delta['frames_localized']}")
    node_ms = float(d1["latency_p50_ms"])
    pipe = 0.5 * (pipe_before + pipe_after)
    over = 100.0 * (node_ms - pipe) / pipe
    drift = 100.0 * abs(pipe_before - pipe_after) / min(pipe_before, pipe_after)
    noisy = f"; UNSTABLE machine: pipeline before/after differ by {drift:.0f} %" if drift > 20 else ""
    common.line("node_overhead", base, over, "%",
                f"node per-frame {node_ms:.1f} ms (diagnostics latency p50, callback to published; p95 "
                f"{float(d1['latency_p95_ms']):.1f} ms) vs Localizer.localize {pipe:.1f} ms in-process paced at "
                f"{rate:g} Hz (before {pipe_before:.1f}, after {pipe_after:.1f}; back to back {pipe_b2b:.1f}); "
                f"target <= {TARGET_OVERHEAD_PCT:g} %: "
                f"{common.verdict(over <= TARGET_OVERHEAD_PCT)}; node exit code {rc}{noisy}")
    stages = {k: float(d1.get(f"stage_{k}_p50_ms", "nan")) for k in ("wait", "decode", "inference", "publish")}
    common.line("node_stages", base, sum(stages.values()), "ms",
                "p50 per stage inside the node (/diagnostics): " + ", ".join(f"{k} {v:.2f} ms" for k, v in stages.items())
                + f"; inference inside the node vs in-process {pipe:.1f} ms")
    common.line("node_pipeline", {"device": dev, "rate_hz": f"{rate:g}", "image": base["image"],
                                  "threads": base["threads"]}, pipe, "ms/frame",
                f"Localizer.localize in-process paced at {rate:g} Hz, mean of the medians before and after the "
                f"node run; back to back {pipe_b2b:.2f} ms")


def run_geometric(bundle: Path, dev: str, rate: float, args, tmp: Path) -> None:
    """APR/PAE pose rate with and without the geometric thread, fixes per second (module docstring)."""
    import numpy as np

    from pae_ros.datasets import load_rgb, read_dataset
    from pae_ros.geometric import map_path_for
    from pae_ros.image_codec import encode_image
    from pae_ros.pipeline import Localizer

    if not map_path_for(bundle).is_file():
        raise SystemExit(f"--geometric needs the map beside the bundle: {map_path_for(bundle)} not found")
    te = read_dataset(args.data, "7scenes", "test")
    imgs = [load_rgb(f.image_path) for f in te.frames[: args.frames]]
    # for comparison: the stage inline on every frame, in this process
    loc = Localizer.from_bundle(bundle, device=dev, backend=args.backend, threads=args.threads or 1)
    loc.warmup()
    inline, plain, methods = [], [], []
    for img in imgs[:20]:
        t0 = time.perf_counter()
        est = loc.localize(img)
        inline.append(time.perf_counter() - t0)
        methods.append(est.method)
        t0 = time.perf_counter()
        loc.localize(img, geometric=False)
        plain.append(time.perf_counter() - t0)
    del loc
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    msgs = []
    for img in imgs:
        f = encode_image(img, "rgb8")
        msgs.append(Image(header=Header(frame_id="camera_optical"), height=f.height, width=f.width,
                          encoding=f.encoding, is_bigendian=f.is_bigendian, step=f.step, data=f.data))
    base = {"device": dev, "rate_hz": f"{rate:g}", "image": f"{imgs[0].shape[1]}x{imgs[0].shape[0]}",
            "geometric_rate_hz": f"{args.geometric_rate_hz:g}"}
    rates = {}
    for mode in ("off", "auto"):
        log = tmp / f"node_geo_{mode}_{rate:g}.log"
        extra = {"geometric": mode, "geometric_rate_hz": args.geometric_rate_hz, "geometric_threads": 1}
        node = start_node(bundle, dev, log, args.threads, args.backend, extra)
        probe = None
        try:
            wait_for_log(node, log, "ready:", args.ready_timeout)
            probe = Probe()
            wait_until(lambda: probe.pub.get_subscription_count() >= 1, 30, f"the node's subscription to {IMAGE_TOPIC}")
            wait_until(lambda: probe.node.count_publishers("/pae/pose") >= 1, 30, "the node's /pae/pose publisher")
            probe.diag_after(time.monotonic(), timeout=10)
            probe.publish_for(msgs, rate, args.warmup_s)
            time.sleep(1.0)
            d0 = probe.diag_after(time.monotonic())
            t_w0 = time.monotonic()
            t0 = time.perf_counter()
            stamps = probe.publish_for(msgs, rate, args.duration)
            pub_s = time.perf_counter() - t0
            t_w1 = time.monotonic()
            time.sleep(2.0)  # fixes in flight
            d1 = probe.diag_after(time.monotonic())
            with probe.lock:
                poses = list(probe.poses)
                diags = [v for t, v in probe.diags if t_w0 < t <= t_w1 + 0.5]
        finally:
            if probe is not None:
                probe.close()
            rc = stop_node(node)
        measured = set(stamps)
        per: dict[int, int] = {}
        for s_, _ in poses:
            if s_ in measured:
                per[s_] = per.get(s_, 0) + 1
        apr_hz = len(per) / pub_s
        fixes = sum(1 for v in per.values() if v >= 2)
        rates[mode] = apr_hz
        delta = {k: int(d1[k]) - int(d0[k]) for k in ("frames_in", "frames_localized", "frames_dropped")}
        common.line("node_geometric_apr_rate", {**base, "geometric": mode}, apr_hz, "poses/s",
                    f"stamps with an APR/PAE pose on /pae/pose: {len(per)} of {len(stamps)} images published in "
                    f"{pub_s:.1f} s; keep-latest drops {delta['frames_dropped']}; node latency p50 "
                    f"{float(d1['latency_p50_ms']):.1f} ms, p95 {float(d1['latency_p95_ms']):.1f} ms (/diagnostics, "
                    f"callback to published); node exit code {rc}")
        if mode == "auto":
            g = {k: float(d1.get(f"geometric.{k}", "nan")) for k in ("queries", "fixes", "fallbacks", "dropped",
                                                                      "query_p50_s", "query_cpu_p50_s")}
            g0 = {k: float(d0.get(f"geometric.{k}", "nan")) for k in ("queries", "fixes", "fallbacks", "dropped")}
            shares = [float(v["geometric.cpu_share"]) for v in diags if "geometric.cpu_share" in v]
            reasons = {k.split(".", 2)[2]: v for k, v in d1.items() if k.startswith("geometric.fallback.")}
            common.line("node_geometric_fix_rate", base, fixes / pub_s, "fixes/s",
                        f"{fixes} stamps with a fix on /pae/pose; node counters over the window: "
                        f"{g['queries'] - g0['queries']:.0f} queries, {g['fixes'] - g0['fixes']:.0f} fixes, "
                        f"{g['fallbacks'] - g0['fallbacks']:.0f} fallbacks (all-run reasons {reasons}), "
                        f"{g['dropped'] - g0['dropped']:.0f} frames dropped by the geometric slot")
            common.line("node_geometric_query", base, g["query_p50_s"] * 1000, "ms",
                        f"geometric.query_p50_s of /diagnostics (wall), CPU {g['query_cpu_p50_s'] * 1000:.0f} ms "
                        f"per query; cpu_share mean {np.mean(shares) if shares else float('nan'):.2f}, max "
                        f"{max(shares) if shares else float('nan'):.2f} of one core over {len(shares)} periods")
    common.line("node_geometric_apr_rate_ratio", base, rates["auto"] / max(rates["off"], 1e-9), "x",
                f"APR/PAE pose rate with the geometric thread / without ({rates['auto']:.1f} / {rates['off']:.1f} Hz)")
    common.line("node_geometric_inline_pipeline", {"device": dev, "image": base["image"]},
                float(np.median(inline)) * 1000, "ms/frame",
                f"Localizer.localize with the stage inline (a node without the thread: at most "
                f"{1 / float(np.median(inline)):.1f} Hz; {methods.count('geometric')} of {len(methods)} geometric) vs "
                f"{float(np.median(plain)) * 1000:.1f} ms without it, in this process, {len(inline)} test images")


def tf_timing(latencies_s=(0.0, 0.1, 0.3), v=1.0, w=0.5, odom_hz=50.0) -> list[dict]:
    """Map-pose error from TF timing alone, before (newest odom -> camera) and after (at the
    image stamp); see the module docstring. Returns one dict per latency (m, deg)."""
    import numpy as np

    from pae_ros import geometry as G
    from pae_ros.ros.tf_buffer import TfBuffer, map_to_odom

    def base(t):  # true base pose in map (= odom) on a circle
        r = v / w
        return np.array([r * np.sin(w * t), r * (1 - np.cos(w * t)), 0.0]), \
            np.array([np.cos(w * t / 2), 0.0, 0.0, np.sin(w * t / 2)])

    t_bc, q_bc = np.array([0.3, 0.0, 1.2]), G.rotmat_to_quat(np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]]))
    rows = []
    for lat in latencies_s:
        t_img = 5.013  # between two odometry samples: the interpolation error shows
        now = t_img + lat
        buf = TfBuffer(10.0)
        buf.set_transform("base_link", "camera", t_bc, q_bc, 0, static=True)
        for k in range(int(round(now * odom_hz)) + 1):  # odometry up to the processing time
            tk = k / odom_hz
            buf.set_transform("odom", "base_link", *base(tk), int(round(tk * 1e9)))
        t_mc, q_mc = G.compose_poses(*base(t_img), t_bc, q_bc)  # a perfect estimate at the image stamp
        row = {"latency_ms": lat * 1000}
        for name, stamp in (("before", None), ("after", int(round(t_img * 1e9)))):
            t_mo, q_mo = map_to_odom(t_mc, q_mc, *buf.lookup_or_raise("odom", "camera", stamp))
            t_ob_now, q_ob_now = buf.lookup_or_raise("odom", "base_link", int(round(now * 1e9)))
            t_mb, q_mb = G.compose_poses(t_mo, q_mo, t_ob_now, q_ob_now)
            t_true, q_true = base(now)
            row[f"{name}_m"] = float(np.linalg.norm(t_mb - t_true))
            dq = G.quat_multiply(G.quat_conjugate(q_true), q_mb)
            row[f"{name}_deg"] = float(np.degrees(2 * np.arccos(min(1.0, abs(dq[0])))))
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_bundle_args(p)
    common.add_device_arg(p)
    p.add_argument("--rates", type=float, nargs="+", default=[30.0, 5.0],
                   help="image rates, Hz, one node run each (30: the target; 5: little transport load, "
                        "separates the node's own overhead from CPU contention)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds of publishing")
    p.add_argument("--warmup-s", type=float, default=2.0, help="seconds of publishing before measuring")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--pipeline-repeats", type=int, default=30)
    p.add_argument("--ready-timeout", type=float, default=180.0, help="seconds for the node to log ready")
    p.add_argument("--backend", default="auto", choices=("auto", "tensorrt", "onnx", "torch"),
                   help="APR engine of both the node and the in-process pipeline (auto: ONNX Runtime on the CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of both the node (OMP_NUM_THREADS) and the in-process pipeline "
                        "(default: torch's, = CPU count)")
    p.add_argument("--geometric", action="store_true",
                   help="measure the geometric thread: APR/PAE pose rate with geometric off and auto, fixes/s "
                        "(needs --bundle with its map beside it and --data)")
    p.add_argument("--data", type=Path, default=None, help="7scenes dataset of the bundle (--geometric)")
    p.add_argument("--frames", type=int, default=40, help="test images cycled (--geometric)")
    p.add_argument("--geometric-rate-hz", type=float, default=2.0, help="the node's geometric_rate_hz (--geometric)")
    p.add_argument("--tf-timing", action="store_true",
                   help="only print the map-pose error from TF timing at 0 / 100 / 300 ms latency (no DDS)")
    args = p.parse_args(argv)
    if args.tf_timing:
        print("TF timing: robot on a circle at 1 m/s, 0.5 rad/s; odometry 50 Hz; perfect estimate at the image stamp")
        print(f"{'latency':>8} | {'before (newest odom)':>22} | {'after (at image stamp)':>24}")
        for r in tf_timing():
            print(f"{r['latency_ms']:6.0f} ms | {r['before_m'] * 100:8.2f} cm {r['before_deg']:6.2f} deg | "
                  f"{r['after_m'] * 100:10.4f} cm {r['after_deg']:7.4f} deg")
        return 0
    common.apply_threads(args)

    dom = isolate_ros()
    import numpy as np

    tmp = Path(tempfile.mkdtemp(prefix="pae_bench_node_"))
    try:
        path, kind = common.bundle_from_args(args, tmp)
        images = (f"the first {args.frames} test images of {args.data}" if args.geometric
                  else f"{args.width}x{args.height}")
        common.header("bench_node", f"bundle {kind} {path.name}, ROS_DOMAIN_ID={dom}, localhost only, "
                                    f"{images} rgb8 reliable at {', '.join(f'{r:g}' for r in args.rates)} Hz")
        rgb = np.random.default_rng(0).integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8)
        if args.geometric and (args.data is None or kind != "trained"):
            raise SystemExit("--geometric needs --bundle (with its .map beside it) and --data")
        for dev in common.devices(args.device):
            for rate in args.rates:
                if args.geometric:
                    run_geometric(path, dev, rate, args, tmp)
                else:
                    run_device(path, dev, rate, args, rgb, tmp)
    finally:
        _kill_leftovers()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
