"""Refinement cost vs the APR forward, one frame (batch 1), k = 1, 3, 5, 10.

Times ``Localizer.refine(apr_output, k=k)`` (neighbour search + convex latent fit with the
bundle's steps) against ``Localizer.predict_apr`` on one preprocessed frame, and the whole
``Localizer.localize`` (preprocessing, APR, refinement, confidence features) for context.
Target: refinement at k=3 costs at most 10 % of the APR forward (printed PASS / MISS).

    .venv/bin/python bench/bench_refine.py [--device cpu|cuda|auto] [--bundle out/demo/model.pae]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TARGET_RATIO_PCT = 10.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_bundle_args(p)
    common.add_device_arg(p)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 3, 5, 10], help="neighbour counts")
    p.add_argument("--repeats", type=int, default=50, help="timed calls per figure (median reported)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds the repeats are split into")
    p.add_argument("--warmup", type=int, default=5)
    common.add_threads_arg(p)
    args = p.parse_args(argv)
    common.apply_threads(args)

    import numpy as np
    import torch

    from pae_ros.bundle import load_bundle
    from pae_ros.pipeline import Localizer

    tmp = Path(tempfile.mkdtemp(prefix="pae_bench_refine_"))
    try:
        path, kind = common.bundle_from_args(args, tmp)
        bundle = load_bundle(path)
        common.header("bench_refine", f"bundle {kind} {path.name}, table {len(bundle.table_positions)} poses")
        rng = np.random.default_rng(0)
        rgb = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
        for dev in common.devices(args.device):
            loc = Localizer(bundle, device=dev, refine=True)
            loc.warmup()
            info = loc.info
            base = {"batch": 1, "device": dev, "model": info["model"], "input": info["input"],
                    "table": info["table_size"], "steps": loc.steps, "threads": torch.get_num_threads()}
            batch = loc.preprocess([rgb])
            apr_out = loc.predict_apr(batch)
            fns = {"apr": lambda: loc.predict_apr(batch)}
            for k in args.ks:
                fns[k] = (lambda k_=k: loc.refine(apr_out, k=k_))
            # alternating rounds: a drifting machine speed hits the APR and the refinement alike
            times = common.time_interleaved(fns, args.rounds, max(args.repeats // args.rounds, 1), args.warmup, dev)
            apr_t = times["apr"]
            apr_ms = common.median_ms(apr_t)
            common.line("apr_forward", base, apr_ms, "ms/frame",
                        f"Localizer.predict_apr on one preprocessed {info['input']} frame; "
                        f"p90 {np.percentile(apr_t, 90) * 1e3:.2f} ms")
            for k in args.ks:
                ms = common.median_ms(times[k])
                ratio = 100.0 * ms / apr_ms
                details = f"APR forward {common.fmt(apr_ms)} ms; ratio {ratio:.1f} %"
                if k == 3:
                    details += f"; target <= {TARGET_RATIO_PCT:g} %: {common.verdict(ratio <= TARGET_RATIO_PCT)}"
                common.line("refine", {"k": k, **base}, ms, "ms/frame", details)
            n_thr = torch.get_num_threads()
            if dev == "cpu" and n_thr > 1:  # context: the same forward on one intra-op thread
                def one_thread(n):
                    torch.set_num_threads(n)
                    loc.predict_apr(batch)
                try:
                    tt = common.time_interleaved({n_thr: lambda: one_thread(n_thr), 1: lambda: one_thread(1)},
                                                 args.rounds, max(args.repeats // args.rounds, 1), args.warmup, dev)
                finally:
                    torch.set_num_threads(n_thr)
                ms1, msn = common.median_ms(tt[1]), common.median_ms(tt[n_thr])
                common.line("apr_forward", {**base, "threads": 1}, ms1, "ms/frame",
                            f"the same forward on 1 intra-op thread, timed alongside {n_thr} threads "
                            f"({common.fmt(msn)} ms); {n_thr}-thread / 1-thread time = {msn / ms1:.2f}")
            t = common.time_fn(lambda: loc.preprocess([rgb]), args.warmup, args.repeats, dev)
            common.line("preprocess", {**base, "image": "640x480"}, common.median_ms(t), "ms/frame",
                        "Localizer.preprocess: resize shorter side, centre crop, normalise")
            ref = loc.refine(apr_out)
            t = common.time_fn(lambda: loc.confidence_features(apr_out, ref), args.warmup, args.repeats, dev)
            common.line("confidence_features", base, common.median_ms(t), "ms/frame",
                        "Localizer.confidence_features: PAE of the APR pose + residual / spread")
            t = common.time_fn(lambda: loc.localize(rgb), args.warmup, max(args.repeats // 2, 5), dev)
            common.line("localize", {**base, "k": loc.k, "image": "640x480"}, common.median_ms(t), "ms/frame",
                        f"Localizer.localize: preprocess + APR + refine k={loc.k} + confidence features; "
                        f"APR forward {common.fmt(apr_ms)} ms")
            del loc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
