"""``pae eval``: evaluate a bundle on a dataset split beside its baselines; print the tables,
write JSON and plots (see :mod:`pae_ros.evaluation.report` for the report)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..training.common_args import add_data_arguments, add_device_argument, read_split, setup_logging


def _pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise argparse.ArgumentTypeError(f"expected ROW_A:ROW_B (e.g. published:apr), got {text!r}")
    return a, b


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="bundle file written by pae train")
    add_data_arguments(p, split_default="test")
    p.add_argument("--train-data", default=None,
                   help="dataset root of the train split (default: --data) for retrieval descriptors when the "
                        "bundle stores none, the mean pose, the oracle and coverage; same --format")
    p.add_argument("--json", default=None, help="report JSON path (default: <out-dir>/report.json)")
    p.add_argument("--out-dir", default=None, help="folder for plots (default: the JSON's folder, else eval_out/)")
    p.add_argument("--k-sweep", type=int, nargs="*", default=[], metavar="K",
                   help="also report refinement with these k (e.g. --k-sweep 1 3 5 10)")
    p.add_argument("--k", type=int, default=None, help="override the bundle's refinement k")
    p.add_argument("--steps", type=int, default=None, help="override the bundle's refinement steps")
    p.add_argument("--no-refine", action="store_true", help="publish the APR pose (refined still reported)")
    p.add_argument("--geometric", default="auto", metavar="auto|off|MAP",
                   help="the geometric stage: auto (<bundle>.map when present), off (the APR/PAE pose alone, as a "
                        "robot without the map gets it), or a map file")
    p.add_argument("--retrieval-k", type=int, default=3, help="top-k of the retrieval_topk baseline (default 3)")
    p.add_argument("--retrieval-weighting", default="plain", choices=["plain", "cosine"],
                   help="retrieval_topk position/orientation weights: plain mean or cosine-weighted")
    p.add_argument("--bootstrap", type=int, default=2000, metavar="N",
                   help="paired bootstrap resamples of the median differences (default 2000)")
    p.add_argument("--pairs", type=_pair, nargs="*", default=None, metavar="A:B",
                   help="row pairs for the bootstrap (default: published:apr published:retrieval_top1 "
                        "refined:nearest_snap refined:uniform_k published:nearest_snap refined:apr)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the noise images")
    p.add_argument("--ood", action="store_true",
                   help="gating report on out-of-scene images (black, white, noise, upside-down, mirrored, rotated test frames)")
    p.add_argument("--ood-per-kind", type=int, default=16, help="out-of-scene images of each kind (default 16)")
    p.add_argument("--ood-scene", default=None,
                   help="another scene's dataset root: its test frames count as out-of-scene (implies --ood)")
    p.add_argument("--ood-scene-format", default=None, choices=["7scenes", "cambridge", "csv"],
                   help="format of --ood-scene (default: --format)")
    p.add_argument("--confidence-threshold", type=float, default=0.5,
                   help="confidence split for the above/below error comparison, in [0, 1]")
    add_device_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_ood(test, args) -> list | None:
    """The out-of-scene images the flags ask for (None when none)."""
    if not (args.ood or args.ood_scene):
        return None
    from ..datasets import load_rgb
    from .ood_images import load_other_scene, out_of_scene_images, pick_evenly

    frames = test.frames
    src = [load_rgb(frames[i].image_path) for i in pick_evenly(len(frames), args.ood_per_kind)]
    other = (load_other_scene(args.ood_scene, args.ood_scene_format or args.fmt, "test", args.ood_per_kind)
             if args.ood_scene else None)
    return out_of_scene_images(src, args.ood_per_kind, args.seed, other)


def _load_inputs(args):
    """``(Localizer, test split, train split or None, out-of-scene images or None)`` of the flags."""
    from ..datasets import read_dataset
    from ..pipeline import Localizer

    if args.retrieval_k < 1 or args.bootstrap < 1 or args.ood_per_kind < 1:
        raise ValueError("--retrieval-k, --bootstrap and --ood-per-kind must be >= 1")
    loc = Localizer.from_bundle(args.bundle, device=args.device, k=args.k, steps=args.steps,
                                refine=False if args.no_refine else None, geometric=args.geometric)
    test = read_split(args, args.split)
    if args.train_data:
        train = read_dataset(args.train_data, args.fmt, "train", scenes=args.scenes,
                             on_error="skip" if args.skip_bad else "raise")
    else:
        train = read_split(args, "train") if args.split == "test" else None
    return loc, test, train, build_ood(test, args)


def run(args) -> int:
    from ..bundle import BundleError
    from ..datasets import DatasetError
    from ..geometric.sparse_map import MapError
    from .plots import write_outputs
    from .report import DEFAULT_PAIRS, evaluate
    from .text import print_report

    setup_logging()
    try:
        loc, test, train, ood = _load_inputs(args)
    except (BundleError, DatasetError, MapError, ValueError) as e:
        print(f"pae eval: {e}", file=sys.stderr)
        return 2
    try:
        report = evaluate(loc, test, train, k_sweep=args.k_sweep, confidence_threshold=args.confidence_threshold,
                          show_progress=not args.quiet, retrieval_k=args.retrieval_k,
                          retrieval_weighting=args.retrieval_weighting, n_boot=args.bootstrap, seed=args.seed,
                          pairs=DEFAULT_PAIRS if args.pairs is None else tuple(args.pairs), ood=ood)
    except (DatasetError, ValueError) as e:  # an unreadable image, test scenes the bundle does not know
        print(f"pae eval: {e}", file=sys.stderr)
        return 2
    json_path = Path(args.json) if args.json else None
    out_dir = Path(args.out_dir) if args.out_dir else (json_path.parent if json_path else Path("eval_out"))
    files = write_outputs(report, out_dir, json_path)
    print_report(report)
    print(f"report: {files['report']}")
    return 0
