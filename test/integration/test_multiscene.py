"""Multi-scene: an MS-Transformer-style APR and a scene-conditioned PAE on two rooms.

Two synthetic rooms with different textures form one dataset (``two_scene_bundle``); after
training, the scene classifier separates the rooms, and refinement takes neighbours only from the
chosen room's part of the train table (the table mixes both).
"""
from __future__ import annotations

import numpy as np
import pytest

from pae_ros.datasets import load_rgb, read_dataset
from pae_ros.pipeline import Localizer

pytestmark = pytest.mark.timeout(300)


def test_two_scene_model_classifies_scene_and_refines_within_it(two_scene_bundle):
    root, bundle = two_scene_bundle
    train = read_dataset(root, "7scenes", "train")
    assert sorted({f.scene for f in train.frames}) == ["room_a", "room_b"]
    loc = Localizer.from_bundle(bundle, device="cpu")
    assert loc.scenes == ["room_a", "room_b"] and loc.info["model"] == "mstransformer"
    table_scene = loc.bundle.table_scene_idx
    # the scene classifier learned the two rooms (on the frames it saw: the tiny CNN overfits,
    # so its accuracy on the separate test walks, ~0.7 here, is not a useful bar)
    seen = train.frames[::3]
    ests = loc.localize_batch([load_rgb(f.image_path) for f in seen])
    correct = np.mean([e.scene == f.scene for e, f in zip(ests, seen)])
    assert correct >= 0.95, f"scene classification accuracy on training frames {correct:.2f}"
    # refinement of any frame draws its neighbours from the scene the APR chose, never the other
    test = read_dataset(root, "7scenes", "test")
    for e in ests + loc.localize_batch([load_rgb(f.image_path) for f in test.frames]):
        idx = np.asarray(e.extras["neighbors"])
        assert np.all(table_scene[idx] == loc.scenes.index(e.scene)), "neighbours from another scene"
    assert {e.scene for e in ests} == {"room_a", "room_b"}
