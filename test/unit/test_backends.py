"""Backend selection (pae_ros.backends): the auto order, one-line errors, fp16 rules, the TensorRT
engine cache key, and the Localizer / node wiring.

The selection logic runs for real; only the absent hardware is faked, by handing ``plan`` a
:class:`Platform` (the provider list and CUDA devices a GPU box would report). Tests marked ``gpu``
run the real engines and skip without CUDA (``bench/gpu_check.sh`` runs them on a GPU box).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pae_ros import backends
from pae_ros.backends import (CPU_EP, CUDA_EP, TRT_EP, BackendError, Choice, EngineCache, GpuInfo, Platform,
                              plan, provider_options, trt_cache_key)

H200 = GpuInfo("NVIDIA H200", "9.0")
FULL = Platform((TRT_EP, CUDA_EP, CPU_EP), "1.31.1", (H200,), "10.13.3")
NO_TRT_LIBS = Platform((TRT_EP, CUDA_EP, CPU_EP), "1.31.1", (H200,), None)
ORT_CPU_ON_GPU_BOX = Platform((CPU_EP,), "1.32.0", (H200,), None)
CPU_BOX = Platform(("AzureExecutionProvider", CPU_EP), "1.32.0", (), None)
NO_ORT = Platform(None, None, (), None)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def labels(p):
    return [c.label for c in p.candidates]


@pytest.mark.parametrize("platform, order", [
    (FULL, ["tensorrt", "onnx-cuda", "torch-cuda"]),
    (NO_TRT_LIBS, ["onnx-cuda", "torch-cuda"]),
    (ORT_CPU_ON_GPU_BOX, ["torch-cuda"]),
    (CPU_BOX, ["onnx-cpu", "torch-cpu"]),
    (NO_ORT, ["torch-cpu"]),
])
def test_auto_order(platform, order):
    p = plan("auto", "auto", "fp32", platform)
    assert labels(p) == order
    assert len({c.device for c in p.candidates}) == 1
    assert p.device == ("cuda:0" if platform.gpus else "cpu")


def test_auto_says_what_it_passed_over_and_why():
    p = plan("auto", "auto", "fp32", ORT_CPU_ON_GPU_BOX)
    reason = backends.describe(p.candidates[0], p)
    assert reason.startswith("torch-cuda fp32: first available in auto order")
    assert f"tensorrt: onnxruntime has no {TRT_EP} (install with scripts/setup.sh --gpu)" in reason
    assert f"onnx-cuda: onnxruntime has no {CUDA_EP}" in reason
    cpu = plan("auto", "auto", "fp32", CPU_BOX)
    assert "no CUDA GPU" in backends.describe(cpu.candidates[0], cpu)
    assert backends.describe(plan("torch", "cpu", "fp32", CPU_BOX).candidates[0],
                             plan("torch", "cpu", "fp32", CPU_BOX)) == "torch-cpu fp32: requested"


def test_device_cpu_keeps_auto_off_the_gpu():
    assert labels(plan("auto", "cpu", "fp32", FULL)) == ["onnx-cpu", "torch-cpu"]
    assert plan("auto", "cuda:1", "fp32", Platform(FULL.ort_providers, "1.31.1", (H200, H200), "10.13.3")).device \
        == "cuda:1"


@pytest.mark.parametrize("backend, device, platform, message", [
    ("tensorrt", "auto", ORT_CPU_ON_GPU_BOX,
     f"backend 'tensorrt' is not available: onnxruntime has no {TRT_EP} (install with scripts/setup.sh --gpu)"),
    ("tensorrt", "auto", NO_TRT_LIBS, "backend 'tensorrt' is not available: the TensorRT libraries are not installed"),
    ("tensorrt", "cpu", FULL, "backend 'tensorrt' is not available: it needs a CUDA GPU (device is the CPU)"),
    ("onnx", "cuda", ORT_CPU_ON_GPU_BOX, f"backend 'onnx' is not available: onnxruntime has no {CUDA_EP}"),
    ("onnx", "cpu", NO_ORT, "backend 'onnx' is not available: onnxruntime is not installed"),
    ("torch", "cuda", CPU_BOX, "device 'cuda' requested but no CUDA GPU is available"),
    ("auto", "cuda:2", FULL, "device 'cuda:2': only 1 CUDA device(s) present"),
    ("cuda", "auto", FULL, "unknown backend 'cuda' (use auto, tensorrt, onnx, torch)"),
    ("auto", "gpu", FULL, "unknown device 'gpu'"),
])
def test_unavailable_choice_is_a_one_line_error(backend, device, platform, message):
    with pytest.raises(BackendError) as e:
        plan(backend, device, "fp32", platform)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_fp16_only_where_it_is_native():
    assert labels(plan("auto", "auto", "fp16", FULL)) == ["tensorrt", "torch-cuda"]
    assert plan("torch", "cuda", "fp16", FULL).candidates[0].precision == "fp16"
    with pytest.raises(BackendError, match="backend 'onnx' is not available: the ONNX Runtime CUDA EP runs the FP32"):
        plan("onnx", "cuda", "fp16", FULL)
    for backend in ("onnx", "torch"):
        with pytest.raises(BackendError, match="fp16 is not supported on the CPU"):
            plan(backend, "cpu", "fp16", CPU_BOX)
    with pytest.raises(BackendError, match="no backend can run precision 'fp16' on device 'auto'"):
        plan("auto", "auto", "fp16", CPU_BOX)
    with pytest.raises(BackendError, match="unknown precision 'int8'"):
        plan("auto", "auto", "int8", FULL)


def test_tensorrt_provider_options():
    c = plan("tensorrt", "auto", "fp16", FULL).candidates[0]
    cache = EngineCache("/tmp/x.trt", {})
    providers = provider_options(c, 224, cache, max_batch=8)
    name, opts = providers[0]
    assert name == TRT_EP and providers[1][0] == CUDA_EP and providers[-1] == CPU_EP
    assert opts["trt_fp16_enable"] is True and opts["trt_engine_cache_enable"] is True
    assert opts["trt_engine_cache_path"] == "/tmp/x.trt" and opts["trt_timing_cache_enable"] is True
    assert opts["trt_profile_max_shapes"] == "image:8x3x224x224"
    assert provider_options(plan("onnx", "cpu", "fp32", FULL).candidates[0], 224) == [CPU_EP]


def test_engine_cache_is_rebuilt_unless_its_key_matches(tmp_path):
    path = tmp_path / "scene.pae.trt"
    key = trt_cache_key("bundle-a", H200, FULL, "fp32", 224)

    def build(k):
        c = EngineCache.open(path, k)
        if c.state == "build":  # what ONNX Runtime leaves: an engine file
            (path / "engine.bin").write_bytes(b"engine for " + json.dumps(k).encode())
        c.commit()
        return c

    assert (build(key).state, (path / "key.json").is_file()) == ("build", True)
    again = EngineCache.open(path, key)
    assert again.state == "reused" and (path / "engine.bin").is_file()
    changes = {"bundle_id": trt_cache_key("bundle-b", H200, FULL, "fp32", 224),
               "gpu": trt_cache_key("bundle-a", GpuInfo("NVIDIA L4", "8.9"), FULL, "fp32", 224),
               "tensorrt": trt_cache_key("bundle-a", H200, Platform(FULL.ort_providers, "1.31.1", (H200,), "10.14"),
                                         "fp32", 224),
               "precision": trt_cache_key("bundle-a", H200, FULL, "fp16", 224)}
    for what, other in changes.items():
        build(key)
        stale = EngineCache.open(path, other)
        assert stale.state == "build" and what in stale.reason, (what, stale.reason)
        assert not (path / "engine.bin").exists() and not (path / "key.json").exists()
    # an unreadable key and a folder without a key (interrupted build) are not trusted either
    build(key)
    (path / "key.json").write_text("{not json")
    assert EngineCache.open(path, key).reason.startswith("stale: unreadable key.json")
    (path / "engine.bin").write_bytes(b"half an engine")
    c = EngineCache.open(path, key)
    assert c.state == "build" and "no key.json" in c.reason and not (path / "engine.bin").exists()


def test_cache_dir_is_beside_the_bundle_or_in_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PAE_ROS_CACHE", str(tmp_path / "cache"))
    assert backends.trt_cache_dir(tmp_path / "scene.pae", "abc") == tmp_path / "scene.pae.trt"
    # a folder nobody can write into (here: one that does not exist; root ignores permission bits)
    assert backends.trt_cache_dir(tmp_path / "gone" / "scene.pae", "abc") == tmp_path / "cache" / "abc.trt"


def test_auto_moves_on_when_an_engine_fails_and_explicit_does_not(tmp_path):
    """ONNX Runtime falls back silently when a provider's libraries fail to load; start() tries the
    next candidate for auto and names the failure, but an explicit request is an error."""
    p = plan("auto", "auto", "fp32", NO_TRT_LIBS)

    def fail(choice, cache):
        raise BackendError(f"backend {choice.label!r} is not available: onnxruntime ran the session on "
                           f"{CPU_EP} instead of {choice.provider}")

    choice, engine, info = backends.start(p, fail, tmp_path / "b.pae", "bid", 32)
    assert choice.label == "torch-cuda" and engine is None
    assert info["backend"] == "torch" and "onnx-cuda: backend 'onnx-cuda' is not available" in info["backend_reason"]
    with pytest.raises(BackendError, match="instead of CUDAExecutionProvider"):
        backends.start(plan("onnx", "cuda", "fp32", NO_TRT_LIBS), fail, tmp_path / "b.pae", "bid", 32)


def test_tensorrt_start_commits_its_cache_key(tmp_path):
    class Engine:
        build_s = 1.5

    p = plan("tensorrt", "cuda", "fp32", FULL)
    seen = []
    choice, _, info = backends.start(p, lambda c, cache: seen.append(cache) or Engine(), tmp_path / "b.pae", "bid", 32)
    assert seen[0].path == tmp_path / "b.pae.trt" and info["engine_build_s"] == 1.5
    assert info["engine_cache"] == "build (new)" and info["execution_provider"] == TRT_EP
    assert json.loads((tmp_path / "b.pae.trt" / "key.json").read_text())["gpu"] == "NVIDIA H200"
    _, _, again = backends.start(p, lambda c, cache: Engine(), tmp_path / "b.pae", "bid", 32)
    assert again["engine_cache"] == "reused (key matches)"


# --------------------------------------------------------------------------- the Localizer, for real


def _images(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


def test_localizer_reports_its_backend_and_refuses_what_cannot_run(tiny_bundle, tmp_path, monkeypatch):
    from pae_ros.pipeline import Localizer

    monkeypatch.setenv("PAE_ROS_CACHE", str(tmp_path / "cache"))
    cuda = torch.cuda.is_available()
    loc = Localizer.from_bundle(tiny_bundle, device="auto", backend="auto", geometric="off")
    info = loc.info
    assert info["backend_label"] in (["tensorrt", "onnx-cuda", "torch-cuda"] if cuda else ["onnx-cpu"])
    assert info["backend_reason"].startswith(info["backend_label"]) and info["precision"] == "fp32"
    if not cuda:
        assert "no CUDA GPU" in info["backend_reason"] and info["engine_build_s"] > 0
        with pytest.raises(BackendError, match="^backend 'tensorrt' is not available: it needs a CUDA GPU and "
                                               "torch sees none"):
            Localizer.from_bundle(tiny_bundle, backend="tensorrt", device="auto", geometric="off")
        with pytest.raises(BackendError, match="fp16 is not supported on the CPU"):
            Localizer.from_bundle(tiny_bundle, backend="torch", precision="fp16", geometric="off")


def test_onnx_io_binding_matches_torch(tiny_bundle, tmp_path, monkeypatch):
    """The ONNX Runtime engine bound to torch tensors gives eager torch's APR outputs, latents on
    the Localizer's device."""
    from pae_ros.pipeline import Localizer

    monkeypatch.setenv("PAE_ROS_CACHE", str(tmp_path / "cache"))
    ref = Localizer.from_bundle(tiny_bundle, device="cpu", backend="torch", geometric="off")
    onnx = Localizer.from_bundle(tiny_bundle, device="cpu", backend="onnx", geometric="off")
    batch = ref.preprocess(_images(5))
    a, b = ref.predict_apr(batch, descriptors=False), onnx.predict_apr(batch, descriptors=False)
    np.testing.assert_allclose(b.positions, a.positions, atol=1e-4)
    np.testing.assert_allclose(b.quaternions, a.quaternions, atol=1e-4)
    np.testing.assert_allclose(b.latents.numpy(), a.latents.numpy(), atol=1e-4)
    np.testing.assert_array_equal(b.scene_idx, a.scene_idx)
    assert b.latents.device == onnx.device


def _gpu_pairs():
    return [("tensorrt", "fp32"), ("tensorrt", "fp16"), ("onnx", "fp32"), ("torch", "fp32"), ("torch", "fp16")]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend, precision", _gpu_pairs())
def test_gpu_backend_agrees_with_the_cpu(tiny_bundle, tmp_path, monkeypatch, backend, precision):
    from pae_ros.pipeline import Localizer

    monkeypatch.setenv("PAE_ROS_CACHE", str(tmp_path / "cache"))
    try:
        loc = Localizer.from_bundle(tiny_bundle, device="cuda", backend=backend, precision=precision, geometric="off")
    except BackendError as e:
        pytest.skip(str(e))
    cpu = Localizer.from_bundle(tiny_bundle, device="cpu", backend="torch", geometric="off")
    images = _images(6)
    # metres in the tiny room; fp32 on a GPU may use TF32 convolutions (torch's and TensorRT's default)
    tol = 0.01 if precision == "fp32" else 0.05
    for a, b in zip(cpu.localize_batch(images), loc.localize_batch(images)):
        assert np.abs(a.apr_position - b.apr_position).max() < tol
    assert loc.info["backend"] == backend and loc.info["precision"] == precision
    assert loc.device.type == "cuda"
    assert loc.predict_apr(loc.preprocess(images)).latents.device.type == "cuda"


@pytest.mark.gpu
@needs_cuda
def test_gpu_tensorrt_engine_cache_is_reused(tiny_bundle, tmp_path, monkeypatch):
    import shutil

    from pae_ros.pipeline import Localizer

    monkeypatch.setenv("PAE_ROS_CACHE", str(tmp_path / "cache"))
    bundle = tmp_path / "b.pae"
    shutil.copy(tiny_bundle, bundle)
    try:
        first = Localizer.from_bundle(bundle, device="cuda", backend="tensorrt", geometric="off")
    except BackendError as e:
        pytest.skip(str(e))
    assert first.info["engine_cache"].startswith("build") and (tmp_path / "b.pae.trt" / "key.json").is_file()
    again = Localizer.from_bundle(bundle, device="cuda", backend="tensorrt", geometric="off")
    assert again.info["engine_cache"].startswith("reused")


def test_node_parameters_expose_backend_and_precision():
    from pae_ros.ros.params import PARAMETERS

    specs = {s.name: s for s in PARAMETERS}
    assert specs["backend"].default == "auto" and specs["precision"].default == "fp32"
    assert specs["backend"].check("tensorrt") is None and specs["backend"].check("cuda") is not None
    assert specs["precision"].check("fp16") is None and specs["precision"].check("int8") is not None


@pytest.mark.slow  # a bench subprocess
def test_bench_gpu_runs_and_prints_skips_and_figures(tmp_path):
    """bench/bench_gpu.py end to end on a tiny untrained bundle: GPU backends absent here are
    printed as skipped, the CPU ones print well-formed figures with PASS / MISS targets."""
    import math
    import subprocess
    import sys

    from support import REPO

    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu.py"), "--tiny", "--table", "100",
                           "--repeats", "10", "--warmup", "2", "--n-images", "3", "--batches", "1", "4",
                           "--threads", "1"], capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    rows = [ln for ln in out.splitlines() if ln.startswith("bench ")]
    import importlib.util

    spec = importlib.util.spec_from_file_location("_pae_bench_common_gpu", REPO / "bench" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    parsed = common.parse_lines(out)
    assert len(parsed) == len(rows) and all(math.isfinite(r["value"]) for r in parsed)
    names = {(r["name"], r["params"]["backend"]) for r in parsed}
    for backend in ("onnx-cpu", "torch-cpu"):
        for name in ("gpu_startup", "gpu_apr", "gpu_apr_refine", "gpu_throughput", "gpu_node_rate"):
            assert (name, backend) in names, (name, backend)
    agree = [r for r in parsed if r["name"] == "gpu_agreement"]
    assert agree and agree[0]["value"] < 1e-3  # the ONNX graph reproduces the CPU torch path
    assert "PASS" in out or "MISS" in out
    if not torch.cuda.is_available():
        assert "# bench_gpu: tensorrt cuda fp32 skipped:" in out and "# auto picks: onnx-cpu" in out


def test_onnx_engine_with_symbolic_inner_sizes(tmp_path, monkeypatch):
    """The MS-Transformer APR exports its latent width as a symbolic size; the bound outputs are
    sized from a real run, so the engine starts and agrees with eager torch."""
    import importlib.util

    from support import REPO
    from pae_ros.pipeline import Localizer

    spec = importlib.util.spec_from_file_location("_pae_bench_common_sym", REPO / "bench" / "common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    monkeypatch.setenv("PAE_ROS_CACHE", str(tmp_path / "cache"))
    cfg = common.bench_config(tiny=True, overrides={"model": {"type": "mstransformer"}})
    path = common.build_untrained_bundle(cfg, 50, tmp_path, decoder=False)
    onnx = Localizer.from_bundle(path, device="cpu", backend="onnx", geometric="off")
    ref = Localizer.from_bundle(path, device="cpu", backend="torch", geometric="off")
    import onnxruntime as ort

    shapes = [o.shape for o in ort.InferenceSession(str(onnx.onnx.path), providers=[CPU_EP]).get_outputs()]
    assert any(isinstance(d, str) for s in shapes for d in s[1:]), shapes  # the case this test is about
    batch = ref.preprocess(_images(3))
    a, b = ref.predict_apr(batch, descriptors=False), onnx.predict_apr(batch, descriptors=False)
    np.testing.assert_allclose(b.positions, a.positions, atol=1e-4)
    np.testing.assert_allclose(b.latents.numpy(), a.latents.numpy(), atol=1e-4)
