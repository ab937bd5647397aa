"""Fixed sine-cosine position tables (Transformer / MAE style), built in float64 and returned as float32, and
:class:`TimestepMLP`, DiT's timestep embedder (a sinusoid of integer steps, then an MLP) as MAR's head and xAR use it.

``sincos_1d`` is the building block of the tables: ``[sin(p * w_i), cos(p * w_i)]`` with
``w_i = base ** (-i / (dim / 2))``.  ``sincos_3d`` is the video table of LARP (and MAE-style ViTs per frame): a 2-D
table over the patch grid (the first half of the channels encodes the column, the second half the row, as MAE's
``get_2d_sincos_pos_embed``) plus a 1-D table over time on all channels.

Legend: t/h/w grid sides, d channels.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import Tensor, nn


def sincos_1d(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Positions (M,) (any numeric dtype) -> float64 table (M, dim): sines in the first half, cosines in the second."""
    if dim % 2:
        raise ValueError(f"a sin-cos table needs an even width, got {dim}")
    omega = 1.0 / base ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega  # M, dim/2
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class TimestepMLP(nn.Sequential):
    """Integer steps (any shape) -> ``[cos, sin]`` sinusoid of ``freq_dim`` channels (diffusers'
    ``get_timestep_embedding``, DiT's ``TimestepEmbedder``) -> ``Linear - SiLU - Linear`` (..., dim); keys 0, 2."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, steps: Tensor) -> Tensor:
        freq = get_timestep_embedding(steps.flatten(), self[0].in_features, flip_sin_to_cos=True,
                                      downscale_freq_shift=0)
        return super().forward(freq.unflatten(0, steps.shape).to(self[0].weight.dtype))


def sincos_3d(frames: int, height: int, width: int, dim: int) -> Tensor:
    """Video patch table (frames * height * width, dim) float32, raster order (t, h, w).

    Each entry is ``[table(col), table(row)]`` (``dim / 2`` channels each) plus ``table(t)`` (all ``dim``).
    """
    if dim % 4:
        raise ValueError(f"a 3-D sin-cos table needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    spatial = torch.cat([sincos_1d(cols, dim // 2), sincos_1d(rows, dim // 2)], dim=1)  # (h w), d
    temporal = sincos_1d(torch.arange(frames), dim)  # t, d
    return (temporal[:, None, :] + spatial[None]).reshape(-1, dim).float()
