"""Next-cell decoding for cell-autoregressive flow generators (xAR): per cell, integrate the flow from noise to a
clean cell, then feed that cell back as clean context.

    out = vistok.decoding.generate(gen, Conditioning(labels=y), decoder="cells", cfg_scale=2.7, num_steps=40, seed=0)
    out.tokens  # (B, N, D) continuous tokens, raster order of the grid;  out.nfe == num_cells * num_steps

Algorithm (xAR, arXiv 2502.20388; facts from OliverRensu/xAR ``models/xar.py::sample_tokens`` and
``models/sampler.py``; details and measurements in ``docs/xar.md``), for each cell c = 0 .. K-1 in raster order:
draw the cell's noise ``(B, k, D)``; integrate from t = 1 to 0 with ``num_steps`` velocity evaluations, the first of
which (c > 0) also feeds cell c-1 clean at t = 0 to (re)write its keys/values; guide with the cell's scale
``1 + (cfg - 1) c / (K - 1)`` (``cfg_schedule="linear"``, official) or ``cfg`` (``"constant"``).  Whenever
``cfg != 1`` the conditional and null batches are stacked in every pass, so the null cache is complete.

* ``method="sde"`` (default, the official sampler): Euler–Maruyama on the reverse SDE of the linear path (``g^2 = 2t``,
  score read off the velocity) over ``linspace(1, t_min, num_steps)``, then a mean step to 0; guidance mixes the
  drift; float64.  Random draws, in order (what parity with the official sampler needs): per cell one float32 normal
  for the noise, then ``num_steps - 1`` float64 normals.  Written out here: diffusers'
  ``FlowMatchEulerDiscreteScheduler`` has no such step (its ``stochastic_sampling`` is a different sampler).
* ``method="ode"``: Euler over ``linspace(1, 0, num_steps + 1)`` through diffusers' ``FlowMatchEulerDiscreteScheduler``
  (the official ``euler_sampler``); guidance mixes the velocity.

xAR has no temperature or top-k/top-p.  Guidance scales below 1 are applied as given (the official sampler ignores
them).  Legend: b batch, k tokens per cell, d token channels, g cells fed in one call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import Tensor

from vistok.decoding.guidance import Guidance
from vistok.decoding.sampling import SamplingArgs, annealed_steps
from vistok.interfaces import CellGenerator, Conditioning, check_choice, check_count
from vistok.progress import track

__all__ = ["cell_cfg_scales", "decode_cells"]


def cell_cfg_scales(cfg_scale: float, num_cells: int, schedule: str = "linear") -> list[float]:
    """Per-cell guidance scales: the official linear ramp from 1 (first cell) to ``cfg_scale`` (last), or constant."""
    check_choice("cfg_schedule", schedule, ("linear", "constant"))
    if schedule == "constant" or num_cells == 1:
        return [float(cfg_scale)] * num_cells
    return [(cfg_scale - 1) * c / (num_cells - 1.0) + 1 for c in range(num_cells)]


def _score_from_velocity(v: Tensor, x: Tensor, t: Tensor) -> Tensor:
    """Score of the linear path ``x_t = (1 - t) x0 + t eps`` from the velocity ``v = eps - x0`` (official form)."""
    ratio = (1 - t) / -1.0  # alpha_t / alpha_t'
    var = t**2 - ratio * t  # sigma_t^2 - ratio * sigma_t' * sigma_t  (= t)
    return (ratio * v - x) / var


def _sde_cell(velocity: Callable, x0: Tensor, num_steps: int, t_min: float, scale: float, guidance: Guidance,
              rng: torch.Generator | None) -> Tensor:
    """Euler–Maruyama from t = 1 to ``t_min``, then a mean step to 0.  x0 (b, k, d) -> clean cell, float64."""
    ts = torch.cat([torch.linspace(1.0, t_min, num_steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    x = x0.to(torch.float64)
    for i in range(num_steps):
        t, dt = ts[i], ts[i + 1] - ts[i]
        last = i == num_steps - 1
        eps = None if last else torch.randn(x.shape, generator=rng, dtype=torch.float64, device=x.device)
        v = velocity(x.float(), t, i == 0).to(torch.float64)  # (2b | b) k d
        diffusion = 2 * t
        drift = guidance.mix(v - 0.5 * diffusion * _score_from_velocity(v, guidance.double(x), t), scale)
        x = x + dt * drift if last else x + drift * dt + torch.sqrt(diffusion) * (eps * torch.sqrt(dt.abs()))
    return x


def _ode_cell(velocity: Callable, x0: Tensor, num_steps: int, scale: float, guidance: Guidance) -> Tensor:
    """Euler over t = linspace(1, 0, num_steps + 1) with diffusers' FlowMatchEulerDiscreteScheduler."""
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(sigmas=torch.linspace(1.0, 0.0, num_steps + 1)[:-1].tolist(), device=x0.device)
    x = x0
    for i, timestep in enumerate(scheduler.timesteps):
        v = guidance.mix(velocity(x, scheduler.sigmas[i], i == 0), scale)
        x = scheduler.step(v, timestep, x).prev_sample
    return x


@torch.no_grad()
def decode_cells(generator: CellGenerator, cond: Conditioning, sampling: SamplingArgs | None = None,
                 rng: torch.Generator | None = None, progress: bool = False, *, guidance: Guidance | None = None,
                 num_steps: int = 40, cfg_scale: float | None = None,
                 cfg_schedule: Literal["linear", "constant"] = "linear", method: Literal["sde", "ode"] = "sde",
                 t_min: float = 0.04, step_schedule: tuple[int, int] | None = None) -> tuple[Tensor, int, dict]:
    """Sample ``(B, N, D)`` continuous tokens cell by cell (see the module docstring).

    Args:
        generator, cond: a :class:`~vistok.interfaces.CellGenerator` (e.g. XARGenerator) and the conditions (batch B).
        sampling: only the defaults are accepted (xAR has no temperature or top-k/top-p).
        rng: random generator for the initial noise and the SDE increments (None: torch's global RNG).
        guidance: classifier-free guidance (its scale is the ``cfg_scale`` of the last cell); or give
            ``cfg_scale`` directly.
        num_steps: velocity evaluations per cell (official evaluation: 40 for xAR-B, 50 for L/H).
        cfg_scale: classifier-free guidance scale (1 = off); ``cfg_schedule``: ``"linear"`` ramp or ``"constant"``.
        method: ``"sde"`` (official Euler–Maruyama) or ``"ode"`` (Euler through diffusers).
        t_min: where the SDE hands over to the final deterministic step.
        step_schedule: ``(first, last)`` velocity evaluations, annealed linearly from the first cell to the last
            (DiSA, :func:`~vistok.decoding.sampling.annealed_steps`; the paper uses (50, 15) for xAR); replaces
            ``num_steps``.

    Returns:
        ``(tokens (B, N, D) raster order, nfe (sum of the cells' steps), {"cells": (B, K, k, D), "cfg_scales": [per
        cell], "steps": [per cell]})``.
    """
    if guidance is not None and cfg_scale is not None and cfg_scale != guidance.scale:
        raise ValueError(f"cfg_scale={cfg_scale} conflicts with the guidance scale {guidance.scale}")
    cfg_scale = guidance.scale if guidance is not None else 1.0 if cfg_scale is None else cfg_scale
    if not isinstance(generator, CellGenerator):
        raise ValueError("decoder 'cells' needs a cell-autoregressive generator (e.g. XARGenerator); use 'ar' or a "
                         "speculative decoder for token-by-token generators")
    check_count("num_steps", num_steps, hint=" (velocity evaluations per cell)")
    check_choice("method", method, ("sde", "ode"))
    if method == "sde" and not 0 < t_min < 1:
        raise ValueError(f"t_min must be in (0, 1), got {t_min}")
    if sampling is not None and (sampling.temperature != 1 or sampling.top_k or sampling.top_p not in (None, 1.0)):
        raise ValueError("xAR decoding has no temperature, top_k or top_p (its randomness is the flow's noise); "
                         "leave them at their defaults")
    scales = cell_cfg_scales(cfg_scale, generator.num_cells, cfg_schedule)
    steps = annealed_steps(step_schedule, num_steps, generator.num_cells)
    # every cell runs the stacked batch whenever any cell is guided, so the null cache is complete
    guidance = Guidance(cfg_scale if any(s != 1 for s in scales) else 1.0, generator)
    cache = guidance.new_cache(generator, cond)
    b, k, d, device = cond.batch_size, generator.cell_tokens, generator.token_dim, cache.lengths.device
    cells: list[Tensor] = []
    for c in track(range(generator.num_cells), progress, desc="cells"):
        context = cells[-1] if cells else None

        def velocity(x: Tensor, t: Tensor, first: bool, c=c, context=context) -> Tensor:
            """Noisy cell x (b, k, d) at time t -> velocity (b or 2b, k, d); the first call also feeds the context."""
            feed = torch.cat([context, x], dim=1) if first and context is not None else x
            times = torch.full((feed.shape[1] // k,), float(t), dtype=torch.float64, device=device)
            times[:-1] = 0.0  # the context cell is clean
            feed = guidance.double(feed)
            positions = torch.arange((c + 1) * k - feed.shape[1], (c + 1) * k, device=device)
            return generator.step(feed, positions, cache, times.expand(feed.shape[0], -1))[:, -k:]

        x0 = torch.randn(b, k, d, generator=rng, device=device)
        if method == "sde":
            cell = _sde_cell(velocity, x0, steps[c], t_min, scales[c], guidance, rng)
        else:
            cell = _ode_cell(velocity, x0, steps[c], scales[c], guidance)
        cells.append(cell.float())
    stacked = torch.stack(cells, dim=1)  # b K k d
    tokens = generator.to_raster(stacked.flatten(1, 2))
    return tokens, sum(steps), {"cells": stacked, "cfg_scales": scales, "steps": steps}
