"""TiTok: a 1D image tokenizer (and One-D-Piece's tail-token drop).

Papers:
    Yu et al., "An Image is Worth 32 Tokens for Reconstruction and Generation", NeurIPS 2024, arXiv 2406.07550.
    Miwa et al., "One-D-Piece: Image Tokenizer Meets Quality-Controllable Compression", arXiv 2501.10064.
Reference code (facts only: shapes, key names, hyper-parameters): github.com/bytedance/1d-tokenizer
(``modeling/titok.py``, ``modeling/modules/blocks.py``) and github.com/turingmotors/One-D-Piece.

Architecture: a ViT encoder reads ``[CLS, P patches, N learned latent tokens]`` and the last N outputs are
projected to ``token_size`` dims and vector-quantised (l2-normalised codebook).  The ViT decoder reads
``[CLS, P mask tokens, K <= N projected codes]`` and maps the P mask-token outputs back to pixel patches.
With ``tail_drop=True`` (One-D-Piece) training decodes from a random prefix of the tokens (one length per
batch) so any prefix decodes at test time, coarse to fine.

Legend: b batch, n latent tokens, k prefix length, p patches, c width, d token size, h/w patch grid,
ph/pw patch pixels.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from vistok.interfaces import Configurable, TokenizerOutput, check_pixels, check_token_ids
from vistok.layers import VectorQuantizer, ViTBlock


# ----------------------------------------------------------------------------------------------------------------
# Encoder and decoder
# ----------------------------------------------------------------------------------------------------------------
class TiTokEncoder(nn.Module):
    """ViT over ``[CLS, patches, latent tokens]``; returns the latent-token outputs projected to ``token_dim``."""

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
        for blk in self.blocks:
            x = blk(x)
        x = self.norm_post(x[:, -n:])  # b n c
        if self.legacy_readout:
            # Official legacy checkpoints reinterpret the (b, n, c) buffer as (b, c, n) without transposing
            # before their 1x1 conv; reproduce that memory scramble exactly.
            x = x.reshape(b, -1, n).transpose(1, 2)
        return self.proj_out(x)  # b n d


class TiTokDecoder(nn.Module):
    """ViT over ``[CLS, P mask tokens, K codes]``; returns pixels (b, 3, H, W) (unclamped)."""

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, num_heads: int,
                 num_latent_tokens: int, token_dim: int, conv_out: bool = True):
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
        self.head = nn.Linear(width, patch_size * patch_size * 3)
        self.conv_out = nn.Conv2d(3, 3, 3, padding=1) if conv_out else nn.Identity()

    def forward(self, codes: Tensor) -> Tensor:
        """codes (b, k, d), k <= n -> pixels (b, 3, H, W)."""
        b, k = codes.shape[:2]
        lat = self.proj_in(codes) + self.latent_pos_embed[:k]  # b k c (prefix: slice the position table)
        p = self.grid**2
        x = torch.cat([self.cls_token, self.mask_token.expand(p, -1)], dim=0) + self.pos_embed  # (1+p) c
        x = self.norm_pre(torch.cat([repeat(x, "l c -> b l c", b=b), lat], dim=1))
        for blk in self.blocks:
            x = blk(x)
        x = self.head(self.norm_post(x[:, 1 : 1 + p]))  # b p (ph pw 3)
        x = rearrange(x, "b (h w) (ph pw c) -> b c (h ph) (w pw)", h=self.grid, ph=self.patch_size, c=3)
        return self.conv_out(x)


# ----------------------------------------------------------------------------------------------------------------
# TiTok
# ----------------------------------------------------------------------------------------------------------------
class TiTok(nn.Module, Configurable):
    """TiTok tokenizer: pixels in [0, 1] -> ``(B, N)`` code ids -> pixels.

    Args:
        image_size: input side in pixels (square images).
        patch_size: ViT patch side (encoder and decoder).
        width, depth, num_heads: encoder ViT size.
        decoder_width, decoder_depth, decoder_num_heads: decoder ViT size (None = same as the encoder).
        num_latent_tokens: N, the number of 1D tokens.
        codebook_size: K, number of VQ codes.
        token_size: code dimension (12 in the paper: low-dim codes keep the codebook in use).
        commitment: VQ commitment weight.
        reseed_every: dead-code re-seeding period in training steps (0 = off).
        tail_drop: One-D-Piece training (decode a random prefix per batch); enables prefix decoding.
        legacy_readout: reproduce the official legacy checkpoints' raw-reshape readout.
        pixel_conv_out: end the pixel head with the official 3x3 conv (False: the linear patch head alone, which
            trains markedly faster from scratch on CPU).
        spatial_init: start from spatially routed attention (see ``initialize_spatial_routing``).
        embed_init_std: init std of the learned tokens and position tables (None: ``width ** -0.5`` as the
            official code).  A larger value (1.0) makes position dominate patch content at init, which shortens
            the background-only plateau of small from-scratch CPU runs; it changes nothing else.
    """

    kind = "discrete"

    def __init__(self, image_size: int = 256, patch_size: int = 16, width: int = 512, depth: int = 8,
                 num_heads: int = 8, decoder_width: int | None = None, decoder_depth: int | None = None,
                 decoder_num_heads: int | None = None, num_latent_tokens: int = 128, codebook_size: int = 4096,
                 token_size: int = 12, commitment: float = 0.25, reseed_every: int = 0, tail_drop: bool = False,
                 legacy_readout: bool = False, pixel_conv_out: bool = True, embed_init_std: float | None = None,
                 spatial_init: bool = False):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        self.num_tokens, self.codebook_size, self.token_dim = num_latent_tokens, codebook_size, token_size
        self.tail_drop = tail_drop
        self.latent_tokens = nn.Parameter(width**-0.5 * torch.randn(num_latent_tokens, width))
        self.encoder = TiTokEncoder(image_size, patch_size, width, depth, num_heads, num_latent_tokens,
                                    token_size, legacy_readout)
        self.quantizer = VectorQuantizer(codebook_size, token_size, commitment, l2_norm=True,
                                         reseed_every=reseed_every)
        self.decoder = TiTokDecoder(image_size, patch_size, decoder_width or width, decoder_depth or depth,
                                    decoder_num_heads or num_heads, num_latent_tokens, token_size, pixel_conv_out)
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
        for part in (enc, dec):
            c = part.pos_embed.shape[1]
            if c % 2:
                raise ValueError("spatial_init needs an even width")
            half = c // 2
            owner = torch.arange(p) * n // p  # patch -> latent
            code = torch.randn(p, half) * code_scale  # one code per patch
            lat_code = torch.zeros(n, half).index_add_(0, owner, code)
            lat_code *= code_scale / lat_code.std(dim=-1, keepdim=True)
            q_side, k_side = (slice(0, half), slice(half, c))
            part.pos_embed.zero_()
            part.latent_pos_embed.zero_()
            if part is enc:  # latents ask (query half), patches answer (key half)
                part.pos_embed[1:, k_side] = code
                part.latent_pos_embed[:, q_side] = lat_code
            else:  # mask tokens ask, latents answer
                part.pos_embed[1:, q_side] = code
                part.latent_pos_embed[:, k_side] = lat_code
            for blk in part.blocks:
                w = blk.attn.qkv.weight  # (3c, c): rows q, k, v
                m = torch.empty(c, half)
                nn.init.orthogonal_(m)
                w[:c].zero_()
                w[c : 2 * c].zero_()
                w[:c, q_side] = m
                w[c : 2 * c, k_side] = m
        self.latent_tokens.zero_()
        dec.mask_token.zero_()

    # -- public API ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, pixels: Tensor) -> Tensor:
        """pixels (B, 3, H, W) in [0, 1] -> token ids (B, N) long."""
        check_pixels(pixels, video=False, size=self.image_size)
        return self.quantizer.indices(self.encoder(pixels, self.latent_tokens))

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """token ids (B, K) -> pixels (B, 3, H, W) in [0, 1].  K < N needs a tail-drop model."""
        check_token_ids(tokens, self.codebook_size, self.num_tokens, allow_prefix=self.tail_drop)
        return self.decoder(self.quantizer.lookup(tokens)).clamp(0, 1)

    def forward(self, pixels: Tensor) -> TokenizerOutput:
        """Training pass: pixels (B, 3, H, W) -> reconstruction (unclamped), ids and the VQ loss."""
        check_pixels(pixels, video=False, size=self.image_size)
        z = self.encoder(pixels, self.latent_tokens)  # b n d
        zq, ids, parts = self.quantizer(z)
        if self.tail_drop and self.training:
            k = int(torch.randint(1, self.num_tokens + 1, ()))
            zq = zq[:, :k]
        recon = self.decoder(zq)
        loss = parts["codebook"] + self.quantizer.commitment * parts["commitment"]
        return TokenizerOutput(recon, ids, loss, {**parts, "prefix_len": torch.tensor(zq.shape[1])})

    def reconstruct(self, pixels: Tensor, prefix_len: int | None = None) -> Tensor:
        """encode -> (prefix) -> decode, in [0, 1]."""
        ids = self.encode(pixels)
        return self.decode(ids if prefix_len is None else ids[:, :prefix_len])


# ----------------------------------------------------------------------------------------------------------------
# Presets (name -> constructor kwargs); registered in vistok.registry
# ----------------------------------------------------------------------------------------------------------------
TITOK_PRESETS: dict[str, dict] = {
    # Tiny CPU model on 64x64 shapes (the shipped default's size)
    "titok_tiny": dict(image_size=64, patch_size=8, width=128, depth=4, num_heads=4, num_latent_tokens=32,
                       codebook_size=1024, token_size=12, reseed_every=100, pixel_conv_out=False,
                       spatial_init=True),
    # Tiny One-D-Piece (tail-token drop)
    "onedpiece_tiny": dict(image_size=64, patch_size=8, width=128, depth=4, num_heads=4, num_latent_tokens=32,
                           codebook_size=1024, token_size=12, reseed_every=100, tail_drop=True,
                           pixel_conv_out=False, spatial_init=True),
}
