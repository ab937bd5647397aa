"""TiTok: a 1D image tokenizer (two-stage VQ, single-stage VQ and VAE variants) and One-D-Piece's tail-token drop.

Papers:
    Yu et al., "An Image is Worth 32 Tokens for Reconstruction and Generation", NeurIPS 2024, arXiv 2406.07550.
    Miwa et al., "One-D-Piece: Image Tokenizer Meets Quality-Controllable Compression", arXiv 2501.10064.
Reference code (facts only: shapes, key names, hyper-parameters): github.com/bytedance/1d-tokenizer at 942a96f
(``modeling/titok.py``, ``modeling/modules/blocks.py``, ``modeling/quantizer/quantizer.py``,
``configs/infer/TiTok/*.yaml``) and github.com/turingmotors/One-D-Piece at 473665d.

Architecture: a ViT encoder reads ``[CLS, P patches, N learned latent tokens]`` and the last N outputs are
projected to ``token_size`` dims, then either vector-quantised (``codebook_size`` codes, optionally on the unit
sphere) or, with ``codebook_size=None``, read as a diagonal Gaussian (TiTok's VAE variant: continuous tokens).
The ViT decoder reads ``[CLS, P mask tokens, K <= N projected codes]``; each mask-token output goes through a
pixel head:

* direct (single-stage models): linear to the cell's ``ph*pw*3`` pixels, then an optional 3x3 conv;
* MaskGIT-VQGAN (two-stage models, ``pixel_codebook_size`` set): linear to 2x width, tanh, linear to logits over a
  frozen VQGAN codebook; the softmax mixes the codes into a ``(pixel_code_dim, h, w)`` map that
  :class:`~vistok.layers.vqgan.VQGANDecoder` turns into pixels.

With ``tail_drop=True`` (One-D-Piece) training decodes from a random prefix of the tokens (one length per batch) so
any prefix decodes at test time, coarse to fine.  Official checkpoints load through
:func:`convert_titok_state_dict` / :func:`load_official` (or ``vistok.hub.load_official``).

Legend: b batch, n latent tokens, k prefix length (or pixel-code count in the VQGAN head), p patches, c width,
d token size, h/w patch grid, ph/pw patch pixels.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from vistok.checkpoint import (
    find_weight_file,
    load_state_dict_strict,
    read_json,
    read_keys,
    read_state_dict,
    rename_state_dict,
)
from vistok.interfaces import (
    Configurable,
    TokenizerOutput,
    check_finite,
    check_nonempty,
    check_pixels,
    check_token_ids,
)
from vistok.layers import VectorQuantizer, ViTBlock
from vistok.layers.init import route_attention
from vistok.layers.refine import PixelRefiner
from vistok.layers.vqgan import VQGANDecoder

__all__ = ["TITOK_PRESETS", "TiTok", "convert_titok_state_dict", "load_official", "official_matches"]


# ----------------------------------------------------------------------------------------------------------------
# Encoder and decoder
# ----------------------------------------------------------------------------------------------------------------
class TiTokEncoder(nn.Module):
    """ViT over ``[CLS, patches, latent tokens]``; returns the latent-token outputs projected to ``out_dim``."""

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, num_heads: int,
                 num_latent_tokens: int, out_dim: int, legacy_readout: bool = False):
        super().__init__()
        grid = image_size // patch_size
        scale = width**-0.5
        self.legacy_readout = legacy_readout
        self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(scale * torch.randn(1, width))
        self.pos_embed = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.latent_pos_embed = nn.Parameter(scale * torch.randn(num_latent_tokens, width))
        self.norm_pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(ViTBlock(width, num_heads) for _ in range(depth))
        self.norm_post = nn.LayerNorm(width)
        self.proj_out = nn.Linear(width, out_dim)

    def forward(self, pixels: Tensor, latent_tokens: Tensor) -> Tensor:
        """pixels (b, 3, H, W), latent_tokens (n, c) -> (b, n, out_dim)."""
        b, n = pixels.shape[0], latent_tokens.shape[0]
        x = rearrange(self.patch_embed(pixels), "b c h w -> b (h w) c")
        x = torch.cat([repeat(self.cls_token, "1 c -> b 1 c", b=b), x], dim=1) + self.pos_embed  # b (1+p) c
        lat = repeat(latent_tokens + self.latent_pos_embed, "n c -> b n c", b=b)
        x = self.norm_pre(torch.cat([x, lat], dim=1))
        for i, blk in enumerate(self.blocks):  # only the latent tokens' outputs are read: the last block computes those
            x = blk(x, queries=n if i == len(self.blocks) - 1 else None)
        x = self.norm_post(x[:, -n:])  # b n c
        if self.legacy_readout:
            # Official legacy checkpoints reinterpret the (b, n, c) buffer as (b, c, n) without transposing
            # before their 1x1 conv; reproduce that memory scramble exactly.
            x = x.reshape(b, -1, n).transpose(1, 2)
        return self.proj_out(x)  # b n out_dim


class TiTokDecoder(nn.Module):
    """ViT over ``[CLS, P mask tokens, K codes]`` plus a pixel head; returns pixels (b, 3, H, W) (unclamped).

    ``pixel_codebook_size=None`` selects the direct head (linear to patch pixels, optional 3x3 conv); otherwise the
    MaskGIT-VQGAN head (logits over a ``pixel_codebook_size`` x ``pixel_code_dim`` codebook, soft code mix,
    :class:`VQGANDecoder` with level widths ``pixel_channels``).
    """

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, num_heads: int,
                 num_latent_tokens: int, token_dim: int, conv_out: bool = True, pixel_codebook_size: int | None = None,
                 pixel_code_dim: int = 256, pixel_channels: tuple[int, ...] = (128, 128, 256, 256, 512),
                 pixel_res_blocks: int = 2, refine_channels: int = 0, refine_blocks: int = 2,
                 refine_features: int = 8):
        super().__init__()
        self.grid, self.patch_size = image_size // patch_size, patch_size
        scale = width**-0.5
        self.proj_in = nn.Linear(token_dim, width)
        self.cls_token = nn.Parameter(scale * torch.randn(1, width))
        self.pos_embed = nn.Parameter(scale * torch.randn(self.grid**2 + 1, width))
        self.mask_token = nn.Parameter(scale * torch.randn(1, width))
        self.latent_pos_embed = nn.Parameter(scale * torch.randn(num_latent_tokens, width))
        self.norm_pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(ViTBlock(width, num_heads) for _ in range(depth))
        self.norm_post = nn.LayerNorm(width)
        self.vqgan_head = pixel_codebook_size is not None
        if self.vqgan_head:
            self.head = nn.Sequential(nn.Linear(width, 2 * width), nn.Tanh(), nn.Linear(2 * width, pixel_codebook_size))
            self.pixel_codebook = nn.Parameter(torch.empty(pixel_codebook_size, pixel_code_dim))
            nn.init.uniform_(self.pixel_codebook, -1.0 / pixel_codebook_size, 1.0 / pixel_codebook_size)
            self.pixel_decoder = VQGANDecoder(z_channels=pixel_code_dim, channels=pixel_channels,
                                              num_res_blocks=pixel_res_blocks)
        else:
            self.head = nn.Linear(width, patch_size * patch_size * 3)
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1) if conv_out else nn.Identity()
        # optional conv refiner after the direct head (TiTok checks it is not combined with the VQGAN head)
        self.refine = PixelRefiner(refine_channels, refine_blocks, refine_features) if refine_channels else None
        self.feature_head = (nn.Linear(width, patch_size * patch_size * refine_features)
                             if refine_channels and refine_features else None)

    def _cells(self, codes: Tensor) -> Tensor:
        """codes (b, k, d), k <= n -> normalised mask-token outputs (b, p, c)."""
        b, k = codes.shape[:2]
        lat = self.proj_in(codes) + self.latent_pos_embed[:k]  # b k c (prefix: slice the position table)
        p = self.grid**2
        x = torch.cat([self.cls_token, self.mask_token.expand(p, -1)], dim=0) + self.pos_embed  # (1+p) c
        x = self.norm_pre(torch.cat([repeat(x, "l c -> b l c", b=b), lat], dim=1))
        for blk in self.blocks:
            x = blk(x)
        return self.norm_post(x[:, 1 : 1 + p])

    def pixel_logits(self, codes: Tensor) -> Tensor:
        """codes (b, k, d) -> logits over the VQGAN pixel codebook (b, pixel_codebook_size, h, w)."""
        if not self.vqgan_head:
            raise ValueError("pixel_logits needs the MaskGIT-VQGAN head (a model built with pixel_codebook_size)")
        return rearrange(self.head(self._cells(codes)), "b (h w) k -> b k h w", h=self.grid)

    def forward(self, codes: Tensor) -> Tensor:
        """codes (b, k, d), k <= n -> pixels (b, 3, H, W)."""
        if self.vqgan_head:
            mix = torch.einsum("bkhw,kd->bdhw", self.pixel_logits(codes).softmax(1), self.pixel_codebook)
            return self.pixel_decoder(mix)  # b 3 H W
        cells = self._cells(codes)  # b p c
        p = self.patch_size
        x = rearrange(self.head(cells), "b (h w) (ph pw c) -> b c (h ph) (w pw)", h=self.grid, ph=p, pw=p)
        x = self.conv_out(x)
        if self.refine is None:
            return x
        feats = None
        if self.feature_head is not None:
            feats = rearrange(self.feature_head(cells), "b (h w) (ph pw f) -> b f (h ph) (w pw)", h=self.grid,
                              ph=p, pw=p)
        return self.refine(x, feats)


# ----------------------------------------------------------------------------------------------------------------
# TiTok
# ----------------------------------------------------------------------------------------------------------------
class TiTok(nn.Module, Configurable):
    """TiTok tokenizer: pixels in [0, 1] -> ``(B, N)`` code ids (or ``(B, N, D)`` floats for the VAE) -> pixels.

    Args:
        image_size: input side in pixels (square images).
        patch_size: ViT patch side (encoder and decoder).
        width, depth, num_heads: encoder ViT size.
        decoder_width, decoder_depth, decoder_num_heads: decoder ViT size (None = same as the encoder).
        num_latent_tokens: N, the number of 1D tokens.
        codebook_size: K, number of VQ codes; None = continuous tokens from a diagonal Gaussian (VAE variant:
            the encoder emits mean and log-variance, ``encode`` returns the mean, training samples).
        token_size: code / latent dimension D (12 in the paper: low-dim codes keep the codebook in use).
        l2_norm: VQ on the unit sphere (two-stage models); False = plain Euclidean VQ (single-stage VQ8k models).
        commitment: VQ commitment weight.
        kl_weight: weight of the KL term in the VAE variant's loss.
        reseed_every: dead-code re-seeding period in training steps (0 = off).
        tail_drop: One-D-Piece training (decode a random prefix per batch); enables prefix decoding.
        legacy_readout: reproduce the official legacy checkpoints' raw-reshape readout.
        pixel_conv_out: end the direct pixel head with the official 3x3 conv (False: the linear patch head alone,
            which trains markedly faster from scratch on CPU).
        pixel_codebook_size: use the MaskGIT-VQGAN pixel head with this many pixel codes (official 1024); None =
            direct pixel head.
        pixel_code_dim: pixel code dimension (VQGAN decoder input channels; official 256).
        pixel_channels: VQGAN decoder level widths, finest first; ``2 ** (len - 1)`` must equal ``patch_size``.
        pixel_res_blocks: res-blocks per VQGAN decoder level.
        pixel_refine: width of a residual 3x3-conv refiner after the direct pixel head (0 = none, as the official
            models); it sharpens patch seams and object edges (:class:`vistok.layers.refine.PixelRefiner`) and
            starts as the identity, so it can be added to a trained model for decoder fine-tuning.
        pixel_refine_blocks, pixel_refine_features: the refiner's residual blocks and the per-pixel feature
            channels the decoder ViT emits for it beside RGB.
        spatial_init: start from spatially routed attention (see ``initialize_spatial_routing``).
        embed_init_std: init std of the learned tokens and position tables (None: ``width ** -0.5`` as the
            official code).  A larger value (1.0) makes position dominate patch content at init, which shortens
            the background-only plateau of small from-scratch CPU runs; it changes nothing else.
        latent_scale: continuous tokens only (VAE variant or ``code_tokens``): ``encode`` returns latents times this
            factor and ``decode`` divides by it, so generators see roughly unit-variance tokens (the role of MAR's
            0.2325 or SD's 0.18215).  Set from data with :meth:`calibrate_latent_scale`; 1.0 = raw latents.
        code_tokens: VQ variant only: expose the *quantized code vectors* ``(B, N, token_size)`` as continuous
            tokens instead of their ids (``kind == "continuous"``), so a continuous generator (MAR's DiffLoss,
            xAR's flow head) can model a trained VQ tokenizer's latent space; the MAR paper (Table 2) also runs
            DiffLoss on a VQ tokenizer.  ``decode`` feeds the given vectors to the decoder without snapping them
            to the codebook (with ``l2_norm`` they are first put back on the unit sphere, where every code lies).
            Weights and training are those of the VQ model, so the flag can be set on load:
            ``from_pretrained(folder, code_tokens=True)``.
    """

    kind = "discrete"
    inference_methods = ("encode", "decode")  # what vistok.compile_inference compiles

    def __init__(self, image_size: int = 256, patch_size: int = 16, width: int = 512, depth: int = 8,
                 num_heads: int = 8, decoder_width: int | None = None, decoder_depth: int | None = None,
                 decoder_num_heads: int | None = None, num_latent_tokens: int = 128, codebook_size: int | None = 4096,
                 token_size: int = 12, l2_norm: bool = True, commitment: float = 0.25, kl_weight: float = 1e-6,
                 reseed_every: int = 0, tail_drop: bool = False, legacy_readout: bool = False,
                 pixel_conv_out: bool = True, pixel_codebook_size: int | None = None, pixel_code_dim: int = 256,
                 pixel_channels: tuple[int, ...] = (128, 128, 256, 256, 512), pixel_res_blocks: int = 2,
                 embed_init_std: float | None = None, spatial_init: bool = False, latent_scale: float = 1.0,
                 pixel_refine: int = 0, pixel_refine_blocks: int = 2, pixel_refine_features: int = 8,
                 code_tokens: bool = False):
        super().__init__()
        if code_tokens and codebook_size is None:
            raise ValueError("code_tokens exposes a VQ TiTok's code vectors; this TiTok has codebook_size=None, so "
                             "its tokens are continuous already: drop code_tokens")
        if not latent_scale > 0:
            raise ValueError(f"latent_scale must be > 0, got {latent_scale}")
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        if codebook_size is not None and codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1 (or None for continuous VAE tokens), got {codebook_size}")
        if pixel_refine and pixel_codebook_size is not None:
            raise ValueError("pixel_refine is for the direct pixel head: set pixel_codebook_size=None or "
                             "pixel_refine=0")
        if pixel_codebook_size is not None and 2 ** (len(pixel_channels) - 1) != patch_size:
            raise ValueError(f"the VQGAN pixel decoder upsamples by 2**(len(pixel_channels) - 1) = "
                             f"{2 ** (len(pixel_channels) - 1)}, which must equal patch_size {patch_size}; give "
                             f"{int(math.log2(patch_size)) + 1} pixel_channels")
        self.image_size, self.patch_size = image_size, patch_size
        self.num_tokens, self.codebook_size, self.token_dim = num_latent_tokens, codebook_size, token_size
        self.code_tokens = code_tokens
        self.kind = "discrete" if codebook_size is not None and not code_tokens else "continuous"
        self.tail_drop, self.kl_weight, self.latent_scale = tail_drop, kl_weight, float(latent_scale)
        self.latent_tokens = nn.Parameter(width**-0.5 * torch.randn(num_latent_tokens, width))
        out_dim = token_size if codebook_size is not None else 2 * token_size  # VAE: mean and log-variance
        self.encoder = TiTokEncoder(image_size, patch_size, width, depth, num_heads, num_latent_tokens, out_dim,
                                    legacy_readout)
        self.quantizer = (VectorQuantizer(codebook_size, token_size, commitment, l2_norm=l2_norm,
                                          reseed_every=reseed_every) if codebook_size is not None else None)
        self.decoder = TiTokDecoder(image_size, patch_size, decoder_width or width, decoder_depth or depth,
                                    decoder_num_heads or num_heads, num_latent_tokens, token_size, pixel_conv_out,
                                    pixel_codebook_size, pixel_code_dim, tuple(pixel_channels), pixel_res_blocks,
                                    pixel_refine, pixel_refine_blocks, pixel_refine_features)
        if spatial_init:
            self.initialize_spatial_routing()
        if embed_init_std is not None:
            for name, p in self.named_parameters():
                if name == "latent_tokens" or name.rsplit(".", 1)[-1] in ("cls_token", "pos_embed",
                                                                         "latent_pos_embed", "mask_token"):
                    nn.init.normal_(p, std=embed_init_std)

    @torch.no_grad()
    def initialize_spatial_routing(self, code_scale: float = 2.0) -> None:
        """Optional init that starts training with spatially routed attention (an init only; same modules).

        From-scratch pixel training of TiTok sits on a long background-only plateau: latent tokens attend
        uniformly to all patches, so they carry no per-image content, and mask tokens cannot learn where to
        read.  This init deals patches to latents in raster order and writes a random *position code* per patch
        into the position tables: queries read it from the first half of the channels, keys from the second
        half (``W_q = [M, 0]``, ``W_k = [0, M]``, ``M`` orthonormal).  So at step 0 latent ``j`` attends to its
        own patches in the encoder, and each mask token attends to the latent that owns its patch in the
        decoder; tokens of one kind do not single each other out.
        """
        enc, dec = self.encoder, self.decoder
        p, n = enc.pos_embed.shape[0] - 1, self.latent_tokens.shape[0]
        owner = torch.arange(p) * n // p  # patch -> latent, raster order
        for part in (enc, dec):  # encoder: latents ask, patches answer; decoder: mask tokens ask, latents answer
            part.pos_embed[0].zero_()
            route_attention([blk.attn for blk in part.blocks], part.pos_embed[1:], part.latent_pos_embed, owner,
                            groups_ask=part is enc, code_scale=code_scale)
        self.latent_tokens.zero_()
        dec.mask_token.zero_()

    # -- public API ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, pixels: Tensor) -> Tensor:
        """pixels (B, 3, H, W) in [0, 1] -> token ids (B, N) long; VAE variant: posterior means (B, N, D) float;
        ``code_tokens``: the ids' code vectors (B, N, D) float (times ``latent_scale`` in both continuous cases).

        Any float dtype is accepted and cast to the model's dtype (float64 / float16 / bfloat16 pixels work on a
        float32 model); NaN/inf, values outside [0, 1], wrong shapes and empty batches raise ``ValueError``."""
        check_pixels(pixels, video=False, size=self.image_size)
        pixels = pixels.to(self.latent_tokens.dtype)
        z = self.encoder(pixels, self.latent_tokens)  # b n d (VAE: b n 2d)
        if self.quantizer is None:
            return z.chunk(2, dim=-1)[0] * self.latent_scale
        ids = self.quantizer.indices(z)
        return self.quantizer.lookup(ids) * self.latent_scale if self.code_tokens else ids

    @torch.no_grad()
    def decode(self, tokens: Tensor, *, clamp: bool = True) -> Tensor:
        """token ids (B, K) (VAE: latents (B, K, D)) -> pixels (B, 3, H, W), clamped to [0, 1] unless ``clamp=False``.

        K < N needs a tail-drop (One-D-Piece) model.
        """
        if self.kind == "continuous":
            self._check_latents(tokens)
            codes = tokens.to(self.latent_tokens.dtype) / self.latent_scale
            if self.code_tokens and self.quantizer.l2_norm:
                codes = F.normalize(codes, dim=-1)
        else:
            check_token_ids(tokens, self.codebook_size, self.num_tokens, allow_prefix=self.tail_drop)
            codes = self.quantizer.lookup(tokens.long())
        out = self.decoder(codes)
        return out.clamp(0, 1) if clamp else out

    def forward(self, pixels: Tensor) -> TokenizerOutput:
        """Training pass: pixels (B, 3, H, W) -> reconstruction (unclamped), ids (VAE: sampled latents), loss."""
        check_pixels(pixels, video=False, size=self.image_size)
        z = self.encoder(pixels, self.latent_tokens)  # b n d (VAE: b n 2d)
        if self.quantizer is None:
            zq, kl = self._sample_gaussian(z)
            tokens, loss, extras = zq, self.kl_weight * kl, {"kl": kl.detach()}
        else:
            zq, tokens, parts = self.quantizer(z)
            loss = parts["codebook"] + self.quantizer.commitment * parts["commitment"]
            extras = {k: v.detach() for k, v in parts.items()}  # logged copies; the loss keeps the gradient
        zq = self._random_prefix(zq)
        recon = self.decoder(zq)
        return TokenizerOutput(recon, tokens, loss, {**extras, "prefix_len": torch.tensor(zq.shape[1])})

    @torch.no_grad()
    def calibrate_latent_scale(self, pixels: Tensor) -> float:
        """VAE variant: set ``latent_scale`` so that ``encode(pixels)`` has unit standard deviation; returns it.

        The new value is also written into ``config`` so a saved folder keeps it.
        """
        if self.kind != "continuous":
            raise ValueError("calibrate_latent_scale is for continuous tokens (the VAE variant or code_tokens=True); "
                             "this VQ TiTok emits ids")
        self.latent_scale = 1.0
        std = float(self.encode(pixels).float().std())
        if not std > 0:
            raise ValueError("the encoder's latents have zero spread on these pixels; cannot calibrate")
        self.latent_scale = 1.0 / std
        if hasattr(self, "_config"):
            self._config["latent_scale"] = self.latent_scale
        return self.latent_scale

    def reconstruct(self, pixels: Tensor, prefix_len: int | None = None) -> Tensor:
        """encode -> (prefix) -> decode, in [0, 1]."""
        tokens = self.encode(pixels)
        return self.decode(tokens if prefix_len is None else tokens[:, :prefix_len])

    # -- training stages (the LightningModules in vistok.training only add losses and optimizers) ---------------
    def proxy_logits(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """TiTok stage 1 (proxy codes): pixels (B, 3, H, W) -> (logits over the pixel codebook (B, K_pix, h, w), VQ
        loss ()).  ``forward`` without the VQGAN pixel decoder: the logits are trained with cross-entropy against a
        frozen 2D VQ tokenizer's codes (``h = w`` = the patch grid)."""
        if self.quantizer is None or not self.decoder.vqgan_head:
            raise ValueError("proxy_logits (TiTok stage 1) needs a VQ TiTok with the VQGAN pixel head: build it with "
                             "codebook_size and pixel_codebook_size=<the proxy tokenizer's codebook size>")
        check_pixels(pixels, video=False, size=self.image_size)
        zq, _, parts = self.quantizer(self.encoder(pixels, self.latent_tokens))
        vq = parts["codebook"] + self.quantizer.commitment * parts["commitment"]
        return self.decoder.pixel_logits(self._random_prefix(zq)), vq

    @torch.no_grad()
    def predict_pixel_codes(self, ids: Tensor) -> Tensor:
        """Stage 1 validation: token ids (B, N) -> the decoder's most likely pixel codes (B, h, w) long."""
        return self.decoder.pixel_logits(self.quantizer.lookup(ids)).argmax(1)

    def decoder_only_forward(self, pixels: Tensor) -> TokenizerOutput:
        """TiTok stage 2 (decoder fine-tuning): frozen tokens, trainable decoder.

        pixels (B, 3, H, W) -> TokenizerOutput(reconstruction (B, 3, H, W) unclamped with gradient through the
        decoder only, ids (B, N) as ``encode`` gives them (VAE: the scaled means), zero loss).  The encoder and
        quantizer run without gradient and without dead-code re-seeding, so every id stays what it was.
        """
        check_pixels(pixels, video=False, size=self.image_size)
        with torch.no_grad():
            z = self.encoder(pixels, self.latent_tokens)
            if self.quantizer is None:
                codes = z.chunk(2, dim=-1)[0]
                tokens = codes * self.latent_scale
            else:
                tokens = self.quantizer.indices(z)
                codes = self.quantizer.lookup(tokens)
        recon = self.decoder(self._random_prefix(codes))
        return TokenizerOutput(recon, tokens, pixels.new_zeros(()), {})

    # -- helpers -----------------------------------------------------------------------------------------------
    def _random_prefix(self, codes: Tensor) -> Tensor:
        """One-D-Piece tail drop: in training, the first k of the N codes (b, n, d), k uniform in [1, N] per batch."""
        if not (self.tail_drop and self.training):
            return codes
        return codes[:, : int(torch.randint(1, self.num_tokens + 1, ()))]

    def _sample_gaussian(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder output (b, n, 2d) -> (latents (b, n, d): a sample in training, the mean in eval; mean KL)."""
        mean, logvar = z.float().chunk(2, dim=-1)
        logvar = logvar.clamp(-30.0, 20.0)  # as the official diagonal Gaussian
        sample = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if self.training else mean
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2)).mean()
        return sample.to(z.dtype), kl

    def _check_latents(self, latents: Tensor) -> None:
        if not isinstance(latents, Tensor) or not latents.is_floating_point():
            raise TypeError(f"this TiTok is continuous: decode takes float latents (B, N, {self.token_dim}), got "
                            f"{getattr(latents, 'dtype', type(latents).__name__)}")
        if latents.ndim != 3 or latents.shape[-1] != self.token_dim:
            raise ValueError(f"latents must have shape (B, N, {self.token_dim}), got {tuple(latents.shape)}")
        check_nonempty(latents.shape[0], "latents", "sequences")
        check_finite(latents, "latents", "torch.nan_to_num(latents)")
        k = latents.shape[1]
        if self.tail_drop and not 1 <= k <= self.num_tokens:
            raise ValueError(f"prefix length must be in [1, {self.num_tokens}], got {k}")
        if not self.tail_drop and k != self.num_tokens:
            raise ValueError(f"this tokenizer decodes exactly {self.num_tokens} tokens, got {k} "
                             "(it was not trained with tail-token drop, so prefixes are not supported)")


# ----------------------------------------------------------------------------------------------------------------
# Official checkpoints (bytedance/1d-tokenizer hub folders, One-D-Piece's bare pytorch_model.bin)
# ----------------------------------------------------------------------------------------------------------------
OFFICIAL_VIT_SIZES: dict[str, tuple[int, int, int]] = {  # name -> (width, depth, heads); every head is 64 wide
    "small": (512, 8, 8), "base": (768, 12, 12), "large": (1024, 24, 16)}
OFFICIAL_PIXEL_VQGAN = dict(hidden_channels=128, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256,
                            num_embeddings=1024)  # hard-coded in the official TiTok
OFFICIAL_WEIGHT_FILES = ("model.safetensors", "weights.safetensors", "pytorch_model.bin")

_BLOCK = r"(encoder|decoder)\.transformer\.(\d+)\."
_KEY_RULES: list[tuple[str, str]] = [  # official key (full match) -> vistok key
    (r"latent_tokens", r"latent_tokens"),
    (r"(encoder|decoder)\.class_embedding", r"\1.cls_token"),
    (r"(encoder|decoder)\.positional_embedding", r"\1.pos_embed"),
    (r"(encoder|decoder)\.latent_token_positional_embedding", r"\1.latent_pos_embed"),
    (r"(encoder|decoder)\.ln_(pre|post)\.(weight|bias)", r"\1.norm_\2.\3"),
    (_BLOCK + r"ln_([12])\.(weight|bias)", r"\1.blocks.\2.norm\3.\4"),
    (_BLOCK + r"attn\.in_proj_(weight|bias)", r"\1.blocks.\2.attn.qkv.\3"),  # packed q, k, v rows, same order
    (_BLOCK + r"attn\.out_proj\.(weight|bias)", r"\1.blocks.\2.attn.proj.\3"),
    (_BLOCK + r"mlp\.c_fc\.(weight|bias)", r"\1.blocks.\2.mlp.0.\3"),
    (_BLOCK + r"mlp\.c_proj\.(weight|bias)", r"\1.blocks.\2.mlp.2.\3"),
    (r"encoder\.patch_embed\.(weight|bias)", r"encoder.patch_embed.\1"),
    (r"encoder\.conv_out\.(weight|bias)", r"encoder.proj_out.\1"),  # 1x1 conv -> linear
    (r"decoder\.decoder_embed\.(weight|bias)", r"decoder.proj_in.\1"),
    (r"decoder\.mask_token", r"decoder.mask_token"),  # (1, 1, c) -> (1, c)
    (r"decoder\.conv_out\.(weight|bias)", r"decoder.conv_out.\1"),  # direct head's 3x3 conv
    (r"quantize\.embedding\.weight", r"quantizer.embedding.weight"),
    (r"pixel_quantize\.embedding\.weight", r"decoder.pixel_codebook"),
    (r"pixel_decoder\.(.+)", r"decoder.pixel_decoder.\1"),  # same module names
]
_LEGACY_HEAD_RULE = (r"decoder\.ffn\.([02])\.(weight|bias)", r"decoder.head.\1.\2")  # 1x1 convs, tanh between
_DIRECT_HEAD_RULE = (r"decoder\.ffn\.0\.(weight|bias)", r"decoder.head.\1")  # 1x1 conv -> linear


def convert_titok_state_dict(official: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map an official TiTok / One-D-Piece state dict to vistok's :class:`TiTok` names and shapes.

    Handles the ``nn.MultiheadAttention`` packed projections, the ``c_fc``/``c_proj`` MLP, 1x1 convs that are
    linears here, the legacy (VQGAN-logit) or direct decoder head, and ``pixel_quantize``/``pixel_decoder``.

    Raises:
        ValueError: listing every official key it does not know (e.g. a TA-TiTok or stage-1 checkpoint).
    """
    legacy = "decoder.ffn.2.weight" in official

    def reshape(new: str, value: Tensor) -> Tensor:
        if new == "decoder.mask_token":
            return value.reshape(1, -1)
        if value.ndim == 4 and (new.startswith("decoder.head") or new.startswith("encoder.proj_out")):
            return value.flatten(1)  # (o, i, 1, 1) -> (o, i)
        return value

    return rename_state_dict(
        official, [*_KEY_RULES, _LEGACY_HEAD_RULE if legacy else _DIRECT_HEAD_RULE], transform=reshape,
        unknown_error="convert_titok_state_dict: official keys with no vistok counterpart (is this a plain TiTok / "
                      "One-D-Piece tokenizer checkpoint?)")


def _config_tree(config: dict) -> dict | None:
    """The OmegaConf tree of an official config.json (hub layout, or nested under ``"config"``), else None."""
    for tree in (config, config.get("config")):
        if isinstance(tree, dict) and isinstance(tree.get("model"), dict):
            vq = tree["model"].get("vq_model")
            if isinstance(vq, dict) and "vit_enc_model_size" in vq:
                return tree
    return None


def titok_kwargs_from_official_config(tree: dict) -> dict:
    """TiTok constructor kwargs from an official OmegaConf tree (``model.vq_model``, ``dataset.preprocessing``)."""
    vq = tree["model"]["vq_model"]

    def vit(side: str) -> tuple[int, int, int]:
        name = vq[f"vit_{side}_model_size"]
        if name in OFFICIAL_VIT_SIZES:
            return OFFICIAL_VIT_SIZES[name]
        custom = vq.get(f"vit_{side}_custom_size")  # fixture-only extension of the official size table
        if not isinstance(custom, dict):
            raise ValueError(f"unknown vit_{side}_model_size {name!r}; official sizes: {sorted(OFFICIAL_VIT_SIZES)}")
        return custom["width"], custom["num_layers"], custom["num_heads"]

    if vq["vit_enc_patch_size"] != vq["vit_dec_patch_size"]:
        raise ValueError("vistok's TiTok uses one patch size for encoder and decoder, got "
                         f"{vq['vit_enc_patch_size']} and {vq['vit_dec_patch_size']}")
    mode, legacy = vq.get("quantize_mode", "vq"), vq.get("is_legacy", True)
    if mode not in ("vq", "vae"):
        raise ValueError(f"unsupported quantize_mode {mode!r} (TiTok has 'vq' and 'vae')")
    if legacy != vq.get("finetune_decoder", True):
        raise ValueError("only stage-2 legacy checkpoints (is_legacy and finetune_decoder) and single-stage ones "
                         "(neither) decode to pixels; a stage-1 checkpoint predicts MaskGIT-VQGAN codes only")
    (width, depth, heads), (dwidth, ddepth, dheads) = vit("enc"), vit("dec")
    kwargs = dict(image_size=tree.get("dataset", {}).get("preprocessing", {}).get("crop_size", 256),
                  patch_size=vq["vit_enc_patch_size"], width=width, depth=depth, num_heads=heads,
                  decoder_width=dwidth, decoder_depth=ddepth, decoder_num_heads=dheads,
                  num_latent_tokens=vq["num_latent_tokens"], token_size=vq["token_size"],
                  codebook_size=vq["codebook_size"] if mode == "vq" else None,
                  l2_norm=bool(vq.get("use_l2_norm", False)), commitment=float(vq.get("commitment_cost", 0.25)),
                  legacy_readout=legacy, tail_drop=tree["model"].get("type") == "one_d_piece")
    if legacy:
        pv = {**OFFICIAL_PIXEL_VQGAN, **vq.get("pixel_vqgan", {})}
        kwargs.update(pixel_codebook_size=pv["num_embeddings"], pixel_code_dim=pv["z_channels"],
                      pixel_channels=tuple(pv["hidden_channels"] * m for m in pv["channel_mult"]),
                      pixel_res_blocks=pv["num_res_blocks"])
    return kwargs


def titok_kwargs_from_official_weights(state: dict[str, Tensor]) -> dict:
    """TiTok constructor kwargs read off an official state dict's shapes (for folders without a config).

    Heads are ``width // 64`` (true of every official size); the legacy layout implies the l2-normalised VQ and the
    legacy readout, as in every released legacy checkpoint.
    """
    def count(pattern: str) -> int:
        return len({m.group(1) for k in state if (m := re.fullmatch(pattern, k))})

    width, dwidth = state["encoder.positional_embedding"].shape[1], state["decoder.positional_embedding"].shape[1]
    if width % 64 or dwidth % 64:
        raise ValueError(f"cannot infer the head count of widths {width}/{dwidth} (official heads are 64 wide); "
                         "put the official config.json next to the weights")
    patch = state["encoder.patch_embed.weight"].shape[-1]
    legacy = "decoder.ffn.2.weight" in state
    kwargs = dict(image_size=math.isqrt(state["encoder.positional_embedding"].shape[0] - 1) * patch, patch_size=patch,
                  width=width, depth=count(r"encoder\.transformer\.(\d+)\.ln_1\.weight"), num_heads=width // 64,
                  decoder_width=dwidth, decoder_depth=count(r"decoder\.transformer\.(\d+)\.ln_1\.weight"),
                  decoder_num_heads=dwidth // 64, num_latent_tokens=state["latent_tokens"].shape[0],
                  legacy_readout=legacy, l2_norm=legacy)
    if "quantize.embedding.weight" in state:
        kwargs["codebook_size"], kwargs["token_size"] = state["quantize.embedding.weight"].shape
    else:
        kwargs["codebook_size"], kwargs["token_size"] = None, state["encoder.conv_out.weight"].shape[0] // 2
    if legacy:
        levels = count(r"pixel_decoder\.up\.(\d+)\.block\.0\.conv1\.weight")
        kwargs.update(pixel_codebook_size=state["pixel_quantize.embedding.weight"].shape[0],
                      pixel_code_dim=state["pixel_quantize.embedding.weight"].shape[1],
                      pixel_channels=tuple(state[f"pixel_decoder.up.{i}.block.0.conv1.weight"].shape[0]
                                           for i in range(levels)),
                      pixel_res_blocks=count(r"pixel_decoder\.mid\.(\d+)\.conv1\.weight"))
    return kwargs


def official_matches(config: dict, folder: Path) -> bool:
    """True for an official TiTok / One-D-Piece folder (config tree with ``model.vq_model``, or TiTok weight keys)."""
    path = find_weight_file(folder, OFFICIAL_WEIGHT_FILES)
    if path is None:
        return False
    if config:
        return _config_tree(config) is not None and not any(k.startswith("decoder.text_guidance")
                                                            for k in read_keys(path))  # TA-TiTok
    keys = read_keys(path)
    return "latent_tokens" in keys and "encoder.latent_token_positional_embedding" in keys


def load_official(folder: str | Path) -> TiTok:
    """Build a :class:`TiTok` from an official release folder and load its weights (eval mode).

    Reads ``config.json`` (the OmegaConf tree the hub repos hold, e.g. ``yucornetto/tokenizer_titok_s128_imagenet``,
    optionally nested under ``"config"``) with ``model.safetensors`` / ``weights.safetensors`` /
    ``pytorch_model.bin``.  A folder with only ``pytorch_model.bin`` is One-D-Piece's release
    (``turing-motors/One-D-Piece-*``): the sizes are read off the weights and prefix decoding is enabled.
    """
    folder = Path(folder)
    path = find_weight_file(folder, OFFICIAL_WEIGHT_FILES)
    if path is None:
        raise FileNotFoundError(f"{folder} holds none of {OFFICIAL_WEIGHT_FILES}")
    cfg_path = folder / "config.json"
    config = read_json(cfg_path, missing_ok=True)
    tree = _config_tree(config)
    if config and tree is None:
        raise ValueError(f"{cfg_path} is not an official TiTok config (no model.vq_model.vit_enc_model_size)")
    state = read_state_dict(path)
    kwargs = titok_kwargs_from_official_config(tree) if tree else {**titok_kwargs_from_official_weights(state),
                                                                   "tail_drop": True}
    model = TiTok(**kwargs)
    load_state_dict_strict(model, convert_titok_state_dict(state), str(path))
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# Presets (name -> constructor kwargs); registered in vistok.registry
# ----------------------------------------------------------------------------------------------------------------
def _vit(size: str, decoder: str | None = None) -> dict:
    (w, d, h), (dw, dd, dh) = OFFICIAL_VIT_SIZES[size], OFFICIAL_VIT_SIZES[decoder or size]
    return dict(width=w, depth=d, num_heads=h, decoder_width=dw, decoder_depth=dd, decoder_num_heads=dh)


# Two-stage release (configs/infer/TiTok/titok_{s128,b64,l32}.yaml): legacy readout + MaskGIT-VQGAN pixel head.
_TWO_STAGE = dict(image_size=256, patch_size=16, codebook_size=4096, token_size=12, l2_norm=True,
                  legacy_readout=True, pixel_codebook_size=1024)
# Single-stage release (titok_{bl64,bl128,sl256}_vq8k, titok_{ll32,bl64,bl128}_vae_c16): direct pixel head.
_VQ8K = dict(image_size=256, patch_size=16, codebook_size=8192, token_size=64, l2_norm=False)
_VAE_C16 = dict(image_size=256, patch_size=16, codebook_size=None, token_size=16)

TITOK_PRESETS: dict[str, dict] = {
    # Tiny CPU model on 64x64 shapes (the shipped default's size)
    "titok_tiny": dict(image_size=64, patch_size=8, width=128, depth=4, num_heads=4, num_latent_tokens=32,
                       codebook_size=1024, token_size=12, reseed_every=100, pixel_conv_out=False,
                       spatial_init=True),
    # Tiny One-D-Piece (tail-token drop)
    "onedpiece_tiny": dict(image_size=64, patch_size=8, width=128, depth=4, num_heads=4, num_latent_tokens=32,
                           codebook_size=1024, token_size=12, reseed_every=100, tail_drop=True,
                           pixel_conv_out=False, spatial_init=True),
    # Official TiTok (hub: yucornetto/tokenizer_<name>_imagenet)
    "titok_s128": dict(**_TWO_STAGE, **_vit("small"), num_latent_tokens=128),
    "titok_b64": dict(**_TWO_STAGE, **_vit("base"), num_latent_tokens=64),
    "titok_l32": dict(**_TWO_STAGE, **_vit("large"), num_latent_tokens=32),
    "titok_bl64_vq8k": dict(**_VQ8K, **_vit("base", "large"), num_latent_tokens=64),
    "titok_bl128_vq8k": dict(**_VQ8K, **_vit("base", "large"), num_latent_tokens=128),
    "titok_sl256_vq8k": dict(**_VQ8K, **_vit("small", "large"), num_latent_tokens=256),
    "titok_ll32_vae_c16": dict(**_VAE_C16, **_vit("large"), num_latent_tokens=32),
    "titok_bl64_vae_c16": dict(**_VAE_C16, **_vit("base", "large"), num_latent_tokens=64),
    "titok_bl128_vae_c16": dict(**_VAE_C16, **_vit("base", "large"), num_latent_tokens=128),
    # Official One-D-Piece (hub: turing-motors/One-D-Piece-{S,B,L}-256): two-stage TiTok with tail-token drop
    "onedpiece_s256": dict(**_TWO_STAGE, **_vit("small"), num_latent_tokens=256, tail_drop=True),
    "onedpiece_b256": dict(**_TWO_STAGE, **_vit("base"), num_latent_tokens=256, tail_drop=True),
    "onedpiece_l256": dict(**_TWO_STAGE, **_vit("large"), num_latent_tokens=256, tail_drop=True),
}
