"""The pieces of a bundle that training writes: the pose table tensors, the header, the
finiteness check before any write, the per-stage clock.

Units: metres, quaternions wxyz camera-to-world (the table rows are train camera poses).
"""
from __future__ import annotations

import hashlib
import math
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..bundle import Bundle, save_bundle
from ..config import Config
from ..refine import table_metric_scales
from .data import PoseNormalization, frame_key, frames_positions, frames_quaternions


class NonFiniteBundleError(ValueError):
    """Training produced a non-finite number (calibration, normalisation, weights); nothing written."""



def table_tensors(frames, scenes) -> dict[str, torch.Tensor]:
    return {"table.positions": torch.as_tensor(frames_positions(frames), dtype=torch.float64),
            "table.quaternions": torch.as_tensor(frames_quaternions(frames), dtype=torch.float64),
            "table.scene_idx": torch.as_tensor([scenes.index(f.scene) for f in frames], dtype=torch.long)}


def prefixed(prefix: str, module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu() for k, v in module.state_dict().items()}


def frames_digest(frames) -> str:
    """Short SHA-256 of frame ids and poses (which frames a model or table was built from)."""
    h = hashlib.sha256()
    for f in sorted(frames, key=frame_key):
        h.update(frame_key(f).encode())
        h.update(np.asarray(f.position, np.float64).tobytes() + np.asarray(f.quaternion, np.float64).tobytes())
    return h.hexdigest()[:16]


def metric_scales(frames) -> dict:
    ps, os_ = table_metric_scales(frames_positions(frames), frames_quaternions(frames))
    return {"position_m": ps, "orientation_rad": os_}


def bundle_header(cfg: Config, scenes, norm: PoseNormalization, table_frames, intrinsics, extra: dict) -> dict:
    h = {"config": cfg.to_dict(), "scenes": scenes, "position_mean": norm.mean.tolist(),
         "position_scale": norm.scale, "metric_scales": metric_scales(table_frames),
         "input": {"resize": cfg.input.resize, "crop": cfg.input.crop, "color": "rgb",
                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
         "intrinsics": {s: (i.to_json() if i is not None else None) for s, i in intrinsics.items()}}
    h.update(extra)
    return h


def _non_finite_paths(obj, path="header") -> list[str]:
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return []
    if isinstance(obj, (int, float)):
        return [] if math.isfinite(obj) else [path]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _non_finite_paths(v, f"{path}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _non_finite_paths(v, f"{path}[{i}]")]
    return []


def check_finite(header: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Raise :class:`NonFiniteBundleError` naming every non-finite header number or tensor."""
    bad = [p for k, v in header.items() if k != "config" for p in _non_finite_paths(v, k)]
    bad += [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise NonFiniteBundleError(f"training produced non-finite numbers in {', '.join(bad[:8])}"
                                   f"{' ...' if len(bad) > 8 else ''}; no bundle written (check the train poses)")


def save_checked(path: Path, header: dict, tensors: dict) -> Bundle:
    check_finite(header, tensors)
    return save_bundle(path, header, tensors)


class StageClock:
    """Wall and CPU seconds of each training stage (``stats["stage_seconds"]``): ``wall_s`` from
    ``time.perf_counter``, ``cpu_s`` from ``time.process_time`` (every thread of this process, so on
    a shared machine it is the better measure of the work: wall time grows with others' load)."""

    def __init__(self):
        self.seconds: dict[str, dict[str, float]] = {}

    @staticmethod
    def begin() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def end(self, name: str, t0: tuple[float, float]) -> None:
        self.seconds[name] = {"wall_s": round(time.perf_counter() - t0[0], 2),
                              "cpu_s": round(time.process_time() - t0[1], 2)}

    @contextmanager
    def __call__(self, name: str):
        t0 = self.begin()
        try:
            yield
        finally:
            self.end(name, t0)


def with_table(bundle: Bundle, frames, scenes, descriptors: dict | None = None) -> Bundle:
    """The same models with the pose table (and its metric scales) of ``frames`` only;
    ``descriptors``: ``frame_key -> (D,)`` rows for its ``table.descriptors``."""
    header = dict(bundle.header, metric_scales=metric_scales(frames))
    tensors = {k: v for k, v in bundle.tensors.items() if not k.startswith("table.")}
    tensors.update(table_tensors(frames, scenes))
    if descriptors is not None:
        tensors["table.descriptors"] = torch.from_numpy(np.stack([descriptors[frame_key(f)] for f in frames]))
    return Bundle(header, tensors, bundle.path)
