#!/usr/bin/env bash
# The end-to-end demo on the built-in scene: set-up, render, train, bag, node, evaluation.
# Extra arguments go to `pae demo` (see `pae demo --help`), e.g. scripts/demo.sh --full
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup.sh"
cd "$repo"
exec "${PAE_VENV:-$repo/.venv}/bin/pae" demo "$@"
