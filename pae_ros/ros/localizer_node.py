"""The ``localizer`` executable: managed (lifecycle) node ``pae_localizer``, one image in, one pose out.

Run::

    ros2 launch pae_ros localize.launch.py bundle:=/path/scene.pae
    ros2 run pae_ros localizer --ros-args --params-file config/localize.yaml -p bundle:=scene.pae

Lifecycle (``rclpy.lifecycle``; ``autostart:=true``, the default, runs configure + activate at
start, so the node also works standalone; ``autostart:=false`` leaves it to ``ros2 lifecycle set
/pae_localizer configure|activate`` or nav2's lifecycle manager):

* configure: load the bundle and warm up (a bad bundle: one error line, the transition fails; with
  autostart the process exits 1), create publishers and the services;
* activate: subscribe (image, camera_info, /tf, /tf_static), start the inference worker and timers;
* deactivate: unsubscribe and stop the worker (nothing is published); cleanup: free the model.

Data flow
---------
``image_topic`` (``sensor_msgs/Image``, or ``<image_topic>/compressed`` with ``compressed:=true``) ->
subscription callback: O(1) validation (bad messages counted and dropped) and a *keep-latest* slot
(a waiting frame replaced by a newer one is counted in ``frames_dropped``) -> inference worker:
decode, ``Localizer.localize`` -> outputs, all stamped with the **image's** header stamp:

=============================== ==================================== ===========================
topic                           type                                 frame_id
=============================== ==================================== ===========================
``pae/pose``                    geometry_msgs/PoseStamped            ``map_frame``
``pae/pose_with_covariance``    geometry_msgs/PoseWithCovarianceStamped ``map_frame`` (6x6 row-major,
                                                                     x y z rotx roty rotz, m^2 / rad^2)
``pae/apr_pose``                geometry_msgs/PoseStamped (APR only, camera frame) ``map_frame``
``/tf``                         tf2_msgs/TFMessage                   see ``tf_mode``
``/initialpose``                PoseWithCovarianceStamped            ``map_frame`` (``~/relocalize``)
``/diagnostics``                diagnostic_msgs/DiagnosticArray      every ``diagnostics_period`` s
``pae/reconstruction``          sensor_msgs/Image rgb8 (optional)    the camera frame
=============================== ==================================== ===========================

What ``pae/pose*`` describe (``pose_frame``): the pose of ``base_frame`` in ``map_frame`` (what
robot_localization and AMCL's ``/initialpose`` expect), ``T_map_base = T_map_camera *
T_camera_base`` with ``T_camera_base`` from TF (normally the static mount chain), the covariance
carried along (:func:`pae_ros.ros.frames.camera_to_base`); or the camera's optical frame
(``pose_frame:=camera``; ``auto`` falls back to it, with a warning, while TF has no base -> camera
chain). ``pae/apr_pose`` is always the camera's (for evaluation against camera ground truth).
Pose topics are reliable and transient local with depth 1 (``pose_transient_local``).

Geometric fixes (``geometric``: ``auto`` = ``<bundle>.map`` when present, ``off``, or a map path):
the inference worker runs the Localizer **without** the geometric stage, so the APR/PAE pose
above is published for every frame at the APR's rate, and hands each in-scene frame to
:class:`pae_ros.ros.geometric_worker.GeometricWorker`. That thread takes the newest frame (older
waiting ones are dropped, ``geometric.dropped``), at most ``geometric_rate_hz`` queries per
second, with ``geometric_threads`` OpenCV threads, and runs ``Localizer.localize_geometric``. An
accepted fix is published when it arrives on ``pae/pose`` and ``pae/pose_with_covariance`` (the
fix's covariance) **stamped with its own image's stamp** (older than the newest APR/PAE pose by
the stage's latency: a filter such as robot_localization places it by stamp), and offered to TF
with ``newer_only`` (:mod:`pae_ros.ros.tf_publisher`: it never replaces what a newer image set).
A fallback is counted under its reason (``geometric.fallback.<reason>``) and publishes nothing
extra. ``/diagnostics`` shows ``geometric.last_method`` (``geometric`` for a fix), the counters,
``geometric.query_p50_s`` (seconds per query) and ``geometric.cpu_share`` (share of one core).

TF (``tf_mode``): ``map_odom`` (REP 105), ``map_camera`` or ``none``; see
:mod:`pae_ros.ros.tf_publisher`. The node subscribes to ``/tf`` and ``/tf_static`` itself and keeps
a short per-edge history (:mod:`pae_ros.ros.tf`, no tf2_ros here): ``odom -> camera`` is looked up
**at the image stamp** (interpolated), waiting at most ``tf_wait`` s when odometry lags; a frame
older than the history is counted (``count.tf_too_old``) and gets no TF. Only confident (>=
``confidence_gate``), in-scene estimates (``Estimate.in_scene`` when the pipeline provides it) move
TF or ``/initialpose``; the others are published as poses with their large covariance.

Failure behaviour
-----------------
A bad parameter (wrong type, out of range, unknown name, ``k`` above the pose table) or a missing /
corrupt bundle at start: one error line, exit code 2 / 1. Malformed images, non-finite estimates
and inference exceptions never stop the node: they are logged (throttled per reason) and counted
per reason in ``/diagnostics``. SIGINT / SIGTERM: the worker thread is joined, exit code 0.
"""
from __future__ import annotations

import gc
import math
import sys
import threading
import time

import numpy as np
import rclpy
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import get_logger

from pae_ros.image_codec import ImageDecodeError
from pae_ros.ros.params import (NODE_NAME, PARAMETER_NAMES, PARAMETERS, TF_MODES, ConfigError,  # noqa: F401
                                ParamSpec, check_command_line, declare_and_read)

#: exit codes of :func:`main`
EXIT_OK, EXIT_STARTUP, EXIT_PARAMS = 0, 1, 2


class StartupError(Exception):
    """The node cannot start (bundle missing / corrupt, device unavailable, k above the table)."""

    def __init__(self, text: str, code: int = EXIT_STARTUP):
        super().__init__(text)
        self.code = code


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


class LocalizerNode(LifecycleNode):
    """``pae_localizer``: see the module docstring. ``main`` constructs it and drives the lifecycle
    (``autostart``); tests may call :meth:`start` (configure + activate) or :meth:`setup` (around
    an already built localizer), then :meth:`close`."""

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
        self.tf_wait: float = p["tf_wait"]
        try:
            base = self.resolve_topic_name(p["image_topic"])
            self.image_topic = self.resolve_topic_name(base + "/compressed") if p["compressed"] else base
            info_topic = p["camera_info_topic"] or (base.rsplit("/", 1)[0] + "/camera_info")
            self.camera_info_topic = self.resolve_topic_name(info_topic)
        except Exception as e:
            raise ConfigError(f"parameter 'image_topic' / 'camera_info_topic' is not a valid topic name "
                              f"({p['image_topic']!r}, {p['camera_info_topic']!r}): {e}") from None
        self.localizer = None
        self.info: dict = {}
        self.stats = None
        self._slot = None
        self._worker: threading.Thread | None = None
        self._stopping = threading.Event()
        self._active = False
        self._sub = None
        self._subs: list = []
        self._timers: list = []
        self._pubs: list = []
        self._reliability = None
        self._tf_buffer = None
        self._tf_chain_missing = False
        self._last_log: dict[str, float] = {}
        self._cuda = False
        self._camera_warning: str | None = None
        self._startup_error = None
        self._base_seen = False
        self._camera_checked: tuple | None = None
        self._train_camera = None
        self.pub_pose = self.pub_pose_cov = self.pub_apr = self.pub_diag = self.pub_recon = None
        self.tf_out = None
        self.reloc = None
        self._geo = None

    # ---- lifecycle transitions -------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            localizer, warm_s, load_s = self._load()
            self.configure_with(localizer, warm_s, load_s)
        except StartupError as e:
            self.get_logger().error(str(e))
            self._startup_error = e
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.activate_io()
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.deactivate_io()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.cleanup_io()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.deactivate_io()
        self.cleanup_io()
        return TransitionCallbackReturn.SUCCESS

    def is_active(self) -> bool:
        return self._active

    # ---- start-up -------------------------------------------------------------------------
    def start(self) -> None:
        """Configure and activate directly (no lifecycle services involved). Raises
        :class:`StartupError` with one clear sentence."""
        localizer, warm_s, load_s = self._load()
        self.setup(localizer, warm_s, load_s)

    def _load(self):
        """(localizer, warm-up s per frame, load s). Raises :class:`StartupError`."""
        from pathlib import Path

        p = self.params
        bundle = Path(p["bundle"]).expanduser()
        if not bundle.is_file():
            raise StartupError(f"cannot start: bundle not found: '{bundle}' (parameter 'bundle')")
        geometric = p["geometric"]
        if geometric not in ("auto", "off"):
            geometric = str(Path(geometric).expanduser())
            if not Path(geometric).is_file():
                raise StartupError(f"cannot start: parameter 'geometric' = {p['geometric']!r}: no map file there "
                                   "(build one with `pae train --stage map`, or use auto / off)")
        t0 = time.monotonic()
        from pae_ros.backends import BackendError
        from pae_ros.bundle import BundleError
        from pae_ros.geometric.sparse_map import MapError
        from pae_ros.pipeline import Localizer
        try:
            from pae_ros.bundle import load_bundle

            loaded = load_bundle(str(bundle))
            n_table = len(loaded.table_positions)
            if p["k"] != -1 and p["k"] > n_table:  # before the Localizer warns about calibration settings
                raise StartupError(f"cannot start: parameter 'k' = {p['k']} is larger than the bundle's pose table "
                                   f"({n_table} poses): use k <= {n_table} or -1 for the bundle's value", EXIT_PARAMS)
            localizer = Localizer(
                loaded, device=p["device"], refine=None if p["refine"] == "auto" else p["refine"],
                k=None if p["k"] == -1 else p["k"], steps=None if p["steps"] == -1 else p["steps"],
                backend=p["backend"], precision=p["precision"], threads=p["threads"] or None, geometric=geometric)
        except StartupError:
            raise
        except MapError as e:
            raise StartupError(f"cannot start: parameter 'geometric' = {p['geometric']!r}: {e}") from None
        except BackendError as e:
            raise StartupError(f"cannot start: {e}") from None
        except BundleError as e:
            raise StartupError(f"cannot start: bad bundle: {e}") from None
        except Exception as e:  # device unavailable, bad k/steps, a bundle this code cannot build
            raise StartupError(f"cannot start with bundle '{bundle}' on device '{p['device']}': "
                               f"{type(e).__name__}: {e}") from None
        table = localizer.info.get("table_size")
        if p["k"] != -1 and table is not None and p["k"] > int(table):
            raise StartupError(f"cannot start: parameter 'k' = {p['k']} is larger than the bundle's pose table "
                               f"({table} poses): use k <= {table} or -1 for the bundle's value", EXIT_PARAMS)
        try:
            warm_s = localizer.warmup()
        except Exception as e:
            raise StartupError(f"cannot start: warm-up failed on device '{p['device']}': "
                               f"{type(e).__name__}: {e}") from None
        return localizer, warm_s, time.monotonic() - t0

    def setup(self, localizer, warm_s: float = 0.0, load_s: float = 0.0) -> None:
        """Configure around a loaded ``localizer`` (anything with the
        :class:`pae_ros.pipeline.Localizer` interface) and activate."""
        self.configure_with(localizer, warm_s, load_s)
        self.activate_io()

    def configure_with(self, localizer, warm_s: float = 0.0, load_s: float = 0.0) -> None:
        """Publishers, services and state around ``localizer``; logs ``configured``."""
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
        from sensor_msgs.msg import Image

        from pae_ros.ros import qos
        from pae_ros.ros.diagnostics import NodeStats
        from pae_ros.ros.frames import training_camera
        from pae_ros.ros.services import Relocalization
        from pae_ros.ros.tf import TfBuffer
        from pae_ros.ros.tf_publisher import TfOutput

        p = self.params
        self.localizer = localizer
        info = localizer.info
        self._cuda = str(info.get("device", "")).startswith("cuda")
        self.info = {"device": info.get("device", "?"), "bundle_id": info.get("bundle_id", "?"),
                     "image_topic": self.image_topic, "image_qos": "?", "tf_mode": self.tf_mode,
                     "pose_frame": p["pose_frame"], "refine": info.get("refine"), "k": info.get("k"),
                     "steps": info.get("steps"), "enabled": True, "backend": info.get("backend_label", "torch"),
                     "backend_reason": info.get("backend_reason", ""),
                     "engine_build_s": info.get("engine_build_s", "n/a")}
        self.stats = NodeStats()
        self._load_info = (warm_s, load_s, info.get("backend", "torch"))
        pose_qos = qos.pose_qos(p["pose_transient_local"])
        self.pub_pose = self.create_publisher(PoseStamped, "pae/pose", pose_qos)
        self.pub_pose_cov = self.create_publisher(PoseWithCovarianceStamped, "pae/pose_with_covariance", pose_qos)
        self.pub_apr = self.create_publisher(PoseStamped, "pae/apr_pose", pose_qos)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", qos.OUTPUT_QOS)
        self.pub_recon = (self.create_publisher(Image, "pae/reconstruction", qos.OUTPUT_QOS)
                          if p["publish_reconstruction"] else None)
        self._pubs = [x for x in (self.pub_pose, self.pub_pose_cov, self.pub_apr, self.pub_diag, self.pub_recon) if x]
        if p["publish_reconstruction"] and not info.get("decoder", False):
            self.get_logger().warning("publish_reconstruction is true but the bundle has no decoder: "
                                      "nothing will be published on pae/reconstruction")
        self._tf_buffer = TfBuffer(p["tf_history"])
        self.tf_out = TfOutput(self, p)
        self.tf_out.create()
        self.pub_tf = self.tf_out._pub
        self.reloc = Relocalization(self, p)
        self.reloc.create()
        header = getattr(getattr(localizer, "bundle", None), "header", None) or {}
        self._train_camera = training_camera(header.get("intrinsics"), (info.get("scenes") or [None])[0])
        self._geo = None
        if p["geometric"] != "off" and getattr(localizer, "geometric", None) is not None:
            from pae_ros.ros.geometric_worker import GeometricWorker

            def stage(rgb, prior, loc=localizer):  # the prior's own descriptor: no second backbone forward
                return loc.localize_geometric(rgb, prior, descriptor=getattr(prior, "descriptor", None))

            self._geo = GeometricWorker(stage, self._publish_fix, p["geometric_rate_hz"], p["geometric_threads"],
                                        on_error=self._geo_error)
            self.info["geometric"] = info.get("geometric_map") or "on"
            self.info["last_fix_stamp"] = "none"  # written by the geometric thread: the key exists before
        else:
            self.info["geometric"] = "off"
        if p["geometric"] not in ("auto", "off") and self._geo is None:
            self.get_logger().warning(f"geometric map {p['geometric']!r} given but the localizer has no geometric "
                                      "stage: no fixes will be published")
        geo = (f", geometric map {self.info['geometric']} at <= {p['geometric_rate_hz']:g} Hz "
               f"({p['geometric_threads']} OpenCV thread(s))" if self._geo is not None else ", geometric off")
        self.get_logger().info(f"configured: bundle {self.info['bundle_id']} on {self.info['device']} "
                               f"({info.get('backend_reason', info.get('backend', 'torch'))}), "
                               f"load+warm-up {load_s:.1f} s{geo}")

    def activate_io(self) -> None:
        """Subscriptions, timers and the worker; logs ``ready``."""
        from sensor_msgs.msg import CameraInfo
        from tf2_msgs.msg import TFMessage

        from pae_ros.ros import qos

        if self._active:
            return
        p = self.params
        self._stopping.clear()
        self._slot = LatestSlot()
        self._worker = threading.Thread(target=self._run_worker, name="pae_inference", daemon=True)
        self._worker.start()
        if self._geo is not None:
            self._geo.start()
        self._subs = []
        if self.tf_mode == "map_odom" or p["pose_frame"] != "camera":  # else no TF is ever looked up
            self._subs += [
                self.create_subscription(TFMessage, "/tf", lambda m: self._on_tf(m, False), qos.TF_QOS),
                self.create_subscription(TFMessage, "/tf_static", lambda m: self._on_tf(m, True),
                                         qos.TF_STATIC_SUB_QOS)]
        if self._train_camera is not None:
            self._subs.append(self.create_subscription(CameraInfo, self.camera_info_topic, self._on_camera_info,
                                                       qos.image_profile("best_effort")))
        self._active = True
        self._subscribe(initial=True)
        if p["image_qos"] == "auto":
            self._timers.append(self.create_timer(1.0, self._recheck_qos))
        self._timers.append(self.create_timer(p["diagnostics_period"], self._publish_diagnostics))
        self.tf_out.activate()
        warm_s, load_s, backend = self._load_info
        kind = "CompressedImage" if p["compressed"] else "Image"
        self.get_logger().info(
            f"ready: bundle {self.info['bundle_id']} on {self.info['device']} ({backend}) "
            f"(refine={self.info['refine']}, load+warm-up {load_s:.1f} s, {warm_s * 1000:.0f} ms/frame), "
            f"listening on {self.image_topic} [{kind}, {self._reliability}], tf_mode={self.tf_mode}, "
            f"pose_frame={p['pose_frame']}, confidence_gate={self.gate}")

    def deactivate_io(self) -> None:
        """Unsubscribe, stop timers and the worker (joined)."""
        if not self._active:
            return
        self._active = False
        self.tf_out.deactivate()
        for t in self._timers:
            self.destroy_timer(t)
        self._timers = []
        for s in self._subs + ([self._sub] if self._sub is not None else []):
            self.destroy_subscription(s)
        self._subs, self._sub, self._reliability = [], None, None
        self._stop_worker()
        self.get_logger().info("deactivated: not subscribed, nothing published")

    def cleanup_io(self) -> None:
        """Destroy publishers and services, drop the model."""
        if self.localizer is None:
            return
        for pub in self._pubs:
            self.destroy_publisher(pub)
        self._pubs = []
        self.pub_pose = self.pub_pose_cov = self.pub_apr = self.pub_diag = self.pub_recon = None
        if self.tf_out is not None:
            self.tf_out.destroy()
        if self.reloc is not None:
            self.reloc.destroy()
        self.localizer = None
        self._geo = None
        gc.collect()
        self._release_gpu()
        self.get_logger().info("cleaned up: bundle unloaded")

    def _stop_worker(self) -> bool:
        self._stopping.set()
        if self._slot is not None:
            self._slot.close()
        joined = True
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            joined = not self._worker.is_alive()
            self._worker = None
        if self._geo is not None:  # after the inference worker: nothing offers frames any more
            joined = self._geo.stop(30.0) and joined
        return joined

    def _release_gpu(self) -> None:
        if self._cuda:
            try:
                import torch

                torch.cuda.empty_cache()
            except Exception:
                pass

    def _subscribe(self, initial: bool = False) -> None:
        """(Re)create the image subscription with the reliability ``image_qos`` asks for."""
        from sensor_msgs.msg import CompressedImage, Image

        from pae_ros.ros import qos

        if not self._active:
            return
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
        if self.reloc is not None and not self.reloc.enabled:
            self.stats.count("paused")
            return
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

        buf = self._tf_buffer
        for t in msg.transforms:
            try:
                parent, child, tr, q, ns = transform_from_msg(t)
                if not buf.set_transform(parent, child, tr, q, ns, static):
                    self.stats.count("tf_ignored")
            except Exception:  # malformed transform: ignore it
                self.stats.count("tf_ignored")

    def _on_camera_info(self, msg) -> None:
        """Compare the incoming camera with the bundle's training camera (once per distinct camera)."""
        from pae_ros.ros.frames import compare_cameras

        try:
            if self._train_camera is None:
                return
            key = (int(msg.width), int(msg.height), float(msg.k[0]), float(msg.k[4]))
            if key == self._camera_checked:
                return
            self._camera_checked = key
            w, h, fx, fy = key
            if w <= 0 or h <= 0 or fx <= 0 or fy <= 0:
                self._camera_warning = f"camera_info on {self.camera_info_topic} has no valid intrinsics ({key})"
            else:
                ok, text = compare_cameras(self._train_camera, w, h, fx, fy, self.params["fov_tolerance"])
                self._camera_warning = None if ok else text
                self.info["camera_check"] = text
            if self._camera_warning:
                self.get_logger().warning(self._camera_warning)
        except Exception as e:
            self._log_throttled("camera_info", f"camera_info check failed: {type(e).__name__}: {e}")

    def _publish_diagnostics(self) -> None:
        from pae_ros.ros.diagnostics import diagnostic_array

        try:
            snap = self.stats.snapshot()
            missing = self.tf_mode == "map_odom" and snap["period_localized"] > 0 and self._tf_chain_missing
            self.info["enabled"] = self.reloc.enabled if self.reloc is not None else True
            warnings = [self._camera_warning] if self._camera_warning else None
            info = dict(self.info, **self._geo.diagnostics()) if self._geo is not None else self.info
            self.pub_diag.publish(diagnostic_array(self.get_clock().now().to_msg(), self.get_fully_qualified_name(),
                                                   snap, info, missing, warnings=warnings))
        except Exception as e:
            self._log_throttled("diag", f"diagnostics failed: {type(e).__name__}: {e}")

    # ---- the worker thread -----------------------------------------------------------------
    def _run_worker(self) -> None:
        slot = self._slot
        while not self._stopping.is_set():
            item = slot.take()
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
        geo = self._geo
        try:  # never the geometric stage inline: its fixes come from the geometric thread (or, off, never)
            est = self.localizer.localize(rgb, geometric=False)
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
        s_ns = cv.stamp_ns(stamp)
        in_scene = bool(getattr(est, "in_scene", True))
        below = est.confidence < self.gate
        confident = in_scene and not below
        if not in_scene:
            self.stats.count("out_of_scene")
        # which stage produced the pose (the pipeline's Estimate.method when it has one)
        self.info["last_method"] = getattr(est, "method", "refined" if getattr(est, "refined", False) else "apr")
        camera_frame = self.params["camera_frame"] or msg.header.frame_id.lstrip("/")
        hdr = cv.header(stamp, self.map_frame)
        out = self._output_pose(s_ns, camera_frame, est)
        if confident and self.tf_mode != "none":
            self._publish_tf(s_ns, camera_frame, est)
        cov_msg = None
        if out is not None:
            t_out, q_out, cov_out = out
            self.pub_pose.publish(cv.pose_stamped(hdr, t_out, q_out))
            cov_msg = cv.pose_with_covariance(hdr, t_out, q_out, cov_out)
            self.pub_pose_cov.publish(cov_msg)
            if self.reloc is not None and self.reloc.offer(cov_msg, t_out, confident):
                self.get_logger().info(f"published /initialpose at ({t_out[0]:.2f}, {t_out[1]:.2f}, {t_out[2]:.2f}) m, "
                                       f"confidence {est.confidence:.2f}")
        if self.pub_apr.get_subscription_count() > 0:
            self.pub_apr.publish(cv.pose_stamped(hdr, est.apr_position, est.apr_quaternion))
        if self.pub_recon is not None and self.pub_recon.get_subscription_count() > 0:
            img = self.localizer.reconstruct(est.position, est.quaternion, getattr(est, "scene", None))
            if img is not None:
                self.pub_recon.publish(cv.rgb_to_image(cv.header(stamp, camera_frame), img))
        if geo is not None and in_scene:
            geo.offer(rgb, est, (stamp, s_ns, camera_frame))
        t_done = time.monotonic()
        self.stats.localized(t_done - t_recv, est.confidence, below,
                             {"wait": t_start - t_recv, "decode": t_decoded - t_start,
                              "inference": t_inferred - t_decoded, "publish": t_done - t_inferred})
        if below:
            self._log_throttled("gate", f"confidence {est.confidence:.3f} < confidence_gate {self.gate}: "
                                        "pose published, no TF", level="info")

    def _publish_fix(self, context, est) -> None:
        """An accepted geometric fix (geometric thread): ``pae/pose`` and ``pae/pose_with_covariance``
        stamped with its own image's stamp, TF with ``newer_only``. Nothing else (no APR pose, no
        /initialpose, not counted in frames_localized)."""
        from pae_ros.ros import conversions as cv

        stamp, s_ns, camera_frame = context
        if not self._active or (self.reloc is not None and not self.reloc.enabled):
            self.stats.count("geometric_not_published_inactive")  # deactivated / ~/set_enabled false meanwhile
            return
        arrays = (est.position, est.quaternion, est.covariance)
        if not all(np.all(np.isfinite(a)) for a in arrays):
            self.stats.count("geometric_nonfinite")
            return
        out = self._output_pose(s_ns, camera_frame, est)
        if out is None:
            self.stats.count("geometric_no_base_tf")
            return
        t_out, q_out, cov_out = out
        hdr = cv.header(stamp, self.map_frame)
        self.pub_pose.publish(cv.pose_stamped(hdr, t_out, q_out))
        self.pub_pose_cov.publish(cv.pose_with_covariance(hdr, t_out, q_out, cov_out))
        self.stats.count("geometric_published")
        self.info["last_fix_stamp"] = f"{s_ns / 1e9:.9f}"
        if self.tf_mode != "none" and est.confidence >= self.gate and bool(getattr(est, "in_scene", True)):
            if not self._publish_tf(s_ns, camera_frame, est, newer_only=True):
                self.stats.count("geometric_tf_refused")

    def _geo_error(self, kind: str, text: str) -> None:
        n = self.stats.count(f"geometric_{kind}_error")
        self._log_throttled(f"geo:{kind}", f"{text} [{n} so far]")

    def _output_pose(self, s_ns: int, camera_frame: str, est):
        """(t, q, cov) that pae/pose* publish (``pose_frame``), or None (base wanted, no chain)."""
        from pae_ros.ros.frames import camera_to_base, flatten_2d
        from pae_ros.ros.tf import TfLookupError

        mode = self.params["pose_frame"]
        if mode == "camera":
            return est.position, est.quaternion, est.covariance
        if mode == "auto" and self._base_seen:
            mode = "base"  # once the mount was seen, never switch back to camera poses on the same topic
        try:
            if not camera_frame:
                raise TfLookupError("unconnected", "the image header has no frame_id and camera_frame is empty")
            try:
                t_cb, q_cb = self._tf_buffer.lookup_or_raise(camera_frame, self.base_frame, s_ns)
            except TfLookupError as e:
                if e.reason == "unconnected" and mode == "auto":
                    raise
                t_cb, q_cb = self._tf_buffer.wait_for(camera_frame, self.base_frame, s_ns, self.tf_wait)
            self._base_seen = True
        except TfLookupError as e:
            n = self.stats.count("base_tf_missing")
            if mode == "base":
                self._log_throttled("base_tf", f"pose_frame base: no TF {self.base_frame} -> {camera_frame or '?'} "
                                               f"({e}): pose not published [{n} so far]")
                return None
            self._log_throttled("base_tf", f"no TF {self.base_frame} -> {camera_frame or '?'} ({e}): publishing "
                                           "the camera pose; publish the camera mount on /tf_static or set "
                                           f"pose_frame:=camera [{n} so far]", period_s=30.0)
            return est.position, est.quaternion, est.covariance
        t, q, cov = camera_to_base(est.position, est.quaternion, est.covariance, t_cb, q_cb)
        if self.params["two_d_mode"]:
            t, q, cov = flatten_2d(t, q, cov)
        return t, q, cov

    def _publish_tf(self, s_ns: int, camera_frame: str, est, newer_only: bool = False) -> bool:
        """TF for ``est`` at the image stamp ``s_ns``; ``newer_only`` (geometric fixes): never over
        what a newer image set (:class:`pae_ros.ros.tf_publisher.TfOutput`). False: nothing taken."""
        from pae_ros.ros.tf import TfLookupError, map_to_odom

        if not camera_frame:
            self.stats.missing_tf()
            self._log_throttled("noframe", "image header has no frame_id and camera_frame is empty: no TF published")
            return False
        if self.tf_mode == "map_camera":
            return self.tf_out.camera(s_ns, camera_frame, est.position, est.quaternion, newer_only=newer_only)
        try:
            t_oc, q_oc = self._tf_buffer.wait_for(self.odom_frame, camera_frame, s_ns, self.tf_wait)
        except TfLookupError as e:
            if e.reason == "too_old":
                n = self.stats.count("tf_too_old")
                self._log_throttled("tf_old", f"image stamp older than the TF history ({e}): no map -> odom "
                                              f"for this frame [{n} so far]")
                return False
            if e.reason == "future":
                n = self.stats.count("tf_timeout")
                self._log_throttled("tf_wait", f"odom -> {camera_frame} not available at the image stamp "
                                               f"within tf_wait {self.tf_wait} s ({e}): no map -> odom for this "
                                               f"frame [{n} so far]")
                return False
            self._tf_chain_missing = True
            self.stats.missing_tf()
            self._log_throttled("tf", f"no TF chain {self.odom_frame} -> {camera_frame} on /tf, /tf_static "
                                      f"({self._describe_missing(camera_frame)}): map -> odom not published; "
                                      "publish odometry TF or set tf_mode:=map_camera")
            return False
        self._tf_chain_missing = False
        t_mo, q_mo = map_to_odom(est.position, est.quaternion, t_oc, q_oc)
        return self.tf_out.set_correction(s_ns, t_mo, q_mo, newer_only=newer_only)

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
        had_worker = self._worker is not None
        self._active = False
        joined = self._stop_worker()
        self.localizer = None
        gc.collect()
        self._release_gpu()
        if had_worker:
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
    argv = list(sys.argv if args is None else args)
    rclpy.init(args=args)
    node: LocalizerNode | None = None
    code = EXIT_OK
    try:
        try:
            node = LocalizerNode()
            check_command_line(argv, node.get_fully_qualified_name())
        except ConfigError as e:
            get_logger(NODE_NAME).error(f"cannot start: {e}")
            return EXIT_PARAMS
        if node.params["autostart"]:
            node._startup_error = None
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                err = getattr(node, "_startup_error", None)
                return err.code if err is not None else EXIT_STARTUP
            node.trigger_activate()
        else:
            node.get_logger().info("autostart is false: unconfigured, waiting for `ros2 lifecycle set "
                                   f"{node.get_fully_qualified_name()} configure`")
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
