"""xAR: next-cell prediction with a flow-matching velocity network over continuous tokens.

Paper: Ren et al., "Beyond Next-Token: Next-X Prediction for Autoregressive Visual Generation", arXiv 2502.20388.
Reference code (facts only: shapes, key names, conventions): github.com/OliverRensu/xAR at 121e9c9
(``models/xar.py``, ``models/sampler.py``, ``models/rope.py``).  Supported options, measurements: ``docs/xar.md``.

A *cell* is a block of ``cell_size`` tokens of the grid (official: 16x16 tokens, 4 cells of 8x8; rectangles are a
vistok addition).  One transformer with **block-causal** attention (a token sees its own and every earlier cell)
predicts the flow-matching velocity of every token; decoding is :func:`vistok.decoding.cells.decode_cells`.
Official conventions (so its checkpoints load unchanged): the internal sequence, position embeddings and ``step``
positions are **cell-major** (public tokens are raster order); ``x_t = (1 - t) x + t eps`` with ``v = eps - x``;
``time_embed(floor(1000 t))`` plus the class embedding is one adaLN condition per (sample, cell); training gives each
cell its own ``t ~ sigmoid(N(0, 1))`` (noisy context), sampling feeds the context clean (``t = 0``); blocks have a
weightless RMSNorm, qkv biases, 2-D RoPE and a GELU-gated MLP of width ``int(width * mlp_ratio * 2 / 3)``.  Text
(a vistok addition) is a projected prefix as in :mod:`vistok.generators.ar`, the adaLN condition then the time alone.

Legend: b batch, n tokens, l tokens in a call, g cells in a call, k tokens per cell, c width, d token channels,
p prefix slots, s cache slots.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from vistok.checkpoint import load_state_dict_strict, read_release, rename_state_dict
from vistok.interfaces import Conditioning, Configurable, GeneratorOutput, KVCache, check_generator_tokens, validating
from vistok.layers import Attention, ConditionEmbedder, RMSNorm, TimestepMLP, modulate, rope_2d, run_blocks
from vistok.layers.init import xavier_linears

__all__ = ["XARGenerator", "XAR_PRESETS", "convert_xar_state_dict", "load_official", "official_matches"]

def _pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a positive int or (rows, columns), got {value!r}")
    return pair


# ----------------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------------
class TimestepEmbedding(nn.Module):
    """``t`` in [0, 1] (any shape) -> :class:`~vistok.layers.TimestepMLP` ``mlp`` of ``floor(1000 t)`` (..., dim)."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.mlp = TimestepMLP(dim, freq_dim)

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp((t.float() * 1000).long())  # the official floor(1000 t): fp32 product, truncated


class GatedMLP(nn.Module):
    """``down(gelu(gate x) * up x)`` with biases (timm's ``SwiGLU`` as xAR configures it: an erf-GELU gate)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.gate = nn.Linear(dim, hidden)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.down(self.drop(F.gelu(self.gate(x)) * self.up(x))))


class XARBlock(nn.Module):
    """Weightless-RMSNorm block, adaLN from one condition per cell: ``x += gamma * f(norm(x) (1 + scale) + shift)``."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, dropout: float = 0.0):
        super().__init__()
        self.attn = Attention(dim, num_heads)  # qkv and output projections with biases
        self.norm = RMSNorm(dim, eps=1e-6, elementwise_affine=False)  # one weightless norm serves both branches
        self.mlp = GatedMLP(dim, mlp_hidden, dropout)
        self.ada = nn.Linear(dim, 6 * dim)  # applied to SiLU(condition)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor, rope: tuple[Tensor, Tensor], cache: KVCache, layer: int,
                slots: Tensor, cond: Tensor) -> Tensor:
        """x (b, l, c); cond (b, g, c): one condition per run of ``l // g`` consecutive tokens.

        The modulations stay one per cell ((b, g, 1, c)) and broadcast over a (b, g, l // g, c) view of the tokens."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = self.ada(F.silu(cond))[:, :, None].chunk(6, dim=-1)
        cells = lambda v: v.unflatten(1, (cond.shape[1], -1))  # b g r c
        h = modulate(self.norm(cells(x)), shift1, scale1).flatten(1, 2)
        x = x + (cells(self.drop(self.attn(h, mask, rope, cache, layer, slots))) * gamma1).flatten(1, 2)
        return x + (self.mlp(modulate(self.norm(cells(x)), shift2, scale2)) * gamma2).flatten(1, 2)


# ----------------------------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------------------------
class XARGenerator(nn.Module, ConditionEmbedder, Configurable):
    """Cell-autoregressive flow-matching transformer (xAR) over continuous tokens ``(B, N, D)``.

    Args:
        grid_size: side G of the token grid (N = G^2 tokens, raster order), or ``(rows, columns)``.
        cell_size: side of a cell, or ``(rows, columns)``; each grid side must be a multiple of the cell's.  One cell
            = one autoregressive step.
        token_dim: channels D per token (16 for MAR's KL-16 latents).
        width, depth, decoder_depth, num_heads: transformer size (``depth`` encoder + ``decoder_depth`` decoder
            blocks; official naming, both stacks see the same block-causal mask).
        mlp_ratio: the gated MLP is ``int(width * mlp_ratio * 2 / 3)`` wide.
        dropout: dropout on attention outputs and in the MLP (official ``proj_dropout``).
        num_classes, text_dim, max_text_len, cond_dropout: the conditioning (classes with a null row for CFG, text
            states projected into ``max_text_len`` prefix slots): :meth:`ConditionEmbedder.init_conditioning`.
        rope_base: RoPE base of the 2-D rotary embedding.
    """

    kind = "continuous"
    is_causal = True  # block-causal over cells
    default_decoder = "cells"
    inference_methods = ("step",)  # what vistok.compile_inference compiles
    vocab_size = None

    def __init__(self, *, grid_size: int | tuple[int, int] = 16, cell_size: int | tuple[int, int] = 8,
                 token_dim: int = 16, width: int = 768,
                 depth: int = 8, decoder_depth: int = 8, num_heads: int = 12, mlp_ratio: float = 4.0,
                 dropout: float = 0.1, num_classes: int = 1000, text_dim: int = 0, max_text_len: int = 32,
                 cond_dropout: float = 0.1, rope_base: float = 10000.0):
        super().__init__()
        self.grid = _pair(grid_size, "grid_size")  # (rows, columns) of tokens
        self.cell = _pair(cell_size, "cell_size")  # (rows, columns) of one cell
        if any(g % k for g, k in zip(self.grid, self.cell, strict=True)):
            raise ValueError(f"grid_size {grid_size} must be a multiple of cell_size {cell_size} along each side")
        if width % num_heads or (width // num_heads) % 4:
            raise ValueError(f"width {width} / num_heads {num_heads} must give a head dim divisible by 4 (2-D RoPE)")
        self.grid_size, self.cell_size, self.token_dim = grid_size, cell_size, token_dim
        self.cells = (self.grid[0] // self.cell[0], self.grid[1] // self.cell[1])  # (rows, columns) of cells
        self.num_cells, self.cell_tokens = self.cells[0] * self.cells[1], self.cell[0] * self.cell[1]
        self.seq_len = self.grid[0] * self.grid[1]
        self.width, self.num_heads, self.rope_base = width, num_heads, rope_base
        self.init_conditioning(width, num_classes=num_classes, text_dim=text_dim, max_text_len=max_text_len,
                               cond_dropout=cond_dropout, bos=False)  # class-free: a zero start vector
        self.time_embed = TimestepEmbedding(width)
        # encoder stack
        hidden = int(width * mlp_ratio * 2 / 3)
        self.token_proj = nn.Linear(token_dim, width)
        self.encoder_pos = nn.Parameter(torch.zeros(1, self.seq_len, width))  # cell-major order
        self.token_norm = RMSNorm(width, eps=1e-6)
        self.encoder_blocks = nn.ModuleList(XARBlock(width, num_heads, hidden, dropout) for _ in range(depth))
        self.encoder_norm = RMSNorm(width, eps=1e-6)
        # decoder stack
        self.decoder_in = nn.Linear(width, width)
        self.decoder_pos = nn.Parameter(torch.zeros(1, self.seq_len, width))
        self.decoder_blocks = nn.ModuleList(XARBlock(width, num_heads, hidden, dropout) for _ in range(decoder_depth))
        self.decoder_norm = RMSNorm(width, eps=1e-6)
        self.out = nn.Linear(width, token_dim)  # velocity per token
        # official init: xavier-uniform linears with zero biases; N(0, 0.02) class and position embeddings
        xavier_linears(self)
        for p in (self.encoder_pos, self.decoder_pos, *([self.class_embed.weight] if self.class_embed else [])):
            nn.init.normal_(p, std=0.02)

    # -- layout ------------------------------------------------------------------------------------------------
    def to_cell_major(self, x: Tensor) -> Tensor:
        """(b, n, d) in raster order of the grid -> (b, n, d) cell-major."""
        (sh, sw), (kh, kw) = self.cells, self.cell
        return rearrange(x, "b (gh kh gw kw) d -> b (gh gw kh kw) d", gh=sh, kh=kh, gw=sw, kw=kw)

    def to_raster(self, x: Tensor) -> Tensor:
        """(b, n, d) cell-major -> (b, n, d) in raster order of the grid."""
        (sh, sw), (kh, kw) = self.cells, self.cell
        return rearrange(x, "b (gh gw kh kw) d -> b (gh kh gw kw) d", gh=sh, kh=kh, gw=sw, kw=kw)

    def _rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos/sin (b, l, head_dim / 2) of the 2-D RoPE at cell-major ``positions`` (b, l)."""
        cell, j = positions // self.cell_tokens, positions % self.cell_tokens
        (_, sw), (kh, kw) = self.cells, self.cell
        row, col = (cell // sw) * kh + j // kw, (cell % sw) * kw + j % kw
        return rope_2d(row, col, self.width // self.num_heads, self.rope_base)

    def _attention_mask(self, positions: Tensor, cache: KVCache) -> Tensor:
        """Bool (b, 1, l, s): block-causal over cells, plus the valid text-prefix slots."""
        key_cell = torch.arange(cache.max_tokens, device=positions.device) // self.cell_tokens
        return cache.with_prefix(key_cell <= (positions // self.cell_tokens)[..., None])

    # -- checks ------------------------------------------------------------------------------------------------
    def _check_tokens(self, tokens: Tensor, *, full: bool) -> None:
        n = self.seq_len if full else "l"
        check_generator_tokens(tokens, seq_len=self.seq_len if full else None, token_dim=self.token_dim,
                               layout=f"(B, {n}, {self.token_dim}) in raster order of a {self.grid[0]}x{self.grid[1]} "
                                      "grid (was the generator built for this tokenizer's grid?)")

    # -- decoding interface ------------------------------------------------------------------------------------
    def new_cache(self, cond: Conditioning, max_tokens: int | None = None) -> KVCache:
        """Allocate a cache for ``cond``'s batch (every cell of the grid) and prefill the text prefix, if any."""
        if max_tokens not in (None, self.seq_len):
            raise ValueError(f"xAR caches the whole grid: max_tokens must be None or {self.seq_len}")

        def prefill(h: Tensor, slots: Tensor, mask: Tensor, cache: KVCache) -> None:
            """The prefix is not rotated; its adaLN condition is the clean-time (t = 0) one."""
            ones = h.new_ones(*h.shape[:2], self.width // self.num_heads // 2)
            cond0 = (cache.start + self.time_embed(torch.zeros(len(h), device=h.device)))[:, None]  # b 1 c
            self._backbone(h, cond0, mask, (ones, torch.zeros_like(ones)), cache, slots, None)

        return self.new_kv_cache(cond, len(self.encoder_blocks) + len(self.decoder_blocks), self.seq_len, prefill)

    def step(self, inputs: Tensor, positions: Tensor, cache: KVCache, t: Tensor | float | None = None) -> Tensor:
        """Velocity (b, l, d) float32 of whole cells: inputs (b, l, d) are x_t of the tokens at cell-major
        ``positions`` (l,) or (b, l) (whole, aligned cells), ``t`` () / (b,) / (b, g) each cell's time (None = 0).

        Every input's keys/values go into ``cache``; cells fed clean (t = 0) count as cached context, and a call may
        only start at or before the end of the clean context already in the cache.
        """
        self._check_tokens(inputs, full=False)
        b, length, _ = inputs.shape
        k, dev = self.cell_tokens, inputs.device
        positions = positions.to(dev).expand(b, -1) if positions.ndim == 1 else positions.to(dev)
        starts = positions[:, ::k]  # b g
        whole = length > 0 and length % k == 0 and positions.shape == (b, length)
        if whole and validating(positions):
            runs = starts.repeat_interleave(k, dim=1) + torch.arange(k, device=dev).repeat(length // k)
            whole = (torch.equal(positions, runs) and not bool((starts % k).any()) and int(positions.min()) >= 0
                     and int(positions.max()) < self.seq_len)
        if not whole:
            raise ValueError(f"positions must cover whole cells: runs of {k} consecutive cell-major positions starting "
                             f"at a multiple of {k}, below {self.seq_len}; got shape {tuple(positions.shape)}")
        if validating(starts) and bool((starts[:, 0] > cache.lengths).any()):
            raise ValueError(f"the cells before position {int(starts[:, 0].max())} are not in the cache as clean "
                             f"context (cached up to {cache.lengths.tolist()}): feed the previous cell with t=0 first")
        g = length // k
        t = torch.zeros((), device=dev) if t is None else torch.as_tensor(t, device=dev)
        t = t.to(torch.float32)  # the official sampler casts its float64 times to the model dtype
        t = t.expand(b, g) if t.ndim == 0 else t[:, None].expand(b, g) if t.ndim == 1 else t
        if t.shape != (b, g) or (validating(t) and (bool((t < 0).any()) or bool((t > 1).any()))):
            raise ValueError(f"t must be in [0, 1] with shape (), ({b},) or ({b}, {g}); got {tuple(t.shape)}")
        cond = cache.start[:, None] + self.time_embed(t)  # b g c
        h = self.token_proj(inputs.to(self.token_proj.weight.dtype))
        h = self._backbone(h, cond, self._attention_mask(positions, cache), self._rope(positions), cache,
                           positions + cache.prefix_len, positions)
        clean_end = ((starts + k) * (t == 0)).amax(dim=1)  # end of the cells fed clean
        cache.lengths = torch.maximum(cache.lengths, clean_end)
        return self.out(self.decoder_norm(h)).float()

    def _backbone(self, h: Tensor, cond: Tensor, mask: Tensor, rope: tuple[Tensor, Tensor], cache: KVCache,
                  slots: Tensor, positions: Tensor | None) -> Tensor:
        """Encoder then decoder stack on embedded inputs h (b, l, c); position embeddings where ``positions``."""
        if positions is not None:
            h = h + self.encoder_pos[0, positions]
        h = self.token_norm(h)
        h = run_blocks(self.encoder_blocks, h, mask, rope, cache, slots, cond=cond)
        h = self.decoder_in(self.encoder_norm(h))
        if positions is not None:
            h = h + self.decoder_pos[0, positions]
        return run_blocks(self.decoder_blocks, h, mask, rope, cache, slots, len(self.encoder_blocks), cond=cond)

    # -- training ----------------------------------------------------------------------------------------------
    def forward(self, tokens: Tensor, cond: Conditioning, *, t: Tensor | None = None, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> GeneratorOutput:
        """Noisy-context flow-matching loss.  tokens (b, n, d) raster order -> GeneratorOutput(loss, extras).

        Args:
            t: (b, num_cells) per-cell times (default: sigmoid of a standard normal).
            noise: (b, n, d) raster-order noise (default: standard normal).
            generator: RNG for condition dropout, ``t`` and ``noise``.

        ``extras``: ``velocity`` and ``target`` (b, n, d) in raster order, ``t`` (b, num_cells).
        """
        self._check_tokens(tokens, full=True)
        if self.training and self.cond_dropout > 0:
            cond = self.drop_condition(cond, generator)
        b, dev = tokens.shape[0], tokens.device
        x = self.to_cell_major(tokens)
        if t is None:
            t = torch.sigmoid(torch.randn(b, self.num_cells, generator=generator, device=dev))
        if tuple(t.shape) != (b, self.num_cells):
            raise ValueError(f"t must have shape ({b}, {self.num_cells}) (one time per cell), got {tuple(t.shape)}")
        if noise is None:
            eps = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
        elif noise.shape != tokens.shape:
            raise ValueError(f"noise must have the tokens' shape {tuple(tokens.shape)}, got {tuple(noise.shape)}")
        else:
            eps = self.to_cell_major(noise)
        tt = repeat(t.to(x.dtype), "b g -> b (g k) 1", k=self.cell_tokens)
        x_t = (1 - tt) * x + tt * eps
        target = eps - x
        positions = torch.arange(self.seq_len, device=dev).expand(b, -1)
        v = self.step(x_t, positions, self.new_cache(cond), t)
        loss = F.mse_loss(v, target.float())
        return GeneratorOutput(loss, extras={"velocity": self.to_raster(v), "target": self.to_raster(target), "t": t})


# ----------------------------------------------------------------------------------------------------------------
# Official checkpoints (OliverRensu/xAR state dicts: HF OliverRen/xAR xAR-{B,L,H}.pth, or the parity fixtures)
# ----------------------------------------------------------------------------------------------------------------
OFFICIAL_HEADS = {768: 12, 1024: 16, 1280: 16}  # xar_base / xar_large / xar_huge width -> heads
OFFICIAL_WEIGHT_FILES = ("model.safetensors", "weights.safetensors", "pytorch_model.bin")

_BLOCK = r"(encoder|decoder)_blocks\.(\d+)\."
_KEY_RULES: list[tuple[str, str]] = [  # official key (full match) -> vistok key
    (r"class_emb\.weight", r"class_embed.weight"),
    (r"time_embed\.mlp\.([02])\.(weight|bias)", r"time_embed.mlp.\1.\2"),
    (r"z_proj\.(weight|bias)", r"token_proj.\1"),
    (r"z_proj_ln\.weight", r"token_norm.weight"),
    (r"(encoder|decoder)_pos_embed_learned", r"\1_pos"),
    (_BLOCK + r"attn\.(qkv|proj)\.(weight|bias)", r"\1_blocks.\2.attn.\3.\4"),  # packed q, k, v rows, same order
    (_BLOCK + r"mlp\.fc1_g\.(weight|bias)", r"\1_blocks.\2.mlp.gate.\3"),
    (_BLOCK + r"mlp\.fc1_x\.(weight|bias)", r"\1_blocks.\2.mlp.up.\3"),
    (_BLOCK + r"mlp\.fc2\.(weight|bias)", r"\1_blocks.\2.mlp.down.\3"),
    (_BLOCK + r"ada_lin\.1\.(weight|bias)", r"\1_blocks.\2.ada.\3"),
    (r"(encoder|decoder)_norm\.weight", r"\1_norm.weight"),
    (r"decoder_embed\.(weight|bias)", r"decoder_in.\1"),
    (r"pred\.(weight|bias)", r"out.\1"),
]
# deterministic buffers vistok recomputes: the block-causal mask and the RoPE tables
_DERIVED = re.compile(r"mask|" + _BLOCK + r"attn\.rope\.(freqs|freqs_cos|freqs_sin)")


def convert_xar_state_dict(official: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map an official xAR state dict to :class:`XARGenerator` names (the mask and RoPE buffers are dropped).

    Raises:
        ValueError: listing every official key it does not know.
    """
    return rename_state_dict(official, _KEY_RULES, skip=lambda k: bool(_DERIVED.fullmatch(k)),
                             unknown_error="convert_xar_state_dict: official keys with no vistok counterpart "
                                           "(is this an xAR checkpoint?)")


def xar_kwargs_from_official_config(args: dict) -> dict:
    """:class:`XARGenerator` kwargs from the official ``xAR(...)`` constructor arguments (defaults as upstream)."""
    grid = args.get("img_size", 256) // args.get("vae_stride", 16) // args.get("patch_size", 1)
    clusters = args.get("clusters", 4)
    side = math.isqrt(clusters)
    if side * side != clusters or grid % side:
        raise ValueError(f"clusters={clusters} must be a square number of cells tiling the {grid}x{grid} grid")
    width, heads = args.get("encoder_embed_dim", 1024), args.get("encoder_num_heads", 16)
    if (width, heads) != (args.get("decoder_embed_dim", 1024), args.get("decoder_num_heads", 16)):
        raise ValueError("vistok's xAR uses one width and head count for both stacks (as every official size does)")
    return dict(grid_size=grid, cell_size=grid // side, token_dim=args.get("vae_embed_dim", 16)
                * args.get("patch_size", 1) ** 2, width=width, depth=args.get("encoder_depth", 16),
                decoder_depth=args.get("decoder_depth", 16), num_heads=heads, mlp_ratio=args.get("mlp_ratio", 4.0),
                dropout=args.get("proj_dropout", 0.0), num_classes=args.get("class_num", 1000),
                cond_dropout=args.get("label_drop_prob", 0.1))


def xar_kwargs_from_official_weights(state: dict[str, Tensor]) -> dict:
    """Kwargs read off an official state dict (folders without a config): official 2x2 cells, 4x MLP ratio."""
    width = state["z_proj.weight"].shape[0]
    if width not in OFFICIAL_HEADS:
        raise ValueError(f"cannot infer the head count of width {width} (official widths: {sorted(OFFICIAL_HEADS)}); "
                         "put a config.json with the official constructor_args next to the weights")
    depth = lambda side: len({k.split(".")[1] for k in state if k.startswith(f"{side}_blocks.")})
    grid = math.isqrt(state["encoder_pos_embed_learned"].shape[1])
    return dict(grid_size=grid, cell_size=grid // 2, width=width, depth=depth("encoder"),
                decoder_depth=depth("decoder"), num_heads=OFFICIAL_HEADS[width], mlp_ratio=4.0, dropout=0.0)


def official_matches(config: dict, folder: Path) -> bool:
    """True for an official xAR folder: a config naming ``models.xar.xAR``, or a bare ``xAR-*.pth`` release."""
    if config:
        return config.get("cls") == "models.xar.xAR" or str(config.get("repo", "")).endswith("OliverRensu/xAR")
    return any(Path(folder).glob("xAR-*.pth"))


def load_official(folder: str | Path) -> XARGenerator:
    """Build an :class:`XARGenerator` from an official folder and load its weights (eval mode).

    Sizes come from ``config.json``'s ``constructor_args`` (the official ``xAR(...)`` kwargs) when present, else
    from the weight shapes; the class count and token channels always come from the weights (the official class
    hard-codes 1001 class rows and 16 output channels).
    """
    config, state, path = read_release(folder, OFFICIAL_WEIGHT_FILES, ("xAR-*.pth",), unique=True)
    kwargs = (xar_kwargs_from_official_config(config["constructor_args"]) if "constructor_args" in config
              else xar_kwargs_from_official_weights(state))
    kwargs.update(num_classes=state["class_emb.weight"].shape[0] - 1, token_dim=state["pred.weight"].shape[0])
    model = XARGenerator(**kwargs)
    load_state_dict_strict(model, convert_xar_state_dict(state), str(path))
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# Presets (name -> constructor kwargs); registered in vistok.generators
# ----------------------------------------------------------------------------------------------------------------
XAR_PRESETS: dict[str, dict] = {
    # tiny CPU model: an 8x8 grid of 16-d tokens, 4 cells of 4x4
    "xar_tiny": dict(grid_size=8, cell_size=4, token_dim=16, width=128, depth=2, decoder_depth=2, num_heads=4,
                     num_classes=24),
    # official sizes (ImageNet 256, KL-16 latents: 16x16x16, 4 cells of 8x8, 1000 classes)
    "xar_b": dict(width=768, depth=8, decoder_depth=8, num_heads=12),  # 172.6M
    "xar_l": dict(width=1024, depth=16, decoder_depth=16, num_heads=16),  # 608.4M
    "xar_h": dict(width=1280, depth=20, decoder_depth=20, num_heads=16),  # 1186.0M (the paper rounds to 1.1B)
}
