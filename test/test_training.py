"""Training: the PAE's pose term really trains the PAE, resumable APR training, DDP with torchrun,
and the trained tiny bundle beats a trivial baseline."""
from __future__ import annotations

import builtins
import copy
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pae_ros.bundle import build_models, load_bundle
from pae_ros.config import config_from_dict
from pae_ros.datasets import load_rgb, read_dataset
from pae_ros.geometry import average_quaternions, orientation_error_deg, position_error
from pae_ros.models import PoseAutoEncoder, build_apr
from pae_ros.pipeline import Localizer
from pae_ros.training.checkpoint import load_checkpoint, save_checkpoint
from pae_ros.training.data import FrameImages, PoseNormalization, holdout_split, scenes_of
from pae_ros.training.losses import LearnedPoseLoss
from pae_ros.training.run import train_all
from pae_ros.training.train_pae import teacher_outputs, train_pae

from conftest import REPO, TINY_CONFIG

VENV_BIN = Path(sys.executable).parent


def _cfg(**sections):
    d = copy.deepcopy(TINY_CONFIG)
    for sec, vals in sections.items():
        d.setdefault(sec, {}).update(vals)
    return config_from_dict(d)


@pytest.fixture(scope="module")
def train_split(tiny_dataset):
    return read_dataset(tiny_dataset, "7scenes", "train")


@pytest.fixture(scope="module")
def test_split(tiny_dataset):
    return read_dataset(tiny_dataset, "7scenes", "test")


@pytest.fixture(scope="module")
def teacher_setup(train_split):
    """A small (untrained, seeded) APR, the train images and the teacher's outputs."""
    cfg = _cfg()
    torch.manual_seed(0)
    apr = build_apr(cfg.model, 1, pretrained_weights=False).eval()
    norm = PoseNormalization.fit(train_split.positions)
    data = FrameImages(train_split.frames, ["room"], norm, cfg.input.resize, cfg.input.crop, train=False)
    teacher = teacher_outputs(apr, data, torch.device("cpu"), show_progress=False)
    return cfg, apr, data, teacher


def _seeded_pae(cfg) -> PoseAutoEncoder:
    """The PAE train_pae starts from (it seeds with cfg.seed + 1)."""
    torch.manual_seed(cfg.seed + 1)
    return PoseAutoEncoder(cfg.model.latent_dim, cfg.pae.fourier_levels, cfg.pae.hidden, 1)


# ------------------------------------------------------------------- PAE pose term through the heads
def test_pae_pose_term_trains_the_pae_through_frozen_teacher_heads(teacher_setup):
    cfg0, apr0, data, teacher = teacher_setup
    apr = copy.deepcopy(apr0)
    heads_before = {k: v.clone() for k, v in apr.state_dict().items() if k.startswith(("head_x", "head_q"))}
    # only the pose term: latent weight 0, no weight decay (so any change comes from the pose term)
    cfg = _cfg(pae={"epochs": 2, "latent_loss_weight": 0.0, "pose_loss_weight": 1.0, "weight_decay": 0.0})
    pl = LearnedPoseLoss(0.0, -3.0, learnable=False)
    pae, stats = train_pae(cfg, apr, pl, data, teacher, 1, torch.device("cpu"), show_progress=False)
    assert stats["final"]["pose_loss"] > 0
    init = _seeded_pae(cfg).state_dict()
    changed = [k for k, v in pae.state_dict().items() if not torch.equal(v, init[k])]
    assert changed, "the pose-loss term did not change any PAE weight (computed under no_grad?)"
    # the teacher heads are frozen and untouched
    for p in list(apr.head_x.parameters()) + list(apr.head_q.parameters()):
        assert p.requires_grad is False
    for k, v in apr.state_dict().items():
        if k in heads_before:
            assert torch.equal(v, heads_before[k]), f"teacher head {k} changed during PAE training"

    # the pose term alone, computed as train_pae does: gradient reaches every PAE layer, not the heads
    student = _seeded_pae(cfg)
    b = torch.arange(32)
    zx, zq = student(data.x[b], data.q[b])
    l_pose, _ = pl(apr.head_x(zx), apr.head_q(zq), data.x[b], data.q[b])
    l_pose.backward()
    for name, p in student.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, f"no gradient reaches PAE parameter {name}"
    for p in list(apr.head_x.parameters()) + list(apr.head_q.parameters()):
        assert p.grad is None


def test_pae_with_zero_loss_weights_changes_nothing(teacher_setup):
    cfg0, apr0, data, teacher = teacher_setup
    apr = copy.deepcopy(apr0)
    apr_before = {k: v.clone() for k, v in apr.state_dict().items()}
    cfg = _cfg(pae={"epochs": 2, "latent_loss_weight": 0.0, "pose_loss_weight": 0.0, "weight_decay": 0.0})
    pae, _ = train_pae(cfg, apr, LearnedPoseLoss(0.0, -3.0, learnable=False), data, teacher, 1,
                       torch.device("cpu"), show_progress=False)
    init = _seeded_pae(cfg).state_dict()
    for k, v in pae.state_dict().items():
        assert torch.equal(v, init[k]), f"PAE weight {k} changed with both loss weights 0"
    for k, v in apr.state_dict().items():
        assert torch.equal(v, apr_before[k])


def test_pae_latent_term_fits_the_teacher(teacher_setup):
    cfg0, apr0, data, teacher = teacher_setup
    cfg = _cfg(pae={"epochs": 12, "pose_loss_weight": 0.0})
    pae, stats = train_pae(cfg, copy.deepcopy(apr0), LearnedPoseLoss(learnable=False), data, teacher, 1,
                           torch.device("cpu"), show_progress=False)
    with torch.no_grad():
        zx, zq = _seeded_pae(cfg)(data.x, data.q)
        mse0 = float(((torch.cat([zx, zq], -1) - teacher["z"]) ** 2).mean())
        zx, zq = pae(data.x, data.q)
        mse = float(((torch.cat([zx, zq], -1) - teacher["z"]) ** 2).mean())
    assert mse < 0.2 * mse0, f"latent MSE {mse:.4g} vs {mse0:.4g} at init"
    assert not pae.training


def test_learned_pose_loss_sign_invariant_and_learnable():
    loss = LearnedPoseLoss(0.0, -3.0)
    x = torch.randn(5, 3)
    q = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    l1, parts = loss(x, q, x, q)
    l2, _ = loss(x, -q, x, q)
    assert l1.item() == pytest.approx(l2.item())
    assert parts["loss_x"] == 0 and parts["loss_q"] == pytest.approx(0, abs=1e-6)
    assert l1.item() == pytest.approx(-3.0)  # s_x + s_q with zero errors
    l3, _ = loss(x + 1.0, q, x, q)
    l3.backward()
    assert loss.s_x.grad is not None and float(loss.s_x.grad) != 0
    frozen = LearnedPoseLoss(learnable=False)
    assert not any(p.requires_grad for p in frozen.parameters())


# -------------------------------------------------------------------------------------- data
def test_holdout_split_takes_blocks_spread_along_each_sequence(train_split):
    frames = train_split.frames
    fit, held = holdout_split(frames, 0.15, block=4)
    assert len(fit) + len(held) == len(frames)
    assert {f.image_path for f in fit}.isdisjoint({f.image_path for f in held})
    for seq in {f.sequence for f in frames}:
        seq_frames = [f for f in frames if f.sequence == seq]
        held_idx = [i for i, f in enumerate(seq_frames) if any(f is h for h in held)]
        n_hold = round(0.15 * len(seq_frames))
        assert abs(len(held_idx) - n_hold) <= 3  # whole blocks of 4
        runs = np.split(np.asarray(held_idx), np.where(np.diff(held_idx) != 1)[0] + 1)
        assert len(runs) >= 2 and all(len(r) <= 4 for r in runs)   # several short blocks, not one tail
        assert held_idx[0] > 0 and held_idx[-1] < len(seq_frames) - 1  # interior: train frames on both sides
    assert holdout_split(frames, 0.0) == (list(frames), [])
    assert scenes_of(train_split) == ["room"]


def test_pose_normalization_and_augmentation(train_split):
    p = train_split.positions
    norm = PoseNormalization.fit(p)
    x = norm.apply(p)
    np.testing.assert_allclose(np.median(x, 0), 0, atol=1e-9)   # robust centre: the median
    assert 0.5 < x.std(0).max() < 2.0                            # MAD scale ~ the std on a room walk
    assert PoseNormalization.fit(np.zeros((4, 3))).scale == 0.01  # floored
    frames = train_split.frames[:4]
    aug = FrameImages(frames, ["room"], norm, 48, 40, train=True, random_crop=True, jitter=0.3, seed=3)
    assert np.array_equal(aug.view(1), aug.view(1))  # deterministic per (seed, epoch, item)
    views = [aug.view(1)]
    for e in range(1, 4):
        aug.set_epoch(e)
        views.append(aug.view(1))
    assert any(not np.array_equal(views[0], v) for v in views[1:]), "augmentation does not vary by epoch"
    plain = FrameImages(frames, ["room"], norm, 48, 40, train=False)
    img, xi, qi, si, i = plain[2]
    assert img.shape == (3, 40, 40) and int(si) == 0 and i == 2
    assert torch.equal(plain.centre_batch([2])[0], img)


# -------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_no_unpickling(tmp_path):
    state = {"apr": {"w": torch.randn(3, 3)}, "epoch": 4, "name": "x", "torch_rng": torch.get_rng_state()}
    p = tmp_path / "c.ckpt"
    save_checkpoint(p, state)
    back = load_checkpoint(p)
    assert back["epoch"] == 4 and torch.equal(back["apr"]["w"], state["apr"]["w"])
    assert [n for n in os.listdir(tmp_path)] == ["c.ckpt"]

    class Evil:
        def __reduce__(self):
            return (builtins.open, (str(tmp_path / "pwned"), "w"))

    evil = tmp_path / "evil.ckpt"
    torch.save({"epoch": Evil()}, evil)
    with pytest.raises(RuntimeError, match="cannot resume"):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()


@pytest.fixture(scope="module")
def apr_two_epochs(train_split, tmp_path_factory):
    """train_all, APR stage only, 2 epochs: (workdir, bundle path)."""
    root = tmp_path_factory.mktemp("resume")
    work, out = root / "work", root / "b.pae"
    torch.set_num_threads(2)
    train_all(_cfg(apr={"epochs": 2}), train_split, out, work, device="cpu", stages=("apr",), show_progress=False)
    return work, out


def test_apr_training_resumes_from_checkpoint(apr_two_epochs, train_split, tmp_path, caplog):
    work0, out0 = apr_two_epochs
    assert load_checkpoint(work0 / "apr_last.ckpt")["epoch"] == 2
    work, out = tmp_path / "work", tmp_path / "b.pae"
    shutil.copytree(work0, work)
    shutil.copy(out0, out)
    caplog.set_level(logging.INFO, logger="pae.train.apr")
    stats = train_all(_cfg(apr={"epochs": 4}), train_split, out, work, device="cpu", stages=("apr",), resume=True,
                      show_progress=False)
    assert "resuming APR training at epoch 2/4" in caplog.text
    assert "APR epoch 1/4" not in caplog.text and "APR epoch 3/4" in caplog.text  # epochs 1-2 not re-run
    ck = load_checkpoint(work / "apr_last.ckpt")
    assert ck["epoch"] == 4
    b = load_bundle(out)
    assert stats["bundle"]["bundle_id"] == b.bundle_id
    _, apr, _, _ = build_models(b)
    for k, v in apr.state_dict().items():
        assert torch.equal(v, ck["apr"][k]), f"bundle weight {k} differs from the final checkpoint"

    # resuming is exact: same weights as 4 uninterrupted epochs
    ref_out = tmp_path / "ref.pae"
    train_all(_cfg(apr={"epochs": 4}), train_split, ref_out, tmp_path / "ref_work", device="cpu", stages=("apr",),
              show_progress=False)
    ref = load_bundle(ref_out)
    for k in b.state_dict("apr"):
        torch.testing.assert_close(b.state_dict("apr")[k], ref.state_dict("apr")[k], rtol=0, atol=1e-6,
                                   msg=f"resumed training diverged from an uninterrupted run at {k}")


def test_resume_from_truncated_checkpoint_is_a_clear_error(apr_two_epochs, train_split, tmp_path):
    work0, _ = apr_two_epochs
    work = tmp_path / "work"
    shutil.copytree(work0, work)
    ck = work / "apr_last.ckpt"
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="cannot resume from") as ei:
        train_all(_cfg(apr={"epochs": 3}), train_split, tmp_path / "b.pae", work, device="cpu", stages=("apr",),
                  resume=True, show_progress=False)
    assert str(ck) in str(ei.value)


def test_resume_with_another_model_config_is_refused(apr_two_epochs, train_split, tmp_path):
    work0, _ = apr_two_epochs
    work = tmp_path / "work"
    shutil.copytree(work0, work)
    with pytest.raises(RuntimeError, match="different model config"):
        train_all(_cfg(apr={"epochs": 3}, model={"latent_dim": 32}), train_split, tmp_path / "b.pae", work,
                  device="cpu", stages=("apr",), resume=True, show_progress=False)


# ------------------------------------------------------------------------------------------ DDP
_DDP_SCRIPT = textwrap.dedent("""
    # Runs `python -m pae_ros.cli train ...` (the same __main__ entry as `torchrun -m pae_ros.cli`),
    # after wrapping the real train_apr so every rank also saves what it trained (rank 1 writes nothing
    # otherwise).
    import os, runpy, sys, torch
    out_dir = sys.argv[1]
    import pae_ros.training.train_apr as ta
    real = ta.train_apr
    calls = []
    def spy(*a, **k):
        apr, loss_fn, stats, feats = real(*a, **k)
        if not calls:  # the DDP-trained published APR (rank 0 later trains calibration folds alone)
            torch.save({"apr": apr.state_dict(), "loss": loss_fn.state_dict()},
                       os.path.join(out_dir, "rank%s.pt" % os.environ["RANK"]))
        calls.append(1)
        return apr, loss_fn, stats, feats
    ta.train_apr = spy
    sys.argv = ["pae_ros.cli"] + sys.argv[2:]
    runpy.run_module("pae_ros.cli", run_name="__main__")
""")


@pytest.fixture(scope="module")
def ddp_run(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["apr"]["epochs"], cfg["pae"]["epochs"], cfg["decoder"]["enabled"] = 2, 5, False
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (root / "ddp_spy.py").write_text(_DDP_SCRIPT)
    out = root / "model.pae"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", str(root / "ddp_spy.py"), str(root),
           "train", "--data", str(tiny_dataset), "--format", "7scenes", "--out", str(out),
           "--config", str(root / "cfg.yaml"), "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    return proc, root, out


def test_ddp_training_with_torchrun(ddp_run, test_split):
    proc, root, out = ddp_run
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "world size 2" in proc.stderr
    r0 = torch.load(root / "rank0.pt", weights_only=True)
    r1 = torch.load(root / "rank1.pt", weights_only=True)
    # trainable parameters identical on both ranks (gradients all-reduced)
    cfg = config_from_dict(yaml.safe_load((root / "cfg.yaml").read_text()))
    names = {n for n, _ in build_apr(cfg.model, 1, pretrained_weights=False).named_parameters()}
    for n in names:
        assert torch.equal(r0["apr"][n], r1["apr"][n]), f"APR parameter {n} differs between ranks"
    # the bundle holds rank 0's weights and the final checkpoint's
    b = load_bundle(out)
    ck = load_checkpoint(out.with_name(out.name + ".work") / "apr_last.ckpt")
    assert ck["epoch"] == 2
    for k, v in b.state_dict("apr").items():
        assert torch.equal(v, r0["apr"][k]) and torch.equal(v, ck["apr"][k]), k
    assert b.has("pae") and not b.has("decoder") and set(b.header["calibration"]) == {"apr", "refined"}
    # it loads and localizes
    loc = Localizer(b, device="cpu")
    est = loc.localize(load_rgb(test_split.frames[0].image_path))
    assert est.finite and est.refined and np.all(np.isfinite(est.position))


def test_ddp_learned_loss_weights_synchronised(ddp_run):
    proc, root, _ = ddp_run
    assert proc.returncode == 0
    r0 = torch.load(root / "rank0.pt", weights_only=True)["loss"]
    r1 = torch.load(root / "rank1.pt", weights_only=True)["loss"]
    for k in ("s_x", "s_q"):
        assert torch.equal(r0[k], r1[k]), (
            f"learned loss weight {k} differs between DDP ranks ({float(r0[k]):.6f} vs {float(r1[k]):.6f}): "
            f"the LearnedPoseLoss must live inside the DDP-wrapped module (train_apr._Trainable) so that its "
            f"gradients are all-reduced like the APR's; otherwise each rank weights its share of the loss "
            f"differently and the checkpoint keeps rank 0's values only")


# -------------------------------------------------------------------------------------- accuracy
def test_tiny_bundle_beats_the_mean_pose_baseline(tiny_bundle, train_split, test_split):
    loc = Localizer.from_bundle(tiny_bundle, device="cpu")
    ests = loc.localize_batch([load_rgb(f.image_path) for f in test_split.frames])
    gt_p, gt_q = test_split.positions, test_split.quaternions
    apr_p = np.stack([e.apr_position for e in ests])
    apr_q = np.stack([e.apr_quaternion for e in ests])
    apr_err = np.median(position_error(apr_p, gt_p))
    mean_err = np.median(position_error(train_split.positions.mean(0), gt_p))
    assert apr_err < mean_err, f"APR median position error {apr_err:.3f} m is not below the mean-position {mean_err:.3f} m"
    mean_q = average_quaternions(train_split.quaternions, np.ones(len(train_split.frames)))
    apr_ori = np.median(orientation_error_deg(apr_q, gt_q))
    mean_ori = np.median(orientation_error_deg(np.broadcast_to(mean_q, gt_q.shape), gt_q))
    assert apr_ori < mean_ori, f"APR median orientation error {apr_ori:.1f} deg vs mean rotation {mean_ori:.1f} deg"
