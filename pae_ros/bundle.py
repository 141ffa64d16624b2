"""The checkpoint bundle: one file that training writes and the node reads.

Layout: a single `safetensors <https://github.com/huggingface/safetensors>`_ file. Tensors:
``apr.*`` (teacher weights), ``pae.*``, optional ``decoder.*``, and the train pose table
``table.positions`` (N, 3) float64 metres, ``table.quaternions`` (N, 4) float64 wxyz
camera-to-world, ``table.scene_idx`` (N,) int64. The safetensors metadata holds one JSON
header (key ``pae_ros``) with the format version, the full config, input size and
normalisation, scene names, the position normalisation (``position_mean`` m, ``position_scale``
m: the networks see ``(p - mean) / scale``), neighbour-metric scales, the confidence
calibration and everything else that changes behaviour. A second metadata key,
``pae_ros_digest``, holds one SHA-256 over the exact bytes of that JSON header *and* the names,
dtypes, shapes and bytes of every tensor (:func:`bundle_digest`), so a change to any header
value (one digit of ``position_scale``) or any weight is detected on load. The loaded header
carries the digest as ``header["digest"]`` (the bundle id is its first 12 hex digits).

Loading never unpickles anything; a truncated, tampered or mismatched file raises
:class:`BundleError` with a message that says what is wrong. The digest detects corruption and
edits made without this code; it is not a signature (whoever can run :func:`save_bundle` can
write a valid bundle). Bundles of format version 1 (digest over the tensors only, header not
covered) are refused with advice: retrain, or re-seal a file you trust with
``pae bundle upgrade``. Writes are atomic (temporary file in the same folder, fsync, rename),
respect the umask like any new file, and a kill mid-write never leaves a corrupt bundle.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FORMAT_NAME = "pae_ros.bundle"
FORMAT_VERSION = 2
#: the safetensors metadata keys: the JSON header, and the digest over header bytes + tensors
HEADER_KEY = "pae_ros"
DIGEST_KEY = "pae_ros_digest"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BundleError(RuntimeError):
    """The bundle file is missing, truncated, tampered with, or does not match this code."""


def multi_scene_idx(scene_idx, n_scenes: int):
    """``scene_idx`` (per-row scene indices) when the bundle holds more than one scene, else None:
    with one scene there is nothing to restrict a search to or to condition a model on."""
    return scene_idx if n_scenes > 1 else None


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of all tensors, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def bundle_digest(header_blob: str, tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the exact header JSON text (UTF-8) and :func:`tensors_digest` of the tensors.

    Any change to the header text (a value, a key, even formatting) or to a tensor changes it.
    """
    h = hashlib.sha256()
    h.update(f"{FORMAT_NAME}/{FORMAT_VERSION}\0".encode())
    h.update(header_blob.encode("utf-8"))
    h.update(b"\0")
    h.update(tensors_digest(tensors).encode())
    return h.hexdigest()


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # fallback: read it by setting it (briefly process-wide)
    os.umask(old)
    return old


def atomic_write_bytes(path: Path, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` then fsync and atomically rename onto ``path``.

    The file gets the mode a plain ``open(path, "w")`` would give (``0666 & ~umask``, so 0644
    under umask 022), not the 0600 of the private temporary file it starts as.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
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

    def require(self, key: str):
        """``header[key]``, or :class:`BundleError` naming the bundle and the missing key."""
        try:
            return self.header[key]
        except KeyError:
            raise BundleError(f"{self.path}: bundle header has no {key!r} (written by another pae_ros?); "
                              f"retrain or re-export it") from None

    @property
    def position_mean(self) -> np.ndarray:
        """(3,) float64 metres, subtracted before the networks see a position."""
        try:
            return np.asarray(self.require("position_mean"), dtype=np.float64).reshape(3)
        except (TypeError, ValueError):
            raise BundleError(f"{self.path}: bundle header 'position_mean' is not 3 numbers") from None

    @property
    def position_scale(self) -> float:
        """Metres; the networks see ``(p - mean) / scale``."""
        try:
            v = float(self.require("position_scale"))
        except (TypeError, ValueError):
            raise BundleError(f"{self.path}: bundle header 'position_scale' is not a number") from None
        if not (np.isfinite(v) and v > 0):
            raise BundleError(f"{self.path}: bundle header 'position_scale' = {v} is not a positive finite number")
        return v


def save_bundle(path: str | Path, header: dict, tensors: dict[str, torch.Tensor]) -> Bundle:
    """Write a bundle atomically; fills in format fields and the digest. Returns the saved bundle
    (its header as a later :func:`load_bundle` returns it). Refuses (:class:`BundleError`, nothing
    written) a header with a NaN / infinity anywhere or a non-finite pose table."""
    from safetensors.torch import save_file

    for name in ("table.positions", "table.quaternions", "table.scene_idx"):
        if name not in tensors:
            raise BundleError(f"cannot save a bundle without {name}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    for name in ("table.positions", "table.quaternions"):
        if not bool(torch.isfinite(tensors[name]).all()):
            raise BundleError(f"cannot save a bundle whose {name} has non-finite values")
    header = dict(header)
    header.pop("digest", None)  # a re-saved loaded header: the digest is recomputed below
    header.update(format=FORMAT_NAME, format_version=FORMAT_VERSION)
    header.setdefault("created_utc", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    from . import __version__

    header.setdefault("pae_ros_version", __version__)
    try:
        blob = json.dumps(header, sort_keys=True, allow_nan=False)
    except ValueError as e:
        raise BundleError(f"cannot save a bundle whose header has a non-finite number: {e}") from None
    digest = bundle_digest(blob, tensors)
    atomic_write_bytes(Path(path), lambda tmp: save_file(tensors, tmp, metadata={HEADER_KEY: blob,
                                                                                 DIGEST_KEY: digest}))
    header = json.loads(blob)
    header["digest"] = digest
    return Bundle(header, tensors, Path(path))


def _check_path(path: Path) -> None:
    """Refuse a missing path, a folder or a FIFO/socket/device before opening it (a FIFO blocks)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BundleError(f"bundle not found: {path}") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot read the bundle: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise BundleError(f"{path}: is a directory, not a bundle file (give the .pae file inside it)")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise BundleError(f"{path}: is {kind}, not a bundle file")


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    _check_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError, UnicodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(f"{path}: not a readable bundle (truncated or not a safetensors file): {first}") from None
    if HEADER_KEY not in meta:
        raise BundleError(f"{path}: a safetensors file but not a pae_ros bundle (no 'pae_ros' header)")
    return meta, tensors


def _parse_header(path: Path, blob: str) -> dict:
    try:
        header = json.loads(blob)
    except (json.JSONDecodeError, RecursionError) as e:
        raise BundleError(f"{path}: bundle header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise BundleError(f"{path}: bundle header is not a JSON object")
    if header.get("format") != FORMAT_NAME:
        raise BundleError(f"{path}: unknown format {str(header.get('format'))[:60]!r}")
    return header


def load_bundle(path: str | Path) -> Bundle:
    """Read and verify a bundle (format, version, one digest over header and tensors).

    Raises :class:`BundleError` with one line naming the file and what is wrong.
    """
    path = Path(path)
    meta, tensors = _read(path)
    blob = meta[HEADER_KEY]
    header = _parse_header(path, blob)
    version = header.get("format_version")
    if version == 1:
        raise BundleError(f"{path}: bundle format version 1 predates the header checksum (its config, normalisation "
                          f"and calibration are not verified): retrain it, or if you trust this file re-seal it "
                          f"with `pae bundle upgrade {path} --out NEW.pae`")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {str(version)[:20]} is not supported "
                          f"by this pae_ros (expects {FORMAT_VERSION}); re-export/retrain it or upgrade pae_ros")
    stored = meta.get(DIGEST_KEY)
    if stored is None:
        raise BundleError(f"{path}: bundle has no digest ({DIGEST_KEY!r}): the file was modified after it was written")
    if bundle_digest(blob, tensors) != stored:
        raise BundleError(f"{path}: content digest mismatch: the header or the weights were modified or corrupted "
                          f"after the file was written; retrain or restore the bundle")
    for name in ("table.positions", "table.quaternions", "table.scene_idx"):
        if name not in tensors:
            raise BundleError(f"{path}: missing tensor {name}")
    header["digest"] = stored
    return Bundle(header, tensors, path)


def upgrade_bundle(path: str | Path, out: str | Path) -> Bundle:
    """Re-seal a format-1 bundle as the current format: checks its old tensor digest, then writes
    ``out`` with a digest over the header *as it is now*. Only for files you trust: an edit made
    to the old header before the upgrade is sealed in. Raises :class:`BundleError`."""
    path = Path(path)
    meta, tensors = _read(path)
    header = _parse_header(path, meta[HEADER_KEY])
    version = header.get("format_version")
    if version == FORMAT_VERSION:
        raise BundleError(f"{path}: already format version {FORMAT_VERSION}; nothing to upgrade")
    if version != 1:
        raise BundleError(f"{path}: cannot upgrade format version {str(version)[:20]} (only 1)")
    if tensors_digest(tensors) != header.get("digest"):
        raise BundleError(f"{path}: content digest mismatch: the weights were modified or corrupted; not upgrading")
    header.pop("format_version", None)
    return save_bundle(out, header, tensors)


def build_models(bundle: Bundle, device: str | torch.device = "cpu"):
    """Instantiate (apr, pae, decoder-or-None) from a bundle, weights loaded strictly, eval mode."""
    from .config import config_from_dict, ConfigError
    from .models import PoseAutoEncoder, build_apr, build_decoder

    try:
        cfg = config_from_dict(bundle.header["config"])
    except (ConfigError, KeyError) as e:
        raise BundleError(f"{bundle.path}: bundle config does not match this pae_ros: {e}") from None
    n_scenes = len(bundle.require("scenes"))

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
