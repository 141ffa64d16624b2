"""pae_ros.bundle: round trip, corruption detection, no unpickling, strict model loading, atomic writes."""
from __future__ import annotations

import builtins
import json
import os
import pickle
import random
import stat
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from pae_ros.bundle import (DIGEST_KEY, FORMAT_NAME, FORMAT_VERSION, HEADER_KEY, Bundle, BundleError,
                            atomic_write_bytes, build_models, bundle_digest, load_bundle, save_bundle,
                            tensors_digest, upgrade_bundle)
from pae_ros.config import config_from_dict
from pae_ros.models import PoseAutoEncoder, build_apr

from support.fixtures import TINY_CONFIG


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


def _metadata(path) -> dict:
    data = open(path, "rb").read()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n])["__metadata__"]


def _save_raw(path, tensors, header: dict, digest: bool = True) -> None:
    """Write a bundle by hand (bypassing save_bundle) with a valid digest unless told otherwise."""
    blob = json.dumps(header)
    meta = {HEADER_KEY: blob}
    if digest:
        meta[DIGEST_KEY] = bundle_digest(blob, tensors)
    save_file(tensors, str(path), metadata=meta)


def _save_v1(path, tensors, header: dict) -> None:
    """A bundle as format version 1 wrote it: tensor digest inside the header, header not covered."""
    h = dict(header, format=FORMAT_NAME, format_version=1, digest=tensors_digest(tensors))
    save_file(tensors, str(path), metadata={HEADER_KEY: json.dumps(h, sort_keys=True)})


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
    meta = _metadata(small_bundle)
    assert b.header["digest"] == meta[DIGEST_KEY] == bundle_digest(meta[HEADER_KEY], ref)
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
    """One digit of position_scale changed in place (same length) is refused."""
    data = small_bundle.read_bytes()
    old = b'\\"position_scale\\": 0.5'
    assert data.count(old) == 1, "test setup: the value must appear once in the raw header"
    p = tmp_path / "edited.pae"
    p.write_bytes(data.replace(old, b'\\"position_scale\\": 0.7'))
    assert json.loads(_metadata(p)[HEADER_KEY])["position_scale"] == 0.7  # the edit is a valid file
    with pytest.raises(BundleError, match="digest mismatch") as ei:
        load_bundle(p)
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)
    # the digest key itself edited, or removed
    meta = _metadata(small_bundle)
    t = load_bundle(small_bundle).tensors
    d = meta[DIGEST_KEY]
    save_file(t, str(p), metadata={HEADER_KEY: meta[HEADER_KEY], DIGEST_KEY: ("0" if d[0] != "0" else "1") + d[1:]})
    with pytest.raises(BundleError, match="digest mismatch"):
        load_bundle(p)
    save_file(t, str(p), metadata={HEADER_KEY: meta[HEADER_KEY]})
    with pytest.raises(BundleError, match="no digest"):
        load_bundle(p)


def test_every_header_change_is_covered(small_bundle, tmp_path):
    """Changing any one header value (and re-writing a well-formed file) is detected."""
    meta = _metadata(small_bundle)
    header = json.loads(meta[HEADER_KEY])
    t = load_bundle(small_bundle).tensors
    p = tmp_path / "changed.pae"
    changes = {"position_mean": [1.0, 2.0, 3.5], "scenes": ["hall"], "note": "x",
               "config": {**header["config"], "seed": 1}, "extra_key": 1}
    for key, value in changes.items():
        save_file(t, str(p), metadata={HEADER_KEY: json.dumps({**header, key: value}, sort_keys=True),
                                       DIGEST_KEY: meta[DIGEST_KEY]})
        with pytest.raises(BundleError, match="digest mismatch"):
            load_bundle(p)


def test_random_bit_flips_in_the_metadata_are_all_refused_or_harmless(small_bundle, tmp_path):
    """Every single-bit flip anywhere in the safetensors JSON header (which holds the pae_ros
    metadata) is refused with a BundleError, or loads a bundle identical to the original (harmless)."""
    data = small_bundle.read_bytes()
    n = int.from_bytes(data[:8], "little")
    ref = load_bundle(small_bundle)
    meta_start = data.index(b"__metadata__")
    rng = random.Random(0)
    p = tmp_path / "flipped.pae"
    refused = harmless = 0
    positions = [rng.randrange(meta_start, 8 + n) for _ in range(150)] + [rng.randrange(8, 8 + n) for _ in range(50)]
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 1 << rng.randrange(8)
        p.write_bytes(bytes(flipped))
        try:
            b = load_bundle(p)
        except BundleError as e:
            assert str(p) in str(e)
            refused += 1
            continue
        assert b.header == ref.header, f"flip at byte {pos} loaded a different header"
        assert b.tensors.keys() == ref.tensors.keys()
        assert all(torch.equal(b.tensors[k], ref.tensors[k]) for k in ref.tensors), f"flip at byte {pos}"
        harmless += 1
    assert refused + harmless == len(positions) and refused >= 0.9 * len(positions), (refused, harmless)


def test_format_1_bundle_is_refused_with_advice_and_can_be_upgraded(tmp_path):
    t = _small_tensors()
    old = tmp_path / "old.pae"
    _save_v1(old, t, _header())
    with pytest.raises(BundleError, match="version 1") as ei:
        load_bundle(old)
    assert "retrain" in str(ei.value) and "pae bundle upgrade" in str(ei.value)
    new = tmp_path / "new.pae"
    up = upgrade_bundle(old, new)
    b = load_bundle(new)
    assert b.header["format_version"] == FORMAT_VERSION and b.header["position_scale"] == 0.5
    assert b.bundle_id == up.bundle_id
    assert all(torch.equal(b.tensors[k], t[k]) for k in t)
    with pytest.raises(BundleError, match="already"):
        upgrade_bundle(new, tmp_path / "again.pae")
    # an old bundle whose weights were damaged is not sealed
    bad = dict(t)
    bad["apr.w"] = t["apr.w"] + 1
    h = dict(_header(), format=FORMAT_NAME, format_version=1, digest=tensors_digest(t))
    save_file(bad, str(old), metadata={HEADER_KEY: json.dumps(h)})
    with pytest.raises(BundleError, match="digest mismatch"):
        upgrade_bundle(old, tmp_path / "no.pae")
    assert not (tmp_path / "no.pae").exists()


@pytest.mark.slow  # two `pae` processes
def test_upgrade_command(tmp_path):
    old, new = tmp_path / "old.pae", tmp_path / "new.pae"
    _save_v1(old, _small_tensors(), _header())
    r = subprocess.run([sys.executable, "-m", "pae_ros.cli", "bundle", "upgrade", str(old), "--out", str(new)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "upgraded" in r.stderr
    load_bundle(new)
    r = subprocess.run([sys.executable, "-m", "pae_ros.cli", "bundle", "upgrade", str(new), "--out", str(old)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "already" in r.stderr and "Traceback" not in r.stderr


def test_non_finite_numbers_are_never_written(tmp_path):
    p = tmp_path / "nan.pae"
    with pytest.raises(BundleError, match="non-finite"):
        save_bundle(p, dict(_header(), calibration={"refined": {"a": float("nan")}}), _small_tensors())
    t = _small_tensors()
    t["table.positions"][3, 0] = float("inf")
    with pytest.raises(BundleError, match="table.positions"):
        save_bundle(p, _header(), t)
    assert not p.exists()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_respect_the_umask(tmp_path, umask, mode):
    """Bundles and other atomic writes get the mode the umask gives a new file, not mkstemp's 0600."""
    old = os.umask(umask)
    try:
        save_bundle(tmp_path / "b.pae", _header(), _small_tensors())
        atomic_write_bytes(tmp_path / "c.bin", lambda tmp: open(tmp, "wb").write(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b.pae").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "c.bin").stat().st_mode) == mode


def test_directory_and_fifo_are_named_as_such(tmp_path):
    """A directory and a FIFO given as the bundle are named as such (not 'not found'); a FIFO does
    not block the load."""
    d = tmp_path / "adir.pae"
    d.mkdir()
    with pytest.raises(BundleError, match="is a directory"):
        load_bundle(d)
    fifo = tmp_path / "pipe.pae"
    os.mkfifo(fifo)
    with pytest.raises(BundleError, match="FIFO"):
        load_bundle(fifo)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope.pae")


def test_missing_header_key_is_a_bundle_error(tmp_path):
    h = _header()
    del h["position_scale"]
    b = save_bundle(tmp_path / "nokey.pae", h, _small_tensors())
    with pytest.raises(BundleError, match="position_scale"):
        load_bundle(b.path).position_scale


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


@pytest.mark.parametrize("version", [0, FORMAT_VERSION + 1, "1", None])
def test_wrong_format_version(small_bundle, tmp_path, version):
    b = load_bundle(small_bundle)
    header = dict(b.header)
    header["format_version"] = version
    p = tmp_path / "v.pae"
    _save_raw(p, b.tensors, header)
    with pytest.raises(BundleError, match="format version"):
        load_bundle(p)


def test_missing_table_tensor_detected(tmp_path):
    t = _small_tensors()
    del t["table.quaternions"]
    h = dict(_header(), format=FORMAT_NAME, format_version=FORMAT_VERSION)
    p = tmp_path / "notable.pae"
    _save_raw(p, t, h)
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


def test_multi_scene_idx_only_with_several_scenes():
    from pae_ros.bundle import multi_scene_idx

    s = torch.tensor([0, 1, 1])
    assert multi_scene_idx(s, 1) is None      # one scene: nothing to restrict or condition on
    assert multi_scene_idx(s, 2) is s
