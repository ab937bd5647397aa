"""Speculative Jacobi decoding: several tokens per generator forward pass, verified by speculative sampling.

* :func:`decode_sjd` -- SJD, Teng et al., "Accelerating Auto-regressive Text-to-Image Generation with
  Training-free Speculative Jacobi Decoding", arXiv 2410.01699.  **Lossless.**
* :func:`decode_mcsjd` -- MC-SJD / speculative coupled decoding, So et al., arXiv 2510.24211: SJD whose
  drafts are redrawn by a *maximal coupling* at every window position.  **Lossless.**
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
``k`` tokens), ``nfe_per_sample``, ``mean_accepted``, ``window``, ``lossless``.

Legend: b batch, w window, v vocab, n tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import Tensor

from vistok.decoding.guidance import Guidance
from vistok.decoding.sampling import SamplingArgs, draw
from vistok.interfaces import CausalGenerator, Conditioning, KVCache, check_choice, check_count
from vistok.progress import progress_bar

__all__ = ["DraftWindow", "accept_ratio", "decode_mcsjd", "decode_sjd", "jacobi_decode"]

INITS = ("random", "repeat")


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

    def accept(self, start: Tensor, first: Tensor, cache: KVCache) -> None:
        """Accept the columns before ``first`` (b,) (the first failing one, ``w`` if none) and the token drawn there;
        roll ``cache`` back to the accepted lengths."""
        new_acc = torch.where(first < self.w, start + first + 1, start + self.w)
        self.hist += torch.bincount((new_acc - self.acc)[self.active], minlength=self.w + 1)
        if self.progress:
            self.bar.update(int(new_acc.min()) - int(self.acc.min()))
        self.acc, self.front = new_acc, start + self.w
        cache.truncate(new_acc)

    def extras(self, **more) -> dict:
        counts = self.hist.tolist()
        return {"decoder": self.name, "window": self.w, **more, "accepted_hist": counts,
                "nfe_per_sample": self.nfe_per_sample.tolist(),
                "mean_accepted": sum(k * c for k, c in enumerate(counts)) / max(1, sum(counts))}


@torch.no_grad()
def jacobi_decode(generator, cond: Conditioning, sampling: SamplingArgs, rng: torch.Generator | None, *,
                  name: str, window: int, init: str, coupled: bool,
                  ratio: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None, lossless: bool = True,
                  progress: bool = False, guidance: Guidance | None = None) -> tuple[Tensor, int, dict]:
    """The shared speculative Jacobi loop (see the module docstring).

    Args:
        coupled: MC-SJD's maximal coupling of the drafts after the first rejection.
        ratio: ``(p, q, x) -> (b, w)`` acceptance ratio of drafts ``x`` (``b, w``) under target ``p`` and draft
            distribution ``q`` (``b, w, v``); default ``p(x) / q(x)``.  Relaxed rules (GSD, LANTERN) plug in here.
        lossless: only recorded in the extras.
    """
    v = check_generator(generator, name)
    ratio = ratio or _standard_ratio
    guidance = guidance or Guidance()
    cache = guidance.new_cache(generator, cond)
    b, n, device = cond.batch_size, generator.seq_len, cache.lengths.device
    win = DraftWindow(b, n, window, device, name, progress)
    w, cols = win.w, win.cols
    seq = torch.zeros(b, n, dtype=torch.long, device=device)  # accepted tokens below `acc`, drafts above
    s_prev = torch.zeros(b, dtype=torch.long, device=device)  # window start of the previous step
    p_prev = torch.zeros(b, w, v, device=device)  # the distributions the drafts were drawn from (b w v)
    for start, pos, fresh, drafted in win.passes():
        if bool(fresh.any()):  # initial drafts
            if init == "random":
                fill = torch.randint(v, (b, w), generator=rng, device=device)
            else:  # repeat the token before them (token 0 before position 0)
                fill = (seq.gather(1, (win.front - 1).clamp(min=0)[:, None]) * (win.front > 0)[:, None]).expand(b, w)
            seq.scatter_(1, pos, torch.where(fresh, fill, seq.gather(1, pos)))
        # -- one forward pass over [token at pos - 1] for the whole window
        inputs = seq.gather(1, (pos - 1).clamp(min=0))
        p = sampling.probs(guidance.mix(guidance.step(generator, inputs, pos, cache)))
        # -- the distribution q each draft was drawn from: model outputs of the previous step, one-hot for inits
        x = seq.gather(1, pos)
        idx = (pos - s_prev[:, None]).clamp(0, w - 1)
        q = p_prev.gather(1, idx[..., None].expand(-1, -1, v)) * drafted[..., None]
        q.scatter_add_(-1, x[..., None], fresh[..., None].to(q.dtype))  # one-hot q for initial drafts
        has = drafted | fresh
        # -- verification, vectorised over batch and window
        r = (torch.full((b, w), 0.5, device=device) if sampling.greedy
             else torch.rand(b, w, generator=rng, device=device))
        passed = has & (r < ratio(p, q, x))
        first = ((pos < win.acc[:, None]) | passed).long().cumprod(1).sum(1)  # first failing column, w if none
        resid = _residual(p, q)
        after = cols > first[:, None]
        use_resid = (cols == first[:, None]) | (after if coupled else torch.zeros_like(after))
        new = draw(torch.where(use_resid[..., None], resid, p), sampling, rng)
        if coupled:  # maximal coupling: a draft that passes the test against the new p is kept
            new = torch.where(after & passed if ratio is _standard_ratio
                              else after & has & (r < _standard_ratio(p, q, x)), x, new)
        seq.scatter_(1, pos, torch.where(cols >= first[:, None], new, x))
        win.accept(start, first, cache)
        s_prev, p_prev = start, p
    return seq, win.nfe, win.extras(lossless=lossless)


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
                 window: int = 16, init: Literal["random", "repeat"] = "random", **unknown) -> tuple[Tensor, int, dict]:
    """SJD with maximally coupled drafts (MC-SJD / speculative coupled decoding, arXiv 2510.24211).  Lossless.

    :func:`decode_sjd` but for the drafts after the first rejection (step 4 of the module docstring); same options
    and returns."""
    check_options("mcsjd", window, init, INITS, unknown, "window=, init=")
    return jacobi_decode(generator, cond, sampling, rng, name="mcsjd", window=window, init=init, coupled=True,
                         progress=progress, guidance=guidance)
