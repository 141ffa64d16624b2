"""pae_ros.pipeline.Localizer on the tiny trained bundle: the contract the node and eval rely on."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pae_ros.bundle import BundleError, load_bundle, save_bundle
from pae_ros.confidence import SigmaModel
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
    # the confidence and sigma come from the bundle's calibrated "refined" model
    model = SigmaModel.from_dict(loc.bundle.header["calibration"]["refined"])
    sp, so = model.sigmas({k: np.array([e.extras[k]]) for k in model.features})
    assert e.sigma_position_m == pytest.approx(float(sp[0]), rel=1e-9)
    assert e.sigma_orientation_rad == pytest.approx(float(so[0]), rel=1e-9)
    assert e.confidence == pytest.approx(model.sigma_ref_m / (model.sigma_ref_m + e.sigma_position_m), rel=1e-9)
    assert set(model.features) <= set(e.extras) and len(e.extras["neighbors"]) == loc.k


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
    assert info["k"] == 3 and info["steps"] == 20 and info["decoder"] is True
    assert info["bundle_id"] == loc.bundle.bundle_id and info["calibrated"] == ["apr", "refined"]
    assert info["table_size"] == len(loc.bundle.table_positions)
    assert loc.warmup(1) > 0


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
    unc = Localizer.from_bundle(path, device="cpu")
    assert unc.info["calibrated"] == []
    for img in images[:3]:
        e = unc.localize(img)
        cal = loc.localize(img)
        np.testing.assert_allclose(e.position, cal.position, atol=1e-9)  # same pose, only the uncertainty differs
        assert e.confidence == 0.0
        assert e.sigma_position_m == pytest.approx(unc.position_scale)
        assert e.sigma_orientation_rad == pytest.approx(np.pi / 2)
        assert e.sigma_position_m > cal.sigma_position_m, "uncalibrated sigma must not be smaller than a calibrated one"
        np.testing.assert_allclose(np.diag(e.covariance), [unc.position_scale ** 2] * 3 + [(np.pi / 2) ** 2] * 3)


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
