"""``pae bag export`` speed and memory: frames/s and peak RSS for synthetic robot recordings.

For each ``--frames N`` a recording of N camera images (10 Hz, ``--size``, random texture, raw
``rgb8``), odometry TF at 37 Hz and the mount on ``/tf_static`` is written with rosbags' writer
(:mod:`pae_ros.bags.robot_recording`), then exported from TF (``map:base_link``) in a fresh
process whose peak RSS (``ru_maxrss``) is reported. Images are streamed, so the peak RSS should
not grow with the recording's length: the last line is the growth from the shortest to the
longest recording.

    .venv/bin/python bench/bench_bag_export.py [--frames 1000 5000] [--size 64x48] [--storage mcap]
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


def _child(bag: str, out: str) -> int:
    """Export one recording in this process; print frames, seconds and peak RSS as JSON."""
    import resource

    from pae_ros.bags.export import ExportOptions, export_bags

    t0 = time.perf_counter()
    report = export_bags([Path(bag)], Path(out), ExportOptions(pose_frames=("map", "base_link")),
                         say=lambda m: None)
    dt = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    print(json.dumps({"written": report["counts"]["written"], "seconds": dt, "peak_rss_mb": rss_mb}))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[1000, 5000], help="recording lengths (images)")
    p.add_argument("--size", default="64x48", help="image size WxH, pixels")
    p.add_argument("--storage", default="mcap", choices=("mcap", "mcap-zstd", "sqlite3", "ros1"))
    p.add_argument("--child", nargs=2, metavar=("BAG", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return _child(*args.child)

    import common
    from pae_ros.bags.robot_recording import RecordingSpec, write_recording

    w, h = (int(v) for v in args.size.lower().split("x"))
    common.header("bench_bag_export", f"storage={args.storage} size={w}x{h} camera 10 Hz, odometry TF 37 Hz")
    rss: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="pae_bench_export_") as tmp:
        for n in args.frames:
            bag = Path(tmp) / f"rec{n}{'.bag' if args.storage == 'ros1' else ''}"
            t0 = time.perf_counter()
            spec = RecordingSpec(storage=args.storage, n_images=n, width=w, height=h, K=(w, w, w / 2, h / 2))
            write_recording(bag, spec)
            write_s = time.perf_counter() - t0
            proc = subprocess.run([sys.executable, __file__, "--child", str(bag), str(Path(tmp) / f"out{n}")],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout + proc.stderr, file=sys.stderr)
                return 1
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rss[n] = r["peak_rss_mb"]
            params = {"frames": n, "storage": args.storage, "size": f"{w}x{h}"}
            common.line("bag_export", params, r["written"] / r["seconds"], "frames/s",
                        f"{r['written']} written in {r['seconds']:.2f} s; recording written in {write_s:.2f} s")
            common.line("bag_export_rss", params, rss[n], "MB", "peak RSS of the export process")
    if len(rss) > 1:
        lo, hi = min(rss), max(rss)
        common.line("bag_export_rss_growth", {"frames": f"{lo}->{hi}"}, rss[hi] - rss[lo], "MB",
                    f"peak RSS {rss[lo]:.1f} -> {rss[hi]:.1f} MB for {hi / lo:.1f}x the images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
