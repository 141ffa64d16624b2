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
# imported here, at collection: a logger created after `import launch` (test_launch.py) would be a
# LaunchLogger that does not propagate, and caplog would miss its lines
import pae_ros.training.train_apr  # noqa: E402,F401
import pae_ros.training.train_decoder  # noqa: E402,F401

from support import REPO
from support.fixtures import TINY_CONFIG, tiny_config, tiny_config_dict

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def train_split(tiny_dataset):
    return read_dataset(tiny_dataset, "7scenes", "train")


@pytest.fixture(scope="module")
def test_split(tiny_dataset):
    return read_dataset(tiny_dataset, "7scenes", "test")


@pytest.fixture(scope="module")
def teacher_setup(train_split):
    """A small (untrained, seeded) APR, the train images and the teacher's outputs."""
    cfg = tiny_config()
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
    cfg = tiny_config(pae={"epochs": 2, "latent_loss_weight": 0.0, "pose_loss_weight": 1.0, "weight_decay": 0.0})
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
    cfg = tiny_config(pae={"epochs": 2, "latent_loss_weight": 0.0, "pose_loss_weight": 0.0, "weight_decay": 0.0})
    pae, _ = train_pae(cfg, apr, LearnedPoseLoss(0.0, -3.0, learnable=False), data, teacher, 1,
                       torch.device("cpu"), show_progress=False)
    init = _seeded_pae(cfg).state_dict()
    for k, v in pae.state_dict().items():
        assert torch.equal(v, init[k]), f"PAE weight {k} changed with both loss weights 0"
    for k, v in apr.state_dict().items():
        assert torch.equal(v, apr_before[k])


def test_pae_latent_term_fits_the_teacher(teacher_setup):
    cfg0, apr0, data, teacher = teacher_setup
    cfg = tiny_config(pae={"epochs": 12, "pose_loss_weight": 0.0})
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
    train_all(tiny_config(apr={"epochs": 2}), train_split, out, work, device="cpu", stages=("apr",),
              show_progress=False)
    return work, out


def test_apr_training_resumes_from_checkpoint(apr_two_epochs, train_split, tmp_path, caplog):
    work0, out0 = apr_two_epochs
    assert load_checkpoint(work0 / "apr_last.ckpt")["epoch"] == 2
    work, out = tmp_path / "work", tmp_path / "b.pae"
    shutil.copytree(work0, work)
    shutil.copy(out0, out)
    caplog.set_level(logging.INFO, logger="pae.train.apr")
    stats = train_all(tiny_config(apr={"epochs": 4}), train_split, out, work, device="cpu", stages=("apr",),
                      resume=True, show_progress=False)
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
    train_all(tiny_config(apr={"epochs": 4}), train_split, ref_out, tmp_path / "ref_work", device="cpu",
              stages=("apr",), show_progress=False)
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
        train_all(tiny_config(apr={"epochs": 3}), train_split, tmp_path / "b.pae", work, device="cpu", stages=("apr",),
                  resume=True, show_progress=False)
    assert str(ck) in str(ei.value)


def test_resume_with_another_model_config_is_refused(apr_two_epochs, train_split, tmp_path):
    work0, _ = apr_two_epochs
    work = tmp_path / "work"
    shutil.copytree(work0, work)
    with pytest.raises(RuntimeError, match="different model config"):
        train_all(tiny_config(apr={"epochs": 3}, model={"latent_dim": 32}), train_split, tmp_path / "b.pae", work,
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
    cfg = tiny_config_dict(apr={"epochs": 2}, pae={"epochs": 5}, decoder={"enabled": False})
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
    assert est.finite and np.all(np.isfinite(est.position))
    assert b.header["published"] in ("apr", "refined") and est.refined == (b.header["published"] == "refined")


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


# ------------------------------------------------------------------ calibration on held-out walks
from pae_ros.bundle import Bundle  # noqa: E402
from pae_ros.training import folds as folds_mod  # noqa: E402
from pae_ros.training.holdout_calibration import decide_published, holdout_pass  # noqa: E402
from pae_ros.training.checkpoint import CheckpointExistsError  # noqa: E402
from pae_ros.training.data import BadPoseError, check_poses, frame_key, walk_folds  # noqa: E402
from pae_ros.training.bundle_parts import NonFiniteBundleError, check_finite, save_checked  # noqa: E402

#: a fast config for the runs below: no decoder, few epochs; neighbours by pose only (the tiny CNN
#: is not pretrained, so image-retrieval candidates would rest on a randomly initialised describer)
_FAST = {"apr": {"epochs": 4}, "pae": {"epochs": 10}, "decoder": {"enabled": False},
         "refine": {"candidates": "knn"}}


def _fast_cfg(**sections):
    d = copy.deepcopy(_FAST)
    for sec, vals in sections.items():
        d.setdefault(sec, {}).update(vals)
    return tiny_config(**d)


def _pose_rows(positions) -> set:
    return {tuple(np.round(p, 9)) for p in np.asarray(positions)}


def test_walk_folds_hold_out_whole_walks_or_one_stretch(train_split):
    frames = train_split.frames
    from pae_ros.coverage import coverage_distance

    folds = walk_folds(frames, 3, 0.15)
    assert len(folds) == 3
    # each fold: one whole walk, no frame of another; every walk once
    walks = [{f.sequence for f in h} for h in folds]
    assert all(len(w) == 1 for w in walks) and set.union(*walks) == {"seq-01", "seq-02", "seq-03"}
    assert all(len(h) == 40 for h in folds)

    def median_cov(seq):
        m = np.array([f.sequence == seq for f in frames])
        P, Q = train_split.positions, train_split.quaternions
        return np.median(coverage_distance(P[m], Q[m], P[~m], Q[~m]))

    # best covered by the other walks first
    covs = [median_cov(next(iter(w))) for w in walks]
    assert covs == sorted(covs), covs
    # a scene with one walk: one contiguous stretch at its end, 15 % of it
    one = [f for f in frames if f.sequence == "seq-01"]
    (held,) = walk_folds(one, 1, 0.15)
    idx = [one.index(f) for f in held]
    assert idx == list(range(40 - 6, 40))
    assert walk_folds(frames, 1, 0.0) == []


@pytest.fixture(scope="module")
def spied_run(train_split, tmp_path_factory):
    """train_all (refit: false, so the published models are fold 1's) with a spy on the real
    holdout_pass recording the table and the held-out poses each calibration ran with; then the
    calibrate stage alone re-run on the finished bundle."""
    root = tmp_path_factory.mktemp("spied")
    out, work = root / "b.pae", root / "work"
    seen = []
    real = folds_mod.holdout_pass

    def spy(loc, images, positions, quaternions):
        seen.append((loc.bundle.table_positions.copy(), np.asarray(positions).copy()))
        return real(loc, images, positions, quaternions)

    folds_mod.holdout_pass = spy
    try:
        cfg = _fast_cfg(calibration={"refit": False})
        train_all(cfg, train_split, out, work, device="cpu", show_progress=False)
        first = load_bundle(out)
        n_first = len(seen)
        train_all(cfg, train_split, out, work, device="cpu", stages=("calibrate",), show_progress=False)
    finally:
        folds_mod.holdout_pass = real
    return seen, n_first, first, load_bundle(out), train_split


def test_calibration_holdout_is_not_in_the_calibration_table(spied_run):
    seen, n_first, first, again, split = spied_run
    assert n_first == 1 and len(seen) == 2
    (walk,) = {f.sequence for f in walk_folds(split.frames, 1, 0.15)[0]}
    held_walk = [f for f in split.frames if f.sequence == walk]
    for table, held in seen:
        assert _pose_rows(held) == _pose_rows(frames_positions_of(held_walk)), "not the whole held-out walk"
        assert _pose_rows(table).isdisjoint(_pose_rows(held)), "a held-out pose is in the calibration table"
        assert len(table) == len(split.frames) - len(held_walk)
    # the final table holds every train frame (the held-out walk too), and says so
    assert len(first.table_positions) == len(split.frames) and first.header["table_frames"]["includes_holdout"]
    assert first.header["calibration_holdout"]["sequences"] == [[f"room/{walk}"]]
    # re-running --stage calibrate on the finished bundle (whose table has the walk) gives the same calibration
    assert again.header["calibration"] == first.header["calibration"]
    assert again.header["published"] == first.header["published"]


def frames_positions_of(frames):
    return np.stack([f.position for f in frames])


def test_tiny_bundle_calibrated_by_a_fold_model_without_the_walk(tiny_bundle, train_split):
    b = load_bundle(tiny_bundle)
    hold = b.header["calibration_holdout"]
    (walk,) = {f.sequence for f in walk_folds(train_split.frames, 1, 0.15)[0]}
    assert hold["mode"] == "walk" and hold["refit"] is True and hold["sequences"] == [[f"room/{walk}"]]
    fold = load_bundle(tiny_bundle.with_name("work") / "fold1" / "fold.pae")
    held = [f for f in train_split.frames if f.sequence == walk]
    assert _pose_rows(fold.table_positions).isdisjoint(_pose_rows(frames_positions_of(held)))
    assert len(fold.table_positions) == len(train_split.frames) - len(held)
    # the published models are trained on every frame, and the table holds every frame
    assert b.header["model_frames"]["count"] == len(train_split.frames) == len(b.table_positions)
    s = b.header["calibration_settings"]
    for k in ("k", "steps", "lr", "orientation", "metric"):
        assert k in s, f"calibration_settings lacks {k}"
    # the settings the bundle runs with: no latent fit (steps 0) where refine.weights chose uniform weights
    steps = 0 if b.header.get("refine_weights") == "uniform" else TINY_CONFIG["refine"]["steps"]
    assert b.header.get("refine_weights") in (None, "pae", "uniform")
    assert s["k"] == TINY_CONFIG["refine"]["k"] and s["steps"] == steps, (s, b.header.get("refine_weights"))
    assert b.header["published"] in ("apr", "refined") and b.header["refine_decision"]["published"] == b.header["published"]
    # no retrieval descriptors from a backbone without ImageNet weights (a fresh tiny CNN is random)
    assert "table.descriptors" not in b.tensors and "descriptors" not in b.header


def _shifted(bundle: Bundle, offset_m: float) -> Bundle:
    t = dict(bundle.tensors)
    t["table.positions"] = t["table.positions"] + torch.tensor([offset_m, 0.0, 0.0], dtype=torch.float64)
    return Bundle(dict(bundle.header), t, bundle.path)


def _leaky(bundle: Bundle, frames) -> Bundle:
    t = {k: v for k, v in bundle.tensors.items() if k != "table.descriptors"}
    t["table.positions"] = torch.as_tensor(frames_positions_of(frames), dtype=torch.float64)
    t["table.quaternions"] = torch.as_tensor(np.stack([f.quaternion for f in frames]), dtype=torch.float64)
    t["table.scene_idx"] = torch.zeros(len(frames), dtype=torch.long)
    return Bundle(dict(bundle.header), t, bundle.path)


def test_refine_auto_picks_the_apr_when_refinement_hurts(tiny_bundle, test_split):
    b = load_bundle(tiny_bundle)
    frames = test_split.frames
    imgs = [load_rgb(f.image_path) for f in frames]
    P, Q = test_split.positions, test_split.quaternions
    # a table shifted 3 m away: every refined position lands ~3 m off
    hurt = holdout_pass(Localizer(_shifted(b, 3.0), device="cpu", refine=True, candidates="knn"), imgs, P, Q)
    d = decide_published(hurt["apr"]["pos_err"], hurt["refined"]["pos_err"], "auto")
    assert d["published"] == "apr", d
    assert d["median_position_m"]["refined"] > d["median_position_m"]["apr"] and d["difference_ci95_m"][0] > 0
    # the same mechanism picks refined when refinement helps (a table of the frames' own poses)
    helps = holdout_pass(Localizer(_leaky(b, frames), device="cpu", refine=True, candidates="knn"), imgs, P, Q)
    assert decide_published(helps["apr"]["pos_err"], helps["refined"]["pos_err"], "auto")["published"] == "refined"
    # true / false force the choice whatever the figures
    assert decide_published(hurt["apr"]["pos_err"], hurt["refined"]["pos_err"], True)["published"] == "refined"
    assert decide_published(helps["apr"]["pos_err"], helps["refined"]["pos_err"], False)["published"] == "apr"


# --------------------------------------------------------------------------- bad poses, finiteness
def _dataset_with_pose(tiny_dataset, tmp_path, x: float) -> tuple[Path, Path]:
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    pose = root / "room" / "seq-02" / "frame-000007.pose.txt"
    rows = [line.split() for line in pose.read_text().splitlines()]
    rows[0][3] = repr(x)
    pose.write_text("\n".join(" ".join(r) for r in rows) + "\n")
    return root, pose


def test_one_absurd_pose_does_not_stretch_the_normalisation(train_split):
    p = train_split.positions
    ref = PoseNormalization.fit(p)
    bad = p.copy()
    bad[17, 0] = 1e5
    robust = PoseNormalization.fit(bad)
    assert abs(robust.scale - ref.scale) / ref.scale < 0.05, (robust.scale, ref.scale)
    assert np.abs(robust.mean - ref.mean).max() < 0.05 * ref.scale


def test_outlier_pose_is_named_by_file_or_skipped(tiny_dataset, tmp_path):
    root, pose = _dataset_with_pose(tiny_dataset, tmp_path, 1e5)
    split = read_dataset(root, "7scenes", "train")
    with pytest.raises(BadPoseError) as ei:
        check_poses(split.frames)
    msg = str(ei.value)
    assert str(pose) in msg and "--skip-bad" in msg and "\n" not in msg
    kept, reasons = check_poses(split.frames, skip_bad=True)
    assert len(kept) == len(split.frames) - 1 and len(reasons) == 1
    assert all(f.position[0] < 1e3 for f in kept)


def test_pose_at_1e200_never_writes_a_nan_bundle(tiny_dataset, tmp_path):
    root, pose = _dataset_with_pose(tiny_dataset, tmp_path, 1e200)
    out = tmp_path / "b.pae"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "pae_ros.cli", "train", "--data", str(root), "--format", "7scenes", "--out", str(out),
           "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and str(pose) in proc.stderr and not out.exists(), proc.stderr[-2000:]
    # --skip-bad drops it; the bundle is finite
    split = read_dataset(root, "7scenes", "train")
    stats = train_all(_fast_cfg(apr={"epochs": 2}, pae={"epochs": 4}), split, out, tmp_path / "work", device="cpu",
                      show_progress=False, skip_bad=True)
    assert stats["bad_poses_skipped"] == 1
    b = load_bundle(out)
    assert np.isfinite(b.position_scale) and b.position_scale < 100
    check_finite(b.header, b.tensors)  # raises on any non-finite number


def test_non_finite_bundle_is_refused_and_nothing_written(tiny_bundle, tmp_path):
    b = load_bundle(tiny_bundle)
    header = copy.deepcopy(b.header)
    header["calibration"]["refined"]["theta_position"][0] = float("nan")
    with pytest.raises(NonFiniteBundleError, match="calibration.refined.theta_position"):
        save_checked(tmp_path / "x.pae", header, dict(b.tensors))
    tensors = dict(b.tensors)
    name = next(k for k in tensors if k.startswith("pae.") and tensors[k].is_floating_point())
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteBundleError, match=name.replace(".", r"\.")):
        save_checked(tmp_path / "x.pae", dict(b.header), tensors)
    assert not (tmp_path / "x.pae").exists() and os.listdir(tmp_path) == []


# ------------------------------------------------------------------------- checkpoints of every stage
def test_refuses_to_overwrite_an_earlier_checkpoint(apr_two_epochs, train_split, tmp_path):
    work0, _ = apr_two_epochs
    work = tmp_path / "work"
    shutil.copytree(work0, work)
    before = (work / "apr_last.ckpt").read_bytes()
    with pytest.raises(CheckpointExistsError) as ei:
        train_all(tiny_config(apr={"epochs": 1}), train_split, tmp_path / "b.pae", work, device="cpu", stages=("apr",),
                  show_progress=False)
    assert "--resume" in str(ei.value) and "--restart" in str(ei.value) and "epoch 2" in str(ei.value)
    assert (work / "apr_last.ckpt").read_bytes() == before and not (tmp_path / "b.pae").exists()
    (work / "fold1").mkdir()
    (work / "fold1" / "fold.pae").write_bytes(b"an earlier run's fold model")
    train_all(tiny_config(apr={"epochs": 1}), train_split, tmp_path / "b.pae", work, device="cpu", stages=("apr",),
              show_progress=False, restart=True)
    assert load_checkpoint(work / "apr_last.ckpt")["epoch"] == 1
    assert not (work / "fold1" / "fold.pae").exists(), "--restart kept an earlier run's fold model"


class _Killed(BaseException):
    pass


def _kill_after(module, n_saves: int, monkeypatch):
    real = module.save_checkpoint
    calls = []

    def save_then_die(path, state):
        real(path, state)
        calls.append(path)
        if len(calls) == n_saves:
            raise _Killed()

    monkeypatch.setattr(module, "save_checkpoint", save_then_die)
    return calls


def test_pae_training_resumes_exactly(teacher_setup, tmp_path, monkeypatch):
    import pae_ros.training.train_pae as tp

    cfg0, apr0, data, teacher = teacher_setup
    cfg = tiny_config(pae={"epochs": 6})
    pl = LearnedPoseLoss(0.0, -3.0, learnable=False)
    ref, _ = train_pae(cfg, copy.deepcopy(apr0), pl, data, teacher, 1, torch.device("cpu"), show_progress=False)
    ck = tmp_path / "pae_last.ckpt"
    _kill_after(tp, 3, monkeypatch)
    with pytest.raises(_Killed):
        train_pae(cfg, copy.deepcopy(apr0), pl, data, teacher, 1, torch.device("cpu"), show_progress=False,
                  ckpt_path=ck, teacher_id="t1")
    monkeypatch.undo()
    assert load_checkpoint(ck)["epoch"] == 3
    with pytest.raises(RuntimeError, match="different teacher"):
        train_pae(cfg, copy.deepcopy(apr0), pl, data, teacher, 1, torch.device("cpu"), show_progress=False,
                  ckpt_path=ck, resume=True, teacher_id="another")
    pae, _ = train_pae(cfg, copy.deepcopy(apr0), pl, data, teacher, 1, torch.device("cpu"), show_progress=False,
                       ckpt_path=ck, resume=True, teacher_id="t1")
    for k, v in pae.state_dict().items():
        torch.testing.assert_close(v, ref.state_dict()[k], rtol=0, atol=1e-6, msg=f"resumed PAE differs at {k}")


def test_decoder_training_resumes_exactly(tmp_path, monkeypatch):
    import pae_ros.training.train_decoder as td
    from pae_ros.training.train_decoder import train_decoder

    cfg = tiny_config(decoder={"epochs": 4, "image_size": 32, "batch_size": 8})
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(24, 128, generator=g), torch.rand(24, 3, 32, 32, generator=g)
    ref, _ = train_decoder(cfg, z, y, "cpu", show_progress=False)
    ck = tmp_path / "decoder_last.ckpt"
    _kill_after(td, 2, monkeypatch)
    with pytest.raises(_Killed):
        train_decoder(cfg, z, y, "cpu", show_progress=False, ckpt_path=ck, pae_id="p")
    monkeypatch.undo()
    dec, _ = train_decoder(cfg, z, y, "cpu", show_progress=False, ckpt_path=ck, resume=True, pae_id="p")
    for k, v in dec.state_dict().items():
        torch.testing.assert_close(v, ref.state_dict()[k], rtol=0, atol=1e-6, msg=f"resumed decoder differs at {k}")


def _spy_saves(monkeypatch, work: Path, saves: list, kill_at: tuple[str, int] | None = None) -> None:
    """Record ``(checkpoint path relative to work, epoch)`` of every APR / PAE / decoder checkpoint
    save (fold stages included); raise :class:`_Killed` right after writing ``kill_at``."""
    import pae_ros.training.train_apr as ta
    import pae_ros.training.train_decoder as td
    import pae_ros.training.train_pae as tp

    for mod in (ta, tp, td):
        def spy(path, state, _real=mod.save_checkpoint):
            _real(path, state)
            key = (Path(path).relative_to(work).as_posix(), int(state["epoch"]))
            saves.append(key)
            if key == kill_at:
                raise _Killed()

        monkeypatch.setattr(mod, "save_checkpoint", spy)


def test_killed_run_leaves_no_bundle_at_out_and_resumes(train_split, tmp_path, monkeypatch, caplog):
    """Killed in each stage in turn (APR, PAE, decoder, the calibration fold's APR and PAE), every
    resumed run continues each stage from its checkpoint: across all runs each epoch of each stage is
    trained (checkpointed) exactly once, in the uninterrupted run's order, and the bundle equals it.

    The logs are checked per run (``caplog.clear()``): a run that is killed logs its own "APR epoch
    1/" lines, which a whole-test ``caplog.text`` shows whenever the root logger is at INFO (importing
    ``launch``, as test_launch.py does, sets it so for the rest of the session)."""
    cfg = _fast_cfg(decoder={"enabled": True, "epochs": 3}, calibration={"holdout": "walk", "folds": 1,
                                                                         "refit": True})
    caplog.set_level(logging.INFO, logger="pae")
    ref_out, ref_work = tmp_path / "ref.pae", tmp_path / "ref_work"
    ref_saves: list = []
    with monkeypatch.context() as m:
        _spy_saves(m, ref_work, ref_saves)
        train_all(cfg, train_split, ref_out, ref_work, device="cpu", show_progress=False)
    stages = ["apr_last.ckpt", "pae_last.ckpt", "decoder_last.ckpt", "fold1/apr_last.ckpt", "fold1/pae_last.ckpt"]
    assert [p for i, (p, _) in enumerate(ref_saves) if i == 0 or ref_saves[i - 1][0] != p] == stages
    epochs = {"apr": 4, "pae": 10, "decoder": 3}

    out, work = tmp_path / "b.pae", tmp_path / "work"
    # stale temporaries of an earlier killed run: removed; a fresh one (a live write) is kept
    work.mkdir()
    stale = [tmp_path / ".b.pae.x1y2.tmp", work / ".pae_last.ckpt.abcd.tmp"]
    for p in stale:
        p.write_bytes(b"\0" * 100)
        os.utime(p, (time_now() - 3600, time_now() - 3600))
    fresh = tmp_path / ".b.pae.live.tmp"
    fresh.write_bytes(b"x")

    all_saves: list = []
    kills = [(p, 3 if "pae" in p else 2) for p in stages] + [None]
    for r, kill_at in enumerate(kills):
        caplog.clear()
        saves: list = []
        with monkeypatch.context() as m:
            _spy_saves(m, work, saves, kill_at)
            if kill_at is None:
                train_all(cfg, train_split, out, work, device="cpu", show_progress=False, resume=r > 0)
            else:
                with pytest.raises(_Killed):
                    train_all(cfg, train_split, out, work, device="cpu", show_progress=False, resume=r > 0)
        assert saves and saves[-1] == (kill_at or ref_saves[-1]), (kill_at, saves[-3:])
        if r > 0:  # resumed where the previous run was killed, at the epoch after its checkpoint
            path, epoch = kills[r - 1]
            assert saves[0] == (path, epoch + 1), f"run {r} after a kill at {path} epoch {epoch}: first save {saves[0]}"
            stage = path.split("/")[-1].split("_")[0]
            name = {"apr": "APR", "pae": "PAE", "decoder": "decoder"}[stage]
            assert f"resuming {name} training at epoch {epoch}/{epochs[stage]} from {work / path}" in caplog.text
            # the stages finished before the kill only reload their last checkpoint, none trains again
            for done in stages[:stages.index(path)]:
                st = done.split("/")[-1].split("_")[0]
                name = {"apr": "APR", "pae": "PAE", "decoder": "decoder"}[st]
                assert f"resuming {name} training at epoch {epochs[st]}/{epochs[st]} from {work / done}" \
                    in caplog.text, done
            # an APR's first epoch is trained again only where no checkpoint of it existed: the fold's,
            # when this run is the first to reach it
            fresh_fold = not path.startswith("fold1/") and (kill_at is None or kill_at[0].startswith("fold1/"))
            assert caplog.text.count("APR epoch 1/") == int(fresh_fold), caplog.text[-2000:]
        all_saves += saves
        if kill_at is not None:
            assert not out.exists(), "an unfinished run wrote the bundle at --out"
        if r == 0:
            assert not any(p.exists() for p in stale) and fresh.exists()
            with pytest.raises(CheckpointExistsError):  # forgetting --resume is refused
                train_all(cfg, train_split, out, work, device="cpu", show_progress=False)
        if r == 1:  # killed in the PAE stage: the bundle so far holds the APR
            assert (work / "partial.pae").exists() and load_bundle(work / "partial.pae").has("apr")
    assert all_saves == ref_saves, "some epoch was trained twice or never across the killed and resumed runs"
    b, ref = load_bundle(out), load_bundle(ref_out)
    assert b.has("pae") and b.has("decoder") and not (work / "partial.pae").exists()
    for k, v in ref.tensors.items():
        torch.testing.assert_close(b.tensors[k], v, rtol=0, atol=1e-5, msg=f"resumed bundle differs at {k}")
    assert b.header["calibration"] == ref.header["calibration"]


def time_now() -> float:
    import time

    return time.time()


def test_checkpoints_and_bundles_respect_the_umask(tiny_bundle, tmp_path):
    import stat

    b = load_bundle(tiny_bundle)
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "a.ckpt", {"epoch": 1})
        save_checked(tmp_path / "a.pae", dict(b.header), dict(b.tensors))
        for name in ("a.ckpt", "a.pae"):
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name
        os.umask(0o077)
        save_checkpoint(tmp_path / "b.ckpt", {"epoch": 1})
        assert stat.S_IMODE(os.stat(tmp_path / "b.ckpt").st_mode) == 0o600
    finally:
        os.umask(old)


def test_sigma_scale_matches_the_hit_rate_not_the_likelihood():
    from pae_ros.training.holdout_calibration import sigma_scale

    rng = np.random.default_rng(0)
    e = np.linalg.norm(rng.normal(size=(4000, 3)), axis=1)       # 3-D Gaussian errors, sigma 1
    assert 0.93 < sigma_scale(e, np.ones(len(e))) < 1.07
    assert 1.85 < sigma_scale(2 * e, np.ones(len(e))) < 2.15   # sigma given 2x too small
    heavy = e.copy()
    heavy[:200] *= 30                                             # 5 % gross errors: ML sigma would be ~7x
    c = sigma_scale(heavy, np.ones(len(e)))
    assert 0.9 < c < 1.4, c


def test_fold_apr_reuses_the_main_runs_cached_features_and_trains_the_same_model(train_split, tmp_path,
                                                                                  monkeypatch):
    """Frozen backbone with cached features: the calibration fold's APR takes its frames' features
    from the main APR stage (the backbone runs over the images once, not twice) and comes out
    exactly as the fold APR that computes them itself; train_stats has every stage's seconds."""
    import pae_ros.training.train_apr as ta

    cfg = _fast_cfg(apr={"freeze_backbone": True, "cache_features": True, "epochs": 2}, pae={"epochs": 3})
    calls = []
    real = ta.cache_views

    def counting(apr, data, *a, **k):
        calls.append(len(data))
        return real(apr, data, *a, **k)

    monkeypatch.setattr(ta, "cache_views", counting)
    stats = train_all(cfg, train_split, tmp_path / "a.pae", tmp_path / "wa", device="cpu", show_progress=False)
    (held,) = stats["holdout_frames"]
    assert calls == [len(train_split.frames)], f"the backbone ran over {calls} frames, not once over all of them"
    assert {"apr", "pae", "fold1_apr", "fold1_pae", "fold1_holdout_pass"} <= set(stats["stage_seconds"])
    assert all(v["wall_s"] >= 0 and v["cpu_s"] >= 0 for v in stats["stage_seconds"].values())
    # the same run with nothing to reuse: the fold computes its own features
    monkeypatch.setattr("pae_ros.training.folds.feature_subset", lambda source, frames: None)
    calls.clear()
    train_all(cfg, train_split, tmp_path / "b.pae", tmp_path / "wb", device="cpu", show_progress=False)
    assert calls == [len(train_split.frames), len(train_split.frames) - held]
    fa, fb = (load_bundle(tmp_path / w / "fold1" / "fold.pae") for w in ("wa", "wb"))
    assert fa.tensors.keys() == fb.tensors.keys()
    for k, v in fb.tensors.items():
        assert torch.equal(fa.tensors[k], v), f"the fold model differs at {k} when it reuses the features"
    assert load_bundle(tmp_path / "a.pae").header["calibration"] == load_bundle(tmp_path / "b.pae").header["calibration"]


@pytest.mark.parametrize("model", ["posenet", "mstransformer"])
def test_table_descriptors_are_the_localizers_query_descriptors(train_split, tmp_path, model):
    """Frozen ImageNet EfficientNet-Lite0 (as the quick preset): the table's descriptors reuse the APR
    stage's cached pooled features (PoseNet: its float16 inputs; MS-Transformer, which reads the
    stride-16 map: the float32 pooled output of the same backbone pass) and equal what the Localizer
    computes for the same images."""
    cfg = tiny_config(model={"type": model, "backbone": "efficientnet_lite0", "orientation_stride": 16},
                      apr={"epochs": 1, "freeze_backbone": True, "cache_features": True}, pae={"epochs": 2},
                      decoder={"enabled": False}, calibration={"holdout_fraction": 0.0})
    out = tmp_path / "b.pae"
    train_all(cfg, train_split, out, tmp_path / "work", device="cpu", stages=("apr", "pae", "calibrate"),
              show_progress=False)
    b = load_bundle(out)
    d = b.tensors["table.descriptors"]
    assert d.dtype == torch.float32 and d.shape[0] == len(b.table_positions) == len(train_split.frames)
    assert b.header["descriptors"]["source"] == "apr_backbone"
    assert b.header["descriptors"]["reused_cached_features"] == len(train_split.frames)
    loc = Localizer(b, device="cpu")
    rows = [0, 17, 95]
    q = loc.describe([load_rgb(train_split.frames[i].image_path) for i in rows])
    # PoseNet's cached features are float16; the MS-Transformer's pooled features are float32 (a few 1e-6
    # apart from the Localizer's: other batch sizes, as the separate descriptor pass had too)
    np.testing.assert_allclose(d[rows].numpy(), q, atol=2e-3 if model == "posenet" else 2e-5)


def test_table_descriptors_of_a_fine_tuned_backbone_come_from_the_pretrained_one(train_split, tmp_path):
    """Partial fine-tuning (the last backbone block trains): the APR's backbone is no longer the
    ImageNet one, so the table's descriptors come from a fresh pretrained describer, the same one
    the Localizer computes its query descriptors with."""
    cfg = _fast_cfg(model={"type": "posenet", "backbone": "efficientnet_lite0"},
                    apr={"epochs": 1, "freeze_backbone": True, "cache_features": True, "finetune_blocks": 1},
                    pae={"epochs": 2}, decoder={"enabled": False}, calibration={"holdout_fraction": 0.0})
    out = tmp_path / "b.pae"
    train_all(cfg, train_split, out, tmp_path / "work", device="cpu", stages=("apr", "pae", "calibrate"),
              show_progress=False)
    b = load_bundle(out)
    assert b.header["descriptors"]["source"] == "efficientnet_lite0_pretrained"
    assert b.header["descriptors"]["reused_cached_features"] == 0
    loc = Localizer(b, device="cpu")
    assert not loc.shares_backbone
    rows = [0, 17, 95]
    q = loc.describe([load_rgb(train_split.frames[i].image_path) for i in rows])
    np.testing.assert_allclose(b.tensors["table.descriptors"][rows].numpy(), q, atol=2e-5)
