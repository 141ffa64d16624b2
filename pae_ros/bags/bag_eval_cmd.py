"""``pae bag eval``: evaluate recorded pose estimates against ground truth by header stamp.

Reads ``--estimate-topic`` (default ``/pae/pose``, reported as method ``--estimate-name``,
default ``refined``) and ``--apr-topic`` (``/pae/apr_pose``, method ``apr``) from BAG — ``PoseStamped`` or ``PoseWithCovarianceStamped``
— and ground truth ``--gt-topic`` (``/ground_truth/pose``) from ``--gt-bag`` (default BAG).
An estimate matches the ground truth pose with exactly the same header stamp (integer ns);
unmatched estimates and ground truth frames without estimate are counted and reported.
Errors: position in metres (Euclidean), orientation in degrees (``2 acos |<q_est, q_gt>|``),
both in the ground truth frame (``map``), through :mod:`pae_ros.metrics` like ``pae eval``.

Scene names come from ``--scene``, else from the ``pae_ros.scene_ranges`` custom data that
``pae bag make`` stores in its bag (pass the made bag as ``--gt-bag`` when BAG is a recording),
else all frames count as scene ``"bag"``.

Writes to ``--out``: ``report.json`` (also to ``--json``), TUM trajectories for evo
(``gt.tum``, ``refined.tum``, ``apr.tum``: ``timestamp tx ty tz qx qy qz qw``, seconds, metres,
unit quaternion xyzw), ``error_cdf.png`` (position), ``error_cdf_orientation.png`` and
``trajectory_topdown.png`` (ground truth, apr, refined seen from above; per scene
``trajectory_topdown_<scene>.png`` as well when there are several). Exit 0, or 1 when nothing
could be evaluated.

``/pae/pose`` carries what the node *publishes*: the method the bundle header ``published`` names
(refined or the APR, later geometric fixes too; without the key, refined when refinement is on).
The report's ``published`` entry says which row holds that topic; ``--estimate-name published``
names the row after it (``pae demo`` does); the default is ``refined``.

When BAG has the tracking filter's ``--filtered-topic`` (``/pae/filtered_pose``), the report's
``tracking`` entry and the printed ``tracking`` rows compare it with ``--estimate-topic`` (raw)
over the ground-truth frames (:mod:`pae_ros.bags.track_eval`), ``filtered.tum`` is written and
the top-down plots draw it too.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

METHOD_NAMES = ("refined", "apr")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="bag with the estimates (e.g. recorded with `pae bag record`)")
    parser.add_argument("--gt-bag", default=None, help="bag with the ground truth (none given: BAG itself)")
    parser.add_argument("--estimate-topic", default="/pae/pose",
                        help="the published estimates (reported as --estimate-name)")
    parser.add_argument("--estimate-name", default="refined",
                        help="row name of --estimate-topic in the report (default refined; 'published' says what it is)")
    parser.add_argument("--apr-topic", default="/pae/apr_pose", help="APR-only estimates (method 'apr'), if recorded")
    parser.add_argument("--gt-topic", default="/ground_truth/pose", help="ground truth poses")
    parser.add_argument("--out", required=True, help="output folder (report.json, *.tum, *.png)")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the JSON report here")
    parser.add_argument("--scene", default=None, help="report every frame under this scene name")
    track = parser.add_argument_group("tracking rows (when BAG has --filtered-topic)")
    track.add_argument("--filtered-topic", default="/pae/filtered_pose",
                       help="the tracking filter's PoseWithCovarianceStamped (raw vs filtered rows when recorded)")
    track.add_argument("--filtered-frame", default="auto", choices=("auto", "base", "camera"),
                       help="frame the node's poses describe (pae/pose and the filtered pose): base (--base-frame; "
                            "pae/pose is moved to the camera and the ground truth to the base by the /tf_static "
                            "mount), camera, or auto: base when the bags hold that mount")
    track.add_argument("--base-frame", default="base_link", help="the robot frame of the filtered pose")
    track.add_argument("--camera-frame", default="camera_optical", help="the ground truth's frame")
    track.add_argument("--map-frame", default="map", help="map frame of map -> odom on /tf")
    track.add_argument("--odom-frame", default="odom", help="odom frame of map -> odom on /tf")
    parser.add_argument("--plot-axes", default="auto", choices=("auto", "xy", "xz", "yz"),
                        help="world axes of the top-down plot (auto: the two of largest ground truth spread)")


def read_poses(path, topic: str) -> tuple[str | None, dict[int, tuple], int]:
    """Poses of ``topic`` in a bag: (msgtype or None if absent, {stamp_ns: (pos, quat_wxyz)}, duplicates).

    A repeated header stamp keeps the last message and counts as a duplicate.
    """
    from .io import BagError, BagReader
    from .msgs import POSE_TYPES, pose_from_msg

    with BagReader(path) as reader:
        topics = reader.topics()
        if topic not in topics:
            return None, {}, 0
        msgtype = topics[topic].msgtype
        if msgtype not in POSE_TYPES:
            raise BagError(f"{path}: {topic} has type {msgtype}, expected one of {', '.join(POSE_TYPES)}")
        poses: dict[int, tuple] = {}
        dup = 0
        for _t, mt, _log_ns, data in reader.messages([topic]):
            stamp, p, q = pose_from_msg(reader.decode(mt, data))
            dup += stamp in poses
            poses[stamp] = (p, q)
    return msgtype, poses, dup


def scene_ranges(path) -> dict[str, tuple[int, int]]:
    """``pae_ros.scene_ranges`` of a bag made by ``pae bag make``: scene -> (first, last) stamp ns."""
    from .io import BagReader

    with BagReader(path) as reader:
        raw = reader.custom_data.get("pae_ros.scene_ranges")
    if not raw:
        return {}
    try:
        return {str(k): (int(v[0]), int(v[1])) for k, v in json.loads(raw).items()}
    except (ValueError, TypeError, IndexError, AttributeError):
        return {}


def _topdown_axes(choice: str, positions) -> tuple[int, int]:
    import numpy as np

    if choice != "auto":
        return tuple("xyz".index(c) for c in choice)  # type: ignore[return-value]
    pos = np.asarray(positions).reshape(-1, 3)
    if len(pos) < 2:
        return (0, 1)
    drop = int(np.argmin(pos.std(axis=0)))
    a, b = [i for i in range(3) if i != drop]
    return (a, b)


def evaluate(est_by_method: dict[str, dict[int, tuple]], gt: dict[int, tuple],
             scene_of: Callable[[int], str]) -> tuple[dict, dict, dict]:
    """Match by stamp and summarise. Returns (scenes report, per-frame errors, matching counts)."""
    import numpy as np

    from .. import metrics

    scenes: dict[str, dict] = {}
    per_frame: dict[str, dict] = {}
    matching: dict[str, dict] = {}
    gt_scene = {t: scene_of(t) for t in sorted(gt)}
    for name in dict.fromkeys(gt_scene.values()):
        scenes[name] = {}
        per_frame[name] = {}
    for method, est in est_by_method.items():
        stamps = sorted(t for t in est if t in gt)
        matching[method] = {
            "estimates": len(est),
            "ground_truth": len(gt),
            "matched": len(stamps),
            "unmatched_estimates": len(est) - len(stamps),
            "ground_truth_without_estimate": len(gt) - len(stamps),
        }
        for scene in scenes:
            ts = [t for t in stamps if gt_scene[t] == scene]
            if ts:
                pe, oe = metrics.pose_errors(np.stack([est[t][0] for t in ts]), np.stack([est[t][1] for t in ts]),
                                             np.stack([gt[t][0] for t in ts]), np.stack([gt[t][1] for t in ts]))
            else:
                pe, oe = np.zeros(0), np.zeros(0)
            scenes[scene][method] = metrics.summarize_errors(pe, oe)
            per_frame[scene][method] = {
                "stamp_ns": [int(t) for t in ts],
                "position_error_m": [float(v) for v in pe],
                "orientation_error_deg": [float(v) for v in oe],
            }
    return scenes, per_frame, matching


def _read_inputs(args) -> tuple[dict, dict, dict, dict]:
    """``(ground truth, estimates by method, duplicate stamps by topic, scene ranges)`` from the bags;
    raises :class:`~pae_ros.bags.io.BagError` naming a missing topic."""
    from .io import BagError

    gt_bag = args.gt_bag or args.bag
    gt_type, gt, gt_dup = read_poses(gt_bag, args.gt_topic)
    if gt_type is None:
        raise BagError(f"{gt_bag}: no ground truth topic {args.gt_topic}")
    est: dict[str, dict] = {}
    dups = {"ground_truth": gt_dup}
    for method, topic in {args.estimate_name: args.estimate_topic, "apr": args.apr_topic}.items():
        if not topic:
            continue
        mt, poses, dup = read_poses(args.bag, topic)
        if mt is not None:
            est[method] = poses
            dups[method] = dup
    if not est:
        raise BagError(f"{args.bag}: none of the estimate topics {args.estimate_topic}, {args.apr_topic}")
    return gt, est, dups, ({} if args.scene else scene_ranges(gt_bag))


def _node_frame(args):
    """``T_cam_base`` (4x4, metres: the base frame in the camera frame) when the node's poses describe
    ``--base-frame`` (``--filtered-frame`` ``base``, or ``auto`` and the bags' ``/tf_static`` chain
    ``base -> camera`` exists: the node publishes the base once TF has the camera mount); None: they
    describe the camera. :class:`~pae_ros.bags.io.BagError` when ``base`` finds no mount."""
    import numpy as np

    from ..tracking.lie import pose_inverse
    from .io import BagError
    from .robot_bag import TF_STATIC_TOPIC
    from .track_eval import static_chain

    if args.filtered_frame == "camera":
        return None
    T_base_cam = static_chain(dict.fromkeys([args.bag, args.gt_bag or args.bag]), TF_STATIC_TOPIC, args.base_frame,
                              args.camera_frame)
    if T_base_cam is None and args.filtered_frame == "base":
        raise BagError(f"--filtered-frame base: no {TF_STATIC_TOPIC} chain {args.base_frame} -> "
                       f"{args.camera_frame} in the bags")
    return None if T_base_cam is None else np.asarray(pose_inverse(T_base_cam), np.float64)


def _to_camera(poses: dict, T_cam_base) -> dict:
    """``{stamp: (position m, quaternion wxyz)}`` of the base moved to the camera it carries."""
    import numpy as np

    from .. import geometry

    T_base_cam = np.linalg.inv(T_cam_base)
    return {t: geometry.matrix_to_pose(geometry.pose_to_matrix(p, q) @ T_base_cam) for t, (p, q) in poses.items()}


def _tracking(args, gt: dict, est: dict, T_cam_base) -> tuple[dict | None, dict]:
    """Raw (``--estimate-topic``, moved to the camera) vs filtered (``--filtered-topic``) rows of
    :mod:`pae_ros.bags.track_eval`, and the filtered poses; ``(None, {})`` when BAG has no
    filtered topic. ``T_cam_base``: see :func:`_node_frame`."""
    import numpy as np

    from .robot_bag import TF_TOPIC
    from .track_eval import (kidnap_stamps, read_pose_covariances, read_tracking_counts, read_transforms,
                             tracking_report)

    filtered = read_pose_covariances(args.bag, args.filtered_topic) if args.filtered_topic else {}
    if not filtered:
        return None, {}
    log_ns: list[int] = []
    map_odom = read_transforms(args.bag, TF_TOPIC, args.map_frame, args.odom_frame, log_ns)
    rep = tracking_report(gt, est.get(args.estimate_name, {}), filtered, map_odom,
                          kidnap_stamps(args.gt_bag or args.bag), T_cam_base,
                          map_odom_log_ns=log_ns, counts=read_tracking_counts(args.bag))
    rep["filtered_frame"] = args.camera_frame if T_cam_base is None else args.base_frame
    rep["T_cam_base"] = None if T_cam_base is None else np.round(T_cam_base, 9).tolist()
    rep["topics"] = {"raw": args.estimate_topic, "filtered": args.filtered_topic, "map_odom": TF_TOPIC}
    return rep, filtered


def _print_matching(scenes: dict, methods: list[str], matching: dict, dups: dict) -> None:
    from .. import metrics

    print(metrics.format_table(scenes, methods))
    for m in methods:
        c = matching[m]
        print(f"{m}: {c['matched']}/{c['ground_truth']} ground truth frames matched by stamp, "
              f"{c['unmatched_estimates']} of {c['estimates']} estimates without ground truth"
              + (f", {dups[m]} duplicate stamps" if dups.get(m) else ""))


def _write_files(args, out, gt: dict, est: dict, methods: list[str], per_frame: dict, scenes: dict,
                 scene_of: Callable[[int], str], filtered: dict | None = None) -> dict[str, str]:
    """TUM trajectories, error CDFs and top-down plots into ``out``; returns their paths by key."""
    import numpy as np

    from .. import metrics
    from ..evaluation.plots import write_error_cdfs
    from .msgs import write_tum

    files: dict[str, str] = {}
    filtered = filtered or {}
    for name, poses in [("gt", gt)] + [(m, est[m]) for m in methods] + ([("filtered", filtered)] if filtered else []):
        ts = sorted(poses)
        path = out / f"{name}.tum"
        write_tum(path, ts, [poses[t][0] for t in ts] or np.zeros((0, 3)), [poses[t][1] for t in ts] or np.zeros((0, 4)))
        files[f"{name}_tum"] = str(path)

    def pooled(key: str) -> dict:
        return {m: np.concatenate([np.asarray(per_frame[s][m][key]) for s in per_frame]) for m in methods}

    title = Path(args.bag).name
    cdfs = write_error_cdfs(pooled("position_error_m"), pooled("orientation_error_deg"), out, (title, title))
    files["error_cdf_png"] = cdfs["error_cdf"]
    files["error_cdf_orientation_png"] = cdfs["error_cdf_orientation"]

    def topdown(stamps: list[int], path: Path, ttl: str) -> None:
        gt_xyz = np.array([gt[t][0] for t in stamps]).reshape(-1, 3)
        traj = {"ground_truth": gt_xyz}
        for m in ("apr", args.estimate_name):
            if m in est:
                traj[m] = np.array([est[m][t][0] for t in stamps if t in est[m]]).reshape(-1, 3)
        if filtered:
            traj["filtered"] = np.array([filtered[t][0] for t in stamps if t in filtered]).reshape(-1, 3)
        metrics.plot_topdown(traj, path, title=ttl, axes=_topdown_axes(args.plot_axes, gt_xyz))

    gt_stamps = sorted(gt)
    topdown(gt_stamps, out / "trajectory_topdown.png", title)
    files["trajectory_topdown_png"] = str(out / "trajectory_topdown.png")
    if len(scenes) > 1:
        for s in scenes:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in s)
            p = out / f"trajectory_topdown_{safe}.png"
            topdown([t for t in gt_stamps if scene_of(t) == s], p, f"{title}: {s}")
            files[f"trajectory_topdown_{safe}_png"] = str(p)
    return files


def run(args: argparse.Namespace) -> int:
    from .io import BagError

    if not args.estimate_name or args.estimate_name == "apr" or not args.estimate_name.replace("_", "").isalnum():
        print(f"pae bag eval: error: --estimate-name {args.estimate_name!r}: use a plain name other than 'apr'",
              file=sys.stderr)
        return 1
    gt_bag = args.gt_bag or args.bag
    try:
        gt, est, dups, ranges = _read_inputs(args)
    except (BagError, FileNotFoundError) as exc:
        print(f"pae bag eval: error: {exc}", file=sys.stderr)
        return 1
    if not gt:
        print(f"pae bag eval: error: {gt_bag}: {args.gt_topic} has no messages", file=sys.stderr)
        return 1

    def scene_of(t: int) -> str:
        if args.scene:
            return args.scene
        for name, (a, b) in ranges.items():
            if a <= t <= b:
                return name
        return "bag"

    try:
        T_cam_base = _node_frame(args)
    except BagError as exc:
        print(f"pae bag eval: error: {exc}", file=sys.stderr)
        return 1
    if T_cam_base is not None and args.estimate_name in est:  # the node's pose of the base: compare its camera
        est[args.estimate_name] = _to_camera(est[args.estimate_name], T_cam_base)
    scenes, per_frame, matching = evaluate(est, gt, scene_of)
    methods = [m for m in (args.estimate_name, "apr") if m in est]
    _print_matching(scenes, methods, matching, dups)
    if not any(c["matched"] for c in matching.values()):
        print("pae bag eval: error: no estimate matched a ground truth stamp", file=sys.stderr)
        return 1
    tracking, filtered = _tracking(args, gt, est, T_cam_base)
    if tracking is not None:
        from .track_eval import format_rows

        print(format_rows(tracking))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = _write_files(args, out, gt, est, methods, per_frame, scenes, scene_of, filtered)
    topics = {args.estimate_name: args.estimate_topic, "apr": args.apr_topic}
    report = {
        "scenes": scenes,
        "per_frame": per_frame,
        "methods": methods,
        "matching": matching,
        "duplicate_stamps": dups,
        "bag": str(Path(args.bag).resolve()),
        "gt_bag": str(Path(gt_bag).resolve()),
        "topics": {"ground_truth": args.gt_topic, **{m: topics[m] for m in methods}},
        "published": {"topic": args.estimate_topic, "row": args.estimate_name if args.estimate_name in est else None,
                      "note": "the topic carries the method the bundle header 'published' names "
                              "(absent: refined when refinement is on)"},
        "units": {"position": "m", "orientation": "deg", "stamp": "ns since epoch"},
        "files": files,
    }
    if tracking is not None:
        report["tracking"] = tracking
    text = json.dumps(report, indent=2) + "\n"
    (out / "report.json").write_text(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    tums = [f"{m}.tum" for m in methods + (["filtered"] if filtered else [])]
    print(f"wrote {out}/report.json, gt.tum, {', '.join(tums)}, error_cdf.png, "
          "trajectory_topdown.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m pae_ros.bags.bag_eval_cmd``), same as ``pae bag eval``."""
    from ..cli import standalone_main

    return standalone_main(__name__ if __name__ != "__main__" else __spec__.name, argv)


if __name__ == "__main__":
    sys.exit(main())
