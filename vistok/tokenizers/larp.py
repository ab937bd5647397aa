"""LARP: a 1D video tokenizer with learned holistic queries, stochastic VQ and a co-trained autoregressive prior.

Paper:
    Wang et al., "LARP: Tokenizing Videos with a Learned Autoregressive Generative Prior", ICLR 2025,
    arXiv 2410.21264.
Reference code (facts only: shapes, key names, hyper-parameters): github.com/hywang66/LARP at 8aaed63
(``models/larp_tokenizer.py``, ``models/transformer.py``, ``models/bottleneck.py``, ``models/embed.py``,
``models/gptc.py``, ``cfgs/larp_tokenizer.yaml``, ``scripts/train_larp_tokenizer_reproduce.sh``).

Architecture.  A video ``(B, 3, T, H, W)`` in [0, 1] is cut into ``pt x p x p`` patches by a Conv3d; a fixed 3-D
sin-cos table is added.  ``N`` learned *holistic queries* are appended after the patch tokens, a plain ViT runs over
``[patches, queries]`` and the last ``N`` outputs are read out (no final norm).  A linear bottleneck maps them to
``token_size`` dims, where a stochastic VQ on the unit sphere picks the ids (sampled from ``softmax(cos / 0.03)``
while training, argmax in eval here).  The decoder maps the codes back to its width, adds a fixed 1-D sin-cos table,
appends one *patch query* per output patch (fixed 3-D sin-cos table + one learned type vector), runs a ViT over
``[latents, patch queries]`` and turns each patch-query output into its ``pt*p*p*3`` pixels (LayerNorm + linear).

The AR prior (training only) is a small causal GPT over the *continuous* quantized codes: it predicts the next code
vector, which is l2-normalised and scored against the normalised codebook (``logits = pred . codes^T / tau``) with
cross-entropy on the next id.  Two rounds with scheduled sampling: round 2 replaces a fraction of its inputs by ids
sampled from round 1's logits; that fraction ramps linearly to ``ss_max_ratio`` at ``ss_peak`` of training.  Its
gradient reaches the encoder through the straight-through codes, which is what makes the token sequence easy to
model autoregressively.

Official checkpoints load through :func:`load_official` (or ``vistok.hub.load_official``).

Legend: b batch, n latent tokens, d token size, c width, t/h/w patch grid, pt/p temporal/spatial patch, k codebook.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vistok.checkpoint import find_weight_file, load_state_dict_strict, read_json, read_state_dict, rename_state_dict
from vistok.interfaces import Configurable, TokenizerOutput, check_pixels, check_token_ids
from vistok.layers import ViTBlock
from vistok.layers.init import route_attention
from vistok.layers.quantizers import StochasticVectorQuantizer
from vistok.layers.refine import PixelRefiner
from vistok.layers.sampling import sample_categorical
from vistok.layers.sincos import sincos_1d, sincos_3d

__all__ = ["LARP", "LARP_PRESETS", "LARPPrior", "convert_larp_state_dict", "load_official", "official_matches"]


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------
class QueryTransformer(nn.Module):
    """timm ViT blocks (no qkv bias, LayerNorm eps 1e-6) over ``[context, queries]``; returns the query positions."""

    def __init__(self, width: int, depth: int, num_heads: int):
        super().__init__()
        self.blocks = nn.ModuleList(ViTBlock(width, num_heads, qkv_bias=False, eps=1e-6) for _ in range(depth))

    def forward(self, context: Tensor, queries: Tensor) -> Tensor:
        """context (b, l, c), queries (b, n, c) -> (b, n, c)."""
        n = queries.shape[1]
        x = torch.cat([context, queries], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return x[:, -n:]


class LARPPrior(nn.Module):
    """Continuous-input causal GPT (LARP's ``gptc``): code vectors (b, l, d) -> next-vector predictions (b, l, d).

    Learned absolute positions (``max_len``), pre-LN blocks with GELU MLPs and biased q/k/v, final LayerNorm and a
    linear head back to ``token_dim``.  No dropout (the official default is 0.1 on embeddings, attention and
    residuals).
    """

    def __init__(self, token_dim: int, width: int, depth: int, num_heads: int, max_len: int):
        super().__init__()
        self.max_len = max_len
        self.proj_in = nn.Linear(token_dim, width)
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, max_len, width))
        self.blocks = nn.ModuleList(ViTBlock(width, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, token_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (b, l, d) -> raw predictions (b, l, d); output ``j`` sees inputs ``0..j``."""
        length = x.shape[1]
        if length > self.max_len:
            raise ValueError(f"the prior has {self.max_len} positions, got a sequence of {length}")
        h = self.proj_in(x) + self.pos_embed[:, :length]
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        for blk in self.blocks:
            h = blk(h, mask=causal)
        return self.head(self.norm(h))

    def predict(self, codes: Tensor) -> Tensor:
        """Teacher forcing: codes (b, n, d) -> (b, n, d) unit vectors; position 0 is the input's first code,
        position ``j >= 1`` the prediction of code ``j`` from codes ``< j``."""
        pred = self(codes[:, :-1])
        return F.normalize(torch.cat([codes[:, :1], pred], dim=1), dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# LARP
# ----------------------------------------------------------------------------------------------------------------
class LARP(nn.Module, Configurable):
    """LARP video tokenizer: video (B, 3, T, H, W) in [0, 1] -> ``(B, N)`` code ids -> video.

    Args:
        image_size: frame side in pixels (square frames).
        num_frames: frames per clip ``T``.
        patch_size, temporal_patch_size: patch ``pt x p x p`` (encoder and decoder).
        width, depth, num_heads: encoder ViT size.
        decoder_width, decoder_depth, decoder_num_heads: decoder ViT size (None = as the encoder).
        num_latent_tokens: ``N`` holistic queries = tokens per clip.
        codebook_size, token_size: VQ codes ``K`` and their dimension ``d``.
        commitment, codebook_weight: VQ loss weights (official 0.25, 1.0).
        reseed_every: re-seed codes unused for this many training steps with recent encoder outputs (vistok option
            against early codebook collapse in short runs; 0 = off, as the official model).
        vq_temperature: softmax temperature of the stochastic VQ (official 0.03); None = plain argmax VQ.
        deterministic_eval: argmax ids in eval mode (default True).  False keeps sampling in eval, which is the
            official default behaviour; training always samples.
        query_init_std: init std of the learned queries (official 0.02).
        center_input: the encoder sees ``2 * video - 1`` instead of ``video`` (vistok option, official False): on
            near-white clips the patch embedding of [0, 1] pixels is dominated by one constant vector, which slows
            the first phase of training (docs/larp.md, tiny preset).  Inputs and outputs stay in [0, 1].
        latent_pe_base: base of the decoder's 1-D latent sin-cos table (official ``latent_pe_scale_factor``).
        prior_width, prior_depth, prior_num_heads, prior_max_len: AR prior size (official ``gptc-S``: 384, 12, 6,
            1024); ``prior_depth=0`` builds no prior.
        prior_rounds: forward rounds of the prior per step (official 2; >= 2 enables scheduled sampling).
        ss_max_ratio, ss_peak: scheduled sampling: the fraction of round-2 inputs replaced by sampled ids ramps
            linearly from 0 to ``ss_max_ratio`` at training progress ``ss_peak`` (official 0.5 at 0.3); ``ss_peak=0``
            uses ``ss_max_ratio`` from the start.
        prior_temperature: temperature of the prior's logits over the codebook (official 1.0).
        prior_avg_rounds: average the prior's cross-entropy over all rounds (True, official) or use the last only.
        spatial_init: start from routed attention (``vistok.layers.init.route_attention``, vistok option as TiTok's
            ``spatial_init``): patches are dealt to the queries in (t, h, w) raster order; encoder queries attend to
            their own patches, decoder patch queries to the latent that owns them.  The sin-cos tables are then
            overwritten by routing codes.  An init only: from-scratch tiny runs otherwise sit on a flat-background
            plateau (docs/larp.md).
        pixel_refine: width of a residual 3x3-conv refiner applied to every decoded frame (0 = none, as the
            official models; vistok option, :class:`vistok.layers.refine.PixelRefiner` as TiTok's
            ``pixel_refine``): the linear head paints each ``pt x p x p`` patch from its own token, the refiner
            works across patch borders at pixel resolution; it starts as the identity.
        pixel_refine_blocks, pixel_refine_features: the refiner's residual blocks and the per-pixel feature
            channels the decoder emits beside RGB for it.

    Attributes ``kind``, ``num_tokens``, ``codebook_size``, ``token_dim``, ``image_size`` and ``num_frames`` follow
    :class:`vistok.interfaces.Tokenizer`.
    """

    kind = "discrete"

    def __init__(self, image_size: int = 128, num_frames: int = 16, patch_size: int = 8, temporal_patch_size: int = 4,
                 width: int = 768, depth: int = 12, num_heads: int = 12, decoder_width: int | None = None,
                 decoder_depth: int | None = None, decoder_num_heads: int | None = None,
                 num_latent_tokens: int = 1024, codebook_size: int = 8192, token_size: int = 16,
                 commitment: float = 0.25, codebook_weight: float = 1.0, reseed_every: int = 0,
                 vq_temperature: float | None = 0.03,
                 deterministic_eval: bool = True, query_init_std: float = 0.02, center_input: bool = False,
                 latent_pe_base: float = 10000.0,
                 prior_width: int = 384, prior_depth: int = 12, prior_num_heads: int = 6, prior_max_len: int = 1024,
                 prior_rounds: int = 2, ss_max_ratio: float = 0.5, ss_peak: float = 0.3,
                 prior_temperature: float = 1.0, prior_avg_rounds: bool = True, spatial_init: bool = False,
                 pixel_refine: int = 0, pixel_refine_blocks: int = 1, pixel_refine_features: int = 4):
        super().__init__()
        dwidth, ddepth, dheads = decoder_width or width, decoder_depth or depth, decoder_num_heads or num_heads
        if image_size % patch_size or num_frames % temporal_patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size} and num_frames "
                             f"{num_frames} a multiple of temporal_patch_size {temporal_patch_size}")
        for name, c, h in (("", width, num_heads), ("decoder_", dwidth, dheads)):
            if c % 4 or c % h:
                raise ValueError(f"{name}width {c} must be divisible by 4 (3-D sin-cos table) and by "
                                 f"{name}num_heads {h}")
        if prior_depth and prior_max_len < num_latent_tokens - 1:
            raise ValueError(f"prior_max_len {prior_max_len} must be >= num_latent_tokens - 1 = "
                             f"{num_latent_tokens - 1}")
        if prior_rounds < 1 or not 0 <= ss_max_ratio <= 1 or ss_peak < 0:
            raise ValueError(f"need prior_rounds >= 1, 0 <= ss_max_ratio <= 1 and ss_peak >= 0, got {prior_rounds}, "
                             f"{ss_max_ratio}, {ss_peak}")
        self.image_size, self.num_frames = image_size, num_frames
        self.patch_size, self.temporal_patch_size = patch_size, temporal_patch_size
        self.grid = (num_frames // temporal_patch_size, image_size // patch_size, image_size // patch_size)  # t h w
        self.num_tokens, self.codebook_size, self.token_dim = num_latent_tokens, codebook_size, token_size
        self.prior_rounds, self.ss_max_ratio, self.ss_peak = prior_rounds, ss_max_ratio, ss_peak
        self.prior_temperature, self.prior_avg_rounds = prior_temperature, prior_avg_rounds
        self.center_input = center_input

        # encoder: Conv3d patches + fixed 3-D table, learned queries appended after them
        pt, p = temporal_patch_size, patch_size
        self.patch_embed = nn.Conv3d(3, width, (pt, p, p), stride=(pt, p, p))
        self.register_buffer("patch_pos", sincos_3d(*self.grid, width)[None])  # 1 (t h w) c
        self.latent_queries = nn.Parameter(query_init_std * torch.randn(num_latent_tokens, width))
        self.encoder = QueryTransformer(width, depth, num_heads)
        # bottleneck: linear down, stochastic VQ, linear up
        self.code_in = nn.Linear(width, token_size)
        self.quantizer = StochasticVectorQuantizer(codebook_size, token_size, commitment, vq_temperature,
                                                   deterministic_eval, codebook_weight, reseed_every)
        self.code_out = nn.Linear(token_size, dwidth)
        # decoder: latents + fixed 1-D table, patch queries = fixed 3-D table + one learned type vector
        latent_pos = sincos_1d(torch.arange(num_latent_tokens), dwidth, latent_pe_base).float()
        self.register_buffer("decoder_latent_pos", latent_pos[None])  # 1 n c
        self.register_buffer("decoder_patch_pos", sincos_3d(*self.grid, dwidth)[None])  # 1 (t h w) c
        self.decoder_patch_type = nn.Parameter(0.02 * torch.randn(1, 1, dwidth))
        self.decoder = QueryTransformer(dwidth, ddepth, dheads)
        self.head_norm = nn.LayerNorm(dwidth, eps=1e-6)
        self.head = nn.Linear(dwidth, pt * p * p * 3)
        # optional per-frame conv refiner (vistok option; the head keeps its official shape, features come apart)
        self.refine = (PixelRefiner(pixel_refine, pixel_refine_blocks, pixel_refine_features)
                       if pixel_refine else None)
        self.feature_head = (nn.Linear(dwidth, pt * p * p * pixel_refine_features)
                             if pixel_refine and pixel_refine_features else None)
        self.prior = (LARPPrior(token_size, prior_width, prior_depth, prior_num_heads, prior_max_len)
                      if prior_depth else None)
        self._init_weights()
        if spatial_init:
            self.initialize_spatial_routing()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Official init: Xavier-uniform linears (prior included) with zero biases, the patch conv as a linear,
        zero pixel head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def initialize_spatial_routing(self) -> None:
        """Routed attention at init (see ``spatial_init``)."""
        n, p = self.num_tokens, self.patch_pos.shape[1]
        owner = torch.arange(p) * n // p  # patch -> query, (t h w) raster order
        route_attention([blk.attn for blk in self.encoder.blocks], self.patch_pos[0], self.latent_queries.data, owner,
                        groups_ask=True)
        route_attention([blk.attn for blk in self.decoder.blocks], self.decoder_patch_pos[0],
                        self.decoder_latent_pos[0], owner, groups_ask=False)
        self.decoder_patch_type.zero_()

    # -- stages ----------------------------------------------------------------------------------------------
    def encoder_queries(self, video: Tensor) -> Tensor:
        """video (b, 3, T, H, W) -> encoder outputs at the query positions (b, n, c)."""
        if self.center_input:
            video = 2 * video - 1
        x = rearrange(self.patch_embed(video), "b c t h w -> b (t h w) c") + self.patch_pos
        return self.encoder(x, self.latent_queries.expand(len(video), -1, -1))

    def project(self, video: Tensor) -> Tensor:
        """video -> pre-quantization latents (b, n, d) (not yet normalised)."""
        return self.code_in(self.encoder_queries(video))

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Code vectors (b, n, d) (unit vectors from the codebook) -> video (b, 3, T, H, W), unclamped."""
        b = codes.shape[0]
        z = self.code_out(codes) + self.decoder_latent_pos
        queries = (self.decoder_patch_pos + self.decoder_patch_type).expand(b, -1, -1)
        out = self.head_norm(self.decoder(z, queries))
        t, h, w = self.grid
        unpatch = lambda cells: rearrange(cells, "b (t h w) (pt p q c) -> (b t pt) c (h p) (w q)", t=t, h=h, w=w,
                                          pt=self.temporal_patch_size, p=self.patch_size, q=self.patch_size)
        frames = unpatch(self.head(out))  # (b T) 3 H W
        if self.refine is not None:  # frame by frame, across patch borders
            frames = self.refine(frames, unpatch(self.feature_head(out)) if self.feature_head is not None else None)
        return rearrange(frames, "(b T) c H W -> b c T H W", b=b)

    # -- public API ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """video (B, 3, T, H, W) in [0, 1] -> token ids (B, N) long (argmax in eval unless
        ``deterministic_eval=False``; sampled in train mode)."""
        self._check_video(video)
        return self.quantizer.indices(self.project(video))

    @torch.no_grad()
    def decode(self, tokens: Tensor, *, clamp: bool = True) -> Tensor:
        """token ids (B, N) -> video (B, 3, T, H, W), clamped to [0, 1] unless ``clamp=False``."""
        check_token_ids(tokens, self.codebook_size, self.num_tokens, allow_prefix=False)
        out = self.decode_codes(self.quantizer.lookup(tokens))
        return out.clamp(0, 1) if clamp else out

    def reconstruct(self, video: Tensor) -> Tensor:
        """encode -> decode, in [0, 1]."""
        return self.decode(self.encode(video))

    def forward(self, video: Tensor, progress: float = 0.0, quantize: bool = True) -> TokenizerOutput:
        """Training pass: video (B, 3, T, H, W) -> reconstruction (unclamped), sampled ids (B, N), VQ loss.

        ``progress`` (training fraction done, in [0, 1]) drives the prior's scheduled sampling.  ``extras`` hold
        the VQ parts (detached) and, with a prior, ``prior_loss`` (the cross-entropy *with* gradient, to be weighted
        by the trainer) and ``prior_acc`` (teacher-forced top-1 accuracy of round 1).

        ``quantize=False`` (vistok's VQ warm-up, not in the official code) decodes the l2-normalised latents
        themselves; the quantizer still runs (ids, usage and dead-code re-seeding) and the loss keeps only its
        codebook term, so the codes follow the encoder and are ready when quantisation starts.
        """
        self._check_video(video)
        z = self.project(video)
        codes, ids, parts = self.quantizer(z)  # straight-through unit vectors, b n d
        if quantize:
            vq_loss = self.quantizer.loss(parts)
        else:
            codes = F.normalize(z, dim=-1)
            vq_loss = self.quantizer.codebook_weight * parts["codebook"]
        recon = self.decode_codes(codes)
        extras = {k: v.detach() for k, v in parts.items()}
        if self.prior is not None:
            extras["prior_loss"], extras["prior_acc"] = self.prior_loss(codes, ids, progress)
        return TokenizerOutput(recon, ids, vq_loss, extras)

    # -- AR prior ----------------------------------------------------------------------------------------------
    def prior_logits(self, codes: Tensor) -> Tensor:
        """Teacher-forced prior: codes (b, n, d) -> logits (b, n - 1, k) for ids 1..n-1 (normalised codebook,
        detached, divided by ``prior_temperature``)."""
        if self.prior is None:
            raise ValueError("this LARP was built without a prior (prior_depth=0)")
        pred = self.prior.predict(codes)[:, 1:]
        return pred @ self.quantizer.codebook().detach().t() / self.prior_temperature

    def ss_ratio(self, progress: float) -> float:
        """Fraction of round-2 prior inputs replaced by sampled ids at training ``progress``."""
        if self.ss_peak <= 0:
            return self.ss_max_ratio
        return min(progress / self.ss_peak, 1.0) * self.ss_max_ratio

    def prior_loss(self, codes: Tensor, ids: Tensor, progress: float = 0.0) -> tuple[Tensor, Tensor]:
        """Next-id cross-entropy of the prior over ``prior_rounds`` rounds with scheduled sampling.

        Args:
            codes: quantized unit vectors (b, n, d) with straight-through gradient (the loss trains the encoder).
            ids: their ids (b, n), the targets.
            progress: training fraction done, for :meth:`ss_ratio`.

        Returns:
            (mean cross-entropy, detached top-1 accuracy of round 1).
        """
        b, n, d = codes.shape
        mask = torch.rand(b, n - 1, 1, device=codes.device) < self.ss_ratio(progress)  # same mask every round
        inputs, all_logits = codes, []
        for r in range(self.prior_rounds):
            logits = self.prior_logits(inputs)  # b n-1 k
            all_logits.append(logits)
            if r < self.prior_rounds - 1:
                with torch.no_grad():
                    sampled = self.quantizer.lookup(sample_categorical(logits.float().softmax(-1)))  # b n-1 d
                inputs = torch.cat([codes[:, :1], torch.where(mask, sampled, codes[:, 1:])], dim=1)
        used = all_logits if self.prior_avg_rounds else all_logits[-1:]
        target = ids[:, 1:]
        loss = torch.stack([F.cross_entropy(lg.reshape(-1, self.codebook_size), target.reshape(-1))
                            for lg in used]).mean()
        acc = (all_logits[0].detach().argmax(-1) == target).float().mean()
        return loss, acc

    # -- helpers -----------------------------------------------------------------------------------------------
    def _check_video(self, video: Tensor) -> None:
        """Layout, frame count and frame size first (with the permute that fixes them), then the pixel range."""
        if isinstance(video, Tensor) and video.ndim == 5 and video.shape[1] != 3:
            if video.shape[-1] == 3:
                raise ValueError(f"video has shape {tuple(video.shape)}, channels last; LARP takes (B, 3, T, H, W): "
                                 "use `video.permute(0, 4, 1, 2, 3)`")
            if video.shape[2] == 3:
                raise ValueError(f"video has shape {tuple(video.shape)}, time before channels; LARP takes "
                                 "(B, 3, T, H, W): use `video.permute(0, 2, 1, 3, 4)`")
        if isinstance(video, Tensor) and video.ndim == 5 and video.shape[1] == 3:
            t, h, w = video.shape[2:]
            if t != self.num_frames:
                raise ValueError(f"this LARP takes clips of {self.num_frames} frames, got {t}; cut or pad the clip "
                                 f"(e.g. `video[:, :, :{self.num_frames}]`)")
            if (h, w) != (self.image_size, self.image_size):
                raise ValueError(f"this LARP takes {self.image_size}x{self.image_size} frames, got {h}x{w}; resize "
                                 f"with `torch.nn.functional.interpolate(video, size=({t}, {self.image_size}, "
                                 f"{self.image_size}), mode='trilinear')`")
        check_pixels(video, video=True)


# ----------------------------------------------------------------------------------------------------------------
# Official checkpoints (hywang66/LARP: PyTorchModelHubMixin folders, the parity fixture's layout)
# ----------------------------------------------------------------------------------------------------------------
#: official ``gptc-*`` prior sizes (``models/gptc.py``): name -> (layers, heads, width); all have 1024 positions
OFFICIAL_PRIORS: dict[str, tuple[int, int, int]] = {
    "gptc-L": (24, 16, 1024), "gptc-B": (12, 12, 768), "gptc-M": (12, 8, 512), "gptc-S": (12, 6, 384),
    "gptc-XS": (6, 6, 384), "gptc-XXS": (6, 4, 256)}
OFFICIAL_WEIGHT_FILES = ("model.safetensors", "weights.safetensors")
#: official flags vistok implements, with the only value it supports
_FIXED_FLAGS = {"learned_encoder_patch_pe": False, "learned_encoder_latent_query_embed": True,
                "learned_decoder_latent_pe": False, "learned_decoder_patch_query_embed": False,
                "use_encoder_patch_token_type_embed": False, "use_encoder_latent_query_token_type_embed": False,
                "use_decoder_latent_token_type_embed": False, "use_decoder_patch_query_token_type_embed": True}

_BLOCK = r"(encoder|decoder)\.blocks\.(\d+)\."
_PRIOR_BLOCK = r"prior_model\.blocks\.(\d+)\."
_KEY_RULES: list[tuple[str, str]] = [  # official key (full match) -> vistok key
    (r"encoder_latent_query_embed", "latent_queries"),
    (r"encoder_patch_pe", "patch_pos"),
    (r"decoder_latent_pe", "decoder_latent_pos"),
    (r"decoder_patch_query_embed", "decoder_patch_pos"),
    (r"decoder_patch_query_token_type_embed", "decoder_patch_type"),
    (r"x_embedder\.proj\.(weight|bias)", r"patch_embed.\1"),
    (_BLOCK + r"(norm[12]\.(?:weight|bias)|attn\.qkv\.weight|attn\.proj\.(?:weight|bias))", r"\1.blocks.\2.\3"),
    (_BLOCK + r"mlp\.fc1\.(weight|bias)", r"\1.blocks.\2.mlp.0.\3"),
    (_BLOCK + r"mlp\.fc2\.(weight|bias)", r"\1.blocks.\2.mlp.2.\3"),
    (r"bottleneck\.in_linear\.(weight|bias)", r"code_in.\1"),
    (r"bottleneck\.out_linear\.(weight|bias)", r"code_out.\1"),
    (r"bottleneck\.regularizer\.embedding\.weight", "quantizer.embedding.weight"),
    (r"final_layer\.norm_final\.(weight|bias)", r"head_norm.\1"),
    (r"final_layer\.linear\.(weight|bias)", r"head.\1"),
    (r"prior_model\.pos_emb", "prior.pos_embed"),
    (r"prior_model\.input_proj\.(weight|bias)", r"prior.proj_in.\1"),
    (_PRIOR_BLOCK + r"ln([12])\.(weight|bias)", r"prior.blocks.\1.norm\2.\3"),
    (_PRIOR_BLOCK + r"attn\.(qkv|proj)\.(weight|bias)", r"prior.blocks.\1.attn.\2.\3"),  # qkv packed below
    (_PRIOR_BLOCK + r"mlp\.([02])\.(weight|bias)", r"prior.blocks.\1.mlp.\2.\3"),
    (r"prior_model\.ln_f\.(weight|bias)", r"prior.norm.\1"),
    (r"prior_model\.head\.(weight|bias)", r"prior.head.\1"),
]


def convert_larp_state_dict(official: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map an official ``LARPTokenizer`` state dict (prior included) to vistok's :class:`LARP` names.

    The prior's separate ``query``/``key``/``value`` projections are packed into one ``qkv`` (rows q, k, v); a
    ``temporal_patch_size=1`` checkpoint's Conv2d patch weights become a Conv3d with one frame.

    Raises:
        ValueError: listing every official key it does not know (e.g. a learned-PE variant or an AR generator).
    """
    state = dict(official)
    for key in [k for k in state if re.fullmatch(_PRIOR_BLOCK + r"attn\.query\.weight", k)]:
        stem = key.removesuffix("query.weight")
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{stem}{name}.{kind}") for name in ("query", "key", "value")]
            state[f"{stem}qkv.{kind}"] = torch.cat(parts, dim=0)

    def reshape(new: str, value: Tensor) -> Tensor:
        if new == "patch_embed.weight" and value.ndim == 4:  # VideoPatchEmbed (Conv2d per frame)
            return value.unsqueeze(2)
        return value

    return rename_state_dict(state, _KEY_RULES, transform=reshape,
                             unknown_error="convert_larp_state_dict: official keys with no vistok counterpart (is "
                                           "this a LARP tokenizer checkpoint with the official yaml's flags?)")


def _official_args(config: dict) -> dict | None:
    """The ``LARPTokenizer`` constructor kwargs of a config.json (hub layout at the top, or under ``"args"``)."""
    for tree in (config, config.get("args")):
        if isinstance(tree, dict) and isinstance(tree.get("bottleneck"), dict) and "prior_model" in tree \
                and "bottleneck_token_num" in tree:
            return tree
    return None


def larp_kwargs_from_official_config(config: dict) -> dict:
    """:class:`LARP` kwargs from an official config (``LARPTokenizer(**args)``; ``args`` at the top as the hub
    repos hold them, or nested under ``"args"`` as in ``cfgs/larp_tokenizer.yaml``'s ``model``).

    A prior name outside :data:`OFFICIAL_PRIORS` is looked up in ``config["fixture_prior_registry_additions"]``
    (``n_layer``, ``n_head``, ``n_embd``, ``max_seq_len``), the registry extension of vistok's parity fixture.

    Raises:
        ValueError: the config uses an official option vistok does not implement, naming it.
    """
    args = _official_args(config)
    if args is None:
        raise ValueError("not an official LARP config: expected LARPTokenizer kwargs (bottleneck, prior_model, "
                         "bottleneck_token_num, ...) at the top of config.json or under 'args'")
    unsupported = {k: args[k] for k, v in _FIXED_FLAGS.items() if k in args and bool(args[k]) != v}
    if args.get("transformer_name", "transformer_encoder_parallel") != "transformer_encoder_parallel":
        unsupported["transformer_name"] = args["transformer_name"]
    for side in ("encoder_name", "decoder_name"):
        if str(args.get(side) or "none").lower() not in ("none", "no", "null", ""):
            unsupported[side] = args[side]
    if args.get("decoder_patch_size", args.get("patch_size", 8)) != args.get("patch_size", 8) or \
            args.get("decoder_temporal_patch_size", 4) != args.get("temporal_patch_size", 4):
        unsupported["decoder_patch_size"] = "differs from the encoder's (the official unpatchify ignores it)"
    if args.get("in_channels", 3) != 3:
        unsupported["in_channels"] = args["in_channels"]
    bottleneck = args["bottleneck"]["args"]
    vq = bottleneck.get("regularizer", {})
    vq_args = vq.get("args", {})
    if vq.get("name") != "vq" or not vq_args.get("l2_normalized", False):
        unsupported["regularizer"] = f"{vq.get('name')} (l2_normalized={vq_args.get('l2_normalized')})"
    if vq_args.get("entropy_loss_weight", 0.0):
        unsupported["entropy_loss_weight"] = vq_args["entropy_loss_weight"]
    if str(bottleneck.get("norm") or "none").lower() not in ("none", "no"):
        unsupported["bottleneck.norm"] = bottleneck["norm"]
    if vq_args.get("codebook_size") is None or bottleneck.get("bottleneck_dim", 0) <= 0:
        unsupported["bottleneck"] = "needs bottleneck_dim > 0 and a codebook_size"
    prior = args["prior_model"] or {}
    if prior.get("no_grad_before_last_round", False):
        unsupported["prior_model.no_grad_before_last_round"] = True
    if unsupported:
        raise ValueError(f"official LARP options vistok does not implement: {unsupported}")

    kwargs = dict(image_size=args.get("input_size", 128), num_frames=args.get("frame_num", 16),
                  patch_size=args.get("patch_size", 8), temporal_patch_size=args.get("temporal_patch_size", 4),
                  width=args.get("encoder_hidden_size", 768), depth=args.get("encoder_depth", 6),
                  num_heads=args.get("encoder_num_heads", 12), decoder_width=args.get("decoder_hidden_size", 768),
                  decoder_depth=args.get("decoder_depth", 6), decoder_num_heads=args.get("decoder_num_heads", 12),
                  num_latent_tokens=args.get("bottleneck_token_num", 1024), codebook_size=vq_args["codebook_size"],
                  token_size=bottleneck["bottleneck_dim"], commitment=vq_args.get("commitment_loss_weight", 0.25),
                  codebook_weight=vq_args.get("codebook_loss_weight", 1.0),
                  vq_temperature=vq_args.get("stochastic_temperature", 1.0) if vq_args.get("stochastic") else None,
                  query_init_std=args.get("query_init_std", 0.02),
                  latent_pe_base=float(args.get("latent_pe_scale_factor", 10000)))
    name = str(prior.get("name") or "none")
    if name.lower() in ("none", "no", "null", ""):
        return {**kwargs, "prior_depth": 0}
    extra = config.get("fixture_prior_registry_additions", {}).get(name)
    if name in OFFICIAL_PRIORS:
        (layers, heads, width), max_len = OFFICIAL_PRIORS[name], 1024
    elif isinstance(extra, dict):
        layers, heads, width = extra["n_layer"], extra["n_head"], extra["n_embd"]
        max_len = extra.get("max_seq_len", 1024)
    else:
        raise ValueError(f"unknown prior {name!r}; official sizes: {sorted(OFFICIAL_PRIORS)}")
    mix = prior.get("use_mix_ss", True)
    return {**kwargs, "prior_width": width, "prior_depth": layers, "prior_num_heads": heads, "prior_max_len": max_len,
            "prior_rounds": prior.get("n_rounds", 2),
            "ss_max_ratio": prior.get("mix_ss_max_ratio", 0.5) if mix else 1.0,
            "ss_peak": prior.get("mix_ss_peak_steps_ratio", 0.3) if mix else 0.0,
            "prior_temperature": prior.get("latent_ce_temperature", 1.0),
            "prior_avg_rounds": prior.get("avg_loss_over_rounds", True)}


def _weight_file(folder: Path) -> Path | None:
    return find_weight_file(folder, OFFICIAL_WEIGHT_FILES)


def official_matches(config: dict, folder: Path) -> bool:
    """True for an official LARP tokenizer folder: LARPTokenizer kwargs in config.json and a safetensors file."""
    return _official_args(config) is not None and _weight_file(Path(folder)) is not None


def load_official(folder: str | Path) -> LARP:
    """Build a :class:`LARP` from an official folder (``config.json`` + ``model.safetensors``, as the hub repo
    ``hywang66/LARP-L-long-tokenizer``; or the parity fixture's ``weights.safetensors``) in eval mode.

    The persistent sin-cos buffers of the checkpoint are loaded as they are (vistok regenerates the same tables).
    """
    folder = Path(folder)
    path = _weight_file(folder)
    if path is None:
        raise FileNotFoundError(f"{folder} holds none of {OFFICIAL_WEIGHT_FILES}")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json (the LARPTokenizer kwargs); sizes cannot be guessed")
    model = LARP(**larp_kwargs_from_official_config(read_json(cfg_path)))
    load_state_dict_strict(model, convert_larp_state_dict(read_state_dict(path)), str(path))
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# Presets (name -> constructor kwargs); registered in vistok.tokenizers
# ----------------------------------------------------------------------------------------------------------------
LARP_PRESETS: dict[str, dict] = {
    # Official LARP-L-Long (hub: hywang66/LARP-L-long-tokenizer): 16 x 128 x 128 clips, 1024 tokens, prior gptc-S
    "larp_l_long": dict(image_size=128, num_frames=16, patch_size=8, temporal_patch_size=4, width=768, depth=12,
                        num_heads=12, num_latent_tokens=1024, codebook_size=8192, token_size=16, prior_width=384,
                        prior_depth=12, prior_num_heads=6, prior_max_len=1024),
    # Tiny CPU model: 16 x 32 x 32 moving-shapes clips, 64 patches -> 64 tokens, 1024 codes, 2-layer prior
    "larp_tiny": dict(image_size=32, num_frames=16, patch_size=8, temporal_patch_size=4, width=128, depth=2,
                      num_heads=4, num_latent_tokens=64, codebook_size=1024, token_size=16, prior_width=128,
                      prior_depth=2, prior_num_heads=4, prior_max_len=64),
}
