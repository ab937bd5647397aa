"""A small residual convolution stack that sharpens a patch-wise decoded image at full resolution.

ViT pixel heads (a linear layer to each ``p x p`` patch) leave seams at patch borders and soft, blotchy object
edges: every output pixel is a linear read of one patch token.  :class:`PixelRefiner` adds a residual correction
computed by a few 3x3 convolutions over the decoded image and ``features`` extra per-pixel channels that the
ViT emits next to the RGB values, so the convolutions see token-derived information at pixel resolution,
across patch borders.  Its output convolution starts at zero: a refiner added to a trained decoder leaves the
decoder's output unchanged at step 0 (TiTok's stage-2 decoder fine-tuning, with the tokens frozen, starts
exactly where stage 1 ended).

Legend: b batch, c channels, f extra feature channels, h/w height/width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PixelRefiner(nn.Module):
    """``rgb (b, 3, h, w)`` and ``feats (b, f, h, w)`` -> ``rgb + correction`` (b, 3, h, w).

    Args:
        channels: width of the conv stack.
        blocks: residual blocks (two 3x3 convs each).
        features: extra input channels beside RGB (0: refine from RGB alone).
    """

    def __init__(self, channels: int = 32, blocks: int = 2, features: int = 8):
        super().__init__()
        if channels < 1 or blocks < 0 or features < 0:
            raise ValueError(f"PixelRefiner needs channels >= 1, blocks >= 0, features >= 0; got {channels}, "
                             f"{blocks}, {features}")
        self.features = features
        self.conv_in = nn.Conv2d(3 + features, channels, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GELU(), nn.Conv2d(channels, channels, 3, padding=1), nn.GELU(),
                          nn.Conv2d(channels, channels, 3, padding=1))
            for _ in range(blocks))
        self.conv_out = nn.Conv2d(channels, 3, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, rgb: Tensor, feats: Tensor | None = None) -> Tensor:
        if self.features:
            if feats is None or feats.shape[1] != self.features:
                raise ValueError(f"PixelRefiner was built for {self.features} feature channels, got "
                                 f"{None if feats is None else feats.shape[1]}")
            x = torch.cat([rgb, feats], dim=1)
        else:
            x = rgb
        # channels-last activations: oneDNN's 3x3 convolutions run ~1.7-2.3x faster forward + backward on the CPU
        # (bf16 and fp32, benchmarks/cpu_lowp.py); the result comes back in the default layout
        h = self.conv_in(x.contiguous(memory_format=torch.channels_last))
        for block in self.blocks:
            h = h + block(h)
        return (rgb + self.conv_out(F.gelu(h))).contiguous()
