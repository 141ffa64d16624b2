"""Render a built-in scene into a 7Scenes or Cambridge dataset.

Built-in scenes (:data:`SCENES`): ``courtyard`` (the demo scene: a 16 m walled courtyard of
unique textures, test walks within 0.8 m of the train walks; ``assets.py``, ``walks.py``) and
``plaza`` (the generalization scene: a 50 m town square of repeated textures whose test walks
leave the train walks by up to 5 m, turn round and change height; ``plaza.py``,
``plaza_walks.py``). Every render stores the test frames' coverage (distance to the nearest
similar-view train camera, :func:`pae_ros.coverage.coverage_distance`) in its manifest; the
plaza also writes it to ``scene_info.json``.

Renderer: pybullet in DIRECT mode with its CPU TinyRenderer (``ER_TINY_RENDERER``), which is
deterministic: the same seed and parameters give byte-identical images on a machine.

Camera model (checked by ``test/test_scene.py``): a pinhole camera with square pixels,
vertical field of view ``fov_deg``; ``fy = fx = (H / 2) / tan(fov / 2)``, principal point
``(cx, cy) = (W / 2, H / 2)`` in the OpenCV pixel convention (integer coordinates at pixel
centres), i.e. pixel (u, v) = (fx x / z + cx, fy y / z + cy) for a point (x, y, z) in the
OpenCV optical camera frame. (TinyRenderer's raster is one row off that; the projection
matrix is shifted by one row to compensate.) Poses are camera-to-world (metres, wxyz,
world z up).

Output (``fmt="7scenes"``): ``<out>/<scene>/seq-NN/frame-XXXXXX.color.png`` + ``.pose.txt``,
``TrainSplit.txt``, ``TestSplit.txt``, ``intrinsics.json`` and ``render_manifest.json``;
(``fmt="cambridge"``): ``<out>/<scene>/seqN/frameXXXXX.png`` + ``dataset_train.txt`` /
``dataset_test.txt``. A render goes to ``<out>/.render-tmp/<scene>`` first and is moved into
place after the manifest is written, so an interrupted render is never taken as complete.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..datasets import (CameraIntrinsics, write_7scenes_frame, write_7scenes_splits, write_cambridge,
                        write_intrinsics, write_rgb)
from ..geometry import pose_to_matrix
from .assets import SceneLayout, build_assets
from .walks import Walk, make_walks

log = logging.getLogger("pae_ros.scene")

#: bump when the scene, the walks or the output change, so cached renders are redone
RENDER_VERSION = 1
MANIFEST = "render_manifest.json"
DEFAULT_SCENE = "courtyard"
#: built-in scenes and their default walks (frames per walk, walks, metres between frames)
SCENES = {
    "courtyard": dict(train_seqs=4, test_seqs=2, train_frames=150, test_frames=100, step=0.12),
    "plaza": dict(train_seqs=4, test_seqs=3, train_frames=200, test_frames=100, step=0.25),
}
SCENE_INFO = "scene_info.json"
#: the files the renderer writes at the top of a scene folder (besides the manifest)
_TOP_LEVEL = {"TrainSplit.txt", "TestSplit.txt", "intrinsics.json", SCENE_INFO, "dataset_train.txt",
              "dataset_test.txt"}
DEFAULT_FOV_DEG = 50.0
FORMATS = ("7scenes", "cambridge")
_STAGING = ".render-tmp"
# OpenGL axes (x right, y up, z backward) <-> OpenCV axes (x right, y down, z forward)
_GL_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def intrinsics_for(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> CameraIntrinsics:
    """Pinhole intrinsics (pixels) of the renderer's camera: vertical FOV ``fov_deg`` degrees,
    square pixels, principal point (W/2, H/2) with pixel centres at integer coordinates."""
    f = (height / 2.0) / np.tan(np.radians(fov_deg) / 2.0)
    return CameraIntrinsics(width, height, f, f, width / 2.0, height / 2.0)


def view_matrix(position: Sequence[float], quaternion: Sequence[float]) -> list[float]:
    """pybullet view matrix (flat, column-major, OpenGL axes) of a camera-to-world pose
    (centre in metres, wxyz quaternion, OpenCV camera axes)."""
    T_wc = pose_to_matrix(np.asarray(position, np.float64), np.asarray(quaternion, np.float64))
    V = np.linalg.inv(T_wc @ _GL_CV)          # world -> OpenGL camera
    return [float(v) for v in V.T.reshape(-1)]


class SceneRenderer:
    """A pybullet DIRECT client holding the scene; renders RGB images from camera poses.

    Args:
        width, height: image size in pixels.
        fov_deg: vertical field of view in degrees.
        layout: the scene (:func:`pae_ros.scene.assets.build_assets`); None = an empty world
            (white background), e.g. for marker tests.
        shadows: let TinyRenderer cast shadows (from ``layout.light_direction``).
    """

    def __init__(self, width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG,
                 layout: SceneLayout | None = None, shadows: bool = True,
                 near: float = 0.05, far: float = 200.0) -> None:
        import pybullet as p

        self._p = p
        self.width, self.height = int(width), int(height)
        if self.width < 8 or self.height < 8:
            raise ValueError(f"image size must be at least 8x8, got {width}x{height}")
        self.fov_deg = float(fov_deg)
        self.shadows = bool(shadows)
        self._cid = p.connect(p.DIRECT)
        proj = list(p.computeProjectionMatrixFOV(self.fov_deg, self.width / self.height, near, far,
                                                 physicsClientId=self._cid))
        # TinyRenderer puts the optical axis one row below H/2 (OpenCV convention): shift by
        # one row, measured with markers in test_scene.py
        proj[9] += 2.0 / self.height
        self._proj = proj
        self.light_direction = [0.45, -0.3, 1.0]
        self._textures: dict[str, int] = {}
        if layout is not None:
            self.light_direction = list(layout.light_direction)
            for obj in layout.objects:
                self._add_object(obj)

    # -----------------------------------------------------------------------------------------
    def _add_object(self, obj) -> int:
        p, cid = self._p, self._cid
        vs = p.createVisualShape(p.GEOM_MESH, fileName=obj.mesh, meshScale=list(obj.scale),
                                 rgbaColor=list(obj.rgba), physicsClientId=cid)
        if vs < 0:
            raise RuntimeError(f"pybullet could not load mesh {obj.mesh}")
        body = p.createMultiBody(baseMass=0, baseVisualShapeIndex=vs, basePosition=list(obj.position),
                                 baseOrientation=list(obj.orientation), physicsClientId=cid)
        if obj.texture:
            if obj.texture not in self._textures:
                tid = p.loadTexture(obj.texture, physicsClientId=cid)
                if tid < 0:
                    raise RuntimeError(f"pybullet could not load texture {obj.texture}")
                self._textures[obj.texture] = tid
            p.changeVisualShape(body, -1, textureUniqueId=self._textures[obj.texture],
                                rgbaColor=list(obj.rgba), physicsClientId=cid)
        return body

    def add_marker(self, point: Sequence[float], radius: float = 0.05,
                   rgba: Sequence[float] = (1.0, 0.0, 0.0, 1.0)) -> int:
        """Add a sphere of ``radius`` m centred on world ``point`` (m); returns its body id."""
        p = self._p
        vs = p.createVisualShape(p.GEOM_SPHERE, radius=float(radius), rgbaColor=list(rgba),
                                 physicsClientId=self._cid)
        return p.createMultiBody(baseMass=0, baseVisualShapeIndex=vs,
                                 basePosition=[float(v) for v in point], physicsClientId=self._cid)

    def move_marker(self, body: int, point: Sequence[float]) -> None:
        """Move a marker (or any body) to world ``point`` (m)."""
        self._p.resetBasePositionAndOrientation(body, [float(v) for v in point], [0, 0, 0, 1],
                                                physicsClientId=self._cid)

    @property
    def intrinsics(self) -> CameraIntrinsics:
        """The camera's pinhole intrinsics (see :func:`intrinsics_for`)."""
        return intrinsics_for(self.width, self.height, self.fov_deg)

    def render(self, position: Sequence[float], quaternion: Sequence[float]) -> np.ndarray:
        """RGB image (H, W, 3) uint8 seen from a camera-to-world pose (centre m, wxyz)."""
        p = self._p
        out = p.getCameraImage(self.width, self.height, viewMatrix=view_matrix(position, quaternion),
                               projectionMatrix=self._proj, renderer=p.ER_TINY_RENDERER,
                               lightDirection=self.light_direction, shadow=int(self.shadows),
                               lightAmbientCoeff=0.55, lightDiffuseCoeff=0.55, lightSpecularCoeff=0.05,
                               flags=p.ER_NO_SEGMENTATION_MASK, physicsClientId=self._cid)
        rgba = np.asarray(out[2], dtype=np.uint8).reshape(self.height, self.width, 4)
        return np.ascontiguousarray(rgba[:, :, :3])

    def close(self) -> None:
        if self._cid is not None:
            try:
                self._p.disconnect(physicsClientId=self._cid)
            finally:
                self._cid = None

    def __enter__(self) -> "SceneRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


# ---------------------------------------------------------------------------------------------
# dataset rendering


@dataclass(frozen=True)
class RenderParams:
    """Everything that determines a render (and its cache key). Sizes in pixels, fov in
    degrees, ``step`` metres between frames along a walk."""

    seed: int = 0
    train_seqs: int = 4
    test_seqs: int = 2
    train_frames: int = 150
    test_frames: int = 100
    width: int = 256
    height: int = 192
    fov_deg: float = DEFAULT_FOV_DEG
    step: float = 0.12
    fmt: str = "7scenes"
    scene: str = DEFAULT_SCENE          # the folder name
    shadows: bool = True
    version: int = RENDER_VERSION
    builtin: str = DEFAULT_SCENE        # which built-in scene (SCENES)

    def manifest_key(self) -> dict:
        d = asdict(self)
        d["fov_deg"] = float(d["fov_deg"])
        d["step"] = float(d["step"])
        if d["builtin"] == DEFAULT_SCENE:   # a courtyard manifest has no builtin key: existing renders are reused
            del d["builtin"]
        return d


def scene_builders(builtin: str):
    """(build_assets(seed, folder) -> SceneLayout, make_walks(seed, n_train, n_test, train_frames,
    test_frames, step) -> list[Walk]) of a built-in scene."""
    if builtin == "courtyard":
        return build_assets, make_walks
    if builtin == "plaza":
        from .plaza import build_plaza_assets
        from .plaza_walks import make_plaza_walks

        return build_plaza_assets, make_plaza_walks
    raise ValueError(f"unknown scene {builtin!r}; built-in scenes: {', '.join(SCENES)}")


def _finite(v: float) -> float | None:
    return round(float(v), 4) if np.isfinite(v) else None


def coverage_summary(walks: Sequence[Walk], max_angle_deg: float = 30.0) -> dict:
    """Coverage of the test walks by the train walks: per test frame the distance (m) to the
    nearest train camera viewing within ``max_angle_deg`` (:func:`pae_ros.coverage.coverage_distance`),
    summarised as shares of frames per stratum (< 1, 1-2, 2-5, > 5 m; no similar-view train
    camera at all counts as > 5 m), the share > 2 m and the median (None when infinite), in all
    and per test sequence. JSON-serialisable."""
    from ..coverage import COVERAGE_BINS_M, coverage_bin_label, coverage_distance

    train = [w for w in walks if w.split == "train"]
    test = [w for w in walks if w.split == "test"]
    if not train or not test:
        return {"frames": 0, "max_angle_deg": float(max_angle_deg)}
    tp = np.concatenate([w.positions for w in train])
    tq = np.concatenate([w.quaternions for w in train])

    def summary(d: np.ndarray) -> dict:
        return {"frames": int(len(d)),
                "share": {coverage_bin_label(lo, hi): round(float(np.mean((d >= lo) & (d < hi))), 4)
                          for lo, hi in COVERAGE_BINS_M},
                "share_over_2m": round(float(np.mean(d > 2.0)), 4),
                "no_similar_view": round(float(np.mean(~np.isfinite(d))), 4),
                "median_m": _finite(np.median(d))}

    per = {w.name: coverage_distance(w.positions, w.quaternions, tp, tq, max_angle_deg) for w in test}
    out = summary(np.concatenate(list(per.values())))
    out["max_angle_deg"] = float(max_angle_deg)
    out["per_sequence"] = {k: summary(v) for k, v in per.items()}
    return out


def format_coverage(cov: dict) -> str:
    """One line: ``coverage of N test frames: <1m 35% | 1-2m 16% | ... | > 2 m 49%``."""
    if not cov.get("frames"):
        return "coverage: no test frames"
    parts = " | ".join(f"{k} {100 * v:.0f}%" for k, v in cov["share"].items())
    med = cov.get("median_m")
    return (f"coverage of {cov['frames']} test frames (distance to the nearest train camera viewing within "
            f"{cov['max_angle_deg']:g} deg): {parts} | >2m {100 * cov['share_over_2m']:.0f}% | median "
            + (f"{med:.2f} m" if med is not None else "inf"))


def _frame_paths(fmt: str, walk: Walk, index: int) -> tuple[str, ...]:
    """Relative paths of the files of one frame."""
    if fmt == "7scenes":
        stem = f"{walk.name}/frame-{index:06d}"
        return (f"{stem}.color.png", f"{stem}.pose.txt")
    return (f"{_cambridge_seq(walk)}/frame{index + 1:05d}.png",)


def _cambridge_seq(walk: Walk) -> str:
    return "seq" + str(int(walk.name.split("-")[1]))


# worker state (one renderer per process)
_W: dict = {}


def _init_worker(layout: dict, params: dict, scene_dir: str) -> None:
    prm = RenderParams(**params)
    _W["renderer"] = SceneRenderer(prm.width, prm.height, prm.fov_deg, SceneLayout.from_dict(layout),
                                   shadows=prm.shadows)
    _W["params"] = prm
    _W["scene_dir"] = Path(scene_dir)


def _render_chunk(jobs: list[tuple[str, int, list[float], list[float]]]) -> int:
    """Render and write frames: jobs of (walk name, frame index, position, quaternion)."""
    r: SceneRenderer = _W["renderer"]
    prm: RenderParams = _W["params"]
    scene_dir: Path = _W["scene_dir"]
    for name, index, pos, quat in jobs:
        rgb = r.render(pos, quat)
        if prm.fmt == "7scenes":
            write_7scenes_frame(scene_dir, name, index, rgb, pos, quat)
        else:
            write_rgb(scene_dir / f"seq{int(name.split('-')[1])}" / f"frame{index + 1:05d}.png", rgb)
    return len(jobs)


def _close_worker() -> None:
    r = _W.pop("renderer", None)
    if r is not None:
        r.close()


def _checksum(scene_dir: Path) -> tuple[str, int]:
    """sha256 over the relative paths and bytes of every file except the manifest; file count."""
    h = hashlib.sha256()
    n = 0
    for path in sorted(p for p in scene_dir.rglob("*") if p.is_file() and p.name != MANIFEST):
        h.update(path.relative_to(scene_dir).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
        n += 1
    return h.hexdigest(), n


def read_manifest(scene_dir: Path | str) -> dict | None:
    """The render manifest of a scene folder, or None when absent / unreadable."""
    path = Path(scene_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_complete(scene_dir: Path, params: RenderParams) -> bool:
    m = read_manifest(scene_dir)
    if not m or m.get("params") != params.manifest_key():
        return False
    # top-level files the renderer never writes (a READY marker a downstream job adds) are ignored
    n = sum(1 for p in scene_dir.rglob("*") if p.is_file() and p.name != MANIFEST
            and (p.parent != scene_dir or p.name in _TOP_LEVEL))
    return n == m.get("files")


def render_scene(out_dir: str | Path = "data/demo_scene", seed: int = 0, train_frames: int | None = None,
                 test_frames: int | None = None, train_seqs: int | None = None, test_seqs: int | None = None,
                 size: tuple[int, int] = (256, 192), fov_deg: float = DEFAULT_FOV_DEG,
                 fmt: str = "7scenes", workers: int = 2, force: bool = False,
                 scene_name: str | None = None, step: float | None = None, shadows: bool = True,
                 progress: bool = True, scene: str = DEFAULT_SCENE) -> Path:
    """Render a built-in scene into ``<out_dir>/<scene_name>`` and return that scene folder.

    Args:
        out_dir: dataset root (the scene is a sub-folder, as in 7Scenes / Cambridge).
        seed: scene layout, textures and walks are a function of it.
        scene: the built-in scene, ``"courtyard"`` (default) or ``"plaza"`` (:data:`SCENES`).
        scene_name: the folder name (default: ``scene``).
        train_frames / test_frames: frames per train / test walk (sequence); None = the scene's default.
        train_seqs / test_seqs: number of train / test walks; None = the scene's default.
        size: (width, height) in pixels.
        fov_deg: vertical field of view, degrees.
        fmt: ``"7scenes"`` or ``"cambridge"``.
        workers: rendering processes (1 = in this process).
        force: re-render even if a complete render with the same parameters exists.
        step: metres between consecutive frames along a walk; None = the scene's default.
        progress: show a tqdm progress bar.

    A complete earlier render with identical parameters (its ``render_manifest.json``) is
    reused without rendering. Raises FileExistsError if ``<out_dir>/<scene_name>`` exists but
    was not written by this renderer (unless ``force``).
    """
    params = _render_params(seed, train_frames, test_frames, train_seqs, test_seqs, size, fov_deg, fmt,
                            scene_name, step, shadows, scene)
    build, walker = scene_builders(scene)
    out_dir = Path(out_dir)
    scene_dir = out_dir / params.scene
    if _reusable(scene_dir, params, force):
        return scene_dir

    t0 = time.perf_counter()
    walks = walker(params.seed, params.train_seqs, params.test_seqs, params.train_frames,
                   params.test_frames, params.step)
    coverage = coverage_summary(walks)
    log.info("%s: %s", scene, format_coverage(coverage))
    staging_root = out_dir / _STAGING
    stage = staging_root / params.scene
    if stage.exists():
        shutil.rmtree(stage)                       # an interrupted earlier render
    stage.mkdir(parents=True)
    jobs = [(w.name, i, w.positions[i].tolist(), w.quaternions[i].tolist())
            for w in walks for i in range(len(w.positions))]
    with tempfile.TemporaryDirectory(prefix="pae_scene_assets_") as tmp:
        layout = build(params.seed, tmp)
        _render_jobs(jobs, layout, params, stage, max(1, int(workers)), progress)

    intr = intrinsics_for(params.width, params.height, fov_deg)
    _write_labels(stage, params, walks, intr, coverage)
    _write_manifest(stage, params, walks, intr, coverage, t0)
    if scene_dir.exists():
        shutil.rmtree(scene_dir)
    os.replace(stage, scene_dir)
    try:
        staging_root.rmdir()
    except OSError:
        pass
    return scene_dir


def _render_params(seed: int, train_frames: int | None, test_frames: int | None, train_seqs: int | None,
                   test_seqs: int | None, size: tuple[int, int], fov_deg: float, fmt: str,
                   scene_name: str | None, step: float | None, shadows: bool, scene: str) -> RenderParams:
    """The render's parameters, a None taking the built-in ``scene``'s default (frames and walks,
    ``step`` m); ``size`` (width, height) px, ``fov_deg`` degrees. Refuses an unknown format or
    scene, and a folder name that is empty, hidden or has a ``/``."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if scene not in SCENES:
        raise ValueError(f"unknown scene {scene!r}; built-in scenes: {', '.join(SCENES)}")
    dflt = SCENES[scene]
    train_frames = dflt["train_frames"] if train_frames is None else train_frames
    test_frames = dflt["test_frames"] if test_frames is None else test_frames
    train_seqs = dflt["train_seqs"] if train_seqs is None else train_seqs
    test_seqs = dflt["test_seqs"] if test_seqs is None else test_seqs
    step = dflt["step"] if step is None else step
    scene_name = scene if scene_name is None else scene_name
    if not scene_name or "/" in scene_name or scene_name.startswith("."):
        raise ValueError(f"bad scene name {scene_name!r}")
    width, height = (int(v) for v in size)
    return RenderParams(seed=int(seed), train_seqs=int(train_seqs), test_seqs=int(test_seqs),
                        train_frames=int(train_frames), test_frames=int(test_frames), width=width,
                        height=height, fov_deg=float(fov_deg), step=float(step), fmt=fmt, scene=scene_name,
                        shadows=bool(shadows), builtin=scene)


def _reusable(scene_dir: Path, params: RenderParams, force: bool) -> bool:
    """Whether ``scene_dir`` holds a complete render with the same parameters (then reused, unless
    ``force``); raises FileExistsError when it exists without this renderer's manifest."""
    if scene_dir.exists():
        if not force and _is_complete(scene_dir, params):
            log.info("reusing %s (same parameters, render_manifest.json)", scene_dir)
            print(f"reusing {scene_dir} (rendered earlier with the same parameters; --force re-renders)")
            return True
        if read_manifest(scene_dir) is None and not force:
            raise FileExistsError(f"{scene_dir} exists and was not written by the scene renderer "
                                  f"(no {MANIFEST}); remove it or pass force=True / --force")
    return False


def _write_labels(stage: Path, params: RenderParams, walks: list[Walk], intr: CameraIntrinsics,
                  coverage: dict) -> None:
    """The rendered scene's intrinsics, train/test split files of its format (Cambridge: with the
    camera-to-world poses, metres, wxyz) and, for a scene other than the courtyard, ``scene_info.json``."""
    write_intrinsics(stage, intr)
    train = [w for w in walks if w.split == "train"]
    test = [w for w in walks if w.split == "test"]
    if params.fmt == "7scenes":
        write_7scenes_splits(stage, [w.name for w in train], [w.name for w in test])
    else:
        for split, ws in (("train", train), ("test", test)):
            write_cambridge(stage, split, [(_frame_paths(params.fmt, w, i)[0], w.positions[i], w.quaternions[i])
                                           for w in ws for i in range(len(w.positions))])
    if params.builtin != DEFAULT_SCENE:      # no scene_info.json for the courtyard: its folder's files stay fixed
        info = {"scene": params.builtin, "seed": params.seed, **_scene_description(params.builtin),
                "frames": _frame_counts(walks), "step_m": params.step, "size": [params.width, params.height],
                "fov_deg": params.fov_deg, "coverage": coverage}
        (stage / SCENE_INFO).write_text(json.dumps(info, indent=2) + "\n")


def _frame_counts(walks: list[Walk]) -> dict:
    """Frames of the train and of the test walks."""
    return {"train": sum(len(w.positions) for w in walks if w.split == "train"),
            "test": sum(len(w.positions) for w in walks if w.split == "test")}


def _write_manifest(stage: Path, params: RenderParams, walks: list[Walk], intr: CameraIntrinsics,
                    coverage: dict, t0: float) -> None:
    """``render_manifest.json`` (parameters, checksum of the files, coverage, seconds since the
    ``time.perf_counter()`` value ``t0``), written last and atomically: a render folder without it
    is incomplete."""
    digest, n_files = _checksum(stage)
    manifest = {
        "generator": "pae_ros.scene.render_scene",
        "params": params.manifest_key(),
        "frames": _frame_counts(walks),
        "sequences": {w.name: w.split for w in walks},
        "intrinsics": intr.to_json(),
        "files": n_files,
        "sha256": digest,
        "pybullet": _pybullet_version(),
        "render_seconds": round(time.perf_counter() - t0, 2),
        "coverage": coverage,
        "conventions": "poses camera-to-world, metres, wxyz, OpenCV camera axes; world z up",
    }
    tmp_m = stage / (MANIFEST + ".tmp")
    tmp_m.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp_m, stage / MANIFEST)


def _scene_description(scene: str) -> dict:
    if scene == "plaza":
        from . import plaza
        from .plaza_walks import RECIPES

        return {"description": "50 m town square: repeated paver cells, facades of identical window modules "
                               "(north and south alike), two colonnades of identical columns, rows of lamp posts "
                               "and tree planters; landmarks: fountain with statue, kiosk, one poster module "
                               "per facade, hills on the horizon",
                "extent_m": 2 * plaza.PLAZA_HALF, "walk_limit_m": plaza.WALK_LIMIT,
                "test_walk_recipes": list(RECIPES)}
    return {}


def _pybullet_version() -> str:
    try:
        from importlib.metadata import version

        return version("pybullet")
    except Exception:  # pragma: no cover
        return "unknown"


def _render_jobs(jobs: list, layout: SceneLayout, params: RenderParams, stage: Path,
                 workers: int, progress: bool) -> None:
    from ..progress import tqdm

    layout_d, params_d = layout.to_dict(), asdict(params)
    bar = tqdm(total=len(jobs), desc=f"rendering {params.scene}", unit="frame", disable=not progress)
    try:
        if workers <= 1 or len(jobs) < 16:
            _init_worker(layout_d, params_d, str(stage))
            try:
                for job in jobs:
                    bar.update(_render_chunk([job]))
            finally:
                _close_worker()
        else:
            import multiprocessing as mp

            chunk = 6
            chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
            # fork (POSIX): children inherit the imported modules and need no ``__main__`` guard
            # in the caller's script; spawn elsewhere
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            ctx = mp.get_context(method)
            with ctx.Pool(workers, initializer=_init_worker, initargs=(layout_d, params_d, str(stage))) as pool:
                for n in pool.imap_unordered(_render_chunk, chunks):
                    bar.update(n)
    finally:
        bar.close()
