"""The APR as an ONNX graph, and an ONNX Runtime backend for :class:`pae_ros.pipeline.Localizer`.

Graph: input ``image`` (B, 3, S, S) float32 (ImageNet-normalised RGB, the bundle's crop size
S); outputs ``position`` (B, 3) metres in the map frame (denormalisation folded in),
``quaternion`` (B, 4) wxyz unit with w >= 0 (camera-to-world), ``latent`` (B, 2D) and
``scene`` (B,) int64, and with ``descriptor=True`` also ``descriptor`` (B, C): the backbone's
pooled feature (the retrieval descriptor before L2 normalisation, so one forward serves the APR
and retrieval when the backbone is frozen). ``pae export`` writes it; the Localizer's ONNX
backends (``onnx``: CPU or CUDA EP, ``tensorrt``: TensorRT EP, :mod:`pae_ros.backends`) export it
once per bundle into a cache folder (``$PAE_ROS_CACHE`` or ``~/.cache/pae_ros``) and run it
with ONNX Runtime (CPU EP measured 4x faster than eager torch for batch-1 CPU inference, bench/).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .bundle import atomic_write_bytes


class APRExport(nn.Module):
    """APR + position denormalisation + quaternion normalisation, as one traceable module."""

    def __init__(self, apr: nn.Module, position_mean, position_scale: float, descriptor: bool = False):
        super().__init__()
        self.apr = apr
        self.descriptor = descriptor
        self.register_buffer("mean", torch.as_tensor(np.asarray(position_mean), dtype=torch.float32))
        self.scale = float(position_scale)

    def forward(self, image):
        feats = self.apr.backbone(image)
        out = self.apr.forward_features({k: feats[k] for k in self.apr.feature_keys})
        q = out["q"] / out["q"].norm(dim=-1, keepdim=True).clamp_min(1e-9)
        q = torch.where(q[:, :1] < 0, -q, q)
        res = (out["x"] * self.scale + self.mean, q, torch.cat([out["z_x"], out["z_q"]], -1), out["scene_idx"])
        return res + (feats["pooled"],) if self.descriptor else res


def export_apr(apr: nn.Module, position_mean, position_scale: float, crop: int, out_path, opset: int = 17,
               descriptor: bool = False) -> Path:
    """Write the APR graph to ``out_path`` atomically (the APR is used on the CPU, in eval mode)."""
    import copy

    module = APRExport(copy.deepcopy(apr).cpu().eval(), position_mean, position_scale, descriptor).eval()
    names = ["position", "quaternion", "latent", "scene"] + (["descriptor"] if descriptor else [])
    dummy = torch.zeros(1, 3, crop, crop)
    out_path = Path(out_path)

    def _write(tmp):
        import warnings

        with warnings.catch_warnings():  # the exporter's constant-folding notes are not actionable
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(module, (dummy,), tmp, dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=names,
                              dynamic_axes={n: {0: "batch"} for n in ["image"] + names})

    atomic_write_bytes(out_path, _write)
    return out_path


def cache_dir() -> Path:
    return Path(os.environ.get("PAE_ROS_CACHE", Path.home() / ".cache" / "pae_ros"))


class OnnxAPR:
    """ONNX Runtime session of a bundle's APR on the execution provider of ``choice``
    (:class:`pae_ros.backends.Choice`; None: the CPU EP). Inputs and outputs are bound to torch
    tensors on the choice's device (I/O binding), so on a GPU nothing leaves the device here.

    Raises :class:`pae_ros.backends.BackendError` when ONNX Runtime did not put the requested
    provider first (it silently falls back when, e.g., the TensorRT libraries fail to load).
    ``build_s``: session creation + the first batch-1 run (for TensorRT: the engine build, or its
    load from ``cache``)."""

    def __init__(self, apr: nn.Module, bundle_id: str, position_mean, position_scale: float, crop: int,
                 threads: int | None = None, choice=None, cache=None):
        import time

        import onnxruntime as ort

        from .backends import CPU_EP, BackendError, Choice, provider_options

        self.choice = choice or Choice("onnx", "cpu", "fp32", CPU_EP)
        self.device = torch.device(self.choice.device)
        path = cache_dir() / f"{bundle_id}-apr-{crop}-desc.onnx"
        if not path.is_file():
            export_apr(apr, position_mean, position_scale, crop, path, descriptor=True)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
        providers = provider_options(self.choice, crop, cache)
        if self.choice.provider != CPU_EP and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA / cuDNN from torch or the nvidia-* wheels, before the provider loads
        t0 = time.perf_counter()
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # a damaged cache file: export again once
            if self.choice.provider != CPU_EP and path.is_file() and _loads(path):
                raise BackendError(f"backend {self.choice.label!r} failed to start: {type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''}") from None
            path.unlink(missing_ok=True)
            export_apr(apr, position_mean, position_scale, crop, path, descriptor=True)
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        got = self.session.get_providers()
        if not got or got[0] != self.choice.provider:
            raise BackendError(f"backend {self.choice.label!r} is not available: onnxruntime ran the session on "
                               f"{got[0] if got else 'nothing'} instead of {self.choice.provider} "
                               "(its libraries failed to load; see the onnxruntime log)")
        self.path = path
        # per-row output shapes from one plain run: the graph may leave inner sizes symbolic
        zeros = np.zeros((1, 3, crop, crop), np.float32)
        names = [o.name for o in self.session.get_outputs()]
        self._outputs = [(n, tuple(a.shape[1:])) for n, a in zip(names, self.session.run(names, {"image": zeros}))]
        self(torch.from_numpy(zeros))
        self.build_s = time.perf_counter() - t0

    def __call__(self, batch: torch.Tensor):
        """-> positions (B,3) m float64 array, quaternions (B,4) float64 array, latents (B,2D) tensor,
        scene (B,) array, pooled backbone features (B, C) float32 tensor (tensors on the device)."""
        x = batch.detach().to(self.device, torch.float32).contiguous()
        n = x.shape[0]
        out = {name: torch.empty((n, *shape), dtype=torch.int64 if name == "scene" else torch.float32,
                                 device=self.device) for name, shape in self._outputs}
        kind, index = self.device.type, self.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input("image", kind, index, np.float32, list(x.shape), x.data_ptr())
        for name, t in out.items():
            binding.bind_output(name, kind, index, np.int64 if name == "scene" else np.float32, list(t.shape),
                                t.data_ptr())
        if kind == "cuda":  # the input was written on torch's stream; ONNX Runtime reads it on its own
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        if kind == "cuda":
            binding.synchronize_outputs()
        return (out["position"].double().cpu().numpy(), out["quaternion"].double().cpu().numpy(), out["latent"],
                out["scene"].cpu().numpy(), out["descriptor"])


def _loads(path: Path) -> bool:
    """Whether an ONNX file parses (a failed GPU session on a sound file is the provider's fault)."""
    try:
        import onnx

        onnx.load(str(path))
        return True
    except Exception:  # noqa: BLE001 - any parse failure means a damaged file
        return False
