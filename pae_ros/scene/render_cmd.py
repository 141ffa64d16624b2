"""``pae scene render``: render a built-in scene as a 7Scenes / Cambridge dataset.

``--scene courtyard`` (default) is the quick demo scene, ``--scene plaza`` the generalization
scene (50 m, repetitive textures, test walks that leave the train walks). Writes
``<out>/<name>/`` (default ``data/demo_scene/courtyard``); a second run with the same
parameters reuses it ("reusing ..."), different parameters or ``--force`` render again.
Prints the test frames' coverage (distance to the nearest similar-view train camera).
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
    from .render import SCENES

    dflt = "; ".join(f"{k}: {v['train_seqs']} x {v['train_frames']} train, {v['test_seqs']} x {v['test_frames']} "
                     f"test frames, {v['step']:g} m apart" for k, v in SCENES.items())
    parser.add_argument("--scene", default="courtyard", choices=tuple(SCENES),
                        help="built-in scene: courtyard (the quick demo scene, 16 m) or plaza (the "
                             "generalization scene, 50 m, test walks leave the train walks)")
    parser.add_argument("--name", default=None, help="folder name of the scene under --out (default: the scene)")
    parser.add_argument("--seed", type=int, default=0, help="scene layout, textures and walks")
    parser.add_argument("--train-seqs", type=_positive, default=None,
                        help=f"number of train walks (sequences); defaults per scene ({dflt})")
    parser.add_argument("--test-seqs", type=_non_negative, default=None, help="number of test walks (sequences)")
    parser.add_argument("--train-frames", type=_positive, default=None, help="frames per train walk")
    parser.add_argument("--test-frames", type=_positive, default=None, help="frames per test walk")
    parser.add_argument("--step", type=float, default=None, help="metres between consecutive frames of a walk")
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

    from .render import SCENES, coverage_summary, format_coverage, read_manifest, render_scene, scene_builders

    if not (1.0 <= args.fov <= 170.0):
        print(f"error: --fov must be within 1..170 degrees, got {args.fov}", file=sys.stderr)
        return 2
    if args.step is not None and not args.step > 0:
        print(f"error: --step must be > 0, got {args.step}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        scene_dir = render_scene(args.out, seed=args.seed, train_frames=args.train_frames,
                                 test_frames=args.test_frames, train_seqs=args.train_seqs,
                                 test_seqs=args.test_seqs, size=args.size, fov_deg=args.fov,
                                 fmt=args.format, workers=args.workers, force=args.force,
                                 scene_name=args.name, step=args.step, shadows=not args.no_shadows,
                                 progress=not args.quiet, scene=args.scene)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    m = read_manifest(scene_dir) or {}
    fr = m.get("frames", {})
    print(f"scene {scene_dir}: {fr.get('train', '?')} train + {fr.get('test', '?')} test frames, "
          f"{args.size[0]}x{args.size[1]} px, format {args.format} ({time.perf_counter() - t0:.1f} s)")
    cov = m.get("coverage")
    if cov is None:     # a manifest without coverage: recompute it, the walks are a function of the parameters
        prm = m.get("params", {})
        _, walker = scene_builders(args.scene)
        d = SCENES[args.scene]
        cov = coverage_summary(walker(prm.get("seed", args.seed), prm.get("train_seqs", d["train_seqs"]),
                                      prm.get("test_seqs", d["test_seqs"]), prm.get("train_frames", d["train_frames"]),
                                      prm.get("test_frames", d["test_frames"]), prm.get("step", d["step"])))
    print(format_coverage(cov))
    return 0
