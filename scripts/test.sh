#!/usr/bin/env bash
# Set up (or refresh) the environment, then run the whole test suite on the CPU.
# Extra arguments go to pytest, e.g. scripts/test.sh -k refine -x; one tier:
# scripts/test.sh -m "not slow and not ros" (unit), -m slow (integration), -m ros (ROS)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$repo/scripts/setup.sh"
cd "$repo"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
exec "${PAE_VENV:-$repo/.venv}/bin/python" -m pytest -q -p no:cacheprovider --timeout=600 "$@"
