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


def test_eval_writes_every_method_and_threshold_to_the_report(tiny_bundle, tiny_dataset, tmp_path, capsys):
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


# ----------------------------------------------------------------------------- bad input, one line

def _edit_header_bytes(src, dst, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (same length) inside the bundle's JSON header, in place."""
    data = src.read_bytes()
    n = int.from_bytes(data[:8], "little")
    head = data[8:8 + n]
    assert len(old) == len(new) and head.count(old) == 1, "test setup: the text must appear once"
    dst.write_bytes(data[:8] + head.replace(old, new) + data[8 + n:])


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[")]  # [logger] lines aside
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_eval_refuses_a_tampered_header_in_one_line(tiny_bundle, tiny_dataset, tmp_path, capsys):
    """One changed digit of position_scale or a renamed header key: refused by the digest, in one
    line naming the bundle, exit 2, nothing written."""
    import re

    key = b'position_scale\\": '  # as the JSON header sits, escaped, in the safetensors header
    digit = re.search(re.escape(key) + rb"(\d)", tiny_bundle.read_bytes()).group(1)
    cases = {"digit": (key + digit, key + (b"7" if digit != b"7" else b"3")),
             "key": (b'\\"position_scale\\"', b'\\"position_scalX\\"')}
    for name, (old, new) in cases.items():
        bad = tmp_path / f"{name}.pae"
        _edit_header_bytes(tiny_bundle, bad, old, new)
        capsys.readouterr()
        rc = main(["eval", "--bundle", str(bad), "--data", str(tiny_dataset), "--format", "7scenes", "--quiet",
                   "--out-dir", str(tmp_path / "ev")])
        line = _one_line(capsys.readouterr().err)
        assert rc == 2 and str(bad) in line and "digest mismatch" in line, (name, line)
    assert not (tmp_path / "ev").exists()


def test_directory_or_fifo_as_bundle_is_named(tiny_dataset, tmp_path, capsys):
    import os

    d = tmp_path / "model.pae"
    d.mkdir()
    fifo = tmp_path / "pipe.pae"
    os.mkfifo(fifo)
    for path, what in ((d, "is a directory"), (fifo, "is a FIFO")):
        rc = main(["eval", "--bundle", str(path), "--data", str(tiny_dataset), "--format", "7scenes", "--quiet"])
        line = _one_line(capsys.readouterr().err)
        assert rc == 2 and what in line and "not found" not in line, line


def test_known_errors_reaching_main_are_one_line(tmp_path, capsys):
    """The top-level handler: an error a subcommand does not catch itself (here `pae bundle upgrade`
    on a missing file raises BundleError) is one line and exit 2; OSErrors name their file."""
    from pae_ros.cli import one_line_error

    rc = main(["bundle", "upgrade", str(tmp_path / "missing.pae"), "--out", str(tmp_path / "x.pae")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and line.startswith("pae bundle upgrade: bundle not found") and "missing.pae" in line
    assert one_line_error(FileNotFoundError(2, "No such file or directory", "/x/y.yaml")) == "/x/y.yaml: not found"
    assert one_line_error(IsADirectoryError(21, "Is a directory", "/x")) == "/x: is a directory"
    assert one_line_error(KeyError("bug")) is None  # a bug keeps its traceback


def test_eval_skip_bad_skips_a_corrupt_image_quietly(tiny_bundle, tiny_dataset, tmp_path, capfd):
    """--skip-bad skips corrupt and empty images without OpenCV's stderr lines; without it the
    error names the image."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    test_seq = sorted((data / "room").glob("seq-04/*.color.png"))
    test_seq[3].write_bytes(test_seq[3].read_bytes()[:200])  # truncated PNG
    test_seq[5].write_bytes(b"")                              # empty file
    args = ["eval", "--bundle", str(tiny_bundle), "--data", str(data), "--format", "7scenes", "--quiet",
            "--json", str(tmp_path / "ev" / "r.json")]
    capfd.readouterr()
    assert main(args) == 2
    line = _one_line(capfd.readouterr().err)
    assert test_seq[3].name in line or test_seq[5].name in line, line
    assert main(args + ["--skip-bad"]) == 0
    err = capfd.readouterr().err
    assert "libpng" not in err and "WARN" not in err and "Traceback" not in err, err
    rep = json.loads((tmp_path / "ev" / "r.json").read_text())
    assert rep["scenes"]["room"]["apr"]["frames"] == 38


def test_refused_checkpoint_message_gives_no_unsafe_advice(tmp_path):
    """A checkpoint that is not plain tensors is refused in one line, without advice to load it
    unsafely."""
    import builtins

    import torch

    from pae_ros.training.checkpoint import load_checkpoint

    class Evil:
        def __reduce__(self):
            return (builtins.open, (str(tmp_path / "pwned"), "w"))

    torch.save({"x": Evil()}, tmp_path / "apr_last.ckpt")
    with pytest.raises(RuntimeError) as ei:
        load_checkpoint(tmp_path / "apr_last.ckpt")
    msg = str(ei.value)
    assert "cannot resume from" in msg and "not loaded" in msg and "\n" not in msg
    assert "weights_only" not in msg and "trust" not in msg
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "apr_last.ckpt").read_bytes()[:100])
    with pytest.raises(RuntimeError, match="cannot resume from .*cut.ckpt") as ei:
        load_checkpoint(tmp_path / "cut.ckpt")
    assert "\n" not in str(ei.value)


def test_progress_prints_few_plain_lines_into_a_log(monkeypatch):
    """Progress into a log (not a terminal): a few plain lines, no carriage-return redraws."""
    import io

    from pae_ros import progress

    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(progress, "MIN_INTERVAL_S", 0.0)
    bar = progress.tqdm(total=200, desc="APR epoch 1/1", file=log, leave=False, mininterval=0)
    for i in range(200):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 9 <= len(lines) <= 11, lines
    assert lines[-1].startswith("APR epoch 1/1: 100%") and "200/200" in lines[-1]
    # with the real intervals a quick transient bar prints nothing at all, a kept one its last line
    monkeypatch.setattr(progress, "MIN_INTERVAL_S", 5.0)
    quiet, kept = io.StringIO(), io.StringIO()
    for _ in progress.tqdm(range(500), file=quiet, leave=False):
        pass
    for _ in progress.tqdm(range(500), desc="frames", file=kept):
        pass
    assert quiet.getvalue() == "" and kept.getvalue().count("\n") == 1 and "\r" not in kept.getvalue()
    assert progress.tqdm(range(3), file=io.StringIO(), disable=None).disable  # tqdm's None: off in a log

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert not isinstance(progress.tqdm(range(3), file=Tty()), progress.PlainTqdm)  # a terminal keeps tqdm


def test_modules_use_the_progress_wrapper():
    """No module imports tqdm directly (the wrapper decides terminal vs log)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "pae_ros"
    offenders = [str(p) for p in root.rglob("*.py") if p.name != "progress.py"
                 and any(ln.strip() in ("from tqdm import tqdm", "import tqdm") for ln in p.read_text().splitlines())]
    assert offenders == []
