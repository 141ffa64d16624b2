"""The inference pipeline: image in, pose + confidence out. The ROS node and every
evaluation tool call this one class.

Frames: the returned pose is camera-to-world in the bundle's world (map) frame, position in
metres, quaternion wxyz, camera axes OpenCV optical (x right, y down, z forward).
"""
from __future__ import annotations

import logging
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import backends
from .bundle import Bundle, BundleError, build_models, load_bundle
from .confidence import SigmaModel, covariance_6x6
from .geometry import canonical_quat
from .preprocess import to_batch
from .ood import apply_ood_gate
from .refine import PoseTableIndex, Refiner, RefineResult
from .retrieval import RetrievalIndex, normalise_descriptors

log = logging.getLogger("pae.pipeline")


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
    #: which estimate ``position`` is: ``apr`` | ``refined`` (later ``geometric``)
    method: str = "apr"
    #: the out-of-scene gate's verdict (True when the bundle has no gate); when False the
    #: confidence is 0 and the covariance the uninformative one
    in_scene: bool = True
    #: (D,) float32 unit retrieval descriptor of the image when retrieval is on (else None); handed
    #: back to the same Localizer's :meth:`Localizer.localize_geometric` (``descriptor=``) it saves
    #: a second backbone forward
    descriptor: np.ndarray | None = None


@dataclass
class AprOutput:
    """Batched APR result: positions (B,3) m, quaternions (B,4) wxyz, latents (B,2D), scene (B,),
    descriptors (B, D) unit float32 retrieval descriptors or None."""

    positions: np.ndarray
    quaternions: np.ndarray
    latents: torch.Tensor
    scene_idx: np.ndarray
    descriptors: np.ndarray | None = None

    def rows(self, sel: np.ndarray) -> "AprOutput":
        """The subset of rows ``sel`` (bool mask or indices)."""
        sel_t = torch.as_tensor(np.flatnonzero(sel) if np.asarray(sel).dtype == bool else np.asarray(sel))
        return AprOutput(self.positions[sel], self.quaternions[sel], self.latents[sel_t.to(self.latents.device)],
                         self.scene_idx[sel], None if self.descriptors is None else self.descriptors[sel])


def _backbone_frozen(cfg) -> bool:
    """Whether the APR's backbone is the ImageNet-pretrained one unchanged (then its pooled
    features are the retrieval descriptors and one forward serves both)."""
    ac = cfg.apr
    if not getattr(ac, "freeze_backbone", False):
        return False
    for name in vars(ac):  # partial fine-tuning keys (e.g. unfreeze_blocks) change the backbone
        if ("unfreeze" in name or "finetune" in name or "trainable" in name) and getattr(ac, name):
            return False
    return True


class Localizer:
    """APR + PAE refinement + calibrated confidence + out-of-scene gate, built from one bundle.

    It only composes the stages (:mod:`pae_ros.candidates`, :mod:`pae_ros.refine`,
    :mod:`pae_ros.confidence`, :mod:`pae_ros.ood`, :mod:`pae_ros.retrieval`)."""

    def __init__(self, bundle: Bundle, device: str = "auto", refine: bool | str | None = None, k: int | None = None,
                 steps: int | None = None, lr: float | None = None, orientation: str | None = None,
                 metric: str | None = None, backend: str = "torch", threads: int | None = None,
                 candidates: str | None = None, retrieval_k: int | None = None, ood: dict | bool | None = None,
                 table_descriptors: np.ndarray | None = None, geometric: str | Path | None = "auto",
                 geometric_k: int | None = None, precision: str = "fp32"):
        """``backend`` / ``device`` / ``precision``: see :mod:`pae_ros.backends` (``auto``: TensorRT,
        ONNX Runtime CUDA, torch CUDA, ONNX Runtime CPU, torch CPU; the first that runs; PAE,
        refinement and decoder run in torch on the same device; ONNX Runtime on the CPU was 3x
        faster per frame than eager torch here). ``threads``: CPU intra-op threads for torch (and
        ONNX Runtime); None leaves the process setting alone. For batch-1 inference on a small CPU
        one thread was fastest here (11 ms vs 31 ms with two, bench/bench_refine.py).

        ``refine``: None or ``"auto"`` = what the bundle publishes (header ``published``:
        ``apr`` | ``refined``; absent: the config's ``refine.enabled``), True/False force it.
        ``candidates`` / ``retrieval_k``: see :class:`pae_ros.config.RefineConfig`.
        ``ood``: the out-of-scene gate dict (:func:`pae_ros.ood.fit_ood_gate`); None = the
        bundle header's ``ood`` (no gate when absent), False = off.
        ``table_descriptors``: (N, D) retrieval descriptors of the pose table's rows, when the
        bundle has no ``table.descriptors`` tensor (e.g. computed with :class:`pae_ros.retrieval.Describer`).
        ``geometric``: the geometric stage (:mod:`pae_ros.geometric_adapter`): ``auto`` = the map
        beside the bundle (``<bundle>.map``) when present, ``off``, or a map path. ``geometric_k``:
        retrieval top-k train images in its shortlist (united with the refinement's candidates);
        None: :data:`pae_ros.geometric.stage.SHORTLIST_K`, the shortlist the map was calibrated with."""
        self.bundle = bundle
        self._plan = backends.plan(backend, device, precision)
        self.device = torch.device(self._plan.device)
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(int(threads))
        self.cfg, self.apr, self.pae, self.decoder = build_models(bundle, self.device)
        rc = self.cfg.refine
        self.published = bundle.header.get("published")
        if self.published not in (None, "apr", "refined", "geometric"):
            raise BundleError(f"{bundle.path}: header 'published' is {self.published!r} (expected apr or refined)")
        if refine is None or refine == "auto":
            if self.published is not None:
                self.refine_enabled = self.published == "refined"
            else:  # bundles written before the refine: auto decision
                self.refine_enabled = True if rc.enabled in ("auto", None) else bool(rc.enabled)
        elif isinstance(refine, str):
            if refine not in ("true", "false"):
                raise ValueError(f"refine must be auto, true or false, got {refine!r}")
            self.refine_enabled = refine == "true"
        else:
            self.refine_enabled = bool(refine)
        self.k = rc.k if k is None else int(k)
        #: the candidates' weights: ``pae`` (latent fit) or ``uniform`` (no PAE: the training's
        #: ``refine.weights: auto`` found the fit no better than equal weights, header ``refine_weights``)
        self.weights = bundle.header.get("refine_weights", "pae") if rc.weights == "auto" else rc.weights
        if self.weights not in ("pae", "uniform"):
            raise BundleError(f"{bundle.path}: header 'refine_weights' is {self.weights!r} (expected pae or uniform)")
        if steps is not None:  # an explicit step count decides (0 = uniform weights)
            self.steps = int(steps)
            self.weights = "uniform" if self.steps == 0 else "pae"
        else:
            self.steps = 0 if self.weights == "uniform" else rc.steps
        self.lr = rc.lr if lr is None else float(lr)
        self.orientation = orientation or rc.orientation
        self.candidates = candidates or getattr(rc, "candidates", "auto")
        self.retrieval_k = int(retrieval_k if retrieval_k is not None else getattr(rc, "retrieval_k", 2))
        if self.k < 1 or self.steps < 0 or self.lr <= 0 or self.retrieval_k < 1:
            raise ValueError(f"refinement needs k >= 1, steps >= 0, lr > 0, retrieval_k >= 1 (got k={self.k}, "
                             f"steps={self.steps}, lr={self.lr}, retrieval_k={self.retrieval_k})")
        if self.candidates not in ("auto", "knn", "retrieval", "union"):
            raise ValueError(f"unknown candidates {self.candidates!r} (use auto, knn, retrieval or union)")
        if self.refine_enabled and self.pae is None:
            raise BundleError(f"{bundle.path}: refinement requested but the bundle has no PAE (train it with pae train --stage pae)")
        self.scenes: list[str] = list(bundle.header["scenes"])
        self.position_mean = bundle.position_mean
        self.position_scale = bundle.position_scale
        #: sigma (m) published when nothing calibrated applies (uncalibrated, out of scene, non-finite):
        #: the scene's radius (largest distance of a train camera from the table's median), at least
        #: the normalisation scale, so it is never smaller than any honest calibrated sigma
        tp = np.asarray(bundle.table_positions, np.float64)
        radius = float(np.max(np.linalg.norm(tp - np.median(tp, 0), axis=1))) if len(tp) else 0.0
        self.unknown_sigma_m = max(float(self.position_scale), radius)
        self.resize = int(bundle.header["input"]["resize"])
        self.crop = int(bundle.header["input"]["crop"])
        cal = bundle.header.get("calibration") or {}
        self.sigma_models = {k_: SigmaModel.from_dict(v) for k_, v in cal.items()}
        # retrieval over the pose table's rows (train frames): descriptors from the bundle or the caller
        desc = table_descriptors
        if desc is None and "table.descriptors" in bundle.tensors:
            desc = bundle.tensors["table.descriptors"].float().cpu().numpy()
        self.retrieval: RetrievalIndex | None = None
        if desc is not None:
            desc = np.asarray(desc, np.float32)
            if len(desc) != len(bundle.table_positions):
                raise BundleError(f"{bundle.path}: table.descriptors has {len(desc)} rows, the pose table "
                                  f"{len(bundle.table_positions)}")
            self.retrieval = RetrievalIndex(desc, bundle.table_scene_idx if len(self.scenes) > 1 else None)
        if self.candidates in ("retrieval", "union") and self.retrieval is None:
            raise BundleError(f"{bundle.path}: candidates {self.candidates!r} need retrieval descriptors "
                              "(bundle tensor table.descriptors), which this bundle lacks")
        self.shares_backbone = _backbone_frozen(self.cfg)
        self._describer = None
        self.refiner: Refiner | None = None
        if self.pae is not None:
            scales = bundle.header["metric_scales"]
            index = PoseTableIndex(bundle.table_positions, bundle.table_quaternions,
                                   bundle.table_scene_idx if len(self.scenes) > 1 else None,
                                   metric or rc.metric, scales["position_m"], scales["orientation_rad"], self.device)
            latents = self.pae_latents(bundle.table_positions, bundle.table_quaternions, bundle.table_scene_idx)
            self.refiner = Refiner(index, latents, bundle.table_positions, bundle.table_quaternions)
        self.ood_gate = (bundle.header.get("ood") if ood is None else (ood or None))
        from .onnx_apr import OnnxAPR

        self.backend_choice, self.onnx, self.backend_info = backends.start(
            self._plan, lambda c, cache: OnnxAPR(self.apr, bundle.bundle_id, self.position_mean, self.position_scale,
                                                 self.crop, threads, c, cache), bundle.path, bundle.bundle_id, self.crop)
        self.backend = self.backend_choice.backend
        self.calibration_mismatch = self._check_calibration_settings()
        from .geometric.stage import SHORTLIST_K
        from .geometric_adapter import open_geometric

        geometric_k = SHORTLIST_K if geometric_k is None else geometric_k
        if geometric_k < 1:
            raise ValueError(f"geometric_k must be >= 1, got {geometric_k}")
        self.geometric_k = int(geometric_k)
        self.geometric = open_geometric(bundle, geometric)

    @classmethod
    def from_bundle(cls, path: str | Path, **kwargs) -> "Localizer":
        return cls(load_bundle(path), **kwargs)

    @property
    def candidate_mode(self) -> str:
        """The candidate source in use: ``knn``, ``retrieval`` or ``union`` (``auto`` resolved)."""
        if self.candidates == "auto":
            return "retrieval" if self.retrieval is not None else "knn"
        return self.candidates

    def refine_settings(self) -> dict:
        """The refinement settings a calibration is valid for (compared with ``calibration_settings``)."""
        mode = self.candidate_mode
        s = {"k": self.k, "steps": self.steps, "lr": self.lr, "orientation": self.orientation,
             "metric": self.refiner.index.metric if self.refiner is not None else self.cfg.refine.metric,
             "candidates": mode}
        if mode != "knn":
            s["retrieval_k"] = self.retrieval_k
        return s

    def _check_calibration_settings(self) -> dict:
        """Settings that differ from the ones the sigma was calibrated for: {key: [calibrated, now]}."""
        cal = self.bundle.header.get("calibration_settings")
        if not cal or not self.refine_enabled:
            return {}
        now = self.refine_settings()
        diff = {k_: [cal[k_], now[k_]] for k_ in now if k_ in cal and cal[k_] != now[k_]}
        if diff:
            log.warning("refinement settings differ from the ones the confidence was calibrated for (%s): sigma "
                        "and confidence may be off", ", ".join(f"{k_} {a!r} -> {b!r}" for k_, (a, b) in diff.items()))
        return diff

    @property
    def info(self) -> dict:
        return {"bundle_id": self.bundle.bundle_id, "bundle_path": str(self.bundle.path), "device": str(self.device),
                "threads": torch.get_num_threads(), **self.backend_info,
                "scenes": self.scenes, "refine": self.refine_enabled, "k": self.k, "steps": self.steps,
                "lr": self.lr, "orientation": self.orientation, "model": self.cfg.model.type,
                "backbone": self.cfg.model.backbone, "input": f"{self.crop}x{self.crop}",
                "table_size": int(len(self.bundle.table_positions)), "decoder": self.decoder is not None,
                "calibrated": sorted(self.sigma_models), "published": self.published,
                "method": "refined" if self.refine_enabled else "apr", "candidates": self.candidate_mode,
                "weights": self.weights,
                "retrieval_k": self.retrieval_k, "retrieval": self.retrieval is not None,
                "ood_gate": sorted(self.ood_gate["rules"]) if self.ood_gate else None,
                "calibration_mismatch": self.calibration_mismatch,
                "geometric": self.geometric is not None, "geometric_k": self.geometric_k,
                "geometric_map": None if self.geometric is None else str(self.geometric.map.path)}

    # --- building blocks (used by evaluation, which sweeps refinement settings) -----------------
    def normalise_positions(self, p: np.ndarray) -> np.ndarray:
        return (np.asarray(p, np.float64) - self.position_mean) / self.position_scale

    def denormalise_positions(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) * self.position_scale + self.position_mean

    def preprocess(self, images: list[np.ndarray]) -> torch.Tensor:
        return to_batch(images, self.resize, self.crop)

    def _needs_descriptors(self) -> bool:
        return self.retrieval is not None

    @torch.inference_mode()
    def predict_apr(self, batch: torch.Tensor, descriptors: bool | None = None) -> AprOutput:
        """APR on a preprocessed batch (B, 3, S, S). ``descriptors``: also compute the retrieval
        descriptors (None: when retrieval is on). With a frozen backbone they come from the same
        forward (the pooled backbone feature), else from a second, pretrained backbone."""
        want = self._needs_descriptors() if descriptors is None else descriptors
        if self.onnx is not None:
            p, q, z, s, d = self.onnx(batch)
            desc = None
            if want:
                desc = normalise_descriptors(d) if self.shares_backbone else self.describe_batch(batch)
            return AprOutput(p, q, z, s, desc)
        with backends.autocast(self.backend_choice):  # float16 autocast for torch on CUDA at fp16
            feats = self.apr.backbone(batch.to(self.device))
            out = self.apr.forward_features({k_: feats[k_] for k_ in self.apr.feature_keys})
        x = out["x"].double().cpu().numpy()
        q = out["q"].double().cpu().numpy()
        n = np.linalg.norm(q, axis=1, keepdims=True)
        q = np.where(n > 1e-9, q / np.maximum(n, 1e-12), np.nan)
        q = np.where(q[:, :1] < 0, -q, q)
        desc = None
        if want:
            desc = normalise_descriptors(feats["pooled"]) if self.shares_backbone else self.describe_batch(batch)
        return AprOutput(self.denormalise_positions(x), q, torch.cat([out["z_x"], out["z_q"]], -1).float(),
                         out["scene_idx"].cpu().numpy(), desc)

    def describe_batch(self, batch: torch.Tensor) -> np.ndarray:
        """Retrieval descriptors (B, D) of a preprocessed batch."""
        if self.shares_backbone:
            with torch.inference_mode():
                return normalise_descriptors(self.apr.backbone(batch.to(self.device))["pooled"])
        if self._describer is None:
            from .retrieval import Describer

            self._describer = Describer(None, self.cfg.model.backbone, self.device)
        return self._describer(batch)

    def describe(self, images: list[np.ndarray]) -> np.ndarray:
        """Retrieval descriptors (B, D) float32, unit rows, of RGB uint8 images (H, W, 3)."""
        return self.describe_batch(self.preprocess(images))

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
               orientation: str | None = None, candidates: str | None = None,
               retrieval_k: int | None = None) -> RefineResult:
        """Refine the APR outputs (all rows must be finite). ``candidates``: knn | retrieval | union
        (None: the Localizer's); retrieval needs ``apr.descriptors`` (else it falls back to knn)."""
        if self.refiner is None:
            raise BundleError("this bundle has no PAE: refinement is unavailable")
        from .candidates import retrieval_candidates

        mode = candidates or self.candidate_mode
        multi = len(self.scenes) > 1
        extra = None
        k_eff = k or self.k
        if mode in ("retrieval", "union"):
            if self.retrieval is not None and apr.descriptors is not None:
                extra, _ = retrieval_candidates(self.retrieval, apr.descriptors, retrieval_k or self.retrieval_k,
                                                apr.scene_idx if multi else None)
                if mode == "retrieval":
                    k_eff = 0
            elif self.retrieval is not None and not getattr(self, "_warned_no_desc", False):
                self._warned_no_desc = True
                log.warning("refine: candidates %r need descriptors but the APR output has none (build AprOutput "
                            "with descriptors=, or call predict_apr); using the k nearest poses instead", mode)
        return self.refiner.refine(apr.positions, apr.quaternions, apr.latents, k_eff,
                                   self.steps if steps is None else steps, lr or self.lr,
                                   self.cfg.refine.weight_decay, orientation or self.orientation,
                                   apr.scene_idx if multi else None, extra_candidates=extra)

    def confidence_features(self, apr: AprOutput, ref: RefineResult | None) -> dict[str, np.ndarray]:
        """Per-frame confidence / gate features (see :mod:`pae_ros.confidence`, :mod:`pae_ros.ood`)."""
        feats: dict[str, np.ndarray] = {}
        if self.pae is not None:
            z_self = self.pae_latents(apr.positions, apr.quaternions, apr.scene_idx)
            z = apr.latents.to(z_self.device)
            feats["self_consistency"] = (((z - z_self) ** 2).sum(-1) / (z ** 2).sum(-1).clamp_min(1e-12)).cpu().numpy()
        if ref is not None:
            feats["residual"] = ref.residual
            feats["spread"] = ref.spread_m / self.position_scale
            if ref.manifold is not None:
                feats["manifold"] = ref.manifold
        if self.retrieval is not None and apr.descriptors is not None:
            _, cos = self.retrieval.query(apr.descriptors, 1, apr.scene_idx if len(self.scenes) > 1 else None)
            feats["retrieval_cos"] = cos[:, 0].astype(np.float64)
        return feats

    def gate_features(self, apr: AprOutput) -> dict[str, np.ndarray]:
        """Out-of-scene features of finite APR rows, independent of whether refinement is on: the
        candidates' latent distance is computed with the Localizer's candidate settings."""
        ref = self.refine(apr, steps=0) if self.refiner is not None else None
        return self.confidence_features(apr, ref)

    # --- the public API ------------------------------------------------------------------------
    def localize_batch(self, images: list[np.ndarray], geometric: bool | None = None) -> list[Estimate]:
        """Localize RGB uint8 images (H, W, 3) of any size. Rows are independent: a non-finite
        APR output in one row leaves the others refined and calibrated.

        ``geometric``: None / True run the geometric stage (when the Localizer has one) on every
        finite in-scene row; False skips it and returns the APR/PAE estimates, for a caller that
        runs :meth:`localize_geometric` itself (the node's slower thread)."""
        apr = self.predict_apr(self.preprocess(images))
        n = len(images)
        finite = np.isfinite(apr.positions).all(1) & np.isfinite(apr.quaternions).all(1) & \
            torch.isfinite(apr.latents).all(1).cpu().numpy()
        ok_rows = np.flatnonzero(finite)
        sub = apr.rows(ok_rows) if len(ok_rows) < n else apr
        ref = None
        if self.refine_enabled and len(ok_rows):
            ref = self.refine(sub)
        pos = np.array(apr.positions, np.float64)
        quat = np.array(apr.quaternions, np.float64)
        if ref is not None:
            pos[ok_rows], quat[ok_rows] = ref.position, ref.quaternion
        feats_sub = self.confidence_features(sub, ref) if len(ok_rows) else {}
        if self.ood_gate and len(ok_rows) and ref is None and self.refiner is not None:
            # refinement off: the gate still needs the candidates' latent distance
            g = self.confidence_features(sub, self.refine(sub, steps=0))
            feats_gate = {k_: g[k_] for k_ in ("manifold", "residual") if k_ in g} | feats_sub
        else:
            feats_gate = feats_sub
        in_sub, failed_sub = apply_ood_gate(self.ood_gate, feats_gate, len(ok_rows))
        in_scene = np.zeros(n, bool)
        in_scene[ok_rows] = in_sub
        failed = [["non-finite"] for _ in range(n)]
        for j, i in enumerate(ok_rows):
            failed[i] = failed_sub[j]
        # uncalibrated (or out-of-scene / non-finite): an honest "we don't know", never a tiny fixed covariance
        sp = np.full(n, self.unknown_sigma_m)
        so = np.full(n, np.pi / 2)
        conf = np.zeros(n)
        model = self.sigma_models.get("refined" if ref is not None else "apr")
        if model is not None and feats_sub and all(f in feats_sub for f in model.features):
            sp_s, so_s = model.sigmas(feats_sub)
            sp[ok_rows], so[ok_rows] = sp_s, so_s
            conf[ok_rows] = model.confidence(sp_s)
        gated = ~in_scene & finite
        sp[gated], so[gated], conf[gated] = self.unknown_sigma_m, np.pi / 2, 0.0
        row_of = {int(i): j for j, i in enumerate(ok_rows)}
        method = "refined" if ref is not None else "apr"
        out = []
        for i in range(n):
            j = row_of.get(i)
            ok = bool(j is not None and np.isfinite(pos[i]).all() and np.isfinite(sp[i]))
            extras = {} if j is None else {k_: float(v[j]) for k_, v in feats_gate.items()}
            if ref is not None and j is not None:
                valid = ref.valid[j] if ref.valid is not None else np.ones(ref.neighbors.shape[1], bool)
                extras["neighbors"] = ref.neighbors[j][valid].tolist()
                extras["weights"] = ref.weights[j][valid].tolist()
            if failed[i]:
                extras["out_of_scene"] = failed[i]
            out.append(Estimate(
                position=pos[i].copy(), quaternion=quat[i].copy(), apr_position=apr.positions[i].copy(),
                apr_quaternion=apr.quaternions[i].copy(), confidence=float(conf[i]),
                sigma_position_m=float(sp[i]), sigma_orientation_rad=float(so[i]),
                covariance=covariance_6x6(float(sp[i]), float(so[i])),
                scene=self.scenes[int(apr.scene_idx[i])], refined=ref is not None and j is not None, finite=ok,
                extras=extras, method=method if j is not None else "apr", in_scene=bool(in_scene[i]),
                descriptor=None if apr.descriptors is None else np.array(apr.descriptors[i], np.float32)))
        if self.geometric is not None and geometric is not False:
            for i in range(n):
                if out[i].finite and out[i].in_scene:
                    desc = None if apr.descriptors is None else apr.descriptors[i:i + 1]
                    out[i] = self._geometric_fix(images[i], out[i], desc)
        return out

    def _geometric_fix(self, rgb: np.ndarray, prior: Estimate, descriptor: np.ndarray | None) -> Estimate:
        from .geometric_adapter import apply_fix, shortlist

        top = None
        if self.retrieval is not None and descriptor is not None:
            multi = len(self.scenes) > 1
            s_idx = np.array([self.scenes.index(prior.scene)]) if multi else None
            top, _ = self.retrieval.query(descriptor, min(self.geometric_k, len(self.bundle.table_positions)), s_idx)
            top = top[0]
        rows = shortlist(top, prior.extras.get("neighbors"))
        if not rows:  # no retrieval and no refinement: the APR's nearest table poses
            d = np.linalg.norm(self.bundle.table_positions - prior.position, axis=1)
            rows = np.argsort(d)[: self.geometric_k].tolist()
        try:
            res = self.geometric(rgb, rows, prior.position, prior.quaternion, prior.sigma_position_m,
                                 prior.sigma_orientation_rad)
        except ValueError as e:  # e.g. an image whose aspect the map's intrinsics cannot describe
            out = dataclasses.replace(prior, extras=dict(prior.extras))
            out.extras["geometric_reason"] = f"unusable image: {e}"
            return out
        return apply_fix(prior, res)

    def localize_geometric(self, rgb: np.ndarray, prior: Estimate, descriptor: np.ndarray | None = None) -> Estimate:
        """The geometric stage on one RGB uint8 image given its APR/PAE estimate ``prior`` (from
        :meth:`localize`): the fix (``method="geometric"``) or ``prior`` with
        ``extras["geometric_reason"]``. For a slower thread (tens of ms per call); ``prior``
        returned unchanged when the stage is off or the prior is non-finite / out of scene.
        ``descriptor``: the image's (D,) retrieval descriptor from **this** Localizer (its
        ``Estimate.descriptor``; another instance's may differ); None computes it (one backbone forward)."""
        if self.geometric is None or not prior.finite or not prior.in_scene:
            return prior
        desc = None
        if self.retrieval is not None:
            desc = np.asarray(descriptor, np.float32)[None] if descriptor is not None else self.describe([rgb])
        return self._geometric_fix(rgb, prior, desc)

    def localize(self, rgb: np.ndarray, geometric: bool | None = None) -> Estimate:
        """Localize one RGB uint8 image (H, W, 3); ``geometric`` as in :meth:`localize_batch`."""
        return self.localize_batch([rgb], geometric)[0]

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
