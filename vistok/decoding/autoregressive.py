"""Plain autoregressive decoding: one token per forward pass (NFE = N).  The baseline every speculative
decoder must reproduce in distribution."""

from __future__ import annotations

import torch
from torch import Tensor

from vistok.decoding.sampling import SamplingArgs, sample_probs
from vistok.interfaces import Conditioning


@torch.no_grad()
def decode_ar(generator, cond: Conditioning, sampling: SamplingArgs, rng: torch.Generator | None = None,
              progress: bool = False) -> tuple[Tensor, int]:
    """Sample ``(B, N)`` tokens one position at a time.  Returns ``(tokens, nfe)``."""
    cache = generator.new_cache(cond)
    b, n = cond.batch_size, generator.seq_len
    device = cache.lengths.device
    tokens = torch.zeros(b, n, dtype=torch.long, device=device)
    prev = torch.zeros(b, 1, dtype=torch.long, device=device)
    steps = range(n)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="ar", leave=False)
    for p in steps:
        logits = generator.step(prev, torch.full((b, 1), p, device=device), cache)[:, 0]
        probs = sampling.probs(logits)
        tokens[:, p] = probs.argmax(-1) if sampling.greedy else sample_probs(probs, rng)
        prev = tokens[:, p : p + 1]
    return tokens, n
