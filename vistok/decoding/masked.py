"""MAR's masked decoding: reveal a random order of positions over ``num_iter`` steps, a cosine number at a time.

Paper: Li et al., "Autoregressive Image Generation without Vector Quantization", arXiv 2406.11838 (schedule from
MaskGIT, CFG ramp from Muse); reference code github.com/LTH14/mar at fe470ac (``MAR.sample_tokens``, facts only).

Step ``k`` of ``num_iter`` (0-based), with ``m`` positions still unknown:

1. ``generator.predict(tokens, mask, cond)`` gives a head condition ``z`` for every position from the known tokens
   (batch doubled with the null condition under CFG);
2. ``keep = max(1, min(m - 1, floor(n cos(pi/2 (k+1)/num_iter))))`` positions stay unknown (none after the last
   step): the first ``keep`` entries of the sample's order, so tokens are revealed from the end of the order;
3. the head samples the revealed positions (rows in (batch, position) order) with guidance
   ``1 + (cfg - 1) (n - keep) / n`` (``cfg_schedule="linear"``) or ``cfg`` (``"constant"``).

Legend: b batch, n tokens, d token dim, r revealed rows, s head sampling steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from vistok.decoding.guidance import Guidance
from vistok.decoding.sampling import SamplingArgs, annealed_steps, no_logit_filters
from vistok.interfaces import Conditioning, MaskedGenerator, check_choice, check_count
from vistok.progress import track

__all__ = ["decode_masked", "mask_schedule", "sample_masked"]


def mask_schedule(seq_len: int, num_iter: int) -> list[int]:
    """Unknown positions left after each step, ``num_iter`` entries (MAR's cosine schedule; the last is 0)."""
    check_count("num_iter", num_iter, hint=" (MAR: 64; 256 for its reported FIDs)")
    left, out = seq_len, []
    for k in range(num_iter):
        keep = max(1, min(left - 1, math.floor(seq_len * math.cos(math.pi / 2 * (k + 1) / num_iter))))
        left = 0 if k == num_iter - 1 else keep
        out.append(left)
    return out


@torch.no_grad()
def sample_masked(generator: MaskedGenerator, cond: Conditioning, *, num_iter: int = 64, cfg_scale: float = 1.0,
                  cfg_schedule: Literal["linear", "constant"] = "linear", temperature: float = 1.0,
                  rng: torch.Generator | None = None,
                  orders: Tensor | None = None, head_noise: Callable[[int, int], Tensor] | None = None,
                  progress: bool = False, step_schedule: tuple[int, int] | None = None,
                  head_sampler: str | None = None) -> tuple[Tensor, dict]:
    """Sample continuous tokens (b, n, d) from a :class:`~vistok.interfaces.MaskedGenerator` (e.g. MAR).

    Args:
        generator, cond: the generator (``predict``, ``head.sample``, ``seq_len``, ``token_dim``), conditions (b).
        num_iter: decoding steps (>= 1; steps beyond ``n`` reveal nothing).
        cfg_scale: classifier-free guidance (1 = off); needs a conditional generator.
        cfg_schedule: ``"linear"`` (ramp with the revealed fraction) or ``"constant"``.
        temperature: scales the head's per-step diffusion noise.
        rng: torch generator for the orders and the head noise.
        orders: (b, n) permutations to use instead of random ones.
        head_noise: ``(step, rows) -> (s, rows, d)`` noise for the head at each step (to reproduce a recorded run).
        step_schedule: ``(first, last)`` head sampling steps, annealed linearly over the ``num_iter`` steps
            (DiSA, :func:`~vistok.decoding.sampling.annealed_steps`; the paper uses (50, 5) with 64 steps);
            None: the head's ``num_sampling_steps`` at every step.
        head_sampler: the head's sampler for this call (DiffLoss: ``"ddpm"``, ``"ddim"``, ``"dpm"``,
            ``"dpm_sde"``); None: the head's own.

    Returns:
        ``(tokens, {"orders": (b, n), "revealed": (num_iter, b, n) bool, "head_nfe": head network calls})``.
    """
    if not isinstance(generator, MaskedGenerator):
        raise ValueError(f"masked decoding needs a masked continuous generator (predict, head, seq_len, token_dim; "
                         f"e.g. MARGenerator); {type(generator).__name__} is not one")
    schedule = mask_schedule(generator.seq_len, num_iter)
    head_steps = annealed_steps(step_schedule, generator.head.num_sampling_steps, num_iter)
    head_kw = {} if head_sampler is None else {"sampler": head_sampler}
    check_choice("cfg_schedule", cfg_schedule, ("linear", "constant"))
    guidance = Guidance(cfg_scale, generator)
    b, n, d = cond.batch_size, generator.seq_len, generator.token_dim
    full = guidance.condition(cond)
    generator.check_cond(cond)
    ref = next(generator.parameters())
    if orders is None:
        orders = torch.rand(b, n, generator=rng, device=ref.device).argsort(dim=1)
    elif orders.shape != (b, n):
        raise ValueError(f"orders must have shape ({b}, {n}), got {tuple(orders.shape)}")
    else:
        orders = orders.to(ref.device)
    tokens = torch.zeros(b, n, d, device=ref.device, dtype=ref.dtype)
    unknown = torch.ones(b, n, dtype=torch.bool, device=ref.device)
    revealed, head_nfe = [], 0
    for k in track(range(num_iter), progress, desc="mar"):
        z = generator.predict(guidance.double(tokens), guidance.double(unknown), full)
        z_cond, z_null = guidance.split(z)
        keep = schedule[k]
        still = torch.zeros_like(unknown).scatter(1, orders[:, :keep], True) if keep else torch.zeros_like(unknown)
        now = unknown & ~still  # (b, n): revealed at this step
        rows = now.nonzero(as_tuple=True)
        if rows[0].numel():
            ramp = (n - max(keep, 1)) / n  # MAR clamps the next mask length to >= 1 here, even at the last step
            scale = 1 + (cfg_scale - 1) * ramp if cfg_schedule == "linear" else cfg_scale
            noise = head_noise(k, rows[0].numel()) if head_noise is not None else None
            tokens[rows] = generator.head.sample(z_cond[rows], z_null=None if z_null is None else z_null[rows],
                                                 cfg_scale=scale, temperature=temperature, generator=rng,
                                                 noise=noise, num_steps=head_steps[k], **head_kw).to(tokens.dtype)
            head_nfe += head_steps[k] * (2 if guidance.active and scale != 1.0 else 1)
        revealed.append(now)
        unknown = still
    return tokens, {"orders": orders, "revealed": torch.stack(revealed), "head_nfe": head_nfe, "head_steps": head_steps}


def decode_masked(generator: MaskedGenerator, cond: Conditioning, sampling: SamplingArgs,
                  rng: torch.Generator | None = None, progress: bool = False, *, guidance: Guidance | None = None,
                  num_iter: int = 64, cfg_schedule: Literal["linear", "constant"] = "linear",
                  step_schedule: tuple[int, int] | None = None, head_sampler: str | None = None,
                  **unknown) -> tuple[Tensor, int, dict]:
    """:data:`vistok.decoding.DECODERS` entry ``"masked"``: ``(tokens (b, n, d), nfe = num_iter, extras)``.

    The guidance scale is applied inside the diffusion head (MAR guides eps, not the generator output), ramped by
    ``cfg_schedule``.  ``temperature`` scales the head noise; ``top_k``/``top_p`` do not apply to a continuous head.
    ``step_schedule=(first, last)`` anneals the head's diffusion steps over the iterations (DiSA);
    ``head_sampler`` picks the head's sampler for this call (DiffLoss: ``"dpm"`` = DPM-Solver++(2M) for few steps).
    """
    if unknown:
        raise ValueError(f"decoder 'masked' got unknown option(s) {sorted(unknown)}; it takes num_iter, cfg_schedule, "
                         "step_schedule, head_sampler")
    no_logit_filters(sampling, "masked")
    tokens, extras = sample_masked(generator, cond, num_iter=num_iter, cfg_scale=(guidance or Guidance()).scale,
                                   cfg_schedule=cfg_schedule, temperature=sampling.temperature, rng=rng,
                                   progress=progress, step_schedule=step_schedule, head_sampler=head_sampler)
    return tokens, num_iter, extras
