"""``pae export``: export a bundle's APR to ONNX (image -> pose in metres + latents).

The ONNX graph takes a preprocessed batch ``image`` (B, 3, S, S) float32 (ImageNet-normalised
RGB, the bundle's crop size S) and returns ``position`` (B, 3) metres (denormalisation folded
in), ``quaternion`` (B, 4) wxyz unit with w >= 0, ``latent`` (B, 2D) and ``scene`` (B,) int64.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="bundle file written by pae train")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime agreement check")


def export_onnx(bundle_path, out_path, opset: int = 17) -> Path:
    """Export a bundle's APR to ``out_path`` (see :mod:`pae_ros.onnx_apr` for the graph)."""
    from ..onnx_apr import export_apr
    from ..pipeline import Localizer

    loc = Localizer.from_bundle(bundle_path, device="cpu", refine=False)
    return export_apr(loc.apr, loc.position_mean, loc.position_scale, loc.crop, out_path, opset)


def build_export_module(loc):
    """The exported module (APR + denormalisation + quaternion normalisation) of a Localizer."""
    from ..onnx_apr import APRExport

    return APRExport(loc.apr, loc.position_mean, loc.position_scale).eval()


def check_agreement(bundle_path, onnx_path, n: int = 4, seed: int = 0) -> float:
    """Max abs difference between torch and ONNX Runtime outputs (position m, quaternion, latent)."""
    import onnxruntime as ort
    import torch

    from ..pipeline import Localizer

    loc = Localizer.from_bundle(bundle_path, device="cpu", refine=False)
    module = build_export_module(loc)
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 3, loc.crop, loc.crop)).astype(np.float32))
    with torch.inference_mode():
        ref = [t.numpy() for t in module(x)[:3]]
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["position", "quaternion", "latent"], {"image": x.numpy()})
    return float(max(np.abs(a - b).max() for a, b in zip(ref, got)))


def run(args) -> int:
    from ..bundle import BundleError

    try:
        path = export_onnx(args.bundle, args.out, args.opset)
    except BundleError as e:
        print(f"pae export: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if not args.no_check:
        diff = check_agreement(args.bundle, path)
        print(f"ONNX Runtime vs torch: max abs difference {diff:.2e}")
        if diff > 1e-3:
            print("pae export: outputs disagree by more than 1e-3", file=sys.stderr)
            return 1
    return 0
