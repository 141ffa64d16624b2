"""What the PAE refinement adds, measured on a scene's test split (prints figures, asserts nothing).

Rows: APR, retrieval top-1, nearest-train snap (k = 1), the PAE fit over the APR's 3 nearest
train poses, uniform weights over the retrieval top-r, the PAE fit over the retrieval top-r (the default with
descriptors), and the union of both candidate sets; paired bootstrap 95 % intervals of the
median difference over test frames. Then the out-of-scene gate: fitted on one test walk's
features, scored on the other walk (in-scene loss) and on blank / noise / flipped / rotated /
other-scene frames.

    python bench/bench_refine_accuracy.py --bundle out/demo/model.pae --data data/demo_scene \
        [--other-data /tmp/other_scene] [--json out.json]

Train-frame descriptors come from the bundle's ``table.descriptors`` or, when absent, are
computed from the train images with the bundle's pretrained backbone (pae_ros.retrieval.Describer).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> dict:
    """median(a) - median(b) and its 95 % percentile interval, resampling frames in pairs."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n, len(a)))
    d = np.median(a[idx], 1) - np.median(b[idx], 1)
    return {"delta_m": float(np.median(a) - np.median(b)), "ci95": [float(np.quantile(d, 0.025)),
                                                                   float(np.quantile(d, 0.975))]}


def table_descriptors(loc, data, fmt):
    from pae_ros.datasets import load_rgb, read_dataset

    train = read_dataset(data, fmt, "train")
    tp = loc.bundle.table_positions
    d = np.linalg.norm(train.positions[:, None] - tp[None], axis=-1)
    row_of = d.argmin(1)
    out = np.zeros((len(tp), 0), np.float32)
    descs = []
    for i in range(0, len(train.frames), 32):
        descs.append(loc.describe([load_rgb(f.image_path) for f in train.frames[i:i + 32]]))
    descs = np.concatenate(descs)
    out = np.zeros((len(tp), descs.shape[1]), np.float32)
    out[row_of[d.min(1) < 1e-9]] = descs[d.min(1) < 1e-9]
    missing = len(tp) - len(set(row_of[d.min(1) < 1e-9].tolist()))
    if missing:
        print(f"warning: {missing} table rows have no train image; their descriptor is zero")
    return out


def run_apr(loc, images, batch=32):
    from pae_ros.pipeline import AprOutput

    outs = [loc.predict_apr(loc.preprocess(images[i:i + batch]), descriptors=True) for i in range(0, len(images), batch)]
    return AprOutput(np.concatenate([o.positions for o in outs]), np.concatenate([o.quaternions for o in outs]),
                     torch.cat([o.latents for o in outs]), np.concatenate([o.scene_idx for o in outs]),
                     np.concatenate([o.descriptors for o in outs]))


def ood_images(images, other, rng):
    h, w = images[0].shape[:2]
    pick = images[:: max(1, len(images) // 40)][:40]
    sets = {"black": [np.zeros((h, w, 3), np.uint8)] * 5, "white": [np.full((h, w, 3), 255, np.uint8)] * 5,
            "gray": [np.full((h, w, 3), 128, np.uint8)] * 5,
            "noise": [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(20)],
            "upside_down": [im[::-1].copy() for im in pick], "rotated_180": [im[::-1, ::-1].copy() for im in pick],
            "rotated_90": [np.ascontiguousarray(np.rot90(im)) for im in pick],
            "mirrored": [im[:, ::-1].copy() for im in pick]}
    if other:
        sets["other_scene"] = other
    return sets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--format", default="7scenes")
    ap.add_argument("--other-data", default=None, help="another scene's dataset root (its test frames = other-scene)")
    ap.add_argument("--retrieval-k", type=int, default=None, help="default: the bundle config's")
    ap.add_argument("--steps", type=int, default=None, help="default: the bundle config's")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from pae_ros.datasets import load_rgb, read_dataset
    from pae_ros.geometry import position_error
    from pae_ros.ood import apply_ood_gate, fit_ood_gate
    from pae_ros.pipeline import Localizer

    t0 = time.time()
    loc0 = Localizer.from_bundle(args.bundle, device="cpu", ood=False)
    desc = loc0.retrieval.descriptors if loc0.retrieval is not None else table_descriptors(loc0, args.data, args.format)
    loc = Localizer(loc0.bundle, device="cpu", table_descriptors=desc, ood=False, retrieval_k=args.retrieval_k,
                    steps=args.steps, refine=True)
    test = read_dataset(args.data, args.format, "test")
    images = [load_rgb(f.image_path) for f in test.frames]
    apr = run_apr(loc, images)
    gt = test.positions
    tp = loc.bundle.table_positions
    args.retrieval_k = loc.retrieval_k
    print(f"refinement: retrieval top {loc.retrieval_k} candidates, {loc.steps} fit steps")
    ridx, rcos = loc.retrieval.query(apr.descriptors, args.retrieval_k)
    rows = {"apr": apr.positions, "retrieval_top1": tp[ridx[:, 0]],
            f"retrieval_top{args.retrieval_k}_mean": tp[ridx].mean(1)}
    rows["knn_k1_snap"] = loc.refine(apr, k=1, candidates="knn").position
    rows["knn3_refined_30steps"] = loc.refine(apr, k=3, steps=30, candidates="knn").position
    rows[f"retrieval{args.retrieval_k}_uniform"] = loc.refine(apr, steps=0, candidates="retrieval").position
    t1 = time.perf_counter()
    ref = loc.refine(apr, candidates="retrieval")
    t_ref = (time.perf_counter() - t1) / len(images)
    rows[f"retrieval{args.retrieval_k}_pae_fit"] = ref.position
    rows["union_pae_fit"] = loc.refine(apr, candidates="union").position
    err = {k: position_error(v, gt) for k, v in rows.items()}
    rep = {"bundle": args.bundle, "frames": len(images), "median_position_m": {k: float(np.median(v)) for k, v in err.items()},
           "refine_ms_per_frame_batched": 1e3 * t_ref}
    main_row = f"retrieval{args.retrieval_k}_pae_fit"
    # batch-1 cost of the default refinement (retrieval candidates + PAE fit) vs the APR forward
    one = apr.rows(np.array([0]))
    frame = loc.preprocess(images[:1])

    def med_ms(fn, n=30):
        ts = []
        for _ in range(n):
            t_ = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t_)
        return 1e3 * float(np.median(ts))

    for _ in range(3):
        loc.refine(one, candidates="retrieval")
        loc.predict_apr(frame, descriptors=True)
    rep["batch1_ms"] = {"refine_retrieval_fit": med_ms(lambda: loc.refine(one, candidates="retrieval")),
                        "apr_forward_torch": med_ms(lambda: loc.predict_apr(frame, descriptors=True), 15)}
    print(f"batch 1: refinement {rep['batch1_ms']['refine_retrieval_fit']:.2f} ms vs torch APR forward "
          f"{rep['batch1_ms']['apr_forward_torch']:.1f} ms "
          f"({100 * rep['batch1_ms']['refine_retrieval_fit'] / rep['batch1_ms']['apr_forward_torch']:.1f} %)")
    rep["pae_increment"] = {
        "vs_knn_k1_snap": paired_bootstrap(err[main_row], err["knn_k1_snap"]),
        "vs_uniform": paired_bootstrap(err[main_row], err[f"retrieval{args.retrieval_k}_uniform"]),
        "vs_retrieval_top1": paired_bootstrap(err[main_row], err["retrieval_top1"]),
        "vs_apr": paired_bootstrap(err[main_row], err["apr"]),
        "knn3_refined_vs_knn_k1": paired_bootstrap(err["knn3_refined_30steps"], err["knn_k1_snap"])}
    for k, v in rep["median_position_m"].items():
        print(f"{k:28s} median position {v:.3f} m")
    for k, v in rep["pae_increment"].items():
        print(f"{k:28s} delta {v['delta_m']:+.3f} m, 95% CI [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]")

    # ---- out-of-scene gate: fit on one test walk, lose-rate on the other, catch-rate on junk
    seqs = np.array(test.sequences)
    walks = sorted(set(seqs.tolist()))
    feats = loc.confidence_features(apr, ref)
    fit_m = seqs == walks[0]
    held = ~fit_m if len(walks) > 1 else np.ones(len(seqs), bool)
    gate = fit_ood_gate({k: v[fit_m] for k, v in feats.items()})
    inside, _ = apply_ood_gate(gate, {k: v[held] for k, v in feats.items()}, int(held.sum()))
    rep["ood"] = {"gate": gate, "fit_on": walks[0], "in_scene_lost": float(1 - inside.mean()),
                  "in_scene_frames": int(held.sum()), "out_of_scene_gated": {}}
    print(f"gate fitted on {walks[0]} ({int(fit_m.sum())} frames): in-scene lost on the other walk(s) "
          f"{100 * (1 - inside.mean()):.1f}% of {int(held.sum())}")
    other = []
    if args.other_data:
        ot = read_dataset(args.other_data, args.format, "test")
        other = [load_rgb(f.image_path) for f in ot.frames[:60]]
    gloc = Localizer(loc0.bundle, device="cpu", table_descriptors=desc, ood=gate, retrieval_k=args.retrieval_k,
                     steps=args.steps, refine=True)
    total, caught = 0, 0
    for name, ims in ood_images(images, other, np.random.default_rng(0)).items():
        ests = gloc.localize_batch(ims)
        g = np.mean([not e.in_scene for e in ests])
        rep["ood"]["out_of_scene_gated"][name] = {"frames": len(ims), "gated": float(g)}
        if name != "mirrored":
            total += len(ims)
            caught += sum(not e.in_scene for e in ests)
        print(f"  {name:12s} gated {100 * g:5.1f}% of {len(ims)}")
    rep["ood"]["out_of_scene_gated_all_but_mirrored"] = caught / max(total, 1)
    print(f"out-of-scene gated overall (without mirrored): {100 * caught / max(total, 1):.1f}% of {total}")
    ests = gloc.localize_batch([images[i] for i in np.flatnonzero(held)])
    rep["ood"]["in_scene_lost_through_localizer"] = float(np.mean([not e.in_scene for e in ests]))
    print(f"in-scene lost through Localizer.localize_batch: {100 * rep['ood']['in_scene_lost_through_localizer']:.1f}%")
    print(f"total {time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
