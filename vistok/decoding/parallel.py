"""Row-parallel Jacobi decoding over the 2-D token grid (PJD).  **Lossy** unless ``lag >= G - 1`` (row length G).

Liao, Li, Jian, Wang, "Parallel Jacobi Decoding for Fast Autoregressive Image Generation", CVPR 2026,
arXiv 2606.05703 (project page boyaliao.github.io/PJD; facts only, written from the paper's description).  The
next row starts early as in ZipAR (He et al., arXiv 2412.04062); rows are verified like SJD (:mod:`.jacobi`).

A raster-order causal generator over an ``(H, G)`` grid: token ``(r, c)`` is position ``r * G + c`` (``N = H G``).
Per sample, row ``r`` has ``acc[r]`` accepted tokens (a prefix of the row) and drafts for the rest once it has
*started*.  With ``follow``, token ``(r, c)`` is only worked on once its context holds the row above up to column
``c + lag - 1`` (``lag = 1``: the token right above it; ``lag = 0``: up to its left).  A token enters the network
as the *input* of the next position, so that takes ``min(c + lag + 1, G)`` accepted tokens in row ``r - 1``: the
rows advance as a wavefront, each ``lag + 1`` columns behind the one above.  ``follow=False``: a row starts once the
row above has ``min(lag + 1, G)`` accepted tokens and then runs free to its end.

One pass (one ``generator.step``, one NFE) for every sample:

1. each active row (started, with a position it may work on; the top ``rows`` of them) feeds a window of
   ``window`` positions from its first unaccepted one, clipped where the row must stop.  The input of position
   ``p`` is the current token at ``p - 1``; for a row's first position, the row above's last token (accepted, or
   its draft);
2. row-causal attention (``KVCache.visible``): a query sees the *accepted* tokens before it, in any row, and its
   own row's window before it; the drafts of other rows are hidden;
3. every row is verified like SJD, left to right in its window: draft ``x`` drawn from ``q`` is accepted with
   probability ``min(1, p(x) / q(x))``; at the first rejection the token is drawn from ``norm(max(p - q, 0))``.
   So each active row accepts 1..window tokens per pass.  The outputs after the rejection become the row's next
   drafts with ``q = p`` (``coupled=True``: MC-SJD's maximal coupling keeps a draft that passes against the new
   ``p``, else redraws it from the residual);
4. initial drafts (``q`` one-hot on the draft): ``init="vertical"`` copies the current token above (refreshed until
   the window reaches it; uniform in row 0), ``init="random"`` draws uniform ids.

What is relaxed (``lag < G``): a token is drawn given only the accepted tokens before it, so the not yet accepted
tail of the rows above is missing from its context (with ``follow``: the row above from column ``c + lag`` on, and
what is missing further up); a row's first input may be a draft of the row above's last token;
accepted tokens are never re-verified when the context grows, and their cached keys/values keep the context they
were computed with.  ``lag >= G - 1``: a row starts only once the row above is complete, every mask is causal and
the decoder is lossless (SJD / MC-SJD with windows confined to rows); at temperature 0 it returns greedy AR.

NFE counts ``generator.step`` calls (CFG's doubled batch once).  Extras: ``accepted_hist`` (index ``k``: (sample,
pass) pairs that accepted ``k`` tokens over all rows), ``nfe_per_sample``, ``mean_accepted``, ``mean_active_rows``,
``window``, ``lag``, ``rows``, ``grid``, ``init``, ``coupled``, ``follow``, ``lossless``.

Legend: b batch, a active-row slots, w window, l = a * w queries, v vocab, n tokens, h rows, g row length.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from vistok.decoding import jacobi
from vistok.decoding.guidance import Guidance
from vistok.decoding.sampling import SamplingArgs, draw
from vistok.interfaces import CausalGenerator, Conditioning, check_choice, check_count
from vistok.progress import progress_bar

__all__ = ["decode_pjd", "token_grid_shape"]

INITS = ("vertical", "random")


def token_grid_shape(generator, grid) -> tuple[int, int]:
    """``(H, G)`` rows x row length: ``grid`` if given, else ``generator.grid``, else a square ``seq_len``."""
    n = int(generator.seq_len)
    grid = grid if grid is not None else getattr(generator, "grid", None)
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"decoder 'pjd' needs the token grid: {n} tokens is not a square, pass grid=(rows, "
                             "row_length) (e.g. tokenizer.grid)")
        return side, side
    if (not isinstance(grid, (tuple, list)) or len(grid) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in grid)):
        raise ValueError(f"grid must be (rows, row_length), two ints >= 1, got {grid!r}")
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {tuple(grid)} has {grid[0] * grid[1]} cells but the generator makes {n} tokens")
    return int(grid[0]), int(grid[1])


@torch.no_grad()
def decode_pjd(generator: CausalGenerator, cond: Conditioning, sampling: SamplingArgs,
               rng: torch.Generator | None = None, progress: bool = False, *, guidance: Guidance | None = None,
               grid: tuple[int, int] | None = None, window: int = 8, lag: int = 2, rows: int | None = None,
               init: Literal["vertical", "random"] = "vertical", coupled: bool = True, follow: bool = True,
               row_mask: bool = True, **unknown) -> tuple[Tensor, int, dict]:
    """Row-parallel Jacobi decoding (PJD, arXiv 2606.05703).  **NOT lossless** unless ``lag >= G - 1``.

    Args:
        grid: ``(H, G)`` rows x row length of the raster token order (``H * G = generator.seq_len``); default
            ``generator.grid``, else a square grid.  Pass ``tokenizer.grid`` for a 2-D tokenizer.
        window: positions fed per active row and pass (``>= 1``; capped at the row's remaining length).
        lag: tokens of the row above, from the one right above on, that a token's context must hold before it is
            worked on (``follow``; else before its row starts); ``0 .. G``, ``>= G - 1`` = exact (lossless).
        rows: most rows iterated in one pass (top first; ``None`` = all).  A pass feeds up to ``rows * window``
            positions.
        init: initial drafts, ``"vertical"`` (the token above) or ``"random"`` (uniform ids).
        coupled: redraw rejected rows' drafts by maximal coupling (MC-SJD) instead of fresh draws (SJD).
        follow: keep every row ``lag + 1`` columns behind the row above (else a started row runs free to its end).
        row_mask: PJD's row-causal mask (other rows' drafts hidden); False: a query also sees the positions the other
            rows feed in the same pass (their current drafts), i.e. the rows are Jacobi-iterated jointly.

    Returns ``(tokens (B, N), nfe, extras)``; see the module docstring.
    """
    if unknown:
        raise ValueError(f"decoder 'pjd' got unknown option(s) {sorted(unknown)}; it takes grid=, window=, lag=, "
                         "rows=, init=, coupled=, follow=, row_mask=")
    v = jacobi.check_generator(generator, "pjd")
    h, g = token_grid_shape(generator, grid)
    check_count("window", window, hint=" (positions per active row and pass)")
    check_count("lag", lag, 0, f" (tokens of the row above in a token's context; >= {g - 1} = lossless)")
    if lag > g:
        raise ValueError(f"lag must be <= the row length {g} (lag >= {g - 1} is the exact decoder), got {lag}")
    if rows is not None:
        check_count("rows", rows, hint=" (rows iterated per pass; None = all)")
    check_choice("init", init, INITS)
    for name, flag in (("coupled", coupled), ("follow", follow), ("row_mask", row_mask)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be a bool, got {flag!r}")
    guidance = guidance or Guidance()
    cache = guidance.new_cache(generator, cond)
    b, n, device = cond.batch_size, h * g, cache.lengths.device
    w, rows = min(window, g), min(rows or h, h)
    row_of = torch.arange(n, device=device) // g  # n
    col_of = torch.arange(n, device=device) % g
    same_row = row_of[:, None] == row_of[None]  # n n
    cols, ids = torch.arange(w, device=device), torch.arange(h, device=device)
    # tokens and drafts, plus a trash column n that padded queries write to
    seq = torch.zeros(b, n + 1, dtype=torch.long, device=device)
    modelled = torch.zeros(b, n + 1, dtype=torch.bool, device=device)  # the draft came from the model
    src = torch.full((b, n + 1), -1, dtype=torch.long, device=device)  # its query in the previous pass (else -1)
    acc = torch.zeros(b, h, dtype=torch.long, device=device)  # accepted tokens per row
    started = torch.zeros(b, h, dtype=torch.bool, device=device)
    p_prev = torch.zeros(b, 1, v, device=device)
    hist = torch.zeros(rows * w + 1, dtype=torch.long, device=device)
    nfe, nfe_per_sample, active_rows = 0, torch.zeros(b, dtype=torch.long, device=device), 0
    bar = progress_bar(progress, total=n, desc="pjd")
    while True:
        # -- how far each row may go: `lag + 1` columns behind the accepted frontier of the row above, so that a
        #    token's context holds that row up to column c + lag - 1 (all of the row once the row above is complete;
        #    follow=False: all of it once the row has started)
        above = torch.cat([torch.full_like(acc[:, :1], g), acc[:, :-1]], 1)
        limit = torch.where(above >= g, g, (above - lag).clamp(min=0))
        ready = (limit > 0) & ~started
        if not follow:
            limit = torch.where(started | ready, g, limit)
        # -- initial drafts: for the whole row when it starts (random), or the current token above (vertical)
        fresh = ready[:, row_of] & ~modelled[:, :n]
        started |= ready
        accepted = col_of < acc[:, row_of]  # b n
        if init == "random":
            seq[:, :n] = torch.where(fresh, torch.randint(v, (b, n), generator=rng, device=device), seq[:, :n])
        else:
            undrafted = started[:, row_of] & ~accepted & ~modelled[:, :n] & (fresh | (row_of > 0))
            top = torch.randint(v, (b, g), generator=rng, device=device) if bool(fresh[:, :g].any()) else seq[:, :g]
            seq[:, :n] = torch.where(undrafted, torch.cat([top, seq[:, : n - g]], 1), seq[:, :n])
        active = started & (acc < limit)  # b h
        live = active.any(1)
        if not bool(live.any()):
            break
        # -- the queries: `a` row slots of `w` positions, top active rows first; padding repeats a real query
        count = active.sum(1)
        a = min(rows, int(count.max()))
        slot_row = torch.where(active, ids, h + ids).argsort(1)[:, :a]  # b a
        slot_ok = torch.arange(a, device=device) < count[:, None]
        start, stop = acc.gather(1, slot_row), limit.gather(1, slot_row)  # b a
        col = start[..., None] + cols  # b a w
        valid = (slot_ok[..., None] & (col < stop[..., None])).flatten(1)  # b l
        pos = (slot_row[..., None] * g + col).flatten(1)
        pad = torch.where(live, pos[:, 0], n - 1)
        pos = torch.where(valid, pos, pad[:, None])
        # -- one forward pass; row-causal attention: accepted tokens anywhere, the own row's window
        if row_mask:
            seen = accepted[:, None, :] | same_row
        else:  # the other rows' windows of this pass too (their current drafts)
            fed = torch.zeros(b, n + 1, dtype=torch.bool, device=device).scatter_(1, torch.where(valid, pos, n), True)
            seen = (accepted | fed[:, :n])[:, None, :].expand(-1, n, -1)
        cache.visible = guidance.double(seen)
        inputs = seq.gather(1, (pos - 1).clamp(min=0))
        p = sampling.probs(guidance.mix(guidance.step(generator, inputs, pos, cache)))  # b l v
        cache.visible = None
        # -- the distribution q of each draft: an output of the previous pass, or one-hot for initial drafts
        x, s = seq.gather(1, pos), src.gather(1, pos)
        q = p_prev.gather(1, s.clamp(min=0)[..., None].expand(-1, -1, v)) * (s >= 0)[..., None]
        q = q.scatter_add(-1, x[..., None], (s < 0)[..., None].to(q.dtype))
        # -- SJD verification per row slot
        r = (torch.full(x.shape, 0.5, device=device) if sampling.greedy
             else torch.rand(x.shape, generator=rng, device=device))
        p_x, q_x = p.gather(-1, x[..., None])[..., 0], q.gather(-1, x[..., None])[..., 0]
        passed = valid & (r < jacobi.accept_ratio(p_x, q_x))
        first = passed.view(b, a, w).long().cumprod(-1).sum(-1)  # b a: first failing column (w if none)
        span = (stop - start).clamp(max=w) * slot_ok
        gained = torch.minimum(first + 1, span)
        first = first[..., None].expand(-1, -1, w).flatten(1)
        at, after = cols.repeat(a) == first, cols.repeat(a) > first
        new = draw(torch.where((at | (after & coupled))[..., None], jacobi._residual(p, q), p), sampling, rng)
        if coupled:
            new = torch.where(after & passed, x, new)
        target = torch.where(valid, pos, n)
        seq.scatter_(1, target, torch.where(at | after, new, x))
        modelled.scatter_(1, target, after | modelled.gather(1, target))
        src = torch.full_like(src, -1).scatter_(1, target, torch.where(after, torch.arange(a * w, device=device), -1))
        acc.scatter_add_(1, slot_row, gained)
        p_prev = p
        # -- accounting
        nfe += 1
        nfe_per_sample += live.long()
        active_rows = active_rows + (slot_ok & live[:, None]).sum()  # tensors: no host read per pass
        hist.index_add_(0, gained.sum(1), live.long())
        if progress:
            bar.update(int(acc.sum(1).min()) - bar.n)
    bar.close()
    counts = hist.tolist()
    lanes = max(1, sum(counts))
    return seq[:, :n], nfe, {
        "decoder": "pjd", "window": w, "lag": lag, "rows": rows, "grid": (h, g), "init": init, "coupled": coupled,
        "follow": follow, "row_mask": row_mask,
        "lossless": lag >= g - 1 or h == 1, "accepted_hist": counts, "nfe_per_sample": nfe_per_sample.tolist(),
        "mean_accepted": sum(k * c for k, c in enumerate(counts)) / lanes, "mean_active_rows": int(active_rows) / lanes}
