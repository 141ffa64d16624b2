"""The ``localizer`` executable: node ``pae_localizer``, one image in, one pose out.

Run::

    ros2 run pae_ros localizer --ros-args --params-file config/localize.yaml -p bundle:=scene.pae
    python -m pae_ros.ros.localizer_node --ros-args -p bundle:=scene.pae -r /camera/image_raw:=/my/cam

Data flow
---------
``image_topic`` (``sensor_msgs/Image``, or ``<image_topic>/compressed`` ``CompressedImage`` with
``compressed:=true``) -> subscription callback: O(1) validation of the message fields (bad ones are
counted and dropped here) and a *keep-latest* slot (a frame still waiting when a newer one arrives
is replaced and counted in ``frames_dropped``) -> an inference worker thread: decode to RGB,
``Localizer.localize`` -> publications, all stamped with the **image's** header stamp:

=============================== ==================================== ===========================
topic                           type                                 frame_id
=============================== ==================================== ===========================
``pae/pose``                    geometry_msgs/PoseStamped            ``map_frame``
``pae/pose_with_covariance``    geometry_msgs/PoseWithCovarianceStamped ``map_frame`` (6x6 row-major,
                                                                     x y z rotx roty rotz, m^2 / rad^2)
``pae/apr_pose``                geometry_msgs/PoseStamped (APR only) ``map_frame``
``/tf``                         tf2_msgs/TFMessage                   see ``tf_mode``
``/diagnostics``                diagnostic_msgs/DiagnosticArray      every ``diagnostics_period`` s
``pae/reconstruction``          sensor_msgs/Image rgb8 (optional)    the camera frame
=============================== ==================================== ===========================

Output topic names are relative (``/pae/pose`` in the root namespace, ``/<ns>/pae/pose`` when
the node is started in a namespace); ``/tf`` and ``/diagnostics`` are absolute, as is the default
``image_topic``. Poses are camera-to-map: position = optical centre of the camera in the map,
metres; orientation = rotation of the OpenCV optical camera axes (x right, y down, z forward,
REP 103 ``*_optical``) into the map frame.

TF (``tf_mode``)
----------------
* ``map->camera``: ``map_frame -> <camera frame>`` = the estimate. The camera frame is the image
  header's ``frame_id`` (or ``camera_frame`` when set). Use when nothing else publishes TF for
  the camera (a hand-held camera, a bag without odometry).
* ``map->odom`` (REP 105, default): the node subscribes to ``/tf`` and ``/tf_static`` itself
  (no tf2_ros here), keeps the latest transform of every frame and chains
  ``odom_frame -> ... -> camera frame`` through whatever the tree has (normally
  ``odom -> base_link -> camera_link -> camera_optical``), then publishes
  ``T_map_odom = T_map_camera * inv(T_odom_camera)`` so that odometry keeps owning
  ``odom -> base``. The *latest* ``odom -> camera`` is used (no interpolation to the image
  stamp). Without such a chain no TF is published, ``tf_missing`` counts it and a throttled
  warning names the missing link.
* ``none``: no TF.
``base_frame`` is not used in the computation (the chain is found through whatever frames exist);
it is used to say which link is missing (``odom -> base_frame`` or ``base_frame -> camera``) in the
warning when the chain is broken. Below ``confidence_gate`` the poses are published (with their
large covariance) but no TF.

Failure behaviour
-----------------
A bad parameter value or a missing / corrupt bundle at start: one error line, exit code 2 / 1.
Malformed images, non-finite estimates and inference exceptions never stop the node: they are
logged (throttled per reason) and counted per reason in ``/diagnostics``. SIGINT / SIGTERM: the
worker thread is joined, the GPU cache released, exit code 0.
"""
from __future__ import annotations

import gc
import math
import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node

from pae_ros.image_codec import DEFAULT_MAX_DIM, ImageDecodeError

NODE_NAME = "pae_localizer"
TF_MODES = ("none", "map->camera", "map->odom")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
FRAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")

#: exit codes of :func:`main`
EXIT_OK, EXIT_STARTUP, EXIT_PARAMS = 0, 1, 2

# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: the single table the node, the docs and the tests read."""

    name: str
    default: Any
    description: str
    constraints: str = ""
    #: returns an error sentence or None
    check: Callable[[Any], str | None] | None = None
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None

    @property
    def kind(self) -> type:
        return type(self.default)


def _one_of(options):
    return lambda v: None if v in options else f"must be one of {', '.join(options)}"


def _frame(v):
    if not FRAME_RE.match(v):
        return "must be a TF frame id (letters, digits, _ . / -, no leading '/')"
    return None


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("bundle", "", "path of the model bundle (.pae, a safetensors file) written by `pae train`",
              "required", lambda v: None if v.strip() else "is required: the path of a bundle written by `pae train`"),
    ParamSpec("device", "auto", "inference device: auto (first GPU when present, else CPU), cpu, cuda, cuda:N",
              "auto | cpu | cuda | cuda:N",
              lambda v: None if DEVICE_RE.match(v) else "must be auto, cpu, cuda or cuda:N"),
    ParamSpec("backend", "auto",
              "APR inference engine: auto (ONNX Runtime on the CPU, torch on a GPU), torch, onnx (CPU only)",
              "auto | torch | onnx", _one_of(("auto", "torch", "onnx"))),
    ParamSpec("threads", 1,
              "CPU threads for inference (torch intra-op and ONNX Runtime); 1 was fastest for one frame at a "
              "time on a small CPU and leaves cores to DDS; 0 = the libraries' default", ">= 0",
              lambda v: None if v >= 0 else "must be >= 0 (0 = library default)", int_range=(0, 256)),
    ParamSpec("refine", True, "refine the APR pose with the PAE (kNN + latent fit); false = APR alone"),
    ParamSpec("k", -1, "refinement neighbours; -1 = the bundle's value", ">= 1, or -1",
              lambda v: None if v == -1 or v >= 1 else "must be >= 1, or -1 for the bundle's value",
              int_range=(-1, 100000)),
    ParamSpec("steps", -1, "refinement optimisation steps; -1 = the bundle's value", ">= 0, or -1",
              lambda v: None if v >= -1 else "must be >= 0, or -1 for the bundle's value",
              int_range=(-1, 100000)),
    ParamSpec("image_topic", "/camera/image_raw",
              "image topic (sensor_msgs/Image); with compressed:=true the node subscribes "
              "<image_topic>/compressed. Remappable with -r", "a valid topic name",
              lambda v: None if v.strip() else "must be a topic name"),
    ParamSpec("compressed", False, "subscribe <image_topic>/compressed (sensor_msgs/CompressedImage, jpeg/png)"),
    ParamSpec("camera_frame", "", "camera (optical) frame for TF; empty = the image header's frame_id",
              "frame id or empty", lambda v: None if v == "" else _frame(v)),
    ParamSpec("map_frame", "map", "frame of the output poses (the bundle's world frame)", "frame id", _frame),
    ParamSpec("odom_frame", "odom", "odometry frame (tf_mode map->odom)", "frame id", _frame),
    ParamSpec("base_frame", "base_link",
              "robot body frame; not used in the maths (odom -> camera is chained through whatever "
              "/tf holds), only to name the missing link when that chain is broken", "frame id", _frame),
    ParamSpec("tf_mode", "map->odom",
              "TF to publish: map->odom (REP 105, needs odom -> camera on /tf), map->camera, none",
              " | ".join(TF_MODES), _one_of(TF_MODES)),
    ParamSpec("image_qos", "auto",
              "image subscription reliability: auto (match the publishers), reliable, best_effort",
              "auto | reliable | best_effort", _one_of(("auto", "reliable", "best_effort"))),
    ParamSpec("confidence_gate", 0.0,
              "below this confidence (0..1) the pose is published (with its large covariance) but no TF",
              "0.0 <= value <= 1.0",
              lambda v: None if 0.0 <= v <= 1.0 else "must be in [0, 1]", float_range=(0.0, 1.0)),
    ParamSpec("publish_reconstruction", False,
              "publish pae/reconstruction: the decoder's image at the estimated pose (bundles with a decoder)"),
    ParamSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages", "> 0",
              lambda v: None if 0.0 < v <= 3600.0 else "must be > 0 (seconds)"),
    ParamSpec("max_image_size", DEFAULT_MAX_DIM,
              "largest accepted image width or height, pixels (larger ones are counted as too_large)", ">= 16",
              lambda v: None if v >= 16 else "must be >= 16 (pixels)", int_range=(16, 1 << 20)),
)

PARAMETER_NAMES = tuple(p.name for p in PARAMETERS)


class ConfigError(Exception):
    """A parameter has a bad value; the message names it."""


class StartupError(Exception):
    """The node cannot start (bundle missing / corrupt, device unavailable)."""


def _descriptor(p: ParamSpec) -> ParameterDescriptor:
    types = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}
    d = ParameterDescriptor(name=p.name, type=types[p.kind], description=p.description,
                            additional_constraints=p.constraints, read_only=True)
    if p.kind is float:
        d.dynamic_typing = True  # accept `-p confidence_gate:=1` (an integer) too; checked below
    if p.float_range:
        d.floating_point_range = [FloatingPointRange(from_value=p.float_range[0], to_value=p.float_range[1], step=0.0)]
    if p.int_range:
        d.integer_range = [IntegerRange(from_value=p.int_range[0], to_value=p.int_range[1], step=0)]
    return d


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def declare_and_read(node: Node) -> dict[str, Any]:
    """Declare every :data:`PARAMETERS` entry on ``node`` and return validated values.

    Raises :class:`ConfigError` naming every bad parameter.
    """
    errors: list[str] = []
    values: dict[str, Any] = {}
    for p in PARAMETERS:
        try:
            v = node.declare_parameter(p.name, p.default, _descriptor(p)).value
        except Exception as e:  # InvalidParameterTypeException / InvalidParameterValueException
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            errors.append(f"parameter '{p.name}' must be {_TYPE_WORDS[p.kind]}"
                          f"{' (' + p.constraints + ')' if p.constraints else ''}: {reason}")
            continue
        if p.kind is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                errors.append(f"parameter '{p.name}' must be a number, got {v!r}")
                continue
            v = float(v)
            if not math.isfinite(v):
                errors.append(f"parameter '{p.name}' must be finite, got {v!r}")
                continue
        if p.check is not None:
            msg = p.check(v)
            if msg:
                errors.append(f"parameter '{p.name}' {msg} (got {v!r})")
                continue
        values[p.name] = v
    if not errors:
        if values["map_frame"] == values["odom_frame"]:
            errors.append(f"parameters 'map_frame' and 'odom_frame' must differ (both {values['map_frame']!r})")
    if errors:
        raise ConfigError("; ".join(errors))
    return values


# --------------------------------------------------------------------------- keep-latest slot


class LatestSlot:
    """A one-item mailbox between the subscription callback and the worker.

    :meth:`put` replaces a waiting item (returns True when it did: that frame is dropped);
    :meth:`take` blocks until an item arrives or :meth:`close` is called (then returns None).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item = None
        self._closed = False

    def put(self, item) -> bool:
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None):
        with self._cond:
            end = None if timeout is None else time.monotonic() + timeout
            while self._item is None and not self._closed:
                remaining = None if end is None else end - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if self._closed:
                return None
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


# --------------------------------------------------------------------------- the node


class LocalizerNode(Node):
    """``pae_localizer``: see the module docstring. Construct, then :meth:`start`, spin, :meth:`close`."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.params = declare_and_read(self)  # raises ConfigError
        p = self.params
        self.map_frame: str = p["map_frame"]
        self.odom_frame: str = p["odom_frame"]
        self.base_frame: str = p["base_frame"]
        self.tf_mode: str = p["tf_mode"]
        self.gate: float = p["confidence_gate"]
        self.max_dim: int = p["max_image_size"]
        try:
            base = self.resolve_topic_name(p["image_topic"])
            self.image_topic = self.resolve_topic_name(base + "/compressed") if p["compressed"] else base
        except Exception as e:
            raise ConfigError(f"parameter 'image_topic' is not a valid topic name "
                              f"({p['image_topic']!r}): {e}") from None
        self.localizer = None
        self.info: dict = {}
        self.stats = None
        self._slot = LatestSlot()
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._sub = None
        self._reliability = None
        self._tf_buffer = None
        self._tf_chain_missing = False
        self._last_log: dict[str, float] = {}
        self._cuda = False

    # ---- start-up -------------------------------------------------------------------------
    def start(self) -> None:
        """Load the bundle, warm up, create publishers / subscriptions, start the worker, log
        ``ready``. Raises :class:`StartupError` with one clear sentence."""
        from pathlib import Path

        p = self.params
        bundle = Path(p["bundle"]).expanduser()
        if not bundle.is_file():
            raise StartupError(f"cannot start: bundle not found: '{bundle}' (parameter 'bundle')")
        t0 = time.monotonic()
        from pae_ros.bundle import BundleError
        from pae_ros.pipeline import Localizer
        try:
            localizer = Localizer.from_bundle(
                str(bundle), device=p["device"], refine=p["refine"],
                k=None if p["k"] == -1 else p["k"], steps=None if p["steps"] == -1 else p["steps"],
                backend=p["backend"], threads=p["threads"] or None)
            warm_s = localizer.warmup()
        except BundleError as e:
            raise StartupError(f"cannot start: bad bundle: {e}") from None
        except Exception as e:  # device unavailable, bad k/steps, a bundle this code cannot build
            raise StartupError(f"cannot start with bundle '{bundle}' on device '{p['device']}': "
                               f"{type(e).__name__}: {e}") from None
        self.setup(localizer, warm_s, time.monotonic() - t0)

    def setup(self, localizer, warm_s: float = 0.0, load_s: float = 0.0) -> None:
        """Publishers, subscriptions, timers and the worker around a loaded ``localizer``
        (anything with the :class:`pae_ros.pipeline.Localizer` interface); logs ``ready``."""
        from pae_ros.ros import qos
        from pae_ros.ros.diagnostics import NodeStats

        p = self.params
        self.localizer = localizer
        info = localizer.info
        self._cuda = str(info.get("device", "")).startswith("cuda")
        self.info = {"device": info.get("device", "?"), "bundle_id": info.get("bundle_id", "?"),
                     "image_topic": self.image_topic, "image_qos": "?", "tf_mode": self.tf_mode,
                     "refine": info.get("refine"), "k": info.get("k"), "steps": info.get("steps")}
        self.stats = NodeStats()

        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
        from sensor_msgs.msg import Image
        from tf2_msgs.msg import TFMessage

        self.pub_pose = self.create_publisher(PoseStamped, "pae/pose", qos.OUTPUT_QOS)
        self.pub_pose_cov = self.create_publisher(PoseWithCovarianceStamped, "pae/pose_with_covariance", qos.OUTPUT_QOS)
        self.pub_apr = self.create_publisher(PoseStamped, "pae/apr_pose", qos.OUTPUT_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", qos.OUTPUT_QOS)
        self.pub_tf = self.create_publisher(TFMessage, "/tf", qos.TF_QOS) if self.tf_mode != "none" else None
        self.pub_recon = (self.create_publisher(Image, "pae/reconstruction", qos.OUTPUT_QOS)
                          if p["publish_reconstruction"] else None)
        if p["publish_reconstruction"] and not info.get("decoder", False):
            self.get_logger().warning("publish_reconstruction is true but the bundle has no decoder: "
                                      "nothing will be published on pae/reconstruction")
        if self.tf_mode == "map->odom":
            from pae_ros.ros.tf import TfBuffer

            self._tf_buffer = TfBuffer()
            self.create_subscription(TFMessage, "/tf", lambda m: self._on_tf(m, False), qos.TF_QOS)
            self.create_subscription(TFMessage, "/tf_static", lambda m: self._on_tf(m, True), qos.TF_STATIC_SUB_QOS)

        self._worker = threading.Thread(target=self._run_worker, name="pae_inference", daemon=True)
        self._worker.start()
        self._subscribe(initial=True)
        if p["image_qos"] == "auto":
            self.create_timer(1.0, self._recheck_qos)
        self.create_timer(p["diagnostics_period"], self._publish_diagnostics)
        kind = "CompressedImage" if p["compressed"] else "Image"
        self.get_logger().info(
            f"ready: bundle {self.info['bundle_id']} on {self.info['device']} ({info.get('backend', 'torch')}) "
            f"(refine={info.get('refine')}, load+warm-up {load_s:.1f} s, {warm_s * 1000:.0f} ms/frame), "
            f"listening on {self.image_topic} [{kind}, {self._reliability}], tf_mode={self.tf_mode}, "
            f"confidence_gate={self.gate}")

    def _subscribe(self, initial: bool = False) -> None:
        """(Re)create the image subscription with the reliability ``image_qos`` asks for."""
        from sensor_msgs.msg import CompressedImage, Image

        from pae_ros.ros import qos

        infos = self.get_publishers_info_by_topic(self.image_topic)
        rel, why = qos.choose_image_reliability(self.params["image_qos"], [i.qos_profile.reliability for i in infos])
        if not initial and rel == self._reliability:
            return
        if self._sub is not None:
            self.destroy_subscription(self._sub)
        msg_type = CompressedImage if self.params["compressed"] else Image
        self._sub = self.create_subscription(
            msg_type, self.image_topic, self._on_image, qos.image_profile(rel),
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos))
        self._reliability = rel
        self.info["image_qos"] = rel
        self.get_logger().info(f"image subscription {self.image_topic}: {rel} ({why})")

    def _on_incompatible_qos(self, event) -> None:
        """A publisher of the image topic we cannot match (replaces rclpy's default warning)."""
        if self.params["image_qos"] == "auto":
            self._recheck_qos()  # switch now rather than at the next timer tick
        else:
            self._log_throttled("qos_incompatible",
                                f"a publisher of {self.image_topic} offers a QoS that image_qos="
                                f"{self.params['image_qos']} cannot match (policy {event.last_policy_kind}); "
                                "its images are not received: set image_qos:=auto or best_effort")

    def _recheck_qos(self) -> None:
        try:
            infos = self.get_publishers_info_by_topic(self.image_topic)
            if infos:
                self._subscribe()
        except Exception as e:  # never let the timer kill the node
            self._log_throttled("qos", f"image_qos re-check failed: {e}")

    # ---- callbacks (executor thread) -------------------------------------------------------
    def _on_image(self, msg) -> None:
        try:
            self._store_image(msg)
        except Exception as e:  # never let a callback take the executor down
            self._log_throttled("cb", f"image callback failed: {type(e).__name__}: {e}")

    def _store_image(self, msg) -> None:
        from pae_ros.ros.conversions import check_image_msg

        t_recv = time.monotonic()
        try:
            check_image_msg(msg, self.max_dim)
        except ImageDecodeError as e:
            self.stats.frame_in(False)
            self._bad(e.reason, f"bad image dropped: {e.detail}")
            return
        except Exception as e:  # a field of an unexpected type
            self.stats.frame_in(False)
            self._bad("malformed", f"bad image dropped: {type(e).__name__}: {e}")
            return
        replaced = self._slot.put((msg, t_recv))
        self.stats.frame_in(replaced)

    def _on_tf(self, msg, static: bool) -> None:
        from pae_ros.ros.conversions import transform_from_msg

        for t in msg.transforms:
            try:
                parent, child, tr, q, ns = transform_from_msg(t)
                self._tf_buffer.set_transform(parent, child, tr, q, ns, static)
            except Exception:  # malformed transform: ignore it
                continue

    def _publish_diagnostics(self) -> None:
        from pae_ros.ros.diagnostics import diagnostic_array

        try:
            snap = self.stats.snapshot()
            missing = self.tf_mode == "map->odom" and snap["period_localized"] > 0 and self._tf_chain_missing
            self.pub_diag.publish(diagnostic_array(self.get_clock().now().to_msg(),
                                                   self.get_fully_qualified_name(), snap, self.info, missing))
        except Exception as e:
            self._log_throttled("diag", f"diagnostics failed: {type(e).__name__}: {e}")

    # ---- the worker thread -----------------------------------------------------------------
    def _run_worker(self) -> None:
        while not self._stopping.is_set():
            item = self._slot.take()
            if item is None:
                break
            try:
                self._process(*item)
            except Exception as e:
                if self._stopping.is_set() or not self.context.ok():
                    break  # shutting down: publishers may already be gone
                self._bad("internal_error", f"frame failed: {type(e).__name__}: {e}")

    def _process(self, msg, t_recv: float) -> None:
        from pae_ros.ros import conversions as cv

        t_start = time.monotonic()
        try:
            rgb = cv.image_to_rgb(msg, self.max_dim)
        except ImageDecodeError as e:
            self._bad(e.reason, f"bad image dropped: {e.detail}")
            return
        t_decoded = time.monotonic()
        try:
            est = self.localizer.localize(rgb)
        except Exception as e:
            self._bad("inference_error", f"inference failed: {type(e).__name__}: {e}")
            return
        arrays = (est.position, est.quaternion, est.apr_position, est.apr_quaternion, est.covariance)
        if not getattr(est, "finite", True) or not all(np.all(np.isfinite(a)) for a in arrays) \
                or not math.isfinite(est.confidence):
            self._bad("nonfinite_estimate", "non-finite estimate: nothing published for this frame")
            return
        t_inferred = time.monotonic()
        stamp = msg.header.stamp
        hdr = cv.header(stamp, self.map_frame)
        below = est.confidence < self.gate
        camera_frame = self.params["camera_frame"] or msg.header.frame_id.lstrip("/")
        if self.pub_tf is not None and not below:
            self._publish_tf(stamp, camera_frame, est)
        self.pub_pose.publish(cv.pose_stamped(hdr, est.position, est.quaternion))
        self.pub_pose_cov.publish(cv.pose_with_covariance(hdr, est.position, est.quaternion, est.covariance))
        self.pub_apr.publish(cv.pose_stamped(hdr, est.apr_position, est.apr_quaternion))
        if self.pub_recon is not None:
            img = self.localizer.reconstruct(est.position, est.quaternion, getattr(est, "scene", None))
            if img is not None:
                self.pub_recon.publish(cv.rgb_to_image(cv.header(stamp, camera_frame), img))
        t_done = time.monotonic()
        self.stats.localized(t_done - t_recv, est.confidence, below,
                             {"wait": t_start - t_recv, "decode": t_decoded - t_start,
                              "inference": t_inferred - t_decoded, "publish": t_done - t_inferred})
        if below:
            self._log_throttled("gate", f"confidence {est.confidence:.3f} < confidence_gate {self.gate}: "
                                        "pose published, no TF", level="info")

    def _publish_tf(self, stamp, camera_frame: str, est) -> None:
        from tf2_msgs.msg import TFMessage

        from pae_ros.ros import conversions as cv
        from pae_ros.ros.tf import map_to_odom

        if not camera_frame:
            self.stats.missing_tf()
            self._log_throttled("noframe", "image header has no frame_id and camera_frame is empty: no TF published")
            return
        if self.tf_mode == "map->camera":
            t = cv.transform_stamped(stamp, self.map_frame, camera_frame, est.position, est.quaternion)
        else:
            found = self._tf_buffer.lookup(self.odom_frame, camera_frame)
            if found is None:
                self._tf_chain_missing = True
                self.stats.missing_tf()
                self._log_throttled("tf", f"no TF chain {self.odom_frame} -> {camera_frame} on /tf, /tf_static "
                                          f"({self._describe_missing(camera_frame)}): map -> odom not published; "
                                          "publish odometry TF or set tf_mode:=map->camera")
                return
            self._tf_chain_missing = False
            t_mo, q_mo = map_to_odom(est.position, est.quaternion, *found)
            t = cv.transform_stamped(stamp, self.map_frame, self.odom_frame, t_mo, q_mo)
        self.pub_tf.publish(TFMessage(transforms=[t]))

    def _describe_missing(self, camera_frame: str) -> str:
        buf = self._tf_buffer
        parts = [f"{self.odom_frame} -> {self.base_frame}: "
                 f"{'ok' if buf.lookup(self.odom_frame, self.base_frame) is not None else 'missing'}",
                 f"{self.base_frame} -> {camera_frame}: "
                 f"{'ok' if buf.lookup(self.base_frame, camera_frame) is not None else 'missing'}"]
        return ", ".join(parts)

    # ---- logging / counting ----------------------------------------------------------------
    def _bad(self, reason: str, text: str) -> None:
        n = self.stats.bad_input(reason)
        self._log_throttled(f"bad:{reason}", f"{text} [{reason}, {n} so far]")

    def _log_throttled(self, key: str, text: str, period_s: float = 5.0, level: str = "warning") -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) < period_s:
            return
        self._last_log[key] = now
        # one call site per severity: rclpy refuses a call site whose severity changes
        if level == "info":
            self.get_logger().info(text)
        else:
            self.get_logger().warning(text)

    # ---- shutdown --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop and join the worker, drop the model, release the GPU cache, destroy the node."""
        self._stopping.set()
        self._slot.close()
        joined = True
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            joined = not self._worker.is_alive()
        self.localizer = None
        gc.collect()
        if self._cuda:
            try:
                import torch

                torch.cuda.empty_cache()
            except Exception:
                pass
        if self._worker is not None:
            n = self.stats.frames_localized if self.stats is not None else 0
            text = (f"stopped: {n} frames localized, worker {'joined' if joined else 'did not stop'}"
                    f"{', GPU cache released' if self._cuda else ''}")
            try:  # a logger without a /rosout publisher: the context may already be shut down
                get_logger(f"{self.get_logger().name}.shutdown").info(text)
            except Exception:
                pass
        try:
            self.destroy_node()
        except Exception:
            pass


def main(args: list[str] | None = None) -> int:
    """Entry point of ``localizer``. Returns the exit code: 0 on SIGINT / SIGTERM, 1 start-up
    failure (bundle, device), 2 bad parameter."""
    rclpy.init(args=args)
    node: LocalizerNode | None = None
    code = EXIT_OK
    try:
        try:
            node = LocalizerNode()
        except ConfigError as e:
            get_logger(NODE_NAME).error(f"cannot start: {e}")
            return EXIT_PARAMS
        try:
            node.start()
        except StartupError as e:
            if rclpy.ok():
                node.get_logger().error(str(e))
                code = EXIT_STARTUP
            return code
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as e:
        if rclpy.ok():  # a genuine failure, not a side effect of shutdown
            get_logger(NODE_NAME).error(f"fatal: {type(e).__name__}: {e}")
            code = EXIT_STARTUP
    finally:
        if node is not None:
            node.close()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
