"""The out-of-scene gate's flip test (``flip_match``): a frame against the decoder's expected view.

The feature is negative when a frame matches the expected view better than its mirrored, upside-down
and 180-degree copies, positive for a flipped frame; calibration fits it on the held-out walk (the
bundle's decoder at the fold APR's poses); the Localizer computes it only when its gate has the rule,
so a gate fitted without it (an older bundle) runs as before.
"""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def room_frames():
    """Rendered 64x48 views of the synthetic room (posters and stripes: no symmetry)."""
    from pae_ros.datasets.synthetic import Room, render, walk
    from pae_ros.datasets.types import CameraIntrinsics

    room = Room(seed=0)
    intr = CameraIntrinsics(64, 48, 51.2, 51.2, 31.5, 23.5)
    pos, quat = walk(room, 12, 3, 0.3)
    return [render(room, p, q, intr) for p, q in zip(pos, quat)]


def test_flip_match_is_negative_in_scene_and_positive_for_every_flip(room_frames):
    from pae_ros.ood import flip_match
    from pae_ros.preprocess import crop, resize_shorter

    size = 32
    # the expected view: the frame itself as the decoder's training target (shorter side resized, centre crop)
    expected = np.stack([crop(resize_shorter(im, size), size) for im in room_frames]).transpose(0, 3, 1, 2) / 255.0
    blurred = expected * 0.7 + 0.15  # contrast does not matter (normalised cross-correlation)
    inside = flip_match(blurred, room_frames)
    assert inside.shape == (len(room_frames),) and np.all(inside < 0) and np.median(inside) < -0.3, inside
    for flip in (lambda im: im[:, ::-1], lambda im: im[::-1], lambda im: im[::-1, ::-1]):
        out = flip_match(blurred, [np.ascontiguousarray(flip(im)) for im in room_frames])
        assert np.all(out > 0) and np.median(out) > 0.3, out


def test_flip_rule_is_fitted_only_where_the_decoder_tells_frames_from_their_flips():
    from pae_ros.ood import FLIP_FEATURE, FLIP_MIN_NEGATIVE_SHARE, fit_ood_gate

    rng = np.random.default_rng(0)
    manifold = rng.uniform(0, 1, 100)
    telling = np.r_[-rng.uniform(0.05, 0.5, 80), rng.uniform(0, 0.1, 20)]      # 80 % negative
    gate = fit_ood_gate({"manifold": manifold, FLIP_FEATURE: telling})
    assert gate["rules"][FLIP_FEATURE]["above"] == pytest.approx(np.sort(telling)[95])  # ceil(0.95 * 101) = 96th
    blind = rng.uniform(-0.05, 0.1, 100)                                          # a decoder that cannot tell
    gate = fit_ood_gate({"manifold": manifold, FLIP_FEATURE: blind})
    assert FLIP_FEATURE not in gate["rules"] and "manifold" in gate["rules"]
    assert gate["left_out"][FLIP_FEATURE]["negative_share"] < FLIP_MIN_NEGATIVE_SHARE


def test_calibration_measures_the_flip_test_and_the_localizer_applies_it(tiny_bundle, tiny_dataset):
    from pae_ros.bundle import load_bundle
    from pae_ros.datasets import load_rgb, read_dataset
    from pae_ros.ood import FLIP_FEATURE
    from pae_ros.pipeline import Localizer

    gate = load_bundle(tiny_bundle).header["ood"]
    # the tiny bundle's 32 px decoder after 5 epochs: measured on the held-out walk, then left out or fitted
    assert FLIP_FEATURE in gate["rules"] or FLIP_FEATURE in gate["left_out"]
    imgs = [load_rgb(f.image_path) for f in read_dataset(tiny_dataset, "7scenes", "test").frames[::8]]
    # a threshold no frame can meet: every frame gated, the rule named, the feature in the extras
    strict = {**gate, "rules": {FLIP_FEATURE: {"above": -3.0}}}
    gated = Localizer.from_bundle(tiny_bundle, device="cpu", ood=strict, geometric="off").localize_batch(imgs)
    assert all(not e.in_scene and FLIP_FEATURE in e.extras["out_of_scene"] for e in gated)
    assert all(-2 <= e.extras[FLIP_FEATURE] <= 2 for e in gated)
    # a gate fitted without the rule: the feature is not computed and the verdicts are the other rules'
    old = {**gate, "rules": {k: v for k, v in gate["rules"].items() if k != FLIP_FEATURE}}
    plain = Localizer.from_bundle(tiny_bundle, device="cpu", ood=old, geometric="off").localize_batch(imgs)
    assert all(FLIP_FEATURE not in e.extras for e in plain)
    assert all(FLIP_FEATURE not in e.extras.get("out_of_scene", []) for e in plain)
