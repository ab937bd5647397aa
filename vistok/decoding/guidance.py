"""Classifier-free guidance, in one place, used the same way by every decoder.

A decoder runs the conditional and the null batch stacked in one forward pass (one NFE), conditional rows first,
and mixes the two halves of whatever the model returns (``guidance.mix(guidance.step(generator, x, pos, cache))`` on
a ``guidance.new_cache``).  Decoders that guide inside a head (MAR's DiffLoss guides eps) take the halves with
:meth:`Guidance.split`; decoders with a per-step schedule (MAR's and xAR's ramps, NAR's ``cfg_interval``) pass the
step's scale to :meth:`Guidance.mix`.

Legend: b batch (before doubling).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vistok.interfaces import Conditioning, KVCache

__all__ = ["Guidance"]


class Guidance:
    """Classifier-free guidance with scale ``scale`` (1 = off).

    Args:
        scale: guidance scale, finite and >= 0; 1 disables guidance (no doubled batch).
        generator: when given, checked to have a null condition (``num_classes`` or ``text_dim``).
    """

    def __init__(self, scale: float = 1.0, generator=None):
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise ValueError(f"cfg_scale must be a finite number >= 0 (1 = no guidance), got {scale!r}")
        self.scale = float(scale)
        conditional = getattr(generator, "num_classes", 0) or getattr(generator, "text_dim", 0)
        if self.active and generator is not None and not (conditional and getattr(generator, "cond_dropout", 1) > 0):
            raise ValueError("cfg_scale != 1 needs a conditional generator with a null condition (num_classes or "
                             "text_dim > 0, trained with cond_dropout > 0); use cfg_scale=1.0 for unconditional "
                             "models")

    @property
    def active(self) -> bool:
        """Whether the batch is doubled (scale != 1)."""
        return self.scale != 1.0

    def condition(self, cond: Conditioning) -> Conditioning:
        """``cond`` followed by its null counterpart when active, else ``cond``."""
        return cond.cat(cond.null()) if self.active else cond

    def new_cache(self, generator, cond: Conditioning, max_tokens: int | None = None) -> KVCache:
        """``generator.new_cache`` over :meth:`condition` (the cache's ``group`` records the stacking)."""
        cache = generator.new_cache(self.condition(cond), max_tokens)
        if self.active:  # (a wrapper that guides inside may already have stacked its batch)
            cache.group = 2
        return cache

    def double(self, x: Tensor) -> Tensor:
        """``(b, ...) -> (2b, ...)`` (the same rows twice) when active, else ``x``."""
        return torch.cat([x, x]) if self.active else x

    def step(self, generator, inputs: Tensor, positions: Tensor, cache: KVCache) -> Tensor:
        """``generator.step`` over the stacked batch: ``inputs`` and ``positions`` (b, ...) doubled when active."""
        return generator.step(self.double(inputs), self.double(positions), cache)

    def split(self, out: Tensor) -> tuple[Tensor, Tensor | None]:
        """Stacked outputs ``(2b, ...)`` -> ``(conditional, null)``; ``(out, None)`` when not active."""
        return tuple(out.chunk(2)) if self.active else (out, None)

    def mix(self, out: Tensor, scale: float | None = None) -> Tensor:
        """Stacked outputs -> ``null + s (cond - null)`` with ``s = scale`` (default ``self.scale``); ``out`` when
        not active.  ``s = 1`` returns the conditional half."""
        if not self.active:
            return out
        cond, null = out.chunk(2)
        s = self.scale if scale is None else scale
        return cond if s == 1 else null + s * (cond - null)
