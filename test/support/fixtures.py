"""Session fixtures every tier shares: the tiny synthetic dataset, the tiny bundle trained on it,
and the textured room (SIFT-friendly) with its own tiny bundle and sparse map.

Each dataset and bundle is built once per test session; a test that needs a different training
config builds it with :func:`tiny_config` (the tiny config plus that test's changes).
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest

#: the tiny training config used by the fixtures (every key is a real config key)
TINY_CONFIG = {
    "seed": 0,
    "model": {"type": "posenet", "backbone": "tiny_cnn", "latent_dim": 64, "transformer_heads": 4},
    "input": {"resize": 48, "crop": 48, "random_crop": False, "color_jitter": 0.0},
    "apr": {"epochs": 12, "batch_size": 16, "lr": 2e-3, "lr_step_epochs": 8},
    "pae": {"epochs": 60, "batch_size": 32, "hidden": [32, 64]},
    "decoder": {"epochs": 5, "image_size": 32},
    # always publish the refined pose (refine: auto would decide on the tiny held-out walk; the
    # pipeline and refinement tests exercise refinement)
    "refine": {"enabled": True, "k": 3, "steps": 20, "lr": 0.1},
    "calibration": {"holdout_fraction": 0.15, "holdout_block": 4},
}


def tiny_config_dict(**sections) -> dict:
    """A deep copy of :data:`TINY_CONFIG` with each ``section={key: value}`` merged into it."""
    d = copy.deepcopy(TINY_CONFIG)
    for sec, vals in sections.items():
        d.setdefault(sec, {}).update(vals)
    return d


def tiny_config(preset: str | None = None, **sections):
    """:func:`tiny_config_dict` validated into a config (``preset`` applied first, as ``pae train``
    applies ``--preset`` under ``--config``)."""
    from pae_ros.config import config_from_dict

    return config_from_dict(tiny_config_dict(**sections), preset)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A 7Scenes-format dataset folder with one scene ``room`` (3 train walks, 1 test walk, 64x48)."""
    from pae_ros.datasets.synthetic import write_room_dataset

    root = tmp_path_factory.mktemp("tiny_dataset")
    write_room_dataset(root, "room", train_walks=3, test_walks=1, frames=40, width=64, height=48, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dataset, tmp_path_factory) -> Path:
    """A bundle (APR + PAE + decoder + calibration) trained on ``tiny_dataset`` by the same
    ``train_all`` that ``pae train`` runs, with a tiny backbone so it takes seconds on a CPU."""
    import torch

    from pae_ros.datasets import read_dataset
    from pae_ros.training.run import train_all

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("tiny_bundle") / "tiny.pae"
    train_all(tiny_config(), read_dataset(tiny_dataset, "7scenes", "train"), out, out.with_name("work"),
              device="cpu", show_progress=False)
    return out


#: the two-scene training config: an MS-Transformer-style APR and a scene-conditioned PAE
TWO_SCENE_CONFIG = {
    "model": {"type": "mstransformer", "backbone": "tiny_cnn", "latent_dim": 64, "transformer_heads": 4,
              "transformer_layers": 1, "transformer_ffn_dim": 64, "head_hidden_dim": 64, "orientation_stride": 16},
    "input": {"resize": 48, "crop": 48, "random_crop": False, "color_jitter": 0.0},
    "apr": {"epochs": 12, "batch_size": 16, "lr": 2e-3},
    "pae": {"epochs": 30, "batch_size": 32, "hidden": [32, 64]},
    "decoder": {"enabled": False},
    "calibration": {"holdout_fraction": 0.0},
}


@pytest.fixture(scope="session")
def two_scene_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """``(dataset root, bundle)``: two synthetic rooms ``room_a`` and ``room_b`` (different
    textures; 2 train walks and 1 test walk of 30 frames each) in one 7Scenes-format dataset, and a
    bundle trained on both with :data:`TWO_SCENE_CONFIG`."""
    import torch

    from pae_ros.config import config_from_dict
    from pae_ros.datasets import read_dataset
    from pae_ros.datasets.synthetic import write_room_dataset
    from pae_ros.training.run import train_all

    torch.set_num_threads(2)
    tmp = tmp_path_factory.mktemp("two_scene")
    root = tmp / "data"
    write_room_dataset(root, "room_a", train_walks=2, test_walks=1, frames=30, seed=1)
    write_room_dataset(root, "room_b", train_walks=2, test_walks=1, frames=30, seed=2)
    bundle = tmp / "two.pae"
    train_all(config_from_dict(TWO_SCENE_CONFIG), read_dataset(root, "7scenes", "train"), bundle, tmp / "work",
              device="cpu", show_progress=False)
    return root, bundle


@pytest.fixture(scope="session")
def textured_room(tmp_path_factory) -> Path:
    """Dataset root holding scene ``room`` of :mod:`support.geometric_scene` (3 train walks, 1 test
    walk, 14 frames each, 160x120, with ``intrinsics.json``)."""
    from support.geometric_scene import write_textured_room

    root = tmp_path_factory.mktemp("textured_room")
    write_textured_room(root, train_walks=3, test_walks=1, frames=14, step_m=0.15)
    return root


@pytest.fixture(scope="session")
def textured_bundle(textured_room, tmp_path_factory) -> Path:
    """A tiny bundle (APR + PAE, no decoder) trained by ``pae train`` on ``textured_room``; no map.
    Tests that write beside it take a copy (:func:`copy_textured_bundle`)."""
    import torch
    import yaml

    from pae_ros.cli import main

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("textured_bundle")
    cfg = tiny_config_dict(apr={"epochs": 2}, pae={"epochs": 5})
    cfg["decoder"] = {"enabled": False}
    (root / "cfg.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(cfg))))
    out = root / "model.pae"
    assert main(["train", "--data", str(textured_room), "--format", "7scenes", "--out", str(out),
                 "--config", str(root / "cfg.yaml"), "--device", "cpu", "--quiet"]) == 0
    return out


def copy_textured_bundle(textured_room: Path, textured_bundle: Path, root: Path) -> tuple[Path, Path]:
    """``root / "model.pae"`` (a copy of the textured bundle) and ``root / "data"`` (a link to the
    textured room); returns ``(root, bundle)``, the layout ``pae train --stage map`` tests use."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").symlink_to(textured_room, target_is_directory=True)
    out = root / "model.pae"
    shutil.copy2(textured_bundle, out)
    return root, out


class MappedBundle(NamedTuple):
    root: Path          #: ``root / "data"`` is the dataset
    bundle: Path        #: the bundle, its sparse map beside it
    descriptors: object  #: (N, D) float retrieval descriptors, one row per table row


@pytest.fixture(scope="session")
def textured_mapped(textured_room, textured_bundle, tmp_path_factory) -> MappedBundle:
    """A copy of ``textured_bundle`` with its sparse map beside it (``pae train --stage map``) and
    the retrieval descriptors of its table rows (the tiny bundle stores none; callers pass them as
    ``table_descriptors``, as ``pae eval`` computes them)."""
    from pae_ros.cli import main
    from pae_ros.datasets import load_rgb, read_dataset
    from pae_ros.geometric.build import frames_for_table
    from pae_ros.pipeline import Localizer

    root, out = copy_textured_bundle(textured_room, textured_bundle, tmp_path_factory.mktemp("textured_mapped"))
    assert main(["train", "--stage", "map", "--bundle", str(out), "--out", str(out), "--data", str(root / "data"),
                 "--format", "7scenes", "--device", "cpu", "--quiet"]) == 0
    loc = Localizer.from_bundle(out, device="cpu", geometric="off")
    frames = frames_for_table(loc.bundle, read_dataset(root / "data", "7scenes", "train").frames)
    desc = loc.describe([load_rgb(f.image_path) for f in frames])
    return MappedBundle(root, out, desc)
