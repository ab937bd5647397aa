"""Attention and transformer blocks used by the tokenizers (ViT, pre-LN) and generators (Llama, RMSNorm).

All attention goes through ``F.scaled_dot_product_attention``.  Legend: b batch, l queries, s keys,
h heads, d head dim, c channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vistok.interfaces import KVCache
from vistok.layers.rope import apply_rope


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama), computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class SwiGLU(nn.Module):
    """Gated MLP ``w2(silu(w1 x) * w3 x)`` (Llama)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Attention(nn.Module):
    """Multi-head self-attention with a packed qkv projection (rows ordered q, k, v).

    Args:
        dim: model width.
        num_heads: heads; ``dim`` must divide evenly.
        bias: biases on the qkv and output projections.
        qkv_bias: bias on the qkv projection alone (None: as ``bias``; timm's ViT default and LARP use False).
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = True, qkv_bias: bool | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias if qkv_bias is None else qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor, mask: Tensor | None = None, rope: tuple[Tensor, Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0, slots: Tensor | None = None) -> Tensor:
        """``x`` (b, l, c) -> (b, l, c).  ``mask``: bool, True = attend, broadcastable to (b, h, l, s).

        With ``cache``, the new keys/values are written at ``slots`` (b, l) and attention runs over the
        whole cache buffer.
        """
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.num_heads)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.write(layer, k, v, slots)
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))


class ViTBlock(nn.Module):
    """Pre-LN transformer block with a GELU MLP (ViT / CLIP / TiTok; ``qkv_bias=False, norm_eps=1e-6``: timm's
    ``Block``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)
        return x + self.mlp(self.norm2(x))


class LlamaBlock(nn.Module):
    """Pre-RMSNorm block with RoPE attention (no biases) and a SwiGLU MLP (Llama / LlamaGen)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, dropout: float = 0.0):
        super().__init__()
        self.attention_norm = RMSNorm(dim)
        self.attention = Attention(dim, num_heads, bias=False)
        self.ffn_norm = RMSNorm(dim)
        self.feed_forward = SwiGLU(dim, mlp_hidden, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None, rope: tuple[Tensor, Tensor] | None,
                cache: KVCache | None = None, layer: int = 0, slots: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attention(self.attention_norm(x), mask, rope, cache, layer, slots))
        return x + self.feed_forward(self.ffn_norm(x))
