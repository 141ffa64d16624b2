"""Argument helpers shared by the training-side subcommands."""
from __future__ import annotations

import argparse
import logging
import sys


def add_data_arguments(p: argparse.ArgumentParser, split_default: str | None = None) -> None:
    p.add_argument("--data", required=True, help="dataset root: one scene folder, a folder of scenes, or a label CSV")
    p.add_argument("--format", dest="fmt", required=True, choices=["7scenes", "cambridge", "csv"],
                   help="on-disk format (Cambridge quaternions are world-to-camera; converted on read)")
    p.add_argument("--scenes", nargs="+", default=None, help="only these scenes (default: all found)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip malformed entries / missing images (counted and logged) instead of stopping")
    if split_default is not None:
        p.add_argument("--split", default=split_default, choices=["train", "test"], help="which split to use")


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or cuda:N")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="[%(name)s] %(message)s",
                        stream=sys.stderr)


def read_split(args, split: str):
    from ..datasets import read_dataset

    return read_dataset(args.data, args.fmt, split, scenes=args.scenes,
                        on_error="skip" if args.skip_bad else "raise")
