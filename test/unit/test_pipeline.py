"""pae_ros.pipeline.Localizer on the tiny trained bundle: the contract the node and eval rely on."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pae_ros.bundle import BundleError, load_bundle, save_bundle
from pae_ros.datasets import load_rgb, read_dataset
from pae_ros.pipeline import Estimate, Localizer, resolve_device


@pytest.fixture(scope="module")
def loc(tiny_bundle) -> Localizer:
    return Localizer.from_bundle(tiny_bundle, device="cpu")


@pytest.fixture(scope="module")
def images(tiny_dataset) -> list[np.ndarray]:
    test = read_dataset(tiny_dataset, "7scenes", "test")
    return [load_rgb(f.image_path) for f in test.frames[::5]]


def _variant(tiny_bundle, tmp_path, name, header_fn=lambda h: h, drop=()):
    b = load_bundle(tiny_bundle)
    header = header_fn(dict(b.header))
    tensors = {k: v for k, v in b.tensors.items() if not k.startswith(tuple(p + "." for p in drop))}
    path = tmp_path / name
    save_bundle(path, header, tensors)
    return path


def _check_estimate(e: Estimate, loc: Localizer):
    assert e.position.shape == (3,) and e.apr_position.shape == (3,)
    assert e.quaternion.shape == (4,) and e.apr_quaternion.shape == (4,)
    for q in (e.quaternion, e.apr_quaternion):
        assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-9) and q[0] >= 0
    assert e.finite and np.all(np.isfinite(e.position))
    assert 0.0 <= e.confidence <= 1.0
    assert e.scene == "room"
    c = e.covariance
    assert c.shape == (6, 6)
    np.testing.assert_array_equal(c, c.T)
    assert np.all(np.linalg.eigvalsh(c) >= 0)
    np.testing.assert_allclose(np.diag(c), [e.sigma_position_m ** 2] * 3 + [e.sigma_orientation_rad ** 2] * 3,
                               rtol=1e-12)
    assert e.sigma_position_m > 0 and e.sigma_orientation_rad > 0


def test_localize_contract(loc, images):
    e = loc.localize(images[0])
    _check_estimate(e, loc)
    assert e.refined is True
    assert isinstance(e.confidence, float) and isinstance(e.sigma_position_m, float)
    assert e.method == "refined" and e.in_scene is True
    # the confidence and sigma come from the bundle's calibrated "refined" model, by hand:
    # log sigma = theta . [1, log f_1, ...] over the header's own numbers (not SigmaModel.sigmas)
    cal = loc.bundle.header["calibration"]["refined"]
    logf = [1.0] + [np.log(max(e.extras[n], 1e-6)) for n in cal["features"]]
    assert e.sigma_position_m == pytest.approx(np.exp(np.dot(cal["theta_position"], logf)), rel=1e-9)
    assert e.sigma_orientation_rad == pytest.approx(np.exp(np.dot(cal["theta_orientation"], logf)), rel=1e-9)
    assert e.confidence == pytest.approx(cal["sigma_ref_m"] / (cal["sigma_ref_m"] + e.sigma_position_m), rel=1e-9)
    assert len(e.extras["neighbors"]) == loc.k
    # the features are what their names say: spread = weighted RMS distance of the neighbours, / scale
    P = loc.bundle.table_positions[e.extras["neighbors"]]
    w = np.asarray(e.extras["weights"])
    spread = np.sqrt(w @ ((P - e.position) ** 2).sum(-1)) / loc.position_scale
    assert e.extras["spread"] == pytest.approx(spread, rel=1e-6)


def test_localize_batch_equals_single(loc, images):
    batch = loc.localize_batch(images)
    assert len(batch) == len(images)
    for img, b in zip(images, batch):
        s = loc.localize(img)
        _check_estimate(b, loc)
        for f in ("position", "quaternion", "apr_position", "apr_quaternion"):
            np.testing.assert_allclose(getattr(b, f), getattr(s, f), rtol=0, atol=1e-5, err_msg=f)
        for f in ("confidence", "sigma_position_m", "sigma_orientation_rad"):
            assert getattr(b, f) == pytest.approx(getattr(s, f), rel=1e-4, abs=1e-5), f
        np.testing.assert_allclose(b.covariance, s.covariance, rtol=1e-4, atol=1e-8)
        assert b.extras["neighbors"] == s.extras["neighbors"]


def test_any_image_size_and_bad_input(loc, images):
    img = images[0]
    sizes = [(96, 128), (300, 48), (48, 300), (37, 53)]
    for h, w in sizes:
        e = loc.localize(cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR))
        _check_estimate(e, loc)
    # a mixed-size batch
    mixed = loc.localize_batch([img, cv2.resize(img, (128, 96))])
    assert len(mixed) == 2
    with pytest.raises(ValueError, match="uint8"):
        loc.localize(img.astype(np.float32))
    with pytest.raises(ValueError, match="RGB"):
        loc.localize(img[..., 0])


def test_reconstruct(loc, tiny_dataset):
    train = read_dataset(tiny_dataset, "7scenes", "train")
    f0, f1 = train.frames[0], train.frames[60]
    r0 = loc.reconstruct(f0.position, f0.quaternion)
    assert r0.shape == (32, 32, 3) and r0.dtype == np.uint8
    r1 = loc.reconstruct(f1.position, -f1.quaternion, scene="room")
    assert r1.shape == (32, 32, 3)
    assert not np.array_equal(r0, r1), "the decoder ignores the pose"
    assert r0.std() > 0


def test_info_and_warmup(loc):
    info = loc.info
    assert info["scenes"] == ["room"] and info["refine"] is True and info["device"] == "cpu"
    uniform = loc.bundle.header["refine_weights"] == "uniform"  # the training's refine.weights: auto decision
    assert info["weights"] == ("uniform" if uniform else "pae")
    assert info["k"] == 3 and info["steps"] == (0 if uniform else 20) and info["decoder"] is True
    assert info["bundle_id"] == loc.bundle.bundle_id and info["calibrated"] == ["apr", "refined"]
    assert info["table_size"] == len(loc.bundle.table_positions)
    assert info["method"] == "refined" and info["candidates"] == "knn" and info["calibration_mismatch"] == {}


def test_warmup_runs_the_pipeline(tiny_bundle, monkeypatch):
    loc = Localizer.from_bundle(tiny_bundle, device="cpu")
    calls = []
    real = loc.localize

    def counting(rgb):
        calls.append(rgb.shape)
        return real(rgb)

    monkeypatch.setattr(loc, "localize", counting)
    loc.warmup(3)
    assert calls == [(loc.crop, loc.crop, 3)] * 3


def test_overrides(tiny_bundle, images):
    loc1 = Localizer.from_bundle(tiny_bundle, device="cpu", k=1)
    e = loc1.localize(images[0])
    table = loc1.bundle.table_positions
    np.testing.assert_array_equal(e.position, table[e.extras["neighbors"][0]])
    with pytest.raises(ValueError, match="k >= 1"):
        Localizer.from_bundle(tiny_bundle, device="cpu", k=0)
    loc0 = Localizer.from_bundle(tiny_bundle, device="cpu", steps=0, k=2)
    e0 = loc0.localize(images[0])
    np.testing.assert_allclose(e0.extras["weights"], [0.5, 0.5])


def test_device_errors():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    assert resolve_device("auto").type == "cpu"
    assert resolve_device("cpu").type == "cpu"


def test_localizer_cuda_without_gpu_is_a_clear_error(tiny_bundle):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(ValueError, match="'cuda' requested but no CUDA GPU is available"):
        Localizer.from_bundle(tiny_bundle, device="cuda")


def test_uncalibrated_bundle_is_honest(tiny_bundle, tmp_path, loc, images):
    def drop_cal(h):
        h.pop("calibration", None)
        return h

    path = _variant(tiny_bundle, tmp_path, "uncal.pae", drop_cal)
    # gate off on both sides: a gated frame gets the uninformative sigma whether calibrated or not
    unc = Localizer.from_bundle(path, device="cpu", ood=False)
    calibrated = Localizer.from_bundle(tiny_bundle, device="cpu", ood=False)
    assert unc.info["calibrated"] == []
    for img in images[:3]:
        e = unc.localize(img)
        cal = calibrated.localize(img)
        np.testing.assert_allclose(e.position, cal.position, atol=1e-9)  # same pose, only the uncertainty differs
        assert e.confidence == 0.0
        assert e.sigma_position_m == pytest.approx(unc.unknown_sigma_m) and unc.unknown_sigma_m >= unc.position_scale
        assert e.sigma_orientation_rad == pytest.approx(np.pi / 2)
        assert e.sigma_position_m > cal.sigma_position_m, "uncalibrated sigma must not be smaller than a calibrated one"
        np.testing.assert_allclose(np.diag(e.covariance), [unc.unknown_sigma_m ** 2] * 3 + [(np.pi / 2) ** 2] * 3)


def test_bundle_without_pae_or_decoder(tiny_bundle, tmp_path, images):
    no_dec = _variant(tiny_bundle, tmp_path, "nodec.pae", drop=("decoder",))
    assert Localizer.from_bundle(no_dec, device="cpu").reconstruct([0, 0, 0], [1, 0, 0, 0]) is None

    no_pae = _variant(tiny_bundle, tmp_path, "nopae.pae", drop=("pae", "decoder"))
    with pytest.raises(BundleError, match="no PAE"):
        Localizer.from_bundle(no_pae, device="cpu", refine=True)
    apr_only = Localizer.from_bundle(no_pae, device="cpu", refine=False)
    e = apr_only.localize(images[0])
    assert e.refined is False and e.confidence == 0.0
    np.testing.assert_array_equal(e.position, e.apr_position)


def test_onnx_backend_matches_torch_and_recovers_from_a_damaged_cache(tiny_bundle, tiny_dataset, tmp_path,
                                                                      monkeypatch):
    """backend=onnx (and auto on the CPU) gives the torch pipeline's estimates; the exported graph
    is cached per bundle id, and a damaged cache file is exported again instead of failing."""
    from pae_ros.datasets import load_rgb, read_dataset

    monkeypatch.setenv("PAE_ROS_CACHE", str(tmp_path / "cache"))
    images = [load_rgb(f.image_path) for f in read_dataset(tiny_dataset, "7scenes", "test").frames[:6]]
    ref = Localizer.from_bundle(tiny_bundle, device="cpu", backend="torch").localize_batch(images)
    onnx = Localizer.from_bundle(tiny_bundle, device="cpu", backend="auto")
    assert onnx.info["backend"] == "onnx"
    cached = list((tmp_path / "cache").glob("*.onnx"))
    assert len(cached) == 1 and onnx.bundle.bundle_id in cached[0].name
    for a, b in zip(ref, onnx.localize_batch(images)):
        np.testing.assert_allclose(b.apr_position, a.apr_position, atol=1e-4)
        np.testing.assert_allclose(b.position, a.position, atol=1e-4)
        assert min(np.abs(b.quaternion - a.quaternion).max(), np.abs(b.quaternion + a.quaternion).max()) < 1e-4
        assert b.sigma_position_m == pytest.approx(a.sigma_position_m, rel=1e-3)
    cached[0].write_bytes(b"not an onnx file")
    again = Localizer.from_bundle(tiny_bundle, device="cpu", backend="onnx")
    np.testing.assert_allclose(again.localize(images[0]).position, ref[0].position, atol=1e-4)
    with pytest.raises(ValueError, match="backend"):
        Localizer.from_bundle(tiny_bundle, device="cpu", backend="tensorrt")


def test_one_non_finite_row_leaves_the_others_refined_and_calibrated(tiny_bundle, images, monkeypatch):
    """A NaN APR output in one row leaves refinement and confidence on for the other rows of the
    batch."""
    loc = Localizer.from_bundle(tiny_bundle, device="cpu")
    clean = loc.localize_batch(images[:4])
    real = loc.predict_apr

    def poisoned(batch, descriptors=None):
        out = real(batch, descriptors)
        out.positions = out.positions.copy()
        out.positions[1] = np.nan
        return out

    monkeypatch.setattr(loc, "predict_apr", poisoned)
    ests = loc.localize_batch(images[:4])
    bad = ests[1]
    assert bad.finite is False and bad.refined is False and bad.confidence == 0.0
    assert bad.extras.get("out_of_scene") == ["non-finite"]
    for i in (0, 2, 3):
        e, c = ests[i], clean[i]
        assert e.refined and e.method == "refined" and e.finite
        np.testing.assert_allclose(e.position, c.position, atol=1e-9)
        # float32 APR outputs differ in the last bits between batch compositions (~1e-8 relative)
        assert e.confidence == pytest.approx(c.confidence, rel=1e-6) and e.confidence > 0
        assert e.sigma_position_m == pytest.approx(c.sigma_position_m, rel=1e-6)
        assert e.extras["neighbors"] == c.extras["neighbors"]


def test_published_header_and_overrides(tiny_bundle, tmp_path, images):
    def pub(value):
        def fn(h):
            h["published"] = value
            return h
        return fn

    apr_b = _variant(tiny_bundle, tmp_path, "pub_apr.pae", pub("apr"))
    ref_b = _variant(tiny_bundle, tmp_path, "pub_ref.pae", pub("refined"))
    e = Localizer.from_bundle(apr_b, device="cpu").localize(images[0])
    assert e.method == "apr" and e.refined is False
    np.testing.assert_array_equal(e.position, e.apr_position)
    # the APR's own sigma model serves an APR-published pose
    cal = load_bundle(apr_b).header["calibration"]["apr"]
    logf = [1.0] + [np.log(max(e.extras[n], 1e-6)) for n in cal["features"]]
    assert e.sigma_position_m == pytest.approx(np.exp(np.dot(cal["theta_position"], logf)), rel=1e-9)
    assert Localizer.from_bundle(ref_b, device="cpu").localize(images[0]).method == "refined"
    # explicit overrides win over the header
    assert Localizer.from_bundle(apr_b, device="cpu", refine=True).localize(images[0]).method == "refined"
    assert Localizer.from_bundle(ref_b, device="cpu", refine=False).localize(images[0]).method == "apr"
    assert Localizer.from_bundle(apr_b, device="cpu", refine="auto").info["refine"] is False
    with pytest.raises(BundleError, match="published"):
        Localizer.from_bundle(_variant(tiny_bundle, tmp_path, "pub_bad.pae", pub("magic")), device="cpu")


def test_calibration_settings_mismatch_warns(tiny_bundle, tmp_path, caplog):
    import logging

    def settings(h):
        h["calibration_settings"] = {"k": 3, "steps": 20, "lr": 0.1, "candidates": "knn"}
        h["refine_weights"] = "pae"  # the PAE fit with the config's 20 steps, as calibrated
        return h

    path = _variant(tiny_bundle, tmp_path, "calset.pae", settings)
    with caplog.at_level(logging.WARNING, logger="pae.pipeline"):
        same = Localizer.from_bundle(path, device="cpu")
    assert same.info["calibration_mismatch"] == {} and "calibrated for" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="pae.pipeline"):
        other = Localizer.from_bundle(path, device="cpu", k=5, steps=7)
    assert other.info["calibration_mismatch"] == {"k": [3, 5], "steps": [20, 7]}
    assert "calibrated for" in caplog.text and "k 3 -> 5" in caplog.text


def test_out_of_scene_gate(tiny_bundle, images):
    """The gate from the header (or given) decides in_scene; a gated frame gets confidence 0 and
    the uninformative covariance; fit_ood_gate thresholds are the in-scene quantiles."""
    from pae_ros.ood import apply_ood_gate, fit_ood_gate

    loc = Localizer.from_bundle(tiny_bundle, device="cpu")
    ests = loc.localize_batch(images)
    vals = np.array([e.extras["manifold"] for e in ests])
    ramp = np.arange(1, 102, dtype=float)                      # 1..101: the conformal 0.9 bound is the 92nd
    gate = fit_ood_gate({"manifold": ramp, "retrieval_cos": ramp / 101}, quantile=0.9, margin=2.0, cos_margin=0.05)
    assert gate["rules"]["manifold"]["above"] == pytest.approx(184.0)
    assert gate["rules"]["retrieval_cos"]["below"] == pytest.approx(10 / 101 - 0.05)
    tight = {"version": 1, "rules": {"manifold": {"above": float(np.median(vals))}}}
    gated = Localizer.from_bundle(tiny_bundle, device="cpu", ood=tight).localize_batch(images)
    for e, plain in zip(gated, ests):
        assert e.in_scene == (plain.extras["manifold"] <= np.median(vals))
        np.testing.assert_allclose(e.position, plain.position, atol=1e-9)  # the pose is still given
        if not e.in_scene:
            assert e.confidence == 0.0 and e.sigma_position_m == pytest.approx(loc.unknown_sigma_m)
            assert e.extras["out_of_scene"] == ["manifold"]
        else:
            assert e.confidence == pytest.approx(plain.confidence, rel=1e-9)
    assert 0 < sum(not e.in_scene for e in gated) < len(gated)
    # noise is far from the PAE manifold: a gate fitted on the in-scene frames rejects it
    fitted = fit_ood_gate({"manifold": np.concatenate([vals] * 3)})
    noise = np.random.default_rng(0).integers(0, 256, images[0].shape, dtype=np.uint8)
    inside, failed = apply_ood_gate(fitted, {"manifold": np.array([vals.max() * 10])}, 1)
    assert not inside[0] and failed == [["manifold"]]
    assert isinstance(Localizer.from_bundle(tiny_bundle, device="cpu", ood=fitted).localize(noise).in_scene, bool)
    with pytest.raises(ValueError, match="no usable feature"):
        fit_ood_gate({"manifold": np.ones(3)})


def test_gate_threshold_keeps_its_pass_rate_with_few_held_back_frames():
    """With 15 held-back frames the interpolated 0.9 quantile passes fewer than 90 % of new in-scene
    frames (about 15/16 * 0.9 ~ 0.85 on average); the conformal bound keeps at least 90 %."""
    from pae_ros.ood import conformal_threshold

    rng = np.random.default_rng(0)
    conf, interp = [], []
    for _ in range(4000):
        held, new = rng.gamma(2.0, size=15), rng.gamma(2.0, size=50)
        conf.append(np.mean(new <= conformal_threshold(held, 0.9)))
        interp.append(np.mean(new <= np.quantile(held, 0.9)))
    assert np.mean(conf) >= 0.9 > np.mean(interp)
    assert conformal_threshold(np.arange(5.0), 0.9) == 4.0          # too few values: the largest
    assert conformal_threshold(np.arange(5.0), 0.9, upper=False) == 0.0
    with pytest.raises(ValueError):
        conformal_threshold(np.array([]), 0.9)


def test_describe_shares_the_frozen_backbone_and_onnx_outputs_it(tiny_bundle, tmp_path, images, monkeypatch):
    """With a frozen backbone the retrieval descriptor is the APR backbone's pooled feature, from
    the same forward; the ONNX backend outputs it too."""
    from pae_ros.retrieval import normalise_descriptors

    def frozen(h):
        h["config"] = dict(h["config"])
        h["config"]["apr"] = dict(h["config"]["apr"], freeze_backbone=True)
        return h

    path = _variant(tiny_bundle, tmp_path, "frozen.pae", frozen)
    loc = Localizer.from_bundle(path, device="cpu")
    assert loc.shares_backbone
    d = loc.describe(images)
    batch = loc.preprocess(images)
    with torch.inference_mode():
        want = normalise_descriptors(loc.apr.backbone(batch)["pooled"])
    np.testing.assert_allclose(d, want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(loc.predict_apr(batch, descriptors=True).descriptors, want, atol=1e-6)
    monkeypatch.setenv("PAE_ROS_CACHE", str(tmp_path / "cache"))
    onnx = Localizer.from_bundle(path, device="cpu", backend="onnx")
    np.testing.assert_allclose(onnx.predict_apr(batch, descriptors=True).descriptors, want, atol=1e-4)
