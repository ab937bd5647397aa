"""Causal decoding of continuous tokens with a per-token diffusion head: plain AR and continuous speculative decoding.

* :func:`decode_car` -- plain causal AR: one token per generator forward pass (NFE = N), each token drawn by the
  head's sampler.  ``generate(..., decoder="ar")`` routes here for continuous generators.
* :func:`decode_csd` -- continuous speculative decoding, after Wang et al., "Continuous Speculative Decoding for
  Autoregressive Image Generation", arXiv 2411.11925 (official code github.com/MarkXCloud/CSpD at d91f721, read for
  facts only), run *self-speculatively* on a window of drafts like SJD (:mod:`vistok.decoding.jacobi`).

A diffusion head's marginal density is intractable, but the density of its sampling *path* is a product of
Gaussians (:class:`~vistok.interfaces.PathDensity`), so drafts are verified on paths: ``verify="path"`` is exact
(the law of :func:`decode_car` with ``final_noise=True``), ``verify="last_step"`` is the paper's approximation.
The algorithm, what is exact and the measurements: ``docs/csd.md``.  NFE counts ``generator.step`` calls (CFG's
doubled batch once).  Extras: ``accepted_hist``, ``nfe_per_sample``, ``mean_accepted``, ``window``, ``verify``,
``lossless``, ``head_evals`` (head-network rows), ``residual_draws``, ``residual_tries``, ``residual_capped``.

Heads: any :class:`~vistok.interfaces.HasPaths` head (the DiffLoss head with ``sampler="ddpm"``), or any
:class:`~vistok.interfaces.PathDensity` object (e.g. a Gaussian toy head).  Legend: b batch, w window, n tokens,
d token dim, c condition width, L path length, r rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor
from torch.distributions import Normal

from vistok.decoding.guidance import Guidance
from vistok.decoding.jacobi import DraftWindow, check_generator, check_options
from vistok.decoding.sampling import SamplingArgs, annealed_steps, no_logit_filters
from vistok.interfaces import CausalGenerator, Conditioning, HasPaths, PathDensity, check_choice, check_count
from vistok.progress import track

__all__ = ["accept_log_ratio", "decode_car", "decode_csd", "path_sampler"]

VERIFY = ("path", "last_step")
INITS = ("repeat", "zeros")


def accept_log_ratio(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``log p(tau) - log q(tau)``: a draft is accepted when ``log(uniform) < ratio``.

    Module-level so that tests can swap in a deliberately wrong rule and check that the exactness test fails.
    """
    return log_p - log_q


def _gauss_logpdf(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Sum over the last axis of ``log N(x; mean, std^2)`` (torch's Normal, no argument validation)."""
    return Normal(mean, std, validate_args=False).log_prob(x).sum(-1)


def path_sampler(head, *, final_noise: bool, num_steps: int | None = None) -> PathDensity:
    """The path sampler of a generator's head: ``head.paths(final_noise=..., num_steps=...)`` for a head that exposes
    one (the DiffLoss head), the head itself if it is already a :class:`~vistok.interfaces.PathDensity`."""
    if isinstance(head, HasPaths):
        return head.paths(final_noise=final_noise, num_steps=num_steps)
    if isinstance(head, PathDensity):
        if num_steps is not None:
            raise ValueError(f"{type(head).__name__} has a fixed path length; step_schedule needs a diffusion head")
        return head
    raise ValueError(f"continuous causal decoding needs a per-token head with step densities (a DiffLoss head, or "
                     f"an object with path_len/path_noise/path_sample/path_log_prob); got {type(head).__name__}")


def _check_generator(generator, name: str, sampling: SamplingArgs) -> None:
    check_generator(generator, name, continuous=True)
    no_logit_filters(sampling, name)
    if not hasattr(generator, "head"):
        raise ValueError(f"decoder {name!r} needs a generator with a per-token diffusion head (`head`); "
                         f"{type(generator).__name__} has none (xAR: use decoder='cells')")


# --------------------------------------------------------------------------------------------------------------
# Plain causal AR
# --------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def decode_car(generator: CausalGenerator, cond: Conditioning, sampling: SamplingArgs,
               rng: torch.Generator | None = None, progress: bool = False, *, guidance: Guidance | None = None,
               final_noise: bool = False, step_schedule: tuple[int, int] | None = None,
               **unknown) -> tuple[Tensor, int, dict]:
    """Causal AR over continuous tokens: ``(tokens (b, n, d), nfe = n, extras)``.

    Each position's head draw takes its noise ``(L, b, d)`` from ``rng`` in position order, so
    ``decode_csd(window=1)`` reproduces it draw for draw.  ``final_noise=True`` adds noise at the last denoising
    step (the law :func:`decode_csd` with ``verify="path"`` is exact for); the default is MAR's sampler.
    ``step_schedule=(first, last)`` anneals the head's diffusion steps over the positions (DiSA).
    """
    if unknown:
        raise ValueError(f"decoder 'ar' (continuous) got unknown option(s) {sorted(unknown)}; it takes final_noise=, "
                         "step_schedule=")
    _check_generator(generator, "ar", sampling)
    guidance = guidance or Guidance()
    n = generator.seq_len
    steps = annealed_steps(step_schedule, None, n)
    samplers = {s: path_sampler(generator.head, final_noise=final_noise, num_steps=s) for s in set(steps)}
    cache = guidance.new_cache(generator, cond)
    b, device = cond.batch_size, cache.lengths.device
    tokens = None
    for p in track(range(n), progress, desc="ar"):
        paths = samplers[steps[p]]
        prev = tokens[:, p - 1 : p] if p else torch.zeros(b, 1, generator.token_dim, device=device)  # p = 0: start
        z, z_null = guidance.split(guidance.step(generator, prev, torch.full((b, 1), p, device=device), cache))
        path = paths.path_sample(z[:, 0], None if z_null is None else z_null[:, 0], guidance.scale,
                                 sampling.temperature, paths.path_noise(b, rng))[0]
        tokens = z.new_zeros(b, n, path.shape[-1]) if tokens is None else tokens
        tokens[:, p] = path[-1].to(tokens.dtype)
    return tokens, n, {"decoder": "ar", "head_evals": sum(getattr(s, "evals", 0) for s in samplers.values()),
                       "final_noise": final_noise, "head_steps": steps}


# --------------------------------------------------------------------------------------------------------------
# Continuous speculative decoding
# --------------------------------------------------------------------------------------------------------------
def _rows(v: Tensor | None, *index: Tensor) -> Tensor | None:
    return None if v is None else v[index]


class _NoiseBank:
    """Trajectory alignment: every Gaussian draw of position ``p`` is drawn once (for the whole batch, in position
    order, from ``rng``) and handed out again each time position ``p`` is (re)drawn.  Stores ``(L, b, n, d)``.
    With ``aligned=False`` every call draws fresh noise."""

    def __init__(self, paths, b: int, n: int, rng: torch.Generator | None, *, aligned: bool):
        self.paths, self.b, self.n, self.rng, self.drawn, self.bank = paths, b, n, rng, 0, None
        self.aligned = aligned

    def __call__(self, bi: Tensor, pi: Tensor) -> Tensor:
        """(L, r, d) noise of rows (sample ``bi``, position ``pi``)."""
        if not self.aligned or len(bi) == 0:
            return self.paths.path_noise(len(bi), self.rng)
        need = int(pi.max()) + 1 if len(pi) else 0
        while self.drawn < need:
            eps = self.paths.path_noise(self.b, self.rng)  # L b d
            if self.bank is None:
                self.bank = eps.new_zeros(eps.shape[0], self.b, self.n, eps.shape[-1])
            self.bank[:, :, self.drawn] = eps
            self.drawn += 1
        return self.bank[:, bi, pi]


def _residual(propose: Callable[[Tensor], tuple[Tensor, Tensor]], out: Tensor, rng: torch.Generator | None,
              max_tries: int, *, keep_last: bool) -> tuple[Tensor, int, int]:
    """``(out, proposals drawn, rows capped)``: rows of ``out`` (r, d) drawn from ``norm(max(0, p - q))`` by
    acceptance-rejection; ``propose(rows (k,))`` draws tokens (k, d) from ``p`` with their ``log q - log p`` (k,).
    Rows still open after ``max_tries`` rounds keep their last proposal (``keep_last``) or ``out``'s value."""
    pending, tries = torch.arange(len(out), device=out.device), 0
    for _ in range(max_tries):
        y, log_ratio = propose(pending)
        tries += len(pending)
        take = torch.rand(len(pending), generator=rng, device=out.device) < -torch.expm1(log_ratio)  # 1 - q / p
        write = take | keep_last
        out[pending[write]] = y[write].to(out.dtype)
        pending = pending[~take]
        if len(pending) == 0:
            break
    return out, tries, len(pending)


def _path_proposal(paths: PathDensity, cfg_t: tuple[float, float], rng: torch.Generator | None, zp: Tensor,
                   zp_null: Tensor | None, zq: Tensor, zq_null: Tensor | None) -> Callable:
    """:func:`_residual`'s proposal over full paths: a path drawn from ``p`` (conditions ``zp``) and its
    ``log q - log p`` (``q``: conditions ``zq``)."""
    def propose(i: Tensor) -> tuple[Tensor, Tensor]:
        path, log_p, _ = paths.path_sample(zp[i], _rows(zp_null, i), *cfg_t, paths.path_noise(len(i), rng))
        return path[-1], paths.path_log_prob(path, zq[i], _rows(zq_null, i), *cfg_t) - log_p
    return propose


def _gauss_proposal(rng: torch.Generator | None, mp: Tensor, sp: Tensor, mq: Tensor, sq: Tensor) -> Callable:
    """:func:`_residual`'s proposal in last-step Gaussian space: ``N(mp, sp)``, ratio against ``N(mq, sq)``."""
    def propose(i: Tensor) -> tuple[Tensor, Tensor]:
        y = mp[i] + sp[i] * torch.randn(mp[i].shape, generator=rng, device=mp.device, dtype=mp.dtype)
        return y, _gauss_logpdf(y, mq[i], sq[i]) - _gauss_logpdf(y, mp[i], sp[i])
    return propose


@torch.no_grad()
def decode_csd(generator: CausalGenerator, cond: Conditioning, sampling: SamplingArgs,
               rng: torch.Generator | None = None, progress: bool = False, *, guidance: Guidance | None = None,
               window: int = 16, verify: Literal["path", "last_step"] = "path",
               init: Literal["repeat", "zeros"] = "repeat",
               align: bool = True, max_resample: int = 100, inner_temperature: float = 1.0,
               **unknown) -> tuple[Tensor, int, dict]:
    """Continuous speculative decoding (see the module docstring for the algorithm and what is exact).

    Args:
        generator: a causal continuous generator with a DDPM diffusion head (e.g. ``MARARGenerator``); under
            ``generate(..., cfg_scale=s)`` the head guides eps with scale ``s``.
        sampling: ``temperature`` (> 0) scales the head's step noise; top-k / top-p are rejected.
        window: positions predicted per forward pass (``W``), capped at the sequence length; ``window=1`` is
            :func:`decode_car` (same tokens for the same seed).
        verify: ``"path"`` (exact, full-trajectory ratio, noisy last step) or ``"last_step"`` (the paper's
            last-step Gaussian ratio with MAR's deterministic last step; approximate).
        init: placeholder inputs for positions not drafted yet: ``"repeat"`` (previous token) or ``"zeros"``.
        align: share each position's noise across its drafts and its target draw (trajectory alignment);
            ``verify="last_step"`` always aligns.
        max_resample: cap on residual proposals per rejected token (the paper's code: 100).
        inner_temperature: ``verify="last_step"`` only: widens both last-step Gaussians in the ratio (official 42).

    Returns ``(tokens (b, n, d), nfe, extras)``.
    """
    check_options("csd", window, init, INITS, unknown, "window=, verify=, init=, align=, max_resample=, "
                  "inner_temperature=")
    check_choice("verify", verify, VERIFY, " ('path' is exact, 'last_step' is the paper's approximation)")
    check_count("max_resample", max_resample, hint=" (residual proposals per rejected token)")
    if not inner_temperature > 0:
        raise ValueError(f"inner_temperature must be > 0, got {inner_temperature}")
    _check_generator(generator, "csd", sampling)
    guidance = guidance or Guidance()
    if sampling.temperature <= 0:
        raise ValueError("decoder 'csd' compares step densities, which need noise: temperature must be > 0 "
                         "(for temperature 0 use decoder='ar')")
    exact = verify == "path"
    if exact and inner_temperature != 1.0:
        raise ValueError("inner_temperature only applies to verify='last_step' (it makes the ratio inexact)")
    if not exact and not isinstance(generator.head, HasPaths):
        raise ValueError("verify='last_step' needs a DiffLossHead (MAR's deterministic last step); use verify='path'")
    paths = path_sampler(generator.head, final_noise=exact)
    cfg_t = (guidance.scale, sampling.temperature)  # the path sampler's cfg_scale and temperature
    cache = guidance.new_cache(generator, cond)
    b, n, d, device, f64 = cond.batch_size, generator.seq_len, generator.token_dim, cache.lengths.device, torch.float64
    win = DraftWindow(b, n, window, device, "csd", progress)
    w, cols = win.w, win.cols
    seq = torch.zeros(b, n, d, device=device)  # accepted tokens below `acc`, drafts / placeholders above
    # draft records per position: the condition(s) it was drawn with; its path and log q ("path") or its float64
    # last step value and std ("last_step")
    zq = zq_null = None
    draft_path = torch.zeros(b, n, paths.path_len, d, dtype=f64, device=device) if exact else None
    log_q = torch.zeros(b, n, dtype=f64, device=device)
    last_q, std_q = torch.zeros(b, n, d, dtype=f64, device=device), torch.ones(b, n, d, dtype=f64, device=device)
    noise_for = _NoiseBank(paths, b, n, rng, aligned=align or not exact)
    res_draws, res_tries, res_capped = 0, 0, 0
    for start, pos, fresh, drafted in win.passes():
        if bool(fresh.any()):  # placeholder inputs
            fb = fresh.nonzero(as_tuple=True)[0]
            before = seq[torch.arange(b, device=device), (win.front - 1).clamp(min=0)] * (win.front > 0)[:, None]
            seq[fb, pos[fresh]] = before[fb] if init == "repeat" else 0.0
        inputs = seq.gather(1, (pos - 1).clamp(min=0)[..., None].expand(-1, -1, d))
        z, z_null = guidance.split(guidance.step(generator, inputs, pos, cache))  # b w c
        if zq is None:
            zq = z.new_zeros(b, n, z.shape[-1])
            zq_null = None if z_null is None else z.new_zeros(b, n, z.shape[-1])
        ok = pos < win.acc[:, None]
        if not exact:  # trajectory alignment: the target redraws every open position with that position's noise
            lb, lc = (~ok).nonzero(as_tuple=True)
            tpath, _, tstd = paths.path_sample(z[lb, lc], _rows(z_null, lb, lc), *cfg_t, noise_for(lb, pos[lb, lc]))
            tgt, tgt_std = seq.new_zeros(b, w, d, dtype=f64), seq.new_ones(b, w, d, dtype=f64)
            tgt[lb, lc], tgt_std[lb, lc] = tpath[-1].to(f64), tstd.to(f64)
        # -- verification of every drafted column, vectorised
        if bool(drafted.any()):
            rb, rc = drafted.nonzero(as_tuple=True)
            rp = pos[rb, rc]
            if exact:
                path_q = draft_path[rb, rp].transpose(0, 1)
                ratio = accept_log_ratio(paths.path_log_prob(path_q, z[rb, rc], _rows(z_null, rb, rc), *cfg_t),
                                         log_q[rb, rp])
            else:
                x, k = last_q[rb, rp], inner_temperature
                ratio = accept_log_ratio(_gauss_logpdf(x, tgt[rb, rc], k * tgt_std[rb, rc]),
                                         _gauss_logpdf(x, x, k * std_q[rb, rp]))
            ok[rb, rc] = torch.rand(len(rb), generator=rng, device=device).log() < ratio
        first = ok.long().cumprod(1).sum(1)  # first failing column, w if none
        at_first = cols == first[:, None]
        # -- the first rejected draft: a residual sample
        resid = at_first & drafted
        if bool(resid.any()):
            rb, rc = resid.nonzero(as_tuple=True)
            rp = pos[rb, rc]
            if exact:
                propose = _path_proposal(paths, cfg_t, rng, z[rb, rc], _rows(z_null, rb, rc), zq[rb, rp],
                                         _rows(zq_null, rb, rp))
                tok, tries, capped = _residual(propose, seq.new_zeros(len(rb), d, dtype=f64), rng, max_resample,
                                               keep_last=True)
            else:  # the paper's residual in last-step Gaussian space; capped rows take the target's aligned token
                propose = _gauss_proposal(rng, tgt[rb, rc], tgt_std[rb, rc], last_q[rb, rp], std_q[rb, rp])
                tok, tries, capped = _residual(propose, tgt[rb, rc], rng, max_resample, keep_last=False)
            seq[rb, rp] = tok.to(seq.dtype)
            res_draws, res_tries, res_capped = res_draws + len(rb), res_tries + tries, res_capped + capped
        # -- fresh draws from p: the first column when it had no draft, and every column after it (new drafts)
        redraw = (at_first & ~drafted) | (cols > first[:, None])
        if bool(redraw.any()):
            rb, rc = redraw.nonzero(as_tuple=True)
            rp = pos[rb, rc]
            zq[rb, rp] = z[rb, rc]
            if zq_null is not None:
                zq_null[rb, rp] = z_null[rb, rc]
            if exact:
                new_path, new_log_q, _ = paths.path_sample(z[rb, rc], _rows(z_null, rb, rc), *cfg_t,
                                                           noise_for(rb, rp))
                draft_path[rb, rp], log_q[rb, rp] = new_path.transpose(0, 1).to(f64), new_log_q.to(f64)
                seq[rb, rp] = new_path[-1].to(seq.dtype)
            else:
                last_q[rb, rp], std_q[rb, rp] = tgt[rb, rc], tgt_std[rb, rc]
                seq[rb, rp] = tgt[rb, rc].to(seq.dtype)
        win.accept(start, first, cache)
    return seq, win.nfe, win.extras(verify=verify, lossless=exact, head_evals=getattr(paths, "evals", 0),
                                    residual_draws=res_draws, residual_tries=res_tries, residual_capped=res_capped)
