"""Two bundles on the same test frames: each row's median error and the paired bootstrap of the
difference, e.g. a bundle trained from a ``pae bag export`` of a scene against one trained from
the scene itself.

    python bench/bench_bundle_pair.py --a out/demo/model.pae data/courtyard \
        --b export.pae data/courtyard_export

The test frames of the two datasets must be the same poses in the same order (an export of the
scene's recording is); rows: APR, refined and published (the geometric stage is off, so
published is the APR/PAE pose the bundle's header names; ``--geometric``: each bundle's map is
used, so published is its geometric fix where it makes one, as the node publishes). Metres and
degrees.
"""
from __future__ import annotations

import argparse

import numpy as np

import common

ROWS = ("apr", "refined", "published")


def errors(bundle: str, data: str, fmt: str, geometric: str = "off") -> tuple[np.ndarray, dict]:
    """(ground-truth positions (N, 3) m, row -> (position error m, orientation error deg))."""
    from pae_ros.datasets import read_dataset
    from pae_ros.evaluation.report import evaluate
    from pae_ros.geometry import orientation_error_deg, position_error
    from pae_ros.pipeline import Localizer

    loc = Localizer.from_bundle(bundle, device="cpu", geometric=geometric)
    test, train = read_dataset(data, fmt, "test"), read_dataset(data, fmt, "train")
    rep = evaluate(loc, test, train, show_progress=False)
    est, gt_p = rep["_arrays"]["estimates"], rep["_arrays"]["gt_positions"]
    gt_q = np.array([f.quaternion for f in test.frames])
    return gt_p, {r: (position_error(est[r][0], gt_p), orientation_error_deg(est[r][1], gt_q)) for r in ROWS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", nargs=2, required=True, metavar=("BUNDLE", "DATA"), help="reference bundle and dataset")
    p.add_argument("--b", nargs=2, required=True, metavar=("BUNDLE", "DATA"), help="compared bundle and dataset")
    p.add_argument("--format", default="7scenes")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--geometric", action="store_true", help="use each bundle's map (<bundle>.map)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print(common.machine_info())
    geometric = "auto" if args.geometric else "off"
    gt_a, err_a = errors(*args.a, args.format, geometric)
    gt_b, err_b = errors(*args.b, args.format, geometric)
    if gt_a.shape != gt_b.shape or np.abs(gt_a - gt_b).max() > 1e-3:
        raise SystemExit("the two datasets' test frames are not the same poses in the same order")
    from pae_ros.metrics import paired_bootstrap_median_diff

    for r in ROWS:
        for k, unit in ((0, "m"), (1, "deg")):
            b = paired_bootstrap_median_diff(err_b[r][k], err_a[r][k])
            common.line("bundle_pair", {"row": r, "unit": unit, "geometric": geometric}, b["diff"], unit,
                        f"median a {np.median(err_a[r][k]):.4g}, b {np.median(err_b[r][k]):.4g}; b - a 95 % paired "
                        f"bootstrap [{b['low']:+.4f}, {b['high']:+.4f}]"
                        f"{', excludes zero' if b['excludes_zero'] else ', contains zero'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
