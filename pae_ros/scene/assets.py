"""Scene assets of the built-in demo scene: procedural textures and meshes, and the layout.

The scene is a walled courtyard ("courtyard"), built deterministically from a seed out of
image textures shipped in ``pybullet_data`` (grass, wood, metal, terrain, printed posters, the
duck) that are cropped, tinted and composed with numpy / OpenCV into new textures, so that
the appearance differs with the viewpoint: every ground tile, wall panel, crate and the
distant hills differ.

World frame (metres): x east, y north, z up; origin at the courtyard centre on the ground.
The courtyard spans ``[-HALF, HALF]^2`` (16 x 16 m), walls are ``WALL_HEIGHT`` high; the
camera walks stay inside ``[-WALK_HALF, WALK_HALF]^2`` and outside a disc of radius
``CENTRE_CLEARANCE`` around the central statue.

Nothing here imports pybullet; :func:`build_assets` writes the texture PNGs and OBJ meshes
into a folder and returns a JSON-serialisable :class:`SceneLayout` that
:class:`pae_ros.scene.render.SceneRenderer` loads.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

#: half side of the courtyard (walls at x, y = +-HALF), metres
HALF = 8.0
#: wall height, metres
WALL_HEIGHT = 4.0
#: the camera walks stay inside [-WALK_HALF, WALK_HALF]^2, metres
WALK_HALF = 5.5
#: the walks keep at least this distance from the centre (statue on a plinth), metres
CENTRE_CLEARANCE = 1.8
#: distance of the sky / hills backdrop from the centre, metres
BACKDROP = 50.0

# pybullet_data textures (relative paths) by role
_GROUND_DETAIL = ["tray/tray.jpg", "table/table.png", "heightmaps/gimp_overlay_out.png",
                  "roboschool/models_outdoor/stadium/stadium_grass.jpg", "laikago/laikago_tex.jpg"]
_GRASS = "roboschool/models_outdoor/stadium/stadium_grass.jpg"
_WOOD = "table/table.png"
_TERRAIN = "heightmaps/gimp_overlay_out.png"
_POSTERS = ["domino/domino.jpg", "duckCM.png", "jenga/jenga.png", "laikago/laikago_tex.jpg",
            "tray/tray.jpg", "colors16.png", "uvmap.png", "tex256.png", "cube.png",
            "checker_blue.png", "heightmaps/Maze.png", "quadruped/t-motor.jpg",
            "racecar/meshes/wheel.jpg", "franka_panda/meshes/visual/colors.png",
            "a1/meshes/trunk_A1.png", "aliengo/meshes/aliengo.png", "heightmaps/gimp_overlay_out.png"]


@dataclass
class ObjectSpec:
    """One rigid visual object of the scene.

    mesh: OBJ file (absolute path as str), in the object's frame, metres.
    texture: PNG file applied to the whole mesh, or "" for none.
    position: (x, y, z) of the object frame in the world, metres.
    orientation: quaternion **xyzw** (pybullet order) of the object frame in the world.
    rgba: colour multiplied with the texture (0..1).
    """

    name: str
    mesh: str
    texture: str
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rgba: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)


@dataclass
class SceneLayout:
    """Everything a renderer needs to rebuild the scene (JSON-serialisable via :meth:`to_dict`).

    light_direction: direction *towards* the light in the world frame (unit-less).
    """

    seed: int
    objects: list[ObjectSpec] = field(default_factory=list)
    light_direction: tuple[float, float, float] = (0.45, -0.3, 1.0)
    #: statue / obstacle discs (x, y, radius) in metres that camera walks must avoid
    obstacles: list[tuple[float, float, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SceneLayout":
        return cls(seed=int(d["seed"]), objects=[ObjectSpec(**o) for o in d["objects"]],
                   light_direction=tuple(d["light_direction"]),
                   obstacles=[tuple(o) for o in d.get("obstacles", [])])


# ---------------------------------------------------------------------------------------------
# image helpers (float32 RGB in [0, 1])

def pybullet_data_dir() -> Path:
    """Folder of the ``pybullet_data`` package (ships with the pybullet wheel)."""
    import pybullet_data  # small pure-data package, no pybullet import

    return Path(pybullet_data.getDataPath())


_CACHE: dict[str, np.ndarray] = {}


def load_source(rel: str) -> np.ndarray:
    """A pybullet_data texture as float32 RGB (H, W, 3) in [0, 1] (alpha composited on white)."""
    if rel not in _CACHE:
        path = pybullet_data_dir() / rel
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise FileNotFoundError(f"texture {path} missing or unreadable (pybullet_data incomplete?)")
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = img.astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)
        if img.shape[2] == 4:
            a = img[:, :, 3:4]
            img = img[:, :, :3] * a + (1.0 - a)
        _CACHE[rel] = np.ascontiguousarray(img[:, :, ::-1])  # BGR -> RGB
    return _CACHE[rel]


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    interp = cv2.INTER_AREA if (w < img.shape[1] and h < img.shape[0]) else cv2.INTER_LINEAR
    return cv2.resize(img, (int(w), int(h)), interpolation=interp)


def _crop(rng: np.random.Generator, img: np.ndarray, w: int, h: int, min_frac: float = 0.35) -> np.ndarray:
    """Random crop with the aspect of (w, h), at least ``min_frac`` of the source, resized to w x h."""
    H, W = img.shape[:2]
    aspect = w / h
    frac = rng.uniform(min_frac, 1.0)
    ch = int(max(4, min(H, W / aspect) * frac))
    cw = int(max(4, min(W, ch * aspect)))
    ch = int(max(4, min(H, cw / aspect)))
    y0 = int(rng.integers(0, H - ch + 1))
    x0 = int(rng.integers(0, W - cw + 1))
    return _resize(img[y0:y0 + ch, x0:x0 + cw], w, h)


def _luma_detail(img: np.ndarray, contrast: float) -> np.ndarray:
    """Zero-mean luminance detail of an image scaled to ``contrast``, (H, W, 1)."""
    y = img @ np.array([0.299, 0.587, 0.114], np.float32)
    y = (y - y.mean()) / (y.std() + 1e-6)
    return (1.0 + contrast * np.clip(y, -2.5, 2.5))[:, :, None]


def _noise(rng: np.random.Generator, h: int, w: int, cells: int, amp: float) -> np.ndarray:
    """Smooth value noise (h, w, 1) around 1 with amplitude ``amp``."""
    g = rng.normal(0.0, 1.0, (cells + 1, cells + 1)).astype(np.float32)
    return (1.0 + amp * cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC))[:, :, None]


def _save(img: np.ndarray, path: Path) -> str:
    u8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if not cv2.imwrite(str(path), np.ascontiguousarray(u8[:, :, ::-1])):
        raise OSError(f"cannot write {path}")
    return str(path)


# ---------------------------------------------------------------------------------------------
# textures

_MATERIALS = {  # base colours of the paving materials
    "sandstone": (0.80, 0.70, 0.52), "slate": (0.42, 0.45, 0.50), "terracotta": (0.72, 0.40, 0.28),
    "marble": (0.86, 0.86, 0.82), "basalt": (0.28, 0.28, 0.30), "ochre": (0.78, 0.60, 0.30),
}


def ground_texture(rng: np.random.Generator, px: int = 1024, tiles: int = 8) -> np.ndarray:
    """Paved courtyard floor: ``tiles x tiles`` squares of different paving / grass / wood,
    each subdivided into pavers with grout lines; texel (0, 0) is the world corner (-HALF, +HALF)."""
    t = px // tiles
    out = np.zeros((px, px, 3), np.float32)
    names = list(_MATERIALS)
    for i in range(tiles):
        for j in range(tiles):
            kind = rng.choice(["paving"] * 6 + ["grass", "wood"])
            if kind == "grass":
                tile = _crop(rng, load_source(_GRASS), t, t) * np.float32(rng.uniform(0.8, 1.1))
            elif kind == "wood":
                tile = _crop(rng, load_source(_WOOD), t, t) * np.array([0.85, 0.65, 0.45], np.float32) * 1.1
                for k in range(1, 4):  # planks
                    tile[k * t // 4 - 1:k * t // 4 + 1, :] *= 0.45
                if rng.random() < 0.5:
                    tile = np.ascontiguousarray(np.rot90(tile))
            else:
                base = np.array(_MATERIALS[names[int(rng.integers(len(names)))]], np.float32)
                detail = _luma_detail(_crop(rng, load_source(_GROUND_DETAIL[int(rng.integers(len(_GROUND_DETAIL)))]), t, t),
                                      float(rng.uniform(0.08, 0.25)))
                tile = base * detail * _noise(rng, t, t, 3, 0.06)
                n = int(rng.choice([1, 2, 4]))
                step = t // n
                for k in range(n):  # paver-to-paver colour variation
                    for m in range(n):
                        tile[k * step:(k + 1) * step, m * step:(m + 1) * step] *= np.float32(rng.uniform(0.85, 1.12))
                for k in range(1, n):  # grout
                    tile[k * step - 1:k * step + 1, :] = tile[k * step - 1:k * step + 1, :] * 0.4 + 0.15
                    tile[:, k * step - 1:k * step + 1] = tile[:, k * step - 1:k * step + 1] * 0.4 + 0.15
            tile = tile.copy()
            tile[:2, :] = 0.22
            tile[:, :2] = 0.22
            out[i * t:(i + 1) * t, j * t:(j + 1) * t] = tile
    return np.clip(out, 0.0, 1.0)


_WALL_STYLES = [  # (brick colour, mortar colour, brick w, brick h in metres)
    ((0.62, 0.26, 0.18), (0.75, 0.72, 0.66), 0.5, 0.22),
    ((0.82, 0.72, 0.50), (0.55, 0.50, 0.42), 0.6, 0.25),
    ((0.50, 0.52, 0.55), (0.30, 0.30, 0.32), 1.0, 0.5),
    ((0.88, 0.86, 0.80), (0.70, 0.70, 0.66), 2.0, 4.0),   # plaster
    ((0.35, 0.50, 0.42), (0.22, 0.30, 0.26), 0.8, 0.4),
]


def wall_texture(rng: np.random.Generator, style: int, length_m: float = 2 * HALF,
                 height_m: float = WALL_HEIGHT, ppm: int = 64) -> np.ndarray:
    """A wall: bricks / blocks / plaster of ``style`` with posters, windows and a door.

    Texel column 0 is the left end of the wall as seen from inside the courtyard, row 0 the top.
    ``ppm`` texels per metre.
    """
    w, h = int(length_m * ppm), int(height_m * ppm)
    brick, mortar, bw, bh = _WALL_STYLES[style % len(_WALL_STYLES)]
    brick = np.array(brick, np.float32)
    mortar = np.array(mortar, np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = mortar
    bwp, bhp = max(4, int(bw * ppm)), max(4, int(bh * ppm))
    detail = _luma_detail(_crop(rng, load_source("tray/tray.jpg"), w, h, 0.8), 0.10)
    for r, y0 in enumerate(range(h, -bhp, -bhp)):  # from the ground up
        off = (bwp // 2) * (r % 2)
        for x0 in range(-off, w, bwp):
            ya, yb = max(0, y0 - bhp + 1), min(h, y0 - 1)
            xa, xb = max(0, x0 + 1), min(w, x0 + bwp - 1)
            if ya < yb and xa < xb:
                img[ya:yb, xa:xb] = brick * np.float32(rng.uniform(0.82, 1.15))
    img *= detail * _noise(rng, h, w, 6, 0.08)
    # plinth band
    img[h - int(0.35 * ppm):, :] *= 0.6
    # windows, a door and posters at random, non-overlapping places along the wall
    slots = np.arange(0.6, length_m - 0.6, 0.1)
    used: list[tuple[float, float]] = []

    def place(width_m: float) -> float | None:
        for _ in range(40):
            x = float(rng.choice(slots))
            if x + width_m > length_m - 0.4:
                continue
            if all(x + width_m + 0.3 < a or x > b + 0.3 for a, b in used):
                used.append((x, x + width_m))
                return x
        return None

    def px(m: float) -> int:
        return int(round(m * ppm))

    door_x = place(1.4)
    if door_x is not None:
        x0, x1, y0 = px(door_x), px(door_x + 1.4), h - px(2.4)
        img[y0 - 4:, x0 - 4:x1 + 4] = 0.25
        wood = _crop(rng, load_source(_WOOD), x1 - x0, h - y0) * np.array(rng.uniform(0.3, 0.9, 3), np.float32)
        img[y0:, x0:x1] = wood
        img[y0:, (x0 + x1) // 2 - 1:(x0 + x1) // 2 + 1] = 0.1
    for _ in range(int(rng.integers(2, 4))):  # posters / murals (photo textures)
        pw = float(rng.uniform(1.4, 2.6))
        ph = float(rng.uniform(1.1, 1.9))
        x = place(pw)
        if x is None:
            continue
        bottom = float(rng.uniform(0.7, 1.3))
        x0, x1 = px(x), px(x + pw)
        y1 = h - px(bottom)
        y0 = y1 - px(ph)
        src = load_source(_POSTERS[int(rng.integers(len(_POSTERS)))])
        img[y0 - 5:y1 + 5, x0 - 5:x1 + 5] = np.array(rng.uniform(0.05, 0.6, 3), np.float32)
        img[y0:y1, x0:x1] = _crop(rng, src, x1 - x0, y1 - y0, 0.5)
    for _ in range(int(rng.integers(1, 4))):  # windows
        ww = float(rng.uniform(0.8, 1.4))
        x = place(ww)
        if x is None:
            continue
        x0, x1 = px(x), px(x + ww)
        y0, y1 = h - px(3.6), h - px(2.6)
        img[y0 - 3:y1 + 3, x0 - 3:x1 + 3] = 0.9
        glass = np.array([0.20, 0.28, 0.38], np.float32) * _noise(rng, y1 - y0, x1 - x0, 2, 0.2)
        img[y0:y1, x0:x1] = glass
        img[y0:y1, (x0 + x1) // 2 - 1:(x0 + x1) // 2 + 1] = 0.9
    return np.clip(img, 0.0, 1.0)


def sky_texture(rng: np.random.Generator, w: int = 1024, h: int = 512, height_m: float = 45.0) -> np.ndarray:
    """A backdrop side: sky gradient, clouds and hills (terrain texture); row 0 is the top
    (z = ``height_m``), the last row the ground (z = 0)."""
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]  # 0 top .. 1 bottom
    top = np.array([0.36, 0.56, 0.86], np.float32)
    hor = np.array([0.80, 0.87, 0.95], np.float32)
    img = np.broadcast_to(top * (1 - y) + hor * y, (h, w, 3)).copy()
    for _ in range(int(rng.integers(4, 9))):  # clouds
        cx, cy = int(rng.integers(0, w)), int(rng.uniform(0.1, 0.55) * h)
        ax, ay = int(rng.uniform(0.04, 0.12) * w), int(rng.uniform(0.02, 0.05) * h)
        mask = np.zeros((h, w), np.float32)
        cv2.ellipse(mask, (cx, cy), (ax, ay), 0, 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), 6)[:, :, None]
        img = img * (1 - 0.8 * mask) + 0.97 * 0.8 * mask
    # hills: heights in metres along the side, 12..32 m
    xs = np.linspace(0.0, 1.0, w, dtype=np.float32)
    ridge = np.full(w, rng.uniform(16, 22), np.float32)
    for k in range(1, 6):
        ridge += rng.uniform(1.0, 6.0) / k * np.sin(2 * np.pi * (k * xs + rng.random())).astype(np.float32)
    ridge_row = (h * (1 - np.clip(ridge, 8, 40) / height_m)).astype(int)
    terrain = _crop(rng, load_source(_TERRAIN), w, h, 0.6)
    haze = np.array([0.55, 0.65, 0.72], np.float32)
    hills = terrain * 0.55 + haze * 0.45
    rows = np.arange(h)[:, None]
    mask = (rows >= ridge_row[None, :])[:, :, None]
    img = np.where(mask, hills, img)
    return np.clip(img, 0.0, 1.0)


def crate_texture(rng: np.random.Generator, px: int = 128) -> np.ndarray:
    """A crate face: planks of wood, or a printed poster on a crate, with a dark frame."""
    if rng.random() < 0.5:
        img = _crop(rng, load_source(_WOOD), px, px) * np.array(rng.uniform(0.45, 1.0, 3), np.float32)
        for k in range(1, 5):
            img[k * px // 5 - 1:k * px // 5 + 1, :] *= 0.4
    else:
        img = _crop(rng, load_source(_POSTERS[int(rng.integers(len(_POSTERS)))]), px, px, 0.5)
    img = img.copy()
    b = max(2, px // 14)
    img[:b, :] = img[-b:, :] = 0.18
    img[:, :b] = img[:, -b:] = 0.18
    return np.clip(img, 0.0, 1.0)


def stone_texture(rng: np.random.Generator, px: int = 128) -> np.ndarray:
    """Dressed stone blocks for pillars and the plinth."""
    base = np.array(_MATERIALS[["sandstone", "marble", "slate", "ochre"][int(rng.integers(4))]], np.float32)
    img = base * _luma_detail(_crop(rng, load_source(_TERRAIN), px, px), 0.15) * _noise(rng, px, px, 3, 0.08)
    img = img.copy()
    for k in range(0, px, px // 4):
        img[k:k + 2, :] *= 0.5
    return np.clip(img, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# meshes (Wavefront OBJ with UVs and normals)

def _write_obj(path: Path, verts, uvs, normals, faces) -> str:
    """faces: triangles of (v, vt, vn) index triples, 0-based."""
    lines = ["# pae_ros demo scene mesh"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in uvs]
    lines += [f"vn {x:.6f} {y:.6f} {z:.6f}" for x, y, z in normals]
    for tri in faces:
        lines.append("f " + " ".join(f"{a + 1}/{b + 1}/{c + 1}" for a, b, c in tri))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def quad_obj(path: Path, corners, normal, uv_repeat=(1.0, 1.0)) -> str:
    """A quad from 4 corners (counter-clockwise seen from the front: bottom-left, bottom-right,
    top-right, top-left of the texture); UV (0,0) bottom-left of the image."""
    ru, rv = uv_repeat
    uvs = [(0, 0), (ru, 0), (ru, rv), (0, rv)]
    faces = [((0, 0, 0), (1, 1, 0), (2, 2, 0)), ((0, 0, 0), (2, 2, 0), (3, 3, 0))]
    return _write_obj(path, corners, uvs, [normal], faces)


def box_obj(path: Path, sx: float, sy: float, sz: float) -> str:
    """An axis-aligned box centred on the origin, sizes in metres, every face UV 0..1."""
    hx, hy, hz = sx / 2, sy / 2, sz / 2
    faces_def = [  # normal, 4 corners ccw from outside
        ((1, 0, 0), [(hx, -hy, -hz), (hx, hy, -hz), (hx, hy, hz), (hx, -hy, hz)]),
        ((-1, 0, 0), [(-hx, hy, -hz), (-hx, -hy, -hz), (-hx, -hy, hz), (-hx, hy, hz)]),
        ((0, 1, 0), [(hx, hy, -hz), (-hx, hy, -hz), (-hx, hy, hz), (hx, hy, hz)]),
        ((0, -1, 0), [(-hx, -hy, -hz), (hx, -hy, -hz), (hx, -hy, hz), (-hx, -hy, hz)]),
        ((0, 0, 1), [(-hx, -hy, hz), (hx, -hy, hz), (hx, hy, hz), (-hx, hy, hz)]),
        ((0, 0, -1), [(-hx, hy, -hz), (hx, hy, -hz), (hx, -hy, -hz), (-hx, -hy, -hz)]),
    ]
    verts, normals, faces = [], [], []
    uvs = [(0, 0), (1, 0), (1, 1), (0, 1)]
    for n, corners in faces_def:
        k = len(verts)
        ni = len(normals)
        normals.append(n)
        verts += corners
        faces.append(((k, 0, ni), (k + 1, 1, ni), (k + 2, 2, ni)))
        faces.append(((k, 0, ni), (k + 2, 2, ni), (k + 3, 3, ni)))
    return _write_obj(path, verts, uvs, normals, faces)


def _quat_z(yaw: float) -> tuple[float, float, float, float]:
    """xyzw quaternion of a rotation by ``yaw`` radians about the world z axis."""
    return (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))


# ---------------------------------------------------------------------------------------------

def build_assets(seed: int, folder: Path | str) -> SceneLayout:
    """Write the textures and meshes of the courtyard for ``seed`` into ``folder``.

    Deterministic: the same seed writes the same files (byte-identical) and layout.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), 7001])
    objs: list[ObjectSpec] = []
    H = HALF

    # ground: image row 0 at y=+H, column 0 at x=-H
    objs.append(ObjectSpec("ground", quad_obj(folder / "ground.obj",
                                              [(-H, -H, 0), (H, -H, 0), (H, H, 0), (-H, H, 0)], (0, 0, 1)),
                           _save(ground_texture(rng), folder / "ground.png")))
    # walls, seen from inside: corners bottom-left, bottom-right, top-right, top-left
    Z = WALL_HEIGHT
    walls = {
        "north": [(-H, H, 0), (H, H, 0), (H, H, Z), (-H, H, Z)],   # facing +y from inside, left is -x
        "east": [(H, H, 0), (H, -H, 0), (H, -H, Z), (H, H, Z)],
        "south": [(H, -H, 0), (-H, -H, 0), (-H, -H, Z), (H, -H, Z)],
        "west": [(-H, -H, 0), (-H, H, 0), (-H, H, Z), (-H, -H, Z)],
    }
    normals = {"north": (0, -1, 0), "east": (-1, 0, 0), "south": (0, 1, 0), "west": (1, 0, 0)}
    styles = rng.permutation(len(_WALL_STYLES))
    for k, (name, corners) in enumerate(walls.items()):
        tex = wall_texture(rng, int(styles[k]))
        objs.append(ObjectSpec(f"wall_{name}", quad_obj(folder / f"wall_{name}.obj", corners, normals[name]),
                               _save(tex, folder / f"wall_{name}.png")))
    # backdrop (sky and hills) far away, facing the centre
    B, BZ = BACKDROP, 45.0
    backs = {
        "north": [(-B, B, -2), (B, B, -2), (B, B, BZ), (-B, B, BZ)],
        "east": [(B, B, -2), (B, -B, -2), (B, -B, BZ), (B, B, BZ)],
        "south": [(B, -B, -2), (-B, -B, -2), (-B, -B, BZ), (B, -B, BZ)],
        "west": [(-B, -B, -2), (-B, B, -2), (-B, B, BZ), (-B, -B, BZ)],
    }
    for name, corners in backs.items():
        objs.append(ObjectSpec(f"sky_{name}", quad_obj(folder / f"sky_{name}.obj", corners, normals[name]),
                               _save(sky_texture(rng), folder / f"sky_{name}.png")))
    # corner pillars (outside the walk area)
    for k, (x, y) in enumerate([(-6.9, -6.9), (6.9, -6.9), (6.9, 6.9), (-6.9, 6.9)]):
        mesh = box_obj(folder / f"pillar{k}.obj", 0.6, 0.6, 3.4)
        objs.append(ObjectSpec(f"pillar{k}", mesh, _save(stone_texture(rng), folder / f"pillar{k}.png"),
                               position=(x, y, 1.7)))
    # the statue: the pybullet duck on a stone plinth at the centre
    objs.append(ObjectSpec("plinth", box_obj(folder / "plinth.obj", 1.2, 1.2, 0.8),
                           _save(stone_texture(rng), folder / "plinth.png"), position=(0.0, 0.0, 0.4)))
    duck_yaw = float(rng.uniform(0, 2 * np.pi))
    # duck.obj is y-up: rotate +90 deg about x, then yaw about z
    qx = (math.sin(math.pi / 4), 0.0, 0.0, math.cos(math.pi / 4))
    qz = _quat_z(duck_yaw)
    q = _quat_mul_xyzw(qz, qx)
    objs.append(ObjectSpec("duck", str(pybullet_data_dir() / "duck.obj"), str(pybullet_data_dir() / "duckCM.png"),
                           position=(0.0, 0.0, 0.8 - 0.099 * 0.8), orientation=q, scale=(0.8, 0.8, 0.8)))
    # crates along the walls, between the walk area and the walls
    n_crates = 14
    placed: list[tuple[float, float, float]] = []
    k = 0
    tries = 0
    while k < n_crates and tries < 500:
        tries += 1
        side = int(rng.integers(4))
        s = float(rng.uniform(0.5, 1.1))
        along = float(rng.uniform(-6.2, 6.2))
        depth = float(rng.uniform(WALK_HALF + 0.9 + s / 2, H - s * 0.75))
        x, y = [(along, depth), (depth, along), (along, -depth), (-depth, along)][side]
        if any(math.hypot(x - a, y - b) < (s + r) * 0.75 for a, b, r in placed):
            continue
        if abs(abs(x) - 6.9) < 0.3 + s / 2 and abs(abs(y) - 6.9) < 0.3 + s / 2:
            continue  # keep clear of the corner pillars
        placed.append((x, y, s))
        yaw = float(rng.uniform(-0.4, 0.4))
        mesh = box_obj(folder / f"crate{k}.obj", s, s, s)
        objs.append(ObjectSpec(f"crate{k}", mesh, _save(crate_texture(rng), folder / f"crate{k}.png"),
                               position=(x, y, s / 2), orientation=_quat_z(yaw)))
        if rng.random() < 0.35:  # a smaller crate on top
            s2 = s * float(rng.uniform(0.5, 0.8))
            mesh = box_obj(folder / f"crate{k}b.obj", s2, s2, s2)
            objs.append(ObjectSpec(f"crate{k}b", mesh, _save(crate_texture(rng), folder / f"crate{k}b.png"),
                                   position=(x, y, s + s2 / 2), orientation=_quat_z(yaw + float(rng.uniform(-0.6, 0.6)))))
        k += 1
    return SceneLayout(seed=int(seed), objects=objs, obstacles=[(0.0, 0.0, CENTRE_CLEARANCE)])


def _quat_mul_xyzw(a, b) -> tuple[float, float, float, float]:
    """Hamilton product a*b of xyzw quaternions."""
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return (aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz)
