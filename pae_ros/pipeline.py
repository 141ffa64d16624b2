"""The inference pipeline: image in, pose + confidence out. The ROS node and every
evaluation tool call this one class.

Frames: the returned pose is camera-to-world in the bundle's world (map) frame, position in
metres, quaternion wxyz, camera axes OpenCV optical (x right, y down, z forward).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path

import numpy as np
import torch

from . import backends
from .bundle import Bundle, BundleError, build_models, load_bundle, multi_scene_idx
from .candidates import retrieval_candidates
from .confidence import SigmaModel, covariance_6x6
from .geometric_adapter import apply_fix, open_geometric, shortlist
from .geometry import canonical_quat
from .localizer_settings import LocalizerSettings, resolve
from .ood import FLIP_FEATURE, apply_ood_gate, flip_features
from .preprocess import to_batch
from .refine import PoseTableIndex, Refiner, RefineResult
from .retrieval import Describer, RetrievalIndex, normalise_descriptors

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
    #: which estimate ``position`` is: ``apr`` | ``refined`` | ``geometric`` (an accepted geometric fix)
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


def _setting(name: str, doc: str) -> property:
    """A read-only Localizer attribute that is one of its :class:`LocalizerSettings` fields."""
    return property(attrgetter(f"settings.{name}"), doc=doc)


def _unknown_sigma_m(bundle: Bundle) -> float:
    """Sigma (m) published when nothing calibrated applies (uncalibrated, out of scene, non-finite):
    the scene's radius (largest distance of a train camera from the table's median), at least the
    normalisation scale, so it is never smaller than any honest calibrated sigma."""
    tp = np.asarray(bundle.table_positions, np.float64)
    radius = float(np.max(np.linalg.norm(tp - np.median(tp, 0), axis=1))) if len(tp) else 0.0
    return max(float(bundle.position_scale), radius)


def _table_retrieval(bundle: Bundle, table_descriptors: np.ndarray | None) -> RetrievalIndex | None:
    """Retrieval over the pose table's rows (train frames): descriptors from the caller, else the
    bundle's ``table.descriptors`` tensor; None when neither exists."""
    desc = table_descriptors
    if desc is None and "table.descriptors" in bundle.tensors:
        desc = bundle.tensors["table.descriptors"].float().cpu().numpy()
    if desc is None:
        return None
    desc = np.asarray(desc, np.float32)
    if len(desc) != len(bundle.table_positions):
        raise BundleError(f"{bundle.path}: table.descriptors has {len(desc)} rows, the pose table "
                          f"{len(bundle.table_positions)}")
    return RetrievalIndex(desc, multi_scene_idx(bundle.table_scene_idx, len(bundle.header["scenes"])))


class Localizer:
    """APR + PAE refinement + calibrated confidence + out-of-scene gate, built from one bundle.

    It only composes the stages (:mod:`pae_ros.candidates`, :mod:`pae_ros.refine`,
    :mod:`pae_ros.confidence`, :mod:`pae_ros.ood`, :mod:`pae_ros.retrieval`); its settings come
    from :func:`pae_ros.localizer_settings.resolve`."""

    def __init__(self, bundle: Bundle, device: str = "auto", refine: bool | str | None = None, k: int | None = None,
                 steps: int | None = None, lr: float | None = None, orientation: str | None = None,
                 metric: str | None = None, backend: str = "torch", threads: int | None = None,
                 candidates: str | None = None, retrieval_k: int | None = None, ood: dict | bool | None = None,
                 table_descriptors: np.ndarray | None = None, geometric: str | Path | None = "auto",
                 geometric_k: int | None = None, precision: str = "fp32"):
        """``backend`` / ``device`` / ``precision``: see :mod:`pae_ros.backends` (``auto``: TensorRT,
        ONNX Runtime CUDA, torch CUDA, ONNX Runtime CPU, torch CPU; the first that runs; PAE,
        refinement and decoder run in torch on the same device; speed in ``bench/bench_onnx.py`` and
        ``bench/gpu_check.sh``). ``threads``: CPU intra-op threads for torch (and ONNX Runtime); None
        leaves the process setting alone (``bench/bench_node.py --threads N`` times one).

        ``refine``, ``k``, ``steps``, ``lr``, ``orientation``, ``metric``, ``candidates``,
        ``retrieval_k``, ``ood``, ``geometric_k``: see :func:`pae_ros.localizer_settings.resolve`
        (None = the bundle's setting). ``table_descriptors``: (N, D) retrieval descriptors of the
        pose table's rows, when the bundle has no ``table.descriptors`` tensor (e.g. computed with
        :class:`pae_ros.retrieval.Describer`). ``geometric``: the geometric stage
        (:mod:`pae_ros.geometric_adapter`): ``auto`` = the map beside the bundle
        (``<bundle>.map``) when present, ``off``, or a map path."""
        self.bundle = bundle
        self._plan = backends.plan(backend, device, precision)
        self.device = torch.device(self._plan.device)
        self.cfg, self.apr, self.pae, self.decoder = build_models(bundle, self.device)
        self.settings: LocalizerSettings = resolve(
            bundle.header, self.cfg, where=bundle.path, refine=refine, k=k,
            steps=steps, lr=lr, orientation=orientation, metric=metric, candidates=candidates,
            retrieval_k=retrieval_k, ood=ood, geometric_k=geometric_k, threads=threads)
        if self.settings.threads is not None:
            torch.set_num_threads(self.settings.threads)
        if self.refine_enabled and self.pae is None:
            raise BundleError(f"{bundle.path}: refinement requested but the bundle has no PAE (train it with pae train --stage pae)")
        self.scenes: list[str] = list(bundle.header["scenes"])
        self.position_mean = bundle.position_mean
        self.position_scale = bundle.position_scale
        self.unknown_sigma_m = _unknown_sigma_m(bundle)
        self.resize = int(bundle.header["input"]["resize"])
        self.crop = int(bundle.header["input"]["crop"])
        cal = bundle.header.get("calibration") or {}
        self.sigma_models = {k_: SigmaModel.from_dict(v) for k_, v in cal.items()}
        self.retrieval = _table_retrieval(bundle, table_descriptors)
        if self.candidates in ("retrieval", "union") and self.retrieval is None:
            raise BundleError(f"{bundle.path}: candidates {self.candidates!r} need retrieval descriptors "
                              "(bundle tensor table.descriptors), which this bundle lacks")
        self.describer = Describer.for_config(self.cfg, self.apr.backbone, self.device)
        self._warned_no_desc = False
        self._pose_index: PoseTableIndex | None = None
        self.refiner: Refiner | None = None
        if self.pae is not None:
            latents = self.pae_latents(bundle.table_positions, bundle.table_quaternions, bundle.table_scene_idx)
            self.refiner = Refiner(self.pose_index, latents, bundle.table_positions, bundle.table_quaternions)
        from .onnx_apr import OnnxAPR

        self.backend_choice, self.onnx, self.backend_info = backends.start(
            self._plan, lambda c, cache: OnnxAPR(self.apr, bundle.bundle_id, self.position_mean, self.position_scale,
                                                 self.crop, self.settings.threads, c, cache),
            bundle.path, bundle.bundle_id, self.crop)
        self.backend = self.backend_choice.backend
        self.calibration_mismatch = self._check_calibration_settings()
        self.geometric = open_geometric(bundle, geometric)

    @classmethod
    def from_bundle(cls, path: str | Path, **kwargs) -> "Localizer":
        return cls(load_bundle(path), **kwargs)

    refine_enabled = _setting("refine", "Publish the refined pose (else the APR's).")
    published = _setting("published", "The header's ``published`` decision, or None.")
    k = _setting("k", "Nearest train poses among the candidates.")
    steps = _setting("steps", "Steps of the convex-weight fit (0: equal weights).")
    lr = _setting("lr", "Learning rate of the convex-weight fit.")
    orientation = _setting("orientation", "``apr`` or ``average``: the refined pose's orientation.")
    candidates = _setting("candidates", "``auto``, ``knn``, ``retrieval`` or ``union`` as configured.")
    retrieval_k = _setting("retrieval_k", "Retrieval top-k candidates.")
    weights = _setting("weights", "The candidates' weights: ``pae`` (latent fit) or ``uniform``.")
    ood_gate = _setting("ood_gate", "The out-of-scene gate dict, or None.")
    geometric_k = _setting("geometric_k", "Retrieval top-k train images in the geometric shortlist.")

    @property
    def shares_backbone(self) -> bool:
        """Whether the retrieval descriptors are the APR backbone's pooled feature (one forward)."""
        return self.describer.shares_backbone

    def set_table_descriptors(self, descriptors: np.ndarray) -> None:
        """Retrieval over the pose table from the caller's (N, D) unit descriptors of its rows, for a
        bundle without ``table.descriptors`` (``pae eval`` computes them with :meth:`describe`). The
        geometric shortlist and the ``retrieval_cos`` feature use them; the refinement keeps the
        candidates it resolved to at construction, the ones its calibration was made with."""
        self.settings = dataclasses.replace(self.settings, candidates=self.candidate_mode)
        self.retrieval = _table_retrieval(self.bundle, descriptors)

    @property
    def candidate_mode(self) -> str:
        """The candidate source in use: ``knn``, ``retrieval`` or ``union`` (``auto`` resolved)."""
        return self.settings.candidate_mode(self.retrieval is not None)

    @property
    def pose_index(self) -> PoseTableIndex:
        """The neighbour index over the bundle's train pose table (built on first use)."""
        if self._pose_index is None:
            self._pose_index = PoseTableIndex.from_bundle(self.bundle, self.settings.metric, self.device)
        return self._pose_index

    def refine_settings(self) -> dict:
        """The refinement settings a calibration is valid for (compared with ``calibration_settings``)."""
        mode = self.candidate_mode
        s = {"k": self.k, "steps": self.steps, "lr": self.lr, "orientation": self.orientation,
             "metric": self.settings.metric, "candidates": mode}
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

    @torch.inference_mode()
    def predict_apr(self, batch: torch.Tensor, descriptors: bool | None = None) -> AprOutput:
        """APR on a preprocessed batch (B, 3, S, S). ``descriptors``: also compute the retrieval
        descriptors (None: when retrieval is on). With a frozen backbone they come from the same
        forward (the pooled backbone feature), else from a second, pretrained backbone."""
        want = self.retrieval is not None if descriptors is None else descriptors
        if self.onnx is not None:
            p, q, z, s, d = self.onnx(batch)
            return AprOutput(p, q, z, s, self._apr_descriptors(batch, d) if want else None)
        with backends.autocast(self.backend_choice):  # float16 autocast for torch on CUDA at fp16
            feats = self.apr.backbone(batch.to(self.device))
            out = self.apr.forward_features({k_: feats[k_] for k_ in self.apr.feature_keys})
        x = out["x"].double().cpu().numpy()
        q = out["q"].double().cpu().numpy()
        n = np.linalg.norm(q, axis=1, keepdims=True)
        q = np.where(n > 1e-9, q / np.maximum(n, 1e-12), np.nan)
        q = np.where(q[:, :1] < 0, -q, q)
        desc = self._apr_descriptors(batch, feats["pooled"]) if want else None
        return AprOutput(self.denormalise_positions(x), q, torch.cat([out["z_x"], out["z_q"]], -1).float(),
                         out["scene_idx"].cpu().numpy(), desc)

    def _apr_descriptors(self, batch: torch.Tensor, pooled) -> np.ndarray:
        """Retrieval descriptors (B, D) of ``batch`` given the APR forward's ``pooled`` backbone
        feature: that feature itself when the describer shares the APR's backbone."""
        return normalise_descriptors(pooled) if self.shares_backbone else self.describer(batch)

    def describe_batch(self, batch: torch.Tensor) -> np.ndarray:
        """Retrieval descriptors (B, D) of a preprocessed batch."""
        return self.describer(batch)

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
        mode = candidates or self.candidate_mode
        scene_idx = multi_scene_idx(apr.scene_idx, len(self.scenes))
        extra = None
        k_eff = k or self.k
        if mode in ("retrieval", "union"):
            if self.retrieval is not None and apr.descriptors is not None:
                extra, _ = retrieval_candidates(self.retrieval, apr.descriptors, retrieval_k or self.retrieval_k,
                                                scene_idx)
                if mode == "retrieval":
                    k_eff = 0
            elif self.retrieval is not None and not self._warned_no_desc:
                self._warned_no_desc = True
                log.warning("refine: candidates %r need descriptors but the APR output has none (build AprOutput "
                            "with descriptors=, or call predict_apr); using the k nearest poses instead", mode)
        return self.refiner.refine(apr.positions, apr.quaternions, apr.latents, k_eff,
                                   self.steps if steps is None else steps, lr or self.lr,
                                   self.settings.weight_decay, orientation or self.orientation,
                                   scene_idx, extra_candidates=extra)

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
            _, cos = self.retrieval.query(apr.descriptors, 1, multi_scene_idx(apr.scene_idx, len(self.scenes)))
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
        finite = np.isfinite(apr.positions).all(1) & np.isfinite(apr.quaternions).all(1) & \
            torch.isfinite(apr.latents).all(1).cpu().numpy()
        ok_rows = np.flatnonzero(finite)
        sub = apr.rows(ok_rows) if len(ok_rows) < len(images) else apr
        ref = self.refine(sub) if self.refine_enabled and len(ok_rows) else None
        feats, gate_feats = self._row_features(sub, ref) if len(ok_rows) else ({}, {})
        if self.ood_gate and FLIP_FEATURE in self.ood_gate.get("rules", {}) and len(ok_rows):
            gate_feats = gate_feats | flip_features(self, sub.positions, sub.quaternions, sub.scene_idx,
                                                    [images[i] for i in ok_rows])
        in_scene, reasons = self._gate(gate_feats, ok_rows, len(images))
        sigmas = self._sigmas(feats, ref, ok_rows, ~in_scene & finite)
        out = self._estimates(apr, ok_rows, ref, gate_feats, in_scene, reasons, sigmas)
        if self.geometric is not None and geometric is not False:
            for i, e in enumerate(out):
                if e.finite and e.in_scene:
                    out[i] = self._geometric_fix(images[i], e, None if apr.descriptors is None else apr.descriptors[i:i + 1])
        return out

    def _row_features(self, sub: AprOutput, ref: RefineResult | None) -> tuple[dict, dict]:
        """(confidence features, out-of-scene gate features) of the finite rows ``sub``. With
        refinement off the gate still needs the candidates' latent distance (an unfitted refine)."""
        feats = self.confidence_features(sub, ref)
        if not (self.ood_gate and ref is None and self.refiner is not None):
            return feats, feats
        g = self.confidence_features(sub, self.refine(sub, steps=0))
        return feats, {k_: g[k_] for k_ in ("manifold", "residual") if k_ in g} | feats

    def _gate(self, gate_feats: dict, ok_rows: np.ndarray, n: int) -> tuple[np.ndarray, list[list[str]]]:
        """(in_scene (n,) bool, reasons per row): the out-of-scene gate on the finite rows
        ``ok_rows``; a non-finite row is out of scene with reason ``non-finite``."""
        in_sub, failed_sub = apply_ood_gate(self.ood_gate, gate_feats, len(ok_rows))
        in_scene = np.zeros(n, bool)
        in_scene[ok_rows] = in_sub
        reasons = [["non-finite"] for _ in range(n)]
        for j, i in enumerate(ok_rows):
            reasons[i] = failed_sub[j]
        return in_scene, reasons

    def _sigmas(self, feats: dict, ref: RefineResult | None, ok_rows: np.ndarray,
                gated: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sigma position m, sigma orientation rad, confidence), each (n,), from the calibrated
        model of the published method. Uncalibrated, non-finite and ``gated`` (out-of-scene) rows
        get an honest "we don't know" (:attr:`unknown_sigma_m`, pi/2, confidence 0), never a tiny
        fixed covariance."""
        n = len(gated)
        sp, so, conf = np.full(n, self.unknown_sigma_m), np.full(n, np.pi / 2), np.zeros(n)
        model = self.sigma_models.get("refined" if ref is not None else "apr")
        if model is not None and feats and all(f in feats for f in model.features):
            sp_s, so_s = model.sigmas(feats)
            sp[ok_rows], so[ok_rows] = sp_s, so_s
            conf[ok_rows] = model.confidence(sp_s)
        sp[gated], so[gated], conf[gated] = self.unknown_sigma_m, np.pi / 2, 0.0
        return sp, so, conf

    def _estimates(self, apr: AprOutput, ok_rows: np.ndarray, ref: RefineResult | None, gate_feats: dict,
                   in_scene: np.ndarray, reasons: list[list[str]], sigmas) -> list[Estimate]:
        """One :class:`Estimate` per row of ``apr``: the refined pose on the finite rows when
        ``ref`` exists, the features and candidates in ``extras``."""
        sp, so, conf = sigmas
        pos, quat = np.array(apr.positions, np.float64), np.array(apr.quaternions, np.float64)
        if ref is not None:
            pos[ok_rows], quat[ok_rows] = ref.position, ref.quaternion
        row_of = {int(i): j for j, i in enumerate(ok_rows)}
        out = []
        for i in range(len(pos)):
            j = row_of.get(i)
            extras = {} if j is None else {k_: float(v[j]) for k_, v in gate_feats.items()}
            if ref is not None and j is not None:
                valid = ref.valid[j] if ref.valid is not None else np.ones(ref.neighbors.shape[1], bool)
                extras["neighbors"] = ref.neighbors[j][valid].tolist()
                extras["weights"] = ref.weights[j][valid].tolist()
            if reasons[i]:
                extras["out_of_scene"] = reasons[i]
            refined = ref is not None and j is not None
            out.append(Estimate(
                position=pos[i].copy(), quaternion=quat[i].copy(), apr_position=apr.positions[i].copy(),
                apr_quaternion=apr.quaternions[i].copy(), confidence=float(conf[i]),
                sigma_position_m=float(sp[i]), sigma_orientation_rad=float(so[i]),
                covariance=covariance_6x6(float(sp[i]), float(so[i])),
                scene=self.scenes[int(apr.scene_idx[i])], refined=refined,
                finite=bool(j is not None and np.isfinite(pos[i]).all() and np.isfinite(sp[i])),
                extras=extras, method="refined" if refined else "apr", in_scene=bool(in_scene[i]),
                descriptor=None if apr.descriptors is None else np.array(apr.descriptors[i], np.float32)))
        return out

    def _geometric_fix(self, rgb: np.ndarray, prior: Estimate, descriptor: np.ndarray | None,
                       intrinsics=None) -> Estimate:
        top = None
        if self.retrieval is not None and descriptor is not None:
            s_idx = multi_scene_idx(np.array([self.scenes.index(prior.scene)]), len(self.scenes))
            top, _ = self.retrieval.query(descriptor, min(self.geometric_k, len(self.bundle.table_positions)), s_idx)
            top = top[0]
        rows = shortlist(top, prior.extras.get("neighbors"))
        if not rows:  # no retrieval and no refinement: the APR's nearest table poses
            d = np.linalg.norm(self.bundle.table_positions - prior.position, axis=1)
            rows = np.argsort(d)[: self.geometric_k].tolist()
        try:
            res = self.geometric(rgb, rows, prior.position, prior.quaternion, prior.sigma_position_m,
                                 prior.sigma_orientation_rad, intrinsics=intrinsics,
                                 scene=self.scenes.index(prior.scene))
        except ValueError as e:  # e.g. an image that is not RGB uint8 (H, W, 3)
            out = dataclasses.replace(prior, extras=dict(prior.extras))
            out.extras["geometric_reason"] = f"unusable image: {e}"
            return out
        return apply_fix(prior, res)

    def localize_geometric(self, rgb: np.ndarray, prior: Estimate, descriptor: np.ndarray | None = None,
                           intrinsics=None) -> Estimate:
        """The geometric stage on one RGB uint8 image given its APR/PAE estimate ``prior`` (from
        :meth:`localize`): the fix (``method="geometric"``) or ``prior`` with
        ``extras["geometric_reason"]``. For a slower thread (tens of ms per call); ``prior``
        returned unchanged when the stage is off or the prior is non-finite / out of scene.
        ``descriptor``: the image's (D,) retrieval descriptor from **this** Localizer (its
        ``Estimate.descriptor``; another instance's may differ); None computes it (one backbone forward).
        ``intrinsics``: the query camera (:class:`pae_ros.datasets.CameraIntrinsics`, pixels, scaled
        to the image; the node's camera_info); None: the map's camera. One that disagrees with the
        map's gives ``geometric_reason="camera_mismatch"`` (see :mod:`pae_ros.geometric.stage`)."""
        if self.geometric is None or not prior.finite or not prior.in_scene:
            return prior
        desc = None
        if self.retrieval is not None:
            desc = np.asarray(descriptor, np.float32)[None] if descriptor is not None else self.describe([rgb])
        return self._geometric_fix(rgb, prior, desc, intrinsics)

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
