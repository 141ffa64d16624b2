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
    """Read a checkpoint safely (``weights_only=True``). Raises RuntimeError with the path on failure.

    The message is one line of our own: torch's text for a refused file advises re-running with
    ``weights_only=False`` (arbitrary code execution), which a user must never be told to do."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/unsafe files
        text = str(e)
        if "Weights only load failed" in text or "Unsupported global" in text or "UnpicklingError" in type(e).__name__:
            import re

            g = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f" ({g.group(1)})" if g else ""
            why = (f"it holds Python objects a pae_ros checkpoint never contains{what}, so it was not written by "
                   f"pae_ros or was modified; it was not loaded (nothing in it ran). "
                   f"Pass --restart (or delete it) to start afresh")
        else:
            why = " ".join(text.split(". ")[0].split()) or type(e).__name__
        raise RuntimeError(f"cannot resume from {path}: {why}") from None


class CheckpointExistsError(ValueError):
    """A run would overwrite an earlier run's checkpoint; the message says how to go on."""


def checkpoint_epoch(path: Path) -> str:
    """``"epoch E/N"`` of a checkpoint for messages (``"unreadable"`` when it cannot be read)."""
    try:
        st = load_checkpoint(path)
    except RuntimeError:
        return "unreadable"
    return f"epoch {st.get('epoch', '?')}/{st.get('epochs', '?')}"


def module_digest(module) -> str:
    """Short SHA-256 of a module's state (names, dtypes, shapes, bytes): which teacher a PAE
    checkpoint, or which PAE a decoder checkpoint, was trained against."""
    from ..bundle import tensors_digest

    return tensors_digest({k: v.detach().cpu() for k, v in module.state_dict().items()})[:16]


def checkpoint_every(epochs: int, saves: int = 20) -> int:
    """Save every this many epochs (about ``saves`` checkpoints per stage, and always the last)."""
    return max(1, epochs // saves)


def load_resume_state(path: Path, expect: dict) -> dict:
    """Load a checkpoint to resume from; every ``expect`` item must equal the stored one."""
    state = load_checkpoint(path)
    for k, v in expect.items():
        if state.get(k) != v:
            raise RuntimeError(f"cannot resume from {path}: it was trained with a different {k.replace('_', ' ')} "
                               f"(pass --restart to discard it)")
    return state



def training_state(expect: dict, name: str, module, opt, sched, gen, epoch: int, last) -> dict:
    """The checkpoint of a simple training loop: ``expect`` (what a resume must match), the module's
    weights under ``name``, optimiser, scheduler and RNG state, the next epoch and the last losses."""
    return {**expect, name: module.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "generator": gen.get_state(), "epoch": epoch, "last": last}


def resume_training(path: Path, expect: dict, name: str, module, opt, sched, gen) -> tuple[int, object]:
    """Restore what :func:`training_state` saved (checked against ``expect``); returns (epoch, last)."""
    st = load_resume_state(path, expect)
    module.load_state_dict(st[name])
    opt.load_state_dict(st["optimizer"])
    sched.load_state_dict(st["scheduler"])
    gen.set_state(st["generator"])
    return int(st["epoch"]), st["last"]
