"""Plain autoregressive decoding: one token per forward pass (NFE = N).  The baseline every speculative decoder
must reproduce in distribution.  Causal generators of continuous tokens go to
:func:`vistok.decoding.continuous.decode_car` (one head draw per pass)."""

from __future__ import annotations

import torch
from torch import Tensor

from vistok.decoding.guidance import Guidance
from vistok.decoding.sampling import SamplingArgs, draw
from vistok.interfaces import CausalGenerator, Conditioning
from vistok.progress import track


@torch.no_grad()
def decode_ar(generator: CausalGenerator, cond: Conditioning, sampling: SamplingArgs,
              rng: torch.Generator | None = None, progress: bool = False, *, guidance: Guidance | None = None,
              **options) -> tuple[Tensor, int, dict]:
    """Sample ``(B, N)`` tokens one position at a time.  Returns ``(tokens, nfe, extras)``."""
    if getattr(generator, "kind", None) == "continuous":
        from vistok.decoding.continuous import decode_car

        return decode_car(generator, cond, sampling, rng, progress, guidance=guidance, **options)
    if options:
        raise ValueError(f"decoder 'ar' got unknown option(s) {sorted(options)}; it takes none")
    guidance = guidance or Guidance()
    cache = guidance.new_cache(generator, cond)
    b, n, device = cond.batch_size, generator.seq_len, cache.lengths.device
    tokens = torch.zeros(b, n, dtype=torch.long, device=device)
    for p in track(range(n), progress, desc="ar"):
        prev = tokens[:, max(p - 1, 0) : max(p, 1)]  # token p - 1 (ignored at p = 0: the start embedding)
        pos = torch.full((b, 1), p, device=device)
        logits = guidance.mix(guidance.step(generator, prev, pos, cache))[:, 0]
        tokens[:, p] = draw(sampling.probs(logits), sampling, rng)
    return tokens, n, {"decoder": "ar"}
