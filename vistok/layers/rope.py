"""Rotary position embeddings (RoFormer, arXiv 2104.09864), interleaved-pair form as in LlamaGen/Llama.

Legend: b batch, h heads, l sequence, d head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_table(positions: Tensor, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos/sin tables ``(..., head_dim // 2)`` for integer ``positions`` of any shape."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    freqs = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * freqs
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive feature pairs of ``x`` ``(b, h, l, d)`` by tables ``(b, l, d/2)``."""
    x2 = x.float().unflatten(-1, (-1, 2))  # b h l d/2 2
    c, s = cos[:, None], sin[:, None]  # b 1 l d/2
    out = torch.stack([x2[..., 0] * c - x2[..., 1] * s, x2[..., 0] * s + x2[..., 1] * c], dim=-1)
    return out.flatten(-2).type_as(x)
