"""Sampling filters on logits, shared by every decoder of discrete tokens.

Every decoder samples from the *processed* distribution: CFG mix (:mod:`vistok.decoding.guidance`) -> temperature
-> top-k -> top-p.  Speculative decoders compare processed distributions, so they are lossless w.r.t. exactly this
sampler.

Legend: b batch, l positions, v vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import torch
from torch import Tensor

from vistok.layers.sampling import sample_categorical


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the ``k`` largest logits per row, set the rest to -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    # the k-th largest value is the smallest of the top k: an unsorted topk finds it (the same value as sorted; in
    # the decoding loop on this CPU ~1.7x faster: docs/speed.md)
    kth = logits.topk(k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of tokens whose probability reaches ``p`` (the top one always)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)  # ties: lowest id first, as argmax
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = (cum - sorted_logits.softmax(-1)) >= p  # mass before this token already reaches p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


@dataclass
class SamplingArgs:
    """How logits become tokens.

    Attributes:
        temperature: softmax temperature; 0 means greedy (argmax).
        top_k: keep the k most likely tokens (None/0 = off).
        top_p: nucleus mass (None/1.0 = off).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        def real(name: str, value) -> float:
            if isinstance(value, bool) or not isinstance(value, Real):
                raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
            return float(value)

        if real("temperature", self.temperature) < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if 0 < self.temperature < 1e-6:  # logits / temperature would overflow float32 to inf (NaN probabilities)
            raise ValueError(f"temperature {self.temperature} is too small to divide logits by; use temperature=0 "
                             "for greedy decoding, or a value >= 1e-6")
        if self.top_k is not None:
            if isinstance(self.top_k, bool) or not isinstance(self.top_k, Integral):
                raise TypeError(f"top_k must be an int (0 or None = off), got {type(self.top_k).__name__} "
                                f"{self.top_k!r}")
            if self.top_k < 0:
                raise ValueError(f"top_k must be >= 0 (0 or None = off), got {self.top_k}")
        if self.top_p is not None and not 0 < real("top_p", self.top_p) <= 1:
            raise ValueError(f"top_p must be in (0, 1] (None or 1.0 = off), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def process(self, logits: Tensor) -> Tensor:
        """Raw logits (..., v) -> processed logits (temperature, top-k, top-p); greedy keeps them raw."""
        logits = logits.float()
        if not self.greedy:
            logits = logits / self.temperature
        if self.top_k:
            logits = top_k_filter(logits, self.top_k)
        if self.top_p is not None:
            logits = top_p_filter(logits, self.top_p)
        return logits

    def probs(self, logits: Tensor) -> Tensor:
        """Processed distribution (..., v).  Greedy gives a one-hot on the argmax."""
        processed = self.process(logits)
        if self.greedy:
            return torch.nn.functional.one_hot(processed.argmax(-1), processed.shape[-1]).float()
        return processed.softmax(-1)


def sample_probs(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw one id per row from probabilities (..., v) -> (...) (inverse CDF: one uniform per row,
    :func:`vistok.layers.sampling.sample_categorical`)."""
    return sample_categorical(probs, generator)


def draw(probs: Tensor, sampling: SamplingArgs, generator: torch.Generator | None = None) -> Tensor:
    """One id per row of ``probs`` (..., v): the argmax when ``sampling`` is greedy, else a random draw."""
    return probs.argmax(-1) if sampling.greedy else sample_probs(probs, generator)


def no_logit_filters(sampling: SamplingArgs, decoder: str) -> None:
    """Raise unless top-k / top-p are off (decoders of continuous tokens have no logits to filter)."""
    if sampling.top_k or (sampling.top_p is not None and sampling.top_p < 1):
        raise ValueError(f"top_k / top_p filter logits; decoder {decoder!r} samples continuous tokens: leave them "
                         "unset (temperature scales the sampler's noise where the decoder has one)")


#: the paper's settings by name (``step_schedule="disa_mar"``)
STEP_SCHEDULES = {"disa_mar": (50, 5), "disa_xar": (50, 15)}


def annealed_steps(step_schedule: tuple[int, int] | str | None, default: int, count: int) -> list[int]:
    """Diffusion/flow steps for each of ``count`` generation steps.

    ``step_schedule=(first, last)`` is diffusion step annealing (DiSA, Zhao et al., arXiv 2505.20297; code
    github.com/Qinyu-Allen-Zhao/DiSA): the steps fall linearly from ``first`` at the first generation step to ``last``
    at the final one (rounded), because later tokens, conditioned on more context, need fewer denoising steps.  The
    paper's settings (:data:`STEP_SCHEDULES`, by name): MAR 50 -> 5, xAR 50 -> 15.  None: ``default`` everywhere.
    """
    if step_schedule is None:
        return [default] * count
    if isinstance(step_schedule, str):
        if step_schedule not in STEP_SCHEDULES:
            raise ValueError(f"unknown step_schedule {step_schedule!r}; named ones: {sorted(STEP_SCHEDULES)}, or give "
                             "(first, last)")
        step_schedule = STEP_SCHEDULES[step_schedule]
    if (not isinstance(step_schedule, (tuple, list)) or len(step_schedule) != 2
            or any(isinstance(s, bool) or not isinstance(s, Integral) or s < 1 for s in step_schedule)):
        raise ValueError(f"step_schedule must be (first, last): two ints >= 1 (e.g. (50, 5)), got {step_schedule!r}")
    first, last = (int(s) for s in step_schedule)
    if count == 1:
        return [first]
    return [round(first + (last - first) * i / (count - 1)) for i in range(count)]
