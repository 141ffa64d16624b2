"""Bundle bytes, broken down, vs the bytes of the train images the PAE summarises.

Breakdown of the bundle file: APR, PAE, decoder, train pose table (tensor bytes), the
safetensors header (JSON: tensor index + the pae_ros header) and padding; parameter counts.
Train images: PNG files on disk, raw uint8 at their resolution, and raw uint8 at the decoder's
resolution (64 x 64 by default). Ratios: PAE (+ decoder, + table) vs those.

Defaults: ``--bundle out/demo/model.pae`` and ``--data data/demo_scene/courtyard`` (what
``pae demo`` writes). When missing, it says so and uses an untrained bundle of the quick preset
(same architecture, so the same bytes) and a synthetic room dataset of the demo's size
(4 walks x 150 frames, 256 x 192).

    .venv/bin/python bench/bench_memory.py [--bundle B] [--data SCENE_DIR]
"""
from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MB = 1e6


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file: from the PNG IHDR when it is a PNG, else by decoding it."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    from pae_ros.datasets import load_rgb

    h, w = load_rgb(path).shape[:2]
    return w, h


def safetensors_header_bytes(path: Path) -> tuple[int, int]:
    """(bytes of the safetensors header incl. its 8-byte length, bytes of the pae_ros JSON in it)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n)).get("__metadata__", {})
    return 8 + n, len(meta.get("pae_ros", "").encode())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=str(common.DEMO_BUNDLE), help="bundle file (default: the demo's)")
    p.add_argument("--data", default=str(common.DEMO_DATA),
                   help="7Scenes-format scene folder of the bundle's train images (default: the demo scene)")
    p.add_argument("--format", default="7scenes", choices=("7scenes", "cambridge"))
    p.add_argument("--tiny", action="store_true", help="fallbacks: tiny architecture and a tiny synthetic room")
    args = p.parse_args(argv)

    from pae_ros.bundle import build_models, load_bundle, save_bundle
    from pae_ros.datasets import read_dataset

    tmp = Path(tempfile.mkdtemp(prefix="pae_bench_memory_"))
    try:
        notes = []
        data = Path(args.data)
        if data.is_dir():
            train = read_dataset(data, args.format, "train")
            data_kind = "dataset"
        else:
            from pae_ros.datasets.synthetic import write_room_dataset

            w, h, walks, frames = (64, 48, 2, 20) if args.tiny else (256, 192, 4, 150)
            notes.append(f"data {data} missing: synthetic room, {walks} train walks x {frames} frames, {w}x{h}"
                         + ("" if args.tiny else " (the demo scene's size)"))
            scene = write_room_dataset(tmp / "data", "room", train_walks=walks, test_walks=1, frames=frames,
                                       width=w, height=h, seed=0)
            train = read_dataset(scene, "7scenes", "train")
            data_kind = "synthetic"
        bpath = Path(args.bundle)
        if bpath.is_file():
            bundle_kind = "trained"
        else:
            notes.append(f"bundle {bpath} missing: untrained {'tiny' if args.tiny else 'quick-preset'} bundle "
                         f"with the data's {len(train.frames)} train poses as its table")
            cfg = common.bench_config(tiny=args.tiny)
            header, tensors = common.untrained_parts(cfg, train.positions, train.quaternions)
            bpath = tmp / "untrained.pae"
            save_bundle(bpath, header, tensors)
            bundle_kind = "untrained"
        common.header("bench_memory", f"bundle {bundle_kind} {bpath.name}, data {data_kind} "
                                      f"({len(train.frames)} train frames)")
        for n in notes:
            print(f"# bench_memory: {n}", flush=True)

        bundle = load_bundle(bpath)
        total = bpath.stat().st_size
        parts: dict[str, int] = {}
        for name, t in bundle.tensors.items():
            key = name.split(".", 1)[0]
            parts[key] = parts.get(key, 0) + t.numel() * t.element_size()
        hdr_bytes, json_bytes = safetensors_header_bytes(bpath)
        _, apr, pae, dec = build_models(bundle, "cpu")
        params = {"apr": sum(p.numel() for p in apr.parameters()),
                  "pae": sum(p.numel() for p in pae.parameters()) if pae is not None else 0,
                  "decoder": sum(p.numel() for p in dec.parameters()) if dec is not None else 0}
        n_table = len(bundle.table_positions)
        base = {"bundle": bundle_kind}
        common.line("memory_bundle", base, total / MB, "MB", f"{total} bytes on disk, table {n_table} poses")
        for part in ("apr", "pae", "decoder", "table"):
            b = parts.get(part, 0)
            extra = f"{params[part]} parameters" if part in params else f"{n_table} poses x (3 + 4) float64 + scene index"
            common.line("memory_part", {**base, "part": part}, b / MB, "MB",
                        f"{b} bytes, {100 * b / total:.1f} % of the file; {extra}")
        pad = total - hdr_bytes - sum(parts.values())
        common.line("memory_part", {**base, "part": "header"}, hdr_bytes / MB, "MB",
                    f"{hdr_bytes} bytes, {100 * hdr_bytes / total:.1f} %: safetensors header, of which the "
                    f"pae_ros JSON (config, calibration, digests) {json_bytes} bytes; padding {pad} bytes")
        common.line("memory_pae_params", base, params["pae"], "parameters",
                    f"{parts.get('pae', 0)} bytes float32; APR {params['apr']}, decoder {params['decoder']}")

        paths = [f.image_path for f in train.frames]
        png = sum(Path(p_).stat().st_size for p_ in paths)
        sizes = [image_size(Path(p_)) for p_ in paths]
        raw = sum(w * h * 3 for w, h in sizes)
        uniq = sorted(set(sizes))
        res = f"{uniq[0][0]}x{uniq[0][1]}" if len(uniq) == 1 else f"{len(uniq)} sizes"
        dec_size = int(bundle.header["config"]["decoder"]["image_size"]) if dec is not None else 64
        raw_dec = len(paths) * dec_size * dec_size * 3
        img = {**base, "frames": len(paths), "resolution": res}
        suffixes = sorted({Path(p_).suffix.lstrip(".") for p_ in paths})
        common.line("memory_train_images", {**img, "form": "files"}, png / MB, "MB",
                    f"{'/'.join(suffixes)} files on disk, {png / len(paths) / 1e3:.1f} kB per frame")
        common.line("memory_train_images", {**img, "form": "raw_uint8"}, raw / MB, "MB",
                    f"H x W x 3 bytes at {res}")
        common.line("memory_train_images", {**img, "form": f"raw_uint8_{dec_size}x{dec_size}"}, raw_dec / MB, "MB",
                    "at the decoder's resolution")
        pae_b, dec_b, tab_b = parts.get("pae", 0), parts.get("decoder", 0), parts.get("table", 0)
        for what, b in (("pae", pae_b), ("pae+decoder", pae_b + dec_b), ("pae+decoder+table", pae_b + dec_b + tab_b)):
            common.line("memory_ratio", {**base, "summary": what}, 100 * b / png, "%_of_image_files",
                        f"{b / MB:.2f} MB vs {png / MB:.2f} MB image files; "
                        f"{100 * b / raw:.2f} % of raw {res}; {100 * b / raw_dec:.1f} % of raw "
                        f"{dec_size}x{dec_size}; {b / len(paths):.0f} bytes per train frame")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
