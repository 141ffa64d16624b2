"""Resumable training state, written atomically and read with ``torch.load(weights_only=True)``."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from ..bundle import atomic_write_bytes


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically write a dict of tensors / numbers / strings / state_dicts (no arbitrary objects)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()

    def _write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write_bytes(Path(path), _write)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint safely (``weights_only=True``). Raises RuntimeError with the path on failure."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/unsafe files
        raise RuntimeError(f"cannot resume from {path}: {e}") from None
