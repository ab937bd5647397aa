"""Neighbouring (anti-diagonal) parallel decoding for NAR: ``H + W - 1`` forward passes for an ``H x W`` grid.

Paper: He et al., "Neighboring Autoregressive Modeling for Efficient Visual Generation", arXiv 2503.10696
(reference: github.com/ThisisBillhe/NAR, ``NAR-images/autoregressive/models/generate.py``).

Works over any :class:`vistok.interfaces.NeighbourGenerator`.  Pass ``d`` feeds the tokens of anti-diagonal
``d - 1`` (the start slot for ``d = 0``) in increasing row order and samples all of diagonal ``d`` at once from the
heads' logits, combined as :mod:`vistok.generators.nar` describes.  Guidance mixes the *combined* logits, then
temperature / top-k / top-p apply per token.

Legend: b batch, k tokens of one diagonal, l fed tokens, v vocab.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vistok.decoding.guidance import Guidance
from vistok.decoding.sampling import SamplingArgs, draw
from vistok.interfaces import Conditioning, NeighbourGenerator
from vistok.progress import track


def diagonal_schedule(height: int, width: int) -> list[list[int]]:
    """Raster indices of each anti-diagonal ``d = row + col``, rows increasing: ``height + width - 1`` groups."""
    return [[r * width + d - r for r in range(max(0, d - width + 1), min(d, height - 1) + 1)]
            for d in range(height + width - 1)]


def neighbour_logits(right: Tensor, down: Tensor | None, from_right: list[int], from_down: list[int]) -> Tensor:
    """Combine head outputs (b, l, v) into logits (b, k, v) for ``k`` targets.

    ``from_right[j]`` / ``from_down[j]`` index the fed slot whose right / down head predicts target ``j`` (-1: none).
    Targets with both take the mean.
    """
    ir = torch.tensor(from_right, device=right.device)
    lr = right[:, ir.clamp(min=0)]
    if down is None:
        if bool((ir < 0).any()):
            raise ValueError("a target without a left neighbour needs the down head, which this generator lacks")
        return lr
    ib = torch.tensor(from_down, device=right.device)
    lb = down[:, ib.clamp(min=0)]
    has_r, both = (ir >= 0)[:, None], ((ir >= 0) & (ib >= 0))[:, None]
    return torch.where(both, (lr + lb) / 2, torch.where(has_r, lr, lb))


@torch.no_grad()
def decode_nar(generator: NeighbourGenerator, cond: Conditioning, sampling: SamplingArgs,
               rng: torch.Generator | None = None, progress: bool = False, *, guidance: Guidance | None = None,
               cfg_interval: int = -1, record: bool = False) -> tuple[Tensor, int, dict]:
    """Sample ``(B, H * W)`` raster tokens one anti-diagonal per forward pass.

    Args:
        generator, cond, sampling, rng, guidance: as for every decoder (:mod:`vistok.decoding.api`).
        cfg_interval: stop guiding once more than this many tokens are decoded (-1: guide throughout).
        record: keep per-pass inputs, raw heads and combined pre-guidance logits in ``extras["steps"]``.

    Returns:
        ``(tokens, nfe, extras)``: tokens (B, N), ``nfe = H + W - 1``, ``extras["schedule"]`` the raster indices
        decoded at each pass.
    """
    if not isinstance(generator, NeighbourGenerator):
        raise ValueError(f"decoder 'nar' needs a neighbouring-AR generator (grid + step_heads, e.g. NARGenerator); "
                         f"{type(generator).__name__} has none: use decoder='ar'")
    guidance = guidance or Guidance()
    h, w = generator.grid
    cache = guidance.new_cache(generator, cond)
    b, device = cond.batch_size, cache.lengths.device
    tokens = torch.zeros(b, h * w, dtype=torch.long, device=device)
    schedule = diagonal_schedule(h, w)
    log, done = [], 0
    for d, cells in track(enumerate(schedule), progress, total=len(schedule), desc="nar"):
        if d == 0:  # the start slot predicts the top-left token with both heads
            fed, from_right, from_down = [-1], [0], [0]
        else:  # diagonal d - 1 predicts diagonal d
            fed = schedule[d - 1]
            slot = {q: j for j, q in enumerate(fed)}
            from_right = [slot[q - 1] if q % w else -1 for q in cells]
            from_down = [slot[q - w] if q >= w else -1 for q in cells]
        positions = guidance.double(torch.tensor(fed, device=device).add(1).expand(b, -1))
        inputs = guidance.double(tokens[:, [max(q, 0) for q in fed]])
        right, down = generator.step_heads(inputs, positions, cache)
        logits = neighbour_logits(right, down, from_right, from_down)  # (b * copies) k v
        mixed = guidance.mix(logits, None if cfg_interval < 0 or done <= cfg_interval else 1.0)
        tokens[:, cells] = draw(sampling.probs(mixed), sampling, rng)
        done += len(cells)
        if record:
            log.append(dict(cells=cells, positions=positions, inputs=inputs, right=right, down=down, logits=logits))
    extras = {"schedule": schedule}
    if record:
        extras["steps"] = log
    return tokens, len(schedule), extras
