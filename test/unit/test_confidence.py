"""pae_ros.confidence: max-likelihood sigma model, sigma hit rate, serialisation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pae_ros.confidence import (CHI3_RADIUS_68, CHI3_RADIUS_95, SigmaModel, covariance_6x6, sigma_hit_rate,
                                feature_matrix, fit_log_sigma, fit_sigma_model)


def _synthetic(n: int, theta: tuple[float, ...], seed: int):
    """Features f_i log-uniform, sigma = exp(a + sum b_i log f_i), error = norm of a 3-D N(0, sigma^2 I)."""
    rng = np.random.default_rng(seed)
    feats = {f"f{i}": np.exp(rng.uniform(-3, 1, size=n)) for i in range(len(theta) - 1)}
    names = sorted(feats)
    X = feature_matrix(feats, names)
    sigma = np.exp(X @ np.asarray(theta))
    err = np.linalg.norm(rng.normal(size=(n, 3)) * sigma[:, None], axis=1)
    return feats, names, X, sigma, err


def test_chi3_radii_are_the_68_and_95_quantiles():
    rng = np.random.default_rng(0)
    r = np.linalg.norm(rng.normal(size=(400_000, 3)), axis=1)
    assert np.mean(r <= CHI3_RADIUS_68) == pytest.approx(0.683, abs=0.003)
    assert np.mean(r <= CHI3_RADIUS_95) == pytest.approx(0.954, abs=0.002)


@pytest.mark.parametrize("theta", [(-1.5, 0.7), (0.3, -0.4), (-2.0, 0.5, 1.2)])
def test_fit_log_sigma_recovers_parameters(theta):
    _, _, X, _, err = _synthetic(6000, theta, seed=1)
    est = fit_log_sigma(X, err)
    np.testing.assert_allclose(est, theta, atol=0.06)


def test_fit_log_sigma_constant_model_is_the_closed_form_mle():
    rng = np.random.default_rng(2)
    err = np.linalg.norm(rng.normal(size=(3000, 3)) * 0.25, axis=1)
    est = fit_log_sigma(np.ones((3000, 1)), err)
    # MLE of an isotropic 3-D Gaussian: sigma^2 = mean(|e|^2) / 3
    assert est[0] == pytest.approx(0.5 * np.log(np.mean(err ** 2) / 3), abs=1e-6)
    assert np.exp(est[0]) == pytest.approx(0.25, rel=0.05)


def test_sigma_hit_rate_on_data_from_the_model():
    _, _, _, sigma, err = _synthetic(8000, (-1.0, 0.6), seed=3)
    c = sigma_hit_rate(err, sigma)
    assert c["within_1sigma"] == pytest.approx(0.683, abs=0.02)
    assert c["within_2sigma"] == pytest.approx(0.954, abs=0.01)
    assert c["expected_1sigma"] == 0.683 and c["expected_2sigma"] == 0.954
    # over- / under-confident sigmas are visible in the hit rate
    assert sigma_hit_rate(err, sigma * 0.5)["within_1sigma"] < 0.4
    assert sigma_hit_rate(err, sigma * 2.0)["within_1sigma"] > 0.95
    empty = sigma_hit_rate(np.array([]), np.array([]))
    assert empty["within_1sigma"] is None


def test_fit_sigma_model_end_to_end_and_calibrated():
    feats, names, _, sigma, err_p = _synthetic(6000, (-1.2, 0.8), seed=4)
    rng = np.random.default_rng(5)
    sigma_o = np.exp(-3.0 + 0.3 * np.log(feats[names[0]]))
    err_o = np.linalg.norm(rng.normal(size=(6000, 3)) * sigma_o[:, None], axis=1)
    m = fit_sigma_model(feats, names, err_p, err_o)
    np.testing.assert_allclose(m.theta_position, [-1.2, 0.8], atol=0.06)
    np.testing.assert_allclose(m.theta_orientation, [-3.0, 0.3], atol=0.06)
    sp, so = m.sigmas(feats)
    np.testing.assert_allclose(np.log(sp), np.log(sigma), atol=0.15)
    assert m.sigma_ref_m == pytest.approx(np.median(sp))
    assert m.hit_rate["frames"] == 6000
    assert m.hit_rate["position"]["within_1sigma"] == pytest.approx(0.683, abs=0.025)
    assert m.hit_rate["orientation"]["within_2sigma"] == pytest.approx(0.954, abs=0.015)
    # confidence: 0.5 at the reference sigma, decreasing in sigma, inside (0, 1)
    assert m.confidence(m.sigma_ref_m) == pytest.approx(0.5)
    conf = m.confidence(np.sort(sp))
    assert np.all(np.diff(conf) <= 0) and np.all((conf > 0) & (conf < 1))


def test_sigma_model_round_trip_through_json():
    feats, names, _, _, err = _synthetic(500, (-1.0, 0.5, 0.2), seed=6)
    m = fit_sigma_model(feats, names, err, err * 0.1)
    d = json.loads(json.dumps(m.to_dict()))  # the bundle header stores it as JSON
    m2 = SigmaModel.from_dict(d)
    assert m2 == m
    for a, b in zip(m.sigmas(feats), m2.sigmas(feats)):
        np.testing.assert_array_equal(a, b)
    # hit rates stored under the older key name are read; headers without them still load
    d["coverage"] = d.pop("hit_rate")
    assert SigmaModel.from_dict(d) == m
    d.pop("coverage")
    assert SigmaModel.from_dict(d).hit_rate == {}


def test_feature_matrix_floors_zero_features():
    X = feature_matrix({"a": np.array([0.0, 1.0, np.e])}, ["a"])
    assert np.all(np.isfinite(X))
    np.testing.assert_allclose(X[:, 0], 1.0)
    np.testing.assert_allclose(X[1:, 1], [0.0, 1.0])


def test_sigmas_are_clipped_to_finite_values():
    m = SigmaModel(["a"], [0.0, 50.0], [0.0, 50.0], sigma_ref_m=1.0)
    sp, so = m.sigmas({"a": np.array([1e9, 1e-9])})
    assert np.all(np.isfinite(sp)) and np.all(np.isfinite(so)) and np.all(sp > 0) and np.all(so > 0)


def test_covariance_6x6():
    c = covariance_6x6(0.2, 0.05)
    assert c.shape == (6, 6)
    np.testing.assert_allclose(np.diag(c), [0.04] * 3 + [0.0025] * 3)
    np.testing.assert_array_equal(c, c.T)
    assert np.count_nonzero(c - np.diag(np.diag(c))) == 0
