"""FlexTok: a 1D tokenizer of flexible length, decoded by a rectified-flow transformer.

Paper: Bachmann, Allardice, Mizrahi et al., "FlexTok: Resampling Images into 1D Token Sequences of Flexible Length",
ICML 2025, arXiv 2502.13967.  Reference code (facts only: shapes, key names, hyper-parameters):
github.com/apple/ml-flextok at 87d00cc (``flextok/model/*``, ``flextok/regularizers/quantize_fsq.py``,
``flextok/flow_matching/*``, ``flextok/vae_wrapper.py``).

Architecture (all images of a batch share one layout, so vistok runs them as an ordinary batch instead of the
official packed sequence; the per-image attention masks are the same):

* **VAE** (pluggable): a frozen diffusers ``AutoencoderKL`` (official: SD-style f8, 16 latent channels) whose
  posterior mode, times ``vae_scale``, is the signal the tokenizer works on.  ``vae=None`` works on pixel patches
  directly (pixels mapped to [-1, 1]), which suits tiny CPU models.
* **Encoder**: 2x2 patches of the latent -> Linear -> + fixed 2-D sin-cos table; ``num_registers`` learned register
  tokens are appended.  Patches attend to all patches; registers attend to all patches and causally to earlier
  registers.  Pre-norm transformer (parameter-free LayerNorm, QK-norm, attention scale ``8 / head_dim``, SwiGLU,
  no biases), then LayerNorm + Linear to ``len(levels)`` dims and :class:`~vistok.layers.FSQ` (64,000 codes for
  ``[8, 8, 8, 5, 5, 5]``).
* **Decoder** (rectified flow): codes -> Linear -> + learned 1-D position table; positions ``>= k`` are replaced
  by one learned mask token (nested dropout: ``k`` is sampled per image in training, it is the prefix length at
  inference); for classifier-free guidance all registers are replaced by a learned null token.  The noised latent
  is patchified like the encoder's input; ``[patches, registers]`` go through adaLN-zero blocks with full
  attention, where a sinusoidal time embedding (max period 256, ``t`` in [0, 1]) modulates patches and registers
  with *separate* shift/scale/gate sets; the patch outputs give the velocity ``v = noise - x0``.
* **Sampling**: Euler from ``t = 1`` (noise) to 0 in ``num_steps`` equal steps with diffusers'
  ``FlowMatchEulerDiscreteScheduler``; optional CFG or APG (adaptive projected guidance, arXiv 2410.02416).

Official checkpoints (safetensors + Hydra config, in ``config.json`` or the safetensors metadata) load through
:func:`load_official` / ``vistok.hub.load_official``.

Legend: b batch, n registers (tokens), k kept prefix, c width, d code dim (len(levels)), C latent channels,
h/w latent grid, p patch side, P patches.
"""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vistok.checkpoint import find_weight_file, load_state_dict_strict, read_json, read_state_dict, rename_state_dict
from vistok.interfaces import Configurable, TokenizerOutput, check_pixels, check_token_ids
from vistok.layers import FSQ, Attention, SwiGLU
from vistok.layers.init import route_attention
from vistok.progress import track

__all__ = ["FLEXTOK_PRESETS", "SD_VAE_CONFIG", "FlexTok", "convert_flextok_state_dict", "load_official",
           "official_matches"]

# The official VAE topology (flextok/vae_wrapper.py VAE_BASE_CFG), without the latent channel count.
SD_VAE_CONFIG = dict(in_channels=3, out_channels=3, act_fn="silu", block_out_channels=(128, 256, 512, 512),
                     layers_per_block=2, norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4,
                     up_block_types=("UpDecoderBlock2D",) * 4, sample_size=1024)


def _norm(x: Tensor) -> Tensor:
    """Parameter-free LayerNorm in fp32 (every norm in FlexTok)."""
    return F.layer_norm(x.float(), x.shape[-1:]).type_as(x)


def sincos_table(h: int, w: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """FlexTok's fixed 2-D table ``(h, w, dim)``: channels ``[sin a, cos a, sin b, cos b]`` over ``dim / 4``
    frequencies, with ``(a, b)`` = (row, column) on square grids (the official flattening, kept exactly)."""
    if dim % 4:
        raise ValueError(f"a 2-D sincos table needs a width divisible by 4, got {dim}")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    n = torch.arange(h * w)
    a, b = (n // h).float()[:, None] * omega, (n % h).float()[:, None] * omega
    return torch.cat([a.sin(), a.cos(), b.sin(), b.cos()], dim=1).reshape(h, w, dim)


def patchify(x: Tensor, p: int) -> Tensor:
    """(b, C, h, w) -> (b, P, p*p*C), raster order, channels last inside a patch (official layout)."""
    return rearrange(x, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)


def unpatchify(x: Tensor, p: int, h: int) -> Tensor:
    """Inverse of :func:`patchify`: (b, P, p*p*C) -> (b, C, h*p, w*p) with ``h`` patch rows."""
    return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=h, p=p, q=p)


# ----------------------------------------------------------------------------------------------------------------
# Transformer
# ----------------------------------------------------------------------------------------------------------------
class FlexBlock(nn.Module):
    """Pre-norm block: parameter-free LN, QK-norm attention (scale ``8 / head_dim``, no biases), SwiGLU with hidden
    ``int(8 * dim / 3)``.  With ``segments > 0`` it is adaLN-zero: ``Linear(silu(temb))`` gives, per segment of the
    sequence (patches, registers), gate/shift/scale for attention and MLP."""

    def __init__(self, dim: int, head_dim: int, segments: int = 0):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"width {dim} is not divisible by head_dim {head_dim}")
        self.attn = Attention(dim, dim // head_dim, bias=False, qk_norm=True, scale=8.0 / head_dim)
        self.mlp = SwiGLU(dim, int(2 * int(4 * dim) / 3))
        self.segments = segments
        self.modulation = nn.Linear(dim, segments * 6 * dim) if segments else None
        if segments:
            nn.init.zeros_(self.modulation.weight)
            nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, mask: Tensor | None, temb: Tensor | None = None, segment: Tensor | None = None
                ) -> Tensor:
        """x (b, l, c), mask (l, l) bool (True = attend; None = full); adaLN: temb (b, c), segment (l,) long.

        Returns (b, l, c).
        """
        if self.modulation is None:
            x = x + self.attn(_norm(x), mask=mask)
            return x + self.mlp(_norm(x))
        mod = self.modulation(F.silu(temb)).unflatten(1, (self.segments, 6, -1))[:, segment]  # b l 6 c
        gate_a, gate_m, shift_a, scale_a, shift_m, scale_m = mod.unbind(2)
        x = x + gate_a * self.attn(_norm(x) * (1 + scale_a) + shift_a, mask=mask)
        return x + gate_m * self.mlp(_norm(x) * (1 + scale_m) + shift_m)


class FlexTokEncoder(nn.Module):
    """Latent patches + registers -> pre-quantisation register codes (b, n, d)."""

    def __init__(self, channels: int, patch_size: int, pos_grid: int, width: int, depth: int, head_dim: int,
                 num_registers: int, code_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.patch_embed = nn.Linear(channels * patch_size**2, width)
        self.register_buffer("pos_embed", sincos_table(pos_grid, pos_grid, width))  # H W c (fixed, in checkpoints)
        self.registers = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_registers, width), std=0.02))
        self.blocks = nn.ModuleList(FlexBlock(width, head_dim) for _ in range(depth))
        self.to_codes = nn.Linear(width, code_dim)  # zero init (official): training starts from code 0 everywhere
        nn.init.zeros_(self.to_codes.weight)
        nn.init.zeros_(self.to_codes.bias)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and name != "to_codes":
                _xavier(m)

    def forward(self, latents: Tensor) -> Tensor:
        """latents (b, C, h, w) -> register outputs projected to codes (b, n, d)."""
        gh, gw = latents.shape[2] // self.patch_size, latents.shape[3] // self.patch_size
        x = self.patch_embed(patchify(latents, self.patch_size)) + self.pos_embed[:gh, :gw].reshape(gh * gw, -1)
        n, p = self.registers.shape[0], gh * gw
        x = torch.cat([x, self.registers.expand(len(x), -1, -1)], dim=1)  # b (P + n) c
        mask = prefix_causal_mask(p, n, x.device)
        for blk in self.blocks:
            x = blk(x, mask)
        return self.to_codes(_norm(x[:, p:]))


def prefix_causal_mask(prefix: int, n: int, device: torch.device | str = "cpu") -> Tensor:
    """(prefix + n, prefix + n) bool: every position sees the prefix (patches) and earlier positions; the prefix
    sees only itself (the official ``causal_last`` mask)."""
    idx = torch.arange(prefix + n, device=device)
    return (idx[None, :] < prefix) | (idx[None, :] <= idx[:, None]) & (idx[:, None] >= prefix)


class FlexTokDecoder(nn.Module):
    """Rectified-flow transformer: noised latent + time + register conditioning -> velocity."""

    def __init__(self, channels: int, patch_size: int, pos_grid: int, width: int, depth: int, head_dim: int,
                 num_registers: int, code_dim: int, null_token: bool = True, freq_dim: int = 256):
        super().__init__()
        self.patch_size, self.freq_dim = patch_size, freq_dim
        self.from_codes = nn.Linear(code_dim, width)
        self.register_pos = nn.Parameter(nn.init.trunc_normal_(torch.empty(num_registers, width), std=0.02))
        self.mask_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(width), std=0.02))
        self.null_token = nn.Parameter(nn.init.trunc_normal_(torch.empty(width), std=0.02)) if null_token else None
        self.patch_embed = nn.Linear(channels * patch_size**2, width)
        self.register_buffer("pos_embed", sincos_table(pos_grid, pos_grid, width))
        self.time_embed = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(FlexBlock(width, head_dim, segments=2) for _ in range(depth))
        self.out_modulation = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, channels * patch_size**2)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and "modulation" not in name and name != "out":
                _xavier(m)
        for m in (self.out, self.out_modulation):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def registers(self, codes: Tensor, keep: Tensor, null: Tensor | None = None) -> Tensor:
        """codes (b, n, d), keep (b,) prefix lengths, null (b,) bool -> register inputs (b, n, c).

        Registers at positions ``>= keep`` become the mask token; rows with ``null`` become the null token.
        """
        x = self.from_codes(codes) + self.register_pos
        dropped = torch.arange(x.shape[1], device=x.device)[None, :] >= keep[:, None]  # b n
        x = torch.where(dropped[..., None], self.mask_token.to(x.dtype), x)
        if null is not None:
            if self.null_token is None:
                raise ValueError("this FlexTok has no null condition (built with null_prob=0): decode with "
                                 "guidance_scale=1.0")
            x = torch.where(null[:, None, None], self.null_token.to(x.dtype), x)
        return x

    def time_embedding(self, t: Tensor) -> Tensor:
        """t (b,) in [0, 1] -> (b, c): [cos, sin] of ``1000 t`` over periods up to 256, then the MLP."""
        from diffusers.models.embeddings import get_timestep_embedding

        freq = get_timestep_embedding(t.float(), self.freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0,
                                      scale=1000.0, max_period=256)
        return self.time_embed(freq.to(self.time_embed[0].weight.dtype))

    def forward(self, noised: Tensor, t: Tensor, registers: Tensor, return_layer: int | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """noised (b, C, h, w), t (b,), registers (b, n, c) -> (velocity (b, C, h, w), patch features (b, P, c) after
        block ``return_layer`` or None)."""
        p = self.patch_size
        gh, gw = noised.shape[2] // p, noised.shape[3] // p
        x = self.patch_embed(patchify(noised, p)) + self.pos_embed[:gh, :gw].reshape(gh * gw, -1)
        n_patch = x.shape[1]
        x = torch.cat([x, registers.to(x.dtype)], dim=1)  # b (P + n) c, full attention
        segment = (torch.arange(x.shape[1], device=x.device) >= n_patch).long()
        temb = self.time_embedding(t)
        hidden = None
        for i, blk in enumerate(self.blocks):
            x = blk(x, None, temb, segment)  # full attention within the image
            if i == return_layer:
                hidden = x[:, :n_patch]
        shift, scale = self.out_modulation(F.silu(temb))[:, None].chunk(2, dim=-1)
        out = self.out(_norm(x[:, :n_patch]) * (1 + scale) + shift)
        return unpatchify(out, p, gh), hidden


def _xavier(m: nn.Linear) -> None:
    nn.init.xavier_uniform_(m.weight)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def _apg(cond: Tensor, uncond: Tensor, scale: float, momentum: Tensor | None, beta: float = -0.5,
         norm_threshold: float = 2.5) -> tuple[Tensor, Tensor]:
    """Adaptive projected guidance (eta 0): momentum on ``cond - uncond``, norm clipped per image, its component
    orthogonal to ``cond`` (in float64) added with weight ``scale - 1``.  Returns (guided, new momentum)."""
    diff = cond - uncond
    if momentum is not None:
        diff = diff + beta * momentum
    momentum = diff
    norm = diff.norm(p=2, dim=(1, 2, 3), keepdim=True)
    diff = diff * torch.minimum(torch.ones_like(norm), norm_threshold / norm)
    unit = F.normalize(cond.double().flatten(1), dim=1).view_as(cond)
    d64 = diff.double()
    orthogonal = (d64 - (d64 * unit).sum(dim=(1, 2, 3), keepdim=True) * unit).to(cond.dtype)
    return cond + (scale - 1) * orthogonal, momentum


# ----------------------------------------------------------------------------------------------------------------
# FlexTok
# ----------------------------------------------------------------------------------------------------------------
class FlexTok(nn.Module, Configurable):
    """FlexTok tokenizer: pixels in [0, 1] -> ``(B, N)`` FSQ ids; any prefix ``(B, K)``, 1 <= K <= N, decodes.

    Args:
        image_size: input side in pixels (square images).
        vae: the image VAE: None = work on pixels (mapped to [-1, 1]) directly; a dict of diffusers
            ``AutoencoderKL`` config kwargs (weights then come from this model's checkpoint, as in the official
            release; ``SD_VAE_CONFIG`` is the official topology); or a local diffusers ``AutoencoderKL`` folder.
            The VAE is frozen (no gradient, always eval mode).
        vae_scale: latents are the VAE's posterior mode times this factor (the VAE's own ``scaling_factor``
            when None).
        latent_channels: expected channels of the latent the tokenizer sees (None: whatever the VAE gives; 3 for
            pixels); a VAE that disagrees is an error.
        patch_size: patch side on the latent grid (official 2).
        width, depth, head_dim: encoder size (heads = width / head_dim).
        decoder_width, decoder_depth: decoder size (None = same as the encoder).
        num_registers: N, tokens per image.
        levels: FSQ levels per code channel.
        pos_grid: side of the fixed position tables (None = the patch grid); larger tables are cropped.
        nested_dropout: how training samples the kept prefix ``k`` per image: ``"pow2"`` (1, 2, 4, ..., N; N must be
            a power of two), ``"uniform"`` (1..N), ``"uniform_pow2"`` (1..N rounded up to a power of two) or
            ``"none"``.
        null_prob: training probability of replacing an image's registers by the null token (CFG dropout);
            0 builds no null token and decoding then refuses guidance.
        num_steps, guidance_scale: decoding defaults (override per call).
        prediction: what the decoder's output is: ``"v"`` = the velocity ``noise - x0`` (official), or ``"x"`` = the
            clean latent ``x0``, turned into the velocity ``(x_t - x0_hat) / max(t, t_min)`` (JiT, Li & He, arXiv
            2511.13720).  The loss is the velocity MSE either way.  ``"x"`` is what works when a patch has more
            values than the width (e.g. 8x8 pixel patches = 192 values at width 128), where a velocity target
            carries full-rank noise through a narrower network.
        t_min: lower clamp of ``t`` in the ``"x"`` conversion (JiT: 0.05).
        loss_target: ``"v"`` = MSE on the velocity (official), ``"x"`` = MSE on the clean latent ``x0`` (the
            velocity loss weighted by ``t^2``: the noisy end of the flow, where only the registers tell images apart,
            keeps its share of the gradient).
        time_shift: SD3's shift ``s`` of the training times and the sampling steps towards noise (official 1 = none).
            Small, redundant images (flat shapes at 64x64 pixels) stay recognisable until ``t`` is close to 1, so
            without a shift almost no training sample needs the registers.
        spatial_init: start from routed attention (``vistok.layers.init.route_attention``, vistok's tiny-model
            init, as TiTok's ``spatial_init``): register 0 attends to every patch (a global summary, what a 1-token
            decode needs), registers 1..N-1 each to their own strip of patches in raster order, and in the decoder
            each patch to the register that owns it.  The position tables are overwritten by routing codes (so they
            are no longer sin-cos); an init only, the modules are unchanged.  From-scratch tiny runs otherwise sit
            on a flat-background plateau (docs/flextok.md).
        ae_prob: training probability, per image, of ``t = 1`` exactly (vistok option, official 0): the decoder then
            sees pure noise and its x0 estimate is a plain autoencoder reconstruction from the registers, which
            gives the encoder a direct gradient (the flow's near-noise end is otherwise a few % of the samples).
        first_token_prob: training probability, per image, of keeping only the first register (k = 1) before
            ``nested_dropout`` samples the others (vistok option, official 0): puts more weight on what one token
            alone must carry (the dominant colour of a scene).
    """

    kind = "discrete"

    def __init__(self, image_size: int = 256, vae: dict | str | None = None, vae_scale: float | None = None,
                 latent_channels: int | None = None, patch_size: int = 2, width: int = 768, depth: int = 12,
                 head_dim: int = 64, decoder_width: int | None = None, decoder_depth: int | None = None,
                 num_registers: int = 256, levels: tuple[int, ...] = (8, 8, 8, 5, 5, 5), pos_grid: int | None = None,
                 nested_dropout: Literal["pow2", "uniform", "uniform_pow2", "none"] = "pow2", null_prob: float = 0.2,
                 num_steps: int = 25, guidance_scale: float = 1.0, prediction: Literal["v", "x"] = "v",
                 t_min: float = 0.05, loss_target: Literal["v", "x"] = "v",
                 time_shift: float = 1.0, spatial_init: bool = False, ae_prob: float = 0.0,
                 first_token_prob: float = 0.0):
        super().__init__()
        if prediction not in ("v", "x"):
            raise ValueError(f"prediction must be 'v' (velocity) or 'x' (clean latent), got {prediction!r}")
        if not 0 < t_min < 1:
            raise ValueError(f"t_min must be in (0, 1), got {t_min}")
        if loss_target not in ("v", "x"):
            raise ValueError(f"loss_target must be 'v' (velocity MSE) or 'x' (clean-latent MSE), got {loss_target!r}")
        if not time_shift > 0:
            raise ValueError(f"time_shift must be > 0, got {time_shift}")
        if not 0 <= ae_prob <= 1 or not 0 <= first_token_prob <= 1:
            raise ValueError(f"ae_prob and first_token_prob must be in [0, 1], got {ae_prob}, {first_token_prob}")
        self.ae_prob, self.first_token_prob = ae_prob, first_token_prob
        self.prediction, self.t_min, self.loss_target, self.time_shift = prediction, t_min, loss_target, time_shift
        if nested_dropout not in ("pow2", "uniform", "uniform_pow2", "none"):
            raise ValueError(f"nested_dropout must be 'pow2', 'uniform', 'uniform_pow2' or 'none', got "
                             f"{nested_dropout!r}")
        if nested_dropout in ("pow2", "uniform_pow2") and num_registers & (num_registers - 1):
            raise ValueError(f"nested_dropout='pow2' needs a power-of-two num_registers, got {num_registers}; use "
                             "nested_dropout='uniform'")
        if not 0 <= null_prob < 1:
            raise ValueError(f"null_prob must be in [0, 1), got {null_prob}")
        self.vae, factor, channels, default_scale = _build_vae(vae)
        if latent_channels is not None and latent_channels != channels:
            source = "pixels (vae=None)" if vae is None else "the VAE"
            raise ValueError(f"latent_channels={latent_channels} but {source} gives {channels}-channel latents: "
                             f"use a VAE with latent_channels={latent_channels} or set latent_channels={channels}")
        if image_size % (factor * patch_size):
            raise ValueError(f"image_size {image_size} must be a multiple of the VAE factor x patch_size = "
                             f"{factor} x {patch_size}")
        self.image_size, self.patch_size, self.latent_channels = image_size, patch_size, channels
        self.latent_size = image_size // factor
        grid = self.latent_size // patch_size
        pos_grid = pos_grid or grid
        if pos_grid < grid:
            raise ValueError(f"pos_grid {pos_grid} is smaller than the patch grid {grid}")
        self.vae_scale = float(vae_scale if vae_scale is not None else default_scale)
        self.num_tokens, self.nested_dropout, self.null_prob = num_registers, nested_dropout, null_prob
        self.num_steps, self.guidance_scale = num_steps, guidance_scale
        self.quantizer = FSQ(levels)
        self.codebook_size, self.token_dim = self.quantizer.codebook_size, self.quantizer.dim
        self.encoder = FlexTokEncoder(channels, patch_size, pos_grid, width, depth, head_dim, num_registers,
                                      self.token_dim)
        self.decoder = FlexTokDecoder(channels, patch_size, pos_grid, decoder_width or width, decoder_depth or depth,
                                      head_dim, num_registers, self.token_dim, null_token=null_prob > 0)
        if spatial_init:
            if pos_grid != grid:
                raise ValueError(f"spatial_init needs pos_grid equal to the patch grid {grid}, got {pos_grid}")
            self.initialize_spatial_routing()

    @torch.no_grad()
    def initialize_spatial_routing(self) -> None:
        """Routed attention at init (see ``spatial_init``): register 0 global, patches dealt in raster order to
        registers 1..N-1; encoder registers ask, decoder patches ask."""
        n = self.num_tokens
        for part in (self.encoder, self.decoder):
            table = part.pos_embed.view(-1, part.pos_embed.shape[-1])
            owner = (1 + torch.arange(len(table)) * (n - 1) // len(table) if n > 1
                     else torch.zeros(len(table), dtype=torch.long))  # register 0 global unless it is the only one
            groups = part.registers if part is self.encoder else part.register_pos
            route_attention([blk.attn for blk in part.blocks], table, groups.data, owner,
                            groups_ask=part is self.encoder)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()  # frozen
        return self

    # -- VAE ---------------------------------------------------------------------------------------------------
    def to_latents(self, pixels: Tensor) -> Tensor:
        """pixels (B, 3, H, W) in [0, 1] -> latents (B, C, h, w) (VAE posterior mode x ``vae_scale``)."""
        x = pixels * 2 - 1
        if self.vae is None:
            return x
        with torch.no_grad():
            return self.vae.encode(x).latent_dist.mode() * self.vae_scale

    def from_latents(self, latents: Tensor) -> Tensor:
        """latents (B, C, h, w) -> pixels in [0, 1] (unclamped)."""
        if self.vae is not None:
            latents = self.vae.decode(latents / self.vae_scale).sample
        return (latents + 1) / 2

    # -- public API ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, pixels: Tensor) -> Tensor:
        """pixels (B, 3, H, W) in [0, 1] -> token ids (B, N) long, coarse to fine."""
        check_pixels(pixels, video=False, size=self.image_size)
        return self.quantizer(self.encoder(self.to_latents(pixels)))[1]

    @torch.no_grad()
    def decode(self, tokens: Tensor, *, num_steps: int | None = None, guidance_scale: float | None = None,
               apg: bool = False, generator: torch.Generator | None = None, noise: Tensor | None = None,
               clamp: bool = True, progress: bool = False) -> Tensor:
        """token ids (B, K), 1 <= K <= N -> pixels (B, 3, H, W) in [0, 1] (clamped unless ``clamp=False``).

        The missing tail is the learned mask token, so short prefixes give coarse images.  Sampling is an Euler
        flow from noise (``noise`` (B, C, h, w), or drawn per image from ``generator``) over ``num_steps`` steps;
        ``guidance_scale != 1`` adds classifier-free guidance against the null condition (APG with ``apg=True``).
        """
        latents = self.decode_latents(tokens, num_steps=num_steps, guidance_scale=guidance_scale, apg=apg,
                                      generator=generator, noise=noise, progress=progress)
        out = self.from_latents(latents)
        return out.clamp(0, 1) if clamp else out

    @torch.no_grad()
    def decode_latents(self, tokens: Tensor, *, num_steps: int | None = None, guidance_scale: float | None = None,
                       apg: bool = False, generator: torch.Generator | None = None, noise: Tensor | None = None,
                       progress: bool = False) -> Tensor:
        """As :meth:`decode`, but returns the denoised latents (B, C, h, w) before the VAE decoder."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        check_token_ids(tokens, self.codebook_size, self.num_tokens, allow_prefix=True)
        steps = self.num_steps if num_steps is None else num_steps
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        if steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {steps}")
        b, k = tokens.shape
        codes = self.quantizer.ids_to_codes(F.pad(tokens, (0, self.num_tokens - k)))
        keep = torch.full((b,), k, device=tokens.device)
        cond = self.decoder.registers(codes, keep)
        guided = scale != 1.0
        uncond = self.decoder.registers(codes, keep, torch.ones(b, dtype=torch.bool, device=tokens.device)) \
            if guided else None
        x = self._initial_noise(b, tokens.device, generator, noise)
        sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
        sched.set_timesteps(sigmas=[self.shift_time(1.0 - i / steps) for i in range(steps)], device=tokens.device)
        momentum = None
        for i, t in enumerate(track(sched.timesteps, progress, desc="flow steps")):
            sigma = sched.sigmas[i].expand(b)
            v = self.velocity(x, sigma, cond)[0]
            if guided:
                v_null = self.velocity(x, sigma, uncond)[0]
                if apg:
                    v, momentum = _apg(v, v_null, scale, momentum)
                else:
                    v = v_null + scale * (v - v_null)
            # the scheduler casts its result to the velocity's dtype: keep the latent in fp32 under bf16 autocast
            x = sched.step(v.float(), t, x.float()).prev_sample
        return x

    def forward(self, pixels: Tensor, *, return_layer: int | None = None, nested: bool = True) -> TokenizerOutput:
        """Training pass: pixels (B, 3, H, W) -> flow-matching loss on the latents.

        Per image: a kept prefix ``k`` (nested dropout), the null condition with probability ``null_prob``, a time
        ``t = sigmoid(N(0, 1))`` (logit-normal), ``x_t = t noise + (1 - t) x0``; the loss is the MSE between the
        predicted and the true velocity ``noise - x0``.  ``reconstruction`` is the one-step estimate
        ``x_t - t v`` decoded to pixels (no gradient); ``extras`` hold ``keep`` (b,), ``t`` (b,), the quantized
        register codes ``codes`` (b, N, d) with their straight-through gradient and, with ``return_layer``, the
        decoder's patch features ``hidden`` (b, P, c) after that block (for REPA).
        ``nested=False`` keeps every register (no nested dropout, e.g. for a warm-up).
        """
        check_pixels(pixels, video=False, size=self.image_size)
        x0 = self.to_latents(pixels)
        codes, ids = self.quantizer(self.encoder(x0))
        b, dev = len(pixels), pixels.device
        keep = self._sample_keep(b, dev) if nested else torch.full((b,), self.num_tokens, device=dev)
        null = torch.rand(b, device=dev) < self.null_prob if self.decoder.null_token is not None else None
        registers = self.decoder.registers(codes, keep, null)
        t = self.shift_time(torch.sigmoid(torch.randn(b, device=dev)))
        if self.ae_prob:
            t = torch.where(torch.rand(b, device=dev) < self.ae_prob, torch.ones_like(t), t)
        noise = torch.randn_like(x0)
        tt = t[:, None, None, None]
        x_t = tt * noise + (1 - tt) * x0
        out, hidden = self.decoder(x_t, t, registers, return_layer)
        if self.prediction == "x":
            x0_hat, v = out, self._x0_to_velocity(x_t, out, tt)
        else:
            x0_hat, v = x_t - tt * out, out
        if self.loss_target == "v":
            loss = F.mse_loss(v.float(), (noise - x0).float())
        else:
            loss = F.mse_loss(x0_hat.float(), x0.float())
        with torch.no_grad():
            recon = self.from_latents(x0_hat.detach())
        extras = {"keep": keep, "t": t, "codes": codes}
        if hidden is not None:
            extras["hidden"] = hidden
        return TokenizerOutput(recon, ids, loss, extras)

    def shift_time(self, t):
        """SD3's resolution shift ``s t / (1 + (s - 1) t)`` with ``s = time_shift`` (identity at 1): moves training
        times and sampling steps towards the noise end.  Works on floats and tensors."""
        s = self.time_shift
        return t if s == 1.0 else s * t / (1 + (s - 1) * t)

    def velocity(self, x_t: Tensor, t: Tensor, registers: Tensor, return_layer: int | None = None
                 ) -> tuple[Tensor, Tensor | None]:
        """The decoder's velocity estimate: x_t (b, C, h, w), t (b,), registers (b, n, c) -> (v (b, C, h, w), patch
        features or None).  With ``prediction="x"`` the decoder predicts ``x0`` and ``v = (x_t - x0) / max(t, t_min)``.
        """
        out, hidden = self.decoder(x_t, t, registers, return_layer)
        if self.prediction == "x":
            out = self._x0_to_velocity(x_t, out, t.view(-1, 1, 1, 1).to(out.dtype))
        return out, hidden

    def _x0_to_velocity(self, x_t: Tensor, x0: Tensor, t: Tensor) -> Tensor:
        """JiT's conversion of an x0 estimate into the velocity, ``(x_t - x0) / max(t, t_min)``; ``t`` broadcasts."""
        return (x_t - x0) / t.clamp(min=self.t_min)

    def reconstruct(self, pixels: Tensor, prefix_len: int | None = None, **decode_kwargs) -> Tensor:
        """encode -> (prefix) -> decode, in [0, 1]."""
        tokens = self.encode(pixels)
        return self.decode(tokens if prefix_len is None else tokens[:, :prefix_len], **decode_kwargs)

    # -- helpers -----------------------------------------------------------------------------------------------
    def _sample_keep(self, b: int, device: torch.device) -> Tensor:
        keep = self._sample_nested(b, device)
        if self.first_token_prob:
            keep = torch.where(torch.rand(b, device=device) < self.first_token_prob, torch.ones_like(keep), keep)
        return keep

    def _sample_nested(self, b: int, device: torch.device) -> Tensor:
        n = self.num_tokens
        if self.nested_dropout == "none":
            return torch.full((b,), n, device=device)
        if self.nested_dropout != "pow2":
            k = torch.randint(1, n + 1, (b,), device=device)
            return k if self.nested_dropout == "uniform" else 2 ** torch.ceil(torch.log2(k.float())).long()
        choices = 2 ** torch.arange(int(math.log2(n)) + 1, device=device)
        return choices[torch.randint(len(choices), (b,), device=device)]

    def _initial_noise(self, b: int, device: torch.device, generator: torch.Generator | None,
                       noise: Tensor | None) -> Tensor:
        shape = (self.latent_channels, self.latent_size, self.latent_size)
        if noise is not None:
            if tuple(noise.shape) != (b, *shape):
                raise ValueError(f"noise must have shape {(b, *shape)}, got {tuple(noise.shape)}")
            return noise.to(device=device, dtype=torch.float32)
        gen_device = generator.device if generator is not None else device
        # one draw per image, in batch order (as the official pipeline)
        return torch.cat([torch.randn((1, *shape), generator=generator, device=gen_device) for _ in range(b)]).to(
            device)


def _build_vae(vae: dict | str | None) -> tuple[nn.Module | None, int, int, float]:
    """(frozen AutoencoderKL or None, downsampling factor, latent channels, its scaling factor)."""
    if vae is None:
        return None, 1, 3, 1.0
    from diffusers import AutoencoderKL

    if isinstance(vae, (str, Path)):
        if not Path(vae).is_dir():
            raise FileNotFoundError(f"no VAE folder at {vae}: give a local diffusers AutoencoderKL folder "
                                    "(config.json + diffusion_pytorch_model.safetensors), a config dict, or None")
        model = AutoencoderKL.from_pretrained(str(vae), local_files_only=True)
    elif isinstance(vae, dict):
        model = AutoencoderKL(**{k: tuple(v) if isinstance(v, list) else v for k, v in vae.items()})
    else:
        raise TypeError(f"vae must be None, a config dict or a folder path, got {type(vae).__name__}")
    cfg = model.config
    model.requires_grad_(False).eval()
    return model, 2 ** (len(cfg.block_out_channels) - 1), cfg.latent_channels, float(cfg.scaling_factor)


# ----------------------------------------------------------------------------------------------------------------
# Official checkpoints (apple/ml-flextok: safetensors with a Hydra config in config.json or the metadata)
# ----------------------------------------------------------------------------------------------------------------
OFFICIAL_WEIGHT_FILES = ("model.safetensors", "weights.safetensors")


def _modules(tree: dict) -> dict[str, list[tuple[str, dict]]]:
    """Official ``module_dict``: class name (last part of ``_target_``) -> [(module name, its config)], in order."""
    out = {}
    for name, cfg in tree["module_dict"].items():
        cls = cfg["_target_"].rsplit(".", 1)[-1]
        out.setdefault(cls, []).append((name, cfg))
    return out


def _config_tree(config: dict) -> dict | None:
    """The Hydra tree (``vae``, ``encoder``, ``decoder``, ``regularizer``) of an official config, else None."""
    for tree in (config, config.get("config")):
        if isinstance(tree, dict) and all(isinstance(tree.get(k), dict) for k in ("encoder", "decoder", "regularizer")):
            if "module_dict" in tree["encoder"] and "FSQ" in tree["regularizer"].get("_target_", ""):
                return tree
    return None


def flextok_kwargs_from_official_config(config: dict) -> dict:
    """:class:`FlexTok` constructor kwargs from an official config (the Hydra tree, possibly nested under
    ``"config"``; a top-level ``vae_base_cfg_override`` or ``image_size`` is honoured)."""
    tree = _config_tree(config)
    if tree is None:
        raise ValueError("not an official FlexTok config (needs encoder/decoder module_dicts and an FSQ regularizer)")
    enc, dec = _modules(tree["encoder"]), _modules(tree["decoder"])

    def one(mods: dict, cls: str, side: str) -> dict:
        if len(mods.get(cls, [])) != 1:
            raise ValueError(f"expected one {cls} in the official {side}, found {len(mods.get(cls, []))}")
        return mods[cls][0][1]

    etr, dtr = one(enc, "FlexTransformer", "encoder"), one(dec, "FlexTransformer", "decoder")
    epatch, dpatch = one(enc, "PatchEmbedder", "encoder"), one(dec, "PatchEmbedder", "decoder")
    packer = one(enc, "BlockWiseSequencePacker", "encoder")
    if packer.get("mask_mode") != "causal_last" or one(dec, "BlockWiseSequencePacker", "decoder").get(
            "mask_mode", "full") != "full":
        raise ValueError("vistok's FlexTok has a causal_last encoder mask and a full decoder mask")
    if dtr.get("adaLN_expansion", 1) != 2 or etr["head_dim"] != dtr["head_dim"]:
        raise ValueError("vistok's FlexTok needs adaLN_expansion 2 and one head_dim for encoder and decoder")
    for tr in (etr, dtr):
        if tr.get("mlp_ratio", 4.0) != 4.0 or not tr.get("gated_mlp", True) or not tr.get("qk_norm", True):
            raise ValueError("vistok's FlexTok blocks use SwiGLU with mlp_ratio 4 and QK-norm (the official default)")
    patch = epatch["patch_sizes"]
    if len(set(patch)) != 1 or dpatch["patch_sizes"] != patch:
        raise ValueError(f"vistok's FlexTok needs one square patch size, got {patch} / {dpatch['patch_sizes']}")
    pos = [cfg for _, cfg in enc.get("PositionalEmbeddingAdder", []) + dec.get("PositionalEmbeddingAdder", [])]
    grids = {tuple(c["max_sizes"]) for c in pos if c.get("posemb_type") == "sincos"}
    if len(grids) != 1 or len(next(iter(grids))) != 2 or len(set(next(iter(grids)))) != 1:
        raise ValueError("vistok's FlexTok expects square sincos patch tables of one size in encoder and decoder")
    if any(c.get("posemb_scaling", "absolute") != "absolute" for c in pos):
        raise ValueError("vistok's FlexTok crops its position tables (posemb_scaling='absolute')")
    regs = one(enc, "Registers1D", "encoder")
    time = one(dec, "TimestepEmbedder", "decoder")
    if float(time.get("max_timestep", 1000.0)) != 1.0:
        raise ValueError("vistok's FlexTok embeds t in [0, 1] (max_timestep=1.0)")
    null = dec.get("LearnedNullCond", [])
    mode = one(dec, "MaskedNestedDropout", "decoder").get("size_sampling_mode", "uniform")
    vae_cfg = tree["vae"]
    base = config.get("vae_base_cfg_override") or SD_VAE_CONFIG
    vae = {k: v for k, v in base.items() if not k.startswith("_") and k not in ("latent_channels", "scaling_factor")}
    if vae_cfg.get("hf_hub_path"):
        raise ValueError(f"the config builds its VAE from the hub ({vae_cfg['hf_hub_path']}); vistok reads the VAE "
                         "from the checkpoint's vae.vae.* weights only: set hf_hub_path to null")
    return dict(image_size=int(config.get("image_size", 256)),
                vae={**vae, "latent_channels": vae_cfg.get("latent_channels", 16)},
                vae_scale=vae_cfg.get("scaling_factor"), patch_size=patch[0], width=etr["dim"],
                depth=etr["depth"], head_dim=etr["head_dim"], decoder_width=dtr["dim"], decoder_depth=dtr["depth"],
                num_registers=regs["n_max"], levels=tuple(tree["regularizer"]["levels"]),
                pos_grid=next(iter(grids))[0], nested_dropout=mode,
                null_prob=float(null[0][1].get("dropout_prob", 0.0)) if null else 0.0)


def convert_flextok_state_dict(official: dict[str, Tensor], config: dict) -> dict[str, Tensor]:
    """Map an official FlexTok state dict to vistok's :class:`FlexTok` names and layouts.

    Module names are read from ``config`` (by class), not hard-coded: the per-block ``wq/wk/wv`` are packed into
    one ``qkv``, ``fc1/fc3/fc2`` become SwiGLU's ``w1/w3/w2``, position tables move to channels-last.

    Raises:
        ValueError: listing every official key with no vistok counterpart.
    """
    tree = _config_tree(config)
    if tree is None:
        raise ValueError("not an official FlexTok config (needs encoder/decoder module_dicts and an FSQ regularizer)")
    names: dict[str, str] = {}
    for side in ("encoder", "decoder"):
        for cls, entries in _modules(tree[side]).items():
            for name, cfg in entries:
                kind = cls
                if cls == "PositionalEmbeddingAdder":
                    kind = "SinCos" if cfg.get("posemb_type") == "sincos" else "Learned"
                names[f"{side}.{kind}"] = f"{side}\\.module_dict\\.{re.escape(name)}"
    state = dict(official)
    for key in [k for k in state if k.endswith(".attn.wq.weight")]:  # pack q, k, v rows
        stem = key[: -len("wq.weight")]
        state[stem + "qkv.weight"] = torch.cat([state.pop(stem + s) for s in ("wq.weight", "wk.weight", "wv.weight")])
    n = names.get
    rules = [(r"vae\.vae\.(.+)", r"vae.\1")]
    for side in ("encoder", "decoder"):
        blocks = n(f"{side}.FlexTransformer") + r"\.blocks\.(\d+)\."
        rules += [(blocks + r"attn\.(qkv|proj)\.weight", side + r".blocks.\1.attn.\2.weight"),
                  (blocks + r"mlp\.fc1\.weight", side + r".blocks.\1.mlp.w1.weight"),
                  (blocks + r"mlp\.fc2\.weight", side + r".blocks.\1.mlp.w2.weight"),
                  (blocks + r"mlp\.fc3\.weight", side + r".blocks.\1.mlp.w3.weight"),
                  (blocks + r"adaLN_modulation\.1\.(weight|bias)", side + r".blocks.\1.modulation.\2"),
                  (n(f"{side}.PatchEmbedder") + r"\.patch_proj\.(weight|bias)", side + r".patch_embed.\1"),
                  (n(f"{side}.SinCos") + r"\.posembs", side + ".pos_embed")]
    rules += [(n("encoder.Registers1D") + r"\.registers", "encoder.registers"),
              (n("encoder.LinearHead") + r"\.proj\.(weight|bias)", r"encoder.to_codes.\1"),
              (n("decoder.LinearLayer") + r"\.proj\.(weight|bias)", r"decoder.from_codes.\1"),
              (n("decoder.Learned") + r"\.posembs", "decoder.register_pos"),
              (n("decoder.MaskedNestedDropout") + r"\.dropout_mask_token", "decoder.mask_token"),
              (n("decoder.TimestepEmbedder") + r"\.mlp\.([02])\.(weight|bias)", r"decoder.time_embed.\1.\2"),
              (n("decoder.ToPatchesLinearHead") + r"\.adaLN_modulation\.1\.(weight|bias)",
               r"decoder.out_modulation.\1"),
              (n("decoder.ToPatchesLinearHead") + r"\.proj\.(weight|bias)", r"decoder.out.\1")]
    if n("decoder.LearnedNullCond"):
        rules.append((n("decoder.LearnedNullCond") + r"\.nullcond", "decoder.null_token"))

    def layout(new: str, value: Tensor) -> Tensor:
        if new.endswith("pos_embed"):
            return value[0].permute(1, 2, 0)  # (1, c, H, W) -> (H, W, c)
        if new == "decoder.register_pos":
            return value[0, 0].t()  # (1, 1, c, n) -> (n, c)
        return value

    return rename_state_dict(state, rules, transform=layout,
                             unknown_error="convert_flextok_state_dict: official keys with no vistok counterpart")


def _weight_file(folder: Path) -> Path | None:
    return find_weight_file(folder, OFFICIAL_WEIGHT_FILES)


def _metadata_config(path: Path) -> dict:
    """The config stored in an official safetensors header (``__metadata__`` values are Python literals)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    out = {}
    for k, v in meta.items():
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def _official_config(folder: Path) -> dict:
    config = read_json(folder / "config.json", missing_ok=True)
    if _config_tree(config) is None and (path := _weight_file(folder)) is not None:
        config = _metadata_config(path)
    return config


def official_matches(config: dict, folder: Path) -> bool:
    """True for an official FlexTok folder (Hydra tree in config.json or the safetensors metadata)."""
    folder = Path(folder)
    if _weight_file(folder) is None:
        return False
    return _config_tree(config) is not None or _config_tree(_official_config(folder)) is not None


def load_official(folder: str | Path) -> FlexTok:
    """Build a :class:`FlexTok` from an official release folder (``config.json`` with the Hydra tree, or a
    safetensors file whose metadata holds it) and load every weight, VAE included (eval mode)."""
    folder = Path(folder)
    path = _weight_file(folder)
    if path is None:
        raise FileNotFoundError(f"{folder} holds none of {OFFICIAL_WEIGHT_FILES}")
    config = _official_config(folder)
    model = FlexTok(**flextok_kwargs_from_official_config(config))
    load_state_dict_strict(model, convert_flextok_state_dict(read_state_dict(path), config), str(path))
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# Presets (name -> constructor kwargs); registered in vistok.registry
# ----------------------------------------------------------------------------------------------------------------
def _official(enc_depth: int, dec_depth: int) -> dict:
    # widths are 64 x depth, head_dim 64; SD-style c16 VAE; 256 registers (shared/reference/tokenizers.md §3.1)
    return dict(image_size=256, vae={**SD_VAE_CONFIG, "latent_channels": 16}, patch_size=2, width=64 * enc_depth,
                depth=enc_depth, head_dim=64, decoder_width=64 * dec_depth, decoder_depth=dec_depth,
                num_registers=256, levels=(8, 8, 8, 5, 5, 5), nested_dropout="pow2", null_prob=0.2)


_TINY_VAE = dict(block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)

FLEXTOK_PRESETS: dict[str, dict] = {
    # Official sizes (hub: EPFL-VILAB/flextok_<name>_in1k); the VAE weights come with the checkpoint.
    "flextok_d12_d12": _official(12, 12),
    "flextok_d18_d18": _official(18, 18),
    "flextok_d18_d28": _official(18, 28),
    # Tiny CPU model on 64x64 pixel patches (no VAE): 64 patches of 8x8, 32 tokens, 1,000 codes, routed attention at
    # init, x-prediction with an x0 loss, time shift 3, a quarter of the images at t = 1 (deviations from the official
    # recipe: docs/flextok.md, "Tiny preset").
    "flextok_tiny": dict(image_size=64, patch_size=8, width=128, depth=4, head_dim=32, num_registers=32,
                         levels=(8, 5, 5, 5), nested_dropout="pow2", null_prob=0.1, num_steps=10, prediction="x",
                         loss_target="x", time_shift=3.0, spatial_init=True, ae_prob=0.25),
    # Tiny model behind a tiny random AutoencoderKL (f2, 4 channels): for tests of the VAE path.
    "flextok_tiny_vae": dict(image_size=32, vae=_TINY_VAE, patch_size=2, width=64, depth=2, head_dim=32,
                             num_registers=16, nested_dropout="pow2", null_prob=0.1, num_steps=4),
}
