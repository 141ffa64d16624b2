"""``refine.weights: auto``: the PAE fit is kept only where it beats equal weights over the same
candidates on held-out walks; otherwise the bundle runs uniform weights (no PAE) and says so."""
from __future__ import annotations

import numpy as np
import pytest

from pae_ros.bundle import Bundle, load_bundle
from pae_ros.datasets import load_rgb, read_dataset
from pae_ros.pipeline import Localizer
from pae_ros.training.holdout_calibration import decide_weights, holdout_pass


def test_decide_weights_keeps_the_pae_only_when_its_interval_is_below_zero():
    rng = np.random.default_rng(0)
    uniform = rng.uniform(0.5, 1.5, 200)
    better = decide_weights(uniform * 0.7, uniform, "auto")
    assert better["weights"] == "pae" and better["difference_ci95_m"][1] < 0
    tie = decide_weights(uniform * rng.uniform(0.95, 1.05, 200), uniform, "auto")
    assert tie["weights"] == "uniform" and tie["difference_ci95_m"][0] < 0 < tie["difference_ci95_m"][1]
    worse = decide_weights(uniform * 1.3, uniform, "auto")
    assert worse["weights"] == "uniform" and worse["median_difference_m"] > 0
    # explicit settings decide whatever the figures
    assert decide_weights(uniform * 1.3, uniform, "pae")["weights"] == "pae"
    assert decide_weights(uniform * 0.7, uniform, "uniform")["weights"] == "uniform"
    assert decide_weights(uniform[:3], uniform[:3], "auto")["weights"] == "pae"  # nothing to decide on


def _with_header(b: Bundle, **kw) -> Bundle:
    return Bundle(dict(b.header, **kw), dict(b.tensors), b.path)


def test_uniform_weights_header_runs_the_candidates_mean(tiny_bundle, tiny_dataset):
    b = load_bundle(tiny_bundle)
    assert b.header["refine_weights"] in ("pae", "uniform")          # training recorded its decision
    assert b.header["refine_decision"]["weights"]["weights"] == b.header["refine_weights"]
    test = read_dataset(tiny_dataset, "7scenes", "test")
    imgs = [load_rgb(f.image_path) for f in test.frames[:6]]
    uni = Localizer(_with_header(b, refine_weights="uniform"), device="cpu", refine=True, candidates="knn")
    assert uni.steps == 0 and uni.info["weights"] == "uniform"
    apr = uni.predict_apr(uni.preprocess(imgs))
    ref = uni.refine(apr)
    P = np.asarray(b.table_positions)[ref.neighbors]
    w = np.where(ref.valid, 1.0, 0.0)
    np.testing.assert_allclose(ref.position, (w[..., None] * P).sum(1) / w.sum(1, keepdims=True), atol=1e-9)
    # an explicit step count wins over the header; the PAE fit moves the weights off uniform
    pae = Localizer(_with_header(b, refine_weights="uniform"), device="cpu", refine=True, candidates="knn", steps=30)
    assert pae.steps == 30 and pae.weights == "pae"
    assert np.abs(pae.refine(apr).weights - ref.weights).max() > 1e-3
    with pytest.raises(Exception, match="refine_weights"):
        Localizer(_with_header(b, refine_weights="magic"), device="cpu")


def test_auto_weights_switch_the_pae_off_when_its_fit_is_made_to_hurt(tiny_bundle, tiny_dataset):
    """Every table pose gets another (random) pose's PAE latent: the fit weighs the candidates by
    the wrong latents, equal weights do not; decide_weights must then pick uniform."""
    b = load_bundle(tiny_bundle)
    test = read_dataset(tiny_dataset, "7scenes", "test")
    imgs = [load_rgb(f.image_path) for f in test.frames]
    loc = Localizer(b, device="cpu", refine=True, candidates="knn", k=6, steps=60)
    tp = np.asarray(b.table_positions, np.float64)
    rng = np.random.default_rng(1)
    perm = rng.permutation(len(tp))  # every table pose gets another pose's latent
    loc.refiner.table_latents = loc.refiner.table_latents[perm]
    r = holdout_pass(loc, imgs, test.positions, test.quaternions)
    d = decide_weights(r["refined"]["pos_err"], r["uniform"]["pos_err"], "auto")
    assert d["weights"] == "uniform", d
