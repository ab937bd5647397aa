"""MAR: masked autoregression over continuous tokens with a per-token diffusion head, and its causal variant.

Paper: Li et al., "Autoregressive Image Generation without Vector Quantization", NeurIPS 2024, arXiv 2406.11838.
Reference code (facts only: shapes, key names, hyper-parameters): github.com/LTH14/mar at fe470ac
(``models/mar.py``, ``models/diffloss.py``).  What is there, the vistok options and the runs: ``docs/mar.md``.

:class:`MARGenerator` is MAR's MAE-style encoder/decoder: the encoder reads ``buffer_size`` condition slots plus the
*known* tokens only; the decoder puts a mask token back at every unknown position and emits one condition ``z`` per
token for the :class:`~vistok.generators.heads.DiffLossHead`.  Training masks a random subset (one ratio per batch)
and applies the diffusion loss to the masked tokens, each repeated ``diffusion_batch_mul`` times with independent
timesteps and noise.  Decoding is :func:`vistok.decoding.masked.sample_masked`.  :class:`MARARGenerator` is the
paper's "AR + DiffLoss" baseline (Table 1): a causal transformer in raster order with the same head, driven through
``new_cache``/``step`` like :class:`~vistok.generators.ar.ARGenerator`.

Official checkpoints: :func:`convert_mar_state_dict`, :func:`load_official`.  Legend: b batch, n tokens,
d token dim, k kept (visible) slots, s buffer + tokens, l step length, c width.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vistok.checkpoint import find_weight_file, load_state_dict_strict, read_json, read_release, rename_state_dict
from vistok.generators.heads import DiffLossHead
from vistok.interfaces import (
    Conditioning,
    Configurable,
    GeneratorOutput,
    KVCache,
    check_choice,
    check_generator_tokens,
    check_positions,
)
from vistok.layers import ConditionEmbedder, ViTBlock, rope_2d, run_blocks, token_grid
from vistok.layers.init import xavier_linears
from vistok.layers.sincos import sincos_1d

__all__ = ["MARARGenerator", "MARGenerator", "MAR_AR_PRESETS", "MAR_PRESETS", "convert_mar_state_dict",
           "load_official", "official_matches", "patchify", "unpatchify"]


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------
def patchify(latents: Tensor, patch_size: int = 1) -> Tensor:
    """MAR's token layout of a latent map: (b, c, h, w) -> (b, n = (h/p)(w/p), d = c p^2), raster order."""
    return rearrange(latents, "b c (h p) (w q) -> b (h w) (c p q)", p=patch_size, q=patch_size)


def unpatchify(tokens: Tensor, channels: int, patch_size: int = 1) -> Tensor:
    """Inverse of :func:`patchify` for a square grid: (b, n, c p^2) -> (b, c, h, w)."""
    side = math.isqrt(tokens.shape[1])
    return rearrange(tokens, "b (h w) (c p q) -> b c (h p) (w q)", h=side, c=channels, p=patch_size, q=patch_size)


def grid_sincos(grid: tuple[int, int], dim: int) -> Tensor:
    """2-D sine-cosine position table (rows * cols, dim), raster order (MAE's fixed embedding): the first half of
    the channels encode the row, the second half the column, each as [sin, cos] over ``dim / 4`` frequencies."""
    if dim % 4:
        raise ValueError(f"a 2-D sincos table needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    return torch.cat([sincos_1d(rows, dim // 2), sincos_1d(cols, dim // 2)], 1).float()


def grid_rope(slots: Tensor, grid: tuple[int, int], head_dim: int, offset: int, base: float = 10000.0
              ) -> tuple[Tensor, Tensor]:
    """cos/sin (b, l, head_dim / 2) of a 2-D RoPE (:func:`~vistok.layers.rope_2d`) for sequence ``slots`` (b, l):
    slot ``offset + j`` is token j at (j // cols, j % cols).  Slots before ``offset`` (condition buffer) sit at
    (0, 0), i.e. are not rotated."""
    j = (slots - offset).clamp(min=0)
    return rope_2d(j // grid[1], j % grid[1], head_dim, base)


# --------------------------------------------------------------------------------------------------------------
# Shared by both generators: conditioning (ConditionEmbedder, MAR's null vector), token checks, the diffusion loss
# --------------------------------------------------------------------------------------------------------------
class _ContinuousGenerator(nn.Module, ConditionEmbedder):
    kind = "continuous"
    vocab_size = None
    seq_len: int
    token_dim: int
    head: DiffLossHead

    def check_tokens(self, tokens: Tensor) -> None:
        check_generator_tokens(tokens, seq_len=self.seq_len, token_dim=self.token_dim)

    def diffusion_loss(self, z: Tensor, tokens: Tensor, weight: Tensor | None = None, *, t: Tensor | None = None,
                       noise: Tensor | None = None) -> Tensor:
        """Head loss on every token repeated ``diffusion_batch_mul`` times (MAR's layout: tiled, not interleaved).
        z (b, n, c), tokens (b, n, d), weight (b, n) or None; ``t``/``noise`` (b n mul,) / (b n mul, d) if given."""
        mul = self.diffusion_batch_mul
        w = None if weight is None else weight.flatten().to(tokens.dtype).repeat(mul)
        return self.head.loss(tokens.flatten(0, 1).repeat(mul, 1), z.flatten(0, 1).repeat(mul, 1), w, t=t,
                              noise=noise)


# --------------------------------------------------------------------------------------------------------------
# MAR (bidirectional, masked)
# --------------------------------------------------------------------------------------------------------------
class MARGenerator(_ContinuousGenerator, Configurable):
    """MAR: MAE encoder/decoder over continuous tokens with a DiffLoss head.

    Args:
        token_dim, seq_len: d and n of the tokens (MAR: KL-16 latents, 16 x 256).
        encoder_width, encoder_depth, encoder_heads, decoder_width, decoder_depth, decoder_heads: backbone size.
        mlp_ratio, norm_eps: block MLP ratio and block LayerNorm eps (MAR presets: 1e-6).
        buffer_size: condition slots in front of the tokens (MAR: 64).
        num_classes: class-conditional when > 0.  text_dim: text-conditional when > 0 (states of a text encoder;
            the first T buffer slots hold the projected text tokens, the others their masked mean).
        max_text_len: longest text (must fit the buffer).
        cond_dropout: probability of the null condition in training (MAR's ``label_drop_prob``).
        mask_ratio_min: lower end of the training mask ratio, in (0, 1].
        mask_ratio_dist: the training mask ratio: ``"truncnorm"`` (MAR: N(1, 0.25) truncated to
            ``[mask_ratio_min, 1]``) or ``"cosine"`` (vistok option, MaskGIT's ``cos(pi/2 u)`` on the same range).
        decoder_cond: vistok option (off = official): add a projection of the pooled condition (class embedding,
            mean text state or the null embedding) to every decoder slot.
        pos_grid: (rows, columns) of the token layout, read by ``pos_init="sincos"`` and ``rope`` (default: a square
            grid when ``seq_len`` is a square, else one row).
        pos_init: ``"normal"`` (MAR: N(0, 0.02) learned tables) or ``"sincos"`` (vistok option: the token part of
            the position tables starts as a unit-scale 2-D sine-cosine table, still learned).
        rope: vistok option: 2-D rotary embeddings over ``pos_grid`` in every encoder/decoder attention (buffer
            slots unrotated).
        attn_dropout, proj_dropout: dropout in attention probabilities / after projections and MLPs.
        head_width, head_depth, num_sampling_steps, head_sampler, head_clip_denoised: the :class:`DiffLossHead`
            (``head_clip_denoised`` = its ``clip_denoised``, a sampling-time x0 clamp; None = official).
        diffusion_batch_mul: copies of every token in the diffusion loss (independent t and noise).
    """

    is_causal = False
    default_decoder = "masked"
    inference_methods = ("predict", "head.denoise")  # what vistok.compile_inference compiles

    def __init__(self, *, token_dim: int = 16, seq_len: int = 256, encoder_width: int = 1024, encoder_depth: int = 16,
                 encoder_heads: int = 16, decoder_width: int = 1024, decoder_depth: int = 16, decoder_heads: int = 16,
                 mlp_ratio: float = 4.0, norm_eps: float = 1e-6, buffer_size: int = 64, num_classes: int = 1000,
                 text_dim: int = 0, max_text_len: int = 32, cond_dropout: float = 0.1, mask_ratio_min: float = 0.7,
                 attn_dropout: float = 0.1, proj_dropout: float = 0.1, head_width: int = 1024, head_depth: int = 3,
                 num_sampling_steps: int = 100, head_sampler: Literal["ddpm", "ddim", "dpm", "dpm_sde"] = "ddpm",
                 diffusion_batch_mul: int = 4, head_clip_denoised: float | None = None,
                 mask_ratio_dist: Literal["truncnorm", "cosine"] = "truncnorm", decoder_cond: bool = False,
                 pos_grid: tuple[int, int] | None = None, pos_init: Literal["normal", "sincos"] = "normal",
                 rope: bool = False):
        super().__init__()
        self.pos_grid = token_grid(seq_len, pos_grid, "pos_grid", row_fallback=True)
        check_choice("pos_init", pos_init, ("normal", "sincos"), " ('normal' = MAR)")
        if not 0 < mask_ratio_min <= 1:
            raise ValueError(f"mask_ratio_min must be in (0, 1] (MAR: 0.7), got {mask_ratio_min}")
        check_choice("mask_ratio_dist", mask_ratio_dist, ("truncnorm", "cosine"), " ('truncnorm' = MAR)")
        if text_dim and max_text_len > buffer_size:
            raise ValueError(f"max_text_len ({max_text_len}) must be <= buffer_size ({buffer_size}): text tokens "
                             "live in the buffer slots")
        self.token_dim, self.seq_len, self.buffer_size = token_dim, seq_len, buffer_size
        self.pos_init, self.rope, self.mask_ratio_dist = pos_init, rope, mask_ratio_dist
        self.mask_ratio_min, self.diffusion_batch_mul = mask_ratio_min, diffusion_batch_mul
        self.init_conditioning(encoder_width, num_classes=num_classes, text_dim=text_dim, max_text_len=max_text_len,
                               cond_dropout=cond_dropout, null="vector")
        # encoder
        self.token_proj = nn.Linear(token_dim, encoder_width)
        self.token_norm = nn.LayerNorm(encoder_width, eps=1e-6)
        self.encoder_pos = nn.Parameter(torch.zeros(buffer_size + seq_len, encoder_width))
        block = lambda w, h: ViTBlock(w, h, mlp_ratio, norm_eps, attn_dropout, proj_dropout)
        self.encoder = nn.ModuleList(block(encoder_width, encoder_heads) for _ in range(encoder_depth))
        self.encoder_norm = nn.LayerNorm(encoder_width, eps=norm_eps)
        # decoder
        self.decoder_embed = nn.Linear(encoder_width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(decoder_width))
        self.decoder_cond = nn.Linear(encoder_width, decoder_width) if decoder_cond else None
        self.decoder_pos = nn.Parameter(torch.zeros(buffer_size + seq_len, decoder_width))
        self.decoder = nn.ModuleList(block(decoder_width, decoder_heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_width, eps=norm_eps)
        self.head_pos = nn.Parameter(torch.zeros(seq_len, decoder_width))
        self.head = DiffLossHead(token_dim=token_dim, cond_dim=decoder_width, width=head_width, depth=head_depth,
                                 num_sampling_steps=num_sampling_steps, sampler=head_sampler,
                                 clip_denoised=head_clip_denoised)
        for p in (self.null_embed, self.mask_token, self.encoder_pos, self.decoder_pos, self.head_pos):
            nn.init.normal_(p, std=0.02)
        if self.pos_init == "sincos":
            with torch.no_grad():
                for p in (self.encoder_pos, self.decoder_pos):
                    p[self.buffer_size :] = grid_sincos(self.pos_grid, p.shape[1])
                self.head_pos.copy_(grid_sincos(self.pos_grid, self.head_pos.shape[1]))
        xavier_linears(self, skip="head", embedding_std=0.02)  # MAR's init outside the head

    def _rope(self, slots: Tensor, width: int, heads: int) -> tuple[Tensor, Tensor] | None:
        return grid_rope(slots, self.pos_grid, width // heads, self.buffer_size) if self.rope else None

    # -- conditioning ------------------------------------------------------------------------------------------
    def cond_slots(self, cond: Conditioning) -> tuple[Tensor, Tensor]:
        """The encoder's condition slots (b, buffer_size, c) and the pooled condition (b, c) (no dropout)."""
        if self.text_proj is None:
            pooled = self.condition_vector(cond)
            return pooled[:, None].expand(-1, self.buffer_size, -1), pooled
        text = self.text_states(cond)  # b t c (on the model's device)
        keep = cond.text_mask.to(text.device)[..., None]
        pooled = (text * keep).sum(1) / keep.sum(1).clamp(min=1)
        pooled = torch.where(keep.any(1), pooled, self.null_embed)  # all-masked text = null condition
        slots = torch.where(keep, text, pooled[:, None])
        return torch.cat([slots, pooled[:, None].expand(-1, self.buffer_size - text.shape[1], -1)], dim=1), pooled

    def cond_buffer(self, cond: Conditioning) -> Tensor:
        """The encoder's condition slots (b, buffer_size, c) for ``cond`` (no dropout)."""
        return self.cond_slots(cond)[0]

    # -- network -----------------------------------------------------------------------------------------------
    def encode(self, tokens: Tensor, mask: Tensor, buffer: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """MAE encoder over the buffer and the known tokens.

        tokens (b, n, d), mask (b, n) bool (True = unknown), buffer (b, buffer_size, c) ->
        (x (b, k, c) encoded kept slots in original order, idx (b, k) their slot indices, valid (b, k)).
        Rows with fewer kept slots than ``k`` are padded (``valid`` False) and masked out of attention.
        """
        x = self.token_norm(torch.cat([buffer.to(tokens.dtype), self.token_proj(tokens)], dim=1) + self.encoder_pos)
        keep = F.pad(~mask, (self.buffer_size, 0), value=True)
        counts = keep.sum(1)
        idx = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, : int(counts.max())]  # kept first
        valid = torch.arange(idx.shape[1], device=idx.device) < counts[:, None]
        x = x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))
        attn_mask = None if bool(valid.all()) else valid[:, None, None, :]
        rope = self._rope(idx, x.shape[-1], self.encoder[0].attn.num_heads) if self.encoder else None
        return self.encoder_norm(run_blocks(self.encoder, x, attn_mask, rope)), idx, valid

    def decode(self, x: Tensor, idx: Tensor, valid: Tensor, pooled: Tensor | None = None) -> Tensor:
        """MAE decoder: mask tokens back in, bidirectional blocks -> per-token head conditions z (b, n, c).

        ``pooled`` (b, c_enc), the pooled condition, is required when the model was built with ``decoder_cond``.
        """
        y = torch.where(valid[..., None], self.decoder_embed(x), self.mask_token.to(x.dtype))
        full = self.mask_token.to(y.dtype).expand(y.shape[0], self.buffer_size + self.seq_len, -1)
        y = full.scatter(1, idx[..., None].expand(-1, -1, y.shape[-1]), y) + self.decoder_pos
        if self.decoder_cond is not None:
            if pooled is None:
                raise ValueError("this MAR was built with decoder_cond=True: pass the pooled condition to decode")
            y = y + self.decoder_cond(pooled.to(y.dtype))[:, None]
        slots = torch.arange(y.shape[1], device=y.device).expand(y.shape[0], -1)
        rope = self._rope(slots, y.shape[-1], self.decoder[0].attn.num_heads) if self.decoder else None
        return self.decoder_norm(run_blocks(self.decoder, y, rope=rope))[:, self.buffer_size :] + self.head_pos

    def predict(self, tokens: Tensor, mask: Tensor, cond: Conditioning) -> Tensor:
        """Head conditions for every position given the tokens where ``mask`` is False.

        tokens (b, n, d) (values under the mask are ignored), mask (b, n) bool, True = unknown -> z (b, n, c).
        """
        buffer, pooled = self.cond_slots(cond)
        return self.decode(*self.encode(tokens, mask.bool(), buffer), pooled)

    def random_mask(self, batch_size: int, device: torch.device | str = "cpu") -> Tensor:
        """MAR's training mask (b, n) bool: one ratio per batch (``mask_ratio_dist``), ``ceil(n * ratio)`` masked
        positions per sample taken from a random order."""
        if self.mask_ratio_dist == "cosine":
            u_max = math.acos(self.mask_ratio_min) * 2 / math.pi  # cos(pi/2 u) >= mask_ratio_min for u <= u_max
            ratio = math.cos(math.pi / 2 * u_max * float(torch.rand((), dtype=torch.float64)))
        else:
            lo = torch.special.ndtr(torch.tensor((self.mask_ratio_min - 1.0) / 0.25, dtype=torch.float64))
            u = lo + (0.5 - lo) * torch.rand((), dtype=torch.float64)
            ratio = 1.0 + 0.25 * float(torch.special.ndtri(u)) if self.mask_ratio_min < 1 else 1.0
        num = min(self.seq_len, max(1, math.ceil(self.seq_len * ratio)))
        orders = torch.rand(batch_size, self.seq_len, device=device).argsort(dim=1)
        return torch.zeros(batch_size, self.seq_len, dtype=torch.bool, device=device).scatter(1, orders[:, :num], True)

    # -- training ----------------------------------------------------------------------------------------------
    def forward(self, tokens: Tensor, cond: Conditioning, *, mask: Tensor | None = None) -> GeneratorOutput:
        """Masked diffusion loss.  tokens (b, n, d); ``mask`` (b, n) (True/1 = masked) defaults to a random one.

        Returns ``GeneratorOutput(loss, extras={"mask": (b, n), "z": (b, n, c)})``.
        """
        self.check_tokens(tokens)
        self.check_cond(cond)
        b = tokens.shape[0]
        if mask is None:
            mask = self.random_mask(b, tokens.device)
        elif mask.shape != (b, self.seq_len):
            raise ValueError(f"mask must have shape ({b}, {self.seq_len}), got {tuple(mask.shape)}")
        mask = mask.bool()
        if not bool(mask.any()):
            raise ValueError("mask has no masked position: the loss is computed on masked tokens only")
        if self.training and self.cond_dropout > 0:
            cond = self.drop_condition(cond)
        z = self.predict(tokens, mask, cond)
        return GeneratorOutput(self.diffusion_loss(z, tokens, mask), extras={"mask": mask, "z": z})


# --------------------------------------------------------------------------------------------------------------
# Causal "AR + DiffLoss" variant (raster order, KV cache)
# --------------------------------------------------------------------------------------------------------------
class MARARGenerator(_ContinuousGenerator, Configurable):
    """Causal transformer over continuous tokens with a DiffLoss head (MAR paper, Table 1 "AR, raster").

    Slot layout as :class:`~vistok.generators.ar.ARGenerator`, plus a learned absolute position per slot.  Args as
    :class:`MARGenerator` (``width``/``depth``/``num_heads`` for the single causal stack).
    """

    is_causal = True
    default_decoder = "ar"  # one diffusion-head draw per pass (decode_car); "csd" speculates
    inference_methods = ("step", "head.denoise")  # what vistok.compile_inference compiles

    def __init__(self, *, token_dim: int = 16, seq_len: int = 256, width: int = 1024, depth: int = 32,
                 num_heads: int = 16, mlp_ratio: float = 4.0, norm_eps: float = 1e-6, num_classes: int = 1000,
                 text_dim: int = 0, max_text_len: int = 32, cond_dropout: float = 0.1, attn_dropout: float = 0.1,
                 proj_dropout: float = 0.1, head_width: int = 1024, head_depth: int = 3, num_sampling_steps: int = 100,
                 head_sampler: Literal["ddpm", "ddim", "dpm", "dpm_sde"] = "ddpm", diffusion_batch_mul: int = 4,
                 head_clip_denoised: float | None = None):
        super().__init__()
        self.token_dim, self.seq_len, self.width, self.num_heads = token_dim, seq_len, width, num_heads
        self.diffusion_batch_mul = diffusion_batch_mul
        self.init_conditioning(width, num_classes=num_classes, text_dim=text_dim, max_text_len=max_text_len,
                               cond_dropout=cond_dropout, null="vector")
        self.token_proj = nn.Linear(token_dim, width)
        self.token_norm = nn.LayerNorm(width, eps=1e-6)
        self.pos = nn.Parameter(torch.zeros(seq_len, width))
        self.prefix_pos = nn.Parameter(torch.zeros(self.prefix_len, width))
        self.blocks = nn.ModuleList(ViTBlock(width, num_heads, mlp_ratio, norm_eps, attn_dropout, proj_dropout)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=norm_eps)
        self.head = DiffLossHead(token_dim=token_dim, cond_dim=width, width=head_width, depth=head_depth,
                                 num_sampling_steps=num_sampling_steps, sampler=head_sampler,
                                 clip_denoised=head_clip_denoised)
        for p in (self.null_embed, self.pos, self.prefix_pos):
            nn.init.normal_(p, std=0.02)
        xavier_linears(self, skip="head", embedding_std=0.02)  # MAR's init outside the head

    def _run(self, x: Tensor, slots: Tensor, mask: Tensor, cache: KVCache) -> Tensor:
        return run_blocks(self.blocks, x, mask, None, cache, slots)

    def new_cache(self, cond: Conditioning, max_tokens: int | None = None) -> KVCache:
        """Allocate a KV cache for ``cond``'s batch and prefill the text prefix (if any)."""
        prefill = lambda x, slots, mask, cache: self._run(self.token_norm(x + self.prefix_pos), slots, mask, cache)
        return self.new_kv_cache(cond, len(self.blocks), max_tokens or self.seq_len, prefill)

    def step(self, inputs: Tensor, positions: Tensor, cache: KVCache) -> Tensor:
        """inputs (b, l, d) = tokens at ``positions - 1`` -> head conditions z (b, l, c) for ``positions``."""
        check_positions(positions, min(cache.max_tokens, self.seq_len))
        if not inputs.is_floating_point():
            raise TypeError("MARARGenerator.step takes continuous tokens (B, L, D) floats")
        x = self.token_proj(inputs.to(self.pos.dtype))
        x = self.with_start(x, positions, cache)
        x = self.token_norm(x + self.pos[positions])
        x = self._run(x, positions + cache.prefix_len, cache.attention_mask(positions), cache)
        cache.advance(positions)
        return self.norm(x)

    def forward(self, tokens: Tensor, cond: Conditioning) -> GeneratorOutput:
        """Teacher-forced diffusion loss on every token.  tokens (b, n, d) -> GeneratorOutput(loss, extras z)."""
        self.check_tokens(tokens)
        z = self.teacher_forced(tokens, cond)
        return GeneratorOutput(self.diffusion_loss(z, tokens), extras={"z": z})


# --------------------------------------------------------------------------------------------------------------
# Presets (ImageNet 256: KL-16 latents, 16 x 16 tokens of 16 channels; DiffLoss sizes of the released models)
# --------------------------------------------------------------------------------------------------------------
_IN256 = dict(token_dim=16, seq_len=256, buffer_size=64, num_classes=1000)
MAR_PRESETS: dict[str, dict] = {
    "mar_b": dict(**_IN256, encoder_width=768, encoder_depth=12, encoder_heads=12, decoder_width=768,
                  decoder_depth=12, decoder_heads=12, head_width=1024, head_depth=6),
    "mar_l": dict(**_IN256, encoder_width=1024, encoder_depth=16, encoder_heads=16, decoder_width=1024,
                  decoder_depth=16, decoder_heads=16, head_width=1280, head_depth=8),
    "mar_h": dict(**_IN256, encoder_width=1280, encoder_depth=20, encoder_heads=16, decoder_width=1280,
                  decoder_depth=20, decoder_heads=16, head_width=1536, head_depth=12),
    "mar_tiny": dict(token_dim=16, seq_len=32, encoder_width=128, encoder_depth=2, encoder_heads=4,
                     decoder_width=128, decoder_depth=2, decoder_heads=4, buffer_size=8, num_classes=24,
                     head_width=128, head_depth=2, num_sampling_steps=50),
    "mar_tiny_t2i": dict(token_dim=16, seq_len=32, encoder_width=128, encoder_depth=2, encoder_heads=4,
                         decoder_width=128, decoder_depth=2, decoder_heads=4, buffer_size=32, num_classes=0,
                         text_dim=384, max_text_len=32, head_width=128, head_depth=2, num_sampling_steps=50),
}
MAR_AR_PRESETS: dict[str, dict] = {
    "mar_ar_tiny": dict(token_dim=16, seq_len=32, width=128, depth=4, num_heads=4, num_classes=24, head_width=128,
                        head_depth=2, num_sampling_steps=50),
}


# --------------------------------------------------------------------------------------------------------------
# Official checkpoints (LTH14/mar ``MAR.state_dict()``)
# --------------------------------------------------------------------------------------------------------------
_KEY_RULES = [
    (r"fake_latent", "null_embed"), (r"class_emb\.(.*)", r"class_embed.\1"), (r"mask_token", "mask_token"),
    (r"encoder_pos_embed_learned", "encoder_pos"), (r"decoder_pos_embed_learned", "decoder_pos"),
    (r"diffusion_pos_embed_learned", "head_pos"), (r"z_proj\.(.*)", r"token_proj.\1"),
    (r"z_proj_ln\.(.*)", r"token_norm.\1"),
    (r"(encoder|decoder)_blocks\.(\d+)\.((?:norm[12]|attn\.qkv|attn\.proj)\.(?:weight|bias))", r"\1.\2.\3"),
    (r"(encoder|decoder)_blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"\1.\2.mlp.0.\3"),  # timm Mlp -> ViTBlock.mlp
    (r"(encoder|decoder)_blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"\1.\2.mlp.2.\3"),
    (r"(encoder_norm|decoder_embed|decoder_norm)\.(weight|bias)", r"\1.\2"),
    (r"diffloss\.net\.time_embed\.mlp\.([02])\.(.*)", r"head.time_mlp.\1.\2"),
    (r"diffloss\.net\.cond_embed\.(.*)", r"head.cond_proj.\1"),
    (r"diffloss\.net\.input_proj\.(.*)", r"head.input_proj.\1"),
    (r"diffloss\.net\.res_blocks\.(\d+)\.in_ln\.(.*)", r"head.blocks.\1.norm.\2"),
    (r"diffloss\.net\.res_blocks\.(\d+)\.mlp\.([02])\.(.*)", r"head.blocks.\1.mlp.\2.\3"),
    (r"diffloss\.net\.res_blocks\.(\d+)\.adaLN_modulation\.1\.(.*)", r"head.blocks.\1.modulation.\2"),
    (r"diffloss\.net\.final_layer\.linear\.(.*)", r"head.out_proj.\1"),
    (r"diffloss\.net\.final_layer\.adaLN_modulation\.1\.(.*)", r"head.out_modulation.\1"),
]
_SQUEEZE = {"null_embed", "mask_token", "encoder_pos", "decoder_pos", "head_pos"}  # drop leading singleton axes


def convert_mar_state_dict(official: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map an official ``MAR.state_dict()`` (or a checkpoint's ``model`` / ``model_ema``) to :class:`MARGenerator`.

    Raises:
        ValueError: listing every official key it does not know.
    """
    # (1, d) / (1, 1, d) / (1, s, d) -> (d,) / (s, d)
    squeeze = lambda new, v: v.reshape(v.shape[-1 if v.numel() == v.shape[-1] else -2 :]) if new in _SQUEEZE else v
    return rename_state_dict({k.removeprefix("module."): v for k, v in official.items()}, _KEY_RULES,
                             transform=squeeze, unknown_error="not MAR keys")


def mar_kwargs_from_official(args: dict) -> dict:
    """:class:`MARGenerator` kwargs from the official ``MAR(...)`` constructor arguments."""
    grid = args.get("img_size", 256) // args.get("vae_stride", 16) // args.get("patch_size", 1)
    steps = str(args.get("num_sampling_steps", "100"))
    if not steps.isdigit():
        raise ValueError(f"num_sampling_steps={steps!r}: only a plain step count (uniform respacing) is supported")
    norm = str(args.get("norm_layer", "eps=1e-6"))
    get = lambda name, default: args.get(name, default)
    return dict(token_dim=get("vae_embed_dim", 16) * get("patch_size", 1) ** 2, seq_len=grid * grid,
                encoder_width=get("encoder_embed_dim", 1024), encoder_depth=get("encoder_depth", 16),
                encoder_heads=get("encoder_num_heads", 16), decoder_width=get("decoder_embed_dim", 1024),
                decoder_depth=get("decoder_depth", 16), decoder_heads=get("decoder_num_heads", 16),
                mlp_ratio=float(get("mlp_ratio", 4.0)), norm_eps=1e-6 if "1e-6" in norm or "1e-06" in norm else 1e-5,
                buffer_size=get("buffer_size", 64), num_classes=get("class_num", 1000),
                cond_dropout=get("label_drop_prob", 0.1), mask_ratio_min=get("mask_ratio_min", 0.7),
                attn_dropout=get("attn_dropout", 0.1), proj_dropout=get("proj_dropout", 0.1),
                head_width=get("diffloss_w", 1024), head_depth=get("diffloss_d", 3), num_sampling_steps=int(steps),
                diffusion_batch_mul=get("diffusion_batch_mul", 4))


_WEIGHT_FILES = ("weights.safetensors", "model.safetensors")


def official_matches(config: dict, folder: Path) -> bool:
    """True for a folder whose ``config.json`` names LTH14/mar's ``models.mar.MAR`` and holds safetensors weights."""
    is_mar = config.get("cls") == "models.mar.MAR" or "LTH14/mar" in str(config.get("repo", ""))
    return is_mar and find_weight_file(folder, _WEIGHT_FILES) is not None


def load_official(folder: str | Path) -> MARGenerator:
    """Build a :class:`MARGenerator` from a folder with ``config.json`` (``constructor_args`` of ``MAR``) and
    ``weights.safetensors`` / ``model.safetensors`` holding ``MAR.state_dict()`` with the official names.

    The Dropbox ``checkpoint-last.pth`` files: ``torch.load`` them, take ``["model_ema"]`` (what the official
    demo samples with), and load ``convert_mar_state_dict(...)`` into ``create_generator("mar_b" | "mar_l" |
    "mar_h")``.
    """
    config = read_json(Path(folder) / "config.json")  # required: it holds the constructor arguments
    _, state, path = read_release(folder, _WEIGHT_FILES)
    model = MARGenerator(**mar_kwargs_from_official(config.get("constructor_args", {})))
    load_state_dict_strict(model, convert_mar_state_dict(state), str(path))
    return model.eval()
