"""MaskGIT-VQGAN pixel decoder: the convolutional image decoder that two-stage TiTok checkpoints end with.

Papers:
    Esser et al., "Taming Transformers for High-Resolution Image Synthesis" (VQGAN), arXiv 2012.09841.
    Chang et al., "MaskGIT: Masked Generative Image Transformer", arXiv 2202.04200 (its VQGAN drops the
    attention layers).
Reference code (facts only: layer layout, key names, the shortcut quirk): github.com/bytedance/1d-tokenizer,
``modeling/modules/maskgit_vqgan.py`` (``Decoder``) at commit 942a96f.

Layout (``L = len(channels)`` levels, ``channels[i]`` the width of level ``i``, level 0 the finest):
``conv_in`` -> ``mid`` res-blocks at ``channels[-1]`` -> levels ``L-1 .. 0`` (each: res-blocks, then for ``i > 0``
nearest 2x upsampling + 3x3 conv) -> GroupNorm -> SiLU -> ``conv_out``.  Every conv uses "same" padding,
every norm is ``GroupNorm(32, eps=1e-6)``; the res-block convs have no bias.  The output side is
``2 ** (L - 1)`` times the input side.  Module names follow the official checkpoints (``mid``, ``up.{i}.block``,
``upsample_conv``, ``nin_shortcut``), so weights port one to one.

Legend: b batch, c channels, h/w height/width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Conv2dSame(nn.Conv2d):
    """Stride-1 convolution with TensorFlow-style "same" padding (any extra pixel goes right/bottom).

    Odd kernels pad symmetrically: the convolution pads itself (no padded copy of the input is made); even
    kernels pad one more pixel right/bottom with ``F.pad`` first."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True):
        total = kernel_size - 1
        super().__init__(in_channels, out_channels, kernel_size, bias=bias, padding=total // 2 if total % 2 == 0 else 0)
        self.pad = (0, 0) if total % 2 == 0 else (total // 2, total - total // 2)  # left to F.pad: (before, after)

    def forward(self, x: Tensor) -> Tensor:
        before, after = self.pad
        if before or after:
            x = F.pad(x, (before, after, before, after))
        return super().forward(x)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class VQGANResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, plus a residual.

    Quirk kept for checkpoint compatibility: when the width changes, the 1x1 ``nin_shortcut`` projects the
    *processed* hidden states (not the block input), so the block returns ``h + W h``.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = Conv2dSame(in_channels, out_channels, 3, bias=False)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2dSame(out_channels, out_channels, 3, bias=False)
        self.nin_shortcut = (Conv2dSame(out_channels, out_channels, 1, bias=False)
                             if in_channels != out_channels else None)

    def forward(self, x: Tensor) -> Tensor:
        """(b, c_in, h, w) -> (b, c_out, h, w)."""
        inplace = not torch.is_grad_enabled()  # inference: SiLU overwrites the fresh norm output (no new buffer)
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=inplace)))
        return h + (self.nin_shortcut(h) if self.nin_shortcut is not None else x)


class VQGANUpBlock(nn.Module):
    """One decoder level: ``num_res_blocks`` res-blocks, then (optionally) nearest 2x upsampling + 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, upsample: bool,
                 dropout: float = 0.0):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_res_blocks
        self.block = nn.ModuleList(VQGANResBlock(a, b, dropout) for a, b in zip(widths[:-1], widths[1:]))
        self.upsample_conv = Conv2dSame(out_channels, out_channels, 3) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        """(b, c_in, h, w) -> (b, c_out, 2h, 2w) (or (h, w) without upsampling)."""
        for blk in self.block:
            x = blk(x)
        if self.upsample_conv is not None:
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class VQGANDecoder(nn.Module):
    """MaskGIT-VQGAN decoder (no attention).

    Args:
        z_channels: input feature channels (the VQGAN code dimension, 256 officially).
        channels: width of each level, finest first (official: 128 x (1, 1, 2, 2, 4) = (128, 128, 256, 256, 512)).
            Every width must be a multiple of 32 (GroupNorm groups).
        num_res_blocks: res-blocks per level and in the middle (2 officially).
        out_channels: image channels.
        dropout: dropout inside the res-blocks.
    """

    def __init__(self, z_channels: int = 256, channels: tuple[int, ...] = (128, 128, 256, 256, 512),
                 num_res_blocks: int = 2, out_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        channels = tuple(channels)
        if not channels or any(c % 32 for c in channels):
            raise ValueError(f"VQGAN decoder widths must be multiples of 32 (GroupNorm(32)), got {channels}")
        self.upscale = 2 ** (len(channels) - 1)
        self.conv_in = Conv2dSame(z_channels, channels[-1], 3)
        self.mid = nn.ModuleList(VQGANResBlock(channels[-1], channels[-1], dropout) for _ in range(num_res_blocks))
        # up[i] reads the width of level i+1 (the last level reads its own) and runs before up[i-1]
        self.up = nn.ModuleList(
            VQGANUpBlock(channels[min(i + 1, len(channels) - 1)], channels[i], num_res_blocks, i > 0, dropout)
            for i in range(len(channels)))
        self.norm_out = group_norm(channels[0])
        self.conv_out = Conv2dSame(channels[0], out_channels, 3)

    def forward(self, z: Tensor) -> Tensor:
        """z (b, z_channels, h, w) -> image (b, out_channels, h * upscale, w * upscale), unclamped.

        On CPU the convolutions run channels-last (oneDNN's native layout: no reorder around every conv; see
        docs/speed.md for what it buys); the output is returned contiguous in the usual layout."""
        if z.device.type == "cpu":
            z = z.contiguous(memory_format=torch.channels_last)
        x = self.conv_in(z)
        for blk in self.mid:
            x = blk(x)
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x), inplace=not torch.is_grad_enabled())).contiguous()
