"""Image decoder: PAE latents (B, 2*D) -> RGB image (B, 3, S, S) in [0, 1].

``conv`` (default, ~1.2 M params) upsamples a 4x4 seed with nearest-neighbour upsampling and convolutions;
``mlp`` is the paper's MLP 512->512->1024->2048->3*S*S (much larger: ~27 M params at 64x64).
"""
from __future__ import annotations

import math

import torch
from torch import nn


class ConvDecoder(nn.Module):
    """Linear to a 4x4 seed, then (nearest x2 upsample, 3x3 conv, ReLU) blocks to S x S.

    Upsample + conv instead of transposed convolutions and no BatchNorm: on a CPU both of
    those make a training step several times slower (docs/RESULTS.md, "Speed and size").
    """

    def __init__(self, latent_dim: int = 512, image_size: int = 64):
        super().__init__()
        self.image_size = image_size
        n_up = int(math.log2(image_size // 4))
        chans = [128, 96, 64, 32, 16, 16][: n_up + 1]
        self.seed = nn.Linear(latent_dim, chans[0] * 16)
        self.c0 = chans[0]
        ups: list[nn.Module] = []
        for i in range(n_up):
            ups += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(chans[i], chans[i + 1], 3, 1, 1), nn.ReLU()]
        self.up = nn.Sequential(*ups)
        self.to_rgb = nn.Conv2d(chans[n_up], 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.seed(z)).view(-1, self.c0, 4, 4)
        return torch.sigmoid(self.to_rgb(self.up(h)))


class MLPDecoder(nn.Module):
    def __init__(self, latent_dim: int = 512, image_size: int = 64):
        super().__init__()
        self.image_size = image_size
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 512), nn.ReLU(), nn.Linear(512, 1024), nn.ReLU(),
            nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 3 * image_size * image_size), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, 3, self.image_size, self.image_size)


def build_decoder(kind: str, latent_dim: int, image_size: int) -> nn.Module:
    if kind == "conv":
        return ConvDecoder(latent_dim, image_size)
    if kind == "mlp":
        return MLPDecoder(latent_dim, image_size)
    raise ValueError(f"unknown decoder type {kind!r}")
