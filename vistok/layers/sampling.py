"""Exact categorical sampling by inverse CDF: one uniform per row instead of one random number per category.

``torch.multinomial`` draws one exponential variate per category and row on the CPU (≈ 7.8 ms for 512 rows of 1,024
categories, 2 threads), which made it ~13 % of a tiny LARP training step (stochastic VQ and the prior's scheduled
sampling); the inverse CDF below takes ≈ 0.23 ms for the same draw.  The law is the same: row ``i`` returns ``j``
with probability ``probs[i, j] / probs[i].sum()``, and categories of probability 0 are never returned.

Legend: v categories.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vistok.interfaces import validating


def sample_categorical(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw one id per row from non-negative weights ``probs`` (..., v) -> long ids (...).

    Rows need not be normalised (each is scaled by its own sum); weights are accumulated in float32 or wider.
    A row with a negative, NaN or infinite weight, or summing to 0, raises ``ValueError`` as ``torch.multinomial``
    would (one host read per call, skipped under ``torch.compile`` and on accelerators: it runs on every decoding
    pass, see :func:`vistok.interfaces.validating`).
    """
    if probs.shape[-1] == 0:
        raise ValueError("sample_categorical needs at least one category")
    cdf = probs.to(torch.promote_types(probs.dtype, torch.float32)).cumsum(-1)
    if validating(probs) and probs.numel():
        total = cdf[..., -1]
        if not bool(((total > 0) & torch.isfinite(total)).all() & (probs.amin() >= 0)):
            raise ValueError("sample_categorical needs finite, non-negative weights with a positive sum in every row")
    u = torch.rand(cdf.shape[:-1] + (1,), generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[..., -1:]
    # the first index whose cumulative weight exceeds u; zero-weight categories repeat the previous value, so they
    # are never the first to exceed it.  The clamp only guards u == total after rounding.
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)
