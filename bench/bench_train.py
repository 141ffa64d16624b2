"""APR training throughput: end-to-end (backbone fine-tuned, augmentation) vs the quick preset's cached features.

Both runs use ``pae_ros.training.train_apr.train_apr`` with the same model (the quick preset's
APR on the pretrained EfficientNet-Lite0, at the preset's input size) and batch size, on the
same frames:

* ``end_to_end``: ``apr.freeze_backbone = false``, random crop + colour jitter 0.3 (as ``full``);
* ``cached``: the quick preset as is: frozen backbone front, features computed once (the centre
  crop plus the preset's augmented views, ``apr.cache_views``), and with ``apr.finetune_blocks`` the
  backbone's last blocks trained on top of the cache (partial fine-tuning).

Printed: images/s of each (training loop only, as ``train_apr`` reports it), the feature-cache
time, the speed-up, and the wall-time ratio over a whole quick-preset APR stage (its epochs)
with the cache counted. Data: ``--data`` (default the demo scene ``data/demo_scene/courtyard``)
or, when missing, a synthetic room written at 256 x 192. ``--frames`` limits the frames
(evenly spaced).

    .venv/bin/python bench/bench_train.py [--frames 200] [--epochs 2] [--device cpu]
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


def _backbone_mode(cfg) -> str:
    if not cfg.apr.freeze_backbone:
        return "fine-tuned"
    if cfg.apr.finetune_blocks:
        return f"frozen but its last {cfg.apr.finetune_blocks} blocks"
    return "frozen"


def _views(stats) -> str:
    v = stats.get("cache_views") or 1
    return "centre crops" if v == 1 else f"{v} cached views per frame (centre + {v - 1} augmented)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(common.DEMO_DATA), help="7Scenes-format scene folder")
    p.add_argument("--frames", type=int, default=200, help="train frames used (evenly spaced subset)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the end-to-end run")
    p.add_argument("--cached-epochs", type=int, default=4, help="epochs of the cached-feature run")
    p.add_argument("--batch-size", type=int, default=None, help="default: the quick preset's (32)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"),
                   help="training device (auto: the GPU when present)")
    p.add_argument("--tiny", action="store_true", help="tiny architecture and data (smoke tests)")
    common.add_threads_arg(p)
    args = p.parse_args(argv)
    common.apply_threads(args)

    import torch

    from pae_ros.datasets import read_dataset
    from pae_ros.pipeline import resolve_device
    from pae_ros.training.data import FrameImages, PoseNormalization, frames_positions, scenes_of
    from pae_ros.training.train_apr import train_apr

    dev = resolve_device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="pae_bench_train_"))
    try:
        data = Path(args.data)
        if data.is_dir():
            train = read_dataset(data, "7scenes", "train")
            what = f"{data}"
        else:
            from pae_ros.datasets.synthetic import write_room_dataset

            w, h = (64, 48) if args.tiny else (256, 192)
            per_walk = max(2, (args.frames + 1) // 2)
            print(f"# bench_train: {data} missing: writing a synthetic room (2 walks x {per_walk} frames, {w}x{h})",
                  flush=True)
            scene = write_room_dataset(tmp / "data", "room", train_walks=2, test_walks=1, frames=per_walk,
                                       width=w, height=h, seed=0)
            train = read_dataset(scene, "7scenes", "train")
            what = f"synthetic room {w}x{h}"
        frames = train.frames
        if len(frames) > args.frames:
            step = len(frames) / args.frames
            frames = [frames[int(i * step)] for i in range(args.frames)]
        scenes = scenes_of(train)
        norm = PoseNormalization.fit(frames_positions(frames))
        base_cfg = common.bench_config(tiny=args.tiny)
        bs = args.batch_size or base_cfg.apr.batch_size
        common.header("bench_train", f"{len(frames)} frames of {what}, device {dev}, batch {bs}, "
                                     f"model {base_cfg.model.type}/{base_cfg.model.backbone} "
                                     f"{base_cfg.input.crop}px")
        runs = {
            "end_to_end": ({"apr": {"freeze_backbone": False, "cache_features": False, "finetune_blocks": 0,
                                    "cache_views": 1, "epochs": args.epochs, "batch_size": bs},
                            "input": {"random_crop": True, "color_jitter": 0.3}}, True),
            "cached": ({"apr": {"freeze_backbone": True, "cache_features": True, "epochs": args.cached_epochs,
                                "batch_size": bs}}, False),
        }
        stats = {}
        for name, (over, augment) in runs.items():
            cfg = common.bench_config(tiny=args.tiny, overrides=over)
            t0 = time.perf_counter()
            ds = FrameImages(frames, scenes, norm, cfg.input.resize, cfg.input.crop, train=True,
                             random_crop=cfg.input.random_crop, jitter=cfg.input.color_jitter, seed=cfg.seed)
            load_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, _, st, _ = train_apr(cfg, ds, scenes, tmp / f"work_{name}", dev, show_progress=False,
                                 pretrained_weights=not args.tiny)
            wall = time.perf_counter() - t0
            st["wall_s"], st["load_s"] = wall, load_s
            stats[name] = st
            cache = f"; feature cache {st['feature_cache_s']:.1f} s" if st["feature_cache_s"] is not None else ""
            common.line("train_apr", {"mode": name, "device": str(dev), "batch": bs, "frames": len(frames),
                                      "epochs": cfg.apr.epochs},
                        st["images_per_s"], "images/s",
                        f"backbone {_backbone_mode(cfg)}, "
                        f"{'random crop + colour jitter' if augment else _views(st)}{cache}; "
                        f"train_apr wall {wall:.1f} s incl. checkpoints; image loading {load_s:.1f} s")
            torch.manual_seed(0)
        e2e, cached = stats["end_to_end"], stats["cached"]
        cache_s = cached["feature_cache_s"] or 0.0
        common.line("train_feature_cache", {"device": str(dev), "frames": len(frames)}, cache_s, "s",
                    f"{len(frames) / cache_s if cache_s > 0 else float('nan'):.0f} images/s, backbone forward once")
        speedup = cached["images_per_s"] / e2e["images_per_s"]
        common.line("train_speedup", {"device": str(dev), "batch": bs}, speedup, "x",
                    f"cached {cached['images_per_s']:.0f} images/s vs end-to-end {e2e['images_per_s']:.0f} images/s")
        n_ep = base_cfg.apr.epochs
        n = len(frames)
        t_e2e = n_ep * n / e2e["images_per_s"]
        t_cached = cache_s + n_ep * n / cached["images_per_s"]
        common.line("train_run_ratio", {"device": str(dev), "epochs": n_ep, "frames": n}, t_e2e / t_cached, "x",
                    f"estimated {n_ep}-epoch APR stage: end-to-end {t_e2e:.0f} s vs cached {t_cached:.0f} s "
                    "incl. the feature cache")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
