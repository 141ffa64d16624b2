"""pae_ros.config: defaults, presets, validation naming the dotted key, YAML files, --set."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from pae_ros.config import (PRESETS, Config, ConfigError, config_from_dict, deep_merge, load_config,
                            parse_set_option)

from support import REPO
from support.fixtures import TINY_CONFIG


def _raises_naming(data: dict, key: str) -> str:
    with pytest.raises(ConfigError) as ei:
        config_from_dict(data)
    msg = str(ei.value)
    assert msg.startswith(f"{key}:"), f"error should name {key!r} first, got {msg!r}"
    return msg


def test_defaults_validate_and_round_trip():
    cfg = Config().validate()
    assert config_from_dict() == cfg
    assert config_from_dict({}) == cfg
    # to_dict -> from dict gives the same config (the bundle stores the config this way)
    assert config_from_dict(cfg.to_dict()) == cfg
    tiny = config_from_dict(TINY_CONFIG)
    assert config_from_dict(tiny.to_dict()) == tiny
    assert tiny.model.backbone == "tiny_cnn" and tiny.pae.hidden == [32, 64]


def test_every_leaf_of_the_defaults_is_settable():
    # a full dump of the defaults is itself a valid config file (no key is unknown to the loader)
    d = Config().to_dict()
    text = yaml.safe_dump(d)
    assert config_from_dict(yaml.safe_load(text)) == Config()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate_and_apply(name):
    cfg = config_from_dict(preset=name)
    for section, values in PRESETS[name].items():
        for k, v in values.items():
            assert getattr(getattr(cfg, section), k) == v, f"preset {name}: {section}.{k} not applied"


def test_preset_then_data_order():
    cfg = config_from_dict({"apr": {"epochs": 3}}, preset="quick")
    assert cfg.apr.epochs == 3  # data wins over the preset
    assert cfg.apr.freeze_backbone is True  # the rest of the preset stays
    with pytest.raises(ConfigError, match="preset"):
        config_from_dict(preset="nope")


@pytest.mark.parametrize("data,key", [
    ({"apr": {"lrr": 1e-3}}, "apr.lrr"),
    ({"bogus": 1}, "bogus"),
    ({"model": {"heads": 8}}, "model.heads"),
    ({"refine": {"k": 3, "K": 4}}, "refine.K"),
])
def test_unknown_key_names_dotted_path(data, key):
    msg = _raises_naming(data, key)
    assert "unknown key" in msg


@pytest.mark.parametrize("data,key", [
    ({"apr": {"epochs": "ten"}}, "apr.epochs"),
    ({"apr": {"epochs": 1.5}}, "apr.epochs"),
    ({"apr": {"epochs": True}}, "apr.epochs"),
    ({"apr": {"lr": "fast"}}, "apr.lr"),
    ({"apr": {"lr": True}}, "apr.lr"),
    ({"apr": {"lr": None}}, "apr.lr"),
    ({"apr": {"lr": float("nan")}}, "apr.lr"),
    ({"apr": {"lr": "inf"}}, "apr.lr"),
    ({"refine": {"enabled": "yes"}}, "refine.enabled"),
    ({"refine": {"enabled": 1}}, "refine.enabled"),
    ({"model": {"type": 3}}, "model.type"),
    ({"pae": {"hidden": 64}}, "pae.hidden"),
    ({"apr": 5}, "apr"),
    ({"seed": "zero"}, "seed"),
])
def test_wrong_type_names_dotted_path(data, key):
    _raises_naming(data, key)


@pytest.mark.parametrize("data,key", [
    ({"apr": {"lr": -1e-3}}, "apr.lr"),
    ({"apr": {"lr": 0}}, "apr.lr"),
    ({"apr": {"epochs": 0}}, "apr.epochs"),
    ({"apr": {"lr_gamma": 1.5}}, "apr.lr_gamma"),
    ({"apr": {"cache_features": True}}, "apr.cache_features"),
    ({"refine": {"k": 0}}, "refine.k"),
    ({"refine": {"steps": -1}}, "refine.steps"),
    ({"refine": {"metric": "euclid"}}, "refine.metric"),
    ({"refine": {"orientation": "slerp"}}, "refine.orientation"),
    ({"calibration": {"holdout_fraction": 0.6}}, "calibration.holdout_fraction"),
    ({"model": {"orientation_stride": 4}}, "model.orientation_stride"),
    ({"model": {"type": "resnet"}}, "model.type"),
    ({"model": {"backbone": "vgg"}}, "model.backbone"),
    ({"model": {"dropout": 1.0}}, "model.dropout"),
    ({"model": {"latent_dim": 30, "transformer_heads": 4}}, "model.latent_dim"),
    ({"input": {"crop": 16, "resize": 16}}, "input.crop"),
    ({"input": {"crop": 64, "resize": 48}}, "input.resize"),
    ({"pae": {"hidden": [0, 8]}}, "pae.hidden"),
    ({"pae": {"hidden": []}}, "pae.hidden"),
    ({"pae": {"encode": "both"}}, "pae.encode"),
    ({"pae": {"fourier_levels": 0}}, "pae.fourier_levels"),
    ({"pae": {"pose_loss_weight": -1.0}}, "pae.pose_loss_weight"),
    ({"decoder": {"image_size": 48}}, "decoder.image_size"),
    ({"decoder": {"type": "gan"}}, "decoder.type"),
    ({"decoder": {"epochs": 0}}, "decoder.epochs"),
])
def test_out_of_range_names_dotted_path(data, key):
    _raises_naming(data, key)


@pytest.mark.parametrize("data,key", [
    ({"pae": {"latent_loss_weight": -1.0}}, "pae.latent_loss_weight"),
    ({"decoder": {"lr": -1.0}}, "decoder.lr"),
    ({"decoder": {"batch_size": 0}}, "decoder.batch_size"),
    ({"model": {"transformer_heads": 0}}, "model.transformer_heads"),
    ({"pae": {"hidden": [True, 8]}}, "pae.hidden"),
])
def test_error_names_the_key_actually_wrong(data, key):
    """Each error is a ConfigError naming the key that is wrong, not a neighbouring one."""
    _raises_naming(data, key)


def test_numbers_coerced():
    cfg = config_from_dict({"apr": {"lr": "1e-3", "weight_decay": 0}, "refine": {"lr": 1}})
    assert cfg.apr.lr == 1e-3 and isinstance(cfg.apr.lr, float)
    assert cfg.apr.weight_decay == 0.0 and isinstance(cfg.apr.weight_decay, float)
    assert isinstance(cfg.refine.lr, float)


def test_yaml_file_scientific_notation_and_subset(tmp_path):
    p = tmp_path / "cfg.yaml"
    # YAML 1.1 (PyYAML) reads 1e-3 without a dot as a string: must still be accepted
    p.write_text("apr:\n  lr: 1e-3\n  epochs: 7\nrefine:\n  k: 5\n  metric: reference\n")
    assert yaml.safe_load(p.read_text())["apr"]["lr"] == "1e-3"
    cfg = load_config(p)
    assert cfg.apr.lr == pytest.approx(1e-3) and isinstance(cfg.apr.lr, float)
    assert cfg.apr.epochs == 7 and cfg.refine.k == 5 and cfg.refine.metric == "reference"
    assert cfg.pae == Config().pae  # untouched sections keep defaults


def test_empty_yaml_file_gives_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing here\n")
    assert load_config(p) == Config()


def test_load_config_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apr:\n  lr: [1, 2\n  epochs: 3\n")
    with pytest.raises(ConfigError) as ei:
        load_config(bad)
    assert str(bad) in str(ei.value) and "not valid YAML" in str(ei.value)

    top_list = tmp_path / "list.yaml"
    top_list.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(top_list)

    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")

    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("refine:\n  k: 0\n")
    with pytest.raises(ConfigError) as ei:
        load_config(wrong)
    assert str(wrong) in str(ei.value) and "refine.k" in str(ei.value)


def test_parse_set_option():
    d = parse_set_option(["apr.lr=1e-3", "refine.k=5", "pae.hidden=[8, 16]", "model.type=posenet",
                          "decoder.enabled=false", "apr.epochs=3", "refine.metric=a=b"])
    assert d == {"apr": {"lr": "1e-3", "epochs": 3}, "refine": {"k": 5, "metric": "a=b"},
                 "pae": {"hidden": [8, 16]}, "model": {"type": "posenet"}, "decoder": {"enabled": False}}
    assert parse_set_option([]) == {} and parse_set_option(None) == {}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_option(["apr.lr"])


def test_set_overrides_file_then_preset(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text("apr:\n  lr: 0.5\n  epochs: 7\n")
    cfg = load_config(p, preset="quick", overrides=parse_set_option(["apr.lr=1e-3", "refine.k=4"]))
    assert cfg.apr.lr == pytest.approx(1e-3)   # --set beats the file
    assert cfg.apr.epochs == 7                  # the file beats the preset
    assert cfg.apr.freeze_backbone is True      # the preset beats the defaults
    assert cfg.refine.k == 4
    with pytest.raises(ConfigError, match="refine.kk"):
        load_config(None, overrides=parse_set_option(["refine.kk=4"]))


def test_conflicting_set_options_raise_config_error():
    """``--set apr=3 --set apr.lr=1`` must be a ConfigError (the CLI only catches ConfigError)."""
    for items in (["apr=3", "apr.lr=1"], ["apr.lr=1", "apr.lr.x=2"]):
        try:
            parse_set_option(items)
        except ConfigError:
            continue
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"BUG: parse_set_option({items}) raised {type(e).__name__}: {e} instead of ConfigError "
                        f"(a scalar key is used as a section); the CLI shows a traceback")
        pytest.fail(f"parse_set_option({items}) accepted conflicting keys")


def test_deep_merge():
    a = {"apr": {"lr": 1, "epochs": 2}, "seed": 1}
    b = {"apr": {"lr": 3}, "refine": {"k": 2}}
    assert deep_merge(a, b) == {"apr": {"lr": 3, "epochs": 2}, "seed": 1, "refine": {"k": 2}}
    assert a == {"apr": {"lr": 1, "epochs": 2}, "seed": 1}  # inputs untouched


def test_config_sections_all_validated():
    # every section is a dataclass with validate(); Config.validate reaches all of them
    cfg = Config()
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            assert hasattr(v, "validate"), f"section {f.name} has no validate()"
    cfg.refine.k = -1
    with pytest.raises(ConfigError, match="refine.k"):
        cfg.validate()


def test_shipped_train_yaml_lists_every_key_with_its_default():
    """config/train.yaml documents the whole schema: it loads, and equals the defaults."""
    import dataclasses

    import yaml

    from pae_ros.config import Config, load_config

    path = REPO / "config" / "train.yaml"
    assert load_config(path).to_dict() == Config().to_dict()

    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
        return out

    assert keys(yaml.safe_load(path.read_text())) == keys(dataclasses.asdict(Config()))
