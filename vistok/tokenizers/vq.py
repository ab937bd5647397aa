"""A 2-D grid VQ tokenizer (VQGAN-style, no GAN): a conv encoder downsamples by ``f``, a nearest-code quantiser
turns every latent pixel into an id, and a conv decoder maps the codes back to pixels.

Images of side ``S`` become ``(S / f) ** 2`` tokens in raster order (row by row), e.g. 64 x 64 at ``f = 4`` ->
256 tokens on a 16 x 16 grid: the long sequences speculative decoding needs (``grid`` tells 2-D decoders the
layout).

Papers: Esser et al., "Taming Transformers for High-Resolution Image Synthesis" (VQGAN), arXiv 2012.09841;
Sun et al., "Autoregressive Model Beats Diffusion: Llama for Scalable Image Generation" (LlamaGen's VQ tokenizer:
l2-normalised low-dimensional codes, codebook 16,384 x 8), arXiv 2406.06525.  Reference code (facts only):
github.com/CompVis/taming-transformers, github.com/FoundationVision/LlamaGen.  The decoder is vistok's
:class:`~vistok.layers.vqgan.VQGANDecoder` (MaskGIT's layout); the encoder mirrors it with strided convs.

Legend: b batch, c channels, h/w latent grid, n = h * w tokens, d code dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.interfaces import Configurable, TokenizerOutput, check_pixels, check_token_ids
from vistok.layers.quantizers import VectorQuantizer
from vistok.layers.vqgan import Conv2dSame, VQGANDecoder, VQGANResBlock, group_norm

__all__ = ["VQ_PRESETS", "VQTokenizer"]


class VQEncoder(nn.Module):
    """``conv_in`` -> per level: res-blocks, then (all but the last) a stride-2 3x3 conv -> mid res-blocks ->
    GroupNorm, SiLU, 1x1 conv to ``code_dim``.  ``channels`` finest first, so the output is ``2 ** (L - 1)``
    times smaller than the input."""

    def __init__(self, channels: tuple[int, ...], num_res_blocks: int, code_dim: int, in_channels: int = 3):
        super().__init__()
        self.conv_in = Conv2dSame(in_channels, channels[0], 3)
        layers: list[nn.Module] = []
        for i, c in enumerate(channels):
            widths = [channels[max(i - 1, 0)]] + [c] * num_res_blocks
            layers += [VQGANResBlock(a, b) for a, b in zip(widths[:-1], widths[1:])]
            if i < len(channels) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        layers += [VQGANResBlock(channels[-1], channels[-1]) for _ in range(num_res_blocks)]
        self.blocks = nn.Sequential(*layers)
        self.norm_out = group_norm(channels[-1])
        self.conv_out = nn.Conv2d(channels[-1], code_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(b, 3, H, W) -> (b, code_dim, H / f, W / f)."""
        return self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(x)))))


class VQTokenizer(nn.Module, Configurable):
    """2-D VQ tokenizer: pixels in [0, 1] ``(B, 3, S, S)`` -> ids ``(B, (S/f)**2)`` (raster order) -> pixels.

    Args:
        image_size: input side ``S`` in pixels (square images).
        patch_size: pixel-unshuffle factor ``p`` before the encoder (and pixel-shuffle after the decoder), so the
            convs run at ``S / p`` (cheap on CPU); 1 = convs at full resolution.
        channels: conv widths per level, finest first (multiples of 32); ``f = p * 2 ** (len(channels) - 1)``.
        num_res_blocks: res-blocks per level (encoder and decoder).
        codebook_size: number of codes.
        code_dim: code dimension (LlamaGen: 8).
        l2_norm: cosine lookup on unit vectors (LlamaGen's choice; keeps a large codebook in use).
        commitment: VQ commitment weight.
        reseed_every: dead-code re-seeding period in training steps (0 = off).
    """

    kind = "discrete"
    inference_methods = ("encode", "decode")  # what vistok.compile_inference compiles

    def __init__(self, image_size: int = 64, patch_size: int = 1, channels: tuple[int, ...] = (64, 128, 128),
                 num_res_blocks: int = 1,
                 codebook_size: int = 1024, code_dim: int = 8, l2_norm: bool = True, commitment: float = 0.25,
                 reseed_every: int = 0):
        super().__init__()
        channels = tuple(channels)
        if not channels or any(c % 32 for c in channels):
            raise ValueError(f"channels must be multiples of 32 (GroupNorm(32)), got {channels}")
        factor = patch_size * 2 ** (len(channels) - 1)
        if image_size % factor:
            raise ValueError(f"image_size {image_size} must be a multiple of the downsampling factor {factor}")
        self.image_size, self.factor, self.patch_size = image_size, factor, patch_size
        self.grid = (image_size // factor, image_size // factor)
        self.num_tokens, self.codebook_size, self.token_dim = self.grid[0] * self.grid[1], codebook_size, code_dim
        self.encoder = VQEncoder(channels, num_res_blocks, code_dim, in_channels=3 * patch_size**2)
        self.quantizer = VectorQuantizer(codebook_size, code_dim, commitment, l2_norm=l2_norm,
                                         reseed_every=reseed_every)
        self.decoder = VQGANDecoder(z_channels=code_dim, channels=channels, num_res_blocks=num_res_blocks,
                                    out_channels=3 * patch_size**2)

    def _latents(self, pixels: Tensor) -> Tensor:
        """pixels (b, 3, S, S) in [0, 1] -> encoder outputs (b, n, d) in raster order."""
        x = F.pixel_unshuffle(pixels.to(self.encoder.conv_in.weight.dtype) * 2 - 1, self.patch_size)
        z = self.encoder(x)
        return z.flatten(2).transpose(1, 2)

    def _pixels(self, codes: Tensor) -> Tensor:
        """codes (b, n, d) -> pixels (b, 3, S, S), unclamped."""
        h, w = self.grid
        out = self.decoder(codes.transpose(1, 2).reshape(len(codes), -1, h, w))
        return (F.pixel_shuffle(out, self.patch_size) + 1) / 2

    @torch.no_grad()
    def encode(self, pixels: Tensor) -> Tensor:
        """pixels (B, 3, S, S) in [0, 1] -> ids (B, n) long, raster order over the ``grid``."""
        check_pixels(pixels, video=False, size=self.image_size)
        return self.quantizer.indices(self._latents(pixels))

    @torch.no_grad()
    def decode(self, tokens: Tensor, *, clamp: bool = True) -> Tensor:
        """ids (B, n) -> pixels (B, 3, S, S), clamped to [0, 1] unless ``clamp=False``.  All n ids are needed."""
        check_token_ids(tokens, self.codebook_size, self.num_tokens, allow_prefix=False)
        out = self._pixels(self.quantizer.lookup(tokens.long()))
        return out.clamp(0, 1) if clamp else out

    def forward(self, pixels: Tensor) -> TokenizerOutput:
        """Training pass: pixels (B, 3, S, S) -> reconstruction (unclamped), ids (B, n), VQ loss."""
        check_pixels(pixels, video=False, size=self.image_size)
        zq, ids, parts = self.quantizer(self._latents(pixels))
        loss = parts["codebook"] + self.quantizer.commitment * parts["commitment"]
        return TokenizerOutput(self._pixels(zq), ids, loss, {k: v.detach() for k, v in parts.items()})


VQ_PRESETS: dict[str, dict] = {
    # 64 x 64 shapes -> 16 x 16 = 256 tokens: the long-sequence model of the speculative-decoding benchmarks
    "vq_f4_tiny": dict(image_size=64, patch_size=4, channels=(128,), num_res_blocks=1, codebook_size=1024, code_dim=8,
                       reseed_every=100),
}
