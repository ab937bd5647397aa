"""``generate``: the one entry point that picks a decoder by name, sets up guidance and seeding, and runs it.

    out = vistok.decoding.generate(generator, cond, decoder="sjd", num_samples=4, cfg_scale=3.0, seed=0, window=16)
    out.tokens, out.nfe  # (B * num_samples, N) ids or (B * num_samples, N, D) vectors; generator forward passes
    generate(generator, cond, num_tokens=8).tokens  # (B, 8): only the first 8 tokens (a token budget)

Every decoder is a free function ``decoder(generator, cond, sampling, rng, progress, *, guidance, **options) ->
(tokens, nfe, extras)`` over the protocols of :mod:`vistok.interfaces`; :data:`DECODERS` maps names to them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from vistok.decoding.autoregressive import decode_ar
from vistok.decoding.budget import NON_CAUSAL_DECODERS, TokenBudget
from vistok.decoding.cells import decode_cells
from vistok.decoding.continuous import decode_csd
from vistok.decoding.grouped import decode_gsd, decode_lantern
from vistok.decoding.guidance import Guidance
from vistok.decoding.jacobi import decode_mcsjd, decode_sjd
from vistok.decoding.masked import decode_masked
from vistok.decoding.neighboring import decode_nar
from vistok.decoding.parallel import decode_pjd
from vistok.decoding.prefix import ForcedPrefix
from vistok.decoding.sampling import SamplingArgs
from vistok.interfaces import Conditioning, check_count

#: name -> decoder function
DECODERS: dict[str, Callable] = {
    "ar": decode_ar,  # one token per pass (discrete ids, or continuous tokens through the head)
    "sjd": decode_sjd, "mcsjd": decode_mcsjd,  # speculative Jacobi decoding, lossless
    "gsd": decode_gsd, "lantern": decode_lantern,  # relaxed acceptance, lossy
    "pjd": decode_pjd,  # row-parallel Jacobi over the 2-D grid, lossy (lossless at lag = row length)
    "nar": decode_nar,  # one anti-diagonal per pass (NeighbourGenerator)
    "masked": decode_masked,  # MAR's random-order masked decoding (MaskedGenerator)
    "cells": decode_cells,  # xAR next-cell flow decoding (CellGenerator)
    "csd": decode_csd,  # continuous speculative decoding (causal continuous generators with a diffusion head)
}


def parse_options(spec: str | list[str]) -> dict:
    """Decoder options written as text (the CLIs): ``"window=16,proactive=8x2,coupling=gumbel"`` (or a list of
    ``key=value`` items) -> ``{"window": 16, "proactive": (8, 2), "coupling": "gumbel"}``.

    Values: ints, floats, ``true``/``false``, ``AxB`` (a tuple of ints, e.g. a candidate tree), else strings."""

    def value(v: str):
        v = v.strip()
        if "x" in v and all(part.isdigit() for part in v.split("x")):
            return tuple(int(part) for part in v.split("x"))
        if v.lower() in ("true", "false"):
            return v.lower() == "true"
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v

    items = [kv for part in ([spec] if isinstance(spec, str) else spec) for kv in part.split(",") if kv.strip()]
    pairs = [kv.split("=", 1) for kv in items]
    bad = [kv for kv, pair in zip(items, pairs, strict=True) if len(pair) != 2 or not pair[0].strip()]
    if bad:
        raise ValueError(f"decoder options must be key=value (comma-separated), got {bad[0]!r}")
    return {k.strip(): value(v) for k, v in pairs}


@dataclass
class GenerationOutput:
    """Tokens ``(B, N)`` / ``(B, N, D)``, the number of generator forward passes (NFE) and decoder extras."""

    tokens: Tensor
    nfe: int
    extras: dict = field(default_factory=dict)


def generate(model, cond: Conditioning, /, *, decoder: str | Callable | None = None, num_samples: int = 1,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             cfg_scale: float = 1.0, seed: int | torch.Generator | None = None,
             generator: torch.Generator | None = None, progress: bool = False, prefix: Tensor | None = None,
             num_tokens: int | None = None,
             **decoder_kwargs) -> GenerationOutput:
    """Sample tokens from ``model`` for each condition in ``cond`` (``num_samples`` each, in a row).

    Args:
        model: a generator (positional; any object following the protocol its decoder needs).
        cond: the conditions, batch B.
        decoder: a name in :data:`DECODERS` or a decoder function; None = the model's ``default_decoder``
            (AR / MAR-AR ``"ar"``, NAR ``"nar"``, MAR ``"masked"``, xAR ``"cells"``).
        num_samples: samples per condition (output batch ``B * num_samples``).
        temperature, top_k, top_p: the sampling filters (temperature 0 = greedy).
        cfg_scale: classifier-free guidance scale (1 = off).
        seed: an int or a ``torch.Generator`` for reproducible sampling.
        generator: a ``torch.Generator`` (the same as passing it as ``seed``; the model itself is positional).
        num_tokens: a token budget ``k`` in ``[1, N]``: stop after the first ``k`` tokens (tokens ``(B, k)``; causal
            generators and their decoders only, see :mod:`vistok.decoding.budget`).  None: all ``N``.
        progress: show a progress bar.
        prefix: ``(B, K)`` token ids the samples must start with (causal discrete generators: :class:`ForcedPrefix`;
            each condition's row is used for all its ``num_samples``); the output holds them at positions ``< K``.
        decoder_kwargs: decoder-specific options (e.g. ``window`` for Jacobi decoders).
    """
    if generator is not None:
        if seed is not None:
            raise ValueError("give seed= or generator=, not both")
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator (the model is the first positional argument), got "
                            f"{type(generator).__name__}")
        seed = generator
    if decoder is None:
        decoder = getattr(model, "default_decoder", "ar")
    if num_tokens is not None and decoder in NON_CAUSAL_DECODERS:
        raise ValueError(f"num_tokens (a token budget) needs a causal decoder (ar, sjd, mcsjd, gsd, lantern, csd); "
                         f"decoder {decoder!r} does not make tokens in order")
    if isinstance(decoder, str):
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; available: {sorted(DECODERS)}")
        decoder = DECODERS[decoder]
    check_count("num_samples", num_samples)
    if not isinstance(cond, Conditioning):
        raise TypeError(f"cond must be a vistok.Conditioning, got {type(cond).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, torch.Generator, type(None))):
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")
    sampling = SamplingArgs(temperature, top_k, top_p)
    guidance = Guidance(cfg_scale, model)
    device = next(model.parameters()).device if hasattr(model, "parameters") else torch.device("cpu")
    cond = cond.to(device).repeat_interleave(num_samples) if num_samples > 1 else cond.to(device)
    if isinstance(seed, torch.Generator) and seed.device.type != device.type:
        raise ValueError(f"the torch.Generator is on {seed.device} but the model on {device}: random draws happen on "
                         f"the model's device; pass torch.Generator(device={str(device)!r}).manual_seed(...) or an "
                         "int seed")
    rng = torch.Generator(device=device).manual_seed(seed) if isinstance(seed, int) else seed
    if prefix is not None:
        if not isinstance(prefix, Tensor) or prefix.ndim != 2 or len(prefix) * num_samples != cond.batch_size:
            got = tuple(prefix.shape) if isinstance(prefix, Tensor) else type(prefix).__name__
            raise ValueError(f"prefix must be (B, K) token ids with one row per condition (B = "
                             f"{cond.batch_size // num_samples}), got {got}")
        model = ForcedPrefix(model, prefix.to(device).repeat_interleave(num_samples, 0))
    runs = model if num_tokens is None else TokenBudget(model, num_tokens)
    was_training = getattr(model, "training", False)
    if was_training:
        model.eval()
    try:
        out = decoder(runs, cond, sampling, rng, progress, guidance=guidance, **decoder_kwargs)
    finally:
        if was_training:
            model.train()
    return GenerationOutput(*out)
