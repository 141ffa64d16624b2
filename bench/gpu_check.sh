#!/usr/bin/env bash
# The GPU check, within 8 minutes on a machine with an NVIDIA GPU (set up with scripts/setup.sh --gpu):
#   1. the suite's GPU tests (pytest -m gpu; they skip without CUDA),
#   2. bench/bench_gpu.py: per backend start-up (cold / cached engine), batch-1 latency p50 / p99,
#      images/s, GPU memory, pose agreement with the CPU path and fp16 vs fp32, the 60 Hz node rate.
# On a CPU-only machine it runs too: the GPU tests skip and the GPU backends print as skipped.
#
#   bench/gpu_check.sh [--bundle out/demo/model.pae] [any other bench_gpu.py option]
# Environment: PYTHON (default <repo>/.venv/bin/python), PAE_GPU_CHECK_TEST_S (default 180),
# PAE_GPU_CHECK_BENCH_S (default 280): the two steps' time limits.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$repo/.venv/bin/python}"
test_s="${PAE_GPU_CHECK_TEST_S:-180}"
bench_s="${PAE_GPU_CHECK_BENCH_S:-280}"
cd "$repo"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
status=0
echo "# gpu_check: $(date -u +%FT%TZ) $(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1 || echo 'no nvidia-smi')"
echo "# gpu_check: step 1/2: pytest -m gpu (limit ${test_s} s)"
timeout "$test_s" "$py" -m pytest -q -p no:cacheprovider -m gpu -rs test/
rc=$?
# 5: no test collected (the selection is empty), not a failure of the check
if [[ $rc != 0 && $rc != 5 ]]; then echo "# gpu_check: GPU tests failed (exit $rc)"; status=1; fi
echo "# gpu_check: step 2/2: bench/bench_gpu.py (limit ${bench_s} s)"
timeout "$bench_s" "$py" bench/bench_gpu.py --budget-s "$(( bench_s * 3 / 4 ))" "$@"
rc=$?
if [[ $rc != 0 ]]; then echo "# gpu_check: bench_gpu.py failed (exit $rc)"; status=1; fi
echo "# gpu_check: done, exit $status"
exit $status
