"""pae_ros.localizer_settings.resolve: which of bundle header, config and argument decides each
Localizer setting, and the errors naming a bad value."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from pae_ros.bundle import BundleError
from pae_ros.config import config_from_dict
from pae_ros.geometric.stage import SHORTLIST_K
from pae_ros.localizer_settings import LocalizerSettings, resolve
from pae_ros.retrieval import Describer

GATE = {"rules": {"manifold": 0.5}}


def _cfg(**refine):
    return config_from_dict({"refine": refine})


def test_defaults_come_from_the_config():
    cfg = _cfg(k=4, steps=12, lr=0.05, weight_decay=0.01, orientation="average", metric="reference",
               candidates="union", retrieval_k=5, weights="pae")
    s = resolve({}, cfg)
    assert (s.k, s.steps, s.lr, s.weight_decay, s.orientation, s.metric, s.candidates, s.retrieval_k, s.weights) == \
        (4, 12, 0.05, 0.01, "average", "reference", "union", 5, "pae")
    assert s.published is None and s.ood_gate is None and s.geometric_k == SHORTLIST_K
    assert s.threads is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.k = 1


def test_explicit_arguments_beat_the_config():
    s = resolve({}, _cfg(k=4, steps=12), k=2, steps=7, lr=0.3, orientation="average", metric="reference",
                candidates="knn", retrieval_k=9, geometric_k=3, threads=2)
    assert (s.k, s.steps, s.lr, s.orientation, s.metric, s.candidates, s.retrieval_k, s.geometric_k, s.threads) == \
        (2, 7, 0.3, "average", "reference", "knn", 9, 3, 2)


@pytest.mark.parametrize("published, enabled, refine, want", [
    (None, "auto", None, True),          # no header decision: the config's auto means refined
    (None, False, None, False),
    (None, True, "auto", True),
    ("apr", True, None, False),          # the header's recorded decision beats refine.enabled
    ("refined", False, None, True),
    ("geometric", True, None, False),
    ("apr", "auto", True, True),         # an explicit argument beats the header
    ("refined", "auto", "false", False),
    ("apr", "auto", "true", True),
])
def test_refine_enabled_precedence(published, enabled, refine, want):
    header = {} if published is None else {"published": published}
    s = resolve(header, _cfg(enabled=enabled), refine=refine)
    assert s.refine is want and s.published == published


@pytest.mark.parametrize("config_weights, header_weights, steps, want", [
    ("auto", None, None, ("pae", 30)),       # nothing recorded: the PAE fit with the config's steps
    ("auto", "uniform", None, ("uniform", 0)),  # the header's decision for the config's auto
    ("auto", "pae", None, ("pae", 30)),
    ("pae", "uniform", None, ("pae", 30)),   # a config that chose beats the header
    ("uniform", "pae", None, ("uniform", 0)),
    ("auto", "uniform", 5, ("pae", 5)),      # an explicit step count decides both
    ("pae", None, 0, ("uniform", 0)),
])
def test_weights_and_steps_precedence(config_weights, header_weights, steps, want):
    header = {} if header_weights is None else {"refine_weights": header_weights}
    s = resolve(header, _cfg(weights=config_weights, steps=30), steps=steps)
    assert (s.weights, s.steps) == want


def test_ood_gate_from_header_argument_or_off():
    assert resolve({"ood": GATE}, _cfg()).ood_gate == GATE
    assert resolve({"ood": GATE}, _cfg(), ood=False).ood_gate is None
    other = {"rules": {"residual": 1.0}}
    assert resolve({"ood": GATE}, _cfg(), ood=other).ood_gate == other
    assert resolve({}, _cfg()).ood_gate is None


@pytest.mark.parametrize("kwargs, needle", [
    ({"k": 0}, "k=0"), ({"steps": -1}, "steps=-1"), ({"lr": 0.0}, "lr=0.0"), ({"retrieval_k": 0}, "retrieval_k=0"),
    ({"candidates": "nearest"}, "unknown candidates 'nearest'"), ({"geometric_k": 0}, "geometric_k must be >= 1"),
    ({"threads": 0}, "threads must be >= 1"), ({"refine": "yes"}, "refine must be auto, true or false"),
])
def test_bad_arguments_are_named(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        resolve({}, _cfg(), **kwargs)


@pytest.mark.parametrize("header, needle", [
    ({"published": "pae"}, "header 'published' is 'pae'"),
    ({"refine_weights": "softmax"}, "header 'refine_weights' is 'softmax'"),
])
def test_bad_header_values_name_the_bundle_and_key(header, needle):
    with pytest.raises(BundleError, match=f"my.pae: {needle}"):
        resolve(header, _cfg(), where="my.pae")


def test_candidate_mode_resolves_auto_by_retrieval():
    s = resolve({}, _cfg())
    assert isinstance(s, LocalizerSettings) and s.candidates == "auto"
    assert s.candidate_mode(True) == "retrieval" and s.candidate_mode(False) == "knn"
    assert resolve({}, _cfg(), candidates="union").candidate_mode(False) == "union"


def test_backbone_rule_and_describer_for_config():
    """One rule says whether the APR's backbone is unchanged: then the describer runs it (no second
    network), else a pretrained copy of the configured backbone, built on first use."""
    from pae_ros.models.backbone import build_backbone

    frozen = config_from_dict({"model": {"backbone": "tiny_cnn"}, "apr": {"freeze_backbone": True}})
    tuned = config_from_dict({"model": {"backbone": "tiny_cnn"},
                              "apr": {"freeze_backbone": True, "finetune_blocks": 1}})
    trained = config_from_dict({"model": {"backbone": "tiny_cnn"}})
    assert frozen.apr.backbone_unchanged()
    assert not tuned.apr.backbone_unchanged() and not trained.apr.backbone_unchanged()
    torch.manual_seed(0)
    own = build_backbone("tiny_cnn")
    shared = Describer.for_config(frozen, own)
    assert shared.shares_backbone and shared.backbone is own and shared.source == "apr_backbone"
    fresh = Describer.for_config(tuned, own)
    assert not fresh.shares_backbone and fresh.source == "tiny_cnn_pretrained"
    assert fresh._backbone is None                   # nothing built until the first batch
    d = fresh(torch.zeros(2, 3, 48, 48))
    assert d.shape[0] == 2 and fresh.backbone is not own
    d_own = shared(torch.rand(3, 3, 48, 48))
    assert d_own.dtype == "float32" and abs(float((d_own ** 2).sum(1).mean()) - 1.0) < 1e-5
