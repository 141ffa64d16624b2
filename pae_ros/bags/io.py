"""Reading and writing rosbag2 directories with ``rosbags`` and the ROS 2 Kilted type store.

No rclpy here: these helpers run on machines without ROS. Timestamps are integer nanoseconds
since the Unix epoch; message payloads are CDR bytes exactly as stored (with the 4-byte
encapsulation header), so a bag can be replayed byte for byte.

Bags are written in rosbag2 format version 9 (Jazzy/Kilted), ``mcap`` or ``sqlite3`` storage,
with ``offered_qos_profiles`` in the version-9 YAML form (``history: keep_last``,
``reliability: reliable`` ...; infinite durations as ``RMW_DURATION_INFINITE`` =
``{sec: 9223372036, nsec: 854775807}``, what ``ros2 bag record`` writes on Jazzy and later).
"""
from __future__ import annotations

import contextlib
import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

STORAGES = ("mcap", "sqlite3")
BAG_VERSION = 9

#: RMW_DURATION_INFINITE as (sec, nsec), the "no deadline / lifespan / lease" value
INFINITE_DURATION = (9223372036, 854775807)
#: infinity spellings of older bags (Foxy Fast DDS / Connext / Cyclone), read as infinite too
_LEGACY_INFINITE = {(2147483647, 4294967295), (2147483647, 2147483647), (9223372036, 854775807)}


class BagError(Exception):
    """A bag cannot be read or written (missing, exists already, unknown topic or type)."""


@functools.lru_cache(maxsize=1)
def typestore():
    """The ROS 2 Kilted type store of ``rosbags`` (message classes, CDR (de)serialisation)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def is_infinite(sec: int, nsec: int) -> bool:
    """True for any spelling of an infinite QoS duration (also 0/0 = unspecified)."""
    return (int(sec), int(nsec)) in _LEGACY_INFINITE or (int(sec), int(nsec)) == (0, 0)


def make_qos(depth: int = 10, reliable: bool = True, transient_local: bool = False):
    """A ``rosbags`` QoS profile: keep_last ``depth``, reliable/best-effort, volatile/transient local.

    Deadline, lifespan and liveliness lease are infinite, liveliness automatic: the profile an
    rclcpp/rclpy publisher with default settings offers.
    """
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                    QosReliability, QosTime)

    inf = QosTime(*INFINITE_DURATION)
    return Qos(
        QosHistory.KEEP_LAST, int(depth),
        QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        inf, inf, QosLiveliness.AUTOMATIC, inf, False)


def check_storage(storage: str) -> str:
    if storage not in STORAGES:
        raise BagError(f"unknown storage {storage!r}; choose one of {', '.join(STORAGES)}")
    return storage


def prepare_target(path: Path, force: bool) -> None:
    """Refuse an existing ``path`` unless ``force`` (then it is removed only after a good write)."""
    if (path.exists() or path.is_symlink()) and not force:
        raise BagError(f"{path} exists already; pass --force to overwrite it")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def serialize(msg, msgtype: str) -> bytes:
    """CDR bytes (little endian, with encapsulation header) of a type-store message, zero-padded
    to a multiple of 4 bytes like DDS delivers them (deserialisers ignore the padding)."""
    data = bytes(typestore().serialize_cdr(msg, msgtype))
    return data + b"\0" * (-len(data) % 4)


class BagWriter:
    """A rosbag2 writer (``rosbags.rosbag2.Writer``, version 9) that remembers its connections.

    ``add_topic(topic, msgtype, qos)`` once per topic, then ``write(topic, t_ns, cdr_bytes)``
    or ``write_msg(topic, t_ns, msg)``; ``close()`` writes the storage index and
    ``metadata.yaml``. Use as a context manager: it closes (never aborts) on errors too, so
    what was written stays readable.
    """

    def __init__(self, path: Path | str, storage: str = "mcap") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[check_storage(storage)]
        self.path = Path(path)
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=plugin)
        self._conns: dict[str, object] = {}
        self._types: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self._open = False

    def open(self) -> "BagWriter":
        self._writer.open()
        self._open = True
        return self

    def set_custom_data(self, key: str, value: str) -> None:
        """Store a ``custom_data`` entry in ``metadata.yaml`` (string key and value)."""
        self._writer.set_custom_data(key, str(value))

    def has_topic(self, topic: str) -> bool:
        return topic in self._conns

    def add_topic(self, topic: str, msgtype: str, qos: Iterable = ()) -> None:
        """Register ``topic`` of ``msgtype`` (e.g. ``sensor_msgs/msg/Image``) with offered QoS list.

        The message definition and RIHS01 type hash come from the Kilted type store; unknown
        types raise :class:`BagError`.
        """
        if msgtype not in typestore().types:
            raise BagError(f"message type {msgtype!r} of {topic} is not in the ROS 2 Kilted type store")
        self._conns[topic] = self._writer.add_connection(
            topic, msgtype, typestore=typestore(), offered_qos_profiles=list(qos))
        self._types[topic] = msgtype
        self.counts[topic] = 0

    def write(self, topic: str, timestamp_ns: int, data: bytes | memoryview) -> None:
        """Write CDR bytes (with encapsulation header) at log time ``timestamp_ns``."""
        self._writer.write(self._conns[topic], int(timestamp_ns), data)
        self.counts[topic] += 1

    def write_msg(self, topic: str, timestamp_ns: int, msg) -> None:
        """Serialise a type-store message object to CDR (little endian) and write it.

        The payload is zero-padded to a multiple of 4 bytes, as a DDS reader receives it (Fast
        DDS pads serialized payloads), so play -> record round trips are byte-identical.
        """
        self.write(topic, timestamp_ns, serialize(msg, self._types[topic]))

    def close(self) -> None:
        if self._open:
            self._open = False
            self._writer.close()

    def __enter__(self) -> "BagWriter":
        return self.open()

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


@contextlib.contextmanager
def atomic_bag(target: Path | str, storage: str = "mcap", force: bool = False) -> Iterator[BagWriter]:
    """Write a bag to a temporary directory next to ``target`` and move it there when complete.

    A crash or exception leaves no half-written bag at ``target`` (and removes the temporary
    one). An existing ``target`` is refused unless ``force``; it is replaced only after the new
    bag was closed successfully. The bag is written as ``<tmp>/<name>`` so that its storage
    file is named after ``target`` (``<name>/<name>.mcap`` or ``<name>/<name>.db3``).
    """
    target = Path(target).absolute()
    prepare_target(target, force)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = target.parent / f".{target.name}.partial-{os.getpid()}"
    if tmp_root.exists():
        _remove(tmp_root)
    tmp_root.mkdir()
    tmp_bag = tmp_root / target.name
    try:
        writer = BagWriter(tmp_bag, storage)
        writer.open()
        try:
            yield writer
        except BaseException:
            with contextlib.suppress(Exception):
                writer.close()
            raise
        writer.close()
        if target.exists() or target.is_symlink():
            _remove(target)
        os.replace(tmp_bag, target)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


@dataclass
class TopicSummary:
    """One topic of a bag: message type, message count, offered QoS profiles (``rosbags`` Qos)."""

    topic: str
    msgtype: str
    count: int
    qos: list


class BagReader:
    """A ``rosbags.rosbag2.Reader`` with the few helpers the ``pae bag`` tools need.

    Use as a context manager. ``messages(topics)`` yields ``(topic, msgtype, log_time_ns,
    cdr_bytes)`` in log-time order; ``decode(msgtype, data)`` deserialises with the Kilted store.
    """

    def __init__(self, path: Path | str) -> None:
        from rosbags.rosbag2 import Reader

        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"{self.path}: no such bag")
        try:
            self._reader = Reader(self.path)
        except Exception as exc:  # noqa: BLE001 - rosbags raises several types
            raise BagError(f"{self.path}: not a readable rosbag2 ({exc})") from exc

    def __enter__(self) -> "BagReader":
        try:
            self._reader.open()
        except Exception as exc:  # noqa: BLE001
            raise BagError(f"{self.path}: not a readable rosbag2 ({exc})") from exc
        return self

    def __exit__(self, *exc) -> bool:
        self._reader.close()
        return False

    @property
    def start_time(self) -> int:
        return int(self._reader.start_time)

    @property
    def duration(self) -> int:
        return int(self._reader.duration)

    @property
    def custom_data(self) -> dict[str, str]:
        meta = getattr(self._reader.storage, "metadata", None)
        return dict(getattr(meta, "custom", None) or {})

    def topics(self) -> dict[str, TopicSummary]:
        """Topic name -> :class:`TopicSummary` (QoS of the first connection that has some)."""
        out: dict[str, TopicSummary] = {}
        for topic, info in self._reader.topics.items():
            qos: list = []
            for c in info.connections:
                q = getattr(c.ext, "offered_qos_profiles", None)
                if q:
                    qos = list(q)
                    break
            msgtype = info.msgtype or info.connections[0].msgtype
            out[topic] = TopicSummary(topic, msgtype, int(info.msgcount), qos)
        return out

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, int, bytes]]:
        """``(topic, msgtype, log_time_ns, cdr_bytes)`` in log-time order, optionally filtered."""
        conns = self._reader.connections
        if topics is not None:
            wanted = set(topics)
            conns = [c for c in conns if c.topic in wanted]
            if not conns:
                return
        for conn, t, data in self._reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, int(t), bytes(data)

    @staticmethod
    def decode(msgtype: str, data: bytes):
        """Deserialise CDR bytes into a type-store message object."""
        return typestore().deserialize_cdr(data, msgtype)
