"""The training pipeline: APR -> PAE -> decoder -> calibration, one bundle out.

Each stage writes the bundle (atomically) so a later stage can be re-run alone
(``pae train --stage pae --bundle B``) and an interrupted run keeps what it finished.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..bundle import Bundle, build_models, load_bundle, save_bundle
from ..config import Config
from ..datasets import DatasetSplit
from ..pipeline import Localizer, resolve_device
from ..refine import table_metric_scales
from .data import FrameImages, PoseNormalization, frames_positions, frames_quaternions, holdout_split, scenes_of
from .distributed import barrier, init_distributed

log = logging.getLogger("pae.train")

STAGES = ("apr", "pae", "decoder", "calibrate")


def _table_tensors(frames, scenes) -> dict[str, torch.Tensor]:
    return {"table.positions": torch.as_tensor(frames_positions(frames), dtype=torch.float64),
            "table.quaternions": torch.as_tensor(frames_quaternions(frames), dtype=torch.float64),
            "table.scene_idx": torch.as_tensor([scenes.index(f.scene) for f in frames], dtype=torch.long)}


def _prefixed(prefix: str, module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu() for k, v in module.state_dict().items()}


def _header(cfg: Config, scenes, norm: PoseNormalization, table_frames, intrinsics, extra: dict) -> dict:
    ps, os_ = table_metric_scales(frames_positions(table_frames), frames_quaternions(table_frames))
    h = {"config": cfg.to_dict(), "scenes": scenes, "position_mean": norm.mean.tolist(),
         "position_scale": norm.scale, "metric_scales": {"position_m": ps, "orientation_rad": os_},
         "input": {"resize": cfg.input.resize, "crop": cfg.input.crop, "color": "rgb",
                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
         "intrinsics": {s: (i.to_json() if i is not None else None) for s, i in intrinsics.items()}}
    h.update(extra)
    return h


def train_all(cfg: Config, train: DatasetSplit, out: Path, workdir: Path, device: str = "auto",
              stages: tuple[str, ...] = STAGES, resume: bool = False, show_progress: bool = True,
              bundle_in: Path | None = None) -> dict:
    """Run the requested stages; returns a stats dict (also written to ``<workdir>/train_stats.json``)."""
    dev = resolve_device(device)
    dist_info = init_distributed(dev)
    if dist_info.enabled and dev.type == "cuda":
        dev = torch.device(f"cuda:{dist_info.local_rank}")
        torch.cuda.set_device(dev)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(out)
    scenes = scenes_of(train)
    fit, held = holdout_split(train.frames, cfg.calibration.holdout_fraction, cfg.calibration.holdout_block)
    stats: dict = {"device": str(dev), "scenes": scenes, "train_frames": len(train.frames),
                   "fit_frames": len(fit), "holdout_frames": len(held)}
    if dist_info.is_main:
        log.info("training on %d frames of %s (%d held back for calibration), device %s, world size %d",
                 len(fit), ", ".join(scenes), len(held), dev, dist_info.world_size)

    writer = None
    if dist_info.is_main:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(str(workdir / "tb"))

    t_all = time.perf_counter()
    data = None
    feats = None  # backbone features of the fit frames, when the APR stage cached them
    bundle: Bundle | None = None
    if "apr" in stages:
        from .train_apr import train_apr

        norm = PoseNormalization.fit(frames_positions(fit))
        data = FrameImages(fit, scenes, norm, cfg.input.resize, cfg.input.crop, train=True,
                           random_crop=cfg.input.random_crop, jitter=cfg.input.color_jitter, seed=cfg.seed,
                           show_progress=show_progress and dist_info.is_main)
        apr, pose_loss, stats["apr"], feats = train_apr(cfg, data, scenes, workdir, dev, dist_info, resume,
                                                        show_progress)
        header = _header(cfg, scenes, norm, fit, train.intrinsics,
                         {"pose_loss": {"s_x": float(pose_loss.s_x.detach()), "s_q": float(pose_loss.s_q.detach())}})
        tensors = {**_prefixed("apr", apr), **_table_tensors(fit, scenes)}
        if dist_info.is_main:
            bundle = save_bundle(out, header, tensors)
        barrier(dist_info)
    if dist_info.enabled and not dist_info.is_main:
        return stats  # only rank 0 runs the light stages and writes files
    if bundle is None:
        bundle = load_bundle(bundle_in or out)
        if bundle.header["scenes"] != scenes:
            raise ValueError(f"bundle scenes {bundle.header['scenes']} differ from the data's {scenes}")
    norm = PoseNormalization(bundle.position_mean, bundle.position_scale)
    _, apr, _, _ = build_models(bundle, dev)
    if data is None:
        data = FrameImages(fit, scenes, norm, cfg.input.resize, cfg.input.crop, train=False,
                           show_progress=show_progress)
    header, tensors = dict(bundle.header), dict(bundle.tensors)
    header["config"] = {**header["config"], **{k: v for k, v in cfg.to_dict().items() if k not in ("model", "input")}}

    if "pae" in stages:
        from .losses import LearnedPoseLoss
        from .train_apr import compute_features
        from .train_pae import teacher_outputs, train_pae

        pl = LearnedPoseLoss(header["pose_loss"]["s_x"], header["pose_loss"]["s_q"], learnable=False)
        if feats is None and cfg.apr.cache_features:  # a PAE-only run: the APR stage did not run here
            feats = compute_features(apr, data, dev, show_progress=show_progress)
        teacher = teacher_outputs(apr, data, dev, feats=feats, show_progress=show_progress)
        pae, stats["pae"] = train_pae(cfg, apr, pl, data, teacher, len(scenes), dev, show_progress, writer)
        tensors = {k: v for k, v in tensors.items() if not k.startswith(("pae.", "decoder."))}
        tensors.update(_prefixed("pae", pae))
        header.pop("calibration", None)
        bundle = save_bundle(out, header, tensors)

    if "decoder" in stages and cfg.decoder.enabled:
        from .train_decoder import target_images, train_decoder

        loc = Localizer(bundle, device=str(dev), refine=False)
        z = loc.pae_latents(frames_positions(fit), frames_quaternions(fit),
                            np.array([scenes.index(f.scene) for f in fit]))
        dec, stats["decoder"] = train_decoder(cfg, z.cpu(), target_images(data.images, cfg.decoder.image_size),
                                              dev, show_progress, writer)
        tensors = {k: v for k, v in tensors.items() if not k.startswith("decoder.")}
        tensors.update(_prefixed("decoder", dec))
        bundle = save_bundle(out, header, tensors)

    if "calibrate" in stages and held:
        from ..datasets import load_rgb
        from .calibrate import calibrate

        loc = Localizer(bundle, device=str(dev), refine=True)
        header["calibration"] = calibrate(loc, [load_rgb(f.image_path) for f in held],
                                          frames_positions(held), frames_quaternions(held))
        stats["calibration"] = {k: v["coverage"] for k, v in header["calibration"].items()}
        # final pose table: every train frame, the held-back ones too
        all_frames = fit + held
        tensors.update(_table_tensors(all_frames, scenes))
        ps, os_ = table_metric_scales(frames_positions(all_frames), frames_quaternions(all_frames))
        header["metric_scales"] = {"position_m": ps, "orientation_rad": os_}
        bundle = save_bundle(out, header, tensors)

    if "map" in stages:  # optional geometric stage's sparse map, beside the bundle (bound to its final id)
        from ..geometric.build import run_map_stage

        stats["map"] = run_map_stage(bundle, train)

    stats["seconds"] = time.perf_counter() - t_all
    stats["bundle"] = {"path": str(out), "bytes": out.stat().st_size, "bundle_id": bundle.bundle_id}
    if writer is not None:
        writer.close()
    (workdir / "train_stats.json").write_text(json.dumps(stats, indent=2, default=float))
    log.info("bundle written: %s (%.1f MB, id %s)", out, out.stat().st_size / 1e6, bundle.bundle_id)
    return stats
