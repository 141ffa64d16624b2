"""Building a sparse map from train images with known poses (no SfM pose re-estimation).

1. local features of every train image (:mod:`.features`);
2. image pairs whose known camera centres are ``min..max_pair_distance_m`` apart and whose
   optical axes are within ``max_pair_angle_deg`` (same scene only);
3. ratio-test matches per pair, kept when they satisfy the epipolar geometry of the known poses
   (Sampson distance below ``epipolar_px``);
4. tracks = connected components of the matches (union-find);
5. each track triangulated from its rays (least squares, world frame), observations with a
   reprojection error above ``max_reprojection_px`` dropped and the point re-triangulated; points
   kept with >= 2 views, positive depth everywhere, and a ray angle >= ``min_ray_angle_deg``.

Poses camera-to-world, metres, wxyz, OpenCV optical camera axes; pixels (u right, v down).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..datasets.types import CameraIntrinsics
from ..geometry import quat_to_rotmat
from .features import FeatureExtractor, Features, matching_descriptors
from .matching import match
from .sparse_map import SparseMap, table_digest

log = logging.getLogger("pae.geometric")


@dataclass
class MapSettings:
    kind: str = "rootsift"
    max_keypoints: int = 1024
    min_pair_distance_m: float = 0.4
    max_pair_distance_m: float = 5.0
    max_pair_angle_deg: float = 30.0
    pairs_per_image: int = 8
    ratio: float = 0.8
    epipolar_px: float = 2.0
    max_reprojection_px: float = 2.0
    min_ray_angle_deg: float = 2.0


def scale_intrinsics(intr: CameraIntrinsics, width: int, height: int) -> CameraIntrinsics:
    """Intrinsics of the same camera at another image size (pixel-centre convention kept)."""
    if (intr.width, intr.height) == (width, height):
        return intr
    sx, sy = width / intr.width, height / intr.height
    if abs(sx - sy) > 0.02 * max(sx, sy):
        raise ValueError(f"image size {width}x{height} has another aspect ratio than the intrinsics' "
                         f"{intr.width}x{intr.height}")
    return CameraIntrinsics(width, height, intr.fx * sx, intr.fy * sy, (intr.cx + 0.5) * sx - 0.5,
                            (intr.cy + 0.5) * sy - 0.5)


def select_pairs(positions: np.ndarray, quaternions: np.ndarray, scene_idx: np.ndarray | None = None,
                 min_distance_m: float = 0.4, max_distance_m: float = 5.0, max_angle_deg: float = 30.0,
                 per_image: int = 8) -> np.ndarray:
    """(K, 2) int64 image pairs i < j: centres ``min..max`` m apart, optical axes within the angle.

    Per image, up to ``per_image`` partners are taken evenly over its candidates sorted by
    distance (a mix of short and long baselines); the union is returned, sorted.
    """
    p = np.asarray(positions, np.float64)
    ax = quat_to_rotmat(np.asarray(quaternions, np.float64))[:, :, 2]
    n = len(p)
    s = np.zeros(n, np.int64) if scene_idx is None else np.asarray(scene_idx)
    cos_max = np.cos(np.radians(max_angle_deg))
    pairs = set()
    for i in range(n):
        d = np.linalg.norm(p - p[i], axis=1)
        ok = (d >= min_distance_m) & (d <= max_distance_m) & (ax @ ax[i] >= cos_max) & (s == s[i])
        ok[i] = False
        cand = np.nonzero(ok)[0]
        if not len(cand):
            continue
        cand = cand[np.argsort(d[cand], kind="stable")]
        if len(cand) > per_image:
            cand = cand[np.unique(np.linspace(0, len(cand) - 1, per_image).round().astype(int))]
        for j in cand:
            pairs.add((min(i, int(j)), max(i, int(j))))
    return np.array(sorted(pairs), np.int64).reshape(-1, 2)


def _world_to_cam(position, quaternion):
    R_wc = quat_to_rotmat(np.asarray(quaternion, np.float64))
    R = R_wc.T
    return R, -R @ np.asarray(position, np.float64)


def fundamental(Ki, Pi, Qi, Kj, Pj, Qj) -> np.ndarray:
    """F with x_j^T F x_i = 0 for pixels of image i and j (camera-to-world poses)."""
    Ri, ti = _world_to_cam(Pi, Qi)
    Rj, tj = _world_to_cam(Pj, Qj)
    R = Rj @ Ri.T
    t = tj - R @ ti
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    return np.linalg.inv(Kj).T @ tx @ R @ np.linalg.inv(Ki)


def sampson_px(F: np.ndarray, xi: np.ndarray, xj: np.ndarray) -> np.ndarray:
    """Sampson distances (px) of pixel correspondences xi (M, 2) <-> xj (M, 2)."""
    hi = np.c_[xi, np.ones(len(xi))]
    hj = np.c_[xj, np.ones(len(xj))]
    Fx = hi @ F.T
    Ftx = hj @ F
    num = np.sum(hj * Fx, 1) ** 2
    den = Fx[:, 0] ** 2 + Fx[:, 1] ** 2 + Ftx[:, 0] ** 2 + Ftx[:, 1] ** 2
    return np.sqrt(num / np.maximum(den, 1e-18))


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], np.int64)


def triangulate_rays(track: np.ndarray, centres: np.ndarray, dirs: np.ndarray, n_tracks: int) -> np.ndarray:
    """Least-squares points (T, 3) closest to the rays ``centres + s * dirs`` (unit dirs) of each track."""
    proj = np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]            # (M, 3, 3)
    A = np.zeros((n_tracks, 3, 3))
    b = np.zeros((n_tracks, 3))
    np.add.at(A, track, proj)
    np.add.at(b, track, np.einsum("mij,mj->mi", proj, centres))
    A += 1e-9 * np.eye(3)[None]
    return np.linalg.solve(A, b[..., None])[..., 0]


def build_map(images: Sequence, positions: np.ndarray, quaternions: np.ndarray,
              intrinsics: CameraIntrinsics | Sequence[CameraIntrinsics], scene_idx: np.ndarray | None = None,
              settings: MapSettings | None = None, bundle=None, progress: Callable[[str], None] | None = None,
              ) -> SparseMap:
    """Build a :class:`SparseMap` from train images (RGB uint8 arrays or image paths) with known
    camera-to-world poses (N, 3) m / (N, 4) wxyz and their intrinsics (one for all, or per image;
    scaled to each image's size). ``bundle``: bind the map to it (id + pose-table digest); then
    ``positions`` must be the bundle's table, in its order."""
    st = settings or MapSettings()
    P = np.asarray(positions, np.float64)
    Q = np.asarray(quaternions, np.float64)
    n = len(P)
    intr_list = _checked_intrinsics(images, P, Q, intrinsics, bundle)
    first_of_scene = _first_image_of_each_scene(scene_idx, n)
    timings = {}
    t0 = time.perf_counter()
    ext = FeatureExtractor(st.kind, st.max_keypoints)
    feats, Ks, size = _extract_features(images, intr_list, ext, progress)
    timings["features_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pairs = select_pairs(P, Q, scene_idx, st.min_pair_distance_m, st.max_pair_distance_m,
                         st.max_pair_angle_deg, st.pairs_per_image)
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in feats])]).astype(np.int64)
    uf, n_matches = _link_verified_matches(feats, offsets, Ks, P, Q, pairs, st, progress)
    timings["matching_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    obs_xy = np.concatenate([f.xy for f in feats]) if n else np.zeros((0, 2), np.float32)
    obs_desc = np.concatenate([f.desc for f in feats]) if n else np.zeros((0, ext.dim), np.uint8)
    sel, track, img = _multi_view_observations(uf.roots(), offsets, n)
    T = int(track.max()) + 1 if len(track) else 0
    centres = P[img]
    X, err, keep = _triangulate_tracks(track, T, img, obs_xy[sel].astype(np.float64), centres, Ks, Q,
                                       st.max_reprojection_px)
    good_track = _well_observed_tracks(track, T, keep, centres, X, st.min_ray_angle_deg)
    cand, used, new_id, tl, point_err = _best_observations(track, T, img, err, keep & good_track[track])
    o_img = img[cand].astype(np.int32)
    timings["triangulation_s"] = time.perf_counter() - t0

    meta = _map_meta(st, size, [intr_list[i] for i in first_of_scene], scene_idx, bundle, P, Q, {
        "images": n, "pairs": int(len(pairs)), "verified_matches": n_matches, "points": int(len(used)),
        "observations": int(len(cand)), "mean_track_length": float(tl.mean()) if len(tl) else 0.0, **timings})
    smap = SparseMap(points=X[used].astype(np.float64), track_length=tl, point_error_px=point_err,
                     obs_image=o_img, obs_xy=obs_xy[sel][cand].astype(np.float32),
                     obs_desc=obs_desc[sel][cand], obs_point=new_id.astype(np.int32),
                     image_offsets=np.searchsorted(o_img, np.arange(n + 1)).astype(np.int64), meta=meta)
    t0 = time.perf_counter()
    _ = smap.twin_distance  # stored with the map (repeated-structure test of the geometric stage)
    meta["stats"]["twin_distance_s"] = time.perf_counter() - t0
    smap.validate("built map")
    log.info("sparse map: %d points, %d observations from %d images, %d pairs (%.1f s features, %.1f s matching)",
             smap.n_points, len(cand), n, len(pairs), timings["features_s"], timings["matching_s"])
    return smap


def _checked_intrinsics(images: Sequence, P: np.ndarray, Q: np.ndarray, intrinsics, bundle
                        ) -> list[CameraIntrinsics]:
    """One camera per image, after refusing mismatched inputs: one pose (P (N, 3) m, Q (N, 4) wxyz)
    per image, the bundle's own train pose table when ``bundle`` is given, no missing intrinsics."""
    n = len(P)
    if len(images) != n or Q.shape != (n, 4) or P.shape != (n, 3):
        raise ValueError(f"build_map needs one pose per image: {len(images)} images, positions {P.shape}, "
                         f"quaternions {Q.shape}")
    if bundle is not None and not (bundle.table_positions.shape == P.shape and np.allclose(bundle.table_positions, P)
                                   and np.allclose(bundle.table_quaternions, Q)):
        raise ValueError("build_map(bundle=...) needs the bundle's train pose table, in its order")
    intr_list = list(intrinsics) if isinstance(intrinsics, (list, tuple)) else [intrinsics] * n
    if any(i is None for i in intr_list):
        raise ValueError("build_map needs camera intrinsics for every image (intrinsics.json of the scene)")
    return intr_list


def _extract_features(images: Sequence, intr_list: list[CameraIntrinsics], ext: FeatureExtractor,
                      progress: Callable[[str], None] | None) -> tuple[list[Features], np.ndarray, tuple | None]:
    """Local features of every image, the (N, 3, 3) camera matrices scaled to the image size (px),
    and that size (width, height), the same for all images (None without images)."""
    from ..datasets import load_rgb

    n = len(intr_list)
    feats: list[Features] = []
    Ks = np.zeros((n, 3, 3))
    size = None
    for i, img in enumerate(images):
        rgb = load_rgb(img) if isinstance(img, (str, Path)) else np.asarray(img)
        h, w = rgb.shape[:2]
        size = size or (w, h)
        if (w, h) != size:
            raise ValueError(f"all train images must have one size: image {i} is {w}x{h}, the first {size[0]}x{size[1]}")
        Ks[i] = scale_intrinsics(intr_list[i], w, h).K
        feats.append(ext(rgb))
        if progress and (i + 1) % 100 == 0:
            progress(f"features {i + 1}/{n}")
    return feats, Ks, size


def _link_verified_matches(feats: list[Features], offsets: np.ndarray, Ks: np.ndarray, P: np.ndarray,
                           Q: np.ndarray, pairs: np.ndarray, st: MapSettings,
                           progress: Callable[[str], None] | None) -> tuple[_UnionFind, int]:
    """Ratio-test matches of each image pair kept when within ``st.epipolar_px`` (Sampson, px) of
    the epipolar geometry of the known camera-to-world poses, joined in a union-find over all
    keypoints (keypoint ``k`` of image ``i`` is ``offsets[i] + k``); returns it and the match count."""
    mdesc = [matching_descriptors(f.desc, st.kind) for f in feats]
    uf = _UnionFind(int(offsets[-1]))
    n_matches = 0
    for k, (i, j) in enumerate(pairs):
        ia, ib = match(mdesc[i], mdesc[j], st.kind, st.ratio)
        if not len(ia):
            continue
        F = fundamental(Ks[i], P[i], Q[i], Ks[j], P[j], Q[j])
        ok = sampson_px(F, feats[i].xy[ia].astype(np.float64), feats[j].xy[ib].astype(np.float64)) < st.epipolar_px
        for a, b in zip(offsets[i] + ia[ok], offsets[j] + ib[ok]):
            uf.union(int(a), int(b))
        n_matches += int(ok.sum())
        if progress and (k + 1) % 500 == 0:
            progress(f"pairs {k + 1}/{len(pairs)}")
    return uf, n_matches


def _multi_view_observations(root: np.ndarray, offsets: np.ndarray, n: int
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keypoints on tracks of >= 2 keypoints: their indices into all keypoints (M,), their track
    numbered 0..T-1 (M,), and their image (M,)."""
    obs_img = np.repeat(np.arange(n), np.diff(offsets))
    _, track, counts = np.unique(root, return_inverse=True, return_counts=True)
    multi = counts[track] >= 2
    sel = np.nonzero(multi)[0]
    _, track = np.unique(track[sel], return_inverse=True)
    return sel, track, obs_img[sel]


def _triangulate_tracks(track: np.ndarray, T: int, img: np.ndarray, xy: np.ndarray, centres: np.ndarray,
                        Ks: np.ndarray, Q: np.ndarray, max_reprojection_px: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World points (T, 3) m of the tracks from the rays of their observations (pixels ``xy``
    (M, 2) of image ``img``, camera centres (M, 3) m, orientations Q wxyz camera-to-world);
    observations reprojecting more than ``max_reprojection_px`` away, or behind their camera, are
    dropped and the points re-triangulated. Returns the points, each observation's reprojection
    error (M,) px (inf behind the camera), and the kept observations (M,) bool."""
    R_wc = quat_to_rotmat(Q)                                                 # (N, 3, 3)
    Kinv = np.linalg.inv(Ks)
    rays = np.einsum("mij,mj->mi", Kinv[img], np.c_[xy, np.ones(len(xy))])
    dirs = np.einsum("mij,mj->mi", R_wc[img], rays)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    keep = np.ones(len(track), bool)
    X = np.zeros((T, 3))
    err = np.zeros(len(track))
    for _ in range(2):  # triangulate, drop observations with large reprojection error, re-triangulate
        tk = track[keep]
        X = triangulate_rays(tk, centres[keep], dirs[keep], T) if T else X
        pc = np.einsum("mji,mj->mi", R_wc[img], X[track] - centres)         # R^T (X - C): camera frame
        z = pc[:, 2]
        uv = np.einsum("mij,mj->mi", Ks[img], pc)
        with np.errstate(divide="ignore", invalid="ignore"):
            err = np.linalg.norm(uv[:, :2] / uv[:, 2:3] - xy, axis=1)
        err = np.where(z > 1e-6, err, np.inf)
        keep = keep & (err < max_reprojection_px)
    return X, err, keep


def _well_observed_tracks(track: np.ndarray, T: int, keep: np.ndarray, centres: np.ndarray, X: np.ndarray,
                          min_ray_angle_deg: float) -> np.ndarray:
    """(T,) bool: tracks with >= 2 kept observations whose rays to the point (from the camera
    centres, m) span at least ``min_ray_angle_deg`` degrees."""
    views = np.zeros(T, np.int64)
    np.add.at(views, track[keep], 1)
    first = np.full(T, -1, np.int64)
    kept_idx = np.nonzero(keep)[0]
    first[track[kept_idx[::-1]]] = kept_idx[::-1]
    ray_to_cam = centres - X[track]
    ray_to_cam /= np.maximum(np.linalg.norm(ray_to_cam, axis=1, keepdims=True), 1e-12)
    cosang = np.einsum("mi,mi->m", ray_to_cam, ray_to_cam[np.maximum(first[track], 0)])
    min_cos = np.ones(T)
    np.minimum.at(min_cos, track[keep], cosang[keep])
    return (views >= 2) & (min_cos <= np.cos(np.radians(min_ray_angle_deg)))


def _best_observations(track: np.ndarray, T: int, img: np.ndarray, err: np.ndarray, usable: np.ndarray):
    """The map's observations among the ``usable`` ones: per (track, image) the one of smallest
    reprojection error ``err`` (px), on tracks still seen from >= 2 images. Returns their indices
    (sorted by image), the tracks used (P,), each observation's point index into them, the track
    lengths (P,) int32 and the points' mean reprojection errors (P,) float32 px."""
    cand = np.nonzero(usable)[0]
    order = np.lexsort((err[cand], img[cand], track[cand]))
    cand = cand[order]
    first_of = np.ones(len(cand), bool)
    first_of[1:] = (track[cand][1:] != track[cand][:-1]) | (img[cand][1:] != img[cand][:-1])
    cand = cand[first_of]
    distinct = np.zeros(T, np.int64)
    np.add.at(distinct, track[cand], 1)
    cand = cand[distinct[track[cand]] >= 2]
    used, new_id = np.unique(track[cand], return_inverse=True)
    sum_err = np.zeros(len(used))
    np.add.at(sum_err, new_id, err[cand])
    tl = np.bincount(new_id, minlength=len(used)).astype(np.int32)
    order = np.argsort(img[cand], kind="stable")
    return cand[order], used, new_id[order], tl, (sum_err / np.maximum(tl, 1)).astype(np.float32)


def _first_image_of_each_scene(scene_idx: np.ndarray | None, n: int) -> list[int]:
    """Per scene index 0..max, the index of its first image (0 for a scene without images): the
    map's camera of each scene (``meta["intrinsics"][scene]``) is that image's."""
    sid = np.zeros(n, np.int64) if scene_idx is None else np.asarray(scene_idx, np.int64)
    return [int(np.argmax(sid == s)) if (sid == s).any() else 0
            for s in range(int(sid.max()) + 1 if n else 0)]


def _map_meta(st: MapSettings, size: tuple | None, scene_cameras: list[CameraIntrinsics], scene_idx, bundle,
              P: np.ndarray, Q: np.ndarray, stats: dict) -> dict:
    """The map's ``meta``: settings, image size (width, height) px, the camera of each scene scaled
    to that size, ``stats``, and what binds it to its pose table (P (N, 3) m, Q (N, 4) wxyz)."""
    n = len(P)
    meta = {"kind": st.kind, "image_size": list(size or (0, 0)), "settings": asdict(st),
            "intrinsics": [scale_intrinsics(c, *(size or (c.width, c.height))).to_json() for c in scene_cameras],
            "stats": stats}
    if scene_idx is not None:
        meta["n_scenes"] = int(np.max(scene_idx)) + 1 if n else 0
    if bundle is not None:
        meta["bundle_id"] = bundle.bundle_id
        meta["table_digest"] = table_digest(bundle.table_positions, bundle.table_quaternions)
    else:
        meta["table_digest"] = table_digest(P, Q)
    return meta
