"""The ``pae`` command line: eval's report, export, train's errors, and --help everywhere."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pae_ros.cli import COMMANDS, main
from pae_ros.metrics import THRESHOLDS, threshold_key

pytestmark = pytest.mark.timeout(300)


def test_every_subcommand_has_help(capsys):
    for path in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([*path, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: pae " + " ".join(path))


def test_eval_writes_the_report_the_issue_asks_for(tiny_bundle, tiny_dataset, tmp_path, capsys):
    out_json = tmp_path / "eval" / "report.json"
    rc = main(["eval", "--bundle", str(tiny_bundle), "--data", str(tiny_dataset), "--format", "7scenes",
               "--split", "test", "--json", str(out_json), "--k-sweep", "1", "5", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    for method in ("apr", "pae", "refined", "refined_k1", "refined_k5"):
        assert f" {method} " in printed
    rep = json.loads(out_json.read_text())
    scene = rep["scenes"]["room"]
    for method in ("apr", "pae", "refined"):
        s = scene[method]
        assert s["frames"] == 40
        for key in ("median_position_m", "median_orientation_deg", "mean_position_m"):
            assert s[key] >= 0
        for t in THRESHOLDS:
            assert 0.0 <= s[threshold_key(*t)] <= 1.0
        per_frame = rep["per_frame"]["room"][method]
        assert len(per_frame["position_error_m"]) == len(per_frame["orientation_error_deg"]) == 40
    assert set(rep["reconstruction_psnr_db"]) == {"train", "test"}
    cal = rep["calibration"]
    assert cal["method"] == "refined" and 0.0 <= cal["position"]["within_1sigma"] <= 1.0
    assert cal["above_threshold"]["frames"] + cal["below_threshold"]["frames"] == 40
    for name in ("error_cdf", "error_cdf_orientation", "reconstruction_grid"):
        assert (tmp_path / "eval" / f"{name}.png").stat().st_size > 1000


def test_export_writes_an_onnx_graph_that_agrees_with_torch(tiny_bundle, tmp_path, capsys):
    onnx_path = tmp_path / "apr.onnx"
    assert main(["export", "--bundle", str(tiny_bundle), "--out", str(onnx_path)]) == 0
    assert "max abs difference" in capsys.readouterr().out
    import onnxruntime as ort

    names = [o.name for o in ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_outputs()]
    assert names == ["position", "quaternion", "latent", "scene"]


def test_train_names_a_bad_config_key_and_exits_2(tiny_dataset, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("apr:\n  epochs: 3\n  learning_rate: 0.1\n")
    r = subprocess.run([sys.executable, "-m", "pae_ros.cli", "train", "--data", str(tiny_dataset), "--format",
                        "7scenes", "--out", str(tmp_path / "x.pae"), "--config", str(cfg)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "apr.learning_rate: unknown key" in r.stderr
    assert not (tmp_path / "x.pae").exists()


def test_eval_with_a_truncated_bundle_is_one_clear_error(tiny_bundle, tiny_dataset, tmp_path, capsys):
    bad = tmp_path / "cut.pae"
    bad.write_bytes(tiny_bundle.read_bytes()[:5000])
    rc = main(["eval", "--bundle", str(bad), "--data", str(tiny_dataset), "--format", "7scenes", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err


def test_parser_builds_without_heavy_imports():
    r = subprocess.run([sys.executable, "-c", "import sys, pae_ros.cli as c; c.build_parser(); "
                        "print(sorted(m for m in ('torch', 'rclpy') if m in sys.modules))"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", "pae --help must not import torch or rclpy"


def test_train_later_stage_with_a_bundle_of_other_scenes_is_one_clear_error(tiny_bundle, tmp_path):
    """--stage pae on data whose scenes differ from the bundle's: one line, exit 2, bundle untouched."""
    from pae_ros.datasets.synthetic import write_room_dataset

    other = tmp_path / "other"
    write_room_dataset(other, "hall", train_walks=1, test_walks=1, frames=8, seed=5)
    before = tiny_bundle.read_bytes()
    r = subprocess.run([sys.executable, "-m", "pae_ros.cli", "train", "--data", str(other), "--format", "7scenes",
                        "--out", str(tmp_path / "x.pae"), "--bundle", str(tiny_bundle), "--stage", "pae",
                        "--quiet"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "differ" in r.stderr and "Traceback" not in r.stderr
    assert tiny_bundle.read_bytes() == before


def test_eval_on_scenes_the_bundle_does_not_know_is_one_clear_error(tiny_bundle, tmp_path, capsys):
    from pae_ros.datasets.synthetic import write_room_dataset

    other = tmp_path / "other"
    write_room_dataset(other, "hall", train_walks=1, test_walks=1, frames=8, seed=5)
    rc = main(["eval", "--bundle", str(tiny_bundle), "--data", str(other), "--format", "7scenes", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "hall" in err and "room" in err
