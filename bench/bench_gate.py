"""Out-of-scene gate per kind, with and without the decoder flip test (``flip_match``).

For each ``--pair BUNDLE DATA``: the bundle's own gate (``Localizer.localize_batch``, as the node
and ``pae eval`` run it) on every test frame (in-scene frames lost) and on ``--per-kind`` images of
each out-of-scene kind of :mod:`pae_ros.evaluation.ood_images` (black, white, noise, upside down,
mirrored, rotated, another scene when several pairs are given); then the
same with the gate's ``flip_match`` rule removed (the other thresholds unchanged).

    python bench/bench_gate.py --pair out/courtyard.pae data/courtyard --pair out/plaza.pae data/plaza
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def gated_shares(loc, images_by_kind: dict, batch: int = 32) -> dict:
    """``{kind: share of its images with in_scene False}``."""
    out = {}
    for kind, imgs in images_by_kind.items():
        ests = []
        for i in range(0, len(imgs), batch):
            ests += loc.localize_batch(imgs[i:i + batch], geometric=False)
        out[kind] = float(np.mean([not e.in_scene for e in ests]))
    return out


def batch1_ms(loc, img, repeats: int = 20) -> dict:
    """Median ms of ``localize_batch([img])`` (geometric stage off) and of the flip test alone on it."""
    from pae_ros.ood import flip_features

    apr = loc.predict_apr(loc.preprocess([img]))
    runs = {"localize": lambda: loc.localize_batch([img], geometric=False),
            "flip_test": lambda: flip_features(loc, apr.positions, apr.quaternions, apr.scene_idx, [img])}
    out = {}
    for name, fn in runs.items():
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[name] = 1e3 * float(np.median(ts))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", nargs=2, action="append", required=True, metavar=("BUNDLE", "DATA"))
    ap.add_argument("--format", default="7scenes")
    ap.add_argument("--per-kind", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from pae_ros.datasets import load_rgb, read_dataset
    from pae_ros.ood import FLIP_FEATURE
    from pae_ros.pipeline import Localizer
    from pae_ros.evaluation.ood_images import load_other_scene, out_of_scene_images, pick_evenly

    report = {}
    for n, (bundle, data) in enumerate(args.pair):
        t0 = time.perf_counter()
        loc = Localizer.from_bundle(bundle, device="cpu", geometric="off")
        test = read_dataset(data, args.format, "test")
        src = [load_rgb(test.frames[i].image_path) for i in pick_evenly(len(test.frames), args.per_kind)]
        other = None
        if len(args.pair) > 1:
            other = load_other_scene(args.pair[(n + 1) % len(args.pair)][1], args.format, "test", args.per_kind)
        kinds: dict[str, list] = {}
        for kind, img in out_of_scene_images(src, args.per_kind, 0, other):
            kinds.setdefault(kind, []).append(img)
        kinds["in_scene"] = [load_rgb(f.image_path) for f in test.frames]
        gate = loc.ood_gate
        rows = {"with_flip_test": gated_shares(loc, kinds)}
        if gate and FLIP_FEATURE in gate["rules"]:
            plain = {**gate, "rules": {k: v for k, v in gate["rules"].items() if k != FLIP_FEATURE}}
            no_flip = Localizer.from_bundle(bundle, device="cpu", geometric="off", ood=plain)
            rows["without_flip_test"] = gated_shares(no_flip, kinds)
            ms_plain = batch1_ms(no_flip, kinds["in_scene"][0])["localize"]
        else:
            ms_plain = None
        ms = batch1_ms(loc, kinds["in_scene"][0])
        ms["localize_without_flip_test"] = ms_plain
        report[f"{bundle} on {data}"] = {"gate": gate, "frames": {k: len(v) for k, v in kinds.items()}, **rows,
                                         "batch1_ms": ms, "seconds": time.perf_counter() - t0}
        print(f"# {bundle} on {data}: {len(kinds['in_scene'])} test frames, {args.per_kind} per kind; gate rules "
              f"{sorted(gate['rules']) if gate else None}")
        for name, shares in rows.items():
            ood = [k for k in shares if k != "in_scene"]
            print(f"  {name:18s} in-scene lost {100 * shares['in_scene']:5.1f} %; gated: " +
                  ", ".join(f"{k} {100 * shares[k]:.0f} %" for k in ood) +
                  f"; all kinds {100 * np.mean([shares[k] for k in ood]):.1f} %")
        print(f"  batch 1: localize {ms['localize']:.1f} ms, of which the flip test {ms['flip_test']:.1f} ms "
              f"({args.threads} threads)" + (f"; without the flip rule {ms_plain:.1f} ms" if ms_plain else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
