"""``pae bag export``: a robot's recordings (``ros2 bag`` / ROS 1 ``.bag``) -> a 7Scenes dataset.

Output (``pae train --format 7scenes --data OUT`` reads it; OUT is one scene folder):

* ``seq-NN/frame-NNNNNN.color.png`` and ``frame-NNNNNN.pose.txt``: the 4x4 **camera-to-world**
  pose (metres, OpenCV optical camera axes) of each kept image at its **header** stamp;
* ``TrainSplit.txt`` / ``TestSplit.txt``: whole sequences (one per bag, or per time block of a
  bag), never single frames;
* ``intrinsics.json`` ``{"width","height","fx","fy","cx","cy"}`` (pixels) from ``camera_info``;
* ``export.json``: provenance (bags, topics, frames, tolerances, the mount, intrinsics, drops
  per reason, what each sequence holds).

Poses come from the TF tree (``pose_frames = (PARENT, CHILD)``, then ``CHILD -> camera frame``
from the tree, static overrides first) or from a pose topic (``PoseStamped``,
``PoseWithCovarianceStamped``, ``Odometry``, ``TransformStamped``; evo's convention: the offset
is added to the pose topic's stamps). A camera frame not named ``*_optical`` / ``*_optical_frame``
is, with ``camera_convention="auto"``, taken as a REP 103 body frame (x forward, z up) and turned
into the optical frame (x right, y down, z forward); the conversion is logged and recorded.

Distortion: images are **undistorted at export** (OpenCV) with the ``camera_info`` rectification
(``P``'s left 3x3 as the new K and ``R``, as ``image_proc`` makes ``image_rect``; without a ``P``
OpenCV's optimal new K with no black border), so ``intrinsics.json`` is an exact pinhole model of
the written images; feed the node the rectified stream (``image_rect``) of the same camera.
``undistort=False`` writes the images as recorded and the distortion into ``intrinsics.json``
(``"distortion": {"model", "coefficients"}``).

Images stream one at a time (bounded memory for a bag of any length); only the TF / pose /
camera_info messages are read in a first pass and kept.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import geometry, image_codec
from ..datasets.types import CameraIntrinsics
from ..datasets.writers import write_7scenes_frame, write_7scenes_splits
from . import keyframes, msgs
from .io import typestore
from .tf_tree import BODY_TO_OPTICAL_WXYZ, TfError, TfTree, Track, is_optical, parse_static_tf

IMAGE_TYPES = (msgs.IMAGE_TYPE, msgs.COMPRESSED_TYPE)
POSE_TOPIC_TYPES = ("geometry_msgs/msg/PoseStamped", "geometry_msgs/msg/PoseWithCovarianceStamped",
                    "nav_msgs/msg/Odometry", "geometry_msgs/msg/TransformStamped")
CONVENTIONS = ("auto", "optical", "ros-body")
#: distortion models OpenCV undistorts here (camera_info ``distortion_model``)
PINHOLE_MODELS = ("plumb_bob", "rational_polynomial")
FISHEYE_MODELS = ("equidistant",)
#: fraction of a single recording held out as the test block when no holdout is given
DEFAULT_TAIL = 0.2
EXPORT_FILE = "export.json"


class ExportError(Exception):
    """Nothing usable can be exported (bad bag, topic, frames, intrinsics, options); one line."""


@dataclass
class ExportOptions:
    """Settings of one export (times in seconds, distances in metres, angles in degrees)."""

    image_topic: str | None = None          # None: the one Image / CompressedImage topic
    camera_info_topic: str | None = None    # None: <image namespace>/camera_info
    pose_frames: tuple[str, str] | None = None   # TF mode: (PARENT, CHILD)
    pose_topic: str | None = None           # pose-topic mode
    pose_body_frame: str | None = None      # frame the pose topic gives (None: child_frame_id or camera)
    camera_frame: str | None = None         # None: each image's header frame_id
    camera_convention: str = "auto"
    static_tf: list[str] = field(default_factory=list)
    max_tf_gap: float = 0.5
    t_max_diff: float = 0.02
    t_offset: float = 0.0
    interpolate: bool = False
    min_dist: float = 0.0
    min_angle_deg: float = 0.0
    min_dt: float = 0.0
    blur_threshold: float = 0.0
    dup_threshold: float = 0.5
    holdout: list[str] = field(default_factory=list)
    undistort: bool = True
    sequence_gap: float = 1.0               # a longer pause between images starts a new sequence (0: off)
    max_frames: int | None = None


_BODY_TO_OPTICAL = geometry.pose_to_matrix(np.zeros(3), BODY_TO_OPTICAL_WXYZ)


def _ns(seconds: float) -> int:
    return int(round(float(seconds) * 1e9))


# --------------------------------------------------------------------------- bag access
def open_bag(path: Path):
    """An open ``rosbags.highlevel.AnyReader`` of one ROS 2 bag (sqlite3 / MCAP, compressed too)
    or ROS 1 ``.bag``; :class:`ExportError` naming the file when it is missing, truncated or not a bag."""
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: no such bag")
    try:
        reader = AnyReader([path], default_typestore=typestore())
        reader.open()
    except Exception as e:  # noqa: BLE001 - rosbags raises many types for a damaged file
        raise ExportError(f"{path}: cannot read the bag (truncated, still being recorded, or not a bag): "
                          f"{' '.join(str(e).split()) or type(e).__name__}") from None
    return reader


def _topic_list(reader) -> str:
    return ", ".join(f"{t} [{i.msgtype}]" for t, i in sorted(reader.topics.items())) or "none"


def _pick_topic(reader, bag: Path, wanted: str | None, types: tuple[str, ...], what: str) -> str:
    topics = reader.topics
    if wanted is not None:
        if wanted not in topics:
            raise ExportError(f"{bag}: no topic {wanted!r}; the bag has: {_topic_list(reader)}")
        if topics[wanted].msgtype not in types:
            raise ExportError(f"{bag}: {wanted} is {topics[wanted].msgtype}, not {' or '.join(types)}")
        return wanted
    found = sorted(t for t, i in topics.items() if i.msgtype in types)
    if not found:
        raise ExportError(f"{bag}: no {' or '.join(types)} topic; the bag has: {_topic_list(reader)}")
    if len(found) > 1:
        raise ExportError(f"{bag}: {len(found)} {' / '.join(types)} topics ({', '.join(found)}); "
                          f"choose one with --{what}")
    return found[0]


def _camera_info_topic(reader, bag: Path, image_topic: str, wanted: str | None) -> str:
    if wanted is not None:
        return _pick_topic(reader, bag, wanted, (msgs.CAMERA_INFO_TYPE,), "camera-info-topic")
    base = image_topic[: -len("/compressed")] if image_topic.endswith("/compressed") else image_topic
    sibling = base.rsplit("/", 1)[0] + "/camera_info"
    infos = sorted(t for t, i in reader.topics.items() if i.msgtype == msgs.CAMERA_INFO_TYPE)
    if sibling in infos:
        return sibling
    if len(infos) == 1:
        return infos[0]
    raise ExportError(f"{bag}: no camera_info for {image_topic} (looked for {sibling}); "
                      f"give --camera-info-topic; the bag has: {_topic_list(reader)}")


def _messages(reader, topics):
    """``(topic, msgtype, log ns, message)`` of ``topics`` in log-time order (nothing if none)."""
    conns = [c for c in reader.connections if c.topic in set(topics)]
    if not conns:
        return
    for conn, t, raw in reader.messages(connections=conns):
        yield conn.topic, conn.msgtype, int(t), raw


# --------------------------------------------------------------------------- message fields
def _stamp(msg) -> int:
    return msgs.stamp_to_ns(msg.header.stamp)


def _field(msg, name: str):
    """A CameraInfo array field: ROS 2 lower case (``k``), ROS 1 upper case (``K``)."""
    v = getattr(msg, name, None)
    return np.asarray(v if v is not None else getattr(msg, name.upper()), dtype=np.float64)


def _xyz(v) -> np.ndarray:
    return np.array([v.x, v.y, v.z], dtype=np.float64)


def _wxyz(o) -> np.ndarray:
    return msgs.ros_to_wxyz(o.x, o.y, o.z, o.w)


def _pose_sample(msg, msgtype: str) -> tuple[str, str | None, np.ndarray, np.ndarray]:
    """(frame_id, child frame or None, translation m, quaternion wxyz) of a pose-topic message."""
    if msgtype.endswith("TransformStamped"):
        tr = msg.transform
        return msg.header.frame_id, msg.child_frame_id, _xyz(tr.translation), _wxyz(tr.rotation)
    child = msg.child_frame_id if msgtype.endswith("Odometry") else None
    pose = msg.pose.pose if hasattr(msg.pose, "covariance") else msg.pose
    return msg.header.frame_id, child, _xyz(pose.position), _wxyz(pose.orientation)


@dataclass
class CameraModel:
    """One camera_info: size (pixels), K, distortion model and coefficients, R, P."""

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray
    model: str
    R: np.ndarray
    P: np.ndarray

    @classmethod
    def from_msg(cls, msg) -> "CameraModel":
        return cls(int(msg.width), int(msg.height), _field(msg, "k").reshape(3, 3), _field(msg, "d").reshape(-1),
                   str(msg.distortion_model), _field(msg, "r").reshape(3, 3), _field(msg, "p").reshape(3, 4))

    def key(self) -> tuple:
        """Everything that defines the camera, exactly (repeated messages compare equal)."""
        return (self.width, self.height, self.model, self.K.tobytes(), self.D.tobytes(), self.R.tobytes(),
                self.P.tobytes())

    def same(self, other: "CameraModel") -> bool:
        return self.key() == other.key()

    def describe(self) -> str:
        return (f"{self.width}x{self.height} fx={self.K[0, 0]:.6g} fy={self.K[1, 1]:.6g} cx={self.K[0, 2]:.6g} "
                f"cy={self.K[1, 2]:.6g} {self.model} D={[round(float(v), 6) for v in self.D]}")

    @property
    def distorted(self) -> bool:
        return bool(np.any(self.D != 0))

    def to_json(self) -> dict:
        return {"width": self.width, "height": self.height, "K": self.K.reshape(-1).tolist(),
                "distortion_model": self.model, "D": self.D.tolist(), "R": self.R.reshape(-1).tolist(),
                "P": self.P.reshape(-1).tolist()}


class Undistorter:
    """Remaps recorded images to the pinhole camera that ``intrinsics`` describes."""

    def __init__(self, cam: CameraModel, undistort: bool) -> None:
        import cv2

        self.maps = None
        self.source = "camera_info K (no distortion)"
        K = cam.K
        if cam.width <= 0 or cam.height <= 0 or not K[0, 0] > 0 or not K[1, 1] > 0:
            raise ExportError(f"camera_info is uncalibrated (K = {K.reshape(-1).tolist()}, "
                              f"{cam.width}x{cam.height}); calibrate the camera and record camera_info")
        new_k = K
        if cam.distorted and undistort:
            size = (cam.width, cam.height)
            R = cam.R if np.allclose(cam.R.T @ cam.R, np.eye(3), atol=1e-6) else np.eye(3)
            has_p = cam.P[0, 0] > 0 and cam.P[1, 1] > 0
            if cam.model in PINHOLE_MODELS:
                new_k = cam.P[:, :3].copy() if has_p else cv2.getOptimalNewCameraMatrix(K, cam.D, size, 0, size)[0]
                self.maps = cv2.initUndistortRectifyMap(K, cam.D, R, new_k, size, cv2.CV_32FC1)
            elif cam.model in FISHEYE_MODELS:
                d = cam.D[:4].reshape(4, 1)
                new_k = cam.P[:, :3].copy() if has_p else \
                    cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(K, d, size, R, balance=0.0)
                self.maps = cv2.fisheye.initUndistortRectifyMap(K, d, R, new_k, size, cv2.CV_32FC1)
            else:
                raise ExportError(f"camera_info distortion_model {cam.model!r} with non-zero D is not supported "
                                  f"(use {', '.join(PINHOLE_MODELS + FISHEYE_MODELS)}, or --keep-distortion)")
            self.source = ("camera_info P (rectified, as image_proc)" if has_p
                           else "OpenCV optimal new camera matrix (alpha 0)")
        elif cam.distorted:
            self.source = "camera_info K; images keep their distortion"
        self.intrinsics = CameraIntrinsics(cam.width, cam.height, new_k[0, 0], new_k[1, 1], new_k[0, 2], new_k[1, 2])

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        if self.maps is None:
            return rgb
        import cv2

        return cv2.remap(np.ascontiguousarray(rgb), self.maps[0], self.maps[1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT)


# --------------------------------------------------------------------------- poses
class Poser:
    """Camera-to-world poses of one bag at image header stamps (TF tree or pose topic)."""

    def __init__(self, opts: ExportOptions, tree: TfTree, track: Track | None, track_frames: dict,
                 bag: Path, say: Callable[[str], None]) -> None:
        self.opts, self.tree, self.track, self.bag, self.say = opts, tree, track, bag, say
        self.track_frames = track_frames
        self.max_gap = _ns(opts.max_tf_gap)
        self.cameras: dict[str, dict] = {}

    def _camera(self, frame: str) -> dict:
        """The convention decision (and path checks) for one camera frame, made once."""
        info = self.cameras.get(frame)
        if info is not None:
            return info
        conv = self.opts.camera_convention
        optical = conv == "optical" or (conv == "auto" and is_optical(frame))
        info = {"frame": frame, "convention": "optical" if optical else "ros-body",
                "converted_to_optical": not optical}
        if not optical:
            why = "by --camera-convention ros-body" if conv == "ros-body" else "its name has no _optical suffix"
            self.say(f"{self.bag.name}: camera frame {frame!r} is a REP 103 body frame ({why}): poses are turned "
                     f"into its optical frame (x right, y down, z forward)")
        if self.opts.pose_frames is not None:
            parent, child = self.opts.pose_frames
            self.tree.require_path(parent, child, str(self.bag))
            self.tree.require_path(child, frame, str(self.bag))
            info["chain"] = f"{parent} -> {child} -> {frame}"
        else:
            body = self.body_frame(frame)
            if body != frame:
                self.tree.require_path(body, frame, f"{self.bag} (mount of the pose topic's {body!r})")
            info["chain"] = f"{self.track_frames.get('world') or '?'} -> {body} ({self.opts.pose_topic}) -> {frame}"
        if not optical:
            info["chain"] += " -> optical axes (REP 103 rotation)"
        self.cameras[frame] = info
        return info

    def body_frame(self, camera_frame: str) -> str:
        return self.opts.pose_body_frame or self.track_frames.get("child") or camera_frame

    def pose(self, stamp_ns: int, frame: str) -> tuple[np.ndarray, np.ndarray]:
        """(camera centre m, quaternion wxyz) of the optical camera frame in the world at the stamp."""
        info = self._camera(frame)
        if self.opts.pose_frames is not None:
            parent, child = self.opts.pose_frames
            T = self.tree.lookup_matrix(parent, child, stamp_ns, self.max_gap)
            body = child
        else:
            if self.opts.interpolate:
                t, q = self.track.interpolate(stamp_ns, self.max_gap)
            else:
                t, q = self.track.nearest(stamp_ns, _ns(self.opts.t_max_diff))
            T = geometry.pose_to_matrix(t, q)
            body = self.body_frame(frame)
        if body != frame:
            T = T @ self.tree.lookup_matrix(body, frame, stamp_ns, self.max_gap)
        if info["converted_to_optical"]:
            T = T @ _BODY_TO_OPTICAL
        return geometry.matrix_to_pose(T)


def _first_pass(reader, bag: Path, opts: ExportOptions, image_topic: str, info_topic: str,
                statics: list) -> tuple[TfTree, Track | None, dict, CameraModel]:
    """TF tree, pose track and the (single) camera model of one bag."""
    tree = TfTree()
    tf_topics = [t for t, i in reader.topics.items() if i.msgtype.endswith(("TFMessage", "tfMessage"))]
    pose_topic = None
    if opts.pose_topic is not None:
        pose_topic = _pick_topic(reader, bag, opts.pose_topic, POSE_TOPIC_TYPES, "pose-topic")
    track = Track(f"pose topic {pose_topic}") if pose_topic else None
    track_frames: dict = {}
    cam: CameraModel | None = None
    offset = _ns(opts.t_offset)
    for topic, mt, _, raw in _messages(reader, tf_topics + [info_topic] + ([pose_topic] if pose_topic else [])):
        msg = reader.deserialize(raw, mt)
        if topic == info_topic:
            this = CameraModel.from_msg(msg)
            if cam is None:
                cam = this
            elif not cam.same(this):
                raise ExportError(f"{bag}: {info_topic} changed mid-bag at stamp {_stamp(msg)} ns: "
                                  f"{cam.describe()} -> {this.describe()}; export the parts separately")
        elif topic == pose_topic:
            world, child, t, q = _pose_sample(msg, mt)
            track_frames.setdefault("world", world)
            if child:
                track_frames.setdefault("child", child.lstrip("/"))
            track.add(_stamp(msg) + offset, t, q)
        else:
            static = topic.endswith("tf_static")
            for tr in msg.transforms:
                tree.add(tr.header.frame_id, tr.child_frame_id, _stamp(tr), _xyz(tr.transform.translation),
                         _wxyz(tr.transform.rotation), static)
    for parent, child, t, q in statics:
        tree.set_static(parent, child, t, q)
    if cam is None:
        raise ExportError(f"{bag}: no message on {info_topic}; the bag has: {_topic_list(reader)}")
    if track is not None and len(track) == 0:
        raise ExportError(f"{bag}: no usable pose on {pose_topic}")
    return tree, track, track_frames, cam


# --------------------------------------------------------------------------- splits
def _parse_holdout(specs: list[str], bags: list[Path]) -> tuple[set[str], list[tuple[float, float]]]:
    names, blocks = set(), []
    bag_names = {b.name for b in bags} | {b.stem for b in bags}
    for s in specs:
        a, sep, b = s.partition(":")
        try:
            t0, t1 = float(a), float(b)
        except ValueError:
            t0 = t1 = None
        if sep and t0 is not None:
            if not 0 <= t0 < t1:
                raise ExportError(f"--holdout {s!r}: need 0 <= t0 < t1 (seconds from each bag's first image)")
            blocks.append((t0, t1))
        elif s in bag_names:
            names.add(s)
        else:
            raise ExportError(f"--holdout {s!r} is neither a time block t0:t1 (s) nor one of the bags: "
                              f"{', '.join(sorted(b.name for b in bags))}")
    return names, sorted(blocks)


class _Sequences:
    """Sequence folders: one per (bag, time block, stretch between pauses); held-out blocks go to
    the test split."""

    def __init__(self) -> None:
        self.seqs: list[dict] = []
        self._current: dict | None = None

    def get(self, bag: str, test: bool, block: int, block_s: tuple | None, stretch: int = 0) -> dict:
        key = (bag, block, stretch)
        if self._current is None or self._current["key"] != key:
            self._current = {"key": key, "name": f"seq-{len(self.seqs) + 1:02d}", "bag": bag,
                             "block_s": block_s, "split": "test" if test else "train", "frames": 0,
                             "first_stamp_ns": None, "last_stamp_ns": None}
            self.seqs.append(self._current)
        return self._current


# --------------------------------------------------------------------------- export
def export_bags(bags: list[Path | str], out: Path | str, opts: ExportOptions, force: bool = False,
                say: Callable[[str], None] | None = None) -> dict:
    """Export ``bags`` into the 7Scenes scene folder ``out``; returns the provenance dict (also
    written as ``out/export.json``). Raises :class:`ExportError` when nothing usable is left;
    writes into a temporary folder and moves it to ``out`` only when complete."""
    say = say or (lambda m: print(m, file=sys.stderr))
    bags = [Path(b) for b in bags]
    out = Path(out).absolute()
    if opts.camera_convention not in CONVENTIONS:
        raise ExportError(f"--camera-convention must be one of {', '.join(CONVENTIONS)}")
    if (opts.pose_frames is None) == (opts.pose_topic is None):
        raise ExportError("give exactly one pose source: --pose-frames PARENT:CHILD or --pose-topic TOPIC")
    for name in ("max_tf_gap", "t_max_diff", "min_dist", "min_angle_deg", "min_dt", "blur_threshold",
                 "dup_threshold", "sequence_gap"):
        if not getattr(opts, name) >= 0:
            raise ExportError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(opts, name)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"{out} exists and is not empty; pass --force to replace it")
    try:
        statics = [parse_static_tf(s) for s in opts.static_tf]
    except TfError as e:
        raise ExportError(str(e)) from None
    holdout_bags, blocks = _parse_holdout(opts.holdout, bags)
    if not opts.holdout:
        what = "last bag" if len(bags) > 1 else f"last {DEFAULT_TAIL:.0%} of the recording"
        say(f"no --holdout: the test split is the {what}")
        if len(bags) > 1:
            holdout_bags = {bags[-1].name}
    splitter = _Splitter(holdout_bags, blocks, tail=not opts.holdout and len(bags) == 1)
    if len(set(b.name for b in bags)) != len(bags):
        raise ExportError("two bags have the same name; rename one so that --holdout and export.json can "
                          "tell them apart")

    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        report = _export(bags, tmp, opts, statics, splitter, say)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


class _Splitter:
    """Which split and sequence a frame goes to: a held-out bag, a held-out time block (seconds
    from the bag's first image), or by default the last bag / the tail of a single recording."""

    def __init__(self, holdout_bags: set[str], blocks: list[tuple[float, float]], tail: bool) -> None:
        self.holdout_bags, self.blocks, self.tail = holdout_bags, blocks, tail
        self.tail_start: float | None = None

    def start_bag(self, first_log_ns: int, end_log_ns: int) -> None:
        if self.tail:
            self.tail_start = (1 - DEFAULT_TAIL) * (end_log_ns - first_log_ns) / 1e9

    def split(self, bag: Path, rel_s: float) -> tuple[bool, int, tuple | None]:
        """(test?, block id within the bag, the block's (t0, t1) seconds or None)."""
        if bag.name in self.holdout_bags or bag.stem in self.holdout_bags:
            return True, 0, None
        if self.blocks:
            block = next((i for i, (t0, t1) in enumerate(self.blocks) if t0 <= rel_s < t1), None)
            if block is not None:
                return True, 2 * block + 1, self.blocks[block]
            # the stretches before and after a held-out block are separate sequences
            return False, 2 * sum(1 for (t0, _) in self.blocks if rel_s >= t0), None
        if self.tail_start is not None:
            test = rel_s >= self.tail_start
            ts = round(self.tail_start, 3)
            return test, int(test), ((ts, None) if test else (0.0, ts))
        return False, 0, None


@dataclass
class _State:
    """What the export accumulates over all bags."""

    seqs: _Sequences = field(default_factory=_Sequences)
    drops: dict = field(default_factory=dict)
    written: int = 0
    size: tuple | None = None
    camera: CameraModel | None = None
    undistorter: Undistorter | None = None
    sharpness: list = field(default_factory=list)
    stopped_at_max_frames: bool = False

    def drop(self, reason: str, bag_counts: dict) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        bag_counts[reason] = bag_counts.get(reason, 0) + 1


def _export(bags, tmp: Path, opts: ExportOptions, statics, splitter: _Splitter, say) -> dict:
    started = time.monotonic()
    st = _State()
    per_bag = []
    for bag in bags:
        if st.stopped_at_max_frames:
            break
        reader = open_bag(bag)
        try:
            per_bag.append(_export_bag(reader, bag, tmp, opts, statics, splitter, st, say))
        finally:
            reader.close()
    return _finish(tmp, opts, bags, st, per_bag, splitter, time.monotonic() - started, say)


def _export_bag(reader, bag: Path, tmp: Path, opts: ExportOptions, statics, splitter: _Splitter, st: _State,
                say) -> dict:
    """Stream one bag's images into ``tmp``; returns its provenance entry."""
    from ..progress import tqdm

    image_topic = _pick_topic(reader, bag, opts.image_topic, IMAGE_TYPES, "image-topic")
    info_topic = _camera_info_topic(reader, bag, image_topic, opts.camera_info_topic)
    tree, track, track_frames, cam = _first_pass(reader, bag, opts, image_topic, info_topic, statics)
    if st.camera is None:
        st.camera, st.undistorter = cam, Undistorter(cam, opts.undistort)
    elif not st.camera.same(cam):
        raise ExportError(f"{bag}: camera_info differs from the first bag's ({cam.describe()} vs "
                          f"{st.camera.describe()}); export each camera to its own dataset")
    poser = Poser(opts, tree, track, track_frames, bag, say)
    motion = keyframes.MotionFilter(opts.min_dist, opts.min_angle_deg, opts.min_dt)
    drops: dict[str, int] = {}
    last_thumb = first_stamp = prev_stamp = truncated = None
    stretch = 0  # pauses longer than opts.sequence_gap seen so far in this bag (every image counts)
    n_images = reader.topics[image_topic].msgcount
    seen = written = 0
    it = _messages(reader, [image_topic])
    bar = tqdm(total=n_images, desc=f"export {bag.name}", unit="img")
    while True:
        item, truncated = _next_message(it)
        if truncated is not None:
            st.drop("bag_truncated", drops)
            say(f"{bag}: reading stopped at a damaged part of the bag ({truncated}); "
                f"keeping the {written} frames written before it")
            break
        if item is None:
            break
        if opts.max_frames is not None and st.written >= opts.max_frames:
            st.stopped_at_max_frames = True
            break
        _, mt, log_ns, raw = item
        seen += 1
        bar.update(1)
        if seen == 1:
            splitter.start_bag(log_ns, reader.end_time)
        try:
            msg = reader.deserialize(raw, mt)
        except Exception:  # noqa: BLE001 - one bad message is dropped, not the bag
            st.drop("undeserializable", drops)
            continue
        stamp = _stamp(msg)
        frame = _image_frame_id(msg, opts, bag, image_topic)
        first_stamp = stamp if first_stamp is None else first_stamp
        if opts.sequence_gap > 0 and prev_stamp is not None and stamp - prev_stamp > _ns(opts.sequence_gap):
            stretch += 1
        prev_stamp = stamp
        kept = _keyframe(msg, stamp, frame, poser, motion, last_thumb, opts, bag, st, drops)
        if kept is None:
            continue
        pos, quat, rgb, sharp, last_thumb = kept
        seq = st.seqs.get(bag.name, *splitter.split(bag, (stamp - first_stamp) / 1e9), stretch)
        _write_frame(tmp, seq, stamp, rgb, pos, quat)
        motion.kept(stamp)
        st.sharpness.append(sharp)
        st.written += 1
        written += 1
    bar.close()
    return {"path": str(bag.absolute()), "name": bag.name, "image_topic": image_topic,
            "camera_info_topic": info_topic, "pose_topic": opts.pose_topic,
            "image_messages": n_images, "images_read": seen, "written": written, "dropped": drops,
            "truncated": truncated, "tf_edges": tree.edges(), "tf_conflicts": tree.conflicts,
            "static_overrides": sorted(set(tree.overridden)),
            "static_edges": [tree.static_edge(e["child"]) for e in tree.edges() if e["static"]],
            "cameras": list(poser.cameras.values()), "pose_topic_frames": track_frames or None,
            "start_time_ns": int(reader.start_time), "duration_s": reader.duration / 1e9}


def _next_message(it) -> tuple[tuple | None, str | None]:
    """(the next message, or None at the end; None), or (None, why) when reading stopped at a
    damaged part of the bag."""
    try:
        return next(it, None), None
    except Exception as e:  # noqa: BLE001 - a damaged chunk / page mid-file
        return None, " ".join(str(e).split()) or type(e).__name__


def _image_frame_id(msg, opts: ExportOptions, bag: Path, image_topic: str) -> str:
    """The camera frame of an image: ``--camera-frame``, else its header's, else the pose frames'
    body; refuses an image without any."""
    frame = (opts.camera_frame or msg.header.frame_id or
             (opts.pose_frames[1] if opts.pose_frames else "")).lstrip("/")
    if not frame:
        raise ExportError(f"{bag}: images on {image_topic} have no header frame_id; give --camera-frame")
    return frame


def _keyframe(msg, stamp: int, frame: str, poser: Poser, motion: keyframes.MotionFilter, last_thumb,
              opts: ExportOptions, bag: Path, st: _State, drops: dict):
    """(camera centre m, quaternion wxyz camera-to-world, undistorted RGB, sharpness, thumbnail) of
    an image message at ``stamp`` ns that is a keyframe, or None after counting why it is dropped:
    no pose, too little motion, undecodable, blurred, or a near duplicate of ``last_thumb``."""
    try:
        pos, quat = poser.pose(stamp, frame)
    except TfError as e:
        if e.reason in ("no_tf_path", "bad_static_tf"):
            raise ExportError(str(e)) from None
        st.drop(e.reason, drops)
        return None
    if not motion.step(stamp, pos, quat):
        st.drop("not_keyframe", drops)
        return None
    try:
        rgb = msgs.decode_image(msg)
    except image_codec.ImageDecodeError as e:
        st.drop(f"undecodable.{e.reason}", drops)
        return None
    _check_size(bag, stamp, rgb, st)
    rgb = st.undistorter(rgb)
    sharp = keyframes.sharpness(rgb)
    if sharp < opts.blur_threshold:
        st.drop("blurred", drops)
        return None
    thumb = keyframes.thumbnail(rgb)
    if last_thumb is not None and keyframes.thumb_difference(thumb, last_thumb) < opts.dup_threshold:
        st.drop("near_duplicate", drops)
        return None
    return pos, quat, rgb, sharp, thumb


def _write_frame(tmp: Path, seq: dict, stamp: int, rgb: np.ndarray, pos: np.ndarray, quat: np.ndarray) -> None:
    """Write the next frame of sequence ``seq`` (image, camera-to-world pose m / wxyz) and note its
    header stamp (ns) in the sequence."""
    write_7scenes_frame(tmp, seq["name"], seq["frames"], rgb, pos, quat)
    seq["frames"] += 1
    seq["first_stamp_ns"] = seq["first_stamp_ns"] or stamp
    seq["last_stamp_ns"] = stamp


def _check_size(bag: Path, stamp: int, rgb: np.ndarray, st: _State) -> None:
    """Refuse an image whose size differs from the first image's or from camera_info's."""
    h, w = rgb.shape[:2]
    st.size = st.size or (w, h)
    if (w, h) != st.size:
        raise ExportError(f"{bag}: image at stamp {stamp} ns is {w}x{h}, but earlier images are "
                          f"{st.size[0]}x{st.size[1]}: mixed resolutions are refused")
    if (w, h) != (st.camera.width, st.camera.height):
        raise ExportError(f"{bag}: image at stamp {stamp} ns is {w}x{h}, but camera_info says "
                          f"{st.camera.width}x{st.camera.height}: mixed resolutions are refused")


def _finish(tmp: Path, opts: ExportOptions, bags, st: _State, per_bag, splitter: _Splitter, elapsed: float,
            say) -> dict:
    seqs, drops, written, camera, undistorter = st.seqs, st.drops, st.written, st.camera, st.undistorter
    train = [s["name"] for s in seqs.seqs if s["split"] == "train"]
    test = [s["name"] for s in seqs.seqs if s["split"] == "test"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"
    if written == 0:
        raise ExportError(f"no frame exported from {', '.join(b.name for b in bags)}; dropped: {reasons}")
    if not train:
        raise ExportError(f"every exported frame is held out ({written} in {', '.join(test)}); "
                          f"hold out less (--holdout) so that something is left to train on")
    if not test:
        say("warning: no frame fell in a held-out block: TestSplit.txt is empty")
    write_7scenes_splits(tmp, train, test)
    k = undistorter.intrinsics
    intr = k.to_json()
    if camera.distorted and not opts.undistort:
        intr["distortion"] = {"model": camera.model, "coefficients": camera.D.tolist()}
    (tmp / "intrinsics.json").write_text(json.dumps(intr, indent=2) + "\n")
    sv = np.asarray(st.sharpness)
    report = {
        "tool": "pae bag export",
        "bags": per_bag,
        "options": {**asdict(opts), "pose_frames": list(opts.pose_frames) if opts.pose_frames else None},
        "pose_source": ("tf " + ":".join(opts.pose_frames)) if opts.pose_frames else f"topic {opts.pose_topic}",
        "conventions": {"pose": "camera-to-world 4x4, metres, OpenCV optical camera axes",
                        "stamps": "image header stamp", "t_offset": "added to the pose topic's stamps (evo)",
                        "static_tf_quaternion_order": "x,y,z,w (ROS)"},
        "intrinsics": {**intr, "source": undistorter.source, "undistorted": undistorter.maps is not None,
                       "camera_info": camera.to_json()},
        "counts": {"written": written, "dropped": dict(sorted(drops.items())),
                   "stopped_at_max_frames": st.stopped_at_max_frames,
                   "train_frames": sum(s["frames"] for s in seqs.seqs if s["split"] == "train"),
                   "test_frames": sum(s["frames"] for s in seqs.seqs if s["split"] == "test")},
        "sharpness_laplacian_var": {"min": float(sv.min()), "median": float(np.median(sv)), "max": float(sv.max())},
        "holdout": {"given": list(opts.holdout), "default": not opts.holdout,
                    "bags": sorted(splitter.holdout_bags), "blocks_s": splitter.blocks,
                    "default_tail_fraction": DEFAULT_TAIL if splitter.tail else None},
        "sequences": [{k2: v for k2, v in s.items() if k2 != "key"} for s in seqs.seqs],
        "elapsed_s": round(elapsed, 3),
    }
    (tmp / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    say(f"exported {written} frames ({report['counts']['train_frames']} train in {len(train)} sequence(s), "
        f"{report['counts']['test_frames']} test in {len(test)}); dropped: {reasons}")
    return report
