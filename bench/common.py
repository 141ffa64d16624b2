"""Shared helpers of the benchmarks: untrained bundles of a real architecture, timing, output lines.

Every benchmark prints one line per figure, starting with ``bench <name>``::

    bench refine k=3 batch=1 device=cpu table=600: 0.21 ms/frame (APR forward 24.5 ms; ratio 0.9 %; target <= 10 %: PASS)

i.e. ``bench <name> [key=value ...]: <number> <unit> [(free text)]``; :data:`LINE_RE` parses it.
Targets are printed as PASS / MISS next to the figure, never asserted: timings on a shared CPU
are noisy, ratios measured in one run are what the lines are for.

Bundles: weights do not matter for timing, so :func:`build_untrained_bundle` assembles a bundle
of the given config (default: the ``quick`` preset, the demo's architecture) with random
weights and a random train pose table, the way ``pae_ros.training.run`` assembles header and
tensors, and writes it with :func:`pae_ros.bundle.save_bundle`. ``--bundle PATH`` uses a real
trained bundle instead (e.g. ``out/demo/model.pae`` written by ``pae demo``).
"""
from __future__ import annotations

import argparse
import atexit
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pae_ros  # noqa: F401  (sets OMP_WAIT_POLICY=PASSIVE before torch is imported)

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEMO_BUNDLE = REPO / "out" / "demo" / "model.pae"
DEMO_DATA = REPO / "data" / "demo_scene" / "courtyard"
#: train poses of the demo scene (4 walks x 150 frames)
DEMO_TABLE_SIZE = 600

#: ``bench <name> key=value ...: <number> <unit> (details)``
LINE_RE = re.compile(r"^bench (?P<name>[a-z_]+)(?P<params>(?: [A-Za-z_]+=\S+)*): "
                     r"(?P<value>[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf)) (?P<unit>\S+)(?: \((?P<details>.*)\))?$")

#: a tiny architecture for smoke tests (seconds, not minutes); every key is a real config key
TINY_OVERRIDES = {
    "model": {"type": "posenet", "backbone": "tiny_cnn", "latent_dim": 64, "transformer_heads": 4},
    "input": {"resize": 48, "crop": 48, "random_crop": False, "color_jitter": 0.0},
    "pae": {"hidden": [32, 64]},
    "decoder": {"image_size": 32},
    "refine": {"k": 3, "steps": 20},
}


# --------------------------------------------------------------------------- bundles


def bench_config(tiny: bool = False, overrides: dict | None = None, preset: str = "quick"):
    """The ``quick`` preset (the demo's architecture), or the tiny test architecture, plus overrides."""
    from pae_ros.config import config_from_dict, deep_merge

    data = deep_merge(TINY_OVERRIDES, overrides or {}) if tiny else (overrides or {})
    return config_from_dict(data, preset)


def random_poses(n: int, seed: int = 0, area_m: float = 16.0) -> tuple:
    """``n`` random camera poses: positions uniform in an ``area_m`` x ``area_m`` m square at
    1-2 m height, uniformly random rotations (quaternions wxyz, w >= 0)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pos = np.column_stack([rng.uniform(0, area_m, n), rng.uniform(0, area_m, n), rng.uniform(1.0, 2.0, n)])
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(q[:, :1] < 0, -q, q)
    return pos, q


def untrained_parts(cfg, positions, quaternions, scenes=("bench",), decoder: bool | None = None, seed: int = 0):
    """(header, tensors) of an untrained bundle, assembled like ``pae_ros.training.run``."""
    import numpy as np
    import torch

    from pae_ros.models import PoseAutoEncoder, build_apr, build_decoder
    from pae_ros.refine import table_metric_scales
    from pae_ros.training.data import PoseNormalization
    from pae_ros.training.bundle_parts import prefixed

    scenes = list(scenes)
    torch.manual_seed(seed)
    apr = build_apr(cfg.model, len(scenes), pretrained_weights=False).eval()
    pae = PoseAutoEncoder(cfg.model.latent_dim, cfg.pae.fourier_levels, cfg.pae.hidden, len(scenes)).eval()
    tensors = {**prefixed("apr", apr), **prefixed("pae", pae)}
    if cfg.decoder.enabled if decoder is None else decoder:
        dec = build_decoder(cfg.decoder.type, 2 * cfg.model.latent_dim, cfg.decoder.image_size)
        tensors.update(prefixed("decoder", dec))
    positions = np.asarray(positions, np.float64)
    quaternions = np.asarray(quaternions, np.float64)
    tensors.update(table_tensors(positions, quaternions))
    norm = PoseNormalization.fit(positions)
    ps, os_ = table_metric_scales(positions, quaternions)
    header = {"config": cfg.to_dict(), "scenes": scenes, "position_mean": norm.mean.tolist(),
              "position_scale": norm.scale, "metric_scales": {"position_m": ps, "orientation_rad": os_},
              "input": {"resize": cfg.input.resize, "crop": cfg.input.crop, "color": "rgb",
                        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
              "intrinsics": {s: None for s in scenes}, "benchmark": "untrained weights (timing only)"}
    return header, tensors


def table_tensors(positions, quaternions, scene_idx=None) -> dict:
    import numpy as np
    import torch

    n = len(positions)
    return {"table.positions": torch.as_tensor(np.asarray(positions), dtype=torch.float64),
            "table.quaternions": torch.as_tensor(np.asarray(quaternions), dtype=torch.float64),
            "table.scene_idx": torch.as_tensor(np.zeros(n, np.int64) if scene_idx is None else scene_idx,
                                               dtype=torch.long)}


def build_untrained_bundle(cfg, n_poses: int, out_dir: str | Path | None = None, seed: int = 0,
                           decoder: bool | None = None, name: str = "untrained.pae") -> Path:
    """Write an untrained bundle of ``cfg`` with a random table of ``n_poses`` poses; returns its path.

    ``out_dir`` defaults to a fresh temporary folder, removed when this process exits.
    """
    from pae_ros.bundle import save_bundle

    if out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix="pae_bench_"))
        atexit.register(shutil.rmtree, out_dir, True)
    out_dir = Path(out_dir)
    pos, q = random_poses(n_poses, seed)
    header, tensors = untrained_parts(cfg, pos, q, decoder=decoder, seed=seed)
    path = out_dir / name
    save_bundle(path, header, tensors)
    return path


def with_table(bundle, positions, quaternions):
    """A copy of ``bundle`` (in memory) whose train pose table is replaced (metric scales refitted;
    the position normalisation is kept, it belongs to the trained networks)."""
    from pae_ros.bundle import Bundle
    from pae_ros.refine import table_metric_scales

    tensors = {k: v for k, v in bundle.tensors.items() if not k.startswith("table.")}
    tensors.update(table_tensors(positions, quaternions))
    header = dict(bundle.header)
    ps, os_ = table_metric_scales(positions, quaternions)
    header["metric_scales"] = {"position_m": ps, "orientation_rad": os_}
    return Bundle(header, tensors, bundle.path)


def add_bundle_args(p: argparse.ArgumentParser, table_default: int = DEMO_TABLE_SIZE) -> None:
    p.add_argument("--bundle", default=None,
                   help="a trained bundle (e.g. out/demo/model.pae); default: an untrained bundle of the "
                        "quick preset (weights do not matter for timing)")
    p.add_argument("--table", type=int, default=table_default,
                   help=f"train pose table size of the untrained bundle (default {table_default}, the demo's)")
    p.add_argument("--tiny", action="store_true",
                   help="a tiny architecture (tiny_cnn backbone, 48 px input) for smoke tests")


def bundle_from_args(args, tmp: Path, **kw) -> tuple[Path, str]:
    """(bundle path, one-word description) from ``--bundle`` / ``--table`` / ``--tiny``."""
    if args.bundle:
        path = Path(args.bundle)
        if not path.is_file():
            raise SystemExit(f"bundle not found: {path}")
        return path, "trained"
    cfg = bench_config(tiny=args.tiny)
    return build_untrained_bundle(cfg, args.table, tmp, **kw), "untrained-tiny" if args.tiny else "untrained-quick"


# --------------------------------------------------------------------------- devices and timing


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="cpu, cuda, or auto = cpu and also cuda when a GPU is present")


def devices(arg: str) -> list[str]:
    import torch

    if arg == "cpu":
        return ["cpu"]
    if arg == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA GPU is available")
        return ["cuda"]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def sync(device) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_fn(fn, warmup: int = 3, repeats: int = 20, device="cpu", min_time_s: float = 0.0):
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` calls (perf_counter,
    synchronised on CUDA). With ``min_time_s`` it keeps repeating until that much time passed."""
    import numpy as np

    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    t_start = time.perf_counter()
    while len(out) < repeats or (time.perf_counter() - t_start) < min_time_s:
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
        if len(out) >= 100 * max(repeats, 1):
            break
    return np.asarray(out)


def time_interleaved(fns: dict, rounds: int = 5, per_round: int = 10, warmup: int = 3, device="cpu") -> dict:
    """Seconds per call of several functions, timed in alternating rounds (``per_round`` calls
    of each, ``rounds`` times) so that a machine whose speed drifts during the run (a shared CPU)
    affects all of them alike: their ratios are what these benchmarks report."""
    import numpy as np

    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    out: dict = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                sync(device)
                out[name].append(time.perf_counter() - t0)
    return {name: np.asarray(v) for name, v in out.items()}


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads in this benchmark process (default: torch's, = CPU count)")


def apply_threads(args) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(int(args.threads))


def median_ms(times) -> float:
    import numpy as np

    return float(np.median(times) * 1000.0)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fmt(v: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, plain notation where sensible."""
    if v is None or not math.isfinite(v):
        return "nan" if v is None or math.isnan(v) else "inf"
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    if -4 <= mag < 9:
        return f"{v:.{max(digits - 1 - mag, 0)}f}"
    return f"{v:.{digits - 1}e}"


def line(name: str, params: dict, value: float, unit: str, details: str = "") -> str:
    """Print (and return) one figure line: ``bench <name> k=v ...: <value> <unit> (details)``."""
    ps = "".join(f" {k}={str(v).replace(' ', '_')}" for k, v in params.items())
    text = f"bench {name}{ps}: {fmt(value)} {unit}" + (f" ({details})" if details else "")
    print(text, flush=True)
    return text


def machine_info() -> str:
    """One ``#`` comment line on the machine (CPU count, torch threads, load average, GPU)."""
    import torch

    try:
        load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"# machine: {platform.machine()} cpus={os.cpu_count()} torch_threads={torch.get_num_threads()} "
            f"load_avg(1/5/15 min)={load} torch={torch.__version__} gpu={gpu} python={sys.version.split()[0]}")


def header(name: str, extra: str = "") -> None:
    print(f"# {name}{(': ' + extra) if extra else ''}", flush=True)
    print(machine_info(), flush=True)


def parse_lines(text: str) -> list[dict]:
    """The ``bench`` lines of a benchmark's output as dicts (name, params, value, unit, details)."""
    out = []
    for raw in text.splitlines():
        m = LINE_RE.match(raw.strip())
        if m:
            params = dict(kv.split("=", 1) for kv in m.group("params").split())
            out.append({"name": m.group("name"), "params": params, "value": float(m.group("value")),
                        "unit": m.group("unit"), "details": m.group("details") or ""})
    return out
