"""``pae bag make --robot`` -> ``pae bag export`` round trip: exported poses and intrinsics vs the scene's.

For each ``--case DATA STORAGE`` and each ``--drift`` scale, the train and the test split of the
7Scenes dataset ``DATA`` are written as robot recordings (``pae bag make --robot``: distorted
JPEG images with a plumb_bob camera_info, ``/tf`` ``map -> odom -> base_link`` at 37 Hz, the mount
on ``/tf_static``), then exported together (``pae bag export --pose-frames map:camera_optical
--holdout <test bag> --dup-threshold 0``, undistorting with the camera_info). Printed, over the
train and the test frames: the largest position and rotation difference between the exported
camera-to-world poses and the dataset's (targets 1 mm, 0.01 deg), the largest difference of the
exported intrinsics from the dataset's (pixels), and the mean absolute difference of the exported
(undistorted) images from the rendered ones (grey levels, ``--border`` pixels left out: the
double resampling and JPEG blur edges).

    .venv/bin/python bench/bench_export_roundtrip.py --case data/courtyard mcap --case data/plaza sqlite3 \\
        [--drift 0 1] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parent.parent
POSITION_TARGET_M = 1e-3
ROTATION_TARGET_DEG = 0.01


def _cli(*args: str) -> float:
    """Run ``pae ARGS`` in a fresh process; seconds taken (the output is shown on failure)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pae_ros.cli", *args], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"pae {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return time.perf_counter() - t0


def _image_difference(truth: list, exported: list, border: int) -> float:
    """Mean absolute difference (grey levels, RGB) of exported vs rendered images, inner part only."""
    import numpy as np

    from pae_ros import datasets

    total, count = 0.0, 0
    for a, b in zip(truth, exported):
        x = datasets.load_rgb(a.image_path).astype(np.float64)
        y = datasets.load_rgb(b.image_path).astype(np.float64)
        if border:
            x, y = x[border:-border, border:-border], y[border:-border, border:-border]
        total += float(np.abs(x - y).sum())
        count += x.size
    return total / max(count, 1)


def run_case(data: Path, storage: str, drift: float, work: Path, border: int) -> None:
    import common

    from pae_ros import datasets
    from pae_ros.bags.robot_bag import pose_errors

    name = data.name
    bags = {}
    make_s = 0.0
    for split in ("train", "test"):
        bags[split] = work / f"{name}_{split}"
        make_s += _cli("bag", "make", "--robot", "--data", str(data), "--format", "7scenes", "--split", split,
                       "--storage", storage, "--odom-drift", f"{drift:g}", "--out", str(bags[split]), "--force")
    out = work / f"{name}_export"
    export_s = _cli("bag", "export", str(bags["train"]), str(bags["test"]), "--out", str(out), "--force",
                    "--pose-frames", "map:camera_optical", "--holdout", bags["test"].name, "--dup-threshold", "0")
    truth = {s: datasets.read_dataset(data, "7scenes", s) for s in ("train", "test")}
    got = {s: datasets.read_dataset(out, "7scenes", s) for s in ("train", "test")}
    errs = {s: pose_errors(list(truth[s].frames), list(got[s].frames)) for s in ("train", "test")}
    n = sum(e["frames"] for e in errs.values())
    pos = max(e["max_position_m"] for e in errs.values())
    rot = max(e["max_rotation_deg"] for e in errs.values())
    params = {"scene": name, "storage": storage, "drift": f"{drift:g}", "frames": n}
    split_txt = "; ".join(f"{s} {e['frames']} frames {e['max_position_m'] * 1e3:.3g} mm / "
                          f"{e['max_rotation_deg']:.3g} deg" for s, e in errs.items())
    common.line("export_roundtrip_position", params, pos * 1e3, "mm",
                f"max over train + test; {split_txt}; target <= {POSITION_TARGET_M * 1e3:g} mm: "
                f"{common.verdict(pos <= POSITION_TARGET_M)}")
    common.line("export_roundtrip_rotation", params, rot, "deg",
                f"max over train + test; target <= {ROTATION_TARGET_DEG:g} deg: "
                f"{common.verdict(rot <= ROTATION_TARGET_DEG)}")
    scene = truth["train"].intrinsics[truth["train"].frames[0].scene]
    exported = json.loads((out / "intrinsics.json").read_text())
    keys = ("fx", "fy", "cx", "cy")
    dk = max(abs(float(exported[k]) - float(getattr(scene, k))) for k in keys)
    same_size = (exported["width"], exported["height"]) == (scene.width, scene.height)
    common.line("export_roundtrip_intrinsics", params, dk, "px",
                f"max |exported - scene| of fx fy cx cy; exported {exported['width']}x{exported['height']} "
                f"fx={exported['fx']:.6f} cx={exported['cx']:.3f} cy={exported['cy']:.3f}; size "
                f"{'matches' if same_size else 'DIFFERS'}")
    mad = _image_difference(list(truth["test"].frames), list(got["test"].frames), border)
    report = json.loads((out / "export.json").read_text())
    common.line("export_roundtrip_image", {**params, "border": border}, mad, "grey_levels",
                f"mean |exported - rendered| over the test images' inner part (distort + JPEG + undistort); "
                f"make {make_s:.1f} s, export {export_s:.1f} s, dropped {report['counts']['dropped'] or 'none'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", nargs=2, action="append", metavar=("DATA", "STORAGE"),
                   help="a 7Scenes scene folder and the bag storage (mcap | sqlite3); repeat for several")
    p.add_argument("--drift", type=float, nargs="+", default=[0.0], help="odometry drift scales to run")
    p.add_argument("--border", type=int, default=4, help="pixels left out at each image edge (image line)")
    p.add_argument("--keep", metavar="DIR", help="keep the bags and exports in DIR (default: a temporary folder)")
    args = p.parse_args(argv)
    if not args.case:
        p.error("give at least one --case DATA STORAGE")
    for data, storage in args.case:
        if storage not in ("mcap", "sqlite3"):
            p.error(f"storage must be mcap or sqlite3, got {storage!r}")
        if not Path(data).is_dir():
            p.error(f"{data}: no such dataset folder")

    import common

    common.header("bench_export_roundtrip", "pae bag make --robot (10 Hz camera, 37 Hz /tf) -> pae bag export "
                                            "--pose-frames map:camera_optical")
    with tempfile.TemporaryDirectory(prefix="pae_bench_roundtrip_") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        for data, storage in args.case:
            for drift in args.drift:
                work = root / f"{Path(data).name}_{storage}_drift{drift:g}"
                work.mkdir(parents=True, exist_ok=True)
                run_case(Path(data).resolve(), storage, drift, work, args.border)
    return 0


if __name__ == "__main__":
    sys.exit(main())
