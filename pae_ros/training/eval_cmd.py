"""``pae eval``: evaluate a bundle on a dataset split; print the table, write JSON and plots."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common_args import add_data_arguments, add_device_argument, read_split, setup_logging


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="bundle file written by pae train")
    add_data_arguments(p, split_default="test")
    p.add_argument("--json", default=None, help="report JSON path (default: <out-dir>/report.json)")
    p.add_argument("--out-dir", default=None, help="folder for plots (default: the JSON's folder, else eval_out/)")
    p.add_argument("--k-sweep", type=int, nargs="*", default=[], metavar="K",
                   help="also report refinement with these k (e.g. --k-sweep 1 3 5 10)")
    p.add_argument("--k", type=int, default=None, help="override the bundle's refinement k")
    p.add_argument("--steps", type=int, default=None, help="override the bundle's refinement steps")
    p.add_argument("--no-refine", action="store_true", help="publish the APR pose (refined still reported)")
    p.add_argument("--confidence-threshold", type=float, default=0.5,
                   help="confidence split for the above/below error comparison, in [0, 1]")
    add_device_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from ..bundle import BundleError
    from ..datasets import DatasetError
    from ..metrics import format_table
    from ..pipeline import Localizer
    from .evaluate import evaluate, summary_lines, write_outputs

    setup_logging()
    try:
        loc = Localizer.from_bundle(args.bundle, device=args.device, k=args.k, steps=args.steps,
                                    refine=False if args.no_refine else None)
        test = read_split(args, args.split)
        train = read_split(args, "train") if args.split == "test" else None
    except (BundleError, DatasetError, ValueError) as e:
        print(f"pae eval: {e}", file=sys.stderr)
        return 2
    try:
        report = evaluate(loc, test, train, k_sweep=args.k_sweep, confidence_threshold=args.confidence_threshold,
                          show_progress=not args.quiet)
    except (DatasetError, ValueError) as e:  # an unreadable image, test scenes the bundle does not know
        print(f"pae eval: {e}", file=sys.stderr)
        return 2
    json_path = Path(args.json) if args.json else None
    out_dir = Path(args.out_dir) if args.out_dir else (json_path.parent if json_path else Path("eval_out"))
    files = write_outputs(report, out_dir, json_path)
    methods = ["apr", "pae", "refined"] + [f"refined_k{k}" for k in args.k_sweep]
    print(format_table(report["scenes"], methods))
    for line in summary_lines(report):
        print(line)
    print(f"report: {files['report']}")
    return 0
