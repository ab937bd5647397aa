"""Speculative Jacobi decoding: several tokens per generator forward pass, verified by speculative sampling.

* :func:`decode_sjd` -- SJD, Teng et al., "Accelerating Auto-regressive Text-to-Image Generation with
  Training-free Speculative Jacobi Decoding", arXiv 2410.01699.  **Lossless.**
* :func:`decode_mcsjd` -- MC-SJD / speculative coupled decoding, So et al., arXiv 2510.24211: SJD whose
  drafts are redrawn by a *maximal coupling* at every window position (this is also SJD-PAC's "adaptive
  continuation"), or with ``coupling="gumbel"`` by Gumbel-max with noise fixed per position (SCD's other coupling).
  ``proactive=K``: proactive drafting after SJD-PAC (Kang et al., arXiv 2603.18599, code KangJialiang/SJD-PAC), K
  candidates for the first open position as K rows of one forward pass.  **Lossless in every option** (proofs and
  tests: ``docs/lossless.md``).
* The relaxed (lossy) acceptance rules GSD and LANTERN live in :mod:`vistok.decoding.grouped` and share the loop.

One iteration (one ``generator.step``, one NFE) per sample with ``a`` accepted tokens:

1. the window covers token positions ``a .. a + W - 1`` (shifted left to end at ``N - 1``; accepted positions in it
   are re-fed and ignored); its inputs are ``[last accepted token, d_a, .., d_{a+W-2}]``;
2. output ``j`` is the processed distribution ``p`` (``sampling.probs``: CFG, temperature, top-k, top-p) of the token
   at ``a + j`` given the prefix and the drafts before it;
3. drafts are verified left to right: draft ``x`` drawn from ``q`` is accepted with probability
   ``min(1, p(x) / q(x))``; at the first rejection the token is drawn from ``norm(max(p - q, 0))`` and verification
   stops.  A position without a draft (the *bonus* token) counts as a rejection with ``q = 0``, so 1..W tokens are
   accepted per pass;
4. the outputs after the rejection become the next drafts, each kept with the full ``q`` it was drawn from (SJD).
   MC-SJD keeps the old draft there when it passes the accept test against the new ``p`` and otherwise draws from
   the residual: the draft is still distributed as ``p`` but changes only with probability ``TV(q, p)``;
5. the window is refilled with initial drafts: ``init="random"`` (uniform ids, ``q`` one-hot on the draft) or
   ``init="repeat"`` (a copy of the token before them; token 0 at the very start).

Samples accept ragged numbers of tokens (per-sample ``cache.truncate``), so a batch decodes as its samples would
one by one; at temperature 0 the result is greedy AR.  NFE counts ``generator.step`` calls (CFG's doubled batch
once, a prefilled text prefix not).  Extras: ``accepted_hist`` (index ``k``: (sample, pass) pairs that accepted
``k`` tokens), ``nfe_per_sample``, ``mean_accepted``, ``window``, ``lossless``, ``positions_per_pass`` (per sample;
mcsjd also ``coupling`` and ``proactive``).

Legend: b batch, w window, v vocab, n tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from vistok.decoding.guidance import Guidance
from vistok.decoding.sampling import SamplingArgs, draw
from vistok.interfaces import CausalGenerator, Conditioning, KVCache, check_choice, check_count
from vistok.progress import progress_bar

__all__ = ["DraftWindow", "accept_ratio", "decode_mcsjd", "decode_sjd", "jacobi_decode"]

INITS = ("random", "repeat")
COUPLINGS = ("maximal", "gumbel")


def accept_ratio(p_x: Tensor, q_x: Tensor) -> Tensor:
    """Speculative-sampling acceptance ratio ``p(x) / q(x)`` (accept when ``uniform < ratio``).

    Module-level so that tests can swap in a deliberately wrong rule and check that the exactness test fails.
    """
    return p_x / q_x.clamp_min(1e-30)


def _residual(p: Tensor, q: Tensor) -> Tensor:
    """Where a rejected draft's token is drawn from: ``norm(max(p - q, 0))`` (``p`` itself if that is empty).

    Module-level so that tests can swap in a deliberately wrong residual and check that the exactness test fails.
    """
    resid = (p - q).clamp(min=0)
    mass = resid.sum(-1, keepdim=True)
    return torch.where(mass > 1e-12, resid / mass.clamp_min(1e-30), p)


def _standard_ratio(p: Tensor, q: Tensor, x: Tensor) -> Tensor:
    return accept_ratio(p.gather(-1, x[..., None])[..., 0], q.gather(-1, x[..., None])[..., 0])


def gumbel_noise(shape: tuple[int, ...], rng: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard Gumbel noise ``-log(-log U)`` of ``shape``: ``coupling="gumbel"`` draws one per (sample, position,
    id) before decoding and keeps it for every pass.

    Module-level so that tests can swap in deliberately wrong noise and check that the exactness test fails.
    """
    u = torch.rand(shape, generator=rng, device=device).clamp_min(1e-30)
    return -torch.log(-torch.log(u))


def _multi_draft(p: Tensor, q: Tensor, cand: Tensor, r: Tensor, sampling: SamplingArgs,
                 rng: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """Recursive rejection sampling of ``k`` candidates drawn from ``q`` one after the other *without replacement*
    (multi-draft speculative sampling: Miao et al., SpecInfer, arXiv 2305.09781; without replacement: Jeon et al.,
    arXiv 2402.14160).  With ``q_j`` = ``q`` without the candidates before ``j``, renormalised, candidate ``j`` is
    accepted with probability ``min(1, t_j(c) / q_j(c))`` (``uniform r[:, j] < ratio``), where ``t_1 = p`` and
    ``t_{j+1} = norm(max(t_j - q_j, 0))``; when all ``k`` are rejected the token is drawn from ``t_{k+1}``.  A
    candidate outside the support of ``q_j`` (``q`` exhausted) is skipped.  The token is distributed as ``p``.

    p, q (b, v); cand, r (b, k) -> ``(winner (b,), hit (b,), token (b,))``: the index of the accepted candidate (0 if
    none), whether one was accepted, and the token.
    """
    hit = torch.zeros(len(cand), dtype=torch.bool, device=cand.device)
    winner = torch.zeros_like(cand[:, 0])
    target, left = p, q
    for j in range(cand.shape[1]):
        c = cand[:, j : j + 1]
        mass = left.sum(1, keepdim=True)
        qj = left / mass.clamp_min(1e-30)
        valid = (mass[:, 0] > 1e-12) & (qj.gather(1, c)[:, 0] > 0)
        ok = ~hit & valid & (r[:, j] < accept_ratio(target.gather(1, c)[:, 0], qj.gather(1, c)[:, 0]))
        winner, hit = torch.where(ok, j, winner), hit | ok
        target = torch.where(valid[:, None], _residual(target, qj), target)
        left = left.scatter(1, c, 0.0)
    return winner, hit, torch.where(hit, cand.gather(1, winner[:, None])[:, 0], draw(target, sampling, rng))


def check_generator(generator, name: str, *, continuous: bool = False) -> int | None:
    """Raise a ValueError naming the decoder to use unless ``generator`` is causal and makes discrete token ids
    (return the vocab size) or, with ``continuous``, continuous tokens."""
    kind = getattr(generator, "kind", None)
    if continuous and kind != "continuous":
        raise ValueError(f"decoder {name!r} samples continuous tokens from a diffusion head, but this generator is "
                         f"{kind or 'not a vistok generator'!r}; for discrete token ids use decoder='sjd' or 'mcsjd' "
                         "(speculative, lossless) or 'ar'")
    if not continuous and kind == "continuous":
        raise ValueError(f"decoder {name!r} verifies discrete token ids, but this generator is continuous; use "
                         "decoder='csd' (continuous speculative decoding) or decoder='ar' for causal continuous "
                         "generators such as mar_ar_tiny, or the generator's own default decoder")
    if not (isinstance(generator, CausalGenerator) and generator.is_causal):
        raise ValueError(f"decoder {name!r} needs a causal generator (new_cache + step, is_causal=True), or use its "
                         f"own decoder; {type(generator).__name__} is not causal: use decoder="
                         f"{getattr(generator, 'default_decoder', 'ar')!r}")
    if not (continuous or getattr(generator, "vocab_size", None)):
        raise ValueError(f"decoder {name!r} needs generator.vocab_size (the number of token ids)")
    return None if continuous else int(generator.vocab_size)


def check_options(name: str, window, init: str, inits: tuple[str, ...], unknown: dict, known: str) -> None:
    """Raise a ValueError for unknown options, a ``window`` that is not an int >= 1 or an ``init`` not in ``inits``."""
    if unknown:
        raise ValueError(f"decoder {name!r} got unknown option(s) {sorted(unknown)}; it takes {known}")
    check_count("window", window, hint=" (tokens drafted per forward pass; window=1 is plain AR: decoder='ar')")
    check_choice("init", init, inits)


class DraftWindow:
    """The per-sample window bookkeeping of the speculative loops (SJD and the relaxed rules here, CSD in
    :mod:`vistok.decoding.continuous`).  Sample ``b`` has ``acc[b]`` tokens accepted and model drafts in
    ``[acc[b], front[b])``; a pass covers positions ``start + 0 .. w - 1``, ``start = min(acc, n - w)``."""

    def __init__(self, b: int, n: int, window: int, device: torch.device, name: str, progress: bool):
        self.n, self.w, self.name, self.progress = n, min(window, n), name, progress
        self.cols = torch.arange(self.w, device=device)[None]  # 1 w
        self.acc = torch.zeros(b, dtype=torch.long, device=device)
        self.front = torch.zeros_like(self.acc)
        self.hist = torch.zeros(self.w + 1, dtype=torch.long, device=device)
        self.nfe_per_sample, self.nfe = torch.zeros_like(self.acc), 0
        self.bar = progress_bar(progress, total=n, desc=name)

    def passes(self) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """``(start (b,), pos (b, w), fresh (b, w), drafted (b, w))`` per pass until every sample is complete:
        ``fresh`` marks inputs without a draft yet (``[front, start + w - 1)``), ``drafted`` the model's drafts."""
        while bool((active := self.acc < self.n).any()):
            self.active = active
            start = self.acc.clamp(max=self.n - self.w)
            pos = start[:, None] + self.cols
            fresh = (pos >= self.front[:, None]) & (pos < (start + self.w - 1)[:, None])
            self.nfe += 1
            self.nfe_per_sample += active.long()
            yield start, pos, fresh, (pos >= self.acc[:, None]) & (pos < self.front[:, None])
        self.bar.close()

    def accept(self, start: Tensor, first: Tensor, cache: KVCache, copies: int = 1) -> None:
        """Accept the columns before ``first`` (b,) (the first failing one, ``w`` if none) and the token drawn there;
        roll ``cache`` back to the accepted lengths (``copies`` consecutive cache rows per sample)."""
        new_acc = torch.where(first < self.w, start + first + 1, start + self.w)
        self.hist.index_add_(0, new_acc - self.acc, self.active.long())  # (a bincount would read the device)
        if self.progress:
            self.bar.update(int(new_acc.min()) - int(self.acc.min()))
        self.acc, self.front = new_acc, start + self.w
        cache.truncate(new_acc.repeat_interleave(copies) if copies > 1 else new_acc)

    def extras(self, **more) -> dict:
        counts = self.hist.tolist()
        return {"decoder": self.name, "window": self.w, **more, "accepted_hist": counts,
                "nfe_per_sample": self.nfe_per_sample.tolist(),
                "mean_accepted": sum(k * c for k, c in enumerate(counts)) / max(1, sum(counts))}


@torch.no_grad()
def jacobi_decode(generator, cond: Conditioning, sampling: SamplingArgs, rng: torch.Generator | None, *,
                  name: str, window: int, init: str, coupled: bool,
                  ratio: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None, lossless: bool = True,
                  progress: bool = False, guidance: Guidance | None = None, coupling: str = "maximal",
                  proactive: int | tuple[int, ...] = 1,
                  match: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
                  match_candidates: bool = False) -> tuple[Tensor, int, dict]:
    """The shared speculative Jacobi loop (see the module docstring).

    Args:
        coupled: redraw the drafts after the first rejection by a coupling (MC-SJD) instead of independently (SJD).
        ratio: ``(p, q, x) -> (b, w)`` acceptance ratio of drafts ``x`` (``b, w``) under target ``p`` and draft
            distribution ``q`` (``b, w, v``); default ``p(x) / q(x)``.  Relaxed rules (GSD, LANTERN) plug in here.
        lossless: only recorded in the extras.
        coupling: with ``coupled``, ``"maximal"`` (accept/resample at every position) or ``"gumbel"`` (Gumbel-max
            with noise fixed per position: Jacobi iteration of a deterministic map).
        proactive: candidates for the first position not accepted yet, each fed as its own cache row (``proactive``
            rows per sample, one forward pass); 1 = none.  Needs ``coupled``.  A tuple ``(K1, K2, ..)`` is a
            candidate tree over the first open positions: ``K1`` for the first, ``K2`` for the second under each of
            those, ...: ``K1 * K2 * ..`` rows.  With a relaxed ``ratio`` (or ``match``) the tree's positions are still
            decided by the exact (multi-draft) test; ``ratio`` judges the columns after them.
        match: the Gumbel coupling's relaxed rule (``ratio`` is not used there): ``(p, x, made) -> (b, w)`` bool,
            also accept draft ``x`` where it differs from the Gumbel token ``made``; with ``proactive`` the first
            open position still needs the exact match unless ``match_candidates``.
        match_candidates: with ``match`` and ``proactive``, a candidate that ``match`` passes wins the tree's position
            when no candidate equals the Gumbel token (the first such candidate, in the order of the stale scores).
    """
    v = check_generator(generator, name)
    tree = check_proactive(proactive, v)
    k = math.prod(tree)  # cache rows per sample
    if k > 1 and not coupled:
        raise ValueError(f"decoder {name!r}: proactive drafting needs coupled drafts (decoder='mcsjd', or "
                         "decoder='gsd' with coupled=True)")
    gumbel = coupled and coupling == "gumbel"
    ratio = ratio or _standard_ratio
    guidance = guidance or Guidance()
    cache = guidance.new_cache(generator, cond.repeat_interleave(k) if k > 1 else cond)
    b, n, device = cond.batch_size, generator.seq_len, cache.lengths.device
    win = DraftWindow(b, n, window, device, name, progress)
    w, cols, rows = win.w, win.cols, torch.arange(b, device=device)
    seq = torch.zeros(b, n, dtype=torch.long, device=device)  # accepted tokens below `acc`, drafts above
    s_prev = torch.zeros(b, dtype=torch.long, device=device)  # window start of the previous step
    p_prev = torch.zeros(b, w, v, device=device)  # the distributions the drafts were drawn from (b w v)
    noise = gumbel_noise((b, n, v), rng, device) if gumbel and not sampling.greedy else None
    for start, pos, fresh, drafted in win.passes():
        if bool(fresh.any()):  # initial drafts
            if init == "random":
                fill = torch.randint(v, (b, w), generator=rng, device=device)
            else:  # repeat the token before them (token 0 before position 0)
                fill = (seq.gather(1, (win.front - 1).clamp(min=0)[:, None]) * (win.front > 0)[:, None]).expand(b, w)
            seq.scatter_(1, pos, torch.where(fresh, fill, seq.gather(1, pos)))
        # -- the distribution q each draft was drawn from: model outputs of the previous step, one-hot for inits
        x = seq.gather(1, pos)
        idx = (pos - s_prev[:, None]).clamp(0, w - 1)
        q = p_prev.gather(1, idx[..., None].expand(-1, -1, v)) * drafted[..., None]
        q.scatter_add_(-1, x[..., None], fresh[..., None].to(q.dtype))  # one-hot q for initial drafts
        has = drafted | fresh
        g = 0.0 if noise is None else noise.gather(1, pos[..., None].expand(-1, -1, v))  # b w v
        # -- one forward pass over [token at pos - 1] for the whole window (proactive: one row per candidate)
        inputs, step_pos, branch = seq.gather(1, (pos - 1).clamp(min=0)), pos, None
        if k > 1:
            c0 = (win.acc - start).clamp(max=w - 1)  # column of the first position not accepted yet
            cands = []
            for level, kl in enumerate(tree):  # candidates for columns c0, c0 + 1, ..
                c = (c0 + level).clamp(max=w - 1)
                cands.append(_candidates(x[rows, c], q[rows, c], drafted[rows, c], g if noise is None else g[rows, c],
                                         kl, gumbel, sampling, rng))
            inputs, step_pos = _branch_inputs(inputs, cands, c0), pos.repeat_interleave(k, 0)
            branch = _Branches(cands, c0, win.acc < n, rows)
        p = sampling.probs(guidance.mix(guidance.step(generator, inputs, step_pos, cache)))
        if branch is not None:
            p = p.view(b, k, w, v)
        if gumbel:
            p, new, first, winner = _verify_gumbel(p, g[:, None] if branch and noise is not None else g, x, has,
                                                   pos, win.acc, branch, match, match_candidates)
        else:
            p, new, first, winner = _verify_ratio(p, q, x, has, pos, win.acc, sampling, rng, ratio, coupled, branch)
        seq.scatter_(1, pos, torch.where(cols >= first[:, None], new, x))
        if k > 1:  # every row of a sample continues from the winning row's cache
            src = (rows * k + winner).repeat_interleave(k)
            cache.take_rows(torch.cat([src + i * b * k for i in range(cache.group)]))
        win.accept(start, first, cache, copies=k)
        s_prev, p_prev = start, p
    extras = {"coupling": coupling, "proactive": tree[0] if len(tree) == 1 else tree} if coupled else {}
    return seq, win.nfe, win.extras(lossless=lossless, **extras, positions_per_pass=k * w)


class _Branches(NamedTuple):
    """Proactive drafting: ``cands[l]`` (b, K_l) candidates for column ``c0 + l`` of each sample's window (``c0`` (b,)
    the first open column), ``open0`` (b,) whether that position is still open, ``rows`` = ``arange(b)``.  Cache row
    ``sum_l j_l * stride_l`` (``stride_l = K_{l+1} * ..``) feeds candidate ``j_l`` of every level."""
    cands: list[Tensor]
    c0: Tensor
    open0: Tensor
    rows: Tensor

    def levels(self, w: int) -> Iterator[tuple[int, Tensor, Tensor, Tensor]]:
        """``(stride, candidates (b, K), column (b,), column inside the window (b,))`` per level."""
        stride = math.prod(c.shape[1] for c in self.cands)
        for level, cand in enumerate(self.cands):
            stride //= cand.shape[1]
            col = self.c0 + level
            yield stride, cand, col.clamp(max=w - 1), col < w


def check_proactive(proactive, vocab: int) -> tuple[int, ...]:
    """``proactive`` as a tuple of candidate counts per level (an int is one level); ValueError if malformed."""
    tree = tuple(proactive) if isinstance(proactive, (tuple, list)) else (proactive,)
    if not tree:
        raise ValueError("proactive must be an int >= 1 or a non-empty tuple of them, got ()")
    for kl in tree:
        check_count("proactive", kl, hint=" (candidates for the first open position; 1 = off; a tuple (K1, K2, ..) "
                    "for a candidate tree over the first open positions)")
        if kl > vocab:
            raise ValueError(f"proactive must be <= vocab_size ({vocab}) candidates, got {kl}")
    return tree


def _first_failure(passed: Tensor, pos: Tensor, acc: Tensor) -> Tensor:
    """(b,) first window column that is neither accepted before this pass nor passed now (``w`` if none)."""
    return ((pos < acc[:, None]) | passed).long().cumprod(1).sum(1)


def _verify_gumbel(p: Tensor, g: Tensor | float, x: Tensor, has: Tensor, pos: Tensor, acc: Tensor,
                   branch: _Branches | None, match: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
                   match_candidates: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Gumbel coupling: every column's token is ``argmax(log p + g)``, final where the inputs before it are.

    ``p`` is (b, w, v), or (b, k, w, v) with ``branch``; ``x`` (b, w) are the drafts (the winning candidates are
    written into the tree's columns).  ``match`` (relaxed rules) also passes drafts close to the Gumbel token; with
    ``match_candidates`` it picks a tree candidate too when none equals the token.  Returns ``(p of the carried-on
    row (b, w, v), new tokens (b, w), first failing column (b,), winning row (b,) or None)``.
    """
    made = (p.log() + g).argmax(-1)  # b [k] w
    winner, tree = None, []
    if branch is not None:
        rows, w = branch.rows, x.shape[1]
        winner, alive = torch.zeros_like(rows), branch.open0
        for stride, cand, col, inside in branch.levels(w):  # walk down the tree while candidates hit
            token = made[rows, winner, col]
            hits = cand == token[:, None]  # which candidate is the token of this position
            if match is not None and match_candidates:  # no exact hit: the first candidate in its group (lossy)
                near = match(p[rows, winner, col][:, None].expand(-1, cand.shape[1], -1), cand,
                             token[:, None].expand_as(cand))
                hits = torch.where(hits.any(1, keepdim=True), hits, near)
            here = alive & inside
            pick, hit = hits.long().argmax(1), hits.any(1) & here
            x[rows, col] = torch.where(hit, cand[rows, pick], x[rows, col])
            tree.append((col, here, hit))
            winner, alive = winner + torch.where(hit, pick * stride, 0), hit
        p, made = p[rows, winner], made[rows, winner]
    passed = x == made
    if match is not None:  # a relaxed rule: a draft close enough to the Gumbel token passes too (lossy)
        passed = passed | match(p, x, made)
    for col, here, hit in tree:  # the tree's positions pass where a candidate won
        passed[branch.rows, col] = torch.where(here, hit, passed[branch.rows, col])
    return p, made, _first_failure(has & passed, pos, acc), winner


def _verify_ratio(p: Tensor, q: Tensor, x: Tensor, has: Tensor, pos: Tensor, acc: Tensor, sampling: SamplingArgs,
                  rng: torch.Generator | None, ratio: Callable[[Tensor, Tensor, Tensor], Tensor], coupled: bool,
                  branch: _Branches | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Accept drafts ``x`` drawn from ``q`` where ``r < ratio(p, q, x)``; the first failure draws from the residual,
    the columns after it from ``p`` (SJD) or by maximal coupling (MC-SJD: a draft that passes against the new ``p``
    is kept, else the residual).  With ``branch``, column ``c0`` is a multi-draft test of the ``k`` candidates.
    Shapes and returns as :func:`_verify_gumbel`.  Vectorised over batch and window.
    """
    b, w = x.shape
    device = x.device

    def uniforms(n: int) -> Tensor:
        return (torch.full((b, n), 0.5, device=device) if sampling.greedy
                else torch.rand(b, n, generator=rng, device=device))

    r = uniforms(w)
    winner, tree = None, []
    if branch is not None:  # the tree's positions: multi-draft tests of the candidates (candidate 0 is the draft)
        rows = branch.rows
        winner, alive = torch.zeros_like(rows), branch.open0
        for stride, cand, col, inside in branch.levels(w):
            r_more = uniforms(cand.shape[1] - 1)
            pick, hit, token = _multi_draft(p[rows, winner, col], q[rows, col], cand,
                                            torch.cat([r[rows, col][:, None], r_more], 1), sampling, rng)
            here = alive & inside  # decided by this test (a failed test ends the tree: its token is the draw)
            x[rows, col] = torch.where(here, token, x[rows, col])
            tree.append((col, here, hit))
            winner, alive = winner + torch.where(here & hit, pick * stride, 0), here & hit
        p = p[rows, winner]  # the row whose candidates were accepted carries on
    passed = has & (r < ratio(p, q, x))
    for col, here, hit in tree:
        passed[rows, col] = torch.where(here, hit, passed[rows, col])
    first = _first_failure(passed, pos, acc)
    cols = torch.arange(w, device=device)
    after = cols > first[:, None]
    use_resid = (cols == first[:, None]) | (after if coupled else torch.zeros_like(after))
    new = draw(torch.where(use_resid[..., None], _residual(p, q), p), sampling, rng)
    if coupled:  # maximal coupling: a draft that passes the test against the new p is kept
        new = torch.where(after & passed if ratio is _standard_ratio
                          else after & has & (r < _standard_ratio(p, q, x)), x, new)
    for col, here, _ in tree:  # the token of the multi-draft test (accepted or drawn)
        new[rows, col] = torch.where(here, x[rows, col], new[rows, col])
    return p, new, first, winner


def _candidates(x0: Tensor, q0: Tensor, drafted0: Tensor, g0: Tensor | float, k: int, gumbel: bool,
                sampling: SamplingArgs, rng: torch.Generator | None) -> Tensor:
    """``k`` candidates (b, k) for the first open position, the current draft ``x0`` (b,) first.

    Maximal coupling: the others are drawn from the draft's ``q0`` (b, v) one after the other without replacement
    (what the multi-draft test needs; ids outside the support of ``q0`` once it is exhausted).
    Gumbel: the next best ids of the stale scores ``log q0 + g0`` (the noise alone for initial drafts), any of which
    the exact-match test may use.
    """
    if gumbel:
        scores = torch.where(drafted0[:, None], q0.log(), torch.zeros_like(q0)) + g0
    elif sampling.greedy:  # q is one-hot: no other candidate has a chance
        scores = q0
    else:  # Gumbel-top-k: the ids after x0 are draws from q without replacement (x0 excluded)
        scores = q0.log() + gumbel_noise(q0.shape, rng, q0.device)
    return scores.scatter(1, x0[:, None], float("inf")).topk(k, dim=1).indices


def _branch_inputs(inputs: Tensor, cands: list[Tensor], c0: Tensor) -> Tensor:
    """Inputs (b, w) -> (b * k, w): cache row ``sum_l j_l * stride_l`` of a sample feeds candidate ``j_l`` of level
    ``l`` as the input after column ``c0 + l`` (see :class:`_Branches`)."""
    b, w = inputs.shape
    k = math.prod(c.shape[1] for c in cands)
    out = inputs[:, None].repeat(1, k, 1)
    rows, stride, samples = torch.arange(k, device=inputs.device), k, torch.arange(b, device=inputs.device)[:, None]
    for level, cand in enumerate(cands):
        stride //= cand.shape[1]
        col = c0 + level + 1  # (b,): past the window for some samples (no write there; no host read to find them)
        at = col.clamp(max=w - 1)[:, None]
        out[samples, rows, at] = torch.where((col < w)[:, None], cand[:, (rows // stride) % cand.shape[1]],
                                             out[samples, rows, at])
    return out.flatten(0, 1)


def decode_sjd(generator: CausalGenerator, cond: Conditioning, sampling: SamplingArgs,
               rng: torch.Generator | None = None, progress: bool = False, *, guidance: Guidance | None = None,
               window: int = 16, init: Literal["random", "repeat"] = "random", **unknown) -> tuple[Tensor, int, dict]:
    """Speculative Jacobi decoding (arXiv 2410.01699).  Lossless w.r.t. the processed AR sampler.

    Args:
        window: positions predicted per forward pass (``W``; the drafts are ``W - 1`` of them plus a bonus
            token).  Capped at the sequence length.  ``window=1`` is plain AR (NFE = N).
        init: initial drafts, ``"random"`` (uniform) or ``"repeat"`` (copy of the previous token).

    Returns ``(tokens (B, N), nfe, extras)``; see the module docstring for what NFE counts and the extras.
    """
    check_options("sjd", window, init, INITS, unknown, "window=, init=")
    return jacobi_decode(generator, cond, sampling, rng, name="sjd", window=window, init=init, coupled=False,
                         progress=progress, guidance=guidance)


def decode_mcsjd(generator: CausalGenerator, cond: Conditioning, sampling: SamplingArgs,
                 rng: torch.Generator | None = None, progress: bool = False, *, guidance: Guidance | None = None,
                 window: int = 16, init: Literal["random", "repeat"] = "random",
                 coupling: Literal["maximal", "gumbel"] = "maximal", proactive: int | tuple[int, ...] = 1,
                 **unknown) -> tuple[Tensor, int, dict]:
    """SJD with coupled drafts (MC-SJD / speculative coupled decoding, arXiv 2510.24211).  Lossless in every option.

    :func:`decode_sjd` but for the drafts after the first rejection (step 4 of the module docstring); same ``window``,
    ``init`` and returns.

    Args:
        coupling: ``"maximal"`` (default): a draft is kept when it passes the accept test against the new ``p``, else
            redrawn from the residual.  ``"gumbel"``: one Gumbel noise ``g`` per (position, id) is drawn before
            decoding; every pass sets each position to ``argmax(log p + g)``, and a position is accepted when the
            tokens before it equal their outputs (Jacobi iteration of a deterministic map whose fixed point is the AR
            sample with that noise).
        proactive: ``K >= 1`` candidates for the first position not accepted yet (proactive drafting, SJD-PAC, arXiv
            2603.18599).  The sample's batch row is run ``K`` times in the same forward pass, row ``j`` feeding
            candidate ``j`` there, so the row whose candidate is accepted verifies the rest of the window after it.
            Maximal coupling: candidates 2..K are drawn from the draft's ``q`` without replacement and tested by
            recursive rejection (multi-draft speculative sampling); Gumbel: they are the next best ids of the stale
            scores ``log q + g``.  NFE is unchanged; the positions fed per pass grow ``K``-fold
            (``extras["positions_per_pass"]``).  1 = off.  A tuple ``(K1, K2, ..)`` grows a candidate tree over
            the first open positions: ``K1`` candidates for the first, ``K2`` for the second (drawn the same way from
            its stale ``q``) under each of those, ...; ``K1 * K2 * ..`` rows, and each level that hits decides one
            more position before the drafts are checked.
    """
    check_options("mcsjd", window, init, INITS, unknown, "window=, init=, coupling=, proactive=")
    check_choice("coupling", coupling, COUPLINGS)
    return jacobi_decode(generator, cond, sampling, rng, name="mcsjd", window=window, init=init, coupled=True,
                         progress=progress, guidance=guidance, coupling=coupling, proactive=proactive)
