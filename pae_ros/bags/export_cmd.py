"""``pae bag export BAG [BAG ...] --out DIR``: the robot's recordings -> a 7Scenes training set.

See :mod:`pae_ros.bags.export` for the output layout, the pose sources and the conventions.
"""
from __future__ import annotations

import argparse
import sys


def _frames(text: str) -> tuple[str, str]:
    parent, sep, child = text.partition(":")
    if not sep or not parent or not child or ":" in child:
        raise argparse.ArgumentTypeError(f"expected PARENT:CHILD, got {text!r}")
    return parent.lstrip("/"), child.lstrip("/")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="+", metavar="BAG",
                        help="recordings: rosbag2 folders (sqlite3 or MCAP, compressed too) or ROS 1 .bag files; "
                             "each bag becomes its own sequence(s)")
    parser.add_argument("--out", required=True, help="output scene folder (7Scenes layout, read by "
                                                      "pae train --format 7scenes --data DIR)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    src = parser.add_argument_group("pose source (exactly one)")
    src.add_argument("--pose-frames", type=_frames, metavar="PARENT:CHILD",
                     help="poses from the TF tree: CHILD in PARENT at each image's header stamp, then CHILD -> the "
                          "image's frame from the tree (e.g. map:camera_optical, or map:base_link plus the mount)")
    src.add_argument("--pose-topic", metavar="TOPIC",
                     help="poses from a PoseStamped / PoseWithCovarianceStamped / Odometry / TransformStamped topic")
    src.add_argument("--pose-body-frame", metavar="FRAME",
                     help="frame whose pose --pose-topic gives (default: the message's child_frame_id, else the "
                          "camera frame); when it is not the camera frame the mount comes from the TF tree")
    src.add_argument("--static-tf", action="append", default=[], metavar="PARENT:CHILD:x,y,z,qx,qy,qz,qw",
                     help="a static edge (metres; quaternion in ROS order x,y,z,w) that replaces the bag's; "
                          "repeat for several (ROS 2 bags often lack /tf_static)")
    src.add_argument("--max-tf-gap", type=float, default=0.5, metavar="S",
                     help="refuse interpolating across samples further apart than this, seconds "
                          "(TF edges, and --pose-topic with --interpolate)")
    src.add_argument("--t-max-diff", type=float, default=0.02, metavar="S",
                     help="--pose-topic: nearest pose within this many seconds of the image stamp")
    src.add_argument("--t-offset", type=float, default=0.0, metavar="S",
                     help="--pose-topic: seconds added to the pose topic's stamps (evo's convention)")
    src.add_argument("--interpolate", action="store_true",
                     help="--pose-topic: interpolate between the two poses around the stamp instead of the nearest")
    cam = parser.add_argument_group("camera")
    cam.add_argument("--image-topic", help="Image or CompressedImage topic (default: the bag's only one)")
    cam.add_argument("--camera-info-topic", help="CameraInfo topic (default: camera_info beside the image topic)")
    cam.add_argument("--camera-frame", help="camera frame (default: each image's header frame_id)")
    cam.add_argument("--camera-convention", choices=("auto", "optical", "ros-body"), default="auto",
                     help="axes of the camera frame: optical (x right, y down, z forward), ros-body (REP 103 "
                          "x forward, z up: converted to optical and reported), auto: optical when the name ends "
                          "in _optical / _optical_frame")
    cam.add_argument("--keep-distortion", action="store_true",
                     help="write images as recorded and the distortion into intrinsics.json "
                          "(default: undistort with the camera_info rectification, as image_proc does)")
    sel = parser.add_argument_group("frame selection")
    sel.add_argument("--min-dist", type=float, default=0.0, metavar="M",
                     help="keep a frame once the path since the last kept frame reaches this (metres; 0: off)")
    sel.add_argument("--min-angle-deg", type=float, default=0.0, metavar="DEG",
                     help="... or the rotation since the last kept frame reaches this (degrees; 0: off)")
    sel.add_argument("--min-dt", type=float, default=0.0, metavar="S", help="and at least this many seconds passed")
    sel.add_argument("--blur-threshold", type=float, default=0.0,
                     help="drop frames whose variance of the Laplacian is below this (grey levels^2; 0: off; "
                          "export.json reports the exported frames' range)")
    sel.add_argument("--dup-threshold", type=float, default=0.5,
                     help="drop a frame whose 16x16 grey thumbnail differs from the last kept one by less than "
                          "this mean absolute difference (grey levels; 0: off)")
    sel.add_argument("--holdout", action="append", default=[], metavar="BAGNAME|T0:T1",
                     help="test split: a whole bag (its folder / file name), or a time block in seconds from each "
                          "bag's first image; repeat for several. Default: the last bag, or with one bag its "
                          "last 20 %% of time")
    sel.add_argument("--sequence-gap", type=float, default=1.0, metavar="S",
                     help="a pause of more than this many seconds between two images of a bag starts a new "
                          "sequence (a new walk: training holds out whole walks for calibration; 0: off)")
    sel.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N exported frames")


def run(args: argparse.Namespace) -> int:
    from .export import ExportError, ExportOptions, export_bags

    opts = ExportOptions(
        image_topic=args.image_topic, camera_info_topic=args.camera_info_topic, pose_frames=args.pose_frames,
        pose_topic=args.pose_topic, pose_body_frame=args.pose_body_frame, camera_frame=args.camera_frame,
        camera_convention=args.camera_convention, static_tf=list(args.static_tf), max_tf_gap=args.max_tf_gap,
        t_max_diff=args.t_max_diff, t_offset=args.t_offset, interpolate=args.interpolate, min_dist=args.min_dist,
        min_angle_deg=args.min_angle_deg, min_dt=args.min_dt, blur_threshold=args.blur_threshold,
        dup_threshold=args.dup_threshold, holdout=list(args.holdout), undistort=not args.keep_distortion,
        sequence_gap=args.sequence_gap, max_frames=args.max_frames)
    try:
        export_bags(args.bags, args.out, opts, force=args.force)
    except ExportError as e:
        print(f"pae bag export: error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m pae_ros.bags.export_cmd``), same as ``pae bag export``."""
    from ..cli import standalone_main

    return standalone_main(__name__ if __name__ != "__main__" else __spec__.name, argv)


if __name__ == "__main__":
    sys.exit(main())
