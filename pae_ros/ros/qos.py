"""QoS profiles of the node, and the ``image_qos`` choice.

* TF as tf2_ros does it: ``/tf`` depth 100, reliable, volatile; ``/tf_static`` reliable,
  transient local (publisher depth 1 with every static transform in one message; listener depth 100).
  The node also listens to ``/tf_static`` volatile (:data:`TF_STATIC_VOLATILE_SUB_QOS`): a volatile
  publisher (another tool's bag player) cannot match a transient-local subscription.
* Images: keep-last, small depth (the node keeps only the newest frame anyway). Reliability
  is chosen by ``image_qos``: a best-effort subscription matches every publisher but loses most
  large frames that travel as fragmented UDP; a reliable one receives them all but does not match
  a best-effort publisher. ``auto`` therefore matches the publishers' reliability
  (``get_publishers_info_by_topic``): best effort if any publisher is best effort, else reliable.
* Poses: reliable, transient local, depth 1 (as AMCL's ``amcl_pose``: a late joiner gets the last
  pose; :func:`pose_qos`, parameter ``pose_transient_local``), or volatile depth 10.
* Other outputs (diagnostics, reconstruction, ``/initialpose``): reliable, volatile, depth 10.
"""
from __future__ import annotations

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)

IMAGE_QOS_MODES = ("auto", "reliable", "best_effort")

#: subscription depth for images (the slot after the callback keeps one; this only absorbs
#: executor jitter, so nothing old piles up in the reader)
IMAGE_DEPTH = 5

TF_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
TF_STATIC_PUB_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                               reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.TRANSIENT_LOCAL)
TF_STATIC_SUB_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                               reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.TRANSIENT_LOCAL)
TF_STATIC_VOLATILE_SUB_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                                        reliability=ReliabilityPolicy.RELIABLE,
                                        durability=DurabilityPolicy.VOLATILE)
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                        reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


def image_profile(reliability: str) -> QoSProfile:
    """Keep-last :data:`IMAGE_DEPTH`, volatile, ``reliable`` or ``best_effort``."""
    rel = ReliabilityPolicy.BEST_EFFORT if reliability == "best_effort" else ReliabilityPolicy.RELIABLE
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=IMAGE_DEPTH, reliability=rel,
                      durability=DurabilityPolicy.VOLATILE)


def choose_image_reliability(mode: str, publisher_reliabilities: list) -> tuple[str, str]:
    """(``"reliable"`` | ``"best_effort"``, why) for ``image_qos`` = ``mode``.

    ``publisher_reliabilities``: the ``qos_profile.reliability`` of every publisher of the
    image topic now (``ReliabilityPolicy`` values). ``auto`` with no publisher yet picks
    reliable (the node re-checks when publishers appear).
    """
    if mode in ("reliable", "best_effort"):
        return mode, f"image_qos={mode} (set by parameter)"
    if not publisher_reliabilities:
        return "reliable", "image_qos=auto: no publisher yet, reliable until one appears"
    if any(r == ReliabilityPolicy.BEST_EFFORT for r in publisher_reliabilities):
        return "best_effort", (f"image_qos=auto: matching {len(publisher_reliabilities)} publisher(s), "
                               "at least one best effort")
    return "reliable", f"image_qos=auto: matching {len(publisher_reliabilities)} reliable publisher(s)"


def pose_qos(transient_local: bool) -> QoSProfile:
    """Pose outputs: reliable; transient local depth 1 (as AMCL's ``amcl_pose``: a late joiner gets
    the last pose) or volatile depth 10."""
    if transient_local:
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)
    return OUTPUT_QOS


#: ``/initialpose``: reliable, volatile, depth 10 (what AMCL and RViz use)
INITIAL_POSE_QOS = OUTPUT_QOS
