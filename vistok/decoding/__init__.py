"""Decoders: free functions over the :class:`vistok.interfaces.Generator` protocol, selected by name.

    out = vistok.decoding.generate(generator, cond, decoder="ar", num_samples=4, temperature=1.0,
                                   top_k=100, cfg_scale=3.0, seed=0)
    out.tokens  # (B * num_samples, N)
    out.nfe     # generator forward passes used
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from vistok.decoding.autoregressive import decode_ar
from vistok.decoding.cells import decode_cells
from vistok.decoding.continuous import decode_car, decode_csd
from vistok.decoding.grouped import decode_gsd, decode_lantern
from vistok.decoding.jacobi import decode_mcsjd, decode_sjd
from vistok.decoding.masked import decode_masked
from vistok.decoding.neighboring import decode_nar
from vistok.decoding.sampling import FILTERS, Guided, SamplingArgs, guided, sample_probs
from vistok.interfaces import Conditioning

#: name -> decoder function ``(generator, cond, sampling, rng, **kwargs) -> (tokens, nfe[, extras])``
DECODERS: dict[str, Callable] = {"ar": decode_ar, "sjd": decode_sjd, "mcsjd": decode_mcsjd, "gsd": decode_gsd,
                                 "lantern": decode_lantern, "cells": decode_cells}
DECODERS["nar"] = decode_nar  # NAR: one anti-diagonal per pass (vistok.generators.nar)
DECODERS["masked"] = decode_masked  # MAR: random-order masked decoding (vistok.generators.mar)
DECODERS["csd"] = decode_csd  # continuous speculative decoding (causal continuous generators, diffusion head)


@dataclass
class GenerationOutput:
    """Tokens ``(B, N)`` and the number of generator forward passes (NFE) used to produce them."""

    tokens: Tensor
    nfe: int
    extras: dict = field(default_factory=dict)


def _rng(seed: int | torch.Generator | None, device: torch.device) -> torch.Generator | None:
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")
    return torch.Generator(device=device).manual_seed(seed)


def generate(generator, cond: Conditioning, *, decoder: str | Callable | None = None, num_samples: int = 1,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             cfg_scale: float = 1.0, seed: int | torch.Generator | None = None, progress: bool = False,
             **decoder_kwargs) -> GenerationOutput:
    """Sample tokens from ``generator`` for each condition in ``cond`` (``num_samples`` each, in a row).

    Args:
        generator: any object following the Generator protocol.
        cond: the conditions, batch B.
        decoder: a name in :data:`DECODERS` or a decoder function; None = the generator's ``default_decoder``
            (AR / MAR-AR ``"ar"``, NAR ``"nar"``, MAR ``"masked"``, xAR ``"cells"``).
        num_samples: samples per condition (output batch ``B * num_samples``).
        temperature, top_k, top_p: the sampling filters (temperature 0 = greedy).
        cfg_scale: classifier-free guidance scale (1 = off).
        seed: an int or a ``torch.Generator`` for reproducible sampling.
        decoder_kwargs: decoder-specific options (e.g. ``window`` for Jacobi decoders).
    """
    if decoder is None:
        decoder = getattr(getattr(generator, "inner", generator), "default_decoder", "ar")
    if isinstance(decoder, str):
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; available: {sorted(DECODERS)}")
        if decoder == "ar" and getattr(generator, "kind", None) == "continuous":
            decoder = decode_car  # causal continuous generators (MARARGenerator): one head draw per pass
        else:
            decoder = DECODERS[decoder]
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    sampling = SamplingArgs(temperature, top_k, top_p)
    device = next(generator.parameters()).device if hasattr(generator, "parameters") else torch.device("cpu")
    cond = cond.to(device).repeat_interleave(num_samples) if num_samples > 1 else cond.to(device)
    was_training = getattr(generator, "training", False)
    if was_training:
        generator.eval()
    try:
        out = decoder(guided(generator, cfg_scale), cond, sampling, _rng(seed, device), progress=progress,
                      **decoder_kwargs)
    finally:
        if was_training:
            generator.train()
    return GenerationOutput(*out)


__all__ = ["DECODERS", "FILTERS", "GenerationOutput", "Guided", "SamplingArgs", "decode_ar", "decode_car",
           "decode_cells", "decode_csd", "decode_gsd", "decode_lantern", "decode_mcsjd", "decode_sjd", "generate",
           "guided", "sample_probs"]
