"""The ``localizer`` executable: managed (lifecycle) node ``pae_localizer``, one image in, one pose out.

Topics, parameters, QoS, TF and diagnostics are documented in ``docs/ROS.md``. Here: the lifecycle
(configure loads the bundle and creates outputs and services, activate subscribes and starts the
workers) and the image / camera_info input. The parts live in :mod:`pae_ros.ros.loading`,
:mod:`~pae_ros.ros.tf_listener`, :mod:`~pae_ros.ros.pose_output`, :mod:`~pae_ros.ros.services`,
:mod:`~pae_ros.ros.tracking_output` (the tracking filter, parameter ``tracking``),
:mod:`~pae_ros.ros.inference_worker` and :mod:`~pae_ros.ros.geometric_worker`.
"""
from __future__ import annotations

import gc
import sys
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import get_logger
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from pae_ros.image_codec import ImageDecodeError
from pae_ros.ros import qos
from pae_ros.ros.camera_info import CameraInfoWatch
from pae_ros.ros.conversions import check_image_msg
from pae_ros.ros.diagnostics import NodeStats, ThrottledLog, diagnostic_array
from pae_ros.ros.frames import training_camera
from pae_ros.ros.geometric_worker import GeometricWorker
from pae_ros.ros.inference_worker import InferenceWorker
from pae_ros.ros.loading import EXIT_OK, EXIT_PARAMS, EXIT_STARTUP, StartupError, load_localizer
from pae_ros.ros.localizer_protocol import LocalizerLike
from pae_ros.ros.params import NODE_NAME, ConfigError, check_command_line, declare_and_read
from pae_ros.ros.pose_output import PoseOutput
from pae_ros.ros.services import Relocalization
from pae_ros.ros.tf_listener import TfListener
from pae_ros.ros.tracking_output import TrackingOutput


class LocalizerNode(LifecycleNode):
    """``pae_localizer``. ``main`` constructs it and drives the lifecycle (``autostart``); tests may
    call :meth:`start` (configure + activate) or :meth:`setup` (around an already built
    localizer, a :class:`pae_ros.ros.localizer_protocol.LocalizerLike`), then :meth:`close`."""

    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        self.params = declare_and_read(self)  # raises ConfigError
        p = self.params
        self.tf_mode: str = p["tf_mode"]
        try:
            base = self.resolve_topic_name(p["image_topic"])
            self.image_topic = self.resolve_topic_name(base + "/compressed") if p["compressed"] else base
            info_topic = p["camera_info_topic"] or (base.rsplit("/", 1)[0] + "/camera_info")
            self.camera_info_topic = self.resolve_topic_name(info_topic)
        except Exception as e:
            raise ConfigError(f"parameter 'image_topic' / 'camera_info_topic' is not a valid topic name "
                              f"({p['image_topic']!r}, {p['camera_info_topic']!r}): {e}") from None
        self._log_throttled = ThrottledLog(self.get_logger())
        self.localizer: LocalizerLike | None = None
        self.info: dict = {}
        self.stats: NodeStats | None = None
        self.tf: TfListener | None = None
        self.output: PoseOutput | None = None
        self.tracking: TrackingOutput | None = None
        self.reloc: Relocalization | None = None
        self.camera: CameraInfoWatch | None = None
        self.worker: InferenceWorker | None = None
        self.geo: GeometricWorker | None = None
        self.pub_diag = None
        self._active = False
        self._sub = None
        self._subs: list = []
        self._timers: list = []
        self._reliability = None
        self._cuda = False
        self._startup_error: StartupError | None = None
        self._load_info = (0.0, 0.0, "torch")

    # ---- lifecycle transitions -------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            localizer, warm_s, load_s = load_localizer(self.params)
        except StartupError as e:
            self.get_logger().error(str(e))
            self._startup_error = e
            return TransitionCallbackReturn.FAILURE
        self.configure_with(localizer, warm_s, load_s)
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
        self.setup(*load_localizer(self.params))

    def setup(self, localizer: LocalizerLike, warm_s: float = 0.0, load_s: float = 0.0) -> None:
        """Configure around a loaded ``localizer`` and activate."""
        self.configure_with(localizer, warm_s, load_s)
        self.activate_io()

    def configure_with(self, localizer: LocalizerLike, warm_s: float = 0.0, load_s: float = 0.0) -> None:
        """Everything but the subscriptions around ``localizer``; logs ``configured``."""
        self._init_state(localizer, warm_s, load_s)
        self._init_transforms()
        self._init_outputs()
        self._init_camera_info()
        self._init_workers()
        self._log_configured()

    def _init_state(self, localizer: LocalizerLike, warm_s: float, load_s: float) -> None:
        p, info = self.params, localizer.info
        self.localizer = localizer
        self._cuda = str(info.get("device", "")).startswith("cuda")
        self.info = {"device": info.get("device", "?"), "bundle_id": info.get("bundle_id", "?"),
                     "image_topic": self.image_topic, "image_qos": "?", "tf_mode": self.tf_mode,
                     "pose_frame": p["pose_frame"], "refine": info.get("refine"), "k": info.get("k"),
                     "steps": info.get("steps"), "enabled": True, "backend": info.get("backend_label", "torch"),
                     "backend_reason": info.get("backend_reason", ""),
                     "engine_build_s": info.get("engine_build_s", "n/a")}
        self.stats = NodeStats()
        self._load_info = (warm_s, load_s, info.get("backend", "torch"))

    def _init_transforms(self) -> None:
        self.tf = TfListener(self, self.params["tf_history"], self.stats, self._log_throttled)

    def _init_outputs(self) -> None:
        """Relocalization services + /initialpose, pose topics, TF output, /diagnostics."""
        self.reloc = Relocalization(self, self.params)
        self.reloc.create()
        self.output = PoseOutput(self, self.params, self.tf, self.reloc, self.stats, self._log_throttled)
        self.output.create()
        self.tracking = None
        if self.params["tracking"]:
            has_geo = self.params["geometric"] != "off" and self.localizer.geometric is not None
            self.tracking = TrackingOutput(self, self.params, self.tf, self.output.tf_out, self.reloc, self.stats,
                                           self._log_throttled, has_geo)
            self.tracking.create()
        self.output.tracking = self.tracking
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", qos.OUTPUT_QOS)
        if self.params["publish_reconstruction"] and not self.localizer.info.get("decoder", False):
            self.get_logger().warning("publish_reconstruction is true but the bundle has no decoder: "
                                      "nothing will be published on pae/reconstruction")

    def _init_camera_info(self) -> None:
        """The training camera to check camera_info against (bundle header ``intrinsics``)."""
        header = self.localizer.bundle.header or {}
        train = training_camera(header.get("intrinsics"), (self.localizer.info.get("scenes") or [None])[0])
        self.camera = CameraInfoWatch(self.camera_info_topic, train, self.params["fov_tolerance"])

    def _init_workers(self) -> None:
        """The geometric thread (when the localizer has a stage) and the inference worker."""
        p, localizer = self.params, self.localizer
        self.geo = None
        if p["geometric"] != "off" and localizer.geometric is not None:
            def stage(rgb, prior, intrinsics):  # the prior's own descriptor: no second backbone forward
                return localizer.localize_geometric(rgb, prior, descriptor=prior.descriptor, intrinsics=intrinsics)

            self.geo = GeometricWorker(stage, self.output.publish_fix, p["geometric_rate_hz"],
                                       p["geometric_threads"], on_error=self._geo_error)
            self.info["geometric"] = localizer.info.get("geometric_map") or "on"
        else:
            self.info["geometric"] = "off"
            if p["geometric"] not in ("auto", "off"):
                self.get_logger().warning(f"geometric map {p['geometric']!r} given but the localizer has no "
                                          "geometric stage: no fixes will be published")
        self.worker = InferenceWorker(localizer, self.output, self.stats, self._log_throttled, p, self.info,
                                      geo=self.geo, camera=self.camera, running=self.context.ok)

    def _log_configured(self) -> None:
        p = self.params
        geo = (f", geometric map {self.info['geometric']} at <= {p['geometric_rate_hz']:g} Hz "
               f"({p['geometric_threads']} OpenCV thread(s))" if self.geo is not None else ", geometric off")
        warm_s, load_s, backend = self._load_info
        self.get_logger().info(f"configured: bundle {self.info['bundle_id']} on {self.info['device']} "
                               f"({self.info['backend_reason'] or backend}), load+warm-up {load_s:.1f} s{geo}")

    def activate_io(self) -> None:
        """Subscriptions, timers and the workers; logs ``ready``."""
        if self._active:
            return
        p = self.params
        self.worker.start()
        if self.geo is not None:
            self.geo.start()
        if self.tf_mode == "map_odom" or p["pose_frame"] != "camera":  # else no TF is ever looked up
            self.tf.subscribe()
        self._subs = []
        if self.camera.train_camera is not None or self.geo is not None:
            self._subs.append(self.create_subscription(CameraInfo, self.camera_info_topic, self._on_camera_info,
                                                       qos.image_profile("best_effort")))
        self._active = True
        self._subscribe(initial=True)
        if p["image_qos"] == "auto":
            self._timers.append(self.create_timer(1.0, self._recheck_qos))
        self._timers.append(self.create_timer(p["diagnostics_period"], self._publish_diagnostics))
        self.output.tf_out.activate()
        self._log_ready()

    def _log_ready(self) -> None:
        p = self.params
        warm_s, load_s, backend = self._load_info
        kind = "CompressedImage" if p["compressed"] else "Image"
        self.get_logger().info(
            f"ready: bundle {self.info['bundle_id']} on {self.info['device']} ({backend}) "
            f"(refine={self.info['refine']}, load+warm-up {load_s:.1f} s, {warm_s * 1000:.0f} ms/frame), "
            f"listening on {self.image_topic} [{kind}, {self._reliability}], tf_mode={self.tf_mode}, "
            f"pose_frame={p['pose_frame']}, confidence_gate={p['confidence_gate']}")

    def deactivate_io(self) -> None:
        """Unsubscribe, stop timers and the workers (joined)."""
        if not self._active:
            return
        self._active = False
        self.output.tf_out.deactivate()
        for t in self._timers:
            self.destroy_timer(t)
        self._timers = []
        self.tf.unsubscribe()
        for s in self._subs + ([self._sub] if self._sub is not None else []):
            self.destroy_subscription(s)
        self._subs, self._sub, self._reliability = [], None, None
        self._stop_workers()
        self.get_logger().info("deactivated: not subscribed, nothing published")

    def cleanup_io(self) -> None:
        """Destroy publishers and services, drop the model."""
        if self.localizer is None:
            return
        if self.tracking is not None:
            self.tracking.destroy()
            self.tracking = None
        self.output.tracking = None
        self.output.destroy()
        self.reloc.destroy()
        if self.pub_diag is not None:
            self.destroy_publisher(self.pub_diag)
            self.pub_diag = None
        self.localizer = None
        self.worker = self.geo = None
        gc.collect()
        self._release_gpu()
        self.get_logger().info("cleaned up: bundle unloaded")

    def _stop_workers(self) -> bool:
        joined = self.worker.stop(30.0) if self.worker is not None else True
        if self.geo is not None:  # after the inference worker: nothing offers frames any more
            joined = self.geo.stop(30.0) and joined
        return joined

    def _release_gpu(self) -> None:
        if self._cuda:
            try:
                import torch  # only on a CUDA device, where the pipeline has imported it already

                torch.cuda.empty_cache()
            except Exception:
                pass

    # ---- image input -----------------------------------------------------------------------
    def _subscribe(self, initial: bool = False) -> None:
        """(Re)create the image subscription with the reliability ``image_qos`` asks for."""
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

    def _on_image(self, msg) -> None:
        try:
            self._store_image(msg)
        except Exception as e:  # never let a callback take the executor down
            self._log_throttled("cb", f"image callback failed: {type(e).__name__}: {e}")

    def _store_image(self, msg) -> None:
        t_recv = time.monotonic()
        if not self.reloc.enabled:
            self.stats.count("paused")
            return
        try:
            check_image_msg(msg, self.params["max_image_size"])
        except ImageDecodeError as e:
            self.stats.frame_in(False)
            self.worker.bad(e.reason, f"bad image dropped: {e.detail}")
            return
        except Exception as e:  # a field of an unexpected type
            self.stats.frame_in(False)
            self.worker.bad("malformed", f"bad image dropped: {type(e).__name__}: {e}")
            return
        self.stats.frame_in(self.worker.put(msg, t_recv))

    def _on_camera_info(self, msg) -> None:
        """Query intrinsics for the geometric stage, and the check against the training camera
        (once per distinct camera)."""
        try:
            warning = self.camera.update(msg.width, msg.height, msg.k)
            if self.camera.check is not None:
                self.info["camera_check"] = self.camera.check
            if warning:
                self.get_logger().warning(warning)
        except Exception as e:
            self._log_throttled("camera_info", f"camera_info check failed: {type(e).__name__}: {e}")

    # ---- diagnostics -----------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        try:
            snap = self.stats.snapshot()
            missing = self.tf_mode == "map_odom" and snap["period_localized"] > 0 and self.output.tf_chain_missing
            self.info["enabled"] = self.reloc.enabled
            warnings = [w for w in (self.camera.warning, self._tf_static_warning()) if w]
            info = self.info
            if self.geo is not None:
                info = dict(self.info, last_fix_stamp=self.output.last_fix_stamp, **self.geo.diagnostics())
            if self.tracking is not None:
                info = dict(info, **self.tracking.diagnostics())
            self.pub_diag.publish(diagnostic_array(self.get_clock().now().to_msg(), self.get_fully_qualified_name(),
                                                   snap, info, missing, warnings=warnings or None))
        except Exception as e:
            self._log_throttled("diag", f"diagnostics failed: {type(e).__name__}: {e}")

    def _tf_static_warning(self) -> str | None:
        """An incompatible /tf_static publisher, named while the camera mount is missing."""
        cause = self.tf.incompatible
        if cause and self.output.base_missing:
            return f"no TF {self.params['base_frame']} -> camera: {cause}"
        return None

    def _geo_error(self, kind: str, text: str) -> None:
        n = self.stats.count(f"geometric_{kind}_error")
        self._log_throttled(f"geo:{kind}", f"{text} [{n} so far]")

    # ---- shutdown --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop and join the workers, drop the model, release the GPU cache, destroy the node."""
        had_worker = self.worker is not None and self.worker.started
        self._active = False
        joined = self._stop_workers()
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


def _autostart(node: LocalizerNode) -> int | None:
    """configure + activate; the exit code when configuring failed, else None."""
    node._startup_error = None
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        err = node._startup_error
        return err.code if err is not None else EXIT_STARTUP
    node.trigger_activate()
    return None


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
            failed = _autostart(node)
            if failed is not None:
                return failed
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
