"""The one configuration schema of pae_ros (training, refinement, calibration, input).

A config is nested dataclasses; YAML files hold any subset of keys and are validated when
loaded: an unknown key, a wrong type or an out-of-range value raises :class:`ConfigError` whose
message names the key by its dotted path (e.g. ``apr.lr``). Every key here is read by the code.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting (a config key, or a ROS parameter of the node) is unknown, has the wrong type, or
    is out of range. The message names it."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass
class ModelConfig:
    #: ``posenet`` (single scene, pooled features) or ``mstransformer`` (multi-scene, transformer)
    type: str = "mstransformer"
    #: ``efficientnet_lite0`` (ImageNet-pretrained), ``efficientnet_lite0_scratch`` or ``tiny_cnn`` (tests)
    backbone: str = "efficientnet_lite0"
    latent_dim: int = 256
    dropout: float = 0.1
    #: transformer encoder and decoder layers each (paper: 6; small default for CPU)
    transformer_layers: int = 2
    transformer_heads: int = 4
    transformer_ffn_dim: int = 512
    #: hidden width of the MS-Transformer regression heads (paper: 1024)
    head_hidden_dim: int = 1024
    #: feature stride of the MS-Transformer orientation branch (paper: 8; 16 is ~4x cheaper)
    orientation_stride: int = 8

    def validate(self, p: str) -> None:
        _check(self.type in ("posenet", "mstransformer"), f"{p}.type", f"must be posenet or mstransformer, got {self.type!r}")
        _check(self.backbone in ("efficientnet_lite0", "efficientnet_lite0_scratch", "tiny_cnn"), f"{p}.backbone",
               f"unknown backbone {self.backbone!r}")
        _check(self.transformer_heads >= 1, f"{p}.transformer_heads", "must be >= 1")
        _check(self.latent_dim > 0 and self.latent_dim % self.transformer_heads == 0, f"{p}.latent_dim",
               "must be positive and divisible by transformer_heads")
        _check(0.0 <= self.dropout < 1.0, f"{p}.dropout", "must be in [0, 1)")
        _check(self.transformer_layers >= 1, f"{p}.transformer_layers", "must be >= 1")
        _check(self.orientation_stride in (8, 16), f"{p}.orientation_stride", "must be 8 or 16")


@dataclass
class InputConfig:
    #: images are resized so their shorter side is this many pixels ...
    resize: int = 256
    #: ... then a square crop of this size is taken (random in training, centre at test)
    crop: int = 224
    #: colour jitter strength (brightness/contrast/saturation, 0 = off) in APR training
    color_jitter: float = 0.3
    #: random crop (instead of centre crop) in APR training
    random_crop: bool = True

    def validate(self, p: str) -> None:
        _check(self.crop >= 32, f"{p}.crop", "must be >= 32 px")
        _check(self.resize >= self.crop, f"{p}.resize", "must be >= crop")
        _check(0.0 <= self.color_jitter <= 1.0, f"{p}.color_jitter", "must be in [0, 1]")


@dataclass
class APRTrainConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4
    #: multiply lr by lr_gamma every lr_step_epochs epochs
    lr_step_epochs: int = 10
    lr_gamma: float = 0.5
    #: initial learned loss weights (paper: 0/-3 indoor, -3/-6.5 outdoor)
    s_x_init: float = 0.0
    s_q_init: float = -3.0
    #: freeze the pretrained backbone and train only the rest
    freeze_backbone: bool = False
    #: with freeze_backbone: still train the last this many backbone blocks that the model uses
    #: (posenet: the last blocks and the head conv; mstransformer: those before its stride-16 /
    #: stride-8 taps); partial fine-tuning; with cache_features the features before them are cached.
    #: The backbone then differs from the ImageNet one: retrieval needs its own describer.
    finetune_blocks: int = 0
    #: learning rate of those backbone blocks, as a factor of apr.lr
    tail_lr_scale: float = 0.1
    #: with a frozen backbone: compute backbone features once and train the rest from them
    cache_features: bool = False
    #: views cached per frame: the centre crop plus cache_views - 1 augmented ones (random crop
    #: when input.random_crop, colour jitter input.color_jitter); each epoch draws one per frame
    cache_views: int = 1
    num_workers: int = 0

    def backbone_unchanged(self) -> bool:
        """Whether training leaves the backbone as built (``freeze_backbone`` without
        ``finetune_blocks``): then its pooled features are the retrieval descriptors (ImageNet's
        for ``efficientnet_lite0``) and one forward serves the APR and retrieval."""
        return bool(self.freeze_backbone and self.finetune_blocks == 0)

    def validate(self, p: str) -> None:
        for k in ("epochs", "batch_size", "lr_step_epochs"):
            _check(getattr(self, k) >= 1, f"{p}.{k}", "must be >= 1")
        _check(self.lr > 0, f"{p}.lr", "must be > 0")
        _check(self.weight_decay >= 0, f"{p}.weight_decay", "must be >= 0")
        _check(0 < self.lr_gamma <= 1, f"{p}.lr_gamma", "must be in (0, 1]")
        _check(not self.cache_features or self.freeze_backbone, f"{p}.cache_features",
               "needs freeze_backbone: true (features of a training backbone change)")
        _check(self.finetune_blocks >= 0, f"{p}.finetune_blocks", "must be >= 0")
        _check(self.finetune_blocks == 0 or self.freeze_backbone, f"{p}.finetune_blocks",
               "needs freeze_backbone: true (without it the whole backbone trains)")
        _check(self.tail_lr_scale > 0, f"{p}.tail_lr_scale", "must be > 0")
        _check(self.cache_views >= 1, f"{p}.cache_views", "must be >= 1")
        _check(self.num_workers >= 0, f"{p}.num_workers", "must be >= 0")


@dataclass
class PAETrainConfig:
    epochs: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    #: NeRF-style frequencies 2^0 .. 2^(levels-1)
    fourier_levels: int = 6
    hidden: list = field(default_factory=lambda: [64, 128, 256])
    #: encode the ground-truth train pose (``gt``, paper's suggestion) or the teacher's estimate (``apr``)
    encode: str = "gt"
    latent_loss_weight: float = 1.0
    #: weight of the teacher's frozen heads' pose loss on the PAE latents (0 = off)
    pose_loss_weight: float = 1.0

    def validate(self, p: str) -> None:
        _check(self.epochs >= 1, f"{p}.epochs", "must be >= 1")
        _check(self.batch_size >= 1, f"{p}.batch_size", "must be >= 1")
        _check(self.lr > 0, f"{p}.lr", "must be > 0")
        _check(1 <= self.fourier_levels <= 16, f"{p}.fourier_levels", "must be in [1, 16]")
        _check(len(self.hidden) >= 1 and all(type(h) is int and h > 0 for h in self.hidden), f"{p}.hidden",
               "must be a non-empty list of positive ints")
        _check(self.encode in ("gt", "apr"), f"{p}.encode", f"must be gt or apr, got {self.encode!r}")
        _check(self.latent_loss_weight >= 0, f"{p}.latent_loss_weight", "must be >= 0")
        _check(self.pose_loss_weight >= 0, f"{p}.pose_loss_weight", "must be >= 0")


@dataclass
class DecoderTrainConfig:
    enabled: bool = True
    #: ``conv`` (small transposed-conv decoder) or ``mlp`` (the paper's MLP, much larger)
    type: str = "conv"
    image_size: int = 64
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3

    def validate(self, p: str) -> None:
        _check(self.type in ("conv", "mlp"), f"{p}.type", f"must be conv or mlp, got {self.type!r}")
        _check(self.image_size in (32, 64, 128), f"{p}.image_size", "must be 32, 64 or 128")
        _check(self.epochs >= 1, f"{p}.epochs", "must be >= 1")
        _check(self.batch_size >= 1, f"{p}.batch_size", "must be >= 1")
        _check(self.lr > 0, f"{p}.lr", "must be > 0")


#: the values of ``refine.enabled``
REFINE_ENABLED = ("auto", True, False)


class AutoBool:
    """Type marker of a key that takes ``auto``, ``true`` or ``false`` (YAML booleans or strings);
    the value is stored as ``"auto"``, ``True`` or ``False``."""


@dataclass
class RefineConfig:
    #: publish the refined pose: ``auto`` (default: the held-out walks decide at training, the bundle
    #: header ``published`` records ``"apr"`` or ``"refined"``), ``true`` (always refined) or ``false`` (the APR)
    enabled: AutoBool = "auto"
    #: number of nearest train poses
    k: int = 3
    #: optimiser steps of the convex-weight fit (AdamW on softmax logits, fresh per query)
    steps: int = 30
    lr: float = 0.1
    weight_decay: float = 0.0
    #: neighbour metric: ``scaled`` (position/pos_scale + angle/ori_scale, fixed scales from the
    #: train table) or ``reference`` (each term divided by its max over the table, per query)
    metric: str = "scaled"
    #: orientation of the refined pose: the APR's (``apr``) or the weighted neighbour average
    orientation: str = "apr"
    #: candidate poses: ``auto`` (retrieval top ``retrieval_k`` when the bundle has
    #: ``table.descriptors``, else the k nearest to the APR pose), ``knn``, ``retrieval``, ``union``
    candidates: str = "auto"
    retrieval_k: int = 2
    #: weights over the candidates: ``pae`` (the PAE latent fit), ``uniform`` (equal weights, no PAE:
    #: ``steps`` 0 at run time) or ``auto`` (default: at training the held-out walks decide: the PAE fit
    #: is kept only when its paired-bootstrap 95 % interval against uniform weights lies below zero;
    #: the bundle header ``refine_weights`` records ``pae`` or ``uniform``)
    weights: str = "auto"

    def validate(self, p: str) -> None:
        _check(self.enabled in REFINE_ENABLED and type(self.enabled) in (str, bool), f"{p}.enabled",
               f"must be auto, true or false, got {self.enabled!r}")
        _check(self.k >= 1, f"{p}.k", "must be >= 1")
        _check(self.candidates in ("auto", "knn", "retrieval", "union"), f"{p}.candidates",
               f"must be auto, knn, retrieval or union, got {self.candidates!r}")
        _check(self.retrieval_k >= 1, f"{p}.retrieval_k", "must be >= 1")
        _check(self.weights in ("auto", "pae", "uniform"), f"{p}.weights",
               f"must be auto, pae or uniform, got {self.weights!r}")
        _check(self.steps >= 0, f"{p}.steps", "must be >= 0")
        _check(self.lr > 0, f"{p}.lr", "must be > 0")
        _check(self.metric in ("scaled", "reference"), f"{p}.metric", f"must be scaled or reference, got {self.metric!r}")
        _check(self.orientation in ("apr", "average"), f"{p}.orientation", f"must be apr or average, got {self.orientation!r}")


@dataclass
class CalibrationConfig:
    #: what is held out of training to calibrate sigma and decide ``refine: auto``: ``walk`` (a whole
    #: train walk per scene; a scene with one walk gives its longest contiguous stretch of
    #: ``holdout_fraction`` of its frames) or ``blocks`` (short blocks inside every walk: near-duplicates
    #: of their neighbours, so the fitted sigma is too small on new viewpoints; kept for comparison)
    holdout: str = "walk"
    #: share of a single-walk scene held out as one stretch (``walk``), or of every walk (``blocks``);
    #: 0 turns calibration off
    holdout_fraction: float = 0.15
    #: ``blocks`` only: consecutive frames per block, spread along each walk
    holdout_block: int = 8
    #: number of folds: each holds out another walk per scene (cross-validation over walks); the
    #: sigma model is fitted on all folds' held-out frames. Each fold trains its own APR and PAE.
    folds: int = 1
    #: train the published APR/PAE/decoder on every train frame (the fold models, trained without
    #: their held-out walk, serve calibration only). false: publish fold 1's models (one training
    #: less; they never saw the held-out walk). The final pose table holds every train frame either way.
    refit: bool = True

    def validate(self, p: str) -> None:
        _check(self.holdout in ("walk", "blocks"), f"{p}.holdout", f"must be walk or blocks, got {self.holdout!r}")
        _check(0.0 <= self.holdout_fraction < 0.5, f"{p}.holdout_fraction", "must be in [0, 0.5)")
        _check(self.holdout_block >= 1, f"{p}.holdout_block", "must be >= 1")
        _check(1 <= self.folds <= 10, f"{p}.folds", "must be in [1, 10]")
        _check(self.refit or self.folds == 1, f"{p}.refit", "false needs folds: 1 (several folds need a refit)")
        _check(self.holdout == "walk" or self.folds == 1, f"{p}.folds", "more than 1 needs holdout: walk")


@dataclass
class Config:
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    apr: APRTrainConfig = field(default_factory=APRTrainConfig)
    pae: PAETrainConfig = field(default_factory=PAETrainConfig)
    decoder: DecoderTrainConfig = field(default_factory=DecoderTrainConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if dataclasses.is_dataclass(v):
                v.validate(f.name)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: named presets: overrides applied on top of the defaults (then a user file, then --set)
PRESETS: dict[str, dict] = {
    # minutes on a 2-core CPU: a 1-layer MS-Transformer-style APR (both branches on the stride-16
    # map, 8 x 8 tokens at 128 px) over frozen, cached EfficientNet-Lite0 features. Chosen over
    # PoseNet heads on pooled features, partial fine-tuning of the last backbone blocks, cached
    # augmented views and 192 px input by APR accuracy on both built-in scenes (courtyard and
    # plaza) per CPU second (bench/bench_train.py, bench/bench_accuracy.py).
    "quick": {
        "model": {"type": "mstransformer", "orientation_stride": 16, "transformer_layers": 1,
                  "transformer_ffn_dim": 256},
        "input": {"resize": 128, "crop": 128, "random_crop": False, "color_jitter": 0.0},
        "apr": {"epochs": 30, "batch_size": 32, "lr": 3e-4, "lr_step_epochs": 20, "freeze_backbone": True,
                "cache_features": True},
        "pae": {"epochs": 300, "batch_size": 64},
        # the decoder only draws reconstructions (plots, pae/reconstruction), no pose depends on it:
        # few epochs keep it from being the longest training stage, at a slightly lower PSNR
        "decoder": {"epochs": 20},
    },
    # better accuracy: the backbone is fine-tuned with augmentation (GPU recommended)
    "full": {
        "model": {"type": "mstransformer", "transformer_layers": 4},
        "input": {"resize": 256, "crop": 224},
        "apr": {"epochs": 150, "lr": 1e-4, "lr_step_epochs": 50},
        "pae": {"epochs": 500},
        "decoder": {"epochs": 300},
    },
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    if tp is AutoBool:
        if isinstance(value, str) and value.lower() in ("auto", "true", "false"):
            value = {"auto": "auto", "true": True, "false": False}[value.lower()]
        _check(isinstance(value, bool) or value == "auto", key, f"expected auto, true or false, got {value!r}")
        return value
    if tp is bool:
        _check(isinstance(value, bool), key, f"expected a boolean (true/false), got {value!r}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"expected a number, got {value!r}")
        import math
        _check(math.isfinite(float(value)), key, f"must be finite, got {value!r}")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    if tp is list:
        _check(isinstance(value, list), key, f"expected a list, got {value!r}")
        return list(value)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _merge_into(obj: Any, data: dict, prefix: str) -> None:
    _check(isinstance(data, dict), prefix or "<root>", f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"{path}: unknown key (known keys here: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge_into(current, value, path)
        else:
            setattr(obj, key, _coerce(value, hints[key], path))


def config_from_dict(data: dict | None = None, preset: str | None = None) -> Config:
    """Build and validate a :class:`Config`: defaults, then ``preset``, then ``data``."""
    cfg = Config()
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"preset: unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        _merge_into(cfg, PRESETS[preset], "")
    if data:
        _merge_into(cfg, data, "")
    return cfg.validate()


def parse_set_option(items: list[str]) -> dict:
    """Turn ``["apr.lr=1e-3", "refine.k=5"]`` into a nested dict (values parsed as YAML scalars)."""
    import yaml

    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: empty key part")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {part} is a value, not a section")
            node = nxt
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(f"--set {item!r}: {parts[-1]} is a section, not a value")
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def deep_merge(base: dict, over: dict) -> dict:
    """Recursive dict merge (``over`` wins), used to stack a YAML file and ``--set`` overrides."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, preset: str | None = None, overrides: dict | None = None) -> Config:
    """Load a YAML config file (any subset of keys) on top of a preset, then ``overrides``."""
    import yaml

    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    if overrides:
        data = deep_merge(data, overrides)
    try:
        return config_from_dict(data, preset)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
