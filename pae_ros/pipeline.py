"""The inference pipeline: image in, pose + confidence out. The ROS node and every
evaluation tool call this one class.

Frames: the returned pose is camera-to-world in the bundle's world (map) frame, position in
metres, quaternion wxyz, camera axes OpenCV optical (x right, y down, z forward).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .bundle import Bundle, BundleError, build_models, load_bundle
from .confidence import SigmaModel, covariance_6x6
from .geometry import canonical_quat
from .preprocess import to_batch
from .refine import PoseTableIndex, Refiner, RefineResult


def resolve_device(device: str) -> torch.device:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cpu``; ``cuda`` / ``cuda:N``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but no CUDA GPU is available")
        dev = torch.device(device)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)")


@dataclass
class Estimate:
    """One localization result. Position m, quaternions wxyz, camera-to-world, map frame."""

    position: np.ndarray
    quaternion: np.ndarray
    apr_position: np.ndarray
    apr_quaternion: np.ndarray
    confidence: float
    sigma_position_m: float
    sigma_orientation_rad: float
    covariance: np.ndarray          # (6, 6) row-major: x, y, z, rot x, rot y, rot z
    scene: str
    refined: bool
    finite: bool = True
    extras: dict = field(default_factory=dict)


@dataclass
class AprOutput:
    """Batched APR result: positions (B,3) m, quaternions (B,4) wxyz, latents (B,2D), scene (B,)."""

    positions: np.ndarray
    quaternions: np.ndarray
    latents: torch.Tensor
    scene_idx: np.ndarray


class Localizer:
    """APR + PAE refinement + calibrated confidence, built from one bundle."""

    def __init__(self, bundle: Bundle, device: str = "auto", refine: bool | None = None, k: int | None = None,
                 steps: int | None = None, lr: float | None = None, orientation: str | None = None,
                 metric: str | None = None, backend: str = "torch", threads: int | None = None):
        """``backend``: ``torch`` (eager), ``onnx`` (the APR through ONNX Runtime on the CPU; PAE,
        refinement and decoder stay in torch; 3x faster per frame here), or ``auto`` (onnx on the
        CPU, torch on a GPU). ``threads``: CPU intra-op threads for torch (and
        ONNX Runtime); None leaves the process setting alone. For batch-1 inference on a small CPU
        one thread was fastest here (11 ms vs 31 ms with two, bench/bench_refine.py)."""
        self.bundle = bundle
        self.device = resolve_device(device)
        if backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"unknown backend {backend!r} (use auto, torch or onnx)")
        if backend == "auto":  # ONNX Runtime on the CPU, torch on a GPU
            backend = "onnx" if self.device.type == "cpu" else "torch"
        if backend == "onnx" and self.device.type != "cpu":
            raise ValueError("the onnx backend runs on the CPU; use backend torch on a GPU")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))
        self.backend = backend
        self.cfg, self.apr, self.pae, self.decoder = build_models(bundle, self.device)
        rc = self.cfg.refine
        self.refine_enabled = rc.enabled if refine is None else bool(refine)
        self.k = rc.k if k is None else int(k)
        self.steps = rc.steps if steps is None else int(steps)
        self.lr = rc.lr if lr is None else float(lr)
        self.orientation = orientation or rc.orientation
        if self.k < 1 or self.steps < 0 or self.lr <= 0:
            raise ValueError(f"refinement needs k >= 1, steps >= 0, lr > 0 (got k={self.k}, steps={self.steps}, lr={self.lr})")
        if self.refine_enabled and self.pae is None:
            raise BundleError(f"{bundle.path}: refinement requested but the bundle has no PAE (train it with pae train --stage pae)")
        self.scenes: list[str] = list(bundle.header["scenes"])
        self.position_mean = bundle.position_mean
        self.position_scale = bundle.position_scale
        self.resize = int(bundle.header["input"]["resize"])
        self.crop = int(bundle.header["input"]["crop"])
        cal = bundle.header.get("calibration") or {}
        self.sigma_models = {k_: SigmaModel.from_dict(v) for k_, v in cal.items()}
        self.refiner: Refiner | None = None
        if self.pae is not None:
            scales = bundle.header["metric_scales"]
            index = PoseTableIndex(bundle.table_positions, bundle.table_quaternions,
                                   bundle.table_scene_idx if len(self.scenes) > 1 else None,
                                   metric or rc.metric, scales["position_m"], scales["orientation_rad"], self.device)
            latents = self.pae_latents(bundle.table_positions, bundle.table_quaternions, bundle.table_scene_idx)
            self.refiner = Refiner(index, latents, bundle.table_positions, bundle.table_quaternions)
        self.onnx = None
        if backend == "onnx":
            from .onnx_apr import OnnxAPR

            self.onnx = OnnxAPR(self.apr, bundle.bundle_id, self.position_mean, self.position_scale, self.crop, threads)

    @classmethod
    def from_bundle(cls, path: str | Path, **kwargs) -> "Localizer":
        return cls(load_bundle(path), **kwargs)

    @property
    def info(self) -> dict:
        return {"bundle_id": self.bundle.bundle_id, "bundle_path": str(self.bundle.path), "device": str(self.device),
                "backend": self.backend, "threads": torch.get_num_threads(),
                "scenes": self.scenes, "refine": self.refine_enabled, "k": self.k, "steps": self.steps,
                "lr": self.lr, "orientation": self.orientation, "model": self.cfg.model.type,
                "backbone": self.cfg.model.backbone, "input": f"{self.crop}x{self.crop}",
                "table_size": int(len(self.bundle.table_positions)), "decoder": self.decoder is not None,
                "calibrated": sorted(self.sigma_models)}

    # --- building blocks (used by evaluation, which sweeps refinement settings) -----------------
    def normalise_positions(self, p: np.ndarray) -> np.ndarray:
        return (np.asarray(p, np.float64) - self.position_mean) / self.position_scale

    def denormalise_positions(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) * self.position_scale + self.position_mean

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        return to_batch(images, self.resize, self.crop)

    @torch.inference_mode()
    def predict_apr(self, batch: torch.Tensor) -> AprOutput:
        """APR on a preprocessed batch (B, 3, S, S)."""
        if self.onnx is not None:
            p, q, z, s = self.onnx(batch)
            return AprOutput(p, q, z, s)
        out = self.apr(batch.to(self.device))
        x = out["x"].double().cpu().numpy()
        q = out["q"].double().cpu().numpy()
        n = np.linalg.norm(q, axis=1, keepdims=True)
        q = np.where(n > 1e-9, q / np.maximum(n, 1e-12), np.nan)
        q = np.where(q[:, :1] < 0, -q, q)
        return AprOutput(self.denormalise_positions(x), q, torch.cat([out["z_x"], out["z_q"]], -1).float(),
                         out["scene_idx"].cpu().numpy())

    @torch.inference_mode()
    def pae_latents(self, positions, quaternions, scene_idx=None, batch: int = 8192) -> torch.Tensor:
        """PAE latents (N, 2D) on the device for poses in metres / wxyz."""
        x = torch.as_tensor(self.normalise_positions(positions), dtype=torch.float32)
        q = torch.as_tensor(np.asarray(quaternions, np.float64), dtype=torch.float32)
        s = None if scene_idx is None else torch.as_tensor(np.asarray(scene_idx), dtype=torch.long)
        chunks = []
        for i in range(0, len(x), batch):
            zx, zq = self.pae(x[i:i + batch].to(self.device), q[i:i + batch].to(self.device),
                              None if s is None else s[i:i + batch].to(self.device))
            chunks.append(torch.cat([zx, zq], -1).float())
        if not chunks:
            return torch.zeros(0, 2 * self.cfg.model.latent_dim, device=self.device)
        return torch.cat(chunks)

    def refine(self, apr: AprOutput, k: int | None = None, steps: int | None = None, lr: float | None = None,
               orientation: str | None = None) -> RefineResult:
        if self.refiner is None:
            raise BundleError("this bundle has no PAE: refinement is unavailable")
        return self.refiner.refine(apr.positions, apr.quaternions, apr.latents, k or self.k,
                                   self.steps if steps is None else steps, lr or self.lr,
                                   self.cfg.refine.weight_decay, orientation or self.orientation,
                                   apr.scene_idx if len(self.scenes) > 1 else None)

    def confidence_features(self, apr: AprOutput, ref: RefineResult | None) -> dict[str, np.ndarray]:
        feats: dict[str, np.ndarray] = {}
        if self.pae is not None:
            z_self = self.pae_latents(apr.positions, apr.quaternions, apr.scene_idx)
            z = apr.latents.to(z_self.device)
            feats["self_consistency"] = (((z - z_self) ** 2).sum(-1) / (z ** 2).sum(-1).clamp_min(1e-12)).cpu().numpy()
        if ref is not None:
            feats["residual"] = ref.residual
            feats["spread"] = ref.spread_m / self.position_scale
        return feats

    # --- the public API ------------------------------------------------------------------------
    def localize_batch(self, images: list[np.ndarray]) -> list[Estimate]:
        """Localize RGB uint8 images (H, W, 3) of any size."""
        apr = self.predict_apr(self.preprocess(images))
        finite = np.isfinite(apr.positions).all(1) & np.isfinite(apr.quaternions).all(1)
        ref = None
        if self.refine_enabled and finite.all():
            ref = self.refine(apr)
        pos = ref.position if ref is not None else apr.positions
        quat = ref.quaternion if ref is not None else apr.quaternions
        feats = self.confidence_features(apr, ref) if finite.all() else {}
        model = self.sigma_models.get("refined" if ref is not None else "apr")
        if model is not None and feats:
            sp, so = model.sigmas(feats)
            conf = model.confidence(sp)
        else:  # uncalibrated bundle: an honest "we don't know", never a tiny fixed covariance
            sp = np.full(len(images), self.position_scale)
            so = np.full(len(images), np.pi / 2)
            conf = np.zeros(len(images))
        out = []
        for i in range(len(images)):
            ok = bool(finite[i] and np.isfinite(pos[i]).all() and np.isfinite(sp[i]))
            extras = {k_: float(v[i]) for k_, v in feats.items()}
            if ref is not None:
                extras["neighbors"] = ref.neighbors[i].tolist()
                extras["weights"] = ref.weights[i].tolist()
            out.append(Estimate(
                position=pos[i].copy(), quaternion=quat[i].copy(), apr_position=apr.positions[i].copy(),
                apr_quaternion=apr.quaternions[i].copy(), confidence=float(conf[i]),
                sigma_position_m=float(sp[i]), sigma_orientation_rad=float(so[i]),
                covariance=covariance_6x6(float(sp[i]), float(so[i])),
                scene=self.scenes[int(apr.scene_idx[i])], refined=ref is not None, finite=ok, extras=extras))
        return out

    def localize(self, rgb: np.ndarray) -> Estimate:
        """Localize one RGB uint8 image (H, W, 3)."""
        return self.localize_batch([rgb])[0]

    @torch.inference_mode()
    def reconstruct(self, position, quaternion, scene: str | None = None) -> np.ndarray | None:
        """The decoder's image (S, S, 3) uint8 RGB of a pose (m, wxyz); None without a decoder."""
        if self.decoder is None or self.pae is None:
            return None
        s = np.array([self.scenes.index(scene) if scene else 0])
        z = self.pae_latents(np.asarray(position, np.float64)[None], canonical_quat(quaternion)[None], s)
        img = self.decoder(z)[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy()
        return (img * 255.0 + 0.5).astype(np.uint8)

    def warmup(self, iterations: int = 3) -> float:
        """Run a few dummy frames (allocations, lazy init). Returns the last frame's time in s."""
        dummy = np.zeros((self.crop, self.crop, 3), np.uint8)
        dt = 0.0
        for _ in range(iterations):
            t0 = time.perf_counter()
            self.localize(dummy)
            dt = time.perf_counter() - t0
        return dt
