"""Camera Pose Auto-Encoder: pose -> the teacher's latents (z_x, z_q).

Inputs: ``x`` the normalised camera centre (B, 3) (see :mod:`pae_ros.bundle`), ``q`` quaternion
wxyz (B, 4) of the camera-to-world rotation (normalised and sign-canonicalised, w >= 0, here),
and for multi-scene models the scene index (B,).
"""
from __future__ import annotations

import torch
from torch import nn


def fourier_features(v: torch.Tensor, levels: int) -> torch.Tensor:
    """NeRF-style ``[v, sin(2^k v), cos(2^k v)]`` for k = 0..levels-1: (B, n) -> (B, n*(1+2*levels))."""
    freqs = 2.0 ** torch.arange(levels, dtype=v.dtype, device=v.device)
    vf = v[..., None] * freqs  # (B, n, L)
    return torch.cat([v, torch.sin(vf).flatten(-2), torch.cos(vf).flatten(-2)], dim=-1)


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class PoseAutoEncoder(nn.Module):
    """One MLP per branch over Fourier features: in -> hidden... -> latent_dim -> latent_dim."""

    def __init__(self, latent_dim: int = 256, levels: int = 6, hidden: list[int] | tuple = (64, 128, 256),
                 num_scenes: int = 1):
        super().__init__()
        self.levels = levels
        self.num_scenes = num_scenes
        scene_dims = (1 + 2 * levels) if num_scenes > 1 else 0
        self.enc_x = _mlp([3 * (1 + 2 * levels) + scene_dims, *hidden, latent_dim, latent_dim])
        self.enc_q = _mlp([4 * (1 + 2 * levels) + scene_dims, *hidden, latent_dim, latent_dim])

    def forward(self, x: torch.Tensor, q: torch.Tensor, scene_idx: torch.Tensor | None = None):
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        q = torch.where(q[..., :1] < 0, -q, q)
        fx, fq = fourier_features(x, self.levels), fourier_features(q, self.levels)
        if self.num_scenes > 1:
            if scene_idx is None:
                raise ValueError("a multi-scene PAE needs scene_idx")
            s = fourier_features(scene_idx.to(x.dtype)[:, None], self.levels)
            fx, fq = torch.cat([fx, s], -1), torch.cat([fq, s], -1)
        return self.enc_x(fx), self.enc_q(fq)
