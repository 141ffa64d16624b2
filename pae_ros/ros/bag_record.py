"""``pae bag record``: record topics to a rosbag2 through rclpy (a ``ros2 bag record`` stand-in).

Each requested topic is subscribed as soon as a publisher makes its type discoverable (the
graph is polled every ``--discovery-period`` s), with raw (serialized) subscriptions, so the
bag stores the CDR bytes exactly as received. The requested QoS follows the publishers like
rosbag2 does (reliable only when all publishers are reliable, transient local only when all
are), keep_last 100; the publishers' offered QoS is stored in the bag's metadata. The log time
of a message is its receive time (ns since the Unix epoch, system clock).

Stops on SIGINT / SIGTERM, after ``--duration`` s, after ``--max-messages`` messages, or when
no message arrived for ``--idle-timeout`` s after the first one; the bag is always closed
properly (storage index and ``metadata.yaml`` written), exit 0.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path

from ..bags.io import BagError, BagWriter, prepare_target, typestore
from .bag_play import import_msg_class

DEFAULT_TOPICS = ["/pae/pose", "/pae/pose_with_covariance", "/pae/filtered_pose", "/pae/apr_pose",
                  "/ground_truth/pose", "/tf", "/diagnostics"]
RECORD_DEPTH = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output bag directory (must not exist unless --force)")
    parser.add_argument("--topics", nargs="+", default=list(DEFAULT_TOPICS), metavar="TOPIC",
                        help="topics to record")
    parser.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"), help="rosbag2 storage plugin")
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    parser.add_argument("--max-messages", type=int, default=None, metavar="N",
                        help="stop after N messages (all topics together)")
    parser.add_argument("--idle-timeout", type=float, default=None, metavar="S",
                        help="stop when no message arrived for S seconds (counted from the first message)")
    parser.add_argument("--discovery-period", type=float, default=0.1, metavar="S",
                        help="how often to look for publishers of topics not yet subscribed")
    parser.add_argument("--force", action="store_true", help="replace an existing bag at --out")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def qos_to_bag(profile):
    """A ``rosbags`` Qos from an rclpy ``QoSProfile`` (enum values are the rmw ones in both)."""
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)

    def dur(d) -> QosTime:
        return QosTime(*divmod(int(d.nanoseconds), 1_000_000_000))

    def enum(cls, value, unknown):
        try:
            return cls(int(value))
        except ValueError:
            return unknown

    return Qos(
        enum(QosHistory, profile.history, QosHistory.UNKNOWN), int(profile.depth),
        enum(QosReliability, profile.reliability, QosReliability.UNKNOWN),
        enum(QosDurability, profile.durability, QosDurability.UNKNOWN),
        dur(profile.deadline), dur(profile.lifespan),
        enum(QosLiveliness, profile.liveliness, QosLiveliness.UNKNOWN),
        dur(profile.liveliness_lease_duration), bool(profile.avoid_ros_namespace_conventions))


def request_qos(offered: list):
    """Subscription QoS compatible with every offered profile (rclpy QoSProfile list)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliable = bool(offered) and all(p.reliability == ReliabilityPolicy.RELIABLE for p in offered)
    latched = bool(offered) and all(p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in offered)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=RECORD_DEPTH,
                      reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


class _Recorder:
    """The recording node's subscriptions into ``bag``: topics subscribed as they are discovered."""

    def __init__(self, node, bag, topics: list[str], log) -> None:
        self.node = node
        self.bag = bag
        self.topics = topics
        self.log = log
        self.subs: dict = {}
        self.skipped: set[str] = set()
        self.total = 0
        self.last: float | None = None  # monotonic s of the last message

    def _callback(self, topic: str):
        def callback(data, info):
            t_ns = int(info.get("received_timestamp") or 0) if isinstance(info, dict) else 0
            if t_ns <= 0:
                t_ns = time.time_ns()
            self.bag.write(topic, t_ns, data)
            self.total += 1
            self.last = time.monotonic()
        return callback

    def discover(self) -> None:
        """Subscribe every pending topic that has a publisher now."""
        pending = [t for t in self.topics if t not in self.subs and t not in self.skipped]
        if not pending:
            return
        graph = dict(self.node.get_topic_names_and_types())
        for topic in pending:
            types = graph.get(topic)
            if types:
                self._subscribe(topic, types)

    def _subscribe(self, topic: str, types: list[str]) -> None:
        msgtype = types[0]
        if len(types) > 1:
            self.log(f"{topic} has several types {types}; recording {msgtype}")
        try:
            cls = import_msg_class(msgtype)
        except (ImportError, AttributeError, ValueError):
            self.log(f"skipping {topic}: message type {msgtype} is not installed for rclpy")
            self.skipped.add(topic)
            return
        if msgtype not in typestore().types:
            self.log(f"skipping {topic}: message type {msgtype} is unknown to the rosbags Kilted store")
            self.skipped.add(topic)
            return
        infos = self.node.get_publishers_info_by_topic(topic)
        offered = [i.qos_profile for i in infos]
        if not offered:
            return
        hashes = {str(i.topic_type_hash) for i in infos} - {"", "None"}
        if hashes and typestore().hash_rihs01(msgtype) not in hashes:
            self.log(f"warning: {topic}: publisher type hash {sorted(hashes)} differs from the Kilted "
                     f"definition of {msgtype}; the bag stores the Kilted definition")
        self.bag.add_topic(topic, msgtype, [qos_to_bag(p) for p in offered])
        qos = request_qos(offered)
        self.subs[topic] = self.node.create_subscription(cls, topic, self._callback(topic), qos, raw=True)
        self.log(f"subscribed {topic} [{msgtype}] ({qos.reliability.name.lower()}, "
                 f"{qos.durability.name.lower()})")

    def run(self, executor, args: argparse.Namespace, stop: dict) -> None:
        """Spin and discover until ``stop["reason"]`` is set (signal, duration, count, idle)."""
        t0 = time.monotonic()
        next_discovery = t0
        while stop["reason"] is None:
            now = time.monotonic()
            if now >= next_discovery:
                self.discover()
                next_discovery = now + args.discovery_period
            executor.spin_once(timeout_sec=min(0.05, args.discovery_period))
            stop["reason"] = stop["reason"] or self._stop_reason(args, time.monotonic() - t0)  # a signal may have set it
        for sub in self.subs.values():
            self.node.destroy_subscription(sub)

    def _stop_reason(self, args: argparse.Namespace, elapsed_s: float) -> str | None:
        if args.duration is not None and elapsed_s >= args.duration:
            return f"duration {args.duration:g} s"
        if args.max_messages is not None and self.total >= args.max_messages:
            return f"{self.total} messages"
        if args.idle_timeout is not None and self.last is not None and time.monotonic() - self.last >= args.idle_timeout:
            return f"idle for {args.idle_timeout:g} s"
        return None


def _open_bag(out: Path, args: argparse.Namespace):
    """A new, open BagWriter at ``out`` (replacing it with ``--force``), or None after printing why."""
    try:
        prepare_target(out, args.force)
    except BagError as exc:
        print(f"pae bag record: error: {exc}", file=sys.stderr)
        return None
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    try:
        bag = BagWriter(out, args.storage)
        bag.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types
        print(f"pae bag record: error: cannot create {out}: {exc}", file=sys.stderr)
        return None
    return bag


def run(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        if not args.quiet:
            print(f"pae bag record: {msg}", file=sys.stderr, flush=True)

    out = Path(args.out)
    topics = list(dict.fromkeys(args.topics))
    bag = _open_bag(out, args)
    if bag is None:
        return 1
    stop = {"reason": None}

    def _on_signal(signum, frame):  # noqa: ARG001
        stop["reason"] = signal.Signals(signum).name

    # From here on SIGINT / SIGTERM only set the stop flag, and the bag is closed in `finally`.
    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    rclpy = node = recorder = None
    try:
        import rclpy  # here, not at import: the `pae` command imports this module to build its parser
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        node = rclpy.create_node("pae_bag_record")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        recorder = _Recorder(node, bag, topics, log)
        log(f"recording {', '.join(topics)} to {out}")
        recorder.run(executor, args, stop)
        return 0
    except BagError as exc:
        print(f"pae bag record: error: {exc}", file=sys.stderr)
        return 1
    finally:
        # Always close the bag: index + metadata.yaml, so every message written stays readable.
        try:
            bag.close()
        finally:
            counts = ", ".join(f"{t}: {n}" for t, n in bag.counts.items()) or "no topics"
            total = recorder.total if recorder is not None else 0
            log(f"stopped ({stop['reason'] or 'error'}); wrote {out} with {total} messages ({counts})")
            if node is not None:
                node.destroy_node()
            if rclpy is not None:
                rclpy.try_shutdown()
            for s, h in old.items():
                signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m pae_ros.ros.bag_record``), same as ``pae bag record``."""
    from ..cli import standalone_main  # the CLI imports this module to build its parser

    return standalone_main(__name__ if __name__ != "__main__" else __spec__.name, argv)


if __name__ == "__main__":
    sys.exit(main())
