"""Shared fixtures: a small synthetic dataset and a bundle trained on it (once per session).

The dataset is the ray-cast room of :mod:`pae_ros.datasets.synthetic` (real 7Scenes on-disk
format, separate train and test walks). The bundle is trained for real by the same
``train_all`` that ``pae train`` runs, with a tiny backbone so it takes seconds on a CPU.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"

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


def pytest_configure(config):
    # one ROS domain per test session unless the caller chose one; tests isolate further per file
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


@pytest.fixture(autouse=True)
def _restore_logging():
    """Importing ``launch`` (test_launch.py, via launch_ros) sets the root logger to INFO and installs
    its own logger class for the rest of the process; put both back after every test so that
    ``caplog`` in later files sees what it would see when run alone."""
    import logging

    root, cls = logging.getLogger().level, logging.getLoggerClass()
    yield
    logging.getLogger().setLevel(root)
    if logging.getLoggerClass() is not cls:
        logging.setLoggerClass(cls)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A 7Scenes-format dataset folder with one scene ``room`` (3 train walks, 1 test walk, 64x48)."""
    from pae_ros.datasets.synthetic import write_room_dataset

    root = tmp_path_factory.mktemp("tiny_dataset")
    write_room_dataset(root, "room", train_walks=3, test_walks=1, frames=40, width=64, height=48, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dataset, tmp_path_factory) -> Path:
    """A bundle (APR + PAE + decoder + calibration) trained on ``tiny_dataset``."""
    import torch

    from pae_ros.config import config_from_dict
    from pae_ros.datasets import read_dataset
    from pae_ros.training.run import train_all

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("tiny_bundle") / "tiny.pae"
    cfg = config_from_dict(TINY_CONFIG)
    train_all(cfg, read_dataset(tiny_dataset, "7scenes", "train"), out, out.with_name("work"), device="cpu",
              show_progress=False)
    return out
