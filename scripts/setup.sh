#!/usr/bin/env bash
# Build (or refresh) the project's virtual environment at $PAE_VENV (default: <repo>/.venv).
#
#   scripts/setup.sh          CPU machine: torch pinned to the CPU build (requirements/constraints-cpu.txt)
#   scripts/setup.sh --gpu    GPU box: keep/install the torch that fits your CUDA (no CPU pin), plus
#                             requirements/gpu.txt (onnxruntime-gpu in place of onnxruntime, TensorRT)
#
# Installs the ROS 2 (Kilted) wheels, builds a tf2_msgs interface package from its .msg only where
# no real tf2_msgs is importable, installs the real `ros2` command line and launch system from
# ../shared/ros2-cli (when that folder exists and no ROS 2 install already provides launch_ros),
# and installs pae_ros itself in editable mode (the `pae` command).
# Idempotent: a stamp of every input file is kept in the venv; when nothing changed it exits in <1 s.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PAE_VENV:-$repo/.venv}"
gpu=0
for a in "$@"; do
  case "$a" in
    --gpu) gpu=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$a'" >&2; exit 2 ;;
  esac
done
py="${PYTHON:-python3}"
inputs=(requirements/*.txt setup.py setup.cfg package.xml ros_shims/tf2_msgs/msg/TFMessage.msg ros_shims/tf2_msgs/CMakeLists.txt scripts/setup.sh)
ros2cli_dir="$repo/../shared/ros2-cli"
ros2cli_sig=none
if [[ -f "$ros2cli_dir/install.sh" ]]; then
  ros2cli_sig="$(cd "$ros2cli_dir" && find src install.sh -type f -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-16)"
fi
stamp_now="$(cd "$repo" && cat "${inputs[@]}" | sha256sum | cut -c1-16)-gpu$gpu-cli$ros2cli_sig"
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
base_req="$repo/requirements/base.txt"
if [[ $gpu == 1 ]]; then
  # onnxruntime-gpu (requirements/gpu.txt) replaces the CPU wheel: both install the module onnxruntime
  base_req="$(mktemp)"
  grep -v -E '^onnxruntime([<>=! ;#]|$)' "$repo/requirements/base.txt" > "$base_req"
fi
"${pipq[@]}" "${cons[@]}" -r "$base_req" -r "$repo/requirements/ros.txt" \
  -r "$repo/requirements/test.txt" 2>&1 | grep -v "is ignored: it is neither" || true
if [[ $gpu == 1 ]]; then
  rm -f "$base_req"
  if "$vpy" -m pip show -q onnxruntime >/dev/null 2>&1; then
    "$vpy" -m pip uninstall -q -y onnxruntime
    # the uninstall removed files the two wheels share: put onnxruntime-gpu's back
    "${pipq[@]}" --force-reinstall --no-deps "$(grep -E '^onnxruntime-gpu' "$repo/requirements/gpu.txt" | sed 's/\[.*\]//')"
  fi
  "${pipq[@]}" -r "$repo/requirements/gpu.txt" 2>&1 | grep -v "is ignored: it is neither" || true
  "$vpy" -c "import onnxruntime as o, sys; p = o.get_available_providers(); print('[setup] onnxruntime', o.__version__, p); \
sys.exit(0 if 'CUDAExecutionProvider' in p else 1)" || { echo "[setup] onnxruntime-gpu install failed" >&2; exit 1; }
  "$vpy" -c "import tensorrt; print('[setup] TensorRT', tensorrt.__version__)" \
    || echo "[setup] TensorRT did not import: backend tensorrt will be unavailable (auto skips it)" >&2
fi
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
# The ros2 command and launch system: a sourced ROS 2 install (launch_ros importable, `ros2` on
# PATH) is used as it is; otherwise the upstream sources in ../shared/ros2-cli go into the venv.
if "$vpy" -c "import launch_ros, ros2cli" 2>/dev/null && command -v ros2 >/dev/null; then
  echo "[setup] using the ROS 2 command line already installed ($(command -v ros2))"
elif [[ -f "$ros2cli_dir/install.sh" ]]; then
  bash "$ros2cli_dir/install.sh" "$venv" || { echo "[setup] ros2-cli install failed" >&2; exit 1; }
else
  echo "[setup] no ROS 2 command line (no ROS install, no ../shared/ros2-cli): the ros2 launch tests will skip"
fi
"${pipq[@]}" --no-deps --no-build-isolation -e "$repo" 2>&1 | grep -v "is ignored: it is neither" || true
"$vpy" -c "import pae_ros" || { echo "[setup] pae_ros did not install" >&2; exit 1; }
echo "$stamp_now" > "$stamp_file"
echo "[setup] done in $(( $(date +%s) - t0 )) s ($(du -sh "$venv" | cut -f1))"
