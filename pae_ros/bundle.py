"""The checkpoint bundle: one file that training writes and the node reads.

Layout: a single `safetensors <https://github.com/huggingface/safetensors>`_ file. Tensors:
``apr.*`` (teacher weights), ``pae.*``, optional ``decoder.*``, and the train pose table
``table.positions`` (N, 3) float64 metres, ``table.quaternions`` (N, 4) float64 wxyz
camera-to-world, ``table.scene_idx`` (N,) int64. The safetensors metadata holds one JSON
header (key ``pae_ros``) with the format version, the full config, input size and
normalisation, scene names, the position normalisation (``position_mean`` m, ``position_scale``
m: the networks see ``(p - mean) / scale``), neighbour-metric scales, the confidence
calibration, and a SHA-256 digest of every tensor.

Loading never unpickles anything; a truncated, tampered or mismatched file raises
:class:`BundleError` with a message that says what is wrong. Writes are atomic (temporary file
in the same folder, fsync, rename), so a kill mid-write never leaves a corrupt bundle.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FORMAT_NAME = "pae_ros.bundle"
FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BundleError(RuntimeError):
    """The bundle file is missing, truncated, tampered with, or does not match this code."""


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of all tensors, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def atomic_write_bytes(path: Path, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` then fsync and atomically rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class Bundle:
    header: dict
    tensors: dict[str, torch.Tensor]
    path: Path | None = None

    @property
    def bundle_id(self) -> str:
        """Short content id (first 12 hex digits of the tensor digest)."""
        return self.header["digest"][:12]

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}

    def has(self, component: str) -> bool:
        return any(k.startswith(component + ".") for k in self.tensors)

    @property
    def table_positions(self) -> np.ndarray:
        return self.tensors["table.positions"].numpy()

    @property
    def table_quaternions(self) -> np.ndarray:
        return self.tensors["table.quaternions"].numpy()

    @property
    def table_scene_idx(self) -> np.ndarray:
        return self.tensors["table.scene_idx"].numpy()

    @property
    def position_mean(self) -> np.ndarray:
        return np.asarray(self.header["position_mean"], dtype=np.float64)

    @property
    def position_scale(self) -> float:
        return float(self.header["position_scale"])


def save_bundle(path: str | Path, header: dict, tensors: dict[str, torch.Tensor]) -> Bundle:
    """Write a bundle atomically; fills in format fields and the digest. Returns the saved bundle."""
    from safetensors.torch import save_file

    for name in ("table.positions", "table.quaternions", "table.scene_idx"):
        if name not in tensors:
            raise BundleError(f"cannot save a bundle without {name}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    header = dict(header)
    header.update(format=FORMAT_NAME, format_version=FORMAT_VERSION, digest=tensors_digest(tensors))
    header.setdefault("created_utc", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    from . import __version__

    header.setdefault("pae_ros_version", __version__)
    blob = json.dumps(header, sort_keys=True)
    atomic_write_bytes(Path(path), lambda tmp: save_file(tensors, tmp, metadata={"pae_ros": blob}))
    return Bundle(header, tensors, Path(path))


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle (format, version, digest). Raises :class:`BundleError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"bundle not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise BundleError(f"{path}: not a readable bundle (truncated or not a safetensors file): {e}") from None
    if "pae_ros" not in meta:
        raise BundleError(f"{path}: a safetensors file but not a pae_ros bundle (no 'pae_ros' header)")
    try:
        header = json.loads(meta["pae_ros"])
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: bundle header is not valid JSON: {e}") from None
    if header.get("format") != FORMAT_NAME:
        raise BundleError(f"{path}: unknown format {header.get('format')!r}")
    if header.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {header.get('format_version')} is not supported "
                          f"by this pae_ros (expects {FORMAT_VERSION}); re-export it or upgrade pae_ros")
    digest = tensors_digest(tensors)
    if digest != header.get("digest"):
        raise BundleError(f"{path}: content digest mismatch: the file was modified or corrupted after it was written")
    for name in ("table.positions", "table.quaternions", "table.scene_idx"):
        if name not in tensors:
            raise BundleError(f"{path}: missing tensor {name}")
    return Bundle(header, tensors, path)


def build_models(bundle: Bundle, device: str | torch.device = "cpu"):
    """Instantiate (apr, pae, decoder-or-None) from a bundle, weights loaded strictly, eval mode."""
    from .config import config_from_dict, ConfigError
    from .models import PoseAutoEncoder, build_apr, build_decoder

    try:
        cfg = config_from_dict(bundle.header["config"])
    except (ConfigError, KeyError) as e:
        raise BundleError(f"{bundle.path}: bundle config does not match this pae_ros: {e}") from None
    n_scenes = len(bundle.header["scenes"])

    def _load(module, prefix):
        try:
            module.load_state_dict(bundle.state_dict(prefix), strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise BundleError(f"{bundle.path}: {prefix} weights do not match the architecture in the bundle config: {first}") from None
        return module.to(device).eval()

    apr = _load(build_apr(cfg.model, n_scenes, pretrained_weights=False), "apr")
    pae = None
    if bundle.has("pae"):
        pae = _load(PoseAutoEncoder(cfg.model.latent_dim, cfg.pae.fourier_levels, cfg.pae.hidden, n_scenes), "pae")
    decoder = None
    if bundle.has("decoder"):
        decoder = _load(build_decoder(cfg.decoder.type, 2 * cfg.model.latent_dim, cfg.decoder.image_size), "decoder")
    return cfg, apr, pae, decoder
