"""Every inference backend of the Localizer side by side (pae_ros.backends), for bench/gpu_check.sh.

For each backend that can run here (TensorRT EP fp32 / fp16, ONNX Runtime CUDA EP, eager torch
CUDA fp32 / fp16, ONNX Runtime CPU EP, eager torch CPU; the others are printed as skipped with
the reason), it prints:

* start-up: ``Localizer.from_bundle`` + ``warmup()``, cold (empty ONNX export and TensorRT engine
  caches; the engine build timed on its own) and cached (a second start on the filled caches);
* the bare APR (``predict_apr`` on a preprocessed batch of 1: batch upload, forward, pose
  download) p50 / p99, and APR + refinement (``predict_apr`` + ``refine``) p50 / p99, with the
  target APR + refinement <= 1.5x the bare APR;
* images/s (APR + refinement, preprocessed batches) at each batch size and the best;
* GPU memory: device memory in use once the Localizer is up, minus before (cudaMemGetInfo: it
  counts ONNX Runtime's and TensorRT's allocations as well as torch's);
* pose agreement with the CPU path (eager torch CPU fp32): median / max distance of the published
  and of the APR positions over the same images, and for fp16 the same against the backend's
  own fp32 (target: median <= 1 cm);
* the node rate: ``Localizer.localize`` on a 640x480 RGB image (preprocessing included, the
  geometric stage off as in the node's image callback), mean and p99, target 60 Hz.

Images: smooth random 640x480 images (``--images DIR`` uses the .png / .jpg files of a folder).

    .venv/bin/python bench/bench_gpu.py [--bundle out/demo/model.pae] [--tiny] [--budget-s 240]
"""
from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

#: (backend, device, precision) in the auto order, each precision after fp32 of the same engine
CONFIGS = [("tensorrt", "cuda", "fp32"), ("tensorrt", "cuda", "fp16"), ("onnx", "cuda", "fp32"),
           ("torch", "cuda", "fp32"), ("torch", "cuda", "fp16"), ("onnx", "cpu", "fp32"), ("torch", "cpu", "fp32")]
RATIO_TARGET = 1.5
RATE_HZ = 60.0
FP16_TARGET_M = 0.01


def load_images(args, n: int):
    import numpy as np

    if args.images:
        import cv2

        files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:n]
        if not files:
            raise SystemExit(f"--images {args.images}: no .png / .jpg files")
        return [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]
    import cv2

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):  # smooth random images: coarse noise blown up to 640x480
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        out.append(cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC))
    return out


def gpu_used_bytes(device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    import torch

    free, total = torch.cuda.mem_get_info(torch.device(device))
    return int(total - free)


def pct(times, q: float) -> float:
    import numpy as np

    return float(np.percentile(times, q) * 1000.0)


def start(bundle, backend, device, precision, threads):
    from pae_ros.pipeline import Localizer

    t0 = time.perf_counter()
    loc = Localizer.from_bundle(bundle, backend=backend, device=device, precision=precision, geometric="off",
                                threads=threads)
    loc.warmup()
    return loc, time.perf_counter() - t0


def positions(loc, images, batch: int = 16):
    import numpy as np

    pub, apr = [], []
    for i in range(0, len(images), batch):
        for e in loc.localize_batch(images[i:i + batch], geometric=False):
            pub.append(e.position)
            apr.append(e.apr_position)
    return np.array(pub), np.array(apr)


def agreement(a, b) -> tuple[float, float]:
    import numpy as np

    d = np.linalg.norm(a - b, axis=1)
    return float(np.median(d)), float(np.max(d))


def bench_config(cfg, bundle: Path, images, ref, fp32_of: dict, args, cache_root: Path) -> None:
    import numpy as np
    import torch

    from pae_ros import backends
    from pae_ros.backends import BackendError

    backend, device, precision = cfg
    try:
        p = backends.plan(backend, device, precision)
    except BackendError as e:
        why = "no CUDA GPU" if device == "cuda" and not backends.probe().gpus else str(e)
        print(f"# bench_gpu: {backend} {device} {precision} skipped: {why}", flush=True)
        return
    dev = p.device
    label = p.candidates[0].label
    # cold start: empty ONNX export cache and no engine cache beside the bundle
    os.environ["PAE_ROS_CACHE"] = str(cache_root / f"{label}-{precision}")
    shutil.rmtree(os.environ["PAE_ROS_CACHE"], ignore_errors=True)
    shutil.rmtree(str(bundle) + ".trt", ignore_errors=True)
    gc.collect()
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
    used0 = gpu_used_bytes(dev)
    try:
        cold, cold_s = start(bundle, backend, device, precision, args.threads)
    except BackendError as e:
        print(f"# bench_gpu: {label} {precision} skipped: {e}", flush=True)
        return
    info = cold.info
    base = {"backend": label, "device": dev, "precision": precision, "input": info["input"]}
    build = info.get("engine_build_s")
    common.line("gpu_startup", base | {"cache": "cold"}, cold_s, "s",
                f"from_bundle + warmup; engine build {common.fmt(build) + ' s' if build is not None else 'n/a (torch)'}"
                + (f"; cache {info['engine_cache']}" if "engine_cache" in info else ""))
    del cold
    gc.collect()
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
    loc, warm_s = start(bundle, backend, device, precision, args.threads)
    info = loc.info
    common.line("gpu_startup", base | {"cache": "warm"}, warm_s, "s",
                "second start on the filled caches" + (f"; cache {info['engine_cache']}" if "engine_cache" in info else ""))
    # batch 1: bare APR vs APR + refinement
    one = loc.preprocess(images[:1])
    has_ref = loc.refiner is not None

    def apr_only():
        return loc.predict_apr(one)

    def apr_refine():
        a = loc.predict_apr(one)
        return loc.refine(a) if has_ref else a

    fns = {"apr": apr_only, "apr_refine": apr_refine}
    times = common.time_interleaved(fns, args.rounds, max(args.repeats // args.rounds, 1), args.warmup, dev)
    apr_ms, full_ms = common.median_ms(times["apr"]), common.median_ms(times["apr_refine"])
    common.line("gpu_apr", base | {"batch": 1}, apr_ms, "ms/frame",
                f"p50; p99 {common.fmt(pct(times['apr'], 99))} ms; predict_apr: upload, forward, pose download")
    if has_ref:
        ratio = full_ms / apr_ms
        common.line("gpu_apr_refine", base | {"batch": 1, "k": loc.k, "steps": loc.steps}, full_ms, "ms/frame",
                    f"p50; p99 {common.fmt(pct(times['apr_refine'], 99))} ms; {ratio:.2f}x the bare APR; "
                    f"target <= {RATIO_TARGET:g}x: {common.verdict(ratio <= RATIO_TARGET)}")
    else:
        print(f"# bench_gpu: {label}: the bundle has no PAE, APR + refinement skipped", flush=True)
    # throughput
    best = (0.0, 0)
    per = []
    for b in args.batches:
        if backend == "tensorrt" and b > backends.TRT_MAX_BATCH:  # beyond the engine's optimisation profile
            continue
        batch = loc.preprocess([images[i % len(images)] for i in range(b)])

        def run_b():
            a = loc.predict_apr(batch)
            return loc.refine(a) if has_ref else a

        t = common.time_fn(run_b, warmup=2, repeats=max(args.repeats // 10, 3), device=dev)
        ips = b / float(np.median(t))
        per.append(f"b{b} {ips:.0f}")
        best = max(best, (ips, b))
    common.line("gpu_throughput", base | {"batch": best[1]}, best[0], "images/s",
                "APR + refinement on preprocessed batches; " + ", ".join(per))
    used1 = gpu_used_bytes(dev)
    if used0 is not None and used1 is not None:
        common.line("gpu_memory", base, (used1 - used0) / 2 ** 20, "MiB",
                    f"device memory in use with the Localizer up minus before (all allocators); torch peak "
                    f"{torch.cuda.max_memory_allocated(torch.device(dev)) / 2 ** 20:.0f} MiB")
    # agreement
    pub, apr = positions(loc, images)
    if precision == "fp32":
        fp32_of[(label, "fp32")] = (pub, apr)
    if ref is not None and not (backend == "torch" and dev == "cpu" and precision == "fp32"):
        med, mx = agreement(pub, ref[0])
        amed, amx = agreement(apr, ref[1])
        common.line("gpu_agreement", base | {"vs": "torch-cpu-fp32"}, med, "m",
                    f"median published position difference; max {common.fmt(mx)} m; APR median {common.fmt(amed)} "
                    f"max {common.fmt(amx)} m; {len(images)} images")
    if precision == "fp16" and (label, "fp32") in fp32_of:
        med, mx = agreement(pub, fp32_of[(label, "fp32")][0])
        common.line("gpu_fp16_agreement", base | {"vs": f"{label}-fp32"}, med, "m",
                    f"median published position difference; max {common.fmt(mx)} m; target median <= "
                    f"{FP16_TARGET_M:g} m: {common.verdict(med <= FP16_TARGET_M)}")
    # node rate: one 640x480 frame at a time, preprocessing included
    frame = images[0]
    t = common.time_fn(lambda: loc.localize(frame, geometric=False), warmup=3, repeats=args.repeats, device=dev)
    mean_ms = float(np.mean(t) * 1000.0)
    common.line("gpu_node_rate", base | {"image": f"{frame.shape[1]}x{frame.shape[0]}"}, mean_ms, "ms/frame",
                f"Localizer.localize mean, p99 {common.fmt(pct(t, 99))} ms, {1000.0 / mean_ms:.0f} Hz; "
                f"{RATE_HZ:g} Hz needs <= {1000.0 / RATE_HZ:.1f} ms: {common.verdict(mean_ms <= 1000.0 / RATE_HZ)}")
    del loc
    gc.collect()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_bundle_args(p)
    common.add_threads_arg(p)
    p.add_argument("--images", default=None, help="a folder of .png / .jpg images (default: smooth random 640x480)")
    p.add_argument("--n-images", type=int, default=16, help="images of the agreement check")
    p.add_argument("--repeats", type=int, default=200, help="timed calls at batch 1")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--budget-s", type=float, default=0.0,
                   help="start no further backend after this many seconds (0: no limit); those are printed as skipped")
    p.add_argument("--only", nargs="+", default=None,
                   help="labels to run, e.g. tensorrt onnx-cuda torch-cpu (default: all)")
    args = p.parse_args(argv)
    common.apply_threads(args)
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="pae_bench_gpu_"))
    try:
        bundle, kind = common.bundle_from_args(args, tmp)
        if args.bundle:  # the engine cache goes beside the bundle: time a copy, leave the user's cache alone
            bundle = Path(shutil.copy(bundle, tmp / Path(bundle).name))
        common.header("bench_gpu", f"bundle {kind} {args.bundle or bundle}")
        from pae_ros import backends

        platform = backends.probe()
        print(f"# platform: onnxruntime {platform.ort_version} providers {list(platform.ort_providers or [])}; "
              f"TensorRT {platform.tensorrt}; GPUs {[f'{g.name} (sm {g.capability})' for g in platform.gpus]}",
              flush=True)
        auto = backends.plan("auto", "auto", "fp32", platform)
        print(f"# auto picks: {backends.describe(auto.candidates[0], auto)}", flush=True)
        images = load_images(args, args.n_images)
        os.environ["PAE_ROS_CACHE"] = str(tmp / "ref-cache")
        ref_loc, _ = start(bundle, "torch", "cpu", "fp32", args.threads)
        ref = positions(ref_loc, images)
        del ref_loc
        fp32_of: dict = {}
        for cfg in CONFIGS:
            label = "tensorrt" if cfg[0] == "tensorrt" else f"{cfg[0]}-{cfg[1]}"
            if args.only and label not in args.only:
                continue
            if args.budget_s and time.perf_counter() - t_start > args.budget_s:
                print(f"# bench_gpu: {label} {cfg[2]} skipped: time budget {args.budget_s:g} s spent", flush=True)
                continue
            bench_config(cfg, bundle, images, ref, fp32_of, args, tmp)
        print(f"# bench_gpu: done in {time.perf_counter() - t_start:.0f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
