"""Per-frame refinement time as the train pose table grows (1k .. 100k poses), batch 1, k=3.

For each table size: ``Localizer.refine`` per frame, split into the neighbour search
(``PoseTableIndex.query``, exhaustive and vectorised: distances to every table pose + top-k)
and the PAE-latent fit (``fit_convex_weights`` on the k gathered latents); plus the one-off
cost of caching the table's PAE latents when a bundle is loaded (``Localizer.pae_latents`` over
the table) and their memory. The networks are the bundle's; only the table is swapped (random
poses in a 16 x 16 m area). Optional plot: ``--plot bench/out/scaling.png``.

    .venv/bin/python bench/bench_scaling.py [--sizes 1000 3000 10000 30000 100000] [--device auto]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_bundle_args(p, table_default=1000)
    common.add_device_arg(p)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000],
                   help="train pose table sizes")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds the repeats are split into")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--plot", default=None, help="write a PNG of the curve here (e.g. bench/out/scaling.png)")
    common.add_threads_arg(p)
    args = p.parse_args(argv)
    common.apply_threads(args)

    import numpy as np
    import torch

    from pae_ros.bundle import load_bundle
    from pae_ros.pipeline import Localizer
    from pae_ros.refine import fit_convex_weights

    tmp = Path(tempfile.mkdtemp(prefix="pae_bench_scaling_"))
    results: dict[str, list] = {}
    try:
        path, kind = common.bundle_from_args(args, tmp)
        bundle = load_bundle(path)
        common.header("bench_scaling", f"bundle {kind} {path.name}; tables of random poses, k={args.k}")
        rgb = np.random.default_rng(0).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
        for dev in common.devices(args.device):
            rows = results.setdefault(dev, [])
            for n in args.sizes:
                pos, q = common.random_poses(n, seed=n)
                b = common.with_table(bundle, pos, q)
                t0 = time.perf_counter()
                loc = Localizer(b, device=dev, refine=True)
                common.sync(dev)
                init_s = time.perf_counter() - t0
                # the one-off latent cache alone (what Localizer.__init__ does for the table)
                t_cache = common.time_fn(lambda: loc.pae_latents(b.table_positions, b.table_quaternions,
                                                                 b.table_scene_idx),
                                         warmup=1, repeats=3 if n <= 30000 else 1, device=dev)
                cache_ms = common.median_ms(t_cache)
                cache_mb = loc.refiner.table_latents.numel() * loc.refiner.table_latents.element_size() / 1e6
                frame = loc.preprocess([rgb])
                apr_out = loc.predict_apr(frame)
                base = {"table": n, "k": args.k, "batch": 1, "device": dev, "steps": loc.steps,
                        "threads": torch.get_num_threads()}
                index = loc.refiner.index
                p0 = torch.as_tensor(apr_out.positions, dtype=torch.float32, device=index.device)
                q0 = torch.as_tensor(apr_out.quaternions, dtype=torch.float32, device=index.device)
                idx = index.query(p0, q0, args.k)
                Z = loc.refiner.table_latents[idx]
                z = apr_out.latents.to(index.device, torch.float32)
                fns = {"refine": lambda: loc.refine(apr_out, k=args.k),
                       "search": lambda: index.query(p0, q0, args.k),
                       "fit": lambda: fit_convex_weights(z, Z, loc.steps, loc.lr, loc.cfg.refine.weight_decay),
                       "apr": lambda: loc.predict_apr(frame)}
                times = common.time_interleaved(fns, args.rounds, max(args.repeats // args.rounds, 1),
                                                args.warmup, dev)
                t_ref, t_q, t_fit = times["refine"], times["search"], times["fit"]
                apr_ms = common.median_ms(times["apr"])
                ref_ms, q_ms, fit_ms = (common.median_ms(t) for t in (t_ref, t_q, t_fit))
                other = max(ref_ms - q_ms - fit_ms, 0.0)
                common.line("scaling_refine", base, ref_ms, "ms/frame",
                            f"search {common.fmt(q_ms)} ms ({100 * q_ms / ref_ms:.0f} %); latent fit "
                            f"{common.fmt(fit_ms)} ms ({100 * fit_ms / ref_ms:.0f} %); other (gather, "
                            f"weighted position, host copies) {common.fmt(other)} ms; "
                            f"{100 * ref_ms / apr_ms:.1f} % of the APR forward ({common.fmt(apr_ms)} ms, timed alongside)")
                common.line("scaling_search", base, q_ms, "ms/frame", f"PoseTableIndex.query: shortlist {index.ann_kind} + exact float64 re-rank, {index.fallbacks} fallbacks")
                common.line("scaling_fit", base, fit_ms, "ms/frame", f"fit_convex_weights, {loc.steps} steps")
                common.line("scaling_latent_cache", {"table": n, "device": dev}, cache_ms, "ms",
                            f"one-off at load: PAE latents of the table, {cache_mb:.1f} MB "
                            f"({2 * loc.cfg.model.latent_dim} float32 per pose); whole Localizer init "
                            f"{init_s:.2f} s")
                # retrieval over n descriptors (what the refinement's retrieval candidates query): look-alike
                # train images (1280-d unit rows clustered round n / 20 random centres), exhaustive vs the index
                from pae_ros.retrieval import RetrievalIndex

                rng = np.random.default_rng(n)
                centres = rng.normal(size=(max(n // 20, 1), 1280)).astype(np.float32)
                table_desc = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.normal(size=(n, 1280)).astype(np.float32)
                queries = centres[rng.integers(0, len(centres), 64)] + 0.3 * rng.normal(size=(64, 1280)).astype(np.float32)
                t0 = time.perf_counter()
                ret = RetrievalIndex(table_desc)
                build_s = time.perf_counter() - t0
                qi = iter(range(10 ** 9))
                t_ret = common.time_fn(lambda: ret.query(queries[next(qi) % 64][None], 2), warmup=3,
                                       repeats=args.repeats, device=dev)
                ret_ms = common.median_ms(t_ret)
                got, _ = ret.query(queries, 1)
                want, _ = ret.query(queries, 1, exact=True)
                common.line("scaling_retrieval", {"table": n, "dim": 1280}, ret_ms, "ms/frame",
                            f"RetrievalIndex.query top-2, {ret.ann_kind} (built in {build_s:.1f} s), recall@1 vs "
                            f"exhaustive {np.mean(got[:, 0] == want[:, 0]):.3f} on 64 queries")
                common.line("scaling_refine_with_retrieval", base, ref_ms + ret_ms, "ms/frame",
                            "refine (pose search + fit) + the retrieval query of its candidates")
                rows.append((n, ref_ms, q_ms, fit_ms, cache_ms))
                del loc, b
        if args.plot:
            plot(results, Path(args.plot))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for dev, rows in results.items():
        n = [r[0] for r in rows]
        ax.plot(n, [r[1] for r in rows], "o-", label=f"refine total ({dev})")
        ax.plot(n, [r[2] for r in rows], "s--", label=f"neighbour search ({dev})")
        ax.plot(n, [r[3] for r in rows], "^:", label=f"latent fit ({dev})")
    ax.set_xscale("log")
    ax.set_xlabel("train pose table size (poses)")
    ax.set_ylabel("ms per frame (batch 1)")
    ax.set_title("PAE refinement vs table size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"# bench_scaling: plot written to {out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
