#!/usr/bin/env bash
# Build (or refresh) the project's virtual environment at $PAE_VENV (default: <repo>/.venv).
#
#   scripts/setup.sh          CPU machine: torch pinned to the CPU build (requirements/constraints-cpu.txt)
#   scripts/setup.sh --gpu    GPU box: keep/install the torch that fits your CUDA (no CPU pin)
#
# Installs the ROS 2 (Kilted) wheels, builds a tf2_msgs interface package from its .msg only where
# no real tf2_msgs is importable, and installs pae_ros itself in editable mode (the `pae` command).
# Idempotent: a stamp of every input file is kept in the venv; when nothing changed it exits in <1 s.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PAE_VENV:-$repo/.venv}"
gpu=0
for a in "$@"; do
  case "$a" in
    --gpu) gpu=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$a'" >&2; exit 2 ;;
  esac
done
py="${PYTHON:-python3}"
inputs=(requirements/*.txt setup.py setup.cfg package.xml ros_shims/tf2_msgs/msg/TFMessage.msg ros_shims/tf2_msgs/CMakeLists.txt scripts/setup.sh)
stamp_now="$(cd "$repo" && cat "${inputs[@]}" | sha256sum | cut -c1-16)-gpu$gpu"
stamp_file="$venv/.pae_setup_stamp"
if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp_now" ]]; then
  exit 0
fi
t0=$(date +%s)
echo "[setup] building the environment in $venv"
[[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
vpy="$venv/bin/python"
pipq=("$vpy" -m pip install -q --disable-pip-version-check)
cons=()
if [[ $gpu == 0 ]]; then cons=(-c "$repo/requirements/constraints-cpu.txt"); fi
"${pipq[@]}" "${cons[@]}" -r "$repo/requirements/base.txt" -r "$repo/requirements/ros.txt" \
  -r "$repo/requirements/test.txt" 2>&1 | grep -v "is ignored: it is neither" || true
# pip's own exit status is lost in the pipe above: check the result instead.
"$vpy" -c "import torch, rclpy, rosbags, cv2, safetensors" || { echo "[setup] install failed" >&2; exit 1; }
if ! "$vpy" -c "import tf2_msgs.msg" 2>/dev/null; then
  echo "[setup] no tf2_msgs found: building the interface package from TFMessage.msg"
  build="$(mktemp -d)"
  (AMENT_PREFIX_PATH="$venv" cmake -S "$repo/ros_shims/tf2_msgs" -B "$build" -DCMAKE_INSTALL_PREFIX="$venv" \
      -DPython3_EXECUTABLE="$vpy" -DBUILD_TESTING=OFF && cmake --build "$build" -j2 && cmake --install "$build") \
      > "$build.log" 2>&1 || { echo "[setup] tf2_msgs build failed, log: $build.log" >&2; exit 1; }
  rm -rf "$build"
  "$vpy" -c "import tf2_msgs.msg"
fi
"${pipq[@]}" --no-deps --no-build-isolation -e "$repo" 2>&1 | grep -v "is ignored: it is neither" || true
"$vpy" -c "import pae_ros" || { echo "[setup] pae_ros did not install" >&2; exit 1; }
echo "$stamp_now" > "$stamp_file"
echo "[setup] done in $(( $(date +%s) - t0 )) s ($(du -sh "$venv" | cut -f1))"
