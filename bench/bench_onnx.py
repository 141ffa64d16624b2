"""APR inference, eager torch vs ONNX Runtime, batch 1, with a numeric agreement check.

The APR is exported with ``pae_ros.training.export_cmd.export_onnx`` (the ``pae export`` code)
and run with onnxruntime's CPUExecutionProvider (intra-op threads = torch's threads, graph
optimisation ALL, sequential execution, no spinning: the same passive waiting torch uses here).
Eager torch runs the same module (``build_export_module``: APR + denormalisation + quaternion
normalisation) under ``torch.inference_mode``. Printed: both ms/frame, the speed-up (target
>= 2x, PASS / MISS) and the max abs difference of position (m), quaternion and latent.
Both APR types: the quick preset's and the other one (posenet / mstransformer), same backbone.

    .venv/bin/python bench/bench_onnx.py [--device cpu|cuda|auto] [--bundle out/demo/model.pae]
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

TARGET_SPEEDUP = 2.0


def ort_session(path: Path, device: str, threads: int, spinning: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return None
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), so, providers=providers)


def bench_one(path: Path, label: str, args, tmp: Path) -> None:
    import numpy as np
    import torch

    from pae_ros.pipeline import Localizer
    from pae_ros.training.export_cmd import build_export_module, export_onnx

    onnx_path = tmp / f"{path.stem}.onnx"
    t0 = time.perf_counter()
    import warnings

    with warnings.catch_warnings():  # the TorchScript exporter's shape-inference chatter
        warnings.simplefilter("ignore")
        export_onnx(path, onnx_path, args.opset)
    export_s = time.perf_counter() - t0
    loc = Localizer.from_bundle(path, device="cpu", refine=False)
    model = loc.info["model"]
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, loc.crop, loc.crop)).astype(np.float32))
    threads = torch.get_num_threads()
    for dev in common.devices(args.device):
        module = build_export_module(loc).to(dev)
        xd = x.to(dev)

        def eager():
            with torch.inference_mode():
                return [t.cpu() for t in module(xd)]

        sess = ort_session(onnx_path, dev, threads, args.ort_spinning)
        base = {"apr": model, "bundle": label, "batch": 1, "device": dev, "input": f"{loc.crop}x{loc.crop}",
                "threads": threads}
        feed = {"image": x.numpy()}
        names = ["position", "quaternion", "latent"]
        fns = {"torch": eager}
        if sess is not None:
            fns["ort"] = lambda: sess.run(names, feed)
        # alternating rounds: a drifting machine speed hits both alike
        times = common.time_interleaved(fns, args.rounds, max(args.repeats // args.rounds, 1), args.warmup, dev)
        torch_ms = common.median_ms(times["torch"])
        common.line("onnx_torch_eager", base, torch_ms, "ms/frame", f"torch eager, {threads} threads")
        if sess is None:
            print(f"# bench_onnx: onnxruntime has no CUDAExecutionProvider: ONNX on {dev} skipped", flush=True)
            continue
        ort_ms = common.median_ms(times["ort"])
        common.line("onnx_runtime", base, ort_ms, "ms/frame",
                    f"{sess.get_providers()[0]}, intra_op {threads} threads, graph opt ALL, "
                    f"spinning {'on' if args.ort_spinning else 'off'}; export {export_s:.1f} s, "
                    f"{onnx_path.stat().st_size / 1e6:.1f} MB")
        speedup = torch_ms / ort_ms
        common.line("onnx_speedup", base, speedup, "x",
                    f"torch {common.fmt(torch_ms)} ms / ONNX Runtime {common.fmt(ort_ms)} ms; "
                    f"target >= {TARGET_SPEEDUP:g}x: {common.verdict(speedup >= TARGET_SPEEDUP)}")
        # agreement on a batch of 4 random inputs
        xb = torch.from_numpy(np.random.default_rng(1).normal(size=(4, 3, loc.crop, loc.crop)).astype(np.float32))
        with torch.inference_mode():
            ref = [t.cpu().numpy() for t in module(xb.to(dev))[:3]]
        got = sess.run(names, {"image": xb.numpy()})
        diffs = {n: float(np.abs(a - b).max()) for n, a, b in zip(names, ref, got)}
        worst = max(diffs.values())
        common.line("onnx_agreement", base, worst, "max_abs_diff",
                    "; ".join(f"{n} {d:.2e}" for n, d in diffs.items())
                    + f"; batch 4; within 1e-3: {common.verdict(worst <= 1e-3)}")
        loc.apr.cpu()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_bundle_args(p)
    common.add_device_arg(p)
    p.add_argument("--types", nargs="+", default=None, choices=("posenet", "mstransformer"),
                   help="APR types of untrained bundles (default: the quick preset's type, then the other; "
                        "ignored with --bundle)")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds the repeats are split into")
    p.add_argument("--warmup", type=int, default=5)
    common.add_threads_arg(p)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--ort-spinning", action="store_true",
                   help="let ONNX Runtime threads spin while waiting (faster on an idle machine, "
                        "starves other work on a loaded small CPU)")
    args = p.parse_args(argv)
    common.apply_threads(args)

    if args.types is None:
        quick = common.bench_config(tiny=args.tiny).model.type
        args.types = [quick] + [t for t in ("posenet", "mstransformer") if t != quick]
    tmp = Path(tempfile.mkdtemp(prefix="pae_bench_onnx_"))
    try:
        if args.bundle:
            path, kind = common.bundle_from_args(args, tmp)
            common.header("bench_onnx", f"bundle {kind} {path}")
            bench_one(path, kind, args, tmp)
        else:
            common.header("bench_onnx", f"untrained bundles ({'tiny' if args.tiny else 'quick preset'}), "
                                        f"APR types {', '.join(args.types)}")
            for t in args.types:
                over = {"model": {"type": t}}
                cfg = common.bench_config(tiny=args.tiny, overrides=over)
                path = common.build_untrained_bundle(cfg, args.table, tmp, decoder=False, name=f"{t}.pae")
                bench_one(path, "untrained-tiny" if args.tiny else "untrained-quick", args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
