"""pae_ros.bundle: round trip, corruption detection, no unpickling, strict model loading, atomic writes."""
from __future__ import annotations

import builtins
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from pae_ros.bundle import (FORMAT_NAME, FORMAT_VERSION, Bundle, BundleError, atomic_write_bytes, build_models,
                            load_bundle, save_bundle, tensors_digest)
from pae_ros.config import config_from_dict
from pae_ros.models import PoseAutoEncoder, build_apr

from conftest import TINY_CONFIG


def _small_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "apr.w": torch.randn(16, 8, generator=g),
        "apr.b": torch.randn(8, generator=g).double(),
        "pae.x": torch.arange(100, dtype=torch.int64),
        "table.positions": torch.randn(20, 3, generator=g, dtype=torch.float64),
        "table.quaternions": torch.nn.functional.normalize(torch.randn(20, 4, generator=g, dtype=torch.float64), dim=1),
        "table.scene_idx": torch.zeros(20, dtype=torch.long),
    }


def _header() -> dict:
    return {"config": config_from_dict(TINY_CONFIG).to_dict(), "scenes": ["room"], "position_mean": [1.0, 2.0, 3.0],
            "position_scale": 0.5, "note": "ünïcode ok"}


@pytest.fixture
def small_bundle(tmp_path):
    path = tmp_path / "b.pae"
    save_bundle(path, _header(), _small_tensors())
    return path


def _model_tensors(cfg) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    apr = build_apr(cfg.model, 1, pretrained_weights=False)
    pae = PoseAutoEncoder(cfg.model.latent_dim, cfg.pae.fourier_levels, cfg.pae.hidden, 1)
    t = {f"apr.{k}": v for k, v in apr.state_dict().items()}
    t.update({f"pae.{k}": v for k, v in pae.state_dict().items()})
    t.update({k: v for k, v in _small_tensors().items() if k.startswith("table.")})
    return t


def test_round_trip(small_bundle):
    b = load_bundle(small_bundle)
    ref = _small_tensors()
    assert set(b.tensors) == set(ref)
    for k, v in ref.items():
        assert b.tensors[k].dtype == v.dtype
        assert torch.equal(b.tensors[k], v), k
    for k, v in _header().items():
        assert b.header[k] == v
    assert b.header["format"] == FORMAT_NAME and b.header["format_version"] == FORMAT_VERSION
    assert b.header["digest"] == tensors_digest(ref)
    assert len(b.bundle_id) == 12 and b.bundle_id == b.header["digest"][:12]
    assert b.state_dict("apr").keys() == {"w", "b"}
    assert b.has("pae") and not b.has("decoder")
    assert b.table_positions.shape == (20, 3) and b.position_scale == 0.5
    assert list(b.position_mean) == [1.0, 2.0, 3.0]
    assert b.path == small_bundle


def test_digest_is_content_based():
    t = _small_tensors()
    d = tensors_digest(t)
    assert tensors_digest(dict(reversed(list(t.items())))) == d  # order independent
    t2 = dict(t)
    t2["apr.w"] = t["apr.w"].clone()
    t2["apr.w"][0, 0] += 1e-6
    assert tensors_digest(t2) != d
    t3 = dict(t)
    t3["apr.w"] = t["apr.w"].reshape(8, 16)  # same bytes, different shape
    assert tensors_digest(t3) != d


def test_save_requires_pose_table(tmp_path):
    t = _small_tensors()
    del t["table.scene_idx"]
    with pytest.raises(BundleError, match="table.scene_idx"):
        save_bundle(tmp_path / "x.pae", _header(), t)
    assert not (tmp_path / "x.pae").exists()


def test_missing_file(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope.pae")


def test_truncated_file_at_many_points(small_bundle, tmp_path):
    data = small_bundle.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    cuts = sorted({0, 1, 7, 8, 9, 8 + header_len // 2, 8 + header_len, 8 + header_len + 1,
                   (len(data) + 8 + header_len) // 2, len(data) - 8, len(data) - 1})
    for cut in cuts:
        p = tmp_path / f"cut{cut}.pae"
        p.write_bytes(data[:cut])
        with pytest.raises(BundleError) as ei:
            load_bundle(p)
        assert str(p) in str(ei.value), f"message should name the file (cut at {cut})"


def test_tampered_tensor_byte_fails_digest(small_bundle, tmp_path):
    data = bytearray(small_bundle.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    for pos in (8 + header_len, 8 + header_len + 100, len(data) - 1):
        tampered = bytearray(data)
        tampered[pos] ^= 0x01
        p = tmp_path / f"tampered{pos}.pae"
        p.write_bytes(bytes(tampered))
        with pytest.raises(BundleError, match="digest"):
            load_bundle(p)


def test_tampered_header_value_detected_as_wrong_digest(small_bundle, tmp_path):
    # edit the digest in the JSON header (same length) -> mismatch
    data = small_bundle.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    hdr = json.loads(data[8:8 + header_len])
    inner = json.loads(hdr["__metadata__"]["pae_ros"])
    d = inner["digest"]
    inner["digest"] = ("0" if d[0] != "0" else "1") + d[1:]
    t = load_bundle(small_bundle).tensors
    p = tmp_path / "edited.pae"
    save_file(t, str(p), metadata={"pae_ros": json.dumps(inner)})
    with pytest.raises(BundleError, match="digest"):
        load_bundle(p)


def test_safetensors_without_pae_header(tmp_path):
    p = tmp_path / "plain.safetensors"
    save_file(_small_tensors(), str(p))
    with pytest.raises(BundleError, match="not a pae_ros bundle"):
        load_bundle(p)
    p2 = tmp_path / "other_meta.safetensors"
    save_file(_small_tensors(), str(p2), metadata={"format": "pt"})
    with pytest.raises(BundleError, match="not a pae_ros bundle"):
        load_bundle(p2)


def test_bad_header_json_and_format_name(tmp_path):
    t = _small_tensors()
    p = tmp_path / "badjson.pae"
    save_file(t, str(p), metadata={"pae_ros": "{not json"})
    with pytest.raises(BundleError, match="JSON"):
        load_bundle(p)
    p = tmp_path / "otherformat.pae"
    save_file(t, str(p), metadata={"pae_ros": json.dumps({"format": "something.else", "format_version": 1,
                                                          "digest": tensors_digest(t)})})
    with pytest.raises(BundleError, match="unknown format"):
        load_bundle(p)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_wrong_format_version(small_bundle, tmp_path, version):
    b = load_bundle(small_bundle)
    header = dict(b.header)
    header["format_version"] = version
    p = tmp_path / "v.pae"
    save_file(b.tensors, str(p), metadata={"pae_ros": json.dumps(header)})
    with pytest.raises(BundleError, match="format version"):
        load_bundle(p)


def test_missing_table_tensor_detected(tmp_path):
    t = _small_tensors()
    del t["table.quaternions"]
    h = dict(_header(), format=FORMAT_NAME, format_version=FORMAT_VERSION, digest=tensors_digest(t))
    p = tmp_path / "notable.pae"
    save_file(t, str(p), metadata={"pae_ros": json.dumps(h)})
    with pytest.raises(BundleError, match="table.quaternions"):
        load_bundle(p)


def test_random_bytes_rejected(tmp_path):
    p = tmp_path / "random.pae"
    p.write_bytes(os.urandom(4096))
    with pytest.raises(BundleError):
        load_bundle(p)
    p.write_bytes(b"")
    with pytest.raises(BundleError):
        load_bundle(p)
    p.write_text("hello, I am a text file\n" * 20)
    with pytest.raises(BundleError):
        load_bundle(p)


class _Evil:
    """Unpickling this creates (opens for writing) the file ``path``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def test_pickle_files_are_never_unpickled(tmp_path):
    # sanity: the payload really creates its file when unpickled
    probe = tmp_path / "probe_created"
    pickle.loads(pickle.dumps(_Evil(str(probe)))).close()
    assert probe.exists(), "the test payload does not work"

    marker = tmp_path / "pwned"
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps({"apr.w": _Evil(str(marker))}))
    with pytest.raises(BundleError):
        load_bundle(raw)
    assert not marker.exists(), "load_bundle unpickled a pickle file"

    # a torch.save (zip + pickle) file, the usual .pt/.ckpt format
    zipped = tmp_path / "evil.pt"
    torch.save({"x": _Evil(str(marker))}, zipped)
    with pytest.raises(BundleError):
        load_bundle(zipped)
    assert not marker.exists(), "load_bundle unpickled a torch.save file"

    # an evil pickle renamed to the bundle's extension, next to a real-looking name
    renamed = tmp_path / "model.pae"
    renamed.write_bytes(raw.read_bytes())
    with pytest.raises(BundleError):
        load_bundle(renamed)
    assert not marker.exists()


def test_build_models_strict(tmp_path):
    cfg = config_from_dict(TINY_CONFIG)
    header = _header()
    good = _model_tensors(cfg)
    p = tmp_path / "good.pae"
    save_bundle(p, header, good)
    cfg2, apr, pae, dec = build_models(load_bundle(p))
    assert cfg2 == cfg and dec is None and pae is not None
    assert not apr.training and not pae.training
    for k, v in apr.state_dict().items():
        assert torch.equal(v, good[f"apr.{k}"]), k

    # a missing weight
    t = dict(good)
    del t[next(k for k in t if k.startswith("apr.head_x"))]
    save_bundle(p, header, t)
    with pytest.raises(BundleError, match="apr weights do not match"):
        build_models(load_bundle(p))
    # a weight of the wrong shape
    t = dict(good)
    k = next(k for k in t if k.startswith("pae.") and k.endswith("weight"))
    t[k] = torch.zeros(t[k].shape[0] + 1, t[k].shape[1])
    save_bundle(p, header, t)
    with pytest.raises(BundleError, match="pae weights do not match"):
        build_models(load_bundle(p))
    # an unexpected extra weight
    t = dict(good)
    t["apr.extra_layer.weight"] = torch.zeros(2)
    save_bundle(p, header, t)
    with pytest.raises(BundleError, match="apr weights"):
        build_models(load_bundle(p))
    # weights of another architecture (config says latent 64, weights are 32-d)
    other = config_from_dict({**TINY_CONFIG, "model": {**TINY_CONFIG["model"], "latent_dim": 32}})
    save_bundle(p, header, _model_tensors(other))
    with pytest.raises(BundleError, match="weights do not match"):
        build_models(load_bundle(p))
    # a config this code does not know
    bad_header = dict(header, config={**header["config"], "model": {**header["config"]["model"], "heads": 3}})
    save_bundle(p, bad_header, good)
    with pytest.raises(BundleError, match="config"):
        build_models(load_bundle(p))


def test_atomic_write_failure_keeps_old_file(small_bundle):
    before = small_bundle.read_bytes()
    folder = small_bundle.parent
    listing = sorted(os.listdir(folder))

    def half_then_fail(tmp):
        with open(tmp, "wb") as f:
            f.write(before[: len(before) // 2])
        raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(small_bundle, half_then_fail)
    assert small_bundle.read_bytes() == before
    assert sorted(os.listdir(folder)) == listing, "a temporary file was left behind"
    load_bundle(small_bundle)

    def interrupted(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(small_bundle, interrupted)
    assert small_bundle.read_bytes() == before
    assert sorted(os.listdir(folder)) == listing


def test_save_bundle_failing_midway_keeps_old_bundle(small_bundle):
    """A real failure inside safetensors' writer (tensors sharing memory) leaves the old bundle."""
    before = small_bundle.read_bytes()
    listing = sorted(os.listdir(small_bundle.parent))
    t = _small_tensors()
    shared = torch.zeros(10)
    t["apr.a"], t["apr.b_alias"] = shared, shared  # safetensors refuses aliased tensors
    with pytest.raises(Exception):
        save_bundle(small_bundle, _header(), t)
    assert small_bundle.read_bytes() == before
    assert sorted(os.listdir(small_bundle.parent)) == listing, "a temporary file was left behind"
    assert torch.equal(load_bundle(small_bundle).tensors["apr.w"], _small_tensors()["apr.w"])


def test_overwrite_replaces_content(small_bundle):
    t = _small_tensors()
    t["apr.w"] = torch.ones(3)
    b = save_bundle(small_bundle, _header(), t)
    loaded = load_bundle(small_bundle)
    assert torch.equal(loaded.tensors["apr.w"], torch.ones(3))
    assert loaded.bundle_id == b.bundle_id
    assert [n for n in os.listdir(small_bundle.parent) if n.endswith(".tmp")] == []


def test_real_bundle_loads_and_builds(tiny_bundle):
    b = load_bundle(tiny_bundle)
    assert isinstance(b, Bundle)
    assert b.header["scenes"] == ["room"]
    assert {"apr", "pae", "decoder"} <= {k.split(".")[0] for k in b.tensors}
    assert set(b.header["calibration"]) == {"apr", "refined"}
    cfg, apr, pae, dec = build_models(b)
    assert cfg.model.backbone == "tiny_cnn" and dec is not None
    n = len(b.table_positions)
    assert b.table_quaternions.shape == (n, 4) and b.table_scene_idx.shape == (n,)
