"""Run every benchmark in sequence (each in its own process) and print all their lines.

    .venv/bin/python bench/run_all.py [--device cpu|cuda|auto] [--bundle out/demo/model.pae] [--skip node train]
                                      [--summary]

``--bundle`` goes to the benchmarks that time a bundle (refine, onnx, node, scaling, memory).
``--summary`` repeats the ``bench`` lines at the end (handy when the output is long).
Exit code: 0 when every benchmark exited 0, else 1 (the failing ones are named at the end).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
#: name -> (script, takes --device, takes --bundle)
BENCHMARKS = {
    "refine": ("bench_refine.py", True, True),
    "onnx": ("bench_onnx.py", True, True),
    "node": ("bench_node.py", True, True),
    "train": ("bench_train.py", True, False),
    "memory": ("bench_memory.py", False, True),
    "scaling": ("bench_scaling.py", True, True),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--bundle", default=None, help="a trained bundle for the bundle benchmarks")
    p.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None)
    p.add_argument("--skip", nargs="+", choices=sorted(BENCHMARKS), default=[])
    p.add_argument("--plot", action="store_true", help="bench_scaling also writes bench/out/scaling.png")
    p.add_argument("--summary", action="store_true", help="repeat all bench lines at the end")
    args = p.parse_args(argv)

    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    lines: list[str] = []
    failed: list[str] = []
    t_all = time.perf_counter()
    for name in names:
        script, has_device, has_bundle = BENCHMARKS[name]
        cmd = [sys.executable, str(BENCH_DIR / script)]
        if has_device:
            cmd += ["--device", args.device]  # train: auto = the GPU when present, else the CPU
        if has_bundle and args.bundle:
            cmd += ["--bundle", args.bundle]
        if name == "scaling" and args.plot:
            cmd += ["--plot", str(BENCH_DIR / "out" / "scaling.png")]
        print(f"\n## {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        for raw in proc.stdout:
            sys.stdout.write(raw)
            sys.stdout.flush()
            if raw.startswith("bench "):
                lines.append(raw.rstrip("\n"))
        rc = proc.wait()
        print(f"## {name}: exit {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    if args.summary:
        print("\n## summary")
        for ln in lines:
            print(ln)
    print(f"\n## all done in {time.perf_counter() - t_all:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
