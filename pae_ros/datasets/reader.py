"""``read_dataset``: one entry point over the 7Scenes, Cambridge and label-CSV readers."""
from __future__ import annotations

from pathlib import Path

from . import cambridge, seven_scenes
from ..image_codec import compressed_size
from .common import INTRINSICS_FILE, Issues, load_intrinsics, log
from .images import check_image_file
from .label_csv import read_label_csv
from .types import SEVEN_SCENES_INTRINSICS, CameraIntrinsics, DatasetError, DatasetSplit, Frame

FORMATS = ("7scenes", "cambridge", "csv")
SPLITS = ("train", "test")

_SCENE_READERS = {
    "7scenes": (seven_scenes.is_scene_dir, seven_scenes.read_scene, SEVEN_SCENES_INTRINSICS),
    "cambridge": (cambridge.is_scene_dir, cambridge.read_scene, None),
}


def find_scene_dirs(root: Path, fmt: str, scenes: list[str] | None = None) -> list[Path]:
    """Scene directories under ``root``: ``root`` itself if it is a scene, else its sub-folders
    that are scenes (sorted by name), restricted to ``scenes`` when given."""
    is_scene = _SCENE_READERS[fmt][0]
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder missing")
    if is_scene(root):
        if scenes is not None and root.name not in scenes:
            raise DatasetError(f"{root}: is the scene {root.name!r}, not one of the requested {scenes}")
        return [root]
    if scenes is not None:
        dirs = [root / s for s in scenes]
        absent = [str(d) for d in dirs if not d.is_dir()]
        if absent:
            raise DatasetError(f"requested scene folder(s) missing: {', '.join(absent)}")
        return dirs
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and is_scene(d))
    if not dirs:
        raise DatasetError(f"{root}: neither a {fmt} scene nor a folder of {fmt} scenes "
                           f"(no split files found)")
    return dirs


def read_dataset(root: str | Path, fmt: str, split: str, scenes: list[str] | None = None,
                 on_error: str = "raise", check_images: bool = True,
                 data_root: str | Path | None = None, quat_convention: str = "auto") -> DatasetSplit:
    """Read one split of a dataset into camera-to-world frames (metres, wxyz, OpenCV axes).

    Args:
        root: for ``"7scenes"`` / ``"cambridge"`` a scene folder or a folder of scene folders
            (detected); for ``"csv"`` the label CSV file.
        fmt: ``"7scenes"``, ``"cambridge"`` or ``"csv"``.
        split: ``"train"`` or ``"test"``.
        scenes: keep only these scene names (default: all found).
        on_error: ``"raise"`` (default) raises :class:`DatasetError` at the first bad entry;
            ``"skip"`` drops it and records the reason in ``DatasetSplit.skipped``.
        check_images: require every image file to exist; with ``on_error="skip"`` also
            require it to decode (:func:`check_image_file`: empty, truncated, corrupt or
            oversized images are skipped here rather than failing later in training).
        data_root: ``"csv"`` only: folder the ``img_path`` column is relative to
            (default: the CSV's folder).
        quat_convention: ``"csv"`` only: see :mod:`pae_ros.datasets.label_csv`.

    Raises:
        DatasetError: a missing folder / split file, a bad entry (``on_error="raise"``), or no
            frames at all. Messages name the file and line.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if scenes is not None:
        scenes = [scenes] if isinstance(scenes, str) else list(scenes)
    issues = Issues(on_error)
    frames: list[Frame]
    intrinsics: dict[str, CameraIntrinsics | None]
    if fmt == "csv":
        frames, intrinsics = read_label_csv(Path(root), split, issues, scenes=scenes,
                                            data_root=None if data_root is None else Path(data_root),
                                            check_images=check_images,
                                            quat_convention=quat_convention)
        scene_root = Path(data_root).resolve() if data_root is not None else Path(root).resolve().parent
        files = {s: scene_root / s / INTRINSICS_FILE for s in intrinsics}
        what = f"{Path(root).resolve()} ({split})"
    else:
        _, read_scene, default_k = _SCENE_READERS[fmt]
        frames, intrinsics, files = [], {}, {}
        scene_dirs = find_scene_dirs(Path(root), fmt, scenes)
        for d in scene_dirs:
            scene_frames = read_scene(d, split, issues, check_images)
            frames.extend(scene_frames)
            intrinsics[d.name] = load_intrinsics(d, default_k)
            if scene_frames and default_k is not None and not (d / INTRINSICS_FILE).is_file():
                intrinsics[d.name] = _default_fits(d, scene_frames[0].image_path, default_k, fmt)
            files[d.name] = d / INTRINSICS_FILE
        what = f"{Path(root).resolve()} ({fmt} {split})"
    # "file": intrinsics.json; "default": the format's camera (scaled); "none": unknown (no file, and the
    # default cannot describe the images)
    source = {s: ("none" if k is None else "file" if files[s].is_file() else "default") for s, k in intrinsics.items()}
    if check_images and on_error == "skip":
        frames = _decodable(frames, issues)
    issues.log_summary(what)
    if not frames:
        extra = f"; {len(issues.skipped)} entries skipped, first: {issues.skipped[0]}" if issues.skipped else ""
        sel = f" for scenes {scenes}" if scenes is not None else ""
        raise DatasetError(f"{what}: no frames{sel}{extra}")
    return DatasetSplit(frames, issues.skipped, intrinsics, files, source)


def _default_fits(scene_dir: Path, image: Path, default: CameraIntrinsics, fmt: str) -> CameraIntrinsics | None:
    """``default`` when the scene's images have its aspect ratio (it is scaled to their size),
    else None (unknown) and a warning naming ``intrinsics.json`` and its fields."""
    try:
        _, w, h = compressed_size(image.read_bytes()[:65536])
    except (OSError, ValueError):
        return default  # unreadable here: the image reader reports it with its own message
    if abs(w * default.height - h * default.width) <= max(w, h) // 100:  # same aspect within 1 %
        return default
    log.warning("%s: images are %dx%d but there is no %s, and the %s default intrinsics are for %dx%d "
                "(f=%g): the intrinsics are unknown. Write %s with {\"width\", \"height\", \"fx\", \"fy\", "
                "\"cx\", \"cy\"} (pixels, of these images) to give them", scene_dir, w, h, INTRINSICS_FILE, fmt,
                default.width, default.height, default.fx, scene_dir / INTRINSICS_FILE)
    return None


def _decodable(frames: list[Frame], issues: Issues) -> list[Frame]:
    """The frames whose image decodes; the others are reported to ``issues`` (file named)."""
    good = []
    for f in frames:
        try:
            check_image_file(f.image_path)
        except DatasetError as e:
            issues.report(str(e))
            continue
        good.append(f)
    return good
