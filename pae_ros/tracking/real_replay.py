"""Replay the tracking filter on a dataset's test walks with a bundle's real estimates.

``python -m pae_ros.tracking.real_replay --bundle B --data ROOT [--format 7scenes]`` localizes
every test frame (APR/PAE for each; the geometric stage on every ``--geometric-every``-th frame
when the bundle has a map), simulates drifting odometry of the camera with
:mod:`pae_ros.tracking.odometry_model` (camera = base: the optical camera turned to x forward,
z up), stamps the frames at ``--speed`` m/s along the ground-truth path, and prints raw vs
filtered rows per walk for three feeds: every estimate, geometric fixes only, APR/PAE only
(``--kidnap``: the walks joined into one, the robot carried between them unseen). The
estimates are cached next to ``--out`` so other filter settings replay in seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .filter import METHODS, TrackingParams
from .lie import flatten_planar, pose_from_pq, pose_inverse
from .odometry_model import simulate_odometry
from .replay import OPTICAL_TO_BASE, Estimates, pool_metrics, replay, replay_metrics


#: the estimate streams replayed: every estimate, geometric fixes only, APR/PAE only
FEEDS = ("all", "geometric", "apr")


def localize_walks(bundle: str, data: str, fmt: str, geometric_every: int, batch: int = 16) -> dict:
    """Per test sequence: ground truth (N, 4, 4) and the estimates as flat arrays."""
    from pae_ros.datasets import load_rgb, read_dataset
    from pae_ros.pipeline import Localizer

    split = read_dataset(data, fmt, "test")
    loc = Localizer.from_bundle(bundle)
    walks: dict[str, dict] = {}
    for seq in dict.fromkeys(split.sequences):
        frames = [f for f in split.frames if f.sequence == seq]
        gt = np.stack([pose_from_pq(f.position, f.quaternion) for f in frames])
        rows = {"frame": [], "position": [], "quaternion": [], "covariance": [], "method": [], "in_scene": []}
        for i0 in range(0, len(frames), batch):
            imgs = [load_rgb(f.image_path) for f in frames[i0:i0 + batch]]
            ests = loc.localize_batch(imgs, geometric=False)
            for k, (img, est) in enumerate(zip(imgs, ests)):
                i = i0 + k
                todo = [est]
                if geometric_every and i % geometric_every == 0 and loc.info.get("geometric"):
                    fix = loc.localize_geometric(img, est, descriptor=est.descriptor)
                    if fix.method == "geometric":
                        todo.append(fix)
                for e in todo:
                    rows["frame"].append(i)
                    rows["position"].append(np.asarray(e.position, np.float64))
                    rows["quaternion"].append(np.asarray(e.quaternion, np.float64))
                    rows["covariance"].append(np.asarray(e.covariance, np.float64).reshape(6, 6))
                    rows["method"].append(e.method)
                    rows["in_scene"].append(bool(e.in_scene))
            print(f"{seq}: {min(i0 + batch, len(frames))}/{len(frames)} frames", file=sys.stderr, flush=True)
        walks[seq] = {"gt": gt, **{k: np.asarray(v) for k, v in rows.items()}}
    return walks


def join_walks(walks: dict) -> dict:
    """All walks as one stream (``kidnap:<a>+<b>...``): the robot is carried from the end of each
    walk to the start of the next without the odometry seeing it (``teleports``)."""
    names = list(walks)
    offsets = np.cumsum([0] + [len(walks[n]["gt"]) for n in names])
    joined = {"gt": np.concatenate([walks[n]["gt"] for n in names]),
              "frame": np.concatenate([walks[n]["frame"] + o for n, o in zip(names, offsets)]),
              "teleports": offsets[1:-1]}
    for k in ("position", "quaternion", "covariance", "method", "in_scene"):
        joined[k] = np.concatenate([walks[n][k] for n in names])
    return {"kidnap:" + "+".join(names): joined}


def run_feeds(walks: dict, speed: float, odom_scale: float, seed: int, params: TrackingParams,
              latency_frames: int) -> dict:
    """Raw vs filtered metrics per walk and feed (``all``, ``geometric``, ``apr``)."""
    report = {}
    for seq, w in walks.items():
        gt = w["gt"]
        gt_base = gt @ OPTICAL_TO_BASE
        teleports = np.asarray(w.get("teleports", []), int)
        step = np.linalg.norm(np.diff(gt[:, :3, 3], axis=0), axis=1)
        step[teleports - 1] = np.median(step)                  # a carried robot takes one step's time
        stamps = np.concatenate([[0.0], np.cumsum(step)]) / speed + 1e-3 * np.arange(len(gt))
        # odom starts level on the ground under the first pose (as a robot's odom frame does), so
        # map -> odom is planar and the height and tilt of the camera stay in the odometry
        start = pose_inverse(flatten_planar(gt_base[0])) @ gt_base[0]
        odom = simulate_odometry(stamps, gt_base, scale=odom_scale, seed=seed, start=start, teleports=teleports)
        methods = np.asarray(w["method"])
        feeds = {"all": np.ones(len(methods), bool), "geometric": methods == "geometric",
                 "apr": methods != "geometric"}
        assert tuple(feeds) == FEEDS
        report[seq] = {}
        for name, keep in feeds.items():
            est = Estimates(w["frame"][keep], w["position"][keep], w["quaternion"][keep],
                            w["covariance"][keep], list(methods[keep]), w["in_scene"][keep])
            trace = replay(stamps, est, odom, params, T_cam_base=OPTICAL_TO_BASE, latency_frames=latency_frames)
            report[seq][name] = replay_metrics(trace, est, odom, gt, T_cam_base=OPTICAL_TO_BASE,
                                               kidnap_stamps=stamps[teleports])
    if len(report) > 1:
        report["all walks"] = {name: pool_metrics([report[seq][name] for seq in walks]) for name in FEEDS}
    return report


def _row(seq, feed, m):
    r, f = m["raw"], m["filtered"]

    def g(x):
        return "   -  " if x is None else f"{x:6.2f}"
    return (f"{seq:<10} {feed:<9} raw ATE med/p90/max {g(r['ate_m']['median'])} {g(r['ate_m']['p90'])} "
            f"{g(r['ate_m']['max'])} | filtered {g(f['ate_m']['median'])} {g(f['ate_m']['p90'])} "
            f"{g(f['ate_m']['max'])} | RPE1m med raw/filt {g(r['rpe_1m']['median'])} {g(f['rpe_1m']['median'])} "
            f"| step max {g(f['map_odom_step']['largest_m'])} >0.5m {f['map_odom_step']['over_0.5m']} "
            f"| gross acc {m['gross_accepted']}/{m['gross_offered']} good rej {m['good_rejected']}/"
            f"{m['good_offered']} ign {m['counts'].get('ignored', 0)} | track {m['tracking_share']:.2f} | cov1/2 "
            f"{g(m['coverage_1sigma'])} {g(m['coverage_2sigma'])}"
            + (" | kidnap recovery s " + " ".join(_s(r) for r in m["kidnap_recovery_s"]) + " (first good "
               + " ".join(_s(r) for r in m["kidnap_first_good_s"]) + ")" if m["kidnap_recovery_s"] else ""))


def _number(v: str) -> int | float:
    """``--set`` value: an int when it reads as one, else a float (``1e-3``, ``0.5``)."""
    try:
        return int(v)
    except ValueError:
        return float(v)


def _s(x) -> str:
    return "never" if x is None else f"{x:.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--format", default="7scenes")
    ap.add_argument("--out", required=True, help="report JSON path (estimates cached as <out>.npz)")
    ap.add_argument("--geometric-every", type=int, default=1)
    ap.add_argument("--speed", type=float, default=0.5, help="walking speed, m/s (stamps)")
    ap.add_argument("--odom-scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency-frames", type=int, default=0)
    ap.add_argument("--two-d", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="a TrackingParams field (number), e.g. --set reloc_count=8 (repeatable)")
    ap.add_argument("--kidnap", action="store_true",
                    help="join the walks into one stream, the robot carried between them unseen")
    ap.add_argument("--trusted-methods", default="auto",
                    help="comma-separated methods the filter uses; auto: geometric when the walks have "
                         "geometric fixes (a bundle with a map, as the node's default), else all")
    args = ap.parse_args(argv)
    cache = Path(args.out).with_suffix(".npz")
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            walks = {}
            for key in z.files:
                seq, name = key.split("/", 1)
                walks.setdefault(seq, {})[name] = z[key]
    else:
        walks = localize_walks(args.bundle, args.data, args.format, args.geometric_every)
        np.savez(cache, **{f"{s}/{k}": v for s, w in walks.items() for k, v in w.items()})
    trusted = tuple(args.trusted_methods.split(","))
    if args.trusted_methods == "auto":
        has_fixes = any(np.any(w["method"] == "geometric") for w in walks.values())
        trusted = ("geometric",) if has_fixes else METHODS
    extra = {k: _number(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    params = TrackingParams.from_dict({"two_d_mode": bool(args.two_d), "trusted_methods": trusted, **extra})
    if args.kidnap:
        walks = join_walks(walks)
    report = run_feeds(walks, args.speed, args.odom_scale, args.seed, params, args.latency_frames)
    public = {seq: {feed: {k: v for k, v in m.items() if k != "samples"} for feed, m in feeds.items()}
              for seq, feeds in report.items()}
    Path(args.out).write_text(json.dumps(public, indent=1, default=str))
    for seq, feeds in report.items():
        for feed, m in feeds.items():
            print(_row(seq, feed, m))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
