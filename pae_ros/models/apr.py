"""Absolute pose regressors (the PAE's teachers).

Both expose the two 256-d latents (``z_x`` position branch, ``z_q`` orientation branch) and the
regression heads separately, because the PAE is trained to reproduce the latents and the
teacher's frozen heads decode the PAE's latents.

Outputs: ``x`` is the camera centre in **normalised** world coordinates
(``(p - position_mean) / position_scale``, see :mod:`pae_ros.bundle`), ``q`` an unnormalised
quaternion wxyz of the camera-to-world rotation.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .backbone import build_backbone


class APR(nn.Module):
    """Common interface: backbone features -> latents -> heads."""

    #: which backbone outputs :meth:`latents_from_features` needs (what a feature cache stores)
    feature_keys: tuple[str, ...] = ()
    multi_scene: bool = False

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(images)
        return {k: feats[k] for k in self.feature_keys}

    def latents_from_features(self, feats, scene_idx=None) -> dict[str, torch.Tensor]:
        """-> ``{"z_x": (B, D), "z_q": (B, D), "scene_log_probs": (B, S), "scene_idx": (B,)}``."""
        raise NotImplementedError

    def heads(self, z_x: torch.Tensor, z_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Regression heads: latents -> (x normalised (B,3), q wxyz unnormalised (B,4))."""
        return self.head_x(z_x), self.head_q(z_q)

    def forward_features(self, feats, scene_idx=None) -> dict[str, torch.Tensor]:
        out = self.latents_from_features(feats, scene_idx)
        out["x"], out["q"] = self.heads(self.drop(out["z_x"]), self.drop(out["z_q"]))
        return out

    def forward(self, images: torch.Tensor, scene_idx=None) -> dict[str, torch.Tensor]:
        return self.forward_features(self.features(images), scene_idx)


class PoseNetAPR(APR):
    """PoseNet-style single-scene APR: pooled features -> per-branch Linear+ReLU latent -> Linear heads."""

    feature_keys = ("pooled",)

    def __init__(self, backbone: nn.Module, cfg: ModelConfig):
        super().__init__(backbone)
        c, d = backbone.channels["pooled"], cfg.latent_dim
        self.to_z_x = nn.Sequential(nn.Linear(c, d), nn.ReLU())
        self.to_z_q = nn.Sequential(nn.Linear(c, d), nn.ReLU())
        self.drop = nn.Dropout(cfg.dropout)
        self.head_x = nn.Linear(d, 3)
        self.head_q = nn.Linear(d, 4)

    def latents_from_features(self, feats, scene_idx=None):
        f = feats["pooled"]
        b = f.shape[0]
        zeros = torch.zeros(b, dtype=torch.long, device=f.device)
        return {"z_x": self.to_z_x(f), "z_q": self.to_z_q(f),
                "scene_log_probs": torch.zeros(b, 1, device=f.device), "scene_idx": zeros}


class _LearnedPosEmbedding2D(nn.Module):
    """Learned row + column embeddings (each D/2), concatenated to (H*W, D)."""

    def __init__(self, dim: int, max_size: int = 64):
        super().__init__()
        self.row = nn.Embedding(max_size, dim // 2)
        self.col = nn.Embedding(max_size, dim - dim // 2)

    def forward(self, h: int, w: int) -> torch.Tensor:
        dev = self.row.weight.device
        r = self.row(torch.arange(h, device=dev))[:, None, :].expand(h, w, -1)
        c = self.col(torch.arange(w, device=dev))[None, :, :].expand(h, w, -1)
        return torch.cat([r, c], dim=-1).reshape(h * w, -1)


class _SceneBranch(nn.Module):
    """One MS-Transformer branch: 1x1 conv -> +pos emb -> encoder -> decoder with one query per scene."""

    def __init__(self, in_ch: int, num_scenes: int, cfg: ModelConfig):
        super().__init__()
        d = cfg.latent_dim
        self.proj = nn.Conv2d(in_ch, d, 1)
        self.pos = _LearnedPosEmbedding2D(d)
        self.queries = nn.Parameter(torch.randn(num_scenes, d) * 0.02)
        layer = dict(d_model=d, nhead=cfg.transformer_heads, dim_feedforward=cfg.transformer_ffn_dim,
                     dropout=cfg.dropout, batch_first=True, norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), cfg.transformer_layers,
                                             norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), cfg.transformer_layers,
                                             norm=nn.LayerNorm(d))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> per-scene latents (B, S, D)."""
        b, _, h, w = fmap.shape
        tokens = self.proj(fmap).flatten(2).transpose(1, 2) + self.pos(h, w)[None]
        return self.decoder(self.queries[None].expand(b, -1, -1), self.encoder(tokens))


class MSTransformerAPR(APR):
    """MS-Transformer-style multi-scene APR.

    Position branch on stride-16 maps, orientation branch on stride-8 maps; one learned query
    per scene per branch; a scene classifier over the concatenated latents picks the scene
    (or ``scene_idx`` is given, as in training).
    """

    multi_scene = True

    def __init__(self, backbone: nn.Module, cfg: ModelConfig, num_scenes: int):
        super().__init__(backbone)
        d, hdim = cfg.latent_dim, cfg.head_hidden_dim
        self.q_key = f"s{cfg.orientation_stride}"
        self.feature_keys = tuple(sorted({"s16", self.q_key}))
        self.branch_x = _SceneBranch(backbone.channels["s16"], num_scenes, cfg)
        self.branch_q = _SceneBranch(backbone.channels[self.q_key], num_scenes, cfg)
        self.scene_classifier = nn.Linear(2 * d, 1)
        self.drop = nn.Dropout(cfg.dropout)
        self.head_x = nn.Sequential(nn.Linear(d, hdim), nn.GELU(), nn.Linear(hdim, 3))
        self.head_q = nn.Sequential(nn.Linear(d, hdim), nn.GELU(), nn.Linear(hdim, 4))

    def latents_from_features(self, feats, scene_idx=None):
        zx_all = self.branch_x(feats["s16"])  # (B, S, D)
        zq_all = self.branch_q(feats[self.q_key])
        log_probs = torch.log_softmax(self.scene_classifier(torch.cat([zx_all, zq_all], -1)).squeeze(-1), dim=-1)
        if scene_idx is None:
            scene_idx = log_probs.argmax(dim=-1)
        sel = scene_idx.view(-1, 1, 1).expand(-1, 1, zx_all.shape[-1])
        return {"z_x": zx_all.gather(1, sel).squeeze(1), "z_q": zq_all.gather(1, sel).squeeze(1),
                "scene_log_probs": log_probs, "scene_idx": scene_idx}


def build_apr(cfg: ModelConfig, num_scenes: int, pretrained_weights: bool = True) -> APR:
    backbone = build_backbone(cfg.backbone, pretrained_weights=pretrained_weights)
    if cfg.type == "posenet":
        if num_scenes != 1:
            raise ValueError(f"model.type posenet is single-scene, the data has {num_scenes} scenes: use mstransformer")
        return PoseNetAPR(backbone, cfg)
    return MSTransformerAPR(backbone, cfg, num_scenes)
