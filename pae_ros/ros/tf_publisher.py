"""The node's TF output (``tf_mode``), kept out of the node's main file.

* ``map_odom`` (REP 105): for each confident, in-scene estimate the node computes
  ``T_map_odom = T_map_camera * inv(T_odom_camera(image stamp))`` (``odom -> camera`` interpolated
  at the image stamp from the node's :class:`pae_ros.ros.tf_buffer.TfBuffer`) and hands it to
  :meth:`TfOutput.set_correction`. That correction is published at once stamped
  ``image stamp + transform_tolerance`` and then re-published at ``tf_publish_rate`` stamped
  ``now + transform_tolerance`` (as AMCL does), so nav2's latest-time lookups keep working between
  images, below the gate and when the camera stalls. ``two_d_mode`` flattens it (z, roll, pitch = 0).
* ``map_camera``: ``map -> camera`` = the estimate, stamped with the image stamp, per image only.
* ``none``: nothing.

Geometric fixes (:mod:`pae_ros.ros.geometric_worker`) arrive later than the APR/PAE pose of their
own image, usually after newer images. They go through the same calls with ``newer_only=True``:
a fix never replaces what a newer image set. ``map_odom``: a fix older than the held correction's
image is refused; one for the same image replaces the held correction but is not re-sent at that
stamp (tf2 listeners drop a repeated stamp, TF_REPEATED_DATA): the next re-publish carries it.
``map_camera``: a fix whose stamp was already sent for that frame (always the case: its image's
APR/PAE pose went first) is refused. Refusals return False (the node counts them).

Every TF message is one ``TFMessage`` (batched); the publisher exists only when ``tf_mode`` is not
``none``.
"""
from __future__ import annotations

import threading

from tf2_msgs.msg import TFMessage

from pae_ros.ros import conversions as cv
from pae_ros.ros import qos
from pae_ros.ros.frames import flatten_2d


class TfOutput:
    def __init__(self, node, params: dict):
        self.node = node
        self.mode = params["tf_mode"]
        self.map_frame = params["map_frame"]
        self.odom_frame = params["odom_frame"]
        self.tolerance_ns = int(round(params["transform_tolerance"] * 1e9))
        self.rate = float(params["tf_publish_rate"])
        self.two_d = bool(params["two_d_mode"])
        self._lock = threading.Lock()
        self._correction = None     # (t, q) of T_map_odom
        self._correction_image_ns = -1  # image stamp the held correction came from
        self._camera_last_ns: dict[str, int] = {}  # map_camera: newest stamp sent per child frame
        self._last_stamp_ns = -1    # newest stamp published (never go back in time)
        self._pub = None
        self._timer = None
        self.published = 0

    def create(self) -> None:
        if self.mode == "none":
            return
        self._pub = self.node.create_publisher(TFMessage, "/tf", qos.TF_QOS)

    def activate(self) -> None:
        if self.mode == "map_odom" and self.rate > 0 and self._timer is None:
            self._timer = self.node.create_timer(1.0 / self.rate, self._republish)

    def deactivate(self) -> None:
        if self._timer is not None:
            self.node.destroy_timer(self._timer)
            self._timer = None

    def destroy(self) -> None:
        self.deactivate()
        if self._pub is not None:
            self.node.destroy_publisher(self._pub)
            self._pub = None
        with self._lock:
            self._correction = None
            self._correction_image_ns = -1
            self._camera_last_ns = {}

    @property
    def correction(self):
        with self._lock:
            return self._correction

    # ---- publishing ------------------------------------------------------------------------
    def _send(self, stamp_ns: int, parent: str, child: str, t, q) -> None:
        if self._pub is None:
            return
        self._pub.publish(TFMessage(transforms=[cv.transform_stamped(cv.stamp_from_ns(stamp_ns), parent, child, t, q)]))
        self.published += 1

    def set_correction(self, image_stamp_ns: int, t_map_odom, q_map_odom, newer_only: bool = False) -> bool:
        """A new ``map -> odom`` from the image at ``image_stamp_ns``: stored and published stamped
        ``image_stamp + transform_tolerance``. ``newer_only`` (geometric fixes): refused (False)
        when the held correction comes from a newer image; for the same image it replaces the held
        correction without being re-sent at that stamp (the next re-publish carries it)."""
        if self.two_d:
            t_map_odom, q_map_odom = flatten_2d(t_map_odom, q_map_odom)
        image_stamp_ns = int(image_stamp_ns)
        stamp = image_stamp_ns + self.tolerance_ns
        with self._lock:
            if newer_only and image_stamp_ns < self._correction_image_ns:
                return False
            # the same image's stamp was sent already (its APR/PAE correction): the re-publish carries it
            send = not newer_only or image_stamp_ns > self._correction_image_ns
            self._correction = (t_map_odom, q_map_odom)
            self._correction_image_ns = image_stamp_ns
            if send:
                self._last_stamp_ns = max(self._last_stamp_ns, stamp)
        if send:
            self._send(stamp, self.map_frame, self.odom_frame, t_map_odom, q_map_odom)
        return True

    def _republish(self) -> None:
        try:
            with self._lock:
                c = self._correction
                if c is None:
                    return
                stamp = self.node.get_clock().now().nanoseconds + self.tolerance_ns
                if stamp <= self._last_stamp_ns:
                    return
                self._last_stamp_ns = stamp
            self._send(stamp, self.map_frame, self.odom_frame, *c)
        except Exception as e:  # never let the timer kill the node
            self.node._log_throttled("tf_republish", f"map -> odom re-publish failed: {type(e).__name__}: {e}")

    def camera(self, image_stamp_ns: int, camera_frame: str, t, q, newer_only: bool = False) -> bool:
        """``map -> camera`` at the image stamp (tf_mode map_camera). ``newer_only`` (geometric
        fixes): refused (False) unless the stamp is newer than every one sent for ``camera_frame``."""
        stamp = int(image_stamp_ns)
        with self._lock:
            last = self._camera_last_ns.get(camera_frame, -1)
            if newer_only and stamp <= last:
                return False
            self._camera_last_ns[camera_frame] = max(last, stamp)
        self._send(stamp, self.map_frame, camera_frame, t, q)
        return True
