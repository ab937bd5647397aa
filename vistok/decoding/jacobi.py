"""Speculative Jacobi decoding: several tokens per generator forward pass, verified by speculative sampling.

* :func:`decode_sjd` -- SJD, Teng et al., "Accelerating Auto-regressive Text-to-Image Generation with
  Training-free Speculative Jacobi Decoding", arXiv 2410.01699.  **Lossless.**
* :func:`decode_mcsjd` -- MC-SJD / speculative coupled decoding, So et al., arXiv 2510.24211: SJD whose
  drafts are redrawn by a *maximal coupling* at every window position.  **Lossless.**
* The relaxed (lossy) acceptance rules GSD and LANTERN live in :mod:`vistok.decoding.grouped` and share the
  loop below.

One iteration (one ``generator.step``, one NFE) per sample ``b`` with ``a`` accepted tokens:

1. the window covers token positions ``a .. a + W - 1`` (shifted left to end at ``N - 1`` near the end of
   the sequence; already-accepted positions in it are simply re-fed and ignored).  Its inputs are
   ``[last accepted token, d_a, .., d_{a+W-2}]``: the drafts are fed as if they were right;
2. output ``j`` is the processed distribution ``p`` (``sampling.probs``: CFG, temperature, top-k, top-p) of
   the token at position ``a + j`` given the prefix and the drafts before it;
3. the drafts are verified left to right: draft ``x`` drawn from ``q`` is accepted with probability
   ``min(1, p(x) / q(x))``; at the first rejection the token is drawn from ``norm(max(p - q, 0))`` and
   verification stops.  A position without a draft (normally the last one: the *bonus* token) counts as a
   rejection with ``q = 0``, i.e. it is sampled from ``p``.  So 1..W tokens are accepted per forward pass;
4. the outputs after the rejection become the next drafts, each remembered with the full ``q`` it was drawn
   from (SJD).  MC-SJD instead keeps the old draft there when it passes the same accept test against the new
   ``p`` and otherwise draws from the residual: the new draft still has marginal ``p`` but equals the old one
   with probability ``1 - TV(q, p)``, so drafts whose distribution barely moved stop changing;
5. the window is refilled with initial drafts: ``init="random"`` (uniform ids, ``q`` one-hot on the draft,
   so acceptance is ``p(x)``) or ``init="repeat"`` (a copy of the token before them; token 0 at the very
   start).

Each sample accepts its own number of tokens (ragged per-sample positions; the cache is rolled back with
``cache.truncate`` per sample), so a batch decodes exactly as its samples would one by one.  Verification is
vectorised over batch and window.  At temperature 0 the result equals greedy AR token for token (the Jacobi
fixed point).

NFE: the number of ``generator.step`` calls (one batched forward over the window; classifier-free guidance's
doubled batch counts once, as in AR).  The first step is counted; a text prefix prefilled inside
``new_cache`` is not (as in :func:`~vistok.decoding.autoregressive.decode_ar`, whose NFE is ``N``).

Extras returned with the tokens: ``accepted_hist`` (list, index ``k`` = number of (sample, forward) pairs
that accepted ``k`` tokens), ``nfe_per_sample`` (forward passes each sample needed before it was complete),
``mean_accepted`` (tokens per forward, over samples), ``window`` and ``lossless``.

Legend: b batch, w window, v vocab, n tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from vistok.decoding.guidance import Guidance
from vistok.decoding.sampling import SamplingArgs, draw
from vistok.interfaces import CausalGenerator, Conditioning
from vistok.progress import progress_bar

__all__ = ["accept_ratio", "decode_mcsjd", "decode_sjd", "jacobi_decode"]

INITS = ("random", "repeat")
JACOBI_DECODERS = ("sjd", "mcsjd", "gsd", "lantern")


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


def check_generator(generator, name: str) -> int:
    """Raise a ValueError unless ``generator`` is a causal discrete-token generator; return its vocab size."""
    if getattr(generator, "kind", None) == "continuous":
        raise ValueError(
            f"decoder {name!r} verifies discrete token ids, but this generator is continuous (kind='continuous'); "
            "use decoder='csd' (continuous speculative decoding) or decoder='ar' for causal continuous generators "
            "such as mar_ar_tiny, or the generator's own default decoder")
    if not (isinstance(generator, CausalGenerator) and generator.is_causal):
        raise ValueError(
            f"decoder {name!r} verifies a window of drafts in one causal forward pass and needs a causal generator "
            f"(new_cache + step, is_causal=True); {type(generator).__name__} is not: use its own decoder "
            f"(decoder={getattr(generator, 'default_decoder', 'ar')!r})")
    v = getattr(generator, "vocab_size", None)
    if not v:
        raise ValueError(f"decoder {name!r} needs generator.vocab_size (the number of token ids)")
    return int(v)


def _check_common(name: str, window, init: str, unknown: dict, known: str) -> None:
    if unknown:
        raise ValueError(f"decoder {name!r} got unknown option(s) {sorted(unknown)}; it takes {known}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1 (tokens drafted per forward pass), got {window!r}; "
                         "window=1 is plain AR, use decoder='ar' for that")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")


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
    b, n = cond.batch_size, generator.seq_len
    device = cache.lengths.device
    w = min(window, n)
    cols = torch.arange(w, device=device)[None]  # 1 w
    seq = torch.zeros(b, n, dtype=torch.long, device=device)  # accepted tokens below `acc`, drafts above
    acc = torch.zeros(b, dtype=torch.long, device=device)  # accepted length per sample
    front = torch.zeros(b, dtype=torch.long, device=device)  # drafts sampled by the model lie in [acc, front)
    s_prev = torch.zeros(b, dtype=torch.long, device=device)  # window start of the previous step
    p_prev: Tensor | None = None  # b w v: the distributions those drafts were drawn from
    hist = torch.zeros(w + 1, dtype=torch.long, device=device)
    nfe_per_sample = torch.zeros(b, dtype=torch.long, device=device)
    nfe = 0
    bar = progress_bar(progress, total=n, desc=name)
    while True:
        active = acc < n
        if not bool(active.any()):
            break
        start = acc.clamp(max=n - w)
        pos = start[:, None] + cols  # b w, token positions predicted by this step
        # -- initial drafts for the input positions the model has not drafted yet: [front, start + w - 1)
        fresh = (pos >= front[:, None]) & (pos < (start + w - 1)[:, None])
        if bool(fresh.any()):
            if init == "random":
                fill = torch.randint(v, (b, w), generator=rng, device=device)
            else:  # repeat the token before them (token 0 before position 0)
                before = seq.gather(1, (front - 1).clamp(min=0)[:, None]) * (front > 0)[:, None]
                fill = before.expand(b, w)
            seq.scatter_(1, pos, torch.where(fresh, fill, seq.gather(1, pos)))
        # -- one forward pass over [token at pos - 1] for the whole window
        inputs = seq.gather(1, (pos - 1).clamp(min=0))
        logits = guidance.mix(generator.step(guidance.double(inputs), guidance.double(pos), cache))
        nfe += 1
        nfe_per_sample += active.long()
        p = sampling.probs(logits)  # b w v
        # -- the distribution q each draft was drawn from: model outputs of the previous step, one-hot for inits
        x = seq.gather(1, pos)
        drafted = (pos >= acc[:, None]) & (pos < front[:, None])
        if p_prev is None:
            q = torch.zeros_like(p)
        else:
            idx = (pos - s_prev[:, None]).clamp(0, w - 1)
            q = p_prev.gather(1, idx[..., None].expand(-1, -1, v)) * drafted[..., None]
        q.scatter_add_(-1, x[..., None], fresh[..., None].to(q.dtype))  # one-hot q for initial drafts
        has = drafted | fresh
        # -- verification, vectorised over batch and window
        r = (torch.full((b, w), 0.5, device=device) if sampling.greedy
             else torch.rand(b, w, generator=rng, device=device))
        passed = has & (r < ratio(p, q, x))
        ok = (pos < acc[:, None]) | passed
        first = ok.long().cumprod(1).sum(1)  # first failing column, w if none
        resid = _residual(p, q)
        after = cols > first[:, None]
        use_resid = (cols == first[:, None]) | (after if coupled else torch.zeros_like(after))
        dist = torch.where(use_resid[..., None], resid, p)
        new = draw(dist, sampling, rng)
        if coupled:  # maximal coupling: a draft that passes the test against the new p is kept
            new = torch.where(after & passed if ratio is _standard_ratio
                              else after & has & (r < _standard_ratio(p, q, x)), x, new)
        seq.scatter_(1, pos, torch.where(cols >= first[:, None], new, x))
        new_acc = torch.where(first < w, start + first + 1, start + w)
        hist += torch.bincount((new_acc - acc)[active], minlength=w + 1)
        if progress:
            bar.update(int(new_acc.min()) - int(acc.min()))
        acc, front, s_prev, p_prev = new_acc, start + w, start, p
        cache.truncate(acc)
    bar.close()
    counts = hist.tolist()
    forwards = max(1, sum(counts))
    extras = {"decoder": name, "window": w, "lossless": lossless, "accepted_hist": counts,
              "nfe_per_sample": nfe_per_sample.tolist(),
              "mean_accepted": sum(k * c for k, c in enumerate(counts)) / forwards}
    return seq, nfe, extras


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
    _check_common("sjd", window, init, unknown, "window=, init=")
    return jacobi_decode(generator, cond, sampling, rng, name="sjd", window=window, init=init, coupled=False,
                         progress=progress, guidance=guidance)


def decode_mcsjd(generator: CausalGenerator, cond: Conditioning, sampling: SamplingArgs,
                 rng: torch.Generator | None = None, progress: bool = False, *, guidance: Guidance | None = None,
                 window: int = 16, init: Literal["random", "repeat"] = "random", **unknown) -> tuple[Tensor, int, dict]:
    """SJD with maximally coupled drafts (MC-SJD / speculative coupled decoding, arXiv 2510.24211).  Lossless.

    Identical to :func:`decode_sjd` except after the first rejection: there each old draft is kept if it passes
    the accept test against the new ``p`` and is otherwise redrawn from ``norm(max(p - q, 0))``, so each new draft
    is still distributed as ``p`` but changes only with probability ``TV(q, p)``.  The accepted output is still
    only the verified prefix plus one token.  Same options and returns as :func:`decode_sjd`.
    """
    _check_common("mcsjd", window, init, unknown, "window=, init=")
    return jacobi_decode(generator, cond, sampling, rng, name="mcsjd", window=window, init=init, coupled=True,
                         progress=progress, guidance=guidance)
