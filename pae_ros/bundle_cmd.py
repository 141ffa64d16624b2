"""``pae bundle upgrade``: re-seal a format-1 bundle (header not yet under the digest) as the
current format. Only for a file you trust: the header is sealed in as it is now."""
from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", help="the format-1 bundle (.pae) to upgrade")
    p.add_argument("--out", required=True, help="where to write the upgraded bundle (may equal the input)")


def run(args) -> int:
    from .bundle import load_bundle, upgrade_bundle

    b = upgrade_bundle(args.bundle, args.out)
    load_bundle(b.path)  # read back: the new file verifies
    print(f"upgraded {args.bundle} -> {b.path} (format {b.header['format_version']}, id {b.bundle_id}); "
          f"its header was sealed as it was, so use this only on a file you trust", file=sys.stderr)
    return 0
