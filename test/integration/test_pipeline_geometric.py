"""The geometric stage inside the Localizer: a tiny bundle + its map on the textured room
(``textured_mapped``).

Accepted path: test frames published as ``method == "geometric"`` close to the ground truth, with
the fix's covariance; fallback path: a blank image keeps the APR/PAE pose and names the reason;
``geometric="off"`` and a missing map path behave as documented; ``pae eval`` gets the row."""
from __future__ import annotations

import numpy as np
import pytest


def test_localizer_publishes_geometric_fixes_and_falls_back(textured_mapped):
    from pae_ros.datasets import load_rgb, read_dataset
    from pae_ros.pipeline import Localizer

    root, out, desc = textured_mapped
    # geometric="auto": the map beside the bundle; the out-of-scene gate (fitted on this tiny scene's few
    # held-out frames) is off: gated frames never reach the stage, and the gate has its own tests
    loc = Localizer.from_bundle(out, device="cpu", table_descriptors=desc, ood=False)
    assert loc.info["geometric"] and loc.info["geometric_map"].endswith(".map")
    te = read_dataset(root / "data", "7scenes", "test")
    frames = te.frames[2:12:3]
    imgs = [load_rgb(f.image_path) for f in frames]
    ests = loc.localize_batch(imgs)
    geo = [e for e in ests if e.method == "geometric"]
    assert len(geo) >= len(ests) // 2, [e.extras.get("geometric_reason") for e in ests]
    for e, f in zip(ests, frames):
        assert "geometric_reason" in e.extras
        if e.method == "geometric":
            assert np.linalg.norm(e.position - f.position) < 0.15
            assert np.linalg.norm(e.position - f.position) < np.linalg.norm(e.apr_position - f.position)
            assert e.covariance.shape == (6, 6) and e.sigma_position_m < 0.5
            assert np.allclose(e.covariance, e.covariance.T)
    # the per-frame call (the node's slower thread) agrees with the batch path
    plain = Localizer.from_bundle(out, device="cpu", geometric="off", table_descriptors=desc, ood=False)
    assert not plain.info["geometric"]
    prior = plain.localize(imgs[0])
    assert prior.method != "geometric" and "geometric_reason" not in prior.extras
    one = loc.localize_geometric(imgs[0], prior)
    assert "geometric_reason" in one.extras
    from pae_ros.geometric_adapter import shortlist

    rows = shortlist(loc.retrieval.query(loc.describe(imgs[:1]), loc.geometric_k)[0][0], prior.extras.get("neighbors"))
    direct = loc.geometric(imgs[0], rows, prior.position, prior.quaternion, prior.sigma_position_m,
                           prior.sigma_orientation_rad)
    assert one.extras["geometric_reason"] == direct.reason
    assert (one.method == "geometric") == direct.accepted
    if direct.accepted:
        assert np.allclose(one.position, direct.position) and np.allclose(one.covariance, direct.covariance)
    else:
        assert np.allclose(one.position, prior.position)
    assert np.allclose(one.apr_position, prior.apr_position)
    # fallback: a textureless image keeps its APR/PAE pose and says why
    blank = np.full_like(imgs[0], 128)
    fb = loc.localize_geometric(blank, plain.localize(blank))
    assert fb.method != "geometric" and fb.extras["geometric_reason"] in ("no_features", "too_few_matches")


def test_geometric_map_path_errors(textured_mapped, tmp_path):
    from pae_ros.geometric import MapError
    from pae_ros.pipeline import Localizer

    _, out, desc = textured_mapped
    with pytest.raises(MapError, match="does not exist"):
        Localizer.from_bundle(out, device="cpu", geometric=str(tmp_path / "nope.map"))
    bad = tmp_path / "corrupt.map"
    bad.write_bytes(b"not a map")
    with pytest.raises(MapError):
        Localizer.from_bundle(out, device="cpu", geometric=str(bad))


def test_eval_report_has_the_geometric_section(textured_mapped):
    from pae_ros.datasets import read_dataset
    from pae_ros.evaluation.report import evaluate
    from pae_ros.pipeline import Localizer

    root, out, desc = textured_mapped
    loc = Localizer.from_bundle(out, device="cpu", table_descriptors=desc)
    te = read_dataset(root / "data", "7scenes", "test")
    te.frames = te.frames[::3]
    rep = evaluate(loc, te, n_boot=50)
    g = rep["geometric"]
    assert g is not None and 0 < g["accepted_share"] <= 1
    assert "geometric" in rep["published"]["by_method"] or any(
        k == "geometric" for k in rep["published"].get("by_method", {}))


def test_pae_eval_geometric_flag(textured_mapped, tmp_path, capsys):
    """``pae eval --geometric off`` reports the APR/PAE pose alone (what a robot without the map gets);
    a map path that does not exist is one clear line and exit 2."""
    import json

    from pae_ros.cli import main

    root, out, _ = textured_mapped
    common = ["eval", "--bundle", str(out), "--data", str(root / "data"), "--format", "7scenes", "--quiet",
              "--bootstrap", "50"]
    assert main(common + ["--json", str(tmp_path / "off" / "r.json"), "--geometric", "off"]) == 0
    off = json.loads((tmp_path / "off" / "r.json").read_text())
    assert "geometric" not in off["published"]["methods"] and off.get("geometric") is None  # stage off: no section
    assert main(common + ["--json", str(tmp_path / "auto" / "r.json")]) == 0
    auto = json.loads((tmp_path / "auto" / "r.json").read_text())
    assert auto["geometric"]["attempted"] > 0  # the map beside the bundle: the stage ran (with the train
    # descriptors pae eval hands the Localizer, as the tiny bundle stores none)
    capsys.readouterr()
    assert main(common + ["--json", str(tmp_path / "x" / "r.json"), "--geometric", str(tmp_path / "none.map")]) == 2
    assert "does not exist" in capsys.readouterr().err
