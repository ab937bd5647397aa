"""Attention and transformer blocks used by the tokenizers (ViT, pre-LN) and generators (Llama, RMSNorm).

All attention goes through :func:`attend`: ``F.scaled_dot_product_attention``, except for bf16/fp16 tensors on the
CPU, where two explicit matmuls around a softmax beat the CPU flash kernel (a bf16 LARP training step runs 1.4x
faster, docs/speed.md "Reduced-precision attention on the CPU").  Legend: b batch, l queries, s keys, h heads,
d head dim, c channels.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vistok.interfaces import KVCache
from vistok.layers.rope import apply_rope


def find_multiple(n: int, k: int) -> int:
    """``n`` rounded up to a multiple of ``k`` (LlamaGen's SwiGLU widths)."""
    return -(-n // k) * k


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN (DiT): ``x * (1 + scale) + shift``, as MAR's DiffLoss head and xAR's blocks apply it."""
    return x * (1 + scale) + shift


def run_blocks(blocks: nn.ModuleList, x: Tensor, mask: Tensor | None = None, rope: tuple[Tensor, Tensor] | None = None,
               cache: KVCache | None = None, slots: Tensor | None = None, first_layer: int = 0, **extra) -> Tensor:
    """``x`` (b, l, c) through ``blocks`` in order; block ``i`` writes cache layer ``first_layer + i`` at ``slots``.
    ``extra`` keyword arguments go to every block (xAR's adaLN condition)."""
    for i, blk in enumerate(blocks, start=first_layer):
        x = blk(x, mask, rope, cache, i, slots, **extra)
    return x


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0,
           scale: float | None = None) -> Tensor:
    """Softmax attention: ``q`` (b, h, l, d), ``k``/``v`` (b, h, s, d) -> (b, h, l, d).

    ``mask``: bool, True = attend (or an additive float mask), broadcastable to (b, h, l, s).  Same law as
    ``F.scaled_dot_product_attention``; bf16/fp16 on the CPU take the explicit path (scores and probabilities in
    the input dtype, as the flash kernel keeps its probabilities), where a row with every key masked averages the
    values instead of giving NaN.
    """
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    scores = (q * (q.shape[-1] ** -0.5 if scale is None else scale)) @ k.transpose(-1, -2)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    elif mask is not None:  # additive float mask, as SDPA takes it
        scores = scores + mask.to(scores.dtype)
    probs = scores.softmax(-1)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return probs @ v


class RMSNorm(nn.Module):
    """Root-mean-square norm (Llama), computed in fp32.

    Args:
        dim: normalised (last) dimension.
        eps: added to the mean square.
        elementwise_affine: learn a per-channel gain ``weight`` (False: weightless, as in xAR's blocks).
    """

    def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        out = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
        return out if self.weight is None else out * self.weight


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
        attn_dropout: dropout on the attention probabilities in training (timm ``attn_drop``).
        qk_norm: normalise queries and keys per head with a parameter-free LayerNorm (fp32) before RoPE (FlexTok).
        scale: softmax scale (None: ``head_dim ** -0.5``; FlexTok's muP scale is ``8 / head_dim``).
        qkv_bias: bias on the qkv projection alone (None: as ``bias``; timm's ViT default and LARP use False).
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = True, attn_dropout: float = 0.0, qk_norm: bool = False,
                 scale: float | None = None, qkv_bias: bool | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.attn_dropout, self.qk_norm, self.scale = num_heads, attn_dropout, qk_norm, scale
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias if qkv_bias is None else qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: Tensor, mask: Tensor | None = None, rope: tuple[Tensor, Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0, slots: Tensor | None = None,
                queries: int | None = None) -> Tensor:
        """``x`` (b, l, c) -> (b, l, c).  ``mask``: bool, True = attend, broadcastable to (b, h, l, s).

        ``queries``: only the last ``queries`` rows of ``x`` query (every row still gives keys and values), so the
        output is (b, queries, c); for a last block whose other rows are discarded.

        ``rope``: cos/sin tables (b, l, d/2) rotating queries and keys.  With ``cache``, the new keys/values are
        written at ``slots`` (b, l) of cache layer ``layer`` and attention runs over the whole cache buffer.
        """
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.num_heads)
        if queries is not None:
            q = q[:, :, -queries:]
            mask = mask[..., -queries:, :] if mask is not None and mask.dim() >= 2 and mask.shape[-2] > 1 else mask
        if self.qk_norm:
            q, k = (F.layer_norm(t.float(), t.shape[-1:]).type_as(t) for t in (q, k))
        if rope is not None:
            q_rope = rope if queries is None else tuple(table[:, -queries:] for table in rope)
            q, k = apply_rope(q, *q_rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.write(layer, k, v, slots)
        p = self.attn_dropout if self.training else 0.0
        out = attend(q, k.to(q.dtype), v.to(q.dtype), mask, p, self.scale)
        return self.proj(rearrange(out, "b h l d -> b l (h d)"))


class ViTBlock(nn.Module):
    """Pre-LN transformer block with a GELU MLP (ViT / CLIP / TiTok; timm ``Block`` as MAR builds it).

    Args:
        dim, num_heads: width and heads.
        mlp_ratio: MLP hidden width over ``dim``.
        eps: LayerNorm epsilon.
        attn_dropout: dropout on attention probabilities.
        dropout: dropout after the attention output and after each MLP layer (timm ``proj_drop``).
        qkv_bias: bias on the qkv projection (timm's ``Block`` and LARP: False).

    The MLP is ``mlp.0`` (Linear) - GELU - ``mlp.2`` (Linear), the key names of TiTok's checkpoints.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-5,
                 attn_dropout: float = 0.0, dropout: float = 0.0, qkv_bias: bool = True):
        super().__init__()
        # registered norm1, norm2, attn, mlp: the order of MAR's former private copy, so code that walks
        # parameters() in order (seeded random models in tests) builds the same models as before
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, attn_dropout=attn_dropout, qkv_bias=qkv_bias)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([("0", nn.Linear(dim, hidden)), ("1", nn.GELU()),
                                              ("drop1", nn.Dropout(dropout)), ("2", nn.Linear(hidden, dim)),
                                              ("drop2", nn.Dropout(dropout))]))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, rope: tuple[Tensor, Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0, slots: Tensor | None = None,
                queries: int | None = None) -> Tensor:
        """``x`` (b, l, c) -> (b, l, c), or (b, queries, c): only the last ``queries`` rows computed past the keys and
        values (a last block whose other outputs are discarded); the other arguments go to :class:`Attention`."""
        h = self.drop(self.attn(self.norm1(x), mask, rope, cache, layer, slots, queries))
        x = (x if queries is None else x[:, -queries:]) + h
        return x + self.mlp(self.norm2(x))


class LlamaBlock(nn.Module):
    """Pre-RMSNorm block with RoPE attention (no biases) and a SwiGLU MLP (Llama / LlamaGen)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, dropout: float = 0.0, eps: float = 1e-5):
        super().__init__()
        self.attention_norm = RMSNorm(dim, eps)
        self.attention = Attention(dim, num_heads, bias=False)
        self.ffn_norm = RMSNorm(dim, eps)
        self.feed_forward = SwiGLU(dim, mlp_hidden, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, rope: tuple[Tensor, Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0, slots: Tensor | None = None) -> Tensor:
        """``x`` (b, l, c) -> (b, l, c); the other arguments go to :class:`Attention`."""
        x = x + self.drop(self.attention(self.attention_norm(x), mask, rope, cache, layer, slots))
        return x + self.feed_forward(self.ffn_norm(x))
