"""Relaxed-acceptance speculative Jacobi decoders.  **Both are lossy**: their samples do NOT follow the AR
distribution; they trade exactness for more accepted tokens per forward pass.

* :func:`decode_gsd` -- grouped speculative decoding (So, Shin, Kook, Park, arXiv 2508.07747).
* :func:`decode_lantern` -- LANTERN-style relaxed acceptance (Jang et al., arXiv 2410.03355), applied to
  Jacobi drafts instead of a trained drafter's.

Both run the SJD loop (:func:`vistok.decoding.jacobi.jacobi_decode`) with their own acceptance probability.

Legend: b batch, w window, v vocab, g group candidates, k neighbours, d embedding dim.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from torch import Tensor

from vistok.decoding.guidance import Guidance
from vistok.decoding.jacobi import COUPLINGS, INITS, check_generator, check_options, jacobi_decode
from vistok.decoding.sampling import SamplingArgs
from vistok.interfaces import CausalGenerator, Conditioning, TokenEmbeddings, check_choice, check_count

__all__ = ["decode_gsd", "decode_lantern", "gsd_match", "gsd_ratio", "lantern_neighbours", "lantern_ratio"]


def _token_table(generator, given: Tensor | None, option: str, vocab: int, name: str) -> Tensor | None:
    """The (V, D) table passed as ``option``, else the generator's ``token_embeddings()``, else None."""
    if given is None:
        return generator.token_embeddings().detach().float() if isinstance(generator, TokenEmbeddings) else None
    if not isinstance(given, Tensor) or given.ndim != 2 or given.shape[0] != vocab:
        shape = tuple(given.shape) if isinstance(given, Tensor) else type(given).__name__
        raise ValueError(f"{name}: {option} must be a ({vocab}, D) tensor (one row per token id), got {shape}")
    return given.detach().float()


# ----------------------------------------------------------------------------------------------------------------
# GSD
# ----------------------------------------------------------------------------------------------------------------
def gsd_ratio(p: Tensor, q: Tensor, x: Tensor, *, group_rank: int, p_thr: float, d_thr: float,
              embeddings: Tensor | None) -> Tensor:
    """GSD acceptance ratio ``sum_G p / sum_G q`` for drafts ``x`` (b, w) under ``p``, ``q`` (b, w, v).

    The group ``G`` of draft ``x``: the tokens whose rank in ``p`` (sorted by probability, descending) is within
    ``group_rank`` of ``x``'s rank, keeping only those ``y`` with ``|p(y) - p(x)| < p_thr`` and (when
    ``embeddings`` is given) squared L2 distance ``|e(y) - e(x)|^2 < d_thr``.  ``x`` itself is always in ``G``.
    """
    v = p.shape[-1]
    order = p.argsort(dim=-1, descending=True, stable=True)  # b w v: token ids by rank
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(v, device=p.device).expand_as(order))
    offsets = torch.arange(-group_rank, group_rank + 1, device=p.device)
    rr = rank.gather(-1, x[..., None]) + offsets  # b w g
    valid = (rr >= 0) & (rr < v)
    group = order.gather(-1, rr.clamp(0, v - 1))  # b w g
    p_g, q_g = p.gather(-1, group), q.gather(-1, group)
    p_x = p.gather(-1, x[..., None])
    keep = valid & ((p_g - p_x).abs() < p_thr)
    if embeddings is not None:
        emb = embeddings.to(p.device)
        d2 = (emb[group] - emb[x][..., None, :]).pow(2).sum(-1)
        keep &= d2 < d_thr
    keep |= offsets == 0  # the draft itself
    return (p_g * keep).sum(-1) / (q_g * keep).sum(-1).clamp_min(1e-30)


def decode_gsd(generator: CausalGenerator, cond: Conditioning, sampling: SamplingArgs,
               rng: torch.Generator | None = None, progress: bool = False, *, guidance: Guidance | None = None,
               window: int = 16, init: Literal["random", "repeat"] = "random", group_rank: int = 7,
               p_thr: float = 0.15, d_thr: float = 0.5, embeddings: Tensor | None = None, coupled: bool = False,
               coupling: Literal["maximal", "gumbel"] = "maximal", proactive: int | tuple[int, ...] = 1,
               group_candidates: bool = False, **unknown) -> tuple[Tensor, int, dict]:
    """Grouped speculative decoding (arXiv 2508.07747).  **NOT lossless.**

    A draft ``x`` drawn from ``q`` is accepted with probability ``min(1, p(G) / q(G))`` for the group ``G`` of
    "visually interchangeable" tokens of :func:`gsd_ratio`; on rejection, SJD's residual.  ``group_rank=0`` is SJD.
    Defaults follow the public GSD code (±7 rank neighbours, p_thr 0.15, d_thr 0.5).

    Args:
        window, init: as for :func:`~vistok.decoding.jacobi.decode_sjd`.
        group_rank: rank radius of the candidate group (``>= 0``).
        p_thr: probability filter (``> 0``).
        d_thr: squared-L2 embedding-distance filter (``> 0``).
        embeddings: ``(V, D)`` token embeddings for the distance filter; default the generator's
            ``token_embeddings()`` if it has one, else no distance filter.
        coupled: redraw the drafts after the first rejection by MC-SJD's maximal coupling (keep a draft that passes
            the *exact* test against the new ``p``, else draw from the residual) instead of SJD's independent
            redraw; with ``group_rank=0`` this is ``decoder="mcsjd"``.  Not in the GSD paper (vistok's combination).
        coupling: with ``coupled``, ``"maximal"`` (above) or ``"gumbel"``: ``decoder="mcsjd"``'s Gumbel coupling
            (every position's token is ``argmax(log p + g)`` with noise fixed per position) where a draft also
            passes when it is in the group of that token (:func:`gsd_match`) instead of only when equal to it.
        proactive: with ``coupled``, ``K`` candidates for the first open position as ``K`` rows of one pass, as
            ``decoder="mcsjd"``'s ``proactive`` (SJD-PAC); that position keeps the exact multi-draft test, the group
            rule judges the columns after it.  1 = off; a tuple ``(K1, K2, ..)`` is ``mcsjd``'s candidate tree.
        group_candidates: with ``coupling="gumbel"`` and ``proactive``, a candidate also wins a position of the
            candidate tree when it is in the group of the Gumbel token there (and none equals it), instead of that
            position needing the exact match.  More lossy; on ``vistok/assets/vq256`` it gave no measurable gain
            (``docs/speed.md``).
    """
    check_options("gsd", window, init, INITS, unknown,
                  "window=, init=, group_rank=, p_thr=, d_thr=, embeddings=, coupled=, coupling=, proactive=, "
                  "group_candidates=")
    if not isinstance(coupled, bool):
        raise ValueError(f"gsd: coupled must be True or False, got {coupled!r}")
    check_choice("coupling", coupling, COUPLINGS)
    if coupling != "maximal" and not coupled:
        raise ValueError(f"gsd: coupling={coupling!r} couples the drafts: pass coupled=True with it")
    if not isinstance(group_candidates, bool):
        raise ValueError(f"gsd: group_candidates must be True or False, got {group_candidates!r}")
    if group_candidates and coupling != "gumbel":
        raise ValueError("gsd: group_candidates=True applies to the Gumbel coupling's candidates: pass coupled=True, "
                         "coupling='gumbel' (the maximal coupling's candidates keep the exact multi-draft test)")
    vocab = check_generator(generator, "gsd")
    check_count("group_rank", group_rank, 0, " (0 = plain SJD)")
    if not p_thr > 0 or not d_thr > 0:
        raise ValueError(f"p_thr and d_thr must be > 0, got p_thr={p_thr}, d_thr={d_thr}")
    emb = _token_table(generator, embeddings, "embeddings", vocab, "gsd")
    group = dict(group_rank=group_rank, p_thr=p_thr, d_thr=d_thr, embeddings=emb)
    return jacobi_decode(generator, cond, sampling, rng, name="gsd", window=window, init=init, coupled=coupled,
                         ratio=partial(gsd_ratio, **group), lossless=group_rank == 0, progress=progress,
                         guidance=guidance, coupling=coupling, proactive=proactive, match=partial(gsd_match, **group),
                         match_candidates=group_candidates)


def gsd_match(p: Tensor, x: Tensor, made: Tensor, *, group_rank: int, p_thr: float, d_thr: float,
              embeddings: Tensor | None) -> Tensor:
    """GSD's group test for the Gumbel coupling: whether draft ``x`` (b, w) is in the group of the Gumbel token
    ``made`` (b, w) under ``p`` (b, w, v): ranks in ``p`` within ``group_rank`` of each other (ties broken by id, as
    :func:`gsd_ratio`'s stable sort), ``|p(x) - p(made)| < p_thr`` and, with ``embeddings``, squared L2 distance
    ``< d_thr``.  ``x == made`` always matches; ``group_rank=0`` matches nothing else."""

    def rank(t: Tensor) -> Tensor:  # position of t in p sorted by probability, descending, ties by lower id first
        p_t = p.gather(-1, t[..., None])
        ids = torch.arange(p.shape[-1], device=p.device)
        return ((p > p_t) | ((p == p_t) & (ids < t[..., None]))).sum(-1)

    keep = ((rank(x) - rank(made)).abs() <= group_rank)
    keep &= (p.gather(-1, x[..., None]) - p.gather(-1, made[..., None]))[..., 0].abs() < p_thr
    if embeddings is not None:
        emb = embeddings.to(p.device)
        keep &= (emb[x] - emb[made]).pow(2).sum(-1) < d_thr
    return keep | (x == made)


# ----------------------------------------------------------------------------------------------------------------
# LANTERN
# ----------------------------------------------------------------------------------------------------------------
# memo of recent tables, keyed by the latents' storage and version (the latents are kept alive, so a key's
# storage cannot be freed and reused while it is in the memo)
_NEIGHBOURS: dict[tuple, tuple[Tensor, Tensor]] = {}


def lantern_neighbours(latents: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """``(V, k)`` ids of each token's ``k`` nearest *other* tokens in ``latents`` (V, D), nearest first."""
    key = (latents.data_ptr(), latents._version, tuple(latents.shape), latents.stride(), latents.dtype,
           str(latents.device), k)
    if key in _NEIGHBOURS:
        return _NEIGHBOURS[key][1]
    v = latents.shape[0]
    k = min(k, v - 1)
    out = []
    for i in range(0, v, chunk):
        d = torch.cdist(latents[i : i + chunk], latents).pow(2)
        d[torch.arange(d.shape[0]), torch.arange(i, i + d.shape[0])] = float("inf")  # not its own neighbour
        out.append(d.topk(k, dim=-1, largest=False, sorted=True).indices)
    if len(_NEIGHBOURS) >= 4:
        _NEIGHBOURS.clear()
    _NEIGHBOURS[key] = (latents, torch.cat(out))
    return _NEIGHBOURS[key][1]


def lantern_ratio(p: Tensor, q: Tensor, x: Tensor, *, neighbours: Tensor, delta: float) -> Tensor:
    """LANTERN acceptance ratio ``p'(x) / q(x)``: ``p'(x) = p(x) +`` the target mass of ``x``'s nearest latent
    neighbours, taken in distance order while the added mass stays ``<= delta`` (a total-variation budget)."""
    nb = neighbours.to(p.device)[x]  # b w k
    p_nb = p.gather(-1, nb)
    added = (p_nb * (p_nb.cumsum(-1) <= delta)).sum(-1)
    p_x, q_x = p.gather(-1, x[..., None])[..., 0], q.gather(-1, x[..., None])[..., 0]
    return (p_x + added) / q_x.clamp_min(1e-30)


def decode_lantern(generator: CausalGenerator, cond: Conditioning, sampling: SamplingArgs,
                   rng: torch.Generator | None = None, progress: bool = False, *, guidance: Guidance | None = None,
                   window: int = 16, init: Literal["random", "repeat"] = "random", latents: Tensor | None = None,
                   k: int = 1000, delta: float = 0.1, **unknown) -> tuple[Tensor, int, dict]:
    """LANTERN-style relaxed acceptance on SJD drafts (arXiv 2410.03355).  **NOT lossless** (each accepted
    token's distribution is within total variation ``delta`` of the target's, per position).

    A draft ``x`` drawn from ``q`` is accepted with probability ``min(1, p'(x) / q(x))`` (:func:`lantern_ratio`: ``p``
    plus the mass of ``x``'s nearest latent neighbours, up to ``delta``); on rejection, SJD's residual.

    Args:
        window, init: as for :func:`~vistok.decoding.jacobi.decode_sjd`.
        latents: ``(V, D)`` latent vector of each token id, e.g. the tokenizer codebook
            (``tokenizer.quantizer.codebook()``); default the generator's ``token_embeddings()``.
        k: neighbours considered (capped at ``V - 1``).
        delta: neighbour-mass (TV) budget, ``>= 0`` (0 = plain SJD).
    """
    check_options("lantern", window, init, INITS, unknown, "window=, init=, latents=, k=, delta=")
    vocab = check_generator(generator, "lantern")
    check_count("k", k)
    if not delta >= 0:
        raise ValueError(f"delta must be >= 0 (0 = plain SJD), got {delta}")
    table = _token_table(generator, latents, "latents", vocab, "lantern")
    if table is None:
        raise ValueError("lantern needs latents=(V, D) token latents (e.g. tokenizer.quantizer.codebook()); "
                         "this generator has no token_embeddings() to fall back on")
    ratio = partial(lantern_ratio, neighbours=lantern_neighbours(table, k), delta=delta)
    return jacobi_decode(generator, cond, sampling, rng, name="lantern", window=window, init=init, coupled=False,
                         ratio=ratio, lossless=delta == 0, progress=progress, guidance=guidance)
