"""Helpers for the node tests over real DDS: an isolated ROS domain, node processes, and an
in-process rclpy "probe" that publishes inputs and collects outputs.

Isolation: importing this module sets ``ROS_DOMAIN_ID`` (200..232, derived from the pid; a range
the bag tests don't use) and ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` in ``os.environ``, before
any rclpy context exists here; node subprocesses inherit it. ``PAE_TEST_ROS_DOMAIN`` overrides it.

Node processes are started as the launch file starts them (``python -m
pae_ros.ros.localizer_node --ros-args --params-file ... -p ... -r ...``) with their output in a
log file (never a pipe, which could fill up and block the node).
"""
from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from support import REPO

CONFIG = REPO / "config" / "localize.yaml"


def _isolate() -> None:
    if os.environ.get("_PAE_TEST_ROS_ISOLATED") == "1":
        return
    os.environ["ROS_DOMAIN_ID"] = os.environ.get("PAE_TEST_ROS_DOMAIN", str(200 + os.getpid() % 33))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    os.environ["PYTHONUNBUFFERED"] = "1"
    os.environ["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
    os.environ["_PAE_TEST_ROS_ISOLATED"] = "1"


_isolate()


def node_command(bundle: str | Path | None, params: dict | None = None, remaps: list[tuple[str, str]] | None = None,
                 params_file: Path | None = CONFIG) -> list[str]:
    """The command line the launch file amounts to."""
    cmd = [sys.executable, "-m", "pae_ros.ros.localizer_node", "--ros-args"]
    if params_file is not None:
        cmd += ["--params-file", str(params_file)]
    if bundle is not None:
        cmd += ["-p", f"bundle:={bundle}"]
    for k, v in (params or {}).items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        cmd += ["-p", f"{k}:={v}"]
    for a, b in remaps or []:
        cmd += ["-r", f"{a}:={b}"]
    return cmd


_all_processes: list["NodeProcess"] = []


@atexit.register
def _cleanup() -> None:
    """Never leave a node running or its log behind, whatever happened to the test session."""
    for p in _all_processes:
        if p.alive():
            p.proc.kill()
            try:
                p.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        p.log_path.unlink(missing_ok=True)


class NodeProcess:
    """A node subprocess with its merged stdout/stderr in a temporary log file."""

    def __init__(self, cmd: list[str], env: dict | None = None):
        self.cmd = cmd
        self._log = tempfile.NamedTemporaryFile("w+b", prefix="pae_node_", suffix=".log", delete=False)
        self.log_path = Path(self._log.name)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env or dict(os.environ), cwd=str(REPO))
        self.t_start = time.monotonic()
        _all_processes.append(self)

    def text(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_log(self, needle: str, timeout: float) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            txt = self.text()
            if needle in txt:
                return txt
            if not self.alive():
                raise AssertionError(f"node exited with {self.proc.returncode} before {needle!r}:\n{self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} within {timeout} s; node output:\n{self.text()}")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        """Send ``sig`` (if still running) and wait; kills after ``timeout`` s. Returns the exit code."""
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


_launched: dict[str, NodeProcess] = {}


def launched_node(bundle: Path) -> NodeProcess:
    """The session's node started like ``launch/localize.launch.py`` (params file + ``bundle`` /
    ``device`` / ``tracking:=false`` overrides + image remap to ``/test/cam``), restarted if it is not running."""
    key = str(bundle)
    node = _launched.get(key)
    if node is None or not node.alive():
        # tracking off: the TF tests compare map -> odom with single estimates (the filter has its own tests)
        node = NodeProcess(node_command(bundle, {"device": "cpu", "diagnostics_period": 0.5, "tracking": False},
                                        [("/camera/image_raw", LAUNCHED_IMAGE_TOPIC)]))
        _launched[key] = node
    return node


LAUNCHED_IMAGE_TOPIC = "/test/cam"


def stop_all() -> None:
    for node in list(_launched.values()):
        node.stop(signal.SIGINT)
    _launched.clear()


class Collector:
    """Messages of one subscription, with their arrival time (monotonic s)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.items: list[tuple[float, object]] = []

    def __call__(self, msg) -> None:
        with self._lock:
            self.items.append((time.monotonic(), msg))

    def msgs(self, pred=None) -> list:
        with self._lock:
            return [m for _, m in self.items if pred is None or pred(m)]

    def timed(self, pred=None) -> list[tuple[float, object]]:
        with self._lock:
            return [(t, m) for t, m in self.items if pred is None or pred(m)]


class Probe:
    """An rclpy node in the test process (own context, executor thread)."""

    def __init__(self, name: str = "pae_test_probe", domain_id: int | None = None):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self.context = Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._collectors: dict[str, Collector] = {}
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:
            pass

    def collect(self, topic: str, msg_type, qos=10) -> Collector:
        """A (cached) subscription collecting everything on ``topic``."""
        if topic not in self._collectors:
            c = Collector()
            self.node.create_subscription(msg_type, topic, c, qos)
            self._collectors[topic] = c
        return self._collectors[topic]

    def publisher(self, topic: str, msg_type, qos=10):
        return self.node.create_publisher(msg_type, topic, qos)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def wait_until(pred, timeout: float, interval: float = 0.02, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_matched(pub, n: int = 1, timeout: float = 20.0) -> None:
    wait_until(lambda: pub.get_subscription_count() >= n, timeout, what=f"{n} subscriber(s) on {pub.topic_name}")


def stamp_key(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


# --------------------------------------------------------------------------- shared singletons
# test/ros/conftest.py wraps these in session fixtures: one probe and one launched node for every
# test file (a node start costs seconds on a small machine).
_probe: Probe | None = None


def get_probe() -> Probe:
    global _probe
    if _probe is None:
        _probe = Probe()
    return _probe


def close_probe() -> None:
    global _probe
    if _probe is not None:
        _probe.close()
        _probe = None


def add_output_collectors(probe: Probe, ns: str = "") -> dict[str, Collector]:
    """Collectors of every node output (created early, so discovery is done before use)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
    from tf2_msgs.msg import TFMessage

    from pae_ros.ros.qos import TF_QOS

    return {
        "pose": probe.collect(f"{ns}/pae/pose", PoseStamped),
        "pose_cov": probe.collect(f"{ns}/pae/pose_with_covariance", PoseWithCovarianceStamped),
        "apr": probe.collect(f"{ns}/pae/apr_pose", PoseStamped),
        "tf": probe.collect("/tf", TFMessage, TF_QOS),
        "diag": probe.collect("/diagnostics", DiagnosticArray),
    }


def image_msg(rgb, stamp_ns: int, frame_id: str, encoding: str = "rgb8", row_padding: int = 0):
    from sensor_msgs.msg import Image

    from pae_ros.image_codec import encode_image
    from pae_ros.ros.conversions import header, stamp_from_ns

    f = encode_image(rgb, encoding, row_padding=row_padding)
    return Image(header=header(stamp_from_ns(stamp_ns), frame_id), height=f.height, width=f.width,
                 encoding=f.encoding, is_bigendian=f.is_bigendian, step=f.step, data=f.data)


def diag_values(probe: Probe, status_name: str) -> dict[str, str] | None:
    """Values of the newest /diagnostics status called ``status_name`` (None before any)."""
    for m in reversed(probe.collect("/diagnostics", None).msgs()):
        for st in m.status:
            if st.name == status_name:
                return {kv.key: kv.value for kv in st.values}
    return None


def wait_diag(probe: Probe, status_name: str, pred, timeout: float = 10.0) -> dict[str, str]:
    def check():
        v = diag_values(probe, status_name)
        return v if v is not None and pred(v) else None
    return wait_until(check, timeout, what=f"diagnostics of {status_name}")


_stamp_base = [int(time.time()) * 1_000_000_000]


def fresh_stamp() -> int:
    """A stamp (ns) no earlier test used."""
    _stamp_base[0] += 1_000_000_007
    return _stamp_base[0]


class InProcessNode:
    """LocalizerNode in its own context, spun by its own executor thread (DDS to the probe);
    around ``localizer`` when given, else loading ``bundle`` through the real start-up."""

    def __init__(self, ns: str, overrides: dict, localizer=None, bundle: str = "unused"):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter
        from rclpy.signals import SignalHandlerOptions

        from pae_ros.ros.localizer_node import LocalizerNode

        self.ctx = Context()
        rclpy.init(context=self.ctx, args=[], signal_handler_options=SignalHandlerOptions.NO)
        self.node = None
        try:
            self.node = LocalizerNode(context=self.ctx, namespace=ns, parameter_overrides=[
                Parameter("bundle", value=str(bundle)), Parameter("device", value="cpu"),
                Parameter("diagnostics_period", value=0.5)] +
                [Parameter(k, value=v) for k, v in dict({"image_topic": f"{ns}/cam"}, **overrides).items()])
            if localizer is not None:
                self.node.setup(localizer)
            else:
                self.node.start()
        except Exception:
            self.close()
            raise
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self._run, daemon=True)
        self._spin.start()
        self.status = f"{self.node.get_fully_qualified_name()}: localization"

    def _run(self):
        try:
            self.executor.spin()
        except Exception:
            pass

    def close(self):
        import rclpy

        if getattr(self, "executor", None) is not None:
            self.executor.shutdown(timeout_sec=2.0)
            self._spin.join(5)
        if self.node is not None:
            self.node.close()
        rclpy.try_shutdown(context=self.ctx)

class RecordingLocalizer:
    """A real localizer handed to the node, keeping what passes through it: every APR/PAE
    estimate (in order) and the intrinsics of every geometric query."""

    def __init__(self, loc):
        self._loc = loc
        self.estimates = []
        self.intrinsics = []

    def __getattr__(self, name):
        return getattr(self._loc, name)

    def localize(self, rgb, geometric=None):
        est = self._loc.localize(rgb, geometric)
        self.estimates.append(est)
        return est

    def localize_geometric(self, rgb, prior, descriptor=None, intrinsics=None):
        self.intrinsics.append(intrinsics)
        return self._loc.localize_geometric(rgb, prior, descriptor=descriptor, intrinsics=intrinsics)
