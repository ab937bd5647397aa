"""Rotary position embeddings (RoFormer, arXiv 2104.09864), interleaved-pair form as in LlamaGen/Llama, in 1-D
(:func:`rope_table`) and 2-D (:func:`rope_2d`: LlamaGen's 2-D RoPE as NAR, xAR and vistok's MAR option use it).

Legend: b batch, h heads, l sequence, d head dim.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def rope_frequencies(dim: int, base: float = 10000.0, device: torch.device | str | None = None) -> Tensor:
    """The ``dim // 2`` rotation frequencies ``1 / base ** (2 i / dim)`` (float32), in LlamaGen's form
    (``1 / base ** x``, not ``base ** -x``: the two differ in the last bit)."""
    if dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {dim}")
    return 1.0 / base ** (torch.arange(0, dim, 2, device=device).float() / dim)


def rope_table(positions: Tensor, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos/sin tables ``(..., head_dim // 2)`` for integer ``positions`` of any shape."""
    angles = positions.float()[..., None] * rope_frequencies(head_dim, base, positions.device)
    return angles.cos(), angles.sin()


def rope_2d(rows: Tensor, cols: Tensor, head_dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """2-D RoPE cos/sin tables ``(..., head_dim // 2)`` for integer ``rows``/``cols`` of one shape.

    The first ``head_dim // 4`` rotation pairs turn with the row, the last ``head_dim // 4`` with the column, each
    axis with the frequencies of a ``head_dim // 2`` 1-D RoPE (LlamaGen ``precompute_freqs_cis_2d``, xAR
    ``models/rope.py``).  Position (0, 0) is the identity rotation.
    """
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {head_dim}")
    if rows.shape != cols.shape:
        raise ValueError(f"rows {tuple(rows.shape)} and cols {tuple(cols.shape)} must have one shape")
    freqs = rope_frequencies(head_dim // 2, base, rows.device)
    angles = torch.cat([rows.float()[..., None] * freqs, cols.float()[..., None] * freqs], dim=-1)
    return angles.cos(), angles.sin()


def token_grid(seq_len: int, grid: tuple[int, int] | None, name: str = "grid", *,
               row_fallback: bool = False) -> tuple[int, int]:
    """``(rows, columns)`` of a layout of ``seq_len`` tokens: ``grid`` when given (it must hold them), else the
    square grid, else one row (``row_fallback``) or a ValueError."""
    if grid is None:
        side = math.isqrt(seq_len)
        if side * side == seq_len or row_fallback:
            return (side, side) if side * side == seq_len else (1, seq_len)
        raise ValueError(f"seq_len={seq_len} is not a square grid: pass {name}=(H, W) with H * W = {seq_len}, "
                         f"or {name}=(1, {seq_len}) for a 1D tokenizer (next-token neighbours)")
    h, w = (int(g) for g in grid)
    if h * w != seq_len or h < 1 or w < 1:
        raise ValueError(f"{name} {tuple(grid)} does not hold seq_len={seq_len} tokens (rows * columns)")
    return h, w


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive feature pairs of ``x`` ``(b, h, l, d)`` by tables ``(b, l, d/2)``."""
    x2 = x.float().unflatten(-1, (-1, 2))  # b h l d/2 2
    c, s = cos[:, None], sin[:, None]  # b 1 l d/2
    out = torch.stack([x2[..., 0] * c - x2[..., 1] * s, x2[..., 0] * s + x2[..., 1] * c], dim=-1)
    return out.flatten(-2).type_as(x)
