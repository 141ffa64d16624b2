"""The APR models and APR training variants: backbone trunk/tail split, partial fine-tuning of the
last backbone blocks on cached features, cached augmented views, and the ``full`` preset running
(one epoch, tiny backbone)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pae_ros.bundle import build_models, load_bundle
from pae_ros.config import ConfigError, config_from_dict
from pae_ros.datasets import read_dataset
from pae_ros.models import build_apr
from pae_ros.models.backbone import build_backbone
from pae_ros.training.data import FrameImages, PoseNormalization, frames_positions, scenes_of
from pae_ros.training.run import train_all
from pae_ros.training.train_apr import cache_views, tail_start_of, train_apr

from support.fixtures import tiny_config


@pytest.fixture(scope="module")
def train_split(tiny_dataset):
    return read_dataset(tiny_dataset, "7scenes", "train")


def _data(split, cfg, train=True):
    norm = PoseNormalization.fit(frames_positions(split.frames))
    return FrameImages(split.frames, scenes_of(split), norm, cfg.input.resize, cfg.input.crop, train=train,
                       random_crop=cfg.input.random_crop, jitter=cfg.input.color_jitter, seed=cfg.seed)


def test_trunk_then_tail_equals_the_full_forward_at_every_cut():
    torch.manual_seed(0)
    bb = build_backbone("tiny_cnn").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = bb(x)
        for k in range(bb.num_blocks + 1):
            out = bb.run_tail(bb.run_trunk(x, k), k)
            assert set(out) == set(ref)
            for name in ref:
                torch.testing.assert_close(out[name], ref[name], msg=f"cut {k}: {name} differs")
    with pytest.raises(ValueError, match="block index 6 out of range"):
        bb.run_trunk(x, 6)


@pytest.mark.slow  # trains an APR
def test_partial_finetuning_trains_only_the_last_blocks(train_split, tmp_path):
    cfg = tiny_config(apr={"epochs": 3, "freeze_backbone": True, "cache_features": True, "finetune_blocks": 2,
                           "tail_lr_scale": 1.0})
    data = _data(train_split, cfg)
    torch.manual_seed(cfg.seed)
    before = build_apr(cfg.model, 1).backbone.state_dict()  # same seed -> the initial weights train_apr starts from
    apr, _, stats, feats = train_apr(cfg, data, scenes_of(train_split), tmp_path, torch.device("cpu"),
                                     show_progress=False)
    after = apr.backbone.state_dict()
    assert stats["trained_backbone_blocks"] == 2 and stats["cached_features"]
    # tiny_cnn blocks: to_s8.0, to_s8.1, to_s8.2, to_s16, to_s32 -> the last two are to_s16, to_s32
    changed = {k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("to_s8") else "")
               for k in before if "weight" in k and not torch.equal(before[k], after[k])}
    assert changed == {"to_s16", "to_s32"}, changed
    for k in before:  # BatchNorm statistics stay frozen everywhere
        if "running" in k:
            assert torch.equal(before[k], after[k]), k
    # the features handed to the PAE stage are those of the trained network on centre crops
    with torch.no_grad():
        direct = apr.features(data.centre_batch(range(len(data))))
    torch.testing.assert_close(feats["pooled"].float(), direct["pooled"], atol=2e-2, rtol=2e-2)


def test_finetune_blocks_count_the_blocks_the_model_uses():
    cfg = tiny_config(model={"type": "mstransformer", "orientation_stride": 16, "transformer_layers": 1})
    apr = build_apr(cfg.model, 1)
    assert tail_start_of(apr, 1) == 3  # to_s16 (the s16 tap); to_s32 is never run
    assert tail_start_of(apr, 4) == 0
    with pytest.raises(ValueError, match="come from the first 4 blocks"):
        tail_start_of(apr, 5)
    assert tail_start_of(build_apr(tiny_config().model, 1), 5) == 0  # posenet: every block and the head
    # the transformer's tail stops at the s16 tap, and training it changes only that block
    bb = apr.backbone
    x = torch.randn(2, 3, 48, 48)
    out = bb.run_tail(bb.run_trunk(x, 3), 3, apr.feature_keys)
    assert "s16" in out and "pooled" not in out
    assert bb.tail_modules(3, apr.feature_keys) == [bb.to_s16]
    with pytest.raises(ConfigError, match="apr.finetune_blocks: needs freeze_backbone"):
        tiny_config(apr={"finetune_blocks": 2, "freeze_backbone": False})


def test_cached_views_are_the_centre_crop_then_distinct_augmented_views(train_split):
    cfg = tiny_config(input={"resize": 56, "crop": 48, "random_crop": True, "color_jitter": 0.3})
    data = _data(train_split, cfg)
    torch.manual_seed(cfg.seed)  # the model's initial weights, whatever ran before in this process
    apr = build_apr(cfg.model, 1).eval()
    f = cache_views(apr, data, torch.device("cpu"), views=3, seed=0, show_progress=False)
    assert f["pooled"].shape == (3, len(data), 64)
    with torch.no_grad():
        centre = apr.features(data.centre_batch(range(len(data))))["pooled"]
    torch.testing.assert_close(f["pooled"][0].float(), centre, atol=1e-2, rtol=1e-2)
    d01 = (f["pooled"][0] - f["pooled"][1]).float().abs().mean()
    d12 = (f["pooled"][1] - f["pooled"][2]).float().abs().mean()
    # augmented views differ from the centre crop and from each other, by a good part of the
    # features' own size (the untrained tiny CNN's features are ~1e-3: no absolute bound fits)
    scale = centre.abs().mean()
    assert d01 > 0.1 * scale and d12 > 0.1 * scale, (d01, d12, scale)
    again = cache_views(apr, data, torch.device("cpu"), views=3, seed=0, show_progress=False)
    assert torch.equal(again["pooled"], f["pooled"])  # seeded


def test_cache_views_without_any_augmentation_caches_one_view_and_says_so(train_split, tmp_path, caplog):
    cfg = tiny_config(apr={"epochs": 1, "freeze_backbone": True, "cache_features": True, "cache_views": 3})
    _, _, stats, _ = train_apr(cfg, _data(train_split, cfg), scenes_of(train_split), tmp_path, torch.device("cpu"),
                               show_progress=False)
    assert stats["cache_views"] == 1
    assert "no augmentation is configured" in caplog.text


@pytest.mark.slow  # trains a bundle
def test_quick_preset_variant_trains_a_bundle_that_loads(train_split, tmp_path):
    """Partial fine-tuning + cached views through train_all: the bundle keeps the fine-tuned
    backbone and the Localizer's APR reproduces the trained model."""
    from pae_ros.pipeline import Localizer

    cfg = tiny_config(input={"resize": 56, "crop": 48, "random_crop": True, "color_jitter": 0.2},
                      apr={"epochs": 2, "freeze_backbone": True, "cache_features": True, "finetune_blocks": 2,
                           "cache_views": 2})
    out = tmp_path / "b.pae"
    stats = train_all(cfg, train_split, out, tmp_path / "work", device="cpu", stages=("apr", "pae"),
                      show_progress=False)
    assert stats["apr"]["trained_backbone_blocks"] == 2 and stats["apr"]["cache_views"] == 2
    b = load_bundle(out)
    _, apr, _, _ = build_models(b)
    fresh = build_apr(cfg.model, 1).backbone.state_dict()
    assert not torch.equal(apr.backbone.state_dict()["to_s32.0.weight"], fresh["to_s32.0.weight"])
    loc = Localizer(b, device="cpu", refine=True)
    from pae_ros.datasets import load_rgb

    est = loc.localize(load_rgb(train_split.frames[0].image_path))
    assert np.all(np.isfinite(est.position))


@pytest.mark.slow  # trains an APR
def test_full_preset_runs_one_epoch_end_to_end(train_split, tmp_path):
    """The GPU recipe (fine-tuned backbone, augmentation, 4-layer MS-Transformer) runs here:
    one epoch on the tiny backbone, every backbone layer trains."""
    over = {"model": {"backbone": "tiny_cnn", "latent_dim": 64, "head_hidden_dim": 64},
            "input": {"resize": 56, "crop": 48}, "apr": {"epochs": 1, "batch_size": 16}}
    cfg = config_from_dict(over, "full")
    assert cfg.model.type == "mstransformer" and not cfg.apr.freeze_backbone and cfg.input.random_crop
    data = _data(train_split, cfg)
    torch.manual_seed(cfg.seed)
    before = build_apr(cfg.model, 1).backbone.state_dict()
    apr, _, stats, feats = train_apr(cfg, data, scenes_of(train_split), tmp_path, torch.device("cpu"),
                                     show_progress=False)
    assert feats is None and not stats["cached_features"] and np.isfinite(stats["final_loss"]["loss"])
    after = apr.backbone.state_dict()
    assert not torch.equal(before["to_s8.0.0.weight"], after["to_s8.0.0.weight"])  # the first layer trained


@pytest.mark.parametrize("model", [
    {"type": "mstransformer", "orientation_stride": 16, "transformer_layers": 1, "transformer_ffn_dim": 64},
    {"type": "mstransformer", "orientation_stride": 8, "transformer_layers": 1, "transformer_ffn_dim": 64},
    {"type": "posenet"},
])
def test_onnx_export_of_each_apr_variant_agrees_with_torch(model, tmp_path):
    """``pae export`` / the Localizer's onnx backend go through onnx_apr.export_apr: every APR
    variant the presets use must export and agree with eager torch."""
    import onnxruntime as ort

    from pae_ros.onnx_apr import export_apr

    cfg = tiny_config(model={**model, "head_hidden_dim": 64})
    torch.manual_seed(0)
    apr = build_apr(cfg.model, 1).eval()
    path = export_apr(apr, [1.0, 2.0, 3.0], 2.5, 48, tmp_path / "apr.onnx")
    x = torch.randn(3, 3, 48, 48)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    p, q, z, s = sess.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = apr(x)
    np.testing.assert_allclose(p, ref["x"].numpy() * 2.5 + np.array([1.0, 2.0, 3.0]), atol=1e-4)
    np.testing.assert_allclose(z, torch.cat([ref["z_x"], ref["z_q"]], -1).numpy(), atol=1e-4)
    qn = ref["q"] / ref["q"].norm(dim=-1, keepdim=True)
    qn = torch.where(qn[:, :1] < 0, -qn, qn)
    np.testing.assert_allclose(q, qn.numpy(), atol=1e-4)
