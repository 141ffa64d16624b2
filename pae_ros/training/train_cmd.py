"""``pae train``: train the APR, the PAE and the decoder, calibrate, and write one bundle."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common_args import add_data_arguments, add_device_argument, read_split, setup_logging

STAGE_CHOICES = ("all", "apr", "pae", "decoder", "calibrate", "map")  # map: optional, never part of "all"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument("--out", required=True, help="bundle file to write (e.g. runs/demo/model.pae)")
    p.add_argument("--config", default=None, help="YAML config (any subset of keys; see config/train.yaml)")
    p.add_argument("--preset", default=None, choices=["quick", "full"],
                   help="named preset applied before --config and --set")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set apr.epochs=50 (repeatable)")
    p.add_argument("--stage", default="all",
                   help=f"comma-separated stages to run: {', '.join(STAGE_CHOICES)}; later stages read --bundle")
    p.add_argument("--bundle", default=None, help="input bundle for stages after apr (default: --out)")
    p.add_argument("--workdir", default=None, help="checkpoints and TensorBoard logs (default: <out>.work/)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its checkpoints in the workdir (apr/pae/decoder_last.ckpt, "
                        "fold*/)")
    p.add_argument("--restart", action="store_true",
                   help="discard the workdir's checkpoints of an earlier run and train from scratch (without "
                        "--resume or --restart, a run refuses to overwrite them)")
    add_device_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from ..config import ConfigError, load_config, parse_set_option
    from ..datasets import DatasetError

    setup_logging()
    stages = tuple(s.strip() for s in args.stage.split(","))
    bad = [s for s in stages if s not in STAGE_CHOICES]
    if bad:
        print(f"pae train: unknown stage(s) {bad}; choose from {', '.join(STAGE_CHOICES)}", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.preset, parse_set_option(args.overrides))
        train = read_split(args, "train")
    except (ConfigError, DatasetError) as e:
        print(f"pae train: {e}", file=sys.stderr)
        return 2
    from .checkpoint import CheckpointExistsError
    from .data import BadPoseError
    from .bundle_parts import NonFiniteBundleError
    from .run import STAGES, train_all

    if args.resume and args.restart:
        print("pae train: --resume and --restart exclude each other", file=sys.stderr)
        return 2

    out = Path(args.out)
    workdir = Path(args.workdir) if args.workdir else out.with_name(out.name + ".work")
    run_stages = (STAGES + tuple(s for s in stages if s == "map")) if "all" in stages else stages
    from ..bundle import BundleError

    try:
        stats = train_all(cfg, train, out, workdir, args.device, run_stages, resume=args.resume,
                          show_progress=not args.quiet, bundle_in=Path(args.bundle) if args.bundle else None,
                          restart=args.restart, skip_bad=args.skip_bad)
    except NonFiniteBundleError as e:
        print(f"pae train: {e}", file=sys.stderr)
        return 1
    except (BundleError, DatasetError, BadPoseError, CheckpointExistsError, ValueError) as e:
        # a missing/mismatched input bundle, an unreadable image, bad poses, an earlier run's
        # checkpoint, a bad device: one line; checkpoints and <workdir>/partial.pae stay on disk
        print(f"pae train: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if not str(e).startswith("cannot resume"):
            raise  # a genuine failure keeps its traceback
        print(f"pae train: {e}", file=sys.stderr)
        return 2
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun only rank 0 reports (and writes the bundle)
    if "apr" in stats and stats["apr"].get("images_per_s"):
        print(f"APR training: {stats['apr']['images_per_s']:.1f} images/s "
              f"({'cached features' if stats['apr']['cached_features'] else 'end to end'})")
    print(f"bundle: {out}")
    return 0
