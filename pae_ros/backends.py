"""Which engine runs the APR, on which device, at which precision; the TensorRT engine cache.

Parameters (the node's ``backend`` / ``device`` / ``precision``, :meth:`Localizer.from_bundle`):

``backend``
    ``tensorrt``  ONNX Runtime with the TensorRT execution provider (CUDA GPU);
    ``onnx``      ONNX Runtime: the CUDA execution provider on a GPU device, the CPU one on the CPU;
    ``torch``     eager torch on ``device``;
    ``auto``      the first available of: TensorRT EP, CUDA EP, eager torch on CUDA, ONNX Runtime
                  CPU EP, eager torch on the CPU. What it picked and why is ``Localizer.info``
                  ``backend`` / ``backend_reason`` (the node logs it and shows it in ``/diagnostics``).
``device``
    ``auto`` (the first CUDA GPU when torch sees one, else the CPU), ``cpu``, ``cuda``, ``cuda:N``.
``precision``
    ``fp32`` or ``fp16``. FP16 runs where it is native: TensorRT (``trt_fp16_enable``: TensorRT
    picks FP16 kernels, inputs and outputs stay FP32) and eager torch on CUDA (``torch.autocast``
    float16). It is refused on the CPU (torch's CPU autocast is bfloat16, not FP16, and the ONNX
    Runtime CPU EP has no FP16 kernels worth having) and for the ONNX Runtime CUDA EP (it runs
    the FP32 graph as exported). ``auto`` with ``fp16`` skips the backends that cannot do it.

An explicit choice that cannot run is a one-line :class:`BackendError` at start-up, e.g.
``backend 'tensorrt' is not available: onnxruntime has no TensorrtExecutionProvider (install
with scripts/setup.sh --gpu)``. ONNX Runtime silently falls back to the next provider when one
fails to load (e.g. TensorRT libraries missing); the session's first provider is therefore
checked after creation, and ``auto`` moves on to its next candidate with the reason recorded.

TensorRT engine cache: ``<bundle>.trt/`` beside the bundle (when that folder cannot be written:
``$PAE_ROS_CACHE/<bundle id>.trt``), holding ONNX Runtime's engine and timing caches and
``key.json``: bundle id, GPU name, compute capability, TensorRT and ONNX Runtime versions,
precision, input size and batch profile. A folder whose key differs, is unreadable or absent
(an interrupted build) is emptied and the engine rebuilt; the key is written only after the
engine has been built and run once. The build is timed (``info["engine_build_s"]``).

Where things run when the APR is on a GPU (``device`` cuda; every stage below is the
Localizer's, nothing here moves it):

* image in: decoding and resize / crop / normalise on the CPU (:mod:`pae_ros.preprocess`),
  then one host-to-device copy of the (B, 3, S, S) batch;
* APR: on the GPU. ONNX Runtime is bound to torch tensors on the same device (I/O binding), so
  the latents and pooled features stay on the GPU;
* host round-trips per frame (small arrays; each a device sync plus microseconds of copy):
  the APR position / quaternion / scene (B x 8 numbers) come to the host because the pose-table
  search and the published pose take numpy; the retrieval descriptor (B x D floats) comes to
  the host for the cosine search (:mod:`pae_ros.retrieval`: numpy, faiss-cpu IVF from 5000
  train images) and the gate's ``retrieval_cos``; the refinement's neighbour search runs on the
  device (exact; the faiss shortlist used from 4096 poses is faiss-cpu), its row indices come to
  the host to merge with retrieval's and go back for the latent gather; the candidates' latent
  Gram matrix is built on the device and the k-sized convex fit iterates in numpy float64 on the
  host (:func:`pae_ros.refine.fit_convex_weights`: on k x k arrays dispatch costs more than arithmetic);
  the PAE latents of the APR pose for the self-consistency feature: pose up, one number per
  frame down;
* the out-of-scene gate and the sigma model: numpy on the host (a few numbers per frame);
* the geometric stage: OpenCV SIFT, matching and PnP on the CPU (its own thread in the node).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("pae.backends")

BACKENDS = ("auto", "tensorrt", "onnx", "torch")
PRECISIONS = ("fp32", "fp16")
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
SETUP_HINT = "install with scripts/setup.sh --gpu"
#: largest batch of the TensorRT optimisation profile (batch 1 is the profile's optimum)
TRT_MAX_BATCH = 64


class BackendError(ValueError):
    """A backend / device / precision that cannot run here; the message is one line."""


@dataclass(frozen=True)
class GpuInfo:
    """One CUDA device: name as the driver reports it, compute capability ``major.minor``."""

    name: str
    capability: str


@dataclass(frozen=True)
class Platform:
    """What this process can run on. ``ort_providers`` None: onnxruntime is not importable;
    ``gpus``: the CUDA devices torch can use (empty without a CUDA build of torch or a GPU);
    ``tensorrt``: the importable TensorRT version (None: not installed)."""

    ort_providers: tuple[str, ...] | None
    ort_version: str | None
    gpus: tuple[GpuInfo, ...] = ()
    tensorrt: str | None = None


def probe() -> Platform:
    """The real platform: onnxruntime's providers, torch's CUDA devices, TensorRT's version."""
    import torch

    gpus: tuple[GpuInfo, ...] = ()
    if torch.cuda.is_available():
        gpus = tuple(GpuInfo(torch.cuda.get_device_name(i), "{}.{}".format(*torch.cuda.get_device_capability(i)))
                     for i in range(torch.cuda.device_count()))
    try:
        import onnxruntime as ort

        providers, ort_version = tuple(ort.get_available_providers()), ort.__version__
    except ImportError:
        providers, ort_version = None, None
    trt = None
    if gpus and providers and TRT_EP in providers:
        try:  # importing the wheel also loads libnvinfer, which the TensorRT EP then finds
            import tensorrt

            trt = tensorrt.__version__
        except Exception:  # noqa: BLE001 - an absent or broken TensorRT wheel both mean "not available"
            trt = None
    return Platform(providers, ort_version, gpus, trt)


@dataclass(frozen=True)
class Choice:
    """One way to run the APR: ``backend`` tensorrt | onnx | torch, ``device`` ``cpu`` | ``cuda:N``
    (where the torch stages run too), ``provider`` the ONNX Runtime EP (None for torch)."""

    backend: str
    device: str
    precision: str
    provider: str | None = None

    @property
    def label(self) -> str:
        """Short name for logs and bench lines, e.g. ``onnx-cuda`` or ``torch-cpu``."""
        kind = "cpu" if self.device == "cpu" else "cuda"
        return "tensorrt" if self.backend == "tensorrt" else f"{self.backend}-{kind}"


@dataclass
class Plan:
    """The candidates to try in order (one for an explicit request) and why others were passed over."""

    candidates: list[Choice]
    skipped: list[str] = field(default_factory=list)
    requested: str = "auto"
    platform: Platform | None = None

    @property
    def device(self) -> str:
        """Where the torch stages run: every candidate of a plan shares one device."""
        return self.candidates[0].device


def _check_args(backend: str, device: str, precision: str) -> None:
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r} (use {', '.join(BACKENDS)})")
    if not isinstance(device, str) or not DEVICE_RE.match(device):
        raise BackendError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)")
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r} (use fp32 or fp16)")


def _gpu_device(device: str, platform: Platform) -> str | None:
    """``cuda:N`` for a usable GPU device request (``auto`` / ``cuda`` -> ``cuda:0``), None for the
    CPU (``cpu``, or ``auto`` without a GPU); an unusable explicit GPU request raises."""
    if device == "cpu" or (device == "auto" and not platform.gpus):
        return None
    if not platform.gpus:
        raise BackendError(f"device {device!r} requested but no CUDA GPU is available (torch.cuda.is_available() "
                           "is False: no GPU, no driver, or a CPU build of torch; scripts/setup.sh --gpu)")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= len(platform.gpus):
        raise BackendError(f"device {device!r}: only {len(platform.gpus)} CUDA device(s) present")
    return f"cuda:{index}"


def _why_not(backend: str, gpu: str | None, precision: str, platform: Platform) -> str | None:
    """Why ``backend`` cannot run on ``gpu`` (None: the CPU) at ``precision``; None when it can."""
    ort = platform.ort_providers
    if backend == "tensorrt":
        if gpu is None:
            return "it needs a CUDA GPU (device is the CPU)" if platform.gpus else \
                "it needs a CUDA GPU and torch sees none (no GPU, no driver, or a CPU build of torch)"
        if ort is None:
            return f"onnxruntime is not installed ({SETUP_HINT})"
        if TRT_EP not in ort:
            return f"onnxruntime has no {TRT_EP} ({SETUP_HINT})"
        if platform.tensorrt is None:
            return f"the TensorRT libraries are not installed (python package tensorrt; {SETUP_HINT})"
        return None
    if backend == "onnx":
        if ort is None:
            return "onnxruntime is not installed"
        if gpu is not None:
            if CUDA_EP not in ort:
                return f"onnxruntime has no {CUDA_EP} ({SETUP_HINT})"
            if precision == "fp16":
                return "the ONNX Runtime CUDA EP runs the FP32 graph (fp16: use tensorrt or torch)"
            return None
        if precision == "fp16":
            return "fp16 is not supported on the CPU (use fp32)"
        return None
    if gpu is None and precision == "fp16":
        return "fp16 is not supported on the CPU (use fp32)"
    return None


def plan(backend: str = "auto", device: str = "auto", precision: str = "fp32",
         platform: Platform | None = None) -> Plan:
    """The candidates for a request. An explicit backend gives one candidate or raises
    :class:`BackendError` (one line naming the parameter and the reason); ``auto`` gives the
    available ones in order (TensorRT EP, CUDA EP, torch CUDA, ONNX Runtime CPU EP, torch CPU;
    on a GPU device only the GPU ones) with the reasons the others were passed over."""
    _check_args(backend, device, precision)
    platform = probe() if platform is None else platform
    gpu = _gpu_device(device, platform)
    provider = {"tensorrt": TRT_EP, "onnx": CUDA_EP if gpu else CPU_EP, "torch": None}
    if backend != "auto":
        why = _why_not(backend, gpu, precision, platform)
        if why is not None:
            raise BackendError(f"backend {backend!r} is not available: {why}")
        return Plan([Choice(backend, gpu or "cpu", precision, provider[backend])], requested=backend,
                    platform=platform)
    order = ["tensorrt", "onnx", "torch"] if gpu else ["onnx", "torch"]
    out = Plan([], requested="auto", platform=platform)
    if gpu is None and device == "auto":
        out.skipped.append("no CUDA GPU")
    for name in order:
        why = _why_not(name, gpu, precision, platform)
        if why is None:
            out.candidates.append(Choice(name, gpu or "cpu", precision, provider[name]))
        else:
            out.skipped.append(f"{Choice(name, gpu or 'cpu', precision).label}: {why}")
    if not out.candidates:
        raise BackendError(f"no backend can run precision {precision!r} on device {device!r}: "
                           + "; ".join(out.skipped))
    return out


def describe(choice: Choice, p: Plan) -> str:
    """One line: what was picked and why (``auto``) or that it was requested."""
    if p.requested != "auto":
        return f"{choice.label} {choice.precision}: requested"
    why = "; ".join(p.skipped)
    return f"{choice.label} {choice.precision}: first available in auto order" + (f" (passed over: {why})" if why else "")


def start(p: Plan, make_onnx, bundle_path, bundle_id: str, crop: int):
    """Start the first candidate of ``p`` that runs: ``make_onnx(choice, cache)`` builds an ONNX
    Runtime engine (:class:`pae_ros.onnx_apr.OnnxAPR`); torch needs nothing here. Returns
    (choice, engine or None, info dict). An explicit request that fails raises
    :class:`BackendError`; ``auto`` records the failure and tries the next candidate."""
    failed: list[str] = []
    for choice in p.candidates:
        if choice.backend == "torch":
            engine, extra = None, {}
        else:
            cache = None
            if choice.backend == "tensorrt":
                gpu = p.platform.gpus[int(choice.device.split(":")[1])]
                cache = EngineCache.open(trt_cache_dir(bundle_path, bundle_id),
                                         trt_cache_key(bundle_id, gpu, p.platform, choice.precision, crop))
            try:
                engine = make_onnx(choice, cache)
            except Exception as e:  # noqa: BLE001 - any start failure of an engine is reported or skipped
                msg = str(e) if isinstance(e, BackendError) else \
                    f"backend {choice.label!r} failed to start: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                if p.requested != "auto":
                    raise BackendError(msg) from None
                log.warning("%s; trying the next backend", msg)
                failed.append(f"{choice.label}: {msg}")
                continue
            extra = {"engine_build_s": round(float(engine.build_s), 3)}
            if cache is not None:
                cache.commit()
                extra |= {"engine_cache": f"{cache.state} ({cache.reason})", "engine_cache_path": str(cache.path)}
        reason = describe(choice, Plan(p.candidates, p.skipped + failed, p.requested))
        log.info("backend %s", reason)
        return choice, engine, info(choice, reason, extra)
    raise BackendError("no backend could start: " + "; ".join(p.skipped + failed))


def autocast(choice: Choice):
    """The torch context of a choice: float16 autocast for eager torch on CUDA at fp16, else nothing."""
    if choice.backend == "torch" and choice.precision == "fp16" and choice.device.startswith("cuda"):
        import torch

        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


# --------------------------------------------------------------------------- TensorRT engine cache


def trt_cache_key(bundle_id: str, gpu: GpuInfo, platform: Platform, precision: str, crop: int,
                  max_batch: int = TRT_MAX_BATCH) -> dict:
    """What an engine is valid for: the bundle, the GPU model, the library versions, the build settings."""
    return {"bundle_id": bundle_id, "gpu": gpu.name, "compute_capability": gpu.capability,
            "tensorrt": platform.tensorrt, "onnxruntime": platform.ort_version, "precision": precision,
            "input": f"3x{crop}x{crop}", "max_batch": int(max_batch)}


def trt_cache_dir(bundle_path, bundle_id: str) -> Path:
    """``<bundle>.trt`` beside the bundle when its folder is writable, else in the user cache."""
    beside = Path(str(bundle_path) + ".trt")
    if beside.is_dir() and os.access(beside, os.W_OK) or os.access(beside.parent, os.W_OK):
        return beside
    from .onnx_apr import cache_dir

    return cache_dir() / f"{bundle_id}.trt"


@dataclass
class EngineCache:
    """An engine cache folder checked against ``key``: ``state`` ``reused`` (key matched) or
    ``build`` (empty folder: new, or a stale / foreign cache emptied, ``reason`` says which)."""

    path: Path
    key: dict
    state: str = "build"
    reason: str = "new"

    @classmethod
    def open(cls, path, key: dict) -> "EngineCache":
        """Compare ``path/key.json`` with ``key``; empty the folder unless they match."""
        path = Path(path)
        cache = cls(path, dict(key))
        key_file = path / "key.json"
        if key_file.is_file():
            try:
                old = json.loads(key_file.read_text())
                diff = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k)) if isinstance(old, dict) \
                    else ["key.json is not an object"]
            except (OSError, ValueError) as e:
                diff = [f"unreadable key.json ({type(e).__name__})"]
            if not diff:
                cache.state, cache.reason = "reused", "key matches"
                return cache
            cache.reason = "stale: " + ", ".join(
                d if " " in d else f"{d} {old.get(d)!r} -> {key.get(d)!r}" for d in diff)
        elif path.is_dir() and any(path.iterdir()):
            cache.reason = "no key.json (interrupted build or a foreign folder)"
        if path.is_dir():
            shutil.rmtree(path)
            log.info("TensorRT engine cache %s rebuilt: %s", path, cache.reason)
        path.mkdir(parents=True, exist_ok=True)
        return cache

    def commit(self) -> None:
        """Record the key once the engine is built and ran (an interrupted build leaves no key)."""
        from .bundle import atomic_write_bytes

        data = json.dumps(self.key, indent=1, sort_keys=True).encode()
        atomic_write_bytes(self.path / "key.json", lambda tmp: Path(tmp).write_bytes(data))


def provider_options(choice: Choice, crop: int, cache: EngineCache | None = None,
                     max_batch: int = TRT_MAX_BATCH) -> list:
    """ONNX Runtime ``providers`` for a choice (the first one must be the session's provider)."""
    if choice.provider == CPU_EP:
        return [CPU_EP]
    device_id = int(choice.device.split(":")[1])
    cuda = (CUDA_EP, {"device_id": device_id})
    if choice.provider == CUDA_EP:
        return [cuda, CPU_EP]
    shape = f"image:{{}}x3x{crop}x{crop}"
    trt = {"device_id": device_id, "trt_fp16_enable": choice.precision == "fp16",
           "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache.path),
           "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache.path),
           "trt_profile_min_shapes": shape.format(1), "trt_profile_opt_shapes": shape.format(1),
           "trt_profile_max_shapes": shape.format(max_batch)}
    return [(TRT_EP, trt), cuda, CPU_EP]


def info(choice: Choice, reason: str, engine: dict | None = None) -> dict:
    """The ``Localizer.info`` keys of the backend (engine: build / cache facts of an ONNX engine)."""
    out = {"backend": choice.backend, "backend_label": choice.label, "backend_reason": reason,
           "precision": choice.precision, "execution_provider": choice.provider}
    return out | (engine or {})

