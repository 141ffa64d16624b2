"""Accuracy of every row side by side, for one or more (bundle, dataset) pairs.

Runs :func:`pae_ros.evaluation.report.evaluate` (what ``pae eval`` runs) on each pair's test
split and prints one table with a column per scene: median position / orientation error of
every row (baselines, APR, PAE, refined, published, oracle), the coverage of the test walks,
the paired bootstrap intervals and the calibration of the published estimate. ``--markdown``
writes the same table as Markdown (the README's accuracy table), ``--json`` the reports.

    .venv/bin/python bench/bench_accuracy.py                                     # demo courtyard (+ plaza when trained)
    .venv/bin/python bench/bench_accuracy.py --pair out/demo/model.pae data/demo_scene \\
        --pair out/plaza/model.pae data/plaza --markdown out/accuracy.md

Figures are printed as ``bench accuracy scene=<s> row=<r>: <median> m (...)`` lines too.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))

import pae_ros  # noqa: E402,F401  (sets OMP_WAIT_POLICY=PASSIVE before torch is imported)

#: (bundle, dataset) pairs used when none is given; pairs whose files are missing are skipped
DEFAULT_PAIRS = ((REPO / "out" / "demo" / "model.pae", REPO / "data" / "demo_scene"),
                 (REPO / "out" / "plaza" / "model.pae", REPO / "data" / "plaza"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", nargs="+", action="append", metavar=("BUNDLE", "DATA"), default=None,
                   help="a bundle and its dataset root, optionally a third item: the format (default --format)")
    p.add_argument("--format", dest="fmt", default="7scenes", choices=["7scenes", "cambridge", "csv"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--geometric", default="auto", help="auto | off (the APR/PAE pose alone) | a map file")
    p.add_argument("--retrieval-k", type=int, default=3)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--k-sweep", type=int, nargs="*", default=[])
    p.add_argument("--ood", action="store_true",
                   help="also the out-of-scene gating report (with several pairs, each other pair's test frames "
                        "count as another scene)")
    p.add_argument("--markdown", default=None, help="write the side-by-side table as Markdown here")
    p.add_argument("--json", default=None, help="write {scene: report} here")
    args = p.parse_args(argv)
    pairs = []
    for item in args.pair or [[str(b), str(d)] for b, d in DEFAULT_PAIRS if Path(b).is_file() and Path(d).is_dir()]:
        if len(item) not in (2, 3):
            p.error(f"--pair takes BUNDLE DATA [FORMAT], got {item}")
        pairs.append((Path(item[0]), Path(item[1]), item[2] if len(item) == 3 else args.fmt))
    if not pairs:
        p.error("no (bundle, dataset) pair: give --pair BUNDLE DATA (the defaults are not trained here)")
    args.pairs = pairs
    return args


def side_by_side(reports: dict[str, dict], markdown: bool = False) -> str:
    """One line per row, one column per scene: 'median pos m / median ori deg'."""
    from pae_ros.evaluation.text import table_rows

    rows: list[str] = []
    labels: dict[str, dict] = {}
    for rep in reports.values():
        for r in table_rows(rep):
            if r not in rows:
                rows.append(r)
            labels.setdefault(r, rep["rows"][r])
    scenes = [(name, s) for name, rep in reports.items() for s in rep["scenes"]]

    def cell(name, s, r):
        v = reports[name]["scenes"][s].get(r)
        if not v or v.get("median_position_m") is None:
            return "-"
        return f"{v['median_position_m']:.2f} m / {v['median_orientation_deg']:.1f} deg"

    def cov(name, s):
        c = reports[name]["coverage"][s]
        return f"coverage median {c['median_m']:.1f} m, {100 * c['share_beyond_2m']:.0f}% > 2 m"

    if markdown:
        lines = ["| row | " + " | ".join(s for _, s in scenes) + " |", "|---|" + "---|" * len(scenes)]
        for r in rows:
            name = f"{r} (oracle)" if labels[r].get("oracle") else r
            lines.append(f"| {name} | " + " | ".join(cell(n, s, r) for n, s in scenes) + " |")
        lines.append("| test walks | " + " | ".join(cov(n, s) for n, s in scenes) + " |")
        return "\n".join(lines)
    w = max(len(r) for r in rows) + 2
    cw = max(26, max(len(s) for _, s in scenes) + 2)
    lines = [f"{'row':<{w}}" + "".join(f"{s:>{cw}}" for _, s in scenes), "-" * (w + cw * len(scenes))]
    for r in rows:
        note = "  ORACLE" if labels[r].get("oracle") else ""
        lines.append(f"{r:<{w}}" + "".join(f"{cell(n, s, r):>{cw}}" for n, s in scenes) + note)
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from pae_ros.datasets import load_rgb, read_dataset
    from pae_ros.pipeline import Localizer
    from pae_ros.evaluation.ood_images import load_other_scene, out_of_scene_images, pick_evenly
    from pae_ros.evaluation.plots import json_clean
    from pae_ros.evaluation.report import evaluate
    from pae_ros.evaluation.text import bootstrap_lines, gating_lines

    reports: dict[str, dict] = {}
    for n_pair, (bundle, data, fmt) in enumerate(args.pairs):
        t0 = time.perf_counter()
        loc = Localizer.from_bundle(bundle, device=args.device, geometric=args.geometric)
        test, train = read_dataset(data, fmt, "test"), read_dataset(data, fmt, "train")
        ood = None
        if args.ood:
            other = None
            if len(args.pairs) > 1:
                _, o_data, o_fmt = args.pairs[(n_pair + 1) % len(args.pairs)]
                other = load_other_scene(o_data, o_fmt, "test", 16)
            ood = out_of_scene_images([load_rgb(test.frames[i].image_path) for i in pick_evenly(len(test.frames), 16)],
                                      16, 0, other)
        rep = evaluate(loc, test, train, k_sweep=args.k_sweep, show_progress=False, retrieval_k=args.retrieval_k,
                       n_boot=args.bootstrap, ood=ood)
        rep["_bundle"], rep["_data"], rep["_seconds"] = str(bundle), str(data), time.perf_counter() - t0
        reports[f"{bundle} on {data}"] = rep
        print(f"# {bundle} on {data} ({fmt}): {len(test.frames)} test / {len(train.frames)} train frames, "
              f"{rep['_seconds']:.0f} s", flush=True)
        for s, by_row in rep["scenes"].items():
            for r, v in by_row.items():
                if v["median_position_m"] is not None:
                    print(f"bench accuracy scene={s} row={r}: {v['median_position_m']:.4f} m "
                          f"(median orientation {v['median_orientation_deg']:.2f} deg; mean {v['mean_position_m']:.3f} m; "
                          f"{rep['scenes'][s][r]['frames']} frames)")
        del loc
    print()
    print(side_by_side(reports))
    print()
    for rep in reports.values():
        for line in bootstrap_lines(rep):
            print(line)
        cal = rep.get("calibration")
        if cal:
            print(f"{', '.join(rep['scenes'])}: calibration of the published pose ({cal['method']}): "
                  f"{100 * cal['position']['within_1sigma']:.0f}% / {100 * cal['position']['within_2sigma']:.0f}% of "
                  f"position errors within 1 / 2 sigma (68 / 95 expected), orientation "
                  f"{100 * cal['orientation']['within_1sigma']:.0f}% / {100 * cal['orientation']['within_2sigma']:.0f}%")
            for m, b in (cal.get("by_method") or {}).items():
                print(f"{', '.join(rep['scenes'])}: calibration of the published {m} poses ({b['frames']} frames): "
                      f"{100 * b['position']['within_1sigma']:.0f}% / {100 * b['position']['within_2sigma']:.0f}% "
                      f"within 1 / 2 sigma, median error {b['above_threshold']['median_position_m'] or float('nan'):.3f} m "
                      f"above confidence {cal['confidence_threshold']:g} ({b['above_threshold']['frames']} frames)")
        for line in gating_lines(rep):
            print(f"{', '.join(rep['scenes'])}: {line.strip()}")
        for s, c in rep["coverage"].items():
            print(f"{s}: coverage median {c['median_m']:.2f} m, {100 * c['share_beyond_2m']:.0f}% of test frames beyond "
                  f"2 m; frames per bin {c['frames_per_bin']}")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(side_by_side(reports, markdown=True) + "\n")
        print(f"markdown: {args.markdown}")
    if args.json:
        public = {k: {kk: vv for kk, vv in rep.items() if not kk.startswith("_") or kk in ("_bundle", "_data")}
                  for k, rep in reports.items()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(json_clean(public), indent=2, allow_nan=False))
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
