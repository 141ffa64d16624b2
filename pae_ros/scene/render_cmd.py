"""``pae scene render``: render the built-in demo courtyard as a 7Scenes / Cambridge dataset.

Writes ``<out>/<scene>/`` (default ``data/demo_scene/courtyard``); a second run with the same
parameters reuses it ("reusing ..."), different parameters or ``--force`` render again.
"""
from __future__ import annotations

import argparse


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 256x192, got {text!r}") from None
    if w < 8 or h < 8 or w > 4096 or h > 4096:
        raise argparse.ArgumentTypeError(f"size {w}x{h} out of range (8..4096 pixels)")
    return w, h


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _non_negative(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="data/demo_scene", help="dataset root; the scene goes to OUT/SCENE")
    parser.add_argument("--scene", default="courtyard", help="scene (folder) name")
    parser.add_argument("--seed", type=int, default=0, help="scene layout, textures and walks")
    parser.add_argument("--train-seqs", type=_positive, default=4, help="number of train walks (sequences)")
    parser.add_argument("--test-seqs", type=_non_negative, default=2, help="number of test walks (sequences)")
    parser.add_argument("--train-frames", type=_positive, default=150, help="frames per train walk")
    parser.add_argument("--test-frames", type=_positive, default=100, help="frames per test walk")
    parser.add_argument("--step", type=float, default=0.12, help="metres between consecutive frames of a walk")
    parser.add_argument("--size", type=_size, default="256x192", metavar="WxH", help="image size in pixels")
    parser.add_argument("--fov", type=float, default=50.0, help="vertical field of view in degrees")
    parser.add_argument("--format", choices=("7scenes", "cambridge"), default="7scenes", help="on-disk format")
    parser.add_argument("--workers", type=_positive, default=2, help="rendering processes")
    parser.add_argument("--no-shadows", action="store_true", help="render without shadows (about 2x faster)")
    parser.add_argument("--force", action="store_true", help="render again even if a matching render exists")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from .render import read_manifest, render_scene

    if not (1.0 <= args.fov <= 170.0):
        print(f"error: --fov must be within 1..170 degrees, got {args.fov}", file=sys.stderr)
        return 2
    if not args.step > 0:
        print(f"error: --step must be > 0, got {args.step}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        scene_dir = render_scene(args.out, seed=args.seed, train_frames=args.train_frames,
                                 test_frames=args.test_frames, train_seqs=args.train_seqs,
                                 test_seqs=args.test_seqs, size=args.size, fov_deg=args.fov,
                                 fmt=args.format, workers=args.workers, force=args.force,
                                 scene_name=args.scene, step=args.step, shadows=not args.no_shadows,
                                 progress=not args.quiet)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = read_manifest(scene_dir) or {}
    fr = m.get("frames", {})
    print(f"scene {scene_dir}: {fr.get('train', '?')} train + {fr.get('test', '?')} test frames, "
          f"{args.size[0]}x{args.size[1]} px, format {args.format} ({time.perf_counter() - t0:.1f} s)")
    return 0
