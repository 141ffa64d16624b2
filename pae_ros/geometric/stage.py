"""The geometric stage: query features matched to a shortlist of train images, PnP, accept or fall back.

``GeometricStage(map)(rgb, shortlist, prior_position, prior_quaternion, prior_sigma_m, intrinsics=None)``
returns a :class:`GeometricResult`. Plain arrays in and out; the caller (the Localizer) decides
which pose to publish: the fix when ``accepted``, else its APR/PAE prior, naming ``reason``.

Cameras: the map carries the intrinsics it was built with (``meta["intrinsics"]``, one per
scene; the only source for the map). The query camera is the caller's ``intrinsics`` (the node:
camera_info), default the map's, scaled to the query image's size. A query camera that does not
fit the image's aspect, or whose focal lengths / principal point differ from the map camera's by
more than ``camera_tolerance``, is refused as ``camera_mismatch``, logged once per camera pair.

Frames and units: poses camera-to-world in the map frame, metres, wxyz; covariance 6x6 in
(x, y, z, rot x, rot y, rot z) about the world axes (ROS PoseWithCovariance order), calibrated
by the map's covariance scales when the map stage fitted them.
"""
from __future__ import annotations

import time
import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from ..datasets.types import CameraIntrinsics
from ..geometry import orientation_error_rad
from .features import FeatureExtractor, matching_descriptors
from .mapping import scale_intrinsics
from .matching import match
from .pnp import solve_pnp
from .sparse_map import SparseMap

#: reasons of a result; every one but ``accepted`` means "fall back to the prior"
REASONS = ("accepted", "camera_mismatch", "no_features", "empty_shortlist", "too_few_matches", "pnp_failed",
           "too_few_inliers", "low_inlier_ratio", "ambiguous", "repetitive", "far_from_prior", "bad_covariance")

log = logging.getLogger("pae.geometric")


#: train images matched per query: retrieval's top ``SHORTLIST_K`` (the Localizer's default ``geometric_k``)
#: and the shortlist the map's covariance is calibrated with (:func:`pae_ros.geometric.build.calibrate_map`)
SHORTLIST_K = 20


@dataclass
class StageSettings:
    ratio: float = 0.8                 # Lowe ratio for query -> train image matches
    reprojection_px: float = 3.0       # RANSAC inlier threshold
    ransac_iterations: int = 2000
    # with the 20-image shortlist, chosen leave-one-walk-out on the train walks only
    # (bench/bench_geometric.py --lowo; figures in docs/RESULTS.md)
    min_inliers: int = 20
    min_inlier_ratio: float = 0.15
    # a wide sanity gate: accept only within this many prior sigmas (per axis) or the floor, whichever
    # is larger; wide because the APR/PAE sigma is not reliable enough for a tight one (a tighter
    # gate rejects correct fixes: docs/RESULTS.md, bench/bench_geometric.py)
    prior_gate_sigmas: float = 5.0
    prior_gate_floor_m: float = 1.0
    prior_gate_floor_rad: float = 0.35
    max_keypoints: int | None = None   # None: the map's
    # repetitive structure: a second PnP on the correspondences the first left out; when it finds a pose
    # more than ambiguity_min_m away with >= ambiguity_ratio of the inliers, the fix is "ambiguous"
    ambiguity_ratio: float | None = 0.6   # None: no second hypothesis
    ambiguity_min_m: float = 1.0
    # repeated structure (pae_ros.geometric.repetition): accept only when at least min_distinct_inliers of
    # the inlier points are distinctive, i.e. their descriptor's nearest look-alike >= 1 m away is farther
    # than distinct_twin_dist (unit-norm RootSIFT L2; ORB maps: test off). None: no test.
    # Both chosen leave-one-walk-out on the train walks only, no test frame (bench/bench_geometric.py
    # --lowo; figures in docs/RESULTS.md)
    distinct_twin_dist: float | None = 0.45
    min_distinct_inliers: int = 5
    # largest relative difference between the query camera and the map's (both scaled to the query image):
    # |fx - fx_map| / fx_map, the same for fy, and |cx - cx_map| / width, |cy - cy_map| / height. 0.1 is
    # about a 10 % change of the focal length (e.g. 585 px against 525 px on a 640 px image); None: no test
    camera_tolerance: float | None = 0.1


@dataclass
class GeometricResult:
    accepted: bool
    position: np.ndarray | None        # (3,) m; None when PnP found nothing
    quaternion: np.ndarray | None      # (4,) wxyz
    covariance: np.ndarray | None      # (6, 6), calibrated
    inliers: int
    inlier_ratio: float
    matches: int
    reason: str
    rms_px: float = float("nan")
    second_inliers: int = 0                     # inliers of the best other hypothesis (ambiguity test)
    second_distance_m: float = float("nan")     # its distance from the fix
    sigma_position_m: float = float("nan")      # sqrt(trace(cov_pos) / 3): isotropic equivalent
    sigma_orientation_rad: float = float("nan")
    timings: dict = field(default_factory=dict)  # features_s, matching_s, pnp_s, total_s
    inlier_points: np.ndarray | None = None      # (I,) map point indices of the PnP inliers (unique)
    distinct_inliers: int | None = None          # inlier points without a look-alike (repeated-structure test)
    detail: str = ""                             # why, for a reason that needs a sentence (camera_mismatch)

    def diagnostics(self) -> dict:
        """JSON-friendly summary (no arrays) for Estimate.extras / reports."""
        return {"geometric_accepted": self.accepted, "geometric_reason": self.reason,
                "geometric_inliers": self.inliers, "geometric_inlier_ratio": self.inlier_ratio,
                "geometric_matches": self.matches, "geometric_rms_px": self.rms_px,
                "geometric_second_inliers": self.second_inliers, "geometric_distinct_inliers": self.distinct_inliers,
                **({"geometric_detail": self.detail} if self.detail else {}),
                **{f"geometric_{k}": v for k, v in self.timings.items()}}


def isotropic_sigmas(cov: np.ndarray) -> tuple[float, float]:
    """(sigma position m, sigma rotation rad) with the same total variance as the 6x6 ``cov``."""
    return float(np.sqrt(np.trace(cov[:3, :3]) / 3)), float(np.sqrt(np.trace(cov[3:, 3:]) / 3))


class GeometricStage:
    """Localizes a query image against a :class:`SparseMap` given a shortlist of train images."""

    def __init__(self, smap: SparseMap, intrinsics: CameraIntrinsics | None = None,
                 settings: StageSettings | None = None, covariance_scale: tuple[float, float] | None = None):
        """``intrinsics``: the default query camera (scaled to each image's size); default the map's
        camera of the query's scene. ``covariance_scale``: (position, rotation) multipliers of the
        PnP standard deviations; default the map's calibration (``meta["calibration"]``), else (1, 1)."""
        self.map = smap
        self.settings = settings or StageSettings()
        self.map_cameras = [CameraIntrinsics.from_json(i) for i in smap.meta.get("intrinsics") or [] if i]
        if intrinsics is None and not self.map_cameras:
            raise ValueError("the map has no intrinsics: pass the query camera's intrinsics")
        self.intrinsics = intrinsics
        self._logged: set[str] = set()
        st = smap.meta.get("settings", {})
        self.extractor = FeatureExtractor(smap.kind, self.settings.max_keypoints or int(st.get("max_keypoints", 1024)))
        if self.settings.distinct_twin_dist is not None:
            smap.twin_distance  # noqa: B018  (computed now for a map written without it, not at the first query)
        cal = smap.meta.get("calibration") or {}
        self.covariance_scale = tuple(covariance_scale) if covariance_scale is not None else (
            float(cal.get("position_scale", 1.0)), float(cal.get("orientation_scale", 1.0)))

    def _fail(self, reason, matches=0, inliers=0, ratio=0.0, sol=None, timings=None, points=None) -> GeometricResult:
        return GeometricResult(False, None if sol is None else sol.position, None if sol is None else sol.quaternion,
                               None, inliers, ratio, matches, reason,
                               float("nan") if sol is None else sol.rms_px, timings=timings or {}, inlier_points=points)

    def map_camera(self, scene: int = 0) -> CameraIntrinsics | None:
        """The camera the map was built with for scene index ``scene`` (a map of one camera: that one)."""
        if not self.map_cameras:
            return None
        return self.map_cameras[scene if 0 <= scene < len(self.map_cameras) else 0]

    def query_camera(self, width: int, height: int, intrinsics: CameraIntrinsics | None = None,
                     scene: int = 0) -> tuple[CameraIntrinsics | None, str | None]:
        """(the query camera scaled to ``width`` x ``height`` px, None) or (None, why it cannot be
        used). ``intrinsics``: the caller's camera, default this stage's, else the map's."""
        ref = self.map_camera(scene)
        cam = intrinsics or self.intrinsics or ref
        try:
            q = scale_intrinsics(cam, width, height)
        except ValueError:
            whose = "the map's camera" if cam is ref else "the query camera"
            return None, (f"the query image is {width}x{height} but {whose} is {cam.width}x{cam.height} "
                          f"(another aspect ratio): pass the query camera's intrinsics (camera_info) for "
                          f"this image size")
        tol = self.settings.camera_tolerance
        if ref is None or tol is None or cam is ref:
            return q, None
        try:
            m = scale_intrinsics(ref, width, height)
        except ValueError:
            return None, (f"the query camera is {cam.width}x{cam.height} but the map was built with "
                          f"{ref.width}x{ref.height} images (another aspect ratio)")
        diff = max(abs(q.fx - m.fx) / m.fx, abs(q.fy - m.fy) / m.fy, abs(q.cx - m.cx) / width,
                   abs(q.cy - m.cy) / height)
        if diff > tol:
            return None, (f"the query camera (fx {q.fx:.1f}, fy {q.fy:.1f}, cx {q.cx:.1f}, cy {q.cy:.1f} px at "
                          f"{width}x{height}) differs from the map's (fx {m.fx:.1f}, fy {m.fy:.1f}, cx {m.cx:.1f}, "
                          f"cy {m.cy:.1f} px) by {100 * diff:.0f} % (tolerance {100 * tol:.0f} %): check the "
                          f"camera_info, or the scene's intrinsics.json the map was built with")
        return q, None

    def __call__(self, rgb: np.ndarray, shortlist, prior_position=None, prior_quaternion=None,
                 prior_sigma_m: float | None = None, prior_sigma_rad: float | None = None,
                 intrinsics: CameraIntrinsics | None = None, scene: int = 0) -> GeometricResult:
        """``shortlist``: train image indices (bundle table rows), best first (duplicates ignored).
        ``intrinsics``: the query camera (pixels, any image size of the same aspect; default the
        map's camera of scene index ``scene``). A camera that cannot describe the image, or differs
        from the map's, gives ``reason="camera_mismatch"`` (logged once per distinct message)."""
        s = self.settings
        t_start = time.perf_counter()
        tm = {}
        rgb = np.asarray(rgb)
        if rgb.ndim not in (2, 3) or rgb.dtype != np.uint8 or rgb.shape[0] < 8 or rgb.shape[1] < 8:
            raise ValueError(f"geometric stage needs an RGB uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        cam, why = self.query_camera(w, h, intrinsics, scene)
        if cam is None:
            return self._camera_mismatch(why, t_start)
        K = cam.K
        feats = self.extractor(rgb)
        tm["features_s"] = time.perf_counter() - t_start

        t0 = time.perf_counter()
        idx = self._shortlist_indices(shortlist)
        if len(feats) == 0 or not idx:
            tm["matching_s"] = tm["pnp_s"] = 0.0
            tm["total_s"] = time.perf_counter() - t_start
            return self._fail("no_features" if len(feats) == 0 else "empty_shortlist", timings=tm)
        pairs = self._match_shortlist(feats.desc, idx)
        tm["matching_s"] = time.perf_counter() - t0
        n_match = len(pairs)

        t0 = time.perf_counter()
        enough = n_match >= max(4, s.min_inliers // 2)
        sol = solve_pnp(feats.xy[pairs[:, 0]], self.map.points[pairs[:, 1]], K, s.reprojection_px,
                        s.ransac_iterations) if enough else None
        tm["pnp_s"] = time.perf_counter() - t0
        tm["total_s"] = time.perf_counter() - t_start
        if not enough:
            return self._fail("too_few_matches", n_match, timings=tm)
        if sol is None:
            return self._fail("pnp_failed", n_match, timings=tm)
        # a query keypoint matched to several points counts once
        n_in = int(len(np.unique(pairs[sol.inliers, 0])))
        ratio = n_in / max(len(np.unique(pairs[:, 0])), 1)
        pts = np.unique(pairs[sol.inliers, 1])
        twin = self.map.twin_distance if s.distinct_twin_dist is not None else None
        n_distinct = None if twin is None else int(np.sum(twin[pts] > s.distinct_twin_dist))
        n2, d2 = 0, float("nan")

        def rejected(reason: str) -> GeometricResult:
            res = self._fail(reason, n_match, n_in, ratio, sol, tm, pts)
            res.second_inliers, res.second_distance_m, res.distinct_inliers = n2, d2, n_distinct
            return res

        if n_in < s.min_inliers:
            return rejected("too_few_inliers")
        if ratio < s.min_inlier_ratio:
            return rejected("low_inlier_ratio")
        if s.ambiguity_ratio is not None:
            t1 = time.perf_counter()
            n2, d2 = self._second_hypothesis(feats.xy, pairs, sol, n_in, K)
            tm["pnp_s"] += time.perf_counter() - t1
            tm["total_s"] = time.perf_counter() - t_start
            if n2 >= s.ambiguity_ratio * n_in and d2 > s.ambiguity_min_m:
                return rejected("ambiguous")
        if n_distinct is not None and n_distinct < s.min_distinct_inliers:
            return rejected("repetitive")
        if self._far_from_prior(sol, prior_position, prior_quaternion, prior_sigma_m, prior_sigma_rad):
            return rejected("far_from_prior")
        if not np.isfinite(sol.covariance).all():
            return rejected("bad_covariance")
        sp, sr = self.covariance_scale
        scale = np.r_[[sp] * 3, [sr] * 3]
        cov = sol.covariance * scale[:, None] * scale[None, :]
        sig_p, sig_r = isotropic_sigmas(cov)
        return GeometricResult(True, sol.position, sol.quaternion, cov, n_in, ratio, n_match, "accepted",
                               sol.rms_px, n2, d2, sig_p, sig_r, tm, pts, n_distinct)

    def _camera_mismatch(self, why: str, t_start: float) -> GeometricResult:
        """The ``camera_mismatch`` result naming ``why``; each distinct ``why`` is logged once."""
        if why not in self._logged:
            self._logged.add(why)
            log.warning("geometric stage: no fix while %s (reason camera_mismatch)", why)
        res = self._fail("camera_mismatch", timings={"total_s": time.perf_counter() - t_start})
        res.detail = why
        return res

    def _shortlist_indices(self, shortlist) -> list[int]:
        """The shortlist's train image indices in order, duplicates dropped; refuses one outside the map."""
        idx = [int(i) for i in dict.fromkeys(int(i) for i in np.ravel(shortlist))]
        bad = [i for i in idx if not 0 <= i < self.map.n_images]
        if bad:
            raise ValueError(f"shortlist indices {bad[:5]} are outside the map's {self.map.n_images} train images")
        return idx

    def _match_shortlist(self, query_desc: np.ndarray, idx: list[int]) -> np.ndarray:
        """(K, 2) int64 unique (query keypoint, map point) matches of the query descriptors against the
        observations of the train images ``idx`` (ratio test), sorted."""
        kind = self.map.kind
        qd = matching_descriptors(query_desc, kind)
        qi_all, pid_all = [], []
        for i in idx:
            _, desc, pid = self.map.image_observations(i)
            if not len(desc):
                continue
            qi, ti = match(qd, matching_descriptors(desc, kind), kind, self.settings.ratio)
            qi_all.append(qi)
            pid_all.append(pid[ti])
        if not qi_all:
            return np.zeros((0, 2), np.int64)
        return np.unique(np.stack([np.concatenate(qi_all), np.concatenate(pid_all).astype(np.int64)], 1), axis=0)

    def _second_hypothesis(self, query_xy: np.ndarray, pairs: np.ndarray, sol, n_in: int,
                           K: np.ndarray) -> tuple[int, float]:
        """PnP on the matches the fix ``sol`` left out (query pixels, map points in m, camera matrix K):
        (its inliers, counted once per query keypoint, and its camera's distance in m from the fix),
        or (0, nan) when too few matches are left or it finds no pose."""
        s = self.settings
        rest = ~sol.inliers
        if rest.sum() < max(4, int(s.ambiguity_ratio * n_in)):
            return 0, float("nan")
        sol2 = solve_pnp(query_xy[pairs[rest, 0]], self.map.points[pairs[rest, 1]], K, s.reprojection_px,
                         max(200, s.ransac_iterations // 4))
        if sol2 is None:
            return 0, float("nan")
        return int(len(np.unique(pairs[rest][sol2.inliers, 0]))), float(np.linalg.norm(sol2.position - sol.position))

    def _far_from_prior(self, sol, prior_position, prior_quaternion, prior_sigma_m, prior_sigma_rad) -> bool:
        """Whether the fix is outside the prior gate: ``prior_gate_sigmas`` prior sigmas (m, rad) or the
        floor, whichever is larger, in position (m) or orientation (rad); a prior without a finite
        sigma is not gated."""
        s = self.settings
        if prior_position is not None and prior_sigma_m is not None and np.isfinite(prior_sigma_m):
            d = float(np.linalg.norm(sol.position - np.asarray(prior_position, np.float64)))
            if d > max(s.prior_gate_sigmas * float(prior_sigma_m), s.prior_gate_floor_m):
                return True
        if prior_quaternion is not None and prior_sigma_rad is not None and np.isfinite(prior_sigma_rad):
            a = float(orientation_error_rad(sol.quaternion[None], np.asarray(prior_quaternion, np.float64)[None])[0])
            if a > max(s.prior_gate_sigmas * float(prior_sigma_rad), s.prior_gate_floor_rad):
                return True
        return False

    @property
    def info(self) -> dict:
        return {"kind": self.map.kind, "points": self.map.n_points, "images": self.map.n_images,
                "cameras": [c.to_json() for c in self.map_cameras],
                "covariance_scale": list(self.covariance_scale), "settings": asdict(self.settings)}


def open_stage(bundle, map_path=None, settings: StageSettings | None = None) -> GeometricStage:
    """The stage of a loaded :class:`pae_ros.bundle.Bundle`: its map (default ``<bundle>.map``,
    refused when built for another bundle), whose own intrinsics are the default query camera
    (the bundle header's may be the format's default from before ``intrinsics.json`` was
    written; the node passes camera_info intrinsics per call)."""
    from .sparse_map import load_map, map_path_for

    if map_path is None:
        if bundle.path is None:
            raise ValueError("open_stage needs map_path for a bundle that was not loaded from a file")
        map_path = map_path_for(bundle.path)
    return GeometricStage(load_map(map_path, bundle), settings=settings)
