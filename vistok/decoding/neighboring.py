"""Neighbouring (anti-diagonal) parallel decoding for NAR: ``H + W - 1`` forward passes for an ``H x W`` grid.

Paper: He et al., "Neighboring Autoregressive Modeling for Efficient Visual Generation", arXiv 2503.10696
(reference: github.com/ThisisBillhe/NAR, ``NAR-images/autoregressive/models/generate.py``).

Works over any generator with the *neighbour protocol* (:class:`vistok.generators.nar.NARGenerator`):

* ``grid``: ``(H, W)``;
* ``new_cache(cond) -> KVCache``;
* ``step_heads(inputs, positions, cache) -> (right, down)``: ``inputs`` (b, l) are grid tokens ``positions - 1``
  (position 0 is the start/condition slot); ``right`` (b, l, v) predicts each fed token's right neighbour,
  ``down`` (b, l, v) its lower neighbour (None when the grid has one row).

Pass ``d`` feeds the tokens of anti-diagonal ``d - 1`` (the start slot for ``d = 0``) in increasing row order and
samples all of diagonal ``d`` at once.  A token with both neighbours decoded takes the mean of the two heads'
logits, first-row tokens the right head, first-column tokens the down head, the top-left token the mean of both
heads at the start slot.  Guidance (a :class:`~vistok.decoding.sampling.Guided` wrapper from
:func:`vistok.decoding.generate`) mixes the *combined* logits, then temperature / top-k / top-p apply per token.

Legend: b batch, k tokens of one diagonal, l fed tokens, v vocab.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vistok.decoding.sampling import Guided, SamplingArgs, sample_probs
from vistok.interfaces import Conditioning


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
def decode_nar(generator, cond: Conditioning, sampling: SamplingArgs, rng: torch.Generator | None = None,
               progress: bool = False, cfg_interval: int = -1,
               record: bool = False) -> tuple[Tensor, int, dict]:
    """Sample ``(B, H * W)`` raster tokens one anti-diagonal per forward pass.

    Args:
        generator: a neighbour-protocol generator, or a ``Guided`` wrapper of one (classifier-free guidance).
        cond: conditions, batch B.
        sampling: temperature / top-k / top-p (temperature 0 = greedy).
        rng: random generator for sampling.
        cfg_interval: stop guiding once more than this many tokens are decoded (-1: guide throughout).
        record: keep per-pass inputs, raw heads and combined pre-guidance logits in ``extras["steps"]``.

    Returns:
        ``(tokens, nfe, extras)``: tokens (B, N), ``nfe = H + W - 1``, ``extras["schedule"]`` the raster indices
        decoded at each pass.
    """
    guided = isinstance(generator, Guided)
    net, scale = (generator.inner, generator.scale) if guided else (generator, 1.0)
    if not (hasattr(net, "step_heads") and hasattr(net, "grid")):
        raise ValueError(f"decoder 'nar' needs a neighbouring-AR generator (grid + step_heads, e.g. NARGenerator); "
                         f"{type(net).__name__} has none: use decoder='ar'")
    if guided and getattr(net, "cond_dropout", 1.0) <= 0:
        raise ValueError("cfg_scale != 1 needs a null condition learned with cond_dropout > 0; this generator was "
                         "built with cond_dropout=0, use cfg_scale=1.0")
    h, w = net.grid
    cache = generator.new_cache(cond)
    b, copies = cond.batch_size, 2 if guided else 1
    device = cache.lengths.device
    tokens = torch.zeros(b, h * w, dtype=torch.long, device=device)
    schedule = diagonal_schedule(h, w)
    steps, log, done = enumerate(schedule), [], 0
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, total=len(schedule), desc="nar", leave=False)
    for d, cells in steps:
        if d == 0:  # the start slot predicts the top-left token with both heads
            fed, from_right, from_down = [-1], [0], [0]
        else:  # diagonal d - 1 predicts diagonal d
            fed = schedule[d - 1]
            slot = {q: j for j, q in enumerate(fed)}
            from_right = [slot[q - 1] if q % w else -1 for q in cells]
            from_down = [slot[q - w] if q >= w else -1 for q in cells]
        positions = torch.tensor(fed, device=device).add(1).expand(b * copies, -1)
        inputs = tokens[:, [max(q, 0) for q in fed]].repeat(copies, 1)
        right, down = net.step_heads(inputs, positions, cache)
        logits = neighbour_logits(right, down, from_right, from_down)  # (b * copies) k v
        if guided:
            c, u = logits.chunk(2)
            mixed = u + scale * (c - u) if cfg_interval < 0 or done <= cfg_interval else c
        else:
            mixed = logits
        probs = sampling.probs(mixed)
        tokens[:, cells] = probs.argmax(-1) if sampling.greedy else sample_probs(probs, rng)
        done += len(cells)
        if record:
            log.append(dict(cells=cells, positions=positions, inputs=inputs, right=right, down=down, logits=logits))
    extras = {"schedule": schedule}
    if record:
        extras["steps"] = log
    return tokens, len(schedule), extras
