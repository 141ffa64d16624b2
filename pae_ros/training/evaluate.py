"""Evaluation of a bundle on a dataset split: APR, PAE reproduction, refined, calibration and
image reconstruction. Used by ``pae eval`` and the demo; all numbers come from
:class:`pae_ros.pipeline.Localizer`, the same code the node runs.

Report (JSON) shape::

    {"scenes": {scene: {method: summarize_errors(...)}},        # methods: apr, pae, pae_gt, refined, refined_k*
     "per_frame": {scene: {method: {"image": [...], "position_error_m": [...], "orientation_error_deg": [...]}}},
     "calibration": {...}, "reconstruction_psnr_db": {"train": x, "test": y}, "refine": {...}, "timing": {...}}
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..confidence import coverage
from ..datasets import DatasetSplit, load_rgb
from ..geometry import canonical_quat, orientation_error_deg, orientation_error_rad, position_error
from ..metrics import summarize_errors
from ..pipeline import Localizer

log = logging.getLogger("pae.eval")


@torch.inference_mode()
def pae_reproduction(loc: Localizer, positions: np.ndarray, quaternions: np.ndarray, scene_idx: np.ndarray):
    """The teacher's heads applied to the PAE's latents of the given poses -> (positions m, quats wxyz)."""
    z = loc.pae_latents(positions, quaternions, scene_idx)
    d = z.shape[1] // 2
    x, q = loc.apr.heads(z[:, :d], z[:, d:])
    q = q.double().cpu().numpy()
    return loc.denormalise_positions(x.double().cpu().numpy()), canonical_quat(q)


def evaluate(loc: Localizer, test: DatasetSplit, train: DatasetSplit | None = None, k_sweep=(), batch: int = 32,
             confidence_threshold: float = 0.5, show_progress: bool = True, grid_frames: int = 8) -> dict:
    """Run every method on ``test``; returns the report dict (plus private arrays under ``_arrays``)."""
    from ..progress import tqdm

    frames = test.frames
    gt_p, gt_q = test.positions, test.quaternions
    scene_idx_gt = np.array([loc.scenes.index(f.scene) if f.scene in loc.scenes else -1 for f in frames])
    if np.any(scene_idx_gt < 0):
        missing = sorted({f.scene for f in frames if f.scene not in loc.scenes})
        raise ValueError(f"test scenes {missing} are not in the bundle (it knows {loc.scenes})")
    apr_p, apr_q, lat, sidx = [], [], [], []
    t_apr = 0.0
    for i in tqdm(range(0, len(frames), batch), desc="APR", unit="batch", disable=not show_progress, leave=False):
        imgs = [load_rgb(f.image_path) for f in frames[i:i + batch]]
        t0 = time.perf_counter()
        out = loc.predict_apr(loc.preprocess(imgs))
        t_apr += time.perf_counter() - t0
        apr_p.append(out.positions)
        apr_q.append(out.quaternions)
        lat.append(out.latents)
        sidx.append(out.scene_idx)
    from ..pipeline import AprOutput

    apr = AprOutput(np.concatenate(apr_p), np.concatenate(apr_q), torch.cat(lat), np.concatenate(sidx))
    est: dict[str, tuple[np.ndarray, np.ndarray]] = {"apr": (apr.positions, apr.quaternions)}
    report: dict = {"bundle_id": loc.bundle.bundle_id, "frames": len(frames), "scenes": {}, "per_frame": {},
                    "refine": {"k": loc.k, "steps": loc.steps, "lr": loc.lr, "orientation": loc.orientation,
                               "metric": loc.cfg.refine.metric},
                    "timing": {"apr_ms_per_frame": 1e3 * t_apr / max(len(frames), 1)}}
    ref = None
    if loc.pae is not None:
        est["pae"] = pae_reproduction(loc, apr.positions, apr.quaternions, apr.scene_idx)
        est["pae_gt"] = pae_reproduction(loc, gt_p, gt_q, scene_idx_gt)
        t0 = time.perf_counter()
        ref = loc.refine(apr)
        report["timing"]["refine_ms_per_frame_batched"] = 1e3 * (time.perf_counter() - t0) / max(len(frames), 1)
        est["refined"] = (ref.position, ref.quaternion)
        for k in k_sweep:
            r = loc.refine(apr, k=k)
            est[f"refined_k{k}"] = (r.position, r.quaternion)
    scenes = [s for s in loc.scenes if any(f.scene == s for f in frames)]
    names = [str(f.image_path) for f in frames]
    for s in scenes:
        m = np.array([f.scene == s for f in frames])
        report["scenes"][s] = {}
        report["per_frame"][s] = {}
        for method, (p, q) in est.items():
            pe, oe = position_error(p[m], gt_p[m]), orientation_error_deg(q[m], gt_q[m])
            report["scenes"][s][method] = summarize_errors(pe, oe)
            report["per_frame"][s][method] = {"image": [n for n, keep in zip(names, m) if keep],
                                              "position_error_m": pe.tolist(), "orientation_error_deg": oe.tolist()}

    # calibration of the published estimate (refined when refinement is on)
    published = "refined" if (loc.refine_enabled and ref is not None) else "apr"
    model = loc.sigma_models.get(published)
    if model is not None:
        feats = loc.confidence_features(apr, ref if published == "refined" else None)
        sp, so = model.sigmas(feats)
        conf = model.confidence(sp)
        p, q = est[published]
        pe, oe = position_error(p, gt_p), orientation_error_rad(q, gt_q)
        hi = conf >= confidence_threshold
        report["calibration"] = {
            "method": published, "position": coverage(pe, sp), "orientation": coverage(oe, so),
            "median_sigma_position_m": float(np.median(sp)), "median_sigma_orientation_deg": float(np.degrees(np.median(so))),
            "confidence_threshold": confidence_threshold,
            "above_threshold": {"frames": int(hi.sum()), "median_position_m": float(np.median(pe[hi])) if hi.any() else None},
            "below_threshold": {"frames": int((~hi).sum()), "median_position_m": float(np.median(pe[~hi])) if (~hi).any() else None},
            "spearman_sigma_vs_error": _spearman(sp, pe),
            "held_back_train_fit": model.coverage,
        }
    else:
        report["calibration"] = None

    if loc.decoder is not None:
        report["reconstruction_psnr_db"], grid_rows = _reconstruction(loc, test, train, grid_frames)
        report["_grid_rows"] = grid_rows
    report["_arrays"] = {"gt_positions": gt_p, "estimates": est}
    return report


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@torch.inference_mode()
def _reconstruction(loc: Localizer, test: DatasetSplit, train: DatasetSplit | None, grid_frames: int):
    from .train_decoder import psnr_db, target_images

    size = loc.decoder.image_size

    def psnr_for(split: DatasetSplit, limit: int = 400):
        frames = split.frames[:: max(1, len(split.frames) // limit)]
        sidx = np.array([loc.scenes.index(f.scene) for f in frames])
        z = loc.pae_latents(np.stack([f.position for f in frames]), np.stack([f.quaternion for f in frames]), sidx)
        imgs = [load_rgb(f.image_path) for f in frames]
        target = target_images(imgs, size).to(loc.device)
        pred = torch.cat([loc.decoder(z[i:i + 128]) for i in range(0, len(z), 128)])
        return float(psnr_db(pred, target).mean()), frames, imgs, pred

    psnr = {}
    if train is not None:
        psnr["train"] = psnr_for(train)[0]
    psnr["test"], frames, imgs, pred = psnr_for(test)
    pick = np.linspace(0, len(frames) - 1, min(grid_frames, len(frames))).astype(int)
    rows = [(imgs[i], (pred[i].permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)) for i in pick]
    return psnr, rows


def summary_lines(report: dict) -> list[str]:
    """Human-readable calibration and reconstruction lines of a report (printed by eval and demo)."""
    lines = []
    cal = report.get("calibration")
    if cal:
        lines.append(f"calibration ({cal['method']}): {100 * cal['position']['within_1sigma']:.0f}% of position errors "
                     f"within the 1-sigma radius (expected 68%), {100 * cal['position']['within_2sigma']:.0f}% within "
                     f"2 sigma (expected 95%); median error {cal['above_threshold']['median_position_m'] or float('nan'):.3f} m "
                     f"above confidence {cal['confidence_threshold']:g} ({cal['above_threshold']['frames']} frames) vs "
                     f"{cal['below_threshold']['median_position_m'] or float('nan'):.3f} m below "
                     f"({cal['below_threshold']['frames']} frames)")
    if "reconstruction_psnr_db" in report:
        r = report["reconstruction_psnr_db"]
        lines.append("reconstruction PSNR: " + ", ".join(f"{k} {v:.1f} dB" for k, v in r.items()))
    return lines


def write_outputs(report: dict, out_dir: Path, json_path: Path | None = None) -> dict[str, str]:
    """Write report.json, the error CDF PNGs and the reconstruction grid; returns written paths."""
    import json

    import cv2

    from ..metrics import plot_error_cdf
    from .train_decoder import image_grid

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    per_method_pos: dict[str, list] = {}
    per_method_ori: dict[str, list] = {}
    for by_method in report["per_frame"].values():
        for m, d in by_method.items():
            if m in ("apr", "pae", "refined"):
                per_method_pos.setdefault(m, []).extend(d["position_error_m"])
                per_method_ori.setdefault(m, []).extend(d["orientation_error_deg"])
    files["error_cdf"] = str(out_dir / "error_cdf.png")
    plot_error_cdf(per_method_pos, files["error_cdf"], "position error CDF")
    files["error_cdf_orientation"] = str(out_dir / "error_cdf_orientation.png")
    plot_error_cdf(per_method_ori, files["error_cdf_orientation"], "orientation error CDF", "orientation error [deg]")
    if report.get("_grid_rows"):
        files["reconstruction_grid"] = str(out_dir / "reconstruction_grid.png")
        cv2.imwrite(files["reconstruction_grid"], cv2.cvtColor(image_grid(report["_grid_rows"]), cv2.COLOR_RGB2BGR))
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    public["files"] = files
    json_path = json_path or out_dir / "report.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(public, indent=2))
    files["report"] = str(json_path)
    return files
