"""``pae bag play``: replay a rosbag2 through rclpy at bag timing (a ``ros2 bag play`` stand-in).

Messages are published as the **serialized CDR bytes stored in the bag** (``Publisher.publish``
of ``bytes``), so subscribers receive them byte for byte as recorded. Timing follows the bag's
log times (ns): message ``i`` goes out at ``t_wall0 + (t_i - t_0) / rate``. Each topic is
published with the QoS the bag recorded as offered (reliability, durability, depth, finite
deadline/lifespan), else reliable / volatile / keep_last 10. ``--clock`` publishes
``rosgraph_msgs/Clock`` on ``/clock`` with the bag time (at every message and at
``--clock-hz`` in between), for nodes run with ``use_sim_time``.

Exits 0 after the last message (after waiting up to ``--ack-timeout`` s for reliable
subscribers to acknowledge), 1 on errors, 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import sys

#: QoS used where the bag has no offered QoS for a topic
DEFAULT_DEPTH = 10


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
    import importlib

    parts = msgtype.split("/")
    if len(parts) == 2:  # "pkg/Name" (ROS 1 style)
        parts = [parts[0], "msg", parts[1]]
    pkg, sub, name = parts
    return getattr(importlib.import_module(f"{pkg}.{sub}"), name)


def qos_from_bag(profiles: list):
    """rclpy ``QoSProfile`` to offer for a topic, from the bag's offered QoS (``rosbags`` Qos list).

    Like rosbag2: when all recorded publishers agree on reliability and durability, offer that
    (depth from a keep_last profile, else 10; finite deadline and lifespan copied); otherwise, or
    without recorded QoS, reliable / volatile / keep_last 10.
    """
    from rclpy.duration import Duration
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    from ..bags.io import is_infinite

    default = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=DEFAULT_DEPTH,
                         reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
    if not profiles:
        return default
    rel = {p.reliability.name for p in profiles}
    dur = {p.durability.name for p in profiles}
    if len(rel) != 1 or len(dur) != 1:
        return default
    rel_name, dur_name = rel.pop(), dur.pop()
    first = profiles[0]
    depth = int(first.depth) if first.history.name == "KEEP_LAST" and int(first.depth) > 0 else DEFAULT_DEPTH
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


def run(args: argparse.Namespace) -> int:
    import signal
    import time

    from ..bags.io import BagError, BagReader

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"pae bag play: {msg}", file=sys.stderr, flush=True)

    if not args.rate > 0:
        print("pae bag play: error: --rate must be > 0", file=sys.stderr)
        return 2
    try:
        waits = _parse_waits(args.wait_subscribers)
        with BagReader(args.bag) as reader:
            topics = reader.topics()
    except (BagError, ValueError) as exc:
        print(f"pae bag play: error: {exc}", file=sys.stderr)
        return 1
    selected = list(topics) if args.topics is None else list(dict.fromkeys(args.topics))
    missing = [t for t in selected if t not in topics]
    if missing:
        print(f"pae bag play: error: topic(s) not in the bag: {', '.join(missing)} "
              f"(bag has {', '.join(sorted(topics))})", file=sys.stderr)
        return 1

    import rclpy
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions

    # Our own SIGTERM handling (SIGINT stays Python's KeyboardInterrupt): stop cleanly.
    def _on_term(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, _on_term)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = None
    try:
        node = rclpy.create_node("pae_bag_play")
        pubs = {}
        for topic in selected:
            info = topics[topic]
            try:
                cls = import_msg_class(info.msgtype)
            except (ImportError, AttributeError, ValueError):
                log(f"skipping {topic}: message type {info.msgtype} is not installed for rclpy")
                continue
            qos = qos_from_bag(info.qos)
            pubs[topic] = node.create_publisher(cls, topic, qos)
            log(f"{topic} [{info.msgtype}] {info.count} msgs, {qos.reliability.name.lower()}, "
                f"{qos.durability.name.lower()}, depth {qos.depth}")
        if not pubs:
            print("pae bag play: error: nothing to play", file=sys.stderr)
            return 1
        clock_pub = None
        if args.clock:
            from rosgraph_msgs.msg import Clock

            clock_pub = node.create_publisher(Clock, "/clock", QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.VOLATILE))
        all_pubs = dict(pubs, **({"/clock": clock_pub} if clock_pub is not None else {}))
        for topic, n in waits:
            if topic not in all_pubs:
                print(f"pae bag play: error: --wait-subscribers {topic}: not a played topic", file=sys.stderr)
                return 1
        deadline = time.monotonic() + args.wait_timeout
        for topic, n in waits:
            while all_pubs[topic].get_subscription_count() < n:
                if time.monotonic() > deadline:
                    print(f"pae bag play: error: {topic} has {all_pubs[topic].get_subscription_count()} "
                          f"subscriber(s) after {args.wait_timeout:g} s, wanted {n}", file=sys.stderr)
                    return 1
                time.sleep(0.02)
            log(f"{topic}: {all_pubs[topic].get_subscription_count()} subscriber(s)")
        if args.start_delay > 0:
            time.sleep(args.start_delay)

        def publish_clock(t_ns: int) -> None:
            from rosgraph_msgs.msg import Clock

            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(int(t_ns), 1_000_000_000)
            clock_pub.publish(msg)

        clock_period = 1.0 / args.clock_hz if args.clock and args.clock_hz > 0 else None
        total = 0
        loop_no = 0
        t_start = time.monotonic()
        while True:
            loop_no += 1
            t_wall0 = None
            t_bag0 = None
            with BagReader(args.bag) as reader:
                for topic, _msgtype, t_ns, data in reader.messages(list(pubs)):
                    if t_wall0 is None:
                        t_wall0, t_bag0 = time.monotonic(), t_ns
                    target = t_wall0 + (t_ns - t_bag0) / 1e9 / args.rate
                    while True:
                        now = time.monotonic()
                        if now >= target:
                            break
                        step = target - now
                        if clock_period is not None:
                            step = min(step, clock_period)
                            publish_clock(t_bag0 + int((now - t_wall0) * args.rate * 1e9))
                        time.sleep(step)
                    if clock_pub is not None:
                        publish_clock(t_ns)
                    pubs[topic].publish(data)
                    total += 1
            if not args.loop:
                break
            log(f"loop {loop_no} done, {total} messages so far")
        from rclpy.duration import Duration

        for pub in all_pubs.values():
            pub.wait_for_all_acked(Duration(seconds=args.ack_timeout))
        log(f"played {total} messages on {len(pubs)} topic(s) in {time.monotonic() - t_start:.2f} s")
        return 0
    except BagError as exc:
        print(f"pae bag play: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        signal.signal(signal.SIGTERM, old_term)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m pae_ros.ros.bag_play``), same as ``pae bag play``."""
    from ..cli import standalone_main

    return standalone_main(__name__ if __name__ != "__main__" else __spec__.name, argv)


if __name__ == "__main__":
    sys.exit(main())
