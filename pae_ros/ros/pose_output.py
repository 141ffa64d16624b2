"""The node's outputs of one estimate: ``pae/pose``, ``pae/pose_with_covariance``,
``pae/apr_pose``, ``pae/reconstruction``, TF (:mod:`pae_ros.ros.tf_publisher`) and the
``/initialpose`` offer (:mod:`pae_ros.ros.services`).

``pae/pose*`` describe ``pose_frame``: the base frame's pose in the map frame, ``T_map_base =
T_map_camera * T_camera_base`` with ``T_camera_base`` looked up at the image stamp
(:func:`pae_ros.ros.frames.camera_to_base` carries the covariance), or the camera's optical frame
(``camera``; ``auto`` falls back to it, with a warning, until the mount is seen). TF moves only for
confident, in-scene estimates. Geometric fixes (:meth:`PoseOutput.publish_fix`) publish the pose
topics stamped with their own image and TF with ``newer_only``. Positions metres, quaternions wxyz.

With the tracking filter (:attr:`PoseOutput.tracking`, a
:class:`pae_ros.ros.tracking_output.TrackingOutput`) every estimate also goes to the filter with
``odom -> camera`` at its image stamp, and in ``tf_mode: map_odom`` the published ``map -> odom``
is the filter's, not the estimate's; ``pae/pose*`` stay per-frame measurements.
"""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from sensor_msgs.msg import Image

from pae_ros.ros import conversions as cv
from pae_ros.ros import qos
from pae_ros.ros.frames import camera_to_base, flatten_2d
from pae_ros.ros.tf_buffer import TfLookupError, map_to_odom
from pae_ros.ros.tf_publisher import TfOutput


class PoseOutput:
    """Publishers and TF of ``node``; ``listener`` (:class:`pae_ros.ros.tf_listener.TfListener`)
    answers the TF lookups, ``reloc`` (:class:`pae_ros.ros.services.Relocalization`) gets every
    published pose, ``stats`` counts, ``log`` is the node's throttled logger."""

    def __init__(self, node, params: dict, listener, reloc, stats, log) -> None:
        self.node = node
        self.params = params
        self.listener = listener
        self.reloc = reloc
        self.stats = stats
        self.log = log
        self.map_frame: str = params["map_frame"]
        self.odom_frame: str = params["odom_frame"]
        self.base_frame: str = params["base_frame"]
        self.tf_mode: str = params["tf_mode"]
        self.gate: float = params["confidence_gate"]
        self.tf_wait: float = params["tf_wait"]
        self.tf_out = TfOutput(node, params)
        #: the last map -> odom attempt found no odom -> camera chain
        self.tf_chain_missing = False
        #: the last base-frame lookup failed (pose_frame base / auto)
        self.base_missing = False
        self._base_seen = False
        #: image stamp (s) of the last geometric fix published
        self.last_fix_stamp = "none"
        self.pub_pose = self.pub_pose_cov = self.pub_apr = self.pub_recon = None
        #: the tracking filter's outputs (parameter ``tracking``), or None
        self.tracking = None

    # ---- lifecycle ------------------------------------------------------------------------
    def create(self) -> None:
        node, p = self.node, self.params
        pose_qos = qos.pose_qos(p["pose_transient_local"])
        self.pub_pose = node.create_publisher(PoseStamped, "pae/pose", pose_qos)
        self.pub_pose_cov = node.create_publisher(PoseWithCovarianceStamped, "pae/pose_with_covariance", pose_qos)
        self.pub_apr = node.create_publisher(PoseStamped, "pae/apr_pose", pose_qos)
        self.pub_recon = (node.create_publisher(Image, "pae/reconstruction", qos.OUTPUT_QOS)
                          if p["publish_reconstruction"] else None)
        self.tf_out.create()

    def destroy(self) -> None:
        for pub in (self.pub_pose, self.pub_pose_cov, self.pub_apr, self.pub_recon):
            if pub is not None:
                self.node.destroy_publisher(pub)
        self.pub_pose = self.pub_pose_cov = self.pub_apr = self.pub_recon = None
        self.tf_out.destroy()

    # ---- one frame (inference worker) ------------------------------------------------------
    def publish_estimate(self, stamp, camera_frame: str, est, confident: bool, reconstruct=None) -> None:
        """Everything for the APR/PAE estimate ``est`` of the image stamped ``stamp``;
        ``reconstruct()``: the decoder's RGB image of the pose or None, called last and only while
        ``pae/reconstruction`` has a subscriber."""
        s_ns = cv.stamp_ns(stamp)
        hdr = cv.header(stamp, self.map_frame)
        out = self.output_pose(s_ns, camera_frame, est)
        if self._tracked_tf():
            self._feed_tracking(s_ns, camera_frame, est, confident)
        elif confident and self.tf_mode != "none":
            self.publish_tf(s_ns, camera_frame, est)
        if out is not None:
            t_out, q_out, cov_out = out
            self.pub_pose.publish(cv.pose_stamped(hdr, t_out, q_out))
            cov_msg = cv.pose_with_covariance(hdr, t_out, q_out, cov_out)
            self.pub_pose_cov.publish(cov_msg)
            if self.reloc.offer(cov_msg, t_out, confident):
                self.node.get_logger().info(
                    f"published /initialpose at ({t_out[0]:.2f}, {t_out[1]:.2f}, {t_out[2]:.2f}) m, "
                    f"confidence {est.confidence:.2f}")
        if self.pub_apr.get_subscription_count() > 0:
            self.pub_apr.publish(cv.pose_stamped(hdr, est.apr_position, est.apr_quaternion))
        if reconstruct is not None and self.pub_recon is not None and self.pub_recon.get_subscription_count() > 0:
            img = reconstruct()
            if img is not None:
                self.pub_recon.publish(cv.rgb_to_image(cv.header(stamp, camera_frame), img))
        if self.tracking is not None and not self._tracked_tf():
            self.tracking.feed(s_ns, camera_frame, est, confident, None)

    def _tracked_tf(self) -> bool:
        """The filter owns map -> odom (tracking on, tf_mode map_odom)."""
        return self.tracking is not None and self.tf_mode == "map_odom"

    def _feed_tracking(self, s_ns: int, camera_frame: str, est, use: bool, fix: bool = False) -> None:
        """``est`` and ``odom -> camera`` at its stamp to the filter (map_odom)."""
        odom, missing = None, False
        if camera_frame:
            try:
                odom = self.lookup_odom(s_ns, camera_frame)
            except TfLookupError as e:
                missing = e.reason == "unconnected"
        else:
            self.stats.missing_tf()
            self.log("noframe", "image header has no frame_id and camera_frame is empty: no odometry for the "
                                "tracking filter")
        self.tracking.feed(s_ns, camera_frame, est, use, odom, chain_missing=missing, fix=fix)

    def publish_fix(self, context, est) -> None:
        """An accepted geometric fix (geometric thread): ``pae/pose`` and ``pae/pose_with_covariance``
        stamped with its own image's stamp, TF with ``newer_only``. Nothing else (no APR pose, no
        /initialpose, not counted in frames_localized)."""
        stamp, s_ns, camera_frame = context
        if not self.node.is_active() or not self.reloc.enabled:
            self.stats.count("geometric_not_published_inactive")  # deactivated / ~/set_enabled false meanwhile
            return
        if not all(np.all(np.isfinite(a)) for a in (est.position, est.quaternion, est.covariance)):
            self.stats.count("geometric_nonfinite")
            return
        out = self.output_pose(s_ns, camera_frame, est)
        if out is None:
            self.stats.count("geometric_no_base_tf")
            return
        t_out, q_out, cov_out = out
        hdr = cv.header(stamp, self.map_frame)
        self.pub_pose.publish(cv.pose_stamped(hdr, t_out, q_out))
        self.pub_pose_cov.publish(cv.pose_with_covariance(hdr, t_out, q_out, cov_out))
        self.stats.count("geometric_published")
        self.last_fix_stamp = f"{s_ns / 1e9:.9f}"
        confident = est.confidence >= self.gate and est.in_scene
        if self.tracking is not None:
            if self._tracked_tf():
                self._feed_tracking(s_ns, camera_frame, est, confident, fix=True)
            else:
                self.tracking.feed(s_ns, camera_frame, est, confident, None, fix=True)
        if self.tf_mode != "none" and confident and not self._tracked_tf():
            if not self.publish_tf(s_ns, camera_frame, est, newer_only=True):
                self.stats.count("geometric_tf_refused")

    # ---- the base frame ---------------------------------------------------------------------
    def output_pose(self, s_ns: int, camera_frame: str, est):
        """(t, q, cov) that pae/pose* publish (``pose_frame``), or None (base wanted, no chain)."""
        mode = self.params["pose_frame"]
        if mode == "camera":
            return est.position, est.quaternion, est.covariance
        if mode == "auto" and self._base_seen:
            mode = "base"  # once the mount was seen, never switch back to camera poses on the same topic
        try:
            t_cb, q_cb = self._camera_to_base(s_ns, camera_frame, mode)
        except TfLookupError as e:
            self.base_missing = True
            return self._base_missing(e, camera_frame, mode, est)
        self.base_missing = False
        self._base_seen = True
        t, q, cov = camera_to_base(est.position, est.quaternion, est.covariance, t_cb, q_cb)
        if self.params["two_d_mode"]:
            t, q, cov = flatten_2d(t, q, cov)
        return t, q, cov

    def _camera_to_base(self, s_ns: int, camera_frame: str, mode: str):
        """``T_camera_base`` at ``s_ns``; ``auto`` does not wait for a chain TF does not know at all."""
        if not camera_frame:
            raise TfLookupError("unconnected", "the image header has no frame_id and camera_frame is empty")
        buf = self.listener.buffer
        try:
            return buf.lookup_or_raise(camera_frame, self.base_frame, s_ns)
        except TfLookupError as e:
            if e.reason == "unconnected" and mode == "auto":
                raise
            return buf.wait_for(camera_frame, self.base_frame, s_ns, self.tf_wait)

    def _base_missing(self, e: TfLookupError, camera_frame: str, mode: str, est):
        n = self.stats.count("base_tf_missing")
        cause = self.listener.incompatible
        if mode == "base":
            self.log("base_tf", f"pose_frame base: no TF {self.base_frame} -> {camera_frame or '?'} ({e}): "
                                f"pose not published{'; likely cause: ' + cause if cause else ''} [{n} so far]")
            return None
        hint = (f"likely cause: {cause}" if cause else
                "publish the camera mount on /tf_static or set pose_frame:=camera")
        self.log("base_tf", f"no TF {self.base_frame} -> {camera_frame or '?'} ({e}): publishing the camera "
                            f"pose; {hint} [{n} so far]", period_s=30.0)
        return est.position, est.quaternion, est.covariance

    # ---- TF -----------------------------------------------------------------------------------
    def publish_tf(self, s_ns: int, camera_frame: str, est, newer_only: bool = False) -> bool:
        """TF for ``est`` at the image stamp ``s_ns``; ``newer_only`` (geometric fixes): never over
        what a newer image set (:class:`pae_ros.ros.tf_publisher.TfOutput`). False: nothing taken."""
        if not camera_frame:
            self.stats.missing_tf()
            self.log("noframe", "image header has no frame_id and camera_frame is empty: no TF published")
            return False
        if self.tf_mode == "map_camera":
            return self.tf_out.camera(s_ns, camera_frame, est.position, est.quaternion, newer_only=newer_only)
        try:
            t_oc, q_oc = self.lookup_odom(s_ns, camera_frame)
        except TfLookupError:
            return False
        t_mo, q_mo = map_to_odom(est.position, est.quaternion, t_oc, q_oc)
        return self.tf_out.set_correction(s_ns, t_mo, q_mo, newer_only=newer_only)

    def lookup_odom(self, s_ns: int, camera_frame: str):
        """``odom -> camera`` (t, q) at ``s_ns``, waiting up to ``tf_wait``; a failure is counted,
        logged and raised (:class:`TfLookupError`)."""
        try:
            got = self.listener.buffer.wait_for(self.odom_frame, camera_frame, s_ns, self.tf_wait)
        except TfLookupError as e:
            self._odom_missing(e, camera_frame)
            raise
        self.tf_chain_missing = False
        return got

    def _odom_missing(self, e: TfLookupError, camera_frame: str) -> None:
        if e.reason == "too_old":
            n = self.stats.count("tf_too_old")
            self.log("tf_old", f"image stamp older than the TF history ({e}): no map -> odom for this frame "
                               f"[{n} so far]")
            return
        if e.reason == "future":
            n = self.stats.count("tf_timeout")
            self.log("tf_wait", f"odom -> {camera_frame} not available at the image stamp within tf_wait "
                                f"{self.tf_wait} s ({e}): no map -> odom for this frame [{n} so far]")
            return
        self.tf_chain_missing = True
        self.stats.missing_tf()
        self.log("tf", f"no TF chain {self.odom_frame} -> {camera_frame} on /tf, /tf_static "
                       f"({self._describe_missing(camera_frame)}): map -> odom not published; "
                       "publish odometry TF or set tf_mode:=map_camera")

    def _describe_missing(self, camera_frame: str) -> str:
        buf = self.listener.buffer
        parts = [f"{self.odom_frame} -> {self.base_frame}: "
                 f"{'ok' if buf.lookup(self.odom_frame, self.base_frame) is not None else 'missing'}",
                 f"{self.base_frame} -> {camera_frame}: "
                 f"{'ok' if buf.lookup(self.base_frame, camera_frame) is not None else 'missing'}"]
        return ", ".join(parts)
