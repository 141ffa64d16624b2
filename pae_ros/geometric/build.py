"""The map stage of training: a sparse map for a bundle, calibrated on held-out train walks.

``build_bundle_map(bundle, train_split)`` finds the image of every row of the bundle's train
pose table (by exact pose), builds the map (:func:`.mapping.build_map`), then fits the
covariance scales by leave-one-walk-out: up to ``calib_queries`` train frames are localized
against a retrieval shortlist drawn only from the *other* walks (sequences) of their scene, so
the calibration sees new viewpoints as a test walk does. With a single walk, the shortlist
excludes the frames within ``window`` frames of the query instead.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..datasets import load_rgb
from ..datasets.common import INTRINSICS_FILE
from ..geometry import orientation_error_rad
from .calibrate import calibrate_covariance
from .mapping import MapSettings, build_map, scale_intrinsics
from .sparse_map import SparseMap, map_path_for, save_map
from .stage import SHORTLIST_K, GeometricResult, GeometricStage, StageSettings

log = logging.getLogger("pae.geometric")

#: train frames localized leave-one-walk-out to calibrate the covariance: on a repetitive scene the stage
#: accepts few held-out fixes, so it takes this many queries for enough fixes to fit a stable scale
#: (docs/RESULTS.md, "Map calibration queries")
CALIB_QUERIES = 400


def frames_for_table(bundle, frames) -> list:
    """The frame of every bundle table row (matched by exact pose). Raises ValueError naming a row
    without an image (the dataset is not the one the bundle was trained on)."""
    key = lambda p, q: tuple(np.round(np.r_[p, q], 9))
    by_pose = {key(f.position, f.quaternion): f for f in frames}
    out = []
    for i, (p, q) in enumerate(zip(bundle.table_positions, bundle.table_quaternions)):
        f = by_pose.get(key(p, q))
        if f is None:
            raise ValueError(f"bundle table row {i} (position {np.round(p, 3).tolist()}) has no train frame with "
                             f"that pose in the dataset: is it the dataset the bundle was trained on?")
        out.append(f)
    return out


def intrinsics_hint(train, scene: str) -> str:
    """Where and how to give ``scene`` its camera: the ``intrinsics.json`` path and its fields."""
    path = train.intrinsics_files.get(scene)
    where = str(path) if path is not None else f"{INTRINSICS_FILE} in the scene folder of {scene!r}"
    return (f"write {where} as {{\"width\", \"height\", \"fx\", \"fy\", \"cx\", \"cy\"}} (pixels, the "
            f"train images' size and camera)")


def check_scene_cameras(train, frames) -> None:
    """Raise ValueError naming ``intrinsics.json`` when a scene of ``frames`` has no intrinsics in
    the split ``train`` or they cannot describe its first image (another aspect ratio, e.g. the
    format's 640x480 default for 256x256 images)."""
    first = {}
    for f in frames:
        first.setdefault(f.scene, f)
    for scene, f in first.items():
        intr = train.intrinsics.get(scene)
        if intr is None:
            raise ValueError(f"no camera intrinsics for scene {scene!r}: the map stage needs them; "
                             f"{intrinsics_hint(train, scene)}")
        h, w = load_rgb(f.image_path).shape[:2]
        try:
            scale_intrinsics(intr, w, h)
        except ValueError:
            given = "its intrinsics.json" if train.intrinsics_source.get(scene) == "file" else \
                "the format's default camera (no intrinsics.json)"
            raise ValueError(f"scene {scene!r}: the train images are {w}x{h} but {given} is "
                             f"{intr.width}x{intr.height} (another aspect ratio); "
                             f"{intrinsics_hint(train, scene)}") from None


def retrieval_descriptors(images: list[np.ndarray], resize: int, crop: int, describer=None, chunk: int = 32) -> np.ndarray:
    """(N, D) retrieval descriptors (:mod:`pae_ros.retrieval`) of RGB images at the bundle's input size."""
    from ..preprocess import to_batch
    from ..retrieval import Describer

    describer = describer or Describer(None)
    return np.concatenate([describer(to_batch(images[i:i + chunk], resize, crop)) for i in range(0, len(images), chunk)])


def build_bundle_map(bundle, train, settings: MapSettings | None = None, calib_queries: int = CALIB_QUERIES,
                     shortlist_k: int = SHORTLIST_K, window: int = 15, stage_settings: StageSettings | None = None,
                     descriptors: np.ndarray | None = None, seed: int = 0, progress=None) -> tuple[SparseMap, dict]:
    """Build and calibrate the map of ``bundle`` from the train split it was trained on.

    Returns (map, stats). ``descriptors``: the train images' retrieval descriptors in table order
    (default: the bundle's ``table.descriptors``, else computed with the pretrained backbone).
    """
    t0 = time.perf_counter()
    frames = frames_for_table(bundle, train.frames)
    sidx = bundle.table_scene_idx
    check_scene_cameras(train, frames)
    intr = [train.intrinsics.get(f.scene) for f in frames]
    images = [load_rgb(f.image_path) for f in frames]
    smap = build_map(images, bundle.table_positions, bundle.table_quaternions, intr, sidx, settings, bundle, progress)
    stats = {"build_s": time.perf_counter() - t0, **smap.meta["stats"]}
    if smap.n_points == 0:
        return smap, stats
    stats.update(calibrate_map(smap, bundle, frames, images, calib_queries, shortlist_k, window, stage_settings,
                               descriptors, seed))
    smap.meta["stats"] = {**smap.meta["stats"], **{k: v for k, v in stats.items() if k != "calibration"}}
    return smap, stats


def run_map_stage(bundle, train, map_path: str | Path | None = None, settings: MapSettings | None = None,
                  progress=None) -> dict:
    """Build, calibrate and save the map beside the bundle (``<bundle>.map``). Returns stats."""
    path = Path(map_path) if map_path else map_path_for(bundle.path)
    smap, stats = build_bundle_map(bundle, train, settings, progress=progress)
    if smap.n_points == 0:
        raise ValueError(f"the sparse map of {bundle.path} has no 3-D points: too little texture or overlap "
                         f"between the train images (no map written)")
    save_map(path, smap)
    stats.update(path=str(path), map_bytes=path.stat().st_size,
                 bundle_bytes=Path(bundle.path).stat().st_size if bundle.path else None)
    log.info("sparse map written: %s (%.1f MB, %d points, bundle %s)", path, path.stat().st_size / 1e6,
             smap.n_points, bundle.bundle_id)
    return stats


def held_out_fixes(smap: SparseMap, bundle, frames: list, images: list[np.ndarray], queries: int = CALIB_QUERIES,
                   shortlist_k: int = SHORTLIST_K, window: int = 15, stage_settings: StageSettings | None = None,
                   descriptors: np.ndarray | None = None, seed: int = 0) -> list[tuple[int, GeometricResult]]:
    """Leave-one-walk-out fixes of up to ``queries`` train frames: ``[(table row, GeometricResult)]``.

    Each query is matched against a retrieval shortlist drawn only from the *other* walks of its
    scene (with a single walk: frames more than ``window`` frames away), with uncalibrated
    covariances (scale 1) and no prior. ``frames`` / ``images``: the bundle table rows' frames and
    RGB images (:func:`frames_for_table`)."""
    sidx = bundle.table_scene_idx
    if descriptors is None:
        if "table.descriptors" in bundle.tensors:
            descriptors = bundle.tensors["table.descriptors"].float().numpy()
        else:
            descriptors = retrieval_descriptors(images, int(bundle.header["input"]["resize"]),
                                                int(bundle.header["input"]["crop"]))
    desc = np.asarray(descriptors, np.float32)
    seq = np.array([f"{f.scene}/{f.sequence}" for f in frames])
    order_in_seq = np.zeros(len(frames), np.int64)
    for s in np.unique(seq):
        rows = np.nonzero(seq == s)[0]
        order_in_seq[rows] = np.arange(len(rows))
    rng = np.random.default_rng(seed)
    q_rows = np.sort(rng.choice(len(frames), size=min(queries, len(frames)), replace=False))
    stage = GeometricStage(smap, settings=stage_settings, covariance_scale=(1.0, 1.0))
    out = []
    for r in q_rows:
        same_scene = sidx == sidx[r]
        if len(np.unique(seq[same_scene])) > 1:
            allowed = same_scene & (seq != seq[r])
        else:
            allowed = same_scene & (np.abs(order_in_seq - order_in_seq[r]) > window)
        cand = np.nonzero(allowed)[0]
        if not len(cand):
            continue
        sim = desc[cand] @ desc[r]
        out.append((int(r), stage(images[r], cand[np.argsort(-sim)[:shortlist_k]])))
    return out


def calibrate_map(smap: SparseMap, bundle, frames: list, images: list[np.ndarray], calib_queries: int = CALIB_QUERIES,
                  shortlist_k: int = SHORTLIST_K, window: int = 15, stage_settings: StageSettings | None = None,
                  descriptors: np.ndarray | None = None, seed: int = 0) -> dict:
    """Fit the map's covariance scales (``smap.meta["calibration"]``) on :func:`held_out_fixes`; returns stats."""
    stats: dict = {}
    t1 = time.perf_counter()
    fixes = held_out_fixes(smap, bundle, frames, images, calib_queries, shortlist_k, window, stage_settings,
                           descriptors, seed)
    pe, sp, re, sr = [], [], [], []
    for r, res in fixes:
        if res.accepted:
            pe.append(float(np.linalg.norm(res.position - bundle.table_positions[r])))
            re.append(float(orientation_error_rad(res.quaternion[None], bundle.table_quaternions[r][None])[0]))
            sp.append(res.sigma_position_m)
            sr.append(res.sigma_orientation_rad)
    stats["calibration_queries"] = int(len(fixes))
    stats["calibration_accepted"] = len(pe)
    try:
        cal = calibrate_covariance(pe, sp, re, sr)
        cal["median_position_error_m"] = float(np.median(pe))
        smap.meta["calibration"] = cal
        stats["calibration"] = cal
    except ValueError as e:
        log.warning("geometric covariance left uncalibrated: %s", e)
        stats["calibration"] = None
    stats["calibration_s"] = time.perf_counter() - t1
    smap.meta["stats"] = {**smap.meta.get("stats", {}), **{k: v for k, v in stats.items() if k != "calibration"}}
    return stats


def recalibrate_map(bundle, train, map_path: str | Path | None = None, stage_settings: StageSettings | None = None,
                    ) -> dict:
    """Refit the covariance scales of an existing map (e.g. after changing the stage settings) and save it."""
    from .sparse_map import load_map

    path = Path(map_path) if map_path else map_path_for(bundle.path)
    smap = load_map(path, bundle)
    frames = frames_for_table(bundle, train.frames)
    stats = calibrate_map(smap, bundle, frames, [load_rgb(f.image_path) for f in frames],
                          stage_settings=stage_settings)
    save_map(path, smap)
    return stats
