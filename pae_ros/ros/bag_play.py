"""``pae bag play``: replay a rosbag2 through rclpy at bag timing (a ``ros2 bag play`` stand-in).

Messages are published as the **serialized CDR bytes stored in the bag** (``Publisher.publish``
of ``bytes``), so subscribers receive them byte for byte as recorded. Timing follows the bag's
log times (ns): message ``i`` goes out at ``t_wall0 + (t_i - t_0) / rate``. Each topic is
published with the QoS the bag recorded as offered (reliability, durability, depth, finite
deadline/lifespan), else reliable / volatile / keep_last 10; ``/tf_static`` without recorded QoS
is reliable / transient local with a depth holding all its messages, as tf2's static broadcaster
offers it (a volatile one never reaches tf2 listeners, whose subscription is transient local).
``--clock`` publishes ``rosgraph_msgs/Clock`` on ``/clock`` with the bag time (at every message
and at ``--clock-hz`` in between), for nodes run with ``use_sim_time``.

Exits 0 after the last message (after waiting up to ``--ack-timeout`` s for reliable
subscribers to acknowledge), 1 on errors, 130 on Ctrl-C.

rclpy is imported when playing starts, not at import: the ``pae`` command imports every
subcommand module to build its parser.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time

from ..bags.io import BagError, BagReader, is_infinite

#: QoS used where the bag has no offered QoS for a topic
DEFAULT_DEPTH = 10
#: the static transforms topic (played transient local unless the bag says otherwise)
TF_STATIC = "/tf_static"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="rosbag2 directory (or .mcap / .db3 file)")
    parser.add_argument("--rate", type=float, default=1.0, metavar="FACTOR",
                        help="playback speed factor (2 = twice as fast)")
    parser.add_argument("--loop", action="store_true", help="replay forever (until Ctrl-C)")
    parser.add_argument("--topics", nargs="+", default=None, metavar="TOPIC",
                        help="play only these topics (none given: all)")
    parser.add_argument("--clock", action="store_true", help="publish bag time on /clock (rosgraph_msgs/Clock)")
    parser.add_argument("--clock-hz", type=float, default=100.0, help="/clock rate between messages with --clock")
    parser.add_argument("--start-delay", type=float, default=0.0, metavar="S",
                        help="seconds to wait after creating the publishers (discovery) before playing")
    parser.add_argument("--wait-subscribers", action="append", default=[], metavar="TOPIC:N",
                        help="before playing, wait until TOPIC has at least N subscribers (repeatable)")
    parser.add_argument("--wait-timeout", type=float, default=30.0, metavar="S",
                        help="give up (exit 1) when --wait-subscribers is not met within S seconds")
    parser.add_argument("--ack-timeout", type=float, default=5.0, metavar="S",
                        help="at the end, wait up to S seconds for reliable subscribers to acknowledge")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def import_msg_class(msgtype: str):
    """The rclpy message class of ``pkg/msg/Name`` (raises ImportError / AttributeError)."""
    parts = msgtype.split("/")
    if len(parts) == 2:  # "pkg/Name" (ROS 1 style)
        parts = [parts[0], "msg", parts[1]]
    pkg, sub, name = parts
    return getattr(importlib.import_module(f"{pkg}.{sub}"), name)


def qos_from_bag(profiles: list, topic: str | None = None, count: int = 0):
    """rclpy ``QoSProfile`` to offer for ``topic`` (``count`` messages in the bag), from the bag's
    offered QoS (``rosbags`` Qos list).

    Like rosbag2: when all recorded publishers agree on reliability and durability, offer that
    (depth from a keep_last profile, else 10; finite deadline and lifespan copied); otherwise, or
    without recorded QoS, reliable / volatile / keep_last 10. ``/tf_static``: reliable /
    transient local without an agreed recorded profile, and a transient-local depth of at least
    ``count`` (a late subscriber gets every static message, not only the last).
    """
    from rclpy.duration import Duration
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    static = topic == TF_STATIC
    default = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(DEFAULT_DEPTH, count) if static else DEFAULT_DEPTH,
                         reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL if static else DurabilityPolicy.VOLATILE)
    rel = {p.reliability.name for p in profiles}
    dur = {p.durability.name for p in profiles}
    if not profiles or len(rel) != 1 or len(dur) != 1:
        return default
    rel_name, dur_name = rel.pop(), dur.pop()
    first = profiles[0]
    depth = int(first.depth) if first.history.name == "KEEP_LAST" and int(first.depth) > 0 else DEFAULT_DEPTH
    if static and dur_name == "TRANSIENT_LOCAL":
        depth = max(depth, count)
    qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth,
        reliability=ReliabilityPolicy.BEST_EFFORT if rel_name == "BEST_EFFORT" else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if dur_name == "TRANSIENT_LOCAL" else DurabilityPolicy.VOLATILE)
    if not is_infinite(*first.deadline):
        qos.deadline = Duration(seconds=first.deadline.sec, nanoseconds=first.deadline.nsec)
    if not is_infinite(*first.lifespan):
        qos.lifespan = Duration(seconds=first.lifespan.sec, nanoseconds=first.lifespan.nsec)
    return qos


def _parse_waits(items: list[str]) -> list[tuple[str, int]]:
    out = []
    for item in items:
        topic, sep, n = item.rpartition(":")
        if not sep or not topic:
            topic, n = item, "1"
        try:
            count = int(n)
        except ValueError:
            raise ValueError(f"--wait-subscribers expects TOPIC:N, got {item!r}") from None
        out.append((topic, count))
    return out


class _Failed(Exception):
    """A reason to stop with exit code 1 (the message is printed)."""


def _select_topics(args: argparse.Namespace) -> tuple[dict, list[str], list[tuple[str, int]]]:
    """(the bag's topics, the ones to play, the --wait-subscribers pairs); raises :class:`_Failed`."""
    try:
        waits = _parse_waits(args.wait_subscribers)
        with BagReader(args.bag) as reader:
            topics = reader.topics()
    except (BagError, ValueError) as exc:
        raise _Failed(str(exc)) from None
    selected = list(topics) if args.topics is None else list(dict.fromkeys(args.topics))
    missing = [t for t in selected if t not in topics]
    if missing:
        raise _Failed(f"topic(s) not in the bag: {', '.join(missing)} (bag has {', '.join(sorted(topics))})")
    return topics, selected, waits


def _create_publishers(node, topics: dict, selected: list[str], log) -> dict:
    """topic -> publisher of every selected topic whose message type rclpy has."""
    pubs = {}
    for topic in selected:
        info = topics[topic]
        try:
            cls = import_msg_class(info.msgtype)
        except (ImportError, AttributeError, ValueError):
            log(f"skipping {topic}: message type {info.msgtype} is not installed for rclpy")
            continue
        qos = qos_from_bag(info.qos, topic, info.count)
        pubs[topic] = node.create_publisher(cls, topic, qos)
        log(f"{topic} [{info.msgtype}] {info.count} msgs, {qos.reliability.name.lower()}, "
            f"{qos.durability.name.lower()}, depth {qos.depth}")
    if not pubs:
        raise _Failed("nothing to play")
    return pubs


def _wait_for_subscribers(all_pubs: dict, waits: list[tuple[str, int]], timeout_s: float, log) -> None:
    """Block until every ``(topic, n)`` has n subscribers; raises :class:`_Failed` after ``timeout_s``."""
    for topic, _n in waits:
        if topic not in all_pubs:
            raise _Failed(f"--wait-subscribers {topic}: not a played topic")
    deadline = time.monotonic() + timeout_s
    for topic, n in waits:
        while all_pubs[topic].get_subscription_count() < n:
            if time.monotonic() > deadline:
                raise _Failed(f"{topic} has {all_pubs[topic].get_subscription_count()} subscriber(s) after "
                              f"{timeout_s:g} s, wanted {n}")
            time.sleep(0.02)
        log(f"{topic}: {all_pubs[topic].get_subscription_count()} subscriber(s)")


class _Clock:
    """``/clock`` publishing (``--clock``): bag time ns at every message and every ``period`` s."""

    def __init__(self, node, hz: float) -> None:
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock

        self._cls = Clock
        self.pub = node.create_publisher(Clock, "/clock", QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE))
        self.period = 1.0 / hz if hz > 0 else None

    def publish(self, t_ns: int) -> None:
        msg = self._cls()
        msg.clock.sec, msg.clock.nanosec = divmod(int(t_ns), 1_000_000_000)
        self.pub.publish(msg)


def _play_once(bag: str, pubs: dict, rate: float, clock: _Clock | None) -> int:
    """One pass over the bag at ``rate`` x bag timing; returns the messages published."""
    total = 0
    t_wall0 = t_bag0 = None
    with BagReader(bag) as reader:
        for topic, _msgtype, t_ns, data in reader.messages(list(pubs)):
            if t_wall0 is None:
                t_wall0, t_bag0 = time.monotonic(), t_ns
            target = t_wall0 + (t_ns - t_bag0) / 1e9 / rate
            while True:
                now = time.monotonic()
                if now >= target:
                    break
                step = target - now
                if clock is not None and clock.period is not None:
                    step = min(step, clock.period)
                    clock.publish(t_bag0 + int((now - t_wall0) * rate * 1e9))
                time.sleep(step)
            if clock is not None:
                clock.publish(t_ns)
            pubs[topic].publish(data)
            total += 1
    return total


def _play(node, args: argparse.Namespace, topics: dict, selected: list[str], waits, log) -> None:
    """Publishers, the subscriber wait, every pass over the bag and the final acknowledgement wait."""
    from rclpy.duration import Duration

    pubs = _create_publishers(node, topics, selected, log)
    clock = _Clock(node, args.clock_hz) if args.clock else None
    all_pubs = dict(pubs, **({"/clock": clock.pub} if clock is not None else {}))
    _wait_for_subscribers(all_pubs, waits, args.wait_timeout, log)
    if args.start_delay > 0:
        time.sleep(args.start_delay)
    total, loop_no, t_start = 0, 0, time.monotonic()
    while True:
        loop_no += 1
        total += _play_once(args.bag, pubs, args.rate, clock)
        if not args.loop:
            break
        log(f"loop {loop_no} done, {total} messages so far")
    for pub in all_pubs.values():
        pub.wait_for_all_acked(Duration(seconds=args.ack_timeout))
    log(f"played {total} messages on {len(pubs)} topic(s) in {time.monotonic() - t_start:.2f} s")


def run(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        if not args.quiet:
            print(f"pae bag play: {msg}", file=sys.stderr, flush=True)

    if not args.rate > 0:
        print("pae bag play: error: --rate must be > 0", file=sys.stderr)
        return 2
    try:
        topics, selected, waits = _select_topics(args)
    except _Failed as exc:
        print(f"pae bag play: error: {exc}", file=sys.stderr)
        return 1
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    # Our own SIGTERM handling (SIGINT stays Python's KeyboardInterrupt): stop cleanly.
    def _on_term(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, _on_term)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        node = rclpy.create_node("pae_bag_play")
        _play(node, args, topics, selected, waits, log)
        return 0
    except (BagError, _Failed) as exc:
        print(f"pae bag play: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        signal.signal(signal.SIGTERM, old_term)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m pae_ros.ros.bag_play``), same as ``pae bag play``."""
    from ..cli import standalone_main  # the CLI imports this module to build its parser

    return standalone_main(__name__ if __name__ != "__main__" else __spec__.name, argv)


if __name__ == "__main__":
    sys.exit(main())
