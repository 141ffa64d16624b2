"""``pae bag make``: write a rosbag2 of one dataset split (images, camera_info, ground truth).

Per frame, all with the same header stamp and bag log time ``t_i = start + i / rate``
(integer ns since the Unix epoch):

* ``/camera/image_raw`` ``sensor_msgs/Image`` ``rgb8`` (or, with ``--compressed``,
  ``/camera/image_raw/compressed`` ``sensor_msgs/CompressedImage`` JPEG), frame ``camera_optical``
  (OpenCV optical axes: x right, y down, z forward);
* ``/camera/camera_info`` ``sensor_msgs/CameraInfo`` from the dataset intrinsics (pixels, scaled
  to the image size; ``plumb_bob`` with zero distortion; all-zero K/R/P where unknown);
* ``/ground_truth/pose`` ``geometry_msgs/PoseStamped`` in frame ``map``: the camera-to-world
  pose (position = camera centre, metres).

With ``--robot`` the bag is what a robot records instead (:mod:`pae_ros.bags.robot_bag`): each
walk one stretch of time, distorted JPEG images with a ``plumb_bob`` camera_info, ``/tf``
``map -> odom -> base_link`` at ``--odom-hz`` (optionally drifting odometry, ``--odom-drift``),
``/tf_static`` ``base_link -> camera_link -> camera_optical`` and the same ground truth; ``pae bag
export --pose-frames map:camera_optical`` turns it back into the dataset. ``--kidnap SEC``: the
robot is carried to the next walk's start, unseen by the odometry; custom data
``pae_ros.kidnaps`` lists the first image stamp (ns) after each carry.

Offered QoS of every topic: reliable, volatile, keep_last 10. The bag is written next to
``--out`` and moved there when complete; an existing bag is replaced only with ``--force``.
``metadata.yaml`` ``custom_data`` records the source (``pae_ros.source``) and each scene's first
and last stamp (``pae_ros.scene_ranges``), which ``pae bag eval`` uses to name scenes.
"""
from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path


def _seconds(text: str) -> Decimal:
    """A non-negative decimal number of seconds, kept exact (stamps are integer ns)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def _coefficients(text: str) -> tuple[float, ...]:
    """Five comma-separated plumb_bob coefficients."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected k1,k2,p1,p2,k3, got {text!r}") from None
    if len(values) != 5:
        raise argparse.ArgumentTypeError(f"expected 5 coefficients k1,k2,p1,p2,k3, got {len(values)}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset root: a scene folder, a folder of scenes, or a label CSV")
    parser.add_argument("--format", required=True, choices=("7scenes", "cambridge", "csv"), dest="fmt",
                        help="dataset format")
    parser.add_argument("--split", default="test", choices=("train", "test"), help="dataset split")
    parser.add_argument("--out", required=True, help="output bag directory (must not exist unless --force)")
    parser.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"), help="rosbag2 storage plugin")
    parser.add_argument("--rate", type=float, default=10.0, help="frame rate in Hz (stamp spacing 1/rate s)")
    parser.add_argument("--compressed", action="store_true",
                        help="write JPEG sensor_msgs/CompressedImage on /camera/image_raw/compressed "
                             "instead of raw rgb8 images")
    parser.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality (0-100) with --compressed")
    parser.add_argument("--scene", action="append", default=None, metavar="NAME",
                        help="only this scene (repeat for several; none given: all scenes found)")
    parser.add_argument("--start-time", type=_seconds, default=Decimal("1700000000"), metavar="SEC",
                        help="stamp of the first frame, seconds since the Unix epoch, exact to the ns "
                             "(1700000000 = 2023-11-14T22:13:20Z: fixed so that bags are reproducible)")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N", help="write only the first N frames")
    parser.add_argument("--force", action="store_true", help="replace an existing bag at --out")
    robot = parser.add_argument_group("robot recording (--robot)")
    robot.add_argument("--robot", action="store_true",
                       help="write what a robot records: walks as stretches of time, distorted JPEG images, "
                            "plumb_bob camera_info, /tf map -> odom -> base_link, /tf_static mount, ground truth")
    robot.add_argument("--odom-hz", type=float, default=None,
                       help="/tf rate in Hz, more than twice --rate (default: 37, unlike the camera's)")
    robot.add_argument("--odom-drift", type=float, default=0.0, metavar="SCALE",
                       help="odometry drift scale (1: 2 %% scale error, 0.2 deg/m heading, plus noise); map -> odom "
                            "then corrects it so that map -> base_link stays exact (0: no drift)")
    robot.add_argument("--odom-seed", type=int, default=0, help="seed of the drift model (walk i uses seed + i)")
    robot.add_argument("--walk-gap", type=float, default=None, metavar="SEC",
                       help="seconds between the last image of a walk and the first of the next (default: 1)")
    robot.add_argument("--kidnap", type=_seconds, action="append", default=None, metavar="SEC",
                       help="seconds into the recording (repeatable): the robot is carried to the next walk's start "
                            "unseen by the odometry; the stamps go to custom data pae_ros.kidnaps")
    robot.add_argument("--odom-only", action="store_true",
                       help="/tf carries odom -> base_link only (no map -> odom): a recording to replay into the "
                            "localizer, which publishes map -> odom itself; the ground truth stays on its topic")
    robot.add_argument("--distortion", type=_coefficients, default=None, metavar="k1,k2,p1,p2,k3",
                       help="plumb_bob coefficients of the lens, e.g. --distortion=-0.1,0.02,0,0,0 "
                            "(default: a mild barrel lens, -0.12,0.04,0.0005,-0.0004,0)")


def _scaled(scene: str, k, w: int, h: int, warned_scale: set[str]) -> tuple[float, float, float, float]:
    """``(fx, fy, cx, cy)`` of intrinsics ``k`` scaled to a ``w`` x ``h`` image (pixels), noted once per scene."""
    sx, sy = w / k.width, h / k.height
    if (k.width, k.height) != (w, h) and scene not in warned_scale:
        warned_scale.add(scene)
        print(f"pae bag make: note: {scene}: intrinsics are for {k.width}x{k.height}, "
              f"images are {w}x{h}; camera_info scaled to the image size", file=sys.stderr)
    return k.fx * sx, k.fy * sy, k.cx * sx, k.cy * sy


def _frame_messages(frame, t_ns: int, k, compressed: bool, jpeg_quality: int, warned_scale: set[str]):
    """``(camera_info, image, ground truth pose)`` messages of one frame stamped ``t_ns``; the
    intrinsics ``k`` (None: unknown, K = 0) are scaled to the image size, noted once per scene."""
    from .. import datasets
    from . import CAMERA_FRAME, MAP_FRAME, msgs

    rgb = datasets.load_rgb(frame.image_path)
    h, w = rgb.shape[:2]
    if k is not None:
        info = msgs.camera_info_msg(t_ns, CAMERA_FRAME, w, h, *_scaled(frame.scene, k, w, h, warned_scale))
    else:
        info = msgs.camera_info_msg(t_ns, CAMERA_FRAME, w, h)
    if compressed:
        img = msgs.compressed_image_msg(msgs.encode_jpeg(rgb, jpeg_quality), t_ns, CAMERA_FRAME)
    else:
        img = msgs.image_msg(rgb, t_ns, CAMERA_FRAME)
    return info, img, msgs.pose_stamped_msg(frame.position, frame.quaternion, t_ns, MAP_FRAME)


def run(args: argparse.Namespace) -> int:
    from ..progress import tqdm

    from .. import datasets
    from . import CAMERA_INFO_TOPIC, COMPRESSED_TOPIC, GT_TOPIC, IMAGE_TOPIC
    from . import msgs
    from .io import BagError, atomic_bag, make_qos, prepare_target

    if not args.rate > 0:
        print("pae bag make: error: --rate must be > 0", file=sys.stderr)
        return 2
    if not 0 <= args.jpeg_quality <= 100:
        print("pae bag make: error: --jpeg-quality must be in 0..100", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        prepare_target(out, args.force)
        split = datasets.read_dataset(args.data, args.fmt, args.split, scenes=args.scene)
    except (BagError, datasets.DatasetError, ValueError) as exc:
        print(f"pae bag make: error: {exc}", file=sys.stderr)
        return 1
    frames = list(split.frames)
    if args.max_frames is not None:
        frames = frames[: max(0, args.max_frames)]
    if not frames:
        print("pae bag make: error: no frames to write", file=sys.stderr)
        return 1
    scenes = list(dict.fromkeys(f.scene for f in frames))
    if len(scenes) > 1:
        print(f"pae bag make: note: {len(scenes)} scenes ({', '.join(scenes)}) written one after the "
              "other into one bag; use --scene to write one", file=sys.stderr)
    unknown_k = [s for s in scenes if split.intrinsics.get(s) is None]
    if unknown_k:
        print(f"pae bag make: note: no intrinsics for {', '.join(unknown_k)}: camera_info has K = 0 "
              "(uncalibrated); add <scene>/intrinsics.json to fix", file=sys.stderr)

    start_ns = int(Decimal(args.start_time) * 1_000_000_000)  # exact for any decimal SEC
    if args.kidnap and not args.robot:
        print("pae bag make: error: --kidnap needs --robot (odometry to miss the carry)", file=sys.stderr)
        return 2
    if args.robot:
        return _run_robot(args, out, split, frames, scenes, start_ns)
    period_ns = 1e9 / args.rate
    image_topic = COMPRESSED_TOPIC if args.compressed else IMAGE_TOPIC
    image_type = msgs.COMPRESSED_TYPE if args.compressed else msgs.IMAGE_TYPE
    qos = [make_qos(depth=10, reliable=True)]
    scene_ranges: dict[str, list[int]] = {}
    warned_scale: set[str] = set()

    try:
        with atomic_bag(out, args.storage, force=args.force) as bag:
            bag.add_topic(CAMERA_INFO_TOPIC, msgs.CAMERA_INFO_TYPE, qos)
            bag.add_topic(image_topic, image_type, qos)
            bag.add_topic(GT_TOPIC, msgs.POSE_TYPE, qos)
            for i, frame in enumerate(tqdm(frames, desc="pae bag make", unit="frame", disable=None)):
                t_ns = start_ns + int(round(i * period_ns))
                info, img, gt = _frame_messages(frame, t_ns, split.intrinsics.get(frame.scene), args.compressed,
                                                args.jpeg_quality, warned_scale)
                bag.write_msg(CAMERA_INFO_TOPIC, t_ns, info)
                bag.write_msg(image_topic, t_ns, img)
                bag.write_msg(GT_TOPIC, t_ns, gt)
                rng = scene_ranges.setdefault(frame.scene, [t_ns, t_ns])
                rng[1] = t_ns
            bag.set_custom_data("pae_ros.source", json.dumps({
                "data": str(Path(args.data).resolve()), "format": args.fmt, "split": args.split,
                "scenes": scenes, "frames": len(frames), "rate_hz": args.rate,
                "image_topic": image_topic}))
            bag.set_custom_data("pae_ros.scene_ranges", json.dumps(scene_ranges))
    except (BagError, datasets.DatasetError, OSError, ValueError) as exc:
        print(f"pae bag make: error: {exc}", file=sys.stderr)
        return 1
    duration = (len(frames) - 1) / args.rate
    print(f"wrote {out} ({args.storage}): {len(frames)} frames of {', '.join(scenes)} at {args.rate:g} Hz "
          f"({duration:.1f} s), topics {image_topic}, {CAMERA_INFO_TOPIC}, {GT_TOPIC}")
    return 0


def _run_robot(args: argparse.Namespace, out, split, frames: list, scenes: list[str], start_ns: int) -> int:
    """``--robot``: the recording of :mod:`pae_ros.bags.robot_bag`."""
    from .. import datasets
    from ..progress import tqdm
    from . import COMPRESSED_TOPIC
    from .io import BagError, atomic_bag
    from .robot_bag import (DEFAULT_DISTORTION, ODOM_HZ, TF_STATIC_TOPIC, TF_TOPIC, WALK_GAP_S, RobotOptions,
                            write_robot_frames)

    missing = [s for s in scenes if split.intrinsics.get(s) is None]
    if missing:
        print(f"pae bag make: error: --robot needs intrinsics to distort the images; none for "
              f"{', '.join(missing)} (add <scene>/intrinsics.json)", file=sys.stderr)
        return 1
    opts = RobotOptions(rate=args.rate, odom_hz=ODOM_HZ if args.odom_hz is None else args.odom_hz,
                        walk_gap_s=WALK_GAP_S if args.walk_gap is None else args.walk_gap,
                        distortion=args.distortion or DEFAULT_DISTORTION, odom_drift=args.odom_drift,
                        seed=args.odom_seed, jpeg_quality=args.jpeg_quality, start_ns=start_ns,
                        kidnap_ns=[start_ns + int(k * 1_000_000_000) for k in args.kidnap or ()],
                        map_tf=not args.odom_only)
    try:
        opts.check()
    except ValueError as exc:
        print(f"pae bag make: error: {exc}", file=sys.stderr)
        return 2
    warned: set[str] = set()

    def pinhole(frame, rgb):
        return _scaled(frame.scene, split.intrinsics[frame.scene], rgb.shape[1], rgb.shape[0], warned)

    try:
        with atomic_bag(out, args.storage, force=args.force) as bag, \
                tqdm(total=len(frames), desc="pae bag make", unit="frame", disable=None) as bar:
            summary = write_robot_frames(bag, frames, pinhole, opts, progress=bar)
            bag.set_custom_data("pae_ros.source", json.dumps({
                "data": str(Path(args.data).resolve()), "format": args.fmt, "split": args.split,
                "scenes": scenes, "frames": len(frames), "rate_hz": args.rate, "image_topic": COMPRESSED_TOPIC,
                "layout": "robot", "odom_hz": opts.odom_hz, "odom_drift": opts.odom_drift,
                "odom_seed": opts.seed, "distortion": list(opts.distortion), "walks": summary["walks"]}))
            bag.set_custom_data("pae_ros.scene_ranges", json.dumps(summary["scene_ranges"]))
            if summary["kidnaps"]:
                bag.set_custom_data("pae_ros.kidnaps", json.dumps(summary["kidnaps"]))
    except (BagError, datasets.DatasetError, OSError, ValueError) as exc:
        print(f"pae bag make: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({args.storage}): robot recording of {len(frames)} frames in {len(summary['walks'])} "
          f"walk(s) of {', '.join(scenes)} at {args.rate:g} Hz, {TF_TOPIC} at {opts.odom_hz:g} Hz"
          f"{f' (odometry drift x{opts.odom_drift:g})' if opts.odom_drift else ''}, {TF_STATIC_TOPIC}, "
          f"topics {COMPRESSED_TOPIC}, /camera/camera_info (plumb_bob D={list(opts.distortion)}), "
          f"/ground_truth/pose")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m pae_ros.bags.make_cmd``), same as ``pae bag make``."""
    from ..cli import standalone_main

    return standalone_main(__name__ if __name__ != "__main__" else __spec__.name, argv)


if __name__ == "__main__":
    sys.exit(main())
