"""The node's tracking filter glue (parameter ``tracking``): every estimate goes to a
:class:`pae_ros.tracking.TrackingFilter`, whose answer is published on ``pae/filtered_pose`` and, in
``tf_mode: map_odom``, as the ``map -> odom`` on ``/tf``.

* Tracked frame: the camera (optical frame). With ``tf_mode: map_odom`` the filter gets
  ``odom -> camera`` at each image stamp (the lookup :class:`pae_ros.ros.pose_output.PoseOutput`
  makes for the image anyway) as odometry, and each confident, in-scene estimate (APR/PAE per frame,
  geometric fixes later with their own image stamp) as a measurement of ``map -> odom``. The
  slew-limited correction (:meth:`TrackingFilter.publish`, at most ``tracking_max_step_m`` /
  ``tracking_max_step_rad`` per estimate except at a start, relocalisation or ``/initialpose``)
  goes to :class:`pae_ros.ros.tf_publisher.TfOutput` stamped with the newest image stamp.
* No odometry (``tf_mode`` ``map_camera`` / ``none``, or ``map_odom`` while TF has no
  ``odom -> camera`` chain at all): the filter's random-walk model of the camera pose in map (its
  variance grows with the time since the last accepted estimate; no motion is predicted), always
  6-dof (the camera's tilt is not planar). ``map_odom`` switches to it when the chain is missing and
  back when odometry appears (each switch restarts the track, counted ``tracking_model_switches``);
  no ``map -> odom`` is published from it.
* ``pae/filtered_pose`` (``PoseWithCovarianceStamped``, frame ``map_frame``, stamped with the newest
  image stamp): the base frame's pose in map when TF has the camera mount (``pose_frame`` not
  ``camera``), else the camera's; published after every estimate once the track exists.
* ``/initialpose`` (``initial_pose_topic``, subscribed) sets the track (a base pose when the mount is
  known, else a camera pose; zero variances, as RViz sends for z / roll / pitch, are taken as
  :data:`INITIAL_POSE_MIN_VAR`); what this node itself published there is ignored.
  ``~/relocalize`` restarts the track, ``~/set_enabled`` enables / disables it.

Thread-safety: one lock around the filter (inference worker, geometric thread, executor).
Positions metres, quaternions wxyz, stamps ns (the filter sees seconds).
"""
from __future__ import annotations

import threading

import numpy as np
from geometry_msgs.msg import PoseWithCovarianceStamped

from pae_ros.geometry import invert_pose
from pae_ros.ros import conversions as cv
from pae_ros.ros import qos
from pae_ros.ros.frames import camera_to_base, flatten_2d
from pae_ros.ros.params import parse_trusted_methods
from pae_ros.tracking import COUNTERS, METHODS, TrackingFilter, TrackingParams

#: variance (m^2, rad^2) put in place of a zero (or negative) diagonal entry of an /initialpose
INITIAL_POSE_MIN_VAR = 1e-4


def tracking_params(params: dict, use_odometry: bool, has_geometric: bool) -> TrackingParams:
    """The filter settings of the node's parameters (``tracking_*``, ``two_d_mode``, ``tf_history``)."""
    trusted = parse_trusted_methods(params["tracking_trusted_methods"])
    if trusted is None:
        trusted = ("geometric",) if has_geometric else METHODS
    n = int(params["tracking_init_count"])
    return TrackingParams(two_d_mode=bool(params["two_d_mode"]) and use_odometry, use_odometry=use_odometry,
                          odom_history_s=float(params["tf_history"]),
                          gate_probability=float(params["tracking_gate_probability"]),
                          init_count=n, init_window=max(TrackingParams.init_window, n),
                          init_min_spread_m=float(params["tracking_init_min_spread_m"]),
                          odom_max_speed=float(params["tracking_odom_max_speed"]),
                          max_step_m=float(params["tracking_max_step_m"]),
                          max_step_rad=float(params["tracking_max_step_rad"]),
                          trusted_methods=trusted)


class TrackingOutput:
    """The filter of ``node`` and its outputs. ``listener``: the node's
    :class:`~pae_ros.ros.tf_listener.TfListener`; ``tf_out``: its
    :class:`~pae_ros.ros.tf_publisher.TfOutput`; ``reloc``: its
    :class:`~pae_ros.ros.services.Relocalization` (own /initialpose messages); ``stats``, ``log``
    as in :class:`~pae_ros.ros.pose_output.PoseOutput`."""

    def __init__(self, node, params: dict, listener, tf_out, reloc, stats, log, has_geometric: bool) -> None:
        self.node = node
        self.params = params
        self.listener = listener
        self.tf_out = tf_out
        self.reloc = reloc
        self.stats = stats
        self.log = log
        self.has_geometric = has_geometric
        self.tf_mode: str = params["tf_mode"]
        self.map_frame: str = params["map_frame"]
        self.base_frame: str = params["base_frame"]
        self._lock = threading.Lock()
        self.filter = TrackingFilter(tracking_params(params, self.tf_mode == "map_odom", has_geometric))
        #: (stamp s as the filter holds it, stamp ns) of the newest stamp fed
        self._newest: tuple[float, int] | None = None
        self._camera_frame = ""
        self.published = 0
        self._pub = None
        self._sub = None

    # ---- lifecycle ------------------------------------------------------------------------
    def create(self) -> None:
        node, p = self.node, self.params
        self._pub = node.create_publisher(PoseWithCovarianceStamped, "pae/filtered_pose",
                                          qos.pose_qos(p["pose_transient_local"]))
        self._sub = node.create_subscription(PoseWithCovarianceStamped, p["initial_pose_topic"],
                                             self._on_initial_pose, qos.INITIAL_POSE_QOS)
        self.reloc.on_relocalize.append(self.relocalize)
        self.reloc.on_set_enabled.append(self.set_enabled)

    def destroy(self) -> None:
        if self._sub is not None:
            self.node.destroy_subscription(self._sub)
            self._sub = None
        if self._pub is not None:
            self.node.destroy_publisher(self._pub)
            self._pub = None

    @property
    def uses_odometry(self) -> bool:
        return self.filter.params.use_odometry

    # ---- estimates (inference worker, geometric thread) -----------------------------------
    def feed(self, s_ns: int, camera_frame: str, est, use: bool, odom, chain_missing: bool = False,
             fix: bool = False) -> str | None:
        """One estimate of the image stamped ``s_ns``: ``odom`` is ``odom -> camera`` at that stamp
        ((t, q), or None); ``use``: the estimate is confident and in scene (else only its odometry
        goes in); ``chain_missing``: TF has no ``odom -> camera`` chain at all; ``fix``: a geometric
        fix (its TF never goes over a newer image's). Publishes the outputs; returns the filter's
        verdict on the estimate (None when it was not offered)."""
        s = s_ns / 1e9
        if camera_frame:
            self._camera_frame = camera_frame
        with self._lock:
            if self.tf_mode == "map_odom":
                self._choose_model(odom is not None, chain_missing)
            f = self.filter
            if odom is not None and f.params.use_odometry:
                newest = f.history.newest_stamp
                if newest is None or s > newest:
                    f.add_odometry(s, *odom)
            verdict = None
            if use:
                verdict = f.add_estimate(s, est.position, est.quaternion, est.covariance, method=est.method,
                                         in_scene=est.in_scene)
                if verdict.startswith("dropped:"):
                    self.log(f"track:{verdict}", f"tracking: estimate {verdict} "
                                                 f"[{f.counts.get('dropped.' + verdict[8:], 0)} so far]")
            self._note_stamp(s, s_ns)
            out = f.publish()
            stamp_ns = self._stamp_ns(out.stamp)
        self._publish(out, stamp_ns, newer_only=fix)
        return verdict

    def _choose_model(self, has_odom: bool, chain_missing: bool) -> None:
        """map_odom: the random-walk model while TF has no odometry chain, odometry once it does."""
        use_odom = self.filter.params.use_odometry
        if use_odom and chain_missing and not len(self.filter.history):
            want = False
        elif not use_odom and has_odom:
            want = True
        else:
            return
        enabled = self.filter.enabled
        self.filter = TrackingFilter(tracking_params(self.params, want, self.has_geometric))
        self.filter.set_enabled(enabled)
        self._newest = None
        n = self.stats.count("tracking_model_switches")
        self.log("track:model", f"tracking: {'odometry' if want else 'no odom -> camera chain: random-walk'} "
                                f"model, track restarted [{n} switch(es)]", level="info")

    def _note_stamp(self, s: float, s_ns: int) -> None:
        if self._newest is None or s >= self._newest[0]:
            self._newest = (s, int(s_ns))

    def _stamp_ns(self, stamp: float | None) -> int | None:
        if stamp is None:
            return None
        if self._newest is not None and self._newest[0] == stamp:
            return self._newest[1]
        return int(round(stamp * 1e9))

    # ---- outputs ----------------------------------------------------------------------------
    def _publish(self, out, stamp_ns: int | None, newer_only: bool = False) -> None:
        if out.pose_position is None or stamp_ns is None:
            return
        t, q, cov = self._robot_pose(stamp_ns, out.pose_position, out.pose_quaternion, out.pose_covariance)
        if self._pub is not None:
            self._pub.publish(cv.pose_with_covariance(cv.header(cv.stamp_from_ns(stamp_ns), self.map_frame), t, q, cov))
            self.published += 1
        if self.tf_mode == "map_odom" and self.uses_odometry and out.published_position is not None:
            if not self.tf_out.set_correction(stamp_ns, out.published_position, out.published_quaternion,
                                              newer_only=newer_only):
                self.stats.count("geometric_tf_refused")

    def _mount(self, stamp_ns: int | None):
        """``T_camera_base`` (t, q) at ``stamp_ns``, or None (pose_frame camera, no camera frame
        known, or no such TF)."""
        if self.params["pose_frame"] == "camera" or not self._camera_frame:
            return None
        return self.listener.buffer.lookup(self._camera_frame, self.base_frame, stamp_ns)

    def _robot_pose(self, stamp_ns: int, t, q, cov):
        mount = self._mount(stamp_ns)
        if mount is None:
            return t, q, cov
        t, q, cov = camera_to_base(t, q, cov, *mount)
        if self.params["two_d_mode"]:
            t, q, cov = flatten_2d(t, q, cov)
        return t, q, cov

    # ---- /initialpose, services (executor thread) ---------------------------------------------
    def _on_initial_pose(self, msg) -> None:
        try:
            self.set_initial_pose(msg)
        except Exception as e:  # never let a callback take the executor down
            self.log("track:initialpose", f"/initialpose failed: {type(e).__name__}: {e}")

    def set_initial_pose(self, msg) -> str:
        """Set the track from a ``PoseWithCovarianceStamped`` in ``map_frame``. Returns ``set``,
        ``own`` (this node's own message, ignored) or ``dropped:<reason>`` (counted
        ``tracking_initialpose_dropped.<reason>``, track unchanged)."""
        stamp_ns = cv.stamp_ns(msg.header.stamp)
        t, q = cv.pose_from_msg(msg)
        if self.reloc.is_own(stamp_ns, t):
            return "own"
        if msg.header.frame_id.lstrip("/") != self.map_frame:
            return self._initial_dropped("wrong_frame", f"frame {msg.header.frame_id!r}, not {self.map_frame!r}")
        cov = np.asarray(msg.pose.covariance, np.float64).reshape(6, 6).copy()
        if not (np.all(np.isfinite(cov)) and np.all(np.isfinite(t)) and np.all(np.isfinite(q))):
            return self._initial_dropped("not_finite", "non-finite pose or covariance")
        d = np.diag(cov).copy()
        d[d <= 0.0] = INITIAL_POSE_MIN_VAR
        np.fill_diagonal(cov, d)
        mount = self._mount(None)
        if mount is not None:  # a base pose: the camera's is T_map_base * T_base_camera
            t, q, cov = camera_to_base(t, q, cov, *invert_pose(*mount))
        with self._lock:
            f = self.filter
            verdict = f.set_pose(stamp_ns / 1e9, t, q, cov)
            if verdict.startswith("dropped:") and f.history.newest_stamp is not None:
                # a stamp outside the odometry history (RViz stamps "now"): the newest image's stamp
                verdict = f.set_pose(f.history.newest_stamp, t, q, cov)
            elif not verdict.startswith("dropped:"):
                self._note_stamp(stamp_ns / 1e9, stamp_ns)
            out = f.publish()
            out_ns = self._stamp_ns(out.stamp)
        if verdict.startswith("dropped:"):
            return self._initial_dropped(verdict[8:], "no odometry at its stamp or a bad covariance")
        self.node.get_logger().info(f"tracking: track set from /initialpose at ({t[0]:.2f}, {t[1]:.2f}, "
                                    f"{t[2]:.2f}) m (camera)")
        self._publish(out, out_ns, newer_only=True)  # the newest image's stamp was sent: the re-publish carries it
        return "set"

    def _initial_dropped(self, reason: str, text: str) -> str:
        n = self.stats.count(f"tracking_initialpose_dropped.{reason}")
        self.log("track:initialpose", f"/initialpose ignored: {text} [{n} so far]")
        return f"dropped:{reason}"

    def relocalize(self) -> None:
        """Forget the track: it restarts from consistent estimates."""
        with self._lock:
            self.filter.relocalize()

    def set_enabled(self, enabled: bool) -> None:
        with self._lock:
            self.filter.set_enabled(enabled)

    # ---- /diagnostics ---------------------------------------------------------------------------
    def diagnostics(self) -> dict[str, str]:
        """``tracking.*`` key/values: state, model, last Mahalanobis distance, counters."""
        with self._lock:
            f = self.filter
            state = f.state.value
            d = f.last_mahalanobis
            counts = dict(f.counts)
        out = {"tracking.state": state, "tracking.model": "odometry" if f.params.use_odometry else "random_walk",
               "tracking.last_mahalanobis": "none" if d is None else f"{d:.3f}",
               "tracking.trusted_methods": ",".join(f.params.trusted_methods)}
        for k in COUNTERS:
            out[f"tracking.{k}"] = str(counts.get(k, 0))
        for k, v in sorted(counts.items()):
            if "." in k:
                out[f"tracking.{k}"] = str(v)
        return out
