"""The sparse map: triangulated 3-D points and the train images' 2-D observations of them.

Stored as one safetensors file beside the bundle (``<bundle>.map``, no pickle), bound to the
bundle it was built for: its header keeps the bundle id and a digest of the bundle's train pose
table, and :func:`load_map` refuses a map built for another bundle.

Arrays (observations sorted by train image, i.e. bundle table row):

- ``points`` (P, 3) float64: world (map frame) coordinates, metres.
- ``track_length`` (P,) int32: number of train images observing the point.
- ``point_error_px`` (P,) float32: mean reprojection error over the track, pixels.
- ``obs_image`` (M,) int32: table row of the observing train image.
- ``obs_xy`` (M, 2) float32: pixel coordinates in that image (at the map's image size).
- ``obs_desc`` (M, D) uint8: its descriptor (SIFT 128 B or ORB 32 B).
- ``obs_point`` (M,) int32: index into ``points``.
- ``image_offsets`` (N + 1,) int64: the observations of image i are ``offsets[i]:offsets[i+1]``.
- ``point_twin_dist`` (P,) float32, optional: descriptor distance to the point's most similar
  point elsewhere (:mod:`pae_ros.geometric.repetition`); computed on load when a map lacks it.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAP_FORMAT = "pae_ros.sparse_map"
MAP_VERSION = 1
ARRAYS = ("points", "track_length", "point_error_px", "obs_image", "obs_xy", "obs_desc", "obs_point",
          "image_offsets")
#: arrays a map may lack: derived from the others, computed when absent
OPTIONAL_ARRAYS = ("point_twin_dist",)


class MapError(RuntimeError):
    """The map file is missing, corrupt, empty, or was built for another bundle."""


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def table_digest(positions: np.ndarray, quaternions: np.ndarray) -> str:
    """Digest of a train pose table (N, 3) m + (N, 4) wxyz: the images a map's rows refer to."""
    return arrays_digest({"p": np.asarray(positions, np.float64), "q": np.asarray(quaternions, np.float64)})


def map_path_for(bundle_path: str | Path) -> Path:
    """Default map location beside a bundle: ``model.pae`` -> ``model.pae.map``."""
    p = Path(bundle_path)
    return p.with_name(p.name + ".map")


@dataclass
class SparseMap:
    points: np.ndarray
    track_length: np.ndarray
    point_error_px: np.ndarray
    obs_image: np.ndarray
    obs_xy: np.ndarray
    obs_desc: np.ndarray
    obs_point: np.ndarray
    image_offsets: np.ndarray
    meta: dict = field(default_factory=dict)   # kind, image_size, intrinsics, bundle_id, settings, stats
    path: Path | None = None
    point_twin_dist: np.ndarray | None = None  # (P,) see the module docstring; None: computed on first use

    @property
    def twin_distance(self) -> np.ndarray | None:
        """(P,) float32 descriptor distance of each point to its look-alike elsewhere (None for ORB maps)."""
        if self.kind == "orb":
            return None
        if self.point_twin_dist is None:
            from .features import matching_descriptors
            from .repetition import point_descriptors, twin_distances

            desc = matching_descriptors(point_descriptors(self.obs_point, self.obs_desc, self.n_points), self.kind)
            self.point_twin_dist = twin_distances(self.points, desc)
        return self.point_twin_dist

    @property
    def n_points(self) -> int:
        return len(self.points)

    @property
    def n_images(self) -> int:
        return len(self.image_offsets) - 1

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    def image_observations(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xy (m, 2) px, desc (m, D) uint8, point index (m,)) of train image (table row) ``i``."""
        a, b = int(self.image_offsets[i]), int(self.image_offsets[i + 1])
        return self.obs_xy[a:b], self.obs_desc[a:b], self.obs_point[a:b]

    def arrays(self) -> dict[str, np.ndarray]:
        out = {n: np.ascontiguousarray(getattr(self, n)) for n in ARRAYS}
        out.update({n: np.ascontiguousarray(getattr(self, n)) for n in OPTIONAL_ARRAYS if getattr(self, n) is not None})
        return out

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays().values()))

    def validate(self, where: str = "map") -> None:
        """Raise MapError when the arrays are inconsistent (shapes, index ranges, finiteness)."""
        P, M = len(self.points), len(self.obs_image)
        if self.points.ndim != 2 or self.points.shape[1] != 3:
            raise MapError(f"{where}: points must be (P, 3), got {self.points.shape}")
        for n in ("track_length", "point_error_px", "point_twin_dist"):
            if getattr(self, n) is not None and getattr(self, n).shape != (P,):
                raise MapError(f"{where}: {n} must have shape ({P},), got {getattr(self, n).shape}")
        for n in ("obs_point", "obs_xy", "obs_desc"):
            if len(getattr(self, n)) != M:
                raise MapError(f"{where}: {n} has {len(getattr(self, n))} rows, obs_image has {M}")
        off = self.image_offsets
        if off.ndim != 1 or len(off) < 1 or off[0] != 0 or off[-1] != M or np.any(np.diff(off) < 0):
            raise MapError(f"{where}: image_offsets are not a valid partition of the {M} observations")
        if M and (self.obs_point.min() < 0 or self.obs_point.max() >= P):
            raise MapError(f"{where}: obs_point indexes outside the {P} points")
        if not np.isfinite(self.points).all() or not np.isfinite(self.obs_xy).all():
            raise MapError(f"{where}: non-finite point or keypoint coordinates")


def save_map(path: str | Path, smap: SparseMap) -> Path:
    """Write the map atomically (safetensors + JSON header with format, digest and binding)."""
    from safetensors.numpy import save_file

    from ..bundle import atomic_write_bytes

    smap.validate(str(path))
    arrays = smap.arrays()
    meta = dict(smap.meta)
    meta.update(format=MAP_FORMAT, format_version=MAP_VERSION, digest=arrays_digest(arrays))
    meta.setdefault("created_utc", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    blob = json.dumps(meta, sort_keys=True, default=float)
    path = Path(path)
    atomic_write_bytes(path, lambda tmp: save_file(arrays, tmp, metadata={"pae_ros_map": blob}))
    smap.meta, smap.path = meta, path
    return path


def load_map(path: str | Path, bundle=None, require_points: bool = True) -> SparseMap:
    """Read and verify a map. With ``bundle`` (a :class:`pae_ros.bundle.Bundle`), refuse a map
    that was built for another bundle. Raises :class:`MapError` with the reason."""
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise MapError(f"sparse map not found: {path} (build it with: pae train --stage map --bundle <bundle> --data <dataset>)")
    try:
        with safe_open(str(path), framework="np") as f:
            raw = (f.metadata() or {}).get("pae_ros_map")
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise MapError(f"{path}: not a readable sparse map (truncated or not a safetensors file): {e}") from None
    if raw is None:
        raise MapError(f"{path}: a safetensors file but not a pae_ros sparse map (no 'pae_ros_map' header)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise MapError(f"{path}: sparse map header is not valid JSON: {e}") from None
    if meta.get("format") != MAP_FORMAT or meta.get("format_version") != MAP_VERSION:
        raise MapError(f"{path}: unsupported map format {meta.get('format')!r} version {meta.get('format_version')!r}")
    missing = [n for n in ARRAYS if n not in arrays]
    if missing:
        raise MapError(f"{path}: sparse map lacks array(s) {missing}")
    known = [n for n in ARRAYS + OPTIONAL_ARRAYS if n in arrays]
    if arrays_digest({n: arrays[n] for n in known}) != meta.get("digest"):
        raise MapError(f"{path}: content digest mismatch: the map was modified or corrupted after it was written")
    smap = SparseMap(**{n: arrays[n] for n in known}, meta=meta, path=path)
    smap.validate(str(path))
    if require_points and smap.n_points == 0:
        raise MapError(f"{path}: the sparse map has no 3-D points (too little texture or overlap in the train "
                       f"images); the geometric stage cannot run on it")
    if bundle is not None:
        check_binding(smap, bundle)
    return smap


def check_binding(smap: SparseMap, bundle) -> None:
    """Raise MapError unless ``smap`` was built for ``bundle`` (same id and train pose table)."""
    want = bundle.bundle_id
    got = smap.meta.get("bundle_id")
    if got != want:
        raise MapError(f"{smap.path}: sparse map was built for bundle {got}, not for this bundle {want} "
                       f"({bundle.path}); rebuild it: pae train --stage map --bundle {bundle.path} --data <dataset>")
    td = table_digest(bundle.table_positions, bundle.table_quaternions)
    if smap.meta.get("table_digest") != td or smap.n_images != len(bundle.table_positions):
        raise MapError(f"{smap.path}: sparse map indexes another train pose table than bundle {want}")
