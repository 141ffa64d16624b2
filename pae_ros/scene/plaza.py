"""Assets of the generalization scene ``plaza``: a 50 m town square with repetitive textures.

Where the courtyard (``assets.py``) makes every tile and wall unique, the plaza repeats on
purpose, so that appearance alone is ambiguous: one paver texture repeated on hundreds of 2 m
ground cells, facades built from identical 4 m window modules (the north and south facades
share one style), two colonnades of identical columns, rows of identical lamp posts and tree
planters. A few unique landmarks (the fountain with its statue, a kiosk, one poster module per
facade, the hills of the backdrop) keep the place localizable in principle.

Textures come from other sources than the courtyard's where the registry wheels allow: the
``pybullet_data`` height map ``wm_height_out.png``, ``checker_grid.jpg`` and the bunny mesh, and
matplotlib's sample data (``grace_hopper.jpg``, ``Minduka_Present_Blue_Pack.png``,
``logo2.png`` as posters, the ``jacksboro_fault_dem.npz`` / ``topobathy.npz`` elevation models
for the hills on the horizon).

World frame (metres): x east, y north, z up; origin at the plaza centre on the ground. The
facades stand at x, y = +-``PLAZA_HALF`` (50 m across), with 3 m streets open at the corners;
camera walks stay inside ``[-WALK_LIMIT, WALK_LIMIT]^2`` and outside the discs of
``SceneLayout.obstacles`` (fountain, columns, lamp posts, planters, kiosk; radii include a
clearance for the camera).
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from .assets import (ObjectSpec, SceneLayout, _crop, _luma_detail, _noise, _quat_z, _save, _write_obj, box_obj,
                     load_source, pybullet_data_dir, quad_obj)

#: facades at x, y = +-PLAZA_HALF, metres (the plaza is 2 * PLAZA_HALF = 50 m across)
PLAZA_HALF = 25.0
#: facades span +-FACADE_HALF along their side (3 m streets open at the corners), metres
FACADE_HALF = 22.0
#: camera walks stay inside [-WALK_LIMIT, WALK_LIMIT]^2, metres
WALK_LIMIT = 21.0
#: ground cell size (one repeated paver texture per cell), metres
CELL = 2.0
#: backdrop (sky and hills) distance from the centre, metres
BACKDROP = 70.0
#: colonnades: columns at y = +-COLONNADE_Y, x = COLUMN_X
COLONNADE_Y = 13.0
COLUMN_X = tuple(float(x) for x in np.arange(-18.0, 18.1, 4.0))
#: lamp posts at x = +-LAMP_X, y = LAMP_Y
LAMP_X = 9.0
LAMP_Y = (-20.0, -16.0, -8.0, -4.0, 4.0, 8.0, 16.0, 20.0)
#: tree planters (x, y), 1.6 m square
PLANTERS = ((-17.0, -5.0), (17.0, 5.0), (-17.0, 19.0), (17.0, -19.0), (-4.0, 18.0), (4.0, -18.0))
KIOSK = (14.0, -6.0)
FOUNTAIN_RADIUS = 3.0
#: clearance the camera keeps from any object, metres (added to the obstacle radii)
CLEARANCE = 0.6

_MPL_SAMPLES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")
_HEIGHTMAP = "heightmaps/wm_height_out.png"
_CHECKER = "table_square/checker_grid.jpg"


# ---------------------------------------------------------------------------------------------
# sources

def mpl_sample_dir() -> Path:
    """matplotlib's ``sample_data`` folder (ships with the matplotlib wheel)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data"


_MPL_CACHE: dict[str, np.ndarray] = {}


def load_mpl_source(name: str) -> np.ndarray:
    """A matplotlib sample image as float32 RGB (H, W, 3) in [0, 1] (alpha composited on white)."""
    if name not in _MPL_CACHE:
        path = mpl_sample_dir() / name
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise FileNotFoundError(f"texture {path} missing or unreadable (matplotlib sample_data incomplete?)")
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = img.astype(np.float32) / 255.0
        if img.shape[2] == 4:
            a = img[:, :, 3:4]
            img = img[:, :, :3] * a + (1.0 - a)
        _MPL_CACHE[name] = np.ascontiguousarray(img[:, :, ::-1])
    return _MPL_CACHE[name]


def dem_profiles() -> list[np.ndarray]:
    """Ridge profiles (1-D, 0..1) from matplotlib's sample elevation models: rows of the
    Jacksboro fault DEM and of the topobathy grid (land only)."""
    d = np.load(mpl_sample_dir() / "jacksboro_fault_dem.npz")
    e = d["elevation"].astype(np.float64)
    t = np.load(mpl_sample_dir() / "topobathy.npz")["topo"].astype(np.float64)
    out = []
    for grid in (e, np.clip(t, 0.0, None)):
        for r in np.linspace(0, grid.shape[0] - 1, 4).astype(int):
            row = grid[r]
            row = (row - row.min()) / max(row.max() - row.min(), 1e-9)
            out.append(row)
    return out


def _tile(img: np.ndarray, reps_x: int, reps_y: int) -> np.ndarray:
    return np.tile(img, (reps_y, reps_x, 1))


# ---------------------------------------------------------------------------------------------
# textures

def paver_texture(rng: np.random.Generator, base, n: int = 4, px: int = 128, detail: float = 0.18) -> np.ndarray:
    """One 2 m ground cell: ``n x n`` pavers of colour ``base`` with grout lines and height-map
    grain. Repeated unchanged over many cells."""
    hm = load_source(_HEIGHTMAP)
    img = np.array(base, np.float32) * _luma_detail(_crop(rng, hm, px, px, 0.2), detail) * _noise(rng, px, px, 3, 0.05)
    step = px // n
    for k in range(n):
        for m in range(n):
            img[k * step:(k + 1) * step, m * step:(m + 1) * step] *= np.float32(rng.uniform(0.88, 1.1))
    for k in range(0, px, step):
        img[k:k + 2, :] = img[k:k + 2, :] * 0.45 + 0.12
        img[:, k:k + 2] = img[:, k:k + 2] * 0.45 + 0.12
    return np.clip(img, 0.0, 1.0)


def cobble_texture(rng: np.random.Generator, px: int = 128) -> np.ndarray:
    """Dark cobbles in a running bond (the axial paths and the fountain ring)."""
    img = np.empty((px, px, 3), np.float32)
    img[:] = (0.18, 0.18, 0.19)
    bh, bw = px // 8, px // 4
    base = np.array((0.36, 0.34, 0.33), np.float32)
    for r in range(8):
        off = (bw // 2) * (r % 2)
        for x0 in range(-off, px, bw):
            xa, xb = max(0, x0 + 1), min(px, x0 + bw - 1)
            img[r * bh + 1:(r + 1) * bh - 1, xa:xb] = base * np.float32(rng.uniform(0.75, 1.25))
    img *= _luma_detail(_crop(rng, load_source(_HEIGHTMAP), px, px, 0.3), 0.12)
    return np.clip(img, 0.0, 1.0)


def lawn_texture(rng: np.random.Generator, px: int = 128) -> np.ndarray:
    """Grass from the height map's grain, tinted green."""
    g = _luma_detail(_crop(rng, load_source(_HEIGHTMAP), px, px, 0.15), 0.35)
    return np.clip(np.array((0.26, 0.45, 0.18), np.float32) * g * _noise(rng, px, px, 4, 0.12), 0.0, 1.0)


def _window(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, frame, glass, bars: int = 1) -> None:
    img[y0 - 3:y1 + 3, x0 - 3:x1 + 3] = frame
    img[y0:y1, x0:x1] = glass
    for k in range(1, bars + 1):
        xm = x0 + (x1 - x0) * k // (bars + 1)
        img[y0:y1, xm - 1:xm + 1] = frame
    ym = (y0 + y1) // 2
    img[ym - 1:ym + 1, x0:x1] = frame


def facade_module(rng: np.random.Generator, style: str, height_m: float, width_m: float = 4.0,
                  ppm: int = 32, poster: np.ndarray | None = None) -> np.ndarray:
    """One ``width_m`` wide module of a facade (row 0 at the top, ``ppm`` texels per metre).

    style: ``"apartment"`` (plaster, two windows a floor, shop front), ``"office"`` (glass
    curtain wall) or ``"arcade"`` (brick with arches). ``poster``: an image hung on the
    module (the one landmark module of a facade)."""
    w, h = int(width_m * ppm), int(height_m * ppm)
    hm = _crop(rng, load_source(_HEIGHTMAP), w, h, 0.5)
    img = np.empty((h, w, 3), np.float32)

    def px(m: float) -> int:
        return int(round(m * ppm))

    glass = np.array((0.16, 0.22, 0.30), np.float32)
    if style == "apartment":
        img[:] = (0.86, 0.72, 0.50)
        img *= _luma_detail(hm, 0.06)
        floors = int(height_m // 3.0)
        for f in range(1, floors):                       # upper floors: two windows each
            top = h - px(3.0 * f + 2.4)
            for xc in (1.0, 3.0):
                _window(img, px(xc - 0.55), top, px(xc + 0.55), top + px(1.5), (0.95, 0.93, 0.88), glass)
            img[h - px(3.0 * f) - 3:h - px(3.0 * f) + 2, :] = (0.70, 0.58, 0.40)   # cornice
        _window(img, px(0.3), h - px(2.6), px(3.7), h - px(0.4), (0.25, 0.20, 0.16), glass * 1.3, bars=2)
        img[h - px(3.0):h - px(2.7), :] = (0.55, 0.20, 0.16)                      # awning
    elif style == "office":
        img[:] = (0.55, 0.58, 0.62)
        for y in range(0, h - px(0.5), px(1.5)):
            for x in range(0, w, px(1.0)):
                img[y + 3:y + px(1.5) - 3, x + 3:x + px(1.0) - 3] = glass * np.float32(rng.uniform(0.9, 1.3))
        img *= _luma_detail(hm, 0.04)
        img[h - px(0.5):, :] = (0.30, 0.30, 0.32)
    elif style == "arcade":
        img[:] = (0.78, 0.78, 0.74)                                                  # mortar
        bw, bh = px(0.5), max(3, px(0.2))
        for r, y0 in enumerate(range(h, -bh, -bh)):
            off = (bw // 2) * (r % 2)
            for x0 in range(-off, w, bw):
                ya, yb, xa, xb = max(0, y0 - bh + 1), min(h, y0 - 1), max(0, x0 + 1), min(w, x0 + bw - 1)
                if ya < yb and xa < xb:
                    img[ya:yb, xa:xb] = np.array((0.60, 0.27, 0.20), np.float32) * np.float32(rng.uniform(0.85, 1.12))
        img *= _luma_detail(hm, 0.08)
        arch = np.zeros((h, w), np.uint8)                                            # ground-floor arch
        cv2.rectangle(arch, (px(0.6), h - px(2.6)), (px(3.4), h), 1, -1)
        cv2.ellipse(arch, (px(2.0), h - px(2.6)), (px(1.4), px(1.0)), 0, 180, 360, 1, -1)
        img[arch > 0] = (0.08, 0.07, 0.07)
        for f in range(1, int(height_m // 3.2)):
            top = h - px(3.2 * f + 2.3)
            _window(img, px(1.3), top, px(2.7), top + px(1.6), (0.85, 0.85, 0.80), glass, bars=1)
    else:
        raise ValueError(f"unknown facade style {style!r}")
    if poster is not None:                                                           # the landmark module
        pw = px(width_m - 0.6)
        ph = min(int(pw * poster.shape[0] / poster.shape[1]), px(height_m - 4.5))
        x0, y1 = px(0.3), h - px(3.4)
        img[y1 - ph - 4:y1 + 4, x0 - 4:x0 + pw + 4] = 0.1
        img[y1 - ph:y1, x0:x0 + pw] = cv2.resize(poster, (pw, ph), interpolation=cv2.INTER_AREA)
    return np.clip(img, 0.0, 1.0)


def column_texture(rng: np.random.Generator, px: int = 64, h: int = 256) -> np.ndarray:
    """Fluted marble for the columns (u around, v up)."""
    img = np.empty((h, px, 3), np.float32)
    img[:] = (0.88, 0.86, 0.82)
    img *= _luma_detail(_crop(rng, load_source(_HEIGHTMAP), px, h, 0.3), 0.08)
    for k in range(0, px, px // 8):
        img[:, k:k + 2] *= 0.72
    img[:8] *= 0.7
    img[-10:] *= 0.75
    return np.clip(img, 0.0, 1.0)


def foliage_texture(rng: np.random.Generator, px: int = 128) -> np.ndarray:
    """Tree canopy: dark green blotches on the height map's grain."""
    g = _luma_detail(_crop(rng, load_source(_HEIGHTMAP), px, px, 0.2), 0.45)
    return np.clip(np.array((0.16, 0.34, 0.13), np.float32) * g * _noise(rng, px, px, 8, 0.25), 0.0, 1.0)


def stone_block_texture(rng: np.random.Generator, base=(0.72, 0.70, 0.66), px: int = 128) -> np.ndarray:
    """Grey stone blocks (fountain basin, pedestal, planters)."""
    img = np.array(base, np.float32) * _luma_detail(_crop(rng, load_source(_CHECKER), px, px, 0.2), 0.05)
    img = img * _luma_detail(_crop(rng, load_source(_HEIGHTMAP), px, px, 0.3), 0.12)
    for k in range(0, px, px // 4):
        img[k:k + 2, :] *= 0.55
    return np.clip(img, 0.0, 1.0)


def kiosk_texture(rng: np.random.Generator, px: int = 256) -> np.ndarray:
    """The kiosk's sides: posters (matplotlib sample images) on green panels."""
    img = np.empty((px, px * 2, 3), np.float32)
    img[:] = (0.10, 0.30, 0.20)
    slots = [(10, 10, px - 10, px - 60), (px + 10, 10, 2 * px - 10, px - 60)]
    names = list(_MPL_SAMPLES)
    for (x0, y0, x1, y1), name in zip(slots, [names[int(rng.integers(2))], names[2]]):
        img[y0:y1, x0:x1] = cv2.resize(load_mpl_source(name), (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    img[px - 40:px - 20, :] = (0.85, 0.75, 0.20)
    return np.clip(img, 0.0, 1.0)


def plaza_sky_texture(rng: np.random.Generator, profile: np.ndarray, w: int = 1024, h: int = 512,
                      height_m: float = 50.0, water: bool = False) -> np.ndarray:
    """A backdrop side: sky gradient, clouds and a hill ridge following a DEM ``profile`` (0..1)."""
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    top = np.array([0.30, 0.50, 0.82], np.float32)
    hor = np.array([0.78, 0.85, 0.93], np.float32)
    img = np.broadcast_to(top * (1 - y) + hor * y, (h, w, 3)).copy()
    for _ in range(int(rng.integers(3, 7))):
        cx, cy = int(rng.integers(0, w)), int(rng.uniform(0.08, 0.45) * h)
        ax, ay = int(rng.uniform(0.05, 0.15) * w), int(rng.uniform(0.02, 0.04) * h)
        mask = np.zeros((h, w), np.float32)
        cv2.ellipse(mask, (cx, cy), (ax, ay), 0, 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), 8)[:, :, None]
        img = img * (1 - 0.75 * mask) + 0.96 * 0.75 * mask
    prof = np.interp(np.linspace(0, 1, w), np.linspace(0, 1, len(profile)), profile).astype(np.float32)
    ridge_m = 14.0 + 20.0 * prof                                         # 14..34 m high at 70 m
    ridge_row = (h * (1 - ridge_m / height_m)).astype(int)
    grain = _luma_detail(_crop(rng, load_source(_HEIGHTMAP), w, h, 0.5), 0.25)
    hills = np.array((0.42, 0.50, 0.38), np.float32) * grain * 0.7 + np.array((0.55, 0.63, 0.70), np.float32) * 0.3
    rows = np.arange(h)[:, None]
    img = np.where((rows >= ridge_row[None, :])[:, :, None], hills, img)
    return np.clip(img, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# meshes

def cells_obj(path: Path, cells: list[tuple[float, float]], size: float) -> str:
    """Ground quads of ``size`` m with lower-left corners ``cells`` (x, y), each mapping the whole
    texture (UV 0..1), so one texture repeats on every cell. Image row 0 is the cell's north edge."""
    verts, uvs, faces = [], [(0, 0), (1, 0), (1, 1), (0, 1)], []
    for x, y in cells:
        k = len(verts)
        verts += [(x, y, 0.0), (x + size, y, 0.0), (x + size, y + size, 0.0), (x, y + size, 0.0)]
        faces.append(((k, 0, 0), (k + 1, 1, 0), (k + 2, 2, 0)))
        faces.append(((k, 0, 0), (k + 2, 2, 0), (k + 3, 3, 0)))
    return _write_obj(path, verts, uvs, [(0, 0, 1)], faces)


def facade_obj(path: Path, start, direction, normal, modules: list[int], n_kinds: int, width: float,
               height: float) -> str:
    """A facade of ``len(modules)`` modules of ``width`` m from ``start`` along the unit
    ``direction`` (left to right as seen from the plaza), ``height`` m high, facing ``normal``.
    The texture is an atlas of ``n_kinds`` modules side by side; ``modules[i]`` picks one."""
    sx, sy = start
    dx, dy = direction
    verts, uvs, faces = [], [], []
    for i, kind in enumerate(modules):
        a = (sx + dx * width * i, sy + dy * width * i)
        b = (sx + dx * width * (i + 1), sy + dy * width * (i + 1))
        k = len(verts)
        verts += [(a[0], a[1], 0.0), (b[0], b[1], 0.0), (b[0], b[1], height), (a[0], a[1], height)]
        u0, u1 = kind / n_kinds + 0.5 / 2048, (kind + 1) / n_kinds - 0.5 / 2048
        uvs += [(u0, 0), (u1, 0), (u1, 1), (u0, 1)]
        faces.append(((k, k, 0), (k + 1, k + 1, 0), (k + 2, k + 2, 0)))
        faces.append(((k, k, 0), (k + 2, k + 2, 0), (k + 3, k + 3, 0)))
    return _write_obj(path, verts, uvs, [normal], faces)


def prism_obj(path: Path, radius: float, height: float, sides: int = 8, top_radius: float | None = None,
              z0: float = 0.0) -> str:
    """A vertical ``sides``-gon prism / frustum (cone when ``top_radius`` = 0) from z0 to
    z0 + height (metres), with a top cap; UV u around (0..1), v up (0..1)."""
    top_radius = radius if top_radius is None else top_radius
    verts, uvs, normals, faces = [], [], [], []
    slope = (radius - top_radius) / height
    for i in range(sides):
        a0, a1 = 2 * math.pi * i / sides, 2 * math.pi * (i + 1) / sides
        am = 0.5 * (a0 + a1)
        n = np.array([math.cos(am), math.sin(am), slope])
        n /= np.linalg.norm(n)
        ni = len(normals)
        normals.append(tuple(float(v) for v in n))
        k, t = len(verts), len(uvs)
        verts += [(radius * math.cos(a0), radius * math.sin(a0), z0), (radius * math.cos(a1), radius * math.sin(a1), z0),
                  (top_radius * math.cos(a1), top_radius * math.sin(a1), z0 + height),
                  (top_radius * math.cos(a0), top_radius * math.sin(a0), z0 + height)]
        uvs += [(i / sides, 0), ((i + 1) / sides, 0), ((i + 1) / sides, 1), (i / sides, 1)]
        faces.append(((k, t, ni), (k + 1, t + 1, ni), (k + 2, t + 2, ni)))
        faces.append(((k, t, ni), (k + 2, t + 2, ni), (k + 3, t + 3, ni)))
    if top_radius > 0:
        ni = len(normals)
        normals.append((0.0, 0.0, 1.0))
        c = len(verts)
        verts.append((0.0, 0.0, z0 + height))
        t = len(uvs)
        uvs.append((0.5, 0.98))
        for i in range(sides):
            a0, a1 = 2 * math.pi * i / sides, 2 * math.pi * (i + 1) / sides
            k = len(verts)
            verts += [(top_radius * math.cos(a0), top_radius * math.sin(a0), z0 + height),
                      (top_radius * math.cos(a1), top_radius * math.sin(a1), z0 + height)]
            faces.append(((c, t, ni), (k, t, ni), (k + 1, t, ni)))
    return _write_obj(path, verts, uvs, normals, faces)


# ---------------------------------------------------------------------------------------------

def obstacles() -> list[tuple[float, float, float]]:
    """Discs (x, y, radius m) the camera walks keep out of (object footprint + ``CLEARANCE``)."""
    obs = [(0.0, 0.0, FOUNTAIN_RADIUS + CLEARANCE + 0.3)]
    obs += [(x, s * COLONNADE_Y, 0.4 + CLEARANCE) for s in (-1, 1) for x in COLUMN_X]
    obs += [(s * LAMP_X, y, 0.25 + CLEARANCE) for s in (-1, 1) for y in LAMP_Y]
    obs += [(x, y, 1.15 + CLEARANCE) for x, y in PLANTERS]
    obs += [(KIOSK[0], KIOSK[1], 1.9 + CLEARANCE)]
    return obs


def ground_kind(cx: float, cy: float) -> int:
    """Ground material of the 2 m cell centred on (cx, cy): 0 pavers, 1 dark cobbles (the
    two axial paths and the fountain ring), 2 lawn (the four corner lawns), 3 pale pavers
    (the colonnade walks)."""
    r = math.hypot(cx, cy)
    if abs(cx) < 2.0 or abs(cy) < 2.0 or 3.0 <= r < 6.0:
        return 1
    if abs(abs(cy) - COLONNADE_Y) < 2.0 and abs(cx) < 20.0:
        return 3
    if abs(cx) > 12.0 and abs(cy) > 12.0 and abs(cx) < 22.0 and abs(cy) < 22.0 and \
            not (abs(abs(cx) - 17.0) < 1.5 and abs(abs(cy) - 17.0) < 1.5):
        return 2 if (abs(cx) > 14.0 and abs(cy) > 14.0) else 0
    return 0


def build_plaza_assets(seed: int, folder: Path | str) -> SceneLayout:
    """Write the textures and meshes of the plaza for ``seed`` into ``folder``; returns the layout.

    Deterministic: the same seed writes the same files and layout. The seed changes the
    textures' grain, the landmark modules' places, the statue's heading and the hills; the
    plan (facades, colonnades, lamps, planters) is fixed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), 8001])
    objs: list[ObjectSpec] = []

    # ground: 25 x 25 cells of 2 m, four materials, each one texture repeated on its cells
    H = PLAZA_HALF + 5.0                                              # pave the corner streets too
    n = int(round(2 * H / CELL))
    cells: dict[int, list[tuple[float, float]]] = {0: [], 1: [], 2: [], 3: []}
    for i in range(n):
        for j in range(n):
            x, y = -H + i * CELL, -H + j * CELL
            cells[ground_kind(x + CELL / 2, y + CELL / 2)].append((x, y))
    textures = [paver_texture(rng, (0.74, 0.70, 0.64)), cobble_texture(rng), lawn_texture(rng),
                paver_texture(rng, (0.86, 0.84, 0.80), n=2, detail=0.10)]
    for kind, tex in enumerate(textures):
        if cells[kind]:
            objs.append(ObjectSpec(f"ground{kind}", cells_obj(folder / f"ground{kind}.obj", cells[kind], CELL),
                                   _save(tex, folder / f"ground{kind}.png")))

    # facades: 11 modules of 4 m per side; north and south share a style (ambiguity on purpose)
    posters = [load_mpl_source(_MPL_SAMPLES[0]), load_mpl_source(_MPL_SAMPLES[1]),
               load_mpl_source(_MPL_SAMPLES[2]), load_source("domino/domino.jpg")]
    sides = {  # start (left end seen from the plaza), direction, inward normal, style, height
        "north": ((-FACADE_HALF, PLAZA_HALF), (1, 0), (0, -1, 0), "apartment", 12.0),
        "south": ((FACADE_HALF, -PLAZA_HALF), (-1, 0), (0, 1, 0), "apartment", 12.0),
        "east": ((PLAZA_HALF, FACADE_HALF), (0, -1), (-1, 0, 0), "office", 15.0),
        "west": ((-PLAZA_HALF, -FACADE_HALF), (0, 1), (1, 0, 0), "arcade", 9.6),
    }
    n_mod = int(round(2 * FACADE_HALF / 4.0))
    for k, (name, (start, direction, normal, style, height)) in enumerate(sides.items()):
        # one generator per style: the north and south facades get the very same plain module
        srng = np.random.default_rng([int(seed), 8002, ("apartment", "office", "arcade").index(style)])
        plain = facade_module(srng, style, height)
        landmark = facade_module(srng, style, height, poster=posters[k])
        atlas = np.concatenate([plain, landmark], axis=1)
        mods = [0] * n_mod
        mods[int(rng.integers(1, n_mod - 1))] = 1
        objs.append(ObjectSpec(f"facade_{name}", facade_obj(folder / f"facade_{name}.obj", start, direction, normal,
                                                            mods, 2, 4.0, height),
                               _save(atlas, folder / f"facade_{name}.png")))
    # backdrop far away, hills from elevation models
    B, BZ = BACKDROP, 50.0
    backs = {
        "north": ([(-B, B, -2), (B, B, -2), (B, B, BZ), (-B, B, BZ)], (0, -1, 0)),
        "east": ([(B, B, -2), (B, -B, -2), (B, -B, BZ), (B, B, BZ)], (-1, 0, 0)),
        "south": ([(B, -B, -2), (-B, -B, -2), (-B, -B, BZ), (B, -B, BZ)], (0, 1, 0)),
        "west": ([(-B, -B, -2), (-B, B, -2), (-B, B, BZ), (-B, -B, BZ)], (1, 0, 0)),
    }
    profiles = dem_profiles()
    order = rng.permutation(len(profiles))
    for k, (name, (corners, normal)) in enumerate(backs.items()):
        tex = plaza_sky_texture(rng, profiles[int(order[k])])
        objs.append(ObjectSpec(f"sky_{name}", quad_obj(folder / f"sky_{name}.obj", corners, normal),
                               _save(tex, folder / f"sky_{name}.png")))
    # colonnades: identical columns with a beam on top
    col_mesh = prism_obj(folder / "column.obj", 0.35, 5.0, sides=8)
    col_tex = _save(column_texture(rng), folder / "column.png")
    beam_len = COLUMN_X[-1] - COLUMN_X[0] + 1.2
    beam_mesh = box_obj(folder / "beam.obj", beam_len, 0.9, 0.6)
    beam_tex = _save(stone_block_texture(rng, (0.84, 0.82, 0.76)), folder / "beam.png")
    for s in (-1, 1):
        for i, x in enumerate(COLUMN_X):
            objs.append(ObjectSpec(f"column{'ns'[s > 0]}{i}", col_mesh, col_tex, position=(x, s * COLONNADE_Y, 0.0)))
        objs.append(ObjectSpec(f"beam{'ns'[s > 0]}", beam_mesh, beam_tex, position=(0.0, s * COLONNADE_Y, 5.3)))
    # lamp posts: identical
    post_mesh = box_obj(folder / "lamp_post.obj", 0.16, 0.16, 4.2)
    head_mesh = box_obj(folder / "lamp_head.obj", 0.5, 0.5, 0.35)
    metal = _save(np.clip(np.array((0.12, 0.13, 0.15), np.float32)
                          * _luma_detail(_crop(rng, load_source(_HEIGHTMAP), 32, 32), 0.2), 0, 1), folder / "metal.png")
    lamp = _save(np.clip(np.array((0.95, 0.90, 0.70), np.float32) * _noise(rng, 32, 32, 2, 0.05), 0, 1), folder / "lamp.png")
    for s in (-1, 1):
        for i, y in enumerate(LAMP_Y):
            objs.append(ObjectSpec(f"lamp_post{'we'[s > 0]}{i}", post_mesh, metal, position=(s * LAMP_X, y, 2.1)))
            objs.append(ObjectSpec(f"lamp_head{'we'[s > 0]}{i}", head_mesh, lamp, position=(s * LAMP_X, y, 4.35)))
    # tree planters: identical
    planter_mesh = box_obj(folder / "planter.obj", 1.6, 1.6, 0.6)
    planter_tex = _save(stone_block_texture(rng, (0.55, 0.50, 0.46)), folder / "planter.png")
    trunk_mesh = prism_obj(folder / "trunk.obj", 0.15, 2.2, sides=6)
    trunk_tex = _save(np.clip(np.array((0.35, 0.25, 0.17), np.float32)
                              * _luma_detail(_crop(rng, load_source(_HEIGHTMAP), 32, 64), 0.3), 0, 1), folder / "trunk.png")
    canopy_mesh = prism_obj(folder / "canopy.obj", 1.5, 3.2, sides=8, top_radius=0.0)
    canopy_tex = _save(foliage_texture(rng), folder / "canopy.png")
    for i, (x, y) in enumerate(PLANTERS):
        objs.append(ObjectSpec(f"planter{i}", planter_mesh, planter_tex, position=(x, y, 0.3)))
        objs.append(ObjectSpec(f"trunk{i}", trunk_mesh, trunk_tex, position=(x, y, 0.6)))
        objs.append(ObjectSpec(f"canopy{i}", canopy_mesh, canopy_tex, position=(x, y, 2.3)))
    # the fountain: octagonal basin, pedestal and the bunny statue (landmark)
    objs.append(ObjectSpec("basin", prism_obj(folder / "basin.obj", FOUNTAIN_RADIUS, 0.55, sides=12),
                           _save(stone_block_texture(rng), folder / "basin.png")))
    objs.append(ObjectSpec("water", prism_obj(folder / "water.obj", FOUNTAIN_RADIUS - 0.25, 0.5, sides=12, z0=0.06),
                           _save(np.clip(np.array((0.20, 0.38, 0.50), np.float32) * _noise(rng, 64, 64, 4, 0.15), 0, 1),
                                 folder / "water.png")))
    objs.append(ObjectSpec("pedestal", box_obj(folder / "pedestal.obj", 1.0, 1.0, 1.8),
                           _save(stone_block_texture(rng, (0.60, 0.60, 0.62)), folder / "pedestal.png"),
                           position=(0.0, 0.0, 0.9)))
    yaw = float(rng.uniform(0, 2 * np.pi))
    qx = (math.sin(math.pi / 4), 0.0, 0.0, math.cos(math.pi / 4))      # bunny.obj is y-up
    from .assets import _quat_mul_xyzw

    objs.append(ObjectSpec("statue", str(pybullet_data_dir() / "bunny.obj"), "", position=(0.0, 0.0, 1.8 + 0.67 * 1.6),
                           orientation=_quat_mul_xyzw(_quat_z(yaw), qx), scale=(1.6, 1.6, 1.6),
                           rgba=(0.55, 0.42, 0.22, 1.0)))
    # the kiosk (landmark)
    objs.append(ObjectSpec("kiosk", box_obj(folder / "kiosk.obj", 3.0, 2.4, 2.6),
                           _save(kiosk_texture(rng), folder / "kiosk.png"), position=(KIOSK[0], KIOSK[1], 1.3),
                           orientation=_quat_z(float(rng.uniform(-0.3, 0.3)))))
    objs.append(ObjectSpec("kiosk_roof", box_obj(folder / "kiosk_roof.obj", 3.6, 3.0, 0.25),
                           _save(np.clip(np.array((0.70, 0.15, 0.12), np.float32) * _noise(rng, 32, 32, 2, 0.1), 0, 1),
                                 folder / "kiosk_roof.png"), position=(KIOSK[0], KIOSK[1], 2.75)))
    return SceneLayout(seed=int(seed), objects=objs, light_direction=(-0.5, -0.65, 1.0), obstacles=obstacles())
