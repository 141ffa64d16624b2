"""The node's TF input: ``/tf`` and ``/tf_static`` into a :class:`pae_ros.ros.tf_buffer.TfBuffer`.

``/tf_static`` is subscribed twice: transient local (as tf2's listener: a static broadcaster's
transforms arrive whenever the node starts) and volatile (a publisher offering volatile
durability, e.g. another tool's bag player, cannot match a transient-local subscription; this one
receives what it sends from then on). A transform arriving on both is stored once. A publisher
whose QoS the transient-local subscription refuses is named (node, durability, reliability) in
:attr:`TfListener.incompatible` and counted (``tf_static_incompatible_qos``): the node's base-frame
warning and ``/diagnostics`` then give it as the likely cause of a missing camera mount.
"""
from __future__ import annotations

from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy, qos_policy_name_from_kind
from tf2_msgs.msg import TFMessage

from pae_ros.ros import qos
from pae_ros.ros.conversions import transform_from_msg
from pae_ros.ros.tf_buffer import TfBuffer


class TfListener:
    """Subscriptions of ``node`` feeding :attr:`buffer`; ``stats`` (NodeStats) counts ignored
    transforms, ``log`` is the node's throttled logger."""

    def __init__(self, node, history_s: float, stats, log) -> None:
        self.node = node
        self.buffer = TfBuffer(history_s)
        self.stats = stats
        self.log = log
        self._subs: list = []
        self._static_seen: dict[str, tuple] = {}  # child -> what was stored (duplicate check)
        self._refused_policy: str | None = None  # the QoS policy of the last refused /tf_static publisher

    def subscribe(self) -> None:
        node = self.node
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_static)
        self._subs = [
            node.create_subscription(TFMessage, "/tf", self._on_tf, qos.TF_QOS),
            node.create_subscription(TFMessage, "/tf_static", self._on_static, qos.TF_STATIC_SUB_QOS,
                                     event_callbacks=events),
            node.create_subscription(TFMessage, "/tf_static", self._on_static, qos.TF_STATIC_VOLATILE_SUB_QOS)]

    def unsubscribe(self) -> None:
        for s in self._subs:
            self.node.destroy_subscription(s)
        self._subs = []

    def _on_tf(self, msg) -> None:
        for t in msg.transforms:
            self._store(t, False)

    def _on_static(self, msg) -> None:
        for t in msg.transforms:
            self._store(t, True)

    def _store(self, t, static: bool) -> None:
        try:
            parent, child, tr, q, ns = transform_from_msg(t)
            if static:
                key = (parent, ns, tr.tobytes(), q.tobytes())
                if self._static_seen.get(child) == key:
                    return  # the same static transform through the other /tf_static subscription
            if not self.buffer.set_transform(parent, child, tr, q, ns, static):
                self.stats.count("tf_ignored")
            elif static:
                self._static_seen[child] = key
        except Exception:  # malformed transform: ignore it
            self.stats.count("tf_ignored")

    @property
    def incompatible(self) -> str | None:
        """A sentence naming the /tf_static publisher(s) the transient-local subscription refused
        (node, durability, reliability, from the graph now), or None when none was."""
        if self._refused_policy is None:
            return None
        offenders = [f"{i.node_namespace.rstrip('/')}/{i.node_name} ({i.qos_profile.durability.name.lower()}, "
                     f"{i.qos_profile.reliability.name.lower()})"
                     for i in self.node.get_publishers_info_by_topic("/tf_static")
                     if i.qos_profile.durability != DurabilityPolicy.TRANSIENT_LOCAL
                     or i.qos_profile.reliability != ReliabilityPolicy.RELIABLE]
        return (f"/tf_static publisher {', '.join(offenders) or '(gone)'} offers a QoS the transient-local "
                f"/tf_static subscription refuses (policy {self._refused_policy}): static transforms it sent "
                "before this node subscribed are lost; publish /tf_static reliable and transient local, as "
                "tf2's static broadcaster does")

    def _on_incompatible_static(self, event) -> None:
        n = self.stats.count("tf_static_incompatible_qos")
        try:
            self._refused_policy = qos_policy_name_from_kind(event.last_policy_kind)
        except Exception:
            self._refused_policy = str(event.last_policy_kind)
        self.log("tf_static_qos", f"{self.incompatible} [{n} so far]")
