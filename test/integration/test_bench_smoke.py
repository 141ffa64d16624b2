"""Smoke test of the benchmarks (bench/): the cheapest paths run and print well-formed figures.

No timing is asserted (timings live in the benchmarks' printed lines, never in pass/fail tests):
each benchmark runs as a subprocess with tiny settings (tiny_cnn backbone, small tables), must
exit 0 and print ``bench <name> key=value ...: <number> <unit>`` lines with finite numbers.
"""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from support import REPO

BENCH = REPO / "bench"


def _load_common():
    """bench/common.py under a private name (bench/ is not a package and stays off sys.path)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_pae_bench_common", BENCH / "common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_common = _load_common()
LINE_RE, parse_lines = _common.LINE_RE, _common.parse_lines


def run_bench(script: str, *args: str, timeout: float = 120.0) -> list[dict]:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{out[-4000:]}"
    bench_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("bench ")]
    assert bench_lines, f"{script} printed no bench lines:\n{out[-4000:]}"
    for ln in bench_lines:
        assert LINE_RE.match(ln), f"malformed line: {ln!r}"
    rows = parse_lines(proc.stdout)
    assert len(rows) == len(bench_lines)
    for r in rows:
        assert math.isfinite(r["value"]), f"non-finite figure: {r}"
    return rows


def by_name(rows: list[dict], name: str) -> list[dict]:
    found = [r for r in rows if r["name"] == name]
    assert found, f"no 'bench {name}' line in {[r['name'] for r in rows]}"
    return found


def test_line_format():
    m = LINE_RE.match("bench refine k=3 batch=1 device=cpu: 0.21 ms/frame (APR forward 24.5 ms; ratio 0.9 %)")
    assert m and m.group("name") == "refine" and float(m.group("value")) == 0.21 and m.group("unit") == "ms/frame"
    rows = parse_lines("noise\nbench x a=1: 2.5e-06 max_abs_diff\n# comment\n")
    assert rows == [{"name": "x", "params": {"a": "1"}, "value": 2.5e-06, "unit": "max_abs_diff", "details": ""}]


def test_bench_refine_tiny():
    rows = run_bench("bench_refine.py", "--tiny", "--device", "cpu", "--table", "200", "--ks", "1", "3",
                     "--repeats", "3", "--warmup", "1")
    refine = by_name(rows, "refine")
    assert sorted(int(r["params"]["k"]) for r in refine) == [1, 3]
    k3 = next(r for r in refine if r["params"]["k"] == "3")
    assert "ratio" in k3["details"] and ("PASS" in k3["details"] or "MISS" in k3["details"])
    by_name(rows, "apr_forward")
    by_name(rows, "localize")


def test_bench_scaling_tiny():
    rows = run_bench("bench_scaling.py", "--tiny", "--device", "cpu", "--sizes", "1000", "--repeats", "3",
                     "--warmup", "1")
    (ref,) = by_name(rows, "scaling_refine")
    assert ref["params"]["table"] == "1000" and "search" in ref["details"]
    by_name(rows, "scaling_search")
    by_name(rows, "scaling_fit")
    by_name(rows, "scaling_latent_cache")


def test_bench_memory_tiny(tmp_path):
    rows = run_bench("bench_memory.py", "--tiny", "--bundle", str(tmp_path / "absent.pae"),
                     "--data", str(tmp_path / "absent_scene"))
    (total,) = by_name(rows, "memory_bundle")
    parts = {r["params"]["part"]: r["value"] for r in by_name(rows, "memory_part")}
    assert set(parts) == {"apr", "pae", "decoder", "table", "header"}
    assert sum(parts.values()) <= total["value"] * 1.01  # figures are rounded to 3 digits
    assert by_name(rows, "memory_pae_params")[0]["value"] > 0
    assert len(by_name(rows, "memory_train_images")) == 3
    by_name(rows, "memory_ratio")


def test_bench_onnx_tiny():
    rows = run_bench("bench_onnx.py", "--tiny", "--device", "cpu", "--types", "posenet", "--repeats", "3",
                     "--warmup", "1")
    (agree,) = by_name(rows, "onnx_agreement")
    assert agree["value"] < 1e-3, agree  # the exported graph computes what torch computes
    by_name(rows, "onnx_speedup")


def test_bench_train_tiny(tmp_path):
    rows = run_bench("bench_train.py", "--tiny", "--device", "cpu", "--data", str(tmp_path / "absent_scene"),
                     "--frames", "24", "--epochs", "1", "--cached-epochs", "1", "--batch-size", "8")
    modes = {r["params"]["mode"] for r in by_name(rows, "train_apr")}
    assert modes == {"end_to_end", "cached"}
    by_name(rows, "train_speedup")
    by_name(rows, "train_feature_cache")


def test_bench_node_tiny():
    # real DDS: the node as a subprocess in its own ROS domain, one second of 30 Hz images
    rows = run_bench("bench_node.py", "--tiny", "--device", "cpu", "--rates", "30", "--duration", "1",
                     "--warmup-s", "0.3", "--pipeline-repeats", "3", timeout=180)
    (thr,) = by_name(rows, "node_throughput")
    assert thr["value"] > 0, "no pose came back from the node"
    by_name(rows, "node_pose_latency")
    by_name(rows, "node_frames_dropped")
    by_name(rows, "node_overhead")


@pytest.mark.parametrize("script", ["bench_refine.py", "bench_onnx.py", "bench_node.py", "bench_train.py",
                                    "bench_memory.py", "bench_scaling.py", "run_all.py"])
def test_help(script):
    # every benchmark parses its arguments without importing torch-heavy code first
    proc = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                          timeout=60, cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def test_bench_bundle_pair_of_a_bundle_with_itself_finds_no_difference(tiny_bundle, tiny_dataset):
    rows = run_bench("bench_bundle_pair.py", "--a", str(tiny_bundle), str(tiny_dataset), "--b", str(tiny_bundle),
                     str(tiny_dataset), timeout=300)
    pairs = by_name(rows, "bundle_pair")
    assert {(r["params"]["row"], r["params"]["unit"]) for r in pairs} == \
        {(row, unit) for row in ("apr", "refined", "published") for unit in ("m", "deg")}
    assert all(r["value"] == 0.0 and "contains zero" in r["details"] for r in pairs)
