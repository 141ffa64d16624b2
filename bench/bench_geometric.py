"""The geometric stage (local features + PnP against a sparse map) on a (bundle, dataset) pair.

Prints the map's build time and size against the bundle, the per-query cost split into
features, matching and PnP, the acceptance rate and fallback share (with the fallback reasons),
the covariance coverage of the accepted fixes, and the accuracy rows side by side:
APR, the bundle's published APR/PAE pose, retrieval top-1, geometric (accepted fixes only), and
``published+geometric`` (the fix where accepted, else the APR/PAE pose), for three shortlists:
retrieval top-k, the refinement's candidate train indices, and their union.

    .venv/bin/python bench/bench_geometric.py --bundle out/demo/model.pae \
        --data data/demo_scene --format 7scenes --build --kind rootsift [--limit 50] [--json out.json]

Without ``--build`` the map beside the bundle (``<bundle>.map``, or ``--map``) is used.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (sets OMP_WAIT_POLICY)

import numpy as np  # noqa: E402


def _summary(pe, oe_deg) -> dict:
    pe, oe = np.asarray(pe, np.float64), np.asarray(oe_deg, np.float64)
    if not len(pe):
        return {"n": 0}
    return {"n": int(len(pe)), "median_m": float(np.median(pe)), "p90_m": float(np.quantile(pe, 0.9)),
            "mean_m": float(np.mean(pe)), "median_deg": float(np.median(oe)),
            "within_5cm_5deg": float(np.mean((pe <= 0.05) & (oe <= 5))),
            "within_25cm_2deg": float(np.mean((pe <= 0.25) & (oe <= 2))),
            "within_50cm_5deg": float(np.mean((pe <= 0.5) & (oe <= 5)))}


def _lowo_sweep(bundle, smap, train, args) -> int:
    """Leave-one-walk-out fixes on the train walks; every second hypothesis is computed (ambiguity ratio
    ~0, never flagged) so that each ambiguity_ratio of the sweep is applied afterwards to the same fixes."""
    from pae_ros.datasets import load_rgb
    from pae_ros.geometric import StageSettings
    from pae_ros.geometric.build import frames_for_table, held_out_fixes

    base = StageSettings()
    raw = StageSettings(min_inliers=min(base.min_inliers, 10), ambiguity_ratio=0.01, ambiguity_min_m=float("inf"),
                        distinct_twin_dist=None)
    frames = frames_for_table(bundle, train.frames)
    images = [load_rgb(f.image_path) for f in frames]
    t0 = time.perf_counter()
    fixes = held_out_fixes(smap, bundle, frames, images, args.lowo, args.shortlist, stage_settings=raw, seed=1)
    print(f"# leave-one-walk-out: {len(fixes)} train queries, shortlist top-{args.shortlist} of the other walks, "
          f"{time.perf_counter() - t0:.1f} s; defaults min_inliers={base.min_inliers} ambiguity_ratio="
          f"{base.ambiguity_ratio} distinct_twin_dist={base.distinct_twin_dist} min_distinct_inliers="
          f"{base.min_distinct_inliers}")
    ok = [(r, x) for r, x in fixes if x.accepted]
    err = np.array([np.linalg.norm(x.position - bundle.table_positions[r]) for r, x in ok])
    n1 = np.array([x.inliers for _, x in ok])
    n2 = np.array([x.second_inliers for _, x in ok])
    d2 = np.nan_to_num(np.array([x.second_distance_m for _, x in ok]), nan=0.0)
    twin = smap.twin_distance
    good, gross = err < 0.5, err > 1.0
    report = {"queries": len(fixes), "sweep": []}
    for mi in (15, 20, 25):
        for ar in (None, 0.6, 0.4, 0.25):
            for tau, nd in ((None, 0), (0.4, 5), (0.4, 10), (0.45, 5), (0.45, 10)):
                keep = n1 >= mi
                if ar is not None:
                    keep &= ~((n2 >= ar * n1) & (d2 > base.ambiguity_min_m))
                if tau is not None and twin is not None:
                    keep &= np.array([int(np.sum(twin[x.inlier_points] > tau)) >= nd for _, x in ok], bool)
                row = {"min_inliers": mi, "ambiguity_ratio": ar, "distinct_twin_dist": tau, "min_distinct_inliers": nd,
                       "good": int((keep & good).sum()), "gross": int((keep & gross).sum()), "accepted": int(keep.sum())}
                report["sweep"].append(row)
                print(f"bench geometric_lowo min_inliers={mi} ambiguity_ratio={ar} distinct={tau}/{nd}: "
                      f"{row['accepted']} accepted, {row['good']} good (< 0.5 m), {row['gross']} gross (> 1 m) "
                      f"of {len(fixes)} queries")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--format", default="7scenes")
    ap.add_argument("--map", type=Path, default=None, help="map file (default <bundle>.map)")
    ap.add_argument("--build", action="store_true", help="(re)build the map first and time it")
    ap.add_argument("--recalibrate", action="store_true", help="refit the map's covariance scales first")
    ap.add_argument("--kind", default="rootsift", choices=("rootsift", "sift", "orb"))
    ap.add_argument("--max-keypoints", type=int, default=1024)
    ap.add_argument("--shortlist", type=int, default=None,
                    help="retrieval top-k train images (default: the Localizer's, pae_ros.geometric.stage.SHORTLIST_K)")
    ap.add_argument("--limit", type=int, default=0, help="use every n-th test frame so that at most this many remain")
    ap.add_argument("--no-prior-gate", action="store_true", help="accept fixes regardless of the APR/PAE prior")
    ap.add_argument("--no-ambiguity-test", action="store_true", help="no second PnP hypothesis")
    ap.add_argument("--min-inliers", type=int, default=None)
    ap.add_argument("--lowo", type=int, default=0, metavar="QUERIES",
                    help="instead of the test walks: this many train frames localized leave-one-walk-out (shortlists "
                         "from the other walks only), and the good (< 0.5 m) / gross (> 1 m) accepted fixes for a "
                         "sweep of min_inliers, ambiguity_ratio and the repeated-structure test (distinct_twin_dist / "
                         "min_distinct_inliers): how the stage's settings are chosen without a test frame")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.shortlist is None:
        from pae_ros.geometric.stage import SHORTLIST_K
        args.shortlist = SHORTLIST_K

    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    from pae_ros.bundle import load_bundle
    from pae_ros.datasets import load_rgb, read_dataset
    from pae_ros.geometric import GeometricStage, StageSettings, load_map, map_path_for
    from pae_ros.geometric.build import retrieval_descriptors, run_map_stage, frames_for_table
    from pae_ros.geometric.calibrate import mahalanobis_coverage
    from pae_ros.geometric.mapping import MapSettings
    from pae_ros.confidence import sigma_hit_rate
    from pae_ros.geometry import orientation_error_deg
    from pae_ros.pipeline import Localizer
    from pae_ros.retrieval import Describer

    print(f"# machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; cv2 {cv2.__version__}, 1 thread")
    bundle = load_bundle(args.bundle)
    map_path = args.map or map_path_for(args.bundle)
    train = read_dataset(args.data, args.format, "train")
    test = read_dataset(args.data, args.format, "test")
    print(f"# bundle {args.bundle} ({bundle.bundle_id}), data {args.data}: {len(train)} train / {len(test)} test frames")
    build = {}
    if args.build:
        t0 = time.perf_counter()
        build = run_map_stage(bundle, train, map_path, MapSettings(kind=args.kind, max_keypoints=args.max_keypoints))
        build["wall_s"] = time.perf_counter() - t0
        print(f"bench geometric_map_build kind={args.kind} images={build['images']}: {build['wall_s']:.1f} s "
              f"(features {build['features_s']:.1f} s, matching {build['matching_s']:.1f} s of {build['pairs']} pairs, "
              f"triangulation {build['triangulation_s']:.1f} s, covariance calibration {build['calibration_s']:.1f} s; "
              f"demo budget 15 min)")
    if args.recalibrate and not args.build:
        from pae_ros.geometric.build import recalibrate_map

        t0 = time.perf_counter()
        recalibrate_map(bundle, train, map_path)
        print(f"# map covariance recalibrated in {time.perf_counter() - t0:.1f} s")
    smap = load_map(map_path, bundle)
    mb, bb = map_path.stat().st_size / 1e6, args.bundle.stat().st_size / 1e6
    print(f"bench geometric_map_size kind={smap.kind} points={smap.n_points} observations={len(smap.obs_image)}: "
          f"{mb:.2f} MB (bundle without it {bb:.2f} MB; ratio {mb / bb:.2f}; mean track length "
          f"{smap.track_length.mean():.2f})")
    cal = smap.meta.get("calibration")
    if cal:
        print(f"# covariance calibration (leave-one-walk-out on {cal['queries']} train fixes): position x{cal['position_scale']:.2f}, "
              f"rotation x{cal['orientation_scale']:.2f}")

    if args.lowo:
        return _lowo_sweep(bundle, smap, train, args)

    frames = test.frames
    if args.limit and len(frames) > args.limit:
        frames = frames[:: int(np.ceil(len(frames) / args.limit))]
    loc = Localizer(bundle, device="cpu")
    settings = StageSettings()
    if args.min_inliers is not None:
        settings.min_inliers = args.min_inliers
    if args.no_ambiguity_test:
        settings.ambiguity_ratio = None
    stage = GeometricStage(smap, intrinsics=test.intrinsics.get(frames[0].scene), settings=settings)
    table_frames = frames_for_table(bundle, train.frames)
    describer = Describer(None)
    resize, crop = int(bundle.header["input"]["resize"]), int(bundle.header["input"]["crop"])
    train_desc = (bundle.tensors["table.descriptors"].float().numpy() if "table.descriptors" in bundle.tensors
                  else retrieval_descriptors([load_rgb(f.image_path) for f in table_frames], resize, crop, describer))
    gt_p = np.array([f.position for f in frames])
    gt_q = np.array([f.quaternion for f in frames])
    modes = ("retrieval", "candidates", "union")
    rows = {m: [] for m in ("apr", "published", "retrieval_top1")}
    res_by_mode = {m: [] for m in modes}
    est_all = []
    t_loc = []
    for i, f in enumerate(frames):
        rgb = load_rgb(f.image_path)
        t0 = time.perf_counter()
        est = loc.localize(rgb)
        t_loc.append(time.perf_counter() - t0)
        qd = retrieval_descriptors([rgb], resize, crop, describer)[0]
        top = np.argsort(-(train_desc @ qd))[: args.shortlist]
        cands = [int(c) for c in est.extras.get("neighbors", [])]
        short = {"retrieval": list(top), "candidates": cands or list(top[:1]),
                 "union": list(dict.fromkeys(cands + [int(t) for t in top]))}
        prior = {} if args.no_prior_gate else dict(prior_position=est.position, prior_quaternion=est.quaternion,
                                                    prior_sigma_m=est.sigma_position_m,
                                                    prior_sigma_rad=est.sigma_orientation_rad)
        for m in modes:
            res_by_mode[m].append(stage(rgb, short[m], **prior))
        est_all.append(est)
        rows["apr"].append((est.apr_position, est.apr_quaternion))
        rows["published"].append((est.position, est.quaternion))
        rows["retrieval_top1"].append((bundle.table_positions[top[0]], bundle.table_quaternions[top[0]]))

    def errs(pq, idx=None):
        idx = np.arange(len(frames)) if idx is None else np.asarray(idx, int)
        if not len(idx):
            return np.zeros(0), np.zeros(0)
        p = np.array([pq[i][0] for i in idx])
        q = np.array([pq[i][1] for i in idx])
        return np.linalg.norm(p - gt_p[idx], axis=1), orientation_error_deg(q, gt_q[idx])

    report = {"bundle": str(args.bundle), "bundle_id": bundle.bundle_id, "data": str(args.data),
              "queries": len(frames), "map": {"path": str(map_path), "MB": mb, "bundle_MB": bb, "kind": smap.kind,
                                              "points": smap.n_points, "build": build, "calibration": cal},
              "rows": {}, "shortlists": {}}
    base = {}
    for name, pq in rows.items():
        base[name] = _summary(*errs(pq))
    pub_pe, _ = errs(rows["published"])
    pub_sp = np.array([e.sigma_position_m for e in est_all])
    for m in modes:
        rs = res_by_mode[m]
        acc = np.array([r.accepted for r in rs])
        geo = [(r.position, r.quaternion) if r.accepted else (e.position, e.quaternion) for r, e in zip(rs, est_all)]
        acc_idx = np.nonzero(acc)[0]
        pe_g, oe_g = errs(geo, acc_idx)
        comb = _summary(*errs(geo))
        tim = {k: float(np.median([r.timings.get(k, 0.0) for r in rs]) * 1e3) for k in
               ("features_s", "matching_s", "pnp_s", "total_s")}
        reasons = {}
        for r in rs:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
        sp = np.array([r.sigma_position_m for r in rs])[acc_idx]
        sr = np.array([r.sigma_orientation_rad for r in rs])[acc_idx]
        covs = np.array([r.covariance[:3, :3] for r in rs if r.accepted]).reshape(-1, 3, 3)
        evec = np.array([r.position - gt_p[i] for i, r in enumerate(rs) if r.accepted]).reshape(-1, 3)
        # the published covariance: the fix's where accepted, the APR/PAE sigma elsewhere
        sig_comb = np.where(acc, np.array([r.sigma_position_m for r in rs]), pub_sp)
        pe_comb, _ = errs(geo)
        report["shortlists"][m] = {
            "geometric_accepted_only": _summary(pe_g, oe_g), "published+geometric": comb,
            "acceptance_rate": float(acc.mean()), "fallback_share": float(1 - acc.mean()), "reasons": reasons,
            "ms_per_query_median": tim,
            "coverage_accepted_isotropic": sigma_hit_rate(pe_g, sp) if len(acc_idx) else None,
            "coverage_accepted_rotation": sigma_hit_rate(np.radians(oe_g), sr) if len(acc_idx) else None,
            "coverage_accepted_mahalanobis": mahalanobis_coverage(evec, covs),
            "coverage_published+geometric": sigma_hit_rate(pe_comb, sig_comb)}
    report["rows"] = base
    from pae_ros.coverage import coverage_distance

    cdist = coverage_distance(gt_p, gt_q, bundle.table_positions, bundle.table_quaternions)
    report["per_query"] = [
        {"frame": str(f.image_path), "coverage_m": float(cdist[i]), "published_err_m": float(pub_pe[i]),
         "prior_sigma_m": float(pub_sp[i]),
         **{m: {"accepted": r.accepted, "reason": r.reason, "inliers": r.inliers, "inlier_ratio": r.inlier_ratio,
                "matches": r.matches, "rms_px": r.rms_px, "second_inliers": r.second_inliers,
                "second_distance_m": r.second_distance_m, "sigma_m": r.sigma_position_m,
                "err_m": None if r.position is None else float(np.linalg.norm(r.position - gt_p[i])),
                "to_prior_m": None if r.position is None else float(np.linalg.norm(r.position - est_all[i].position))}
            for m, r in ((m, res_by_mode[m][i]) for m in modes)}}
        for i, f in enumerate(frames)]
    report["localize_ms_median"] = float(np.median(t_loc) * 1e3)

    n = len(frames)
    print(f"# {n} test queries, shortlist retrieval top-{args.shortlist}; prior gate {'off' if args.no_prior_gate else 'on'}")
    for name, s in base.items():
        print(f"bench geometric_accuracy row={name} queries={n}: {s['median_m']:.3f} m (median; p90 {s['p90_m']:.3f} m, "
              f"{s['median_deg']:.2f} deg, within 25cm/2deg {100 * s['within_25cm_2deg']:.0f} %)")
    for m in modes:
        r = report["shortlists"][m]
        g, c = r["geometric_accepted_only"], r["published+geometric"]
        t = r["ms_per_query_median"]
        gm = f"{g['median_m']:.3f} m median, {g['median_deg']:.2f} deg" if g["n"] else "none accepted"
        print(f"bench geometric_accuracy row=published+geometric shortlist={m} queries={n}: {c['median_m']:.3f} m "
              f"(median; p90 {c['p90_m']:.3f} m, {c['median_deg']:.2f} deg, within 25cm/2deg "
              f"{100 * c['within_25cm_2deg']:.0f} %; accepted fixes alone: {gm})")
        print(f"bench geometric_acceptance shortlist={m} queries={n}: {100 * r['acceptance_rate']:.1f} % "
              f"(fallback share {100 * r['fallback_share']:.1f} %; reasons {r['reasons']})")
        print(f"bench geometric_query_cost shortlist={m}: {t['total_s']:.1f} ms/query (median; features "
              f"{t['features_s']:.1f} ms, matching {t['matching_s']:.1f} ms, PnP {t['pnp_s']:.1f} ms; one thread; "
              f"Localizer.localize {report['localize_ms_median']:.1f} ms)")
        ci, cm = r["coverage_accepted_isotropic"], r["coverage_accepted_mahalanobis"]
        if ci:
            ok = 0.55 <= ci["within_1sigma"] <= 0.80 and 0.85 <= ci["within_2sigma"] <= 0.98
            print(f"bench geometric_coverage shortlist={m} accepted={g['n']}: {100 * ci['within_1sigma']:.0f} % "
                  f"(inside 1 sigma, {100 * ci['within_2sigma']:.0f} % inside 2 sigma, isotropic; Mahalanobis "
                  f"{100 * cm['within_1sigma']:.0f} / {100 * cm['within_2sigma']:.0f} %; rotation "
                  f"{100 * r['coverage_accepted_rotation']['within_1sigma']:.0f} / "
                  f"{100 * r['coverage_accepted_rotation']['within_2sigma']:.0f} %; target 55-80 / 85-98 %: "
                  f"{'PASS' if ok else 'MISS'})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=float))
        print(f"# report: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
