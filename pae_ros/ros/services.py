"""The node's relocalization interface: ``~/relocalize`` (std_srvs/Trigger), ``~/set_enabled``
(std_srvs/SetBool) and the ``/initialpose`` publisher (``PoseWithCovarianceStamped``, what AMCL's
``initialpose`` subscription and nav2's "2D Pose Estimate" use).

* ``~/relocalize``: arms a one-shot; the **next confident pose** (in scene, confidence >=
  ``max(confidence_gate, initial_pose_confidence)``) is published on ``initial_pose_topic``. The
  reply comes at once (``success`` true: armed; false when the node is not active).
* ``publish_initial_pose`` (parameter): every confident pose that is more than
  ``initial_pose_jump`` metres from the last one published there is published too (the first
  confident pose always is): a kidnapped robot's AMCL is re-seeded.
* ``~/set_enabled``: ``data: false`` pauses localization (images are ignored and counted as
  ``count.paused``; the last map -> odom keeps being re-published), ``true`` resumes.

Other parts (the tracking filter, :mod:`pae_ros.ros.tracking_output`) hook into both services
through :attr:`Relocalization.on_relocalize` and :attr:`Relocalization.on_set_enabled`, and
recognise the node's own ``/initialpose`` messages with :meth:`Relocalization.is_own`.
"""
from __future__ import annotations

import threading
from collections import deque

import numpy as np
from geometry_msgs.msg import PoseWithCovarianceStamped
from std_srvs.srv import SetBool, Trigger

from pae_ros.ros import conversions as cv
from pae_ros.ros import qos


class Relocalization:
    """Owns the two services and the initial-pose logic of ``node`` (a LocalizerNode)."""

    def __init__(self, node, params: dict):
        self.node = node
        self.auto = bool(params["publish_initial_pose"])
        self.jump_m = float(params["initial_pose_jump"])
        self.min_confidence = max(float(params["initial_pose_confidence"]), float(params["confidence_gate"]))
        self.topic = params["initial_pose_topic"]
        self._lock = threading.Lock()
        self._armed = False
        self._last_position: np.ndarray | None = None
        self.enabled = True
        self.published = 0
        self._pub = None
        self._services = []
        #: called (no argument) after ~/relocalize was accepted, and with the new flag after ~/set_enabled
        self.on_relocalize: list = []
        self.on_set_enabled: list = []
        #: (stamp ns, position) of the last messages published on the initial-pose topic
        self._sent: deque = deque(maxlen=16)

    # ---- lifecycle -------------------------------------------------------------------------
    def create(self) -> None:
        self._pub = self.node.create_publisher(PoseWithCovarianceStamped, self.topic, qos.INITIAL_POSE_QOS)
        self._services = [self.node.create_service(Trigger, "~/relocalize", self._on_relocalize),
                          self.node.create_service(SetBool, "~/set_enabled", self._on_set_enabled)]

    def destroy(self) -> None:
        for s in self._services:
            self.node.destroy_service(s)
        self._services = []
        if self._pub is not None:
            self.node.destroy_publisher(self._pub)
            self._pub = None

    # ---- services (executor thread) --------------------------------------------------------
    def _on_relocalize(self, request, response):
        if not self.node.is_active():
            response.success, response.message = False, "not active: activate the node first"
            return response
        if not self.enabled:
            response.success, response.message = False, "localization is paused (~/set_enabled false)"
            return response
        with self._lock:
            self._armed = True
        for hook in self.on_relocalize:
            hook()
        response.success = True
        response.message = (f"armed: the next pose with confidence >= {self.min_confidence:g} in scene "
                            f"is published on {self.node.resolve_topic_name(self.topic)}")
        self.node.get_logger().info(f"relocalize: {response.message}")
        return response

    def _on_set_enabled(self, request, response):
        self.enabled = bool(request.data)
        for hook in self.on_set_enabled:
            hook(self.enabled)
        response.success = True
        response.message = "localization resumed" if self.enabled else "localization paused"
        self.node.get_logger().info(response.message)
        return response

    # ---- worker thread ---------------------------------------------------------------------
    def offer(self, msg, position, confident: bool) -> bool:
        """Called for every published pose (``msg``: the PoseWithCovarianceStamped of pae/pose_with_covariance,
        ``position`` (3,) m). Publishes it on the initial-pose topic when armed or when the jump rule
        fires, and ``confident``. Returns whether it published."""
        if not confident or self._pub is None or msg is None:
            return False
        p = np.asarray(position, np.float64)
        with self._lock:
            fire = self._armed
            if not fire and self.auto:
                fire = self._last_position is None or float(np.linalg.norm(p - self._last_position)) > self.jump_m
            if not fire:
                return False
            self._armed = False
            self._last_position = p
            self._sent.append((cv.stamp_ns(msg.header.stamp), p.copy()))
        self._pub.publish(msg)
        self.published += 1
        return True

    def is_own(self, stamp_ns: int, position) -> bool:
        """Whether a message on the initial-pose topic (stamp ns, position m) is one this node sent."""
        p = np.asarray(position, np.float64)
        with self._lock:
            return any(s == stamp_ns and np.array_equal(q, p) for s, q in self._sent)
