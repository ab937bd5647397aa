"""Causal decoding of continuous tokens with a per-token diffusion head: plain AR and continuous speculative decoding.

* :func:`decode_car` -- plain causal AR: one token per generator forward pass (NFE = N), each token drawn by the
  head's DDPM sampler.  ``generate(..., decoder="ar")`` routes here for continuous generators.
* :func:`decode_csd` -- continuous speculative decoding, after Wang et al., "Continuous Speculative Decoding for
  Autoregressive Image Generation", arXiv 2411.11925 (official code github.com/MarkXCloud/CSpD at d91f721, read for
  facts only), run *self-speculatively* on a window of drafts like SJD (:mod:`vistok.decoding.jacobi`).

Speculative sampling needs ``p(x) / q(x)`` for the draft token ``x``, but a diffusion head's marginal density is an
intractable integral over denoising trajectories.  The head's *trajectory* density is tractable: every ancestral
DDPM step is a Gaussian ``N(x_{k+1}; mu(x_k, t_k, z), (T sigma(x_k, t_k, z))^2)`` (T = temperature).

One iteration (one ``generator.step``, one NFE) per sample with ``a`` accepted tokens:

1. the window covers positions ``a .. a + W - 1`` (shifted left to end at ``N - 1`` near the end).  The inputs are
   ``[last accepted token, d_a, .., d_{a+W-2}]``; output ``j`` is the head condition ``z_p`` of position ``a + j``
   given the prefix and the drafts before it.  Positions never drafted yet get placeholders (``init="repeat"``: a
   copy of the token before them; ``"zeros"``), which are inputs only: they have no density and are never accepted;
2. each draft ``x`` was drawn by the head from the condition ``z_q`` of the previous iteration (the model's own
   prediction from a partly wrong context), and its full path ``tau = (x_S, .., x_0 = x)`` and ``log q(tau)`` were
   kept.  Verification, vectorised over batch and window:

   * ``verify="path"`` (default): accept when ``u < p(tau) / q(tau)``, both sides the product of the per-step
     Gaussians (the shared initial N(0, I) cancels); ``log p(tau)`` is one batched head pass over all steps of all
     drafts with ``z_p``.  At the first rejection the token is drawn from the residual ``norm(max(0, p - q))`` over
     trajectories by acceptance-rejection (the paper's scheme): propose ``tau' ~ p`` (a fresh target path) and keep
     it with probability ``max(0, 1 - q(tau') / p(tau'))`` -- the bound ``residual <= p`` makes this valid with no
     integral -- for at most ``max_resample`` proposals;
   * ``verify="last_step"`` (the paper's approximation, as in the official code): the target redraws the position
     with the draft's own noise (*denoising trajectory alignment*); the ratio uses only the two last-step Gaussians,
     ``N(x; mu_p, (k sigma_p)^2) / N(x; mu_q, (k sigma_q)^2)`` with ``k = inner_temperature`` (official: 42) and
     each side's own ``x_1``; the residual is sampled in that last-step Gaussian space with ``N(mu_p, sigma_p^2)``
     as proposal (no head calls), falling back to the target's aligned token;

   a position without a draft (placeholder, or the bonus position after an accepted window) is drawn from ``p``;
3. the outputs after the first rejection are sampled from their ``z_p`` and become the next drafts (with their
   paths, ``log q`` and ``z_q = z_p``); the KV cache is rolled back with ``cache.truncate`` to the accepted length
   per sample, so each sample of a batch accepts its own count.

Trajectory alignment (``align=True``, default): all Gaussian draws of a position (initial noise and per-step
noise) are drawn once per absolute position, in position order, and reused by every draft of that position and
by the fresh target draw there; a redrawn draft therefore moves only as much as its condition moved.  The residual
sampler always uses fresh noise.

What is exact (``verify="path"``):

* the tokens follow exactly the law of :func:`decode_car` with ``final_noise=True``: MAR's ancestral sampler
  (same CFG on eps, same temperature on the step noise) whose *last* step also adds Gaussian noise, with the
  head's learned-range variance at t = 0 (IDDPM's clipped posterior variance; std about 0.005 T for the cosine
  schedule).  MAR's own last step is deterministic, which leaves no density for the accepted token, so the exact
  mode cannot target it;
* except for the cap on the residual sampler: a capped draw keeps the last proposal, which moves the law of that
  position by at most ``r (1 - r)^K <= 1 / (e (K + 1))`` in total variation (``r`` the rejection probability,
  ``K = max_resample``; about 0.0036 for K = 100).  ``extras["residual_capped"]`` counts capped draws;
* trajectory alignment keeps exactness: a position's noise is independent of everything its verification
  conditions on (earlier positions, their uniforms, both conditions), and it is spent once the position is
  accepted;
* float32 log-densities summed over S steps: ratios carry float rounding (~1e-6 relative), nothing more.

What is approximate (``verify="last_step"``, ``extras["lossless"] = False``): the last-step Gaussians stand in for
the token marginals, at different ``x_1`` for draft and target; accepted tokens are MAR's deterministic
(mean) last step while residual tokens carry last-step noise; ``inner_temperature != 1`` flattens the ratio;
the fallback after ``max_resample`` tries is the target's aligned token.

Cost and NFE: NFE counts ``generator.step`` calls (classifier-free guidance's doubled batch counts once); the text
prefix prefilled in ``new_cache`` is not counted.  The head dominates compute for small transformers: per
iteration it samples every redrawn position (S sequential passes) and, for ``verify="path"``, evaluates the
drafts' paths (one batched pass over S steps); ``extras["head_evals"]`` counts head-network rows (CFG rows
twice).  Memory: the drafts' paths and the aligned noise, ``O(B N S D)`` floats each.

Extras: ``accepted_hist`` (index k = (sample, forward) pairs that accepted k tokens), ``nfe_per_sample``,
``mean_accepted``, ``window``, ``verify``, ``lossless``, ``head_evals``, ``residual_draws`` (positions that needed
the residual), ``residual_tries``, ``residual_capped``.

Heads: :class:`~vistok.generators.heads.DiffLossHead` (``sampler="ddpm"``) through :class:`DiffusionPaths`, or any
head object with the same four members (``path_len``, ``path_noise``, ``path_sample``, ``path_log_prob``), e.g. a
Gaussian toy head.  Legend: b batch, w window, n tokens, d token dim, c condition width, s sampling steps,
L = s + 1 path length, r rows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vistok.decoding.sampling import Guided, SamplingArgs
from vistok.interfaces import Conditioning

__all__ = ["DiffusionPaths", "accept_log_ratio", "decode_car", "decode_csd", "path_sampler"]

VERIFY = ("path", "last_step")
INITS = ("repeat", "zeros")
_LOG_2PI = math.log(2 * math.pi)


def accept_log_ratio(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``log p(tau) - log q(tau)``: a draft is accepted when ``log(uniform) < ratio``.

    Module-level so that tests can swap in a deliberately wrong rule and check that the exactness test fails.
    """
    return log_p - log_q


def _gauss_logpdf(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Sum over the last axis of ``log N(x; mean, std^2)``."""
    return (-0.5 * ((x - mean) / std) ** 2 - std.log() - 0.5 * _LOG_2PI).sum(-1)


# --------------------------------------------------------------------------------------------------------------
# Trajectory densities of the DiffLoss head
# --------------------------------------------------------------------------------------------------------------
class DiffusionPaths:
    """The ancestral DDPM sampler of a :class:`~vistok.generators.heads.DiffLossHead`, with path log-densities.

    Same arithmetic as ``DiffLossHead.sample`` (``sampler="ddpm"``): ``x_S ~ N(0, I)``, then per kept timestep
    ``t`` the posterior mean of the predicted ``x_0`` (CFG on eps) plus ``T * exp(logvar / 2) * noise`` with the
    learned-range log-variance.  With ``final_noise=False`` the last step (t = 0) returns the mean, as MAR does;
    with ``final_noise=True`` it adds noise too, with the log-variance ``frac log(beta_0) + (1 - frac) log(v)``,
    ``v`` the respaced posterior variance of the second-to-last step (IDDPM's clipping).

    Path layout: ``(L, r, d)``, ``path[0]`` the initial noise, ``path[k]`` the state after step ``k``, the token
    last.  Noise layout: ``(L, r, d)``, ``noise[0]`` initial, ``noise[k]`` the noise of step ``k`` (``noise[:s]``
    is what ``DiffLossHead.sample(noise=...)`` takes).  ``evals`` counts head-network rows.
    """

    def __init__(self, head, *, final_noise: bool):
        if getattr(head, "sampler", "ddpm") != "ddpm":
            raise ValueError(f"the head samples with sampler={head.sampler!r}, which is deterministic after the initial "
                             "noise and has no step densities; build the generator with head_sampler='ddpm'")
        self.head, self.final_noise, self.evals = head, final_noise, 0
        s = self.steps = head.num_sampling_steps
        self.path_len, self.token_dim = s + 1, head.token_dim
        sched = head._sampling_scheduler(s)
        self.timesteps = [int(t) for t in sched.timesteps.tolist()]
        abar = head._abar  # float64
        rows = []
        for t in self.timesteps:
            prev = int(sched.previous_timestep(t))
            a_t, a_prev = float(abar[t]), float(abar[prev]) if prev >= 0 else 1.0
            beta = 1 - a_t / a_prev
            post = (1 - a_prev) / (1 - a_t) * beta
            rows.append([math.sqrt(1 - a_t), math.sqrt(a_t), math.sqrt(a_prev) * beta / (1 - a_t),
                         math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t), math.log(beta), post])
        table = torch.tensor(rows, dtype=torch.float64)
        post = table[:, 5]
        post[-1] = post[-2] if s > 1 else table[-1, 4].exp()  # clipped at t = 0 (only used with final_noise)
        table[:, 5] = post.log()
        self._table = table  # s x 6: sqrt(1-abar), sqrt(abar), coef_x0, coef_xt, log beta, log post var

    def path_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Every Gaussian draw of ``n`` paths: ``(L, n, d)``."""
        ref = self.head.input_proj.weight
        return torch.randn(self.path_len, n, self.token_dim, generator=generator, device=ref.device, dtype=ref.dtype)

    def _moments(self, x: Tensor, k: Tensor, z: Tensor, z_null: Tensor | None, cfg_scale: float) -> tuple[Tensor, Tensor]:
        """Float64 mean and log-variance (r, d) of step indices ``k`` (r,) from float64 states ``x`` (r, d).

        The network runs in its own dtype on the rounded state; the step arithmetic stays in float64 so that the
        path densities of two heads are compared on the same path without float32 cancellation (a random head's
        states can reach 1e4 while the last step's std is 5e-3)."""
        tab = self._table.to(x.device)[k]  # r 6
        t = torch.tensor(self.timesteps, device=x.device)[k]
        out = self.head.guided_net(x.to(self.head.input_proj.weight.dtype), t, z, z_null, cfg_scale).double()
        self.evals += x.shape[0] * (2 if z_null is not None and cfg_scale != 1.0 else 1)
        d = self.token_dim
        eps, frac = out[:, :d], (out[:, d:] + 1) / 2
        x0 = (x - tab[:, 0:1] * eps) / tab[:, 1:2]
        mean = tab[:, 2:3] * x0 + tab[:, 3:4] * x
        return mean, frac * tab[:, 4:5] + (1 - frac) * tab[:, 5:6]

    def path_sample(self, z: Tensor, z_null: Tensor | None, cfg_scale: float, temperature: float,
                    noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Sample paths ``(L, r, d)`` (float64) from conditions ``z`` (r, c) with ``noise`` (L, r, d).

        Returns ``(path, log_density (r,), last_std (r, d))``: the log-density of the stochastic steps (the
        initial N(0, I) term left out), evaluated on the stored path exactly as :meth:`path_log_prob` does, and
        the std of the last step (``T exp(logvar / 2)``, also when it adds no noise).
        """
        r = z.shape[0]
        noise = noise.double()
        x, path, logp = noise[0], [noise[0]], noise.new_zeros(r)
        std = noise.new_zeros(r, self.token_dim)
        for k in range(self.steps):
            mean, logvar = self._moments(x, torch.full((r,), k, device=z.device), z, z_null, cfg_scale)
            std = (0.5 * logvar).exp() * temperature
            if k == self.steps - 1 and not self.final_noise:
                x = mean
            else:
                x = mean + std * noise[k + 1]
                logp = logp + _gauss_logpdf(x, mean, std)
            path.append(x)
        return torch.stack(path), logp, std

    def path_log_prob(self, path: Tensor, z: Tensor, z_null: Tensor | None, cfg_scale: float,
                      temperature: float) -> Tensor:
        """Log-density (r,) of paths ``(L, r, d)`` under conditions ``z`` (r, c): one batched pass over all steps."""
        steps = self.steps if self.final_noise else self.steps - 1
        r, path = z.shape[0], path.double()
        if steps == 0:
            return path.new_zeros(r)
        k = torch.arange(steps, device=z.device).repeat_interleave(r)  # step-major rows
        rep = lambda v: None if v is None else v.repeat(steps, 1)
        mean, logvar = self._moments(path[:steps].flatten(0, 1), k, rep(z), rep(z_null), cfg_scale)
        std = (0.5 * logvar).exp() * temperature
        return _gauss_logpdf(path[1 : steps + 1].flatten(0, 1), mean, std).view(steps, r).sum(0)


def path_sampler(head, *, final_noise: bool):
    """The path sampler of a generator's head: :class:`DiffusionPaths` for a DiffLossHead, the head itself if it
    already has ``path_len``/``path_noise``/``path_sample``/``path_log_prob``."""
    from vistok.generators.heads import DiffLossHead

    if isinstance(head, DiffLossHead):
        return DiffusionPaths(head, final_noise=final_noise)
    if all(hasattr(head, m) for m in ("path_len", "path_noise", "path_sample", "path_log_prob")):
        return head
    raise ValueError(f"continuous causal decoding needs a per-token diffusion head with step densities "
                     f"(DiffLossHead, or an object with path_noise/path_sample/path_log_prob); got "
                     f"{type(head).__name__}")


# --------------------------------------------------------------------------------------------------------------
# Shared checks and the guided head
# --------------------------------------------------------------------------------------------------------------
def _unwrap(generator, name: str):
    """(generator, cfg_scale): CFG is applied inside the head on eps, not to the generator's output."""

    cfg_scale = 1.0
    if isinstance(generator, Guided):
        generator, cfg_scale = generator.inner, generator.scale
    if getattr(generator, "kind", None) != "continuous":
        raise ValueError(f"decoder {name!r} samples continuous tokens from a diffusion head, but this generator is "
                         f"{getattr(generator, 'kind', 'not a vistok generator')!r}; for discrete token ids use "
                         "decoder='sjd' or 'mcsjd' (speculative, lossless) or 'ar'")
    if not getattr(generator, "is_causal", False):
        raise ValueError(f"decoder {name!r} needs a causal continuous generator (e.g. MARARGenerator, preset "
                         f"'mar_ar_tiny'); {type(generator).__name__} is not causal: use decoder='masked' for MAR")
    if not hasattr(generator, "head"):
        raise ValueError(f"decoder {name!r} needs a generator with a per-token diffusion head (`head`); "
                         f"{type(generator).__name__} has none (xAR: use decoder='cells')")
    return generator, cfg_scale


def _check_sampling(sampling: SamplingArgs, name: str) -> None:
    if sampling.top_k or (sampling.top_p is not None and sampling.top_p < 1):
        raise ValueError(f"top_k / top_p filter logits; decoder {name!r} samples continuous tokens from a diffusion "
                         "head: leave them unset (temperature scales the head's step noise)")


class _Kernel:
    """The head's path sampler with the run's CFG scale and temperature bound in."""

    def __init__(self, paths, cfg_scale: float, temperature: float):
        self.paths, self.cfg, self.temperature = paths, cfg_scale, temperature

    def sample(self, z: Tensor, z_null: Tensor | None, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.paths.path_sample(z, z_null, self.cfg, self.temperature, noise)

    def log_prob(self, path: Tensor, z: Tensor, z_null: Tensor | None) -> Tensor:
        return self.paths.path_log_prob(path, z, z_null, self.cfg, self.temperature)


def _start(generator, cond: Conditioning, cfg_scale: float):
    cache = generator.new_cache(cond.cat(cond.null()) if cfg_scale != 1.0 else cond)
    if cfg_scale != 1.0:
        cache.group = 2

    def step(inputs: Tensor, positions: Tensor) -> tuple[Tensor, Tensor | None]:
        if cfg_scale == 1.0:
            return generator.step(inputs, positions, cache), None
        z = generator.step(torch.cat([inputs, inputs]), torch.cat([positions, positions]), cache)
        return z.chunk(2)

    return cache, step


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


# --------------------------------------------------------------------------------------------------------------
# Plain causal AR
# --------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def decode_car(generator, cond: Conditioning, sampling: SamplingArgs, rng: torch.Generator | None = None,
               progress: bool = False, *, final_noise: bool = False, **unknown) -> tuple[Tensor, int, dict]:
    """Causal AR over continuous tokens: ``(tokens (b, n, d), nfe = n, extras)``.

    Each position's head draw takes its noise ``(L, b, d)`` from ``rng`` in position order, so
    ``decode_csd(window=1)`` reproduces it draw for draw.  ``final_noise=True`` adds noise at the last denoising
    step (the law :func:`decode_csd` with ``verify="path"`` is exact for); the default is MAR's sampler.
    """
    if unknown:
        raise ValueError(f"decoder 'ar' (continuous) got unknown option(s) {sorted(unknown)}; it takes final_noise=")
    generator, cfg_scale = _unwrap(generator, "ar")
    _check_sampling(sampling, "ar")
    paths = path_sampler(generator.head, final_noise=final_noise)
    kernel = _Kernel(paths, cfg_scale, sampling.temperature)
    cache, step = _start(generator, cond, cfg_scale)
    b, n, device = cond.batch_size, generator.seq_len, cache.lengths.device
    tokens, prev = None, None
    bar = _progress(progress, n, "ar")
    for p in range(n):
        z, z_null = step(prev if prev is not None else torch.zeros(b, 1, generator.token_dim, device=device),
                         torch.full((b, 1), p, device=device))
        path, _, _ = kernel.sample(z[:, 0], None if z_null is None else z_null[:, 0], paths.path_noise(b, rng))
        if tokens is None:
            tokens = z.new_zeros(b, n, path.shape[-1])
        tokens[:, p] = path[-1].to(tokens.dtype)
        prev = tokens[:, p : p + 1]
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return tokens, n, {"decoder": "ar", "head_evals": getattr(paths, "evals", 0), "final_noise": final_noise}


# --------------------------------------------------------------------------------------------------------------
# Continuous speculative decoding
# --------------------------------------------------------------------------------------------------------------
def _residual_paths(kernel: _Kernel, zp: Tensor, zp_null: Tensor | None, zq: Tensor, zq_null: Tensor | None,
                    rng: torch.Generator | None, max_tries: int) -> tuple[Tensor, int, int]:
    """Tokens (r, d) from ``norm(max(0, p - q))`` over paths by acceptance-rejection with proposal ``p``.

    Returns ``(tokens, proposals drawn, rows capped)``; a capped row keeps its last proposal.
    """
    r = zp.shape[0]
    pending = torch.arange(r, device=zp.device)
    out, tries, last = None, 0, None
    for _ in range(max_tries):
        sub = lambda v: None if v is None else v[pending]
        path, log_p, _ = kernel.sample(zp[pending], sub(zp_null), kernel.paths.path_noise(len(pending), rng))
        log_q = kernel.log_prob(path, zq[pending], sub(zq_null))
        tries += len(pending)
        u = torch.rand(len(pending), generator=rng, device=zp.device)
        take = u < -torch.expm1(log_q - log_p)  # probability max(0, 1 - q / p)
        if out is None:
            out = path.new_zeros(r, path.shape[-1])
        out[pending[take]] = path[-1][take]
        pending, last = pending[~take], path[-1][~take]
        if len(pending) == 0:
            break
    if len(pending):
        out[pending] = last
    return out, tries, len(pending)


def _residual_gauss(mean_p: Tensor, std_p: Tensor, mean_q: Tensor, std_q: Tensor, fallback: Tensor,
                    rng: torch.Generator | None, max_tries: int) -> tuple[Tensor, int, int]:
    """The paper's residual in last-step Gaussian space: ``norm(max(0, N(mu_p, s_p) - N(mu_q, s_q)))`` by
    acceptance-rejection with proposal ``N(mu_p, s_p)``; rows still open after ``max_tries`` take ``fallback``."""
    out, pending, tries = fallback.clone(), torch.arange(mean_p.shape[0], device=mean_p.device), 0
    for _ in range(max_tries):
        mp, sp, mq, sq = mean_p[pending], std_p[pending], mean_q[pending], std_q[pending]
        y = mp + sp * torch.randn(mp.shape, generator=rng, device=mp.device, dtype=mp.dtype)
        tries += len(pending)
        u = torch.rand(len(pending), generator=rng, device=mp.device)
        take = u < -torch.expm1(_gauss_logpdf(y, mq, sq) - _gauss_logpdf(y, mp, sp))
        out[pending[take]] = y[take]
        pending = pending[~take]
        if len(pending) == 0:
            break
    return out, tries, len(pending)


def _check_options(window, verify: str, init: str, max_resample, inner_temperature: float, unknown: dict) -> None:
    if unknown:
        raise ValueError(f"decoder 'csd' got unknown option(s) {sorted(unknown)}; it takes window=, verify=, init=, "
                         "align=, max_resample=, inner_temperature=")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1 (tokens drafted per forward pass), got {window!r}; window=1 is "
                         "plain causal AR, use decoder='ar' for that")
    if verify not in VERIFY:
        raise ValueError(f"verify must be one of {VERIFY} ('path' is exact, 'last_step' is the paper's "
                         f"approximation), got {verify!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if isinstance(max_resample, bool) or not isinstance(max_resample, int) or max_resample < 1:
        raise ValueError(f"max_resample must be an int >= 1 (residual proposals per rejected token), got {max_resample!r}")
    if not inner_temperature > 0:
        raise ValueError(f"inner_temperature must be > 0, got {inner_temperature}")


@torch.no_grad()
def decode_csd(generator, cond: Conditioning, sampling: SamplingArgs, rng: torch.Generator | None = None,
               progress: bool = False, *, window: int = 16, verify: str = "path", init: str = "repeat",
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
    _check_options(window, verify, init, max_resample, inner_temperature, unknown)
    if verify == "path" and inner_temperature != 1.0:
        raise ValueError("inner_temperature only applies to verify='last_step' (it makes the ratio inexact)")
    generator, cfg_scale = _unwrap(generator, "csd")
    _check_sampling(sampling, "csd")
    if sampling.temperature <= 0:
        raise ValueError("decoder 'csd' compares step densities, which need noise: temperature must be > 0 "
                         "(for temperature 0 use decoder='ar')")
    exact = verify == "path"
    align = align or not exact
    if not exact and not hasattr(generator.head, "guided_net"):
        raise ValueError("verify='last_step' needs a DiffLossHead (MAR's deterministic last step); use verify='path'")
    paths = path_sampler(generator.head, final_noise=exact)
    kernel = _Kernel(paths, cfg_scale, sampling.temperature)
    cache, step = _start(generator, cond, cfg_scale)
    b, n, d, device = cond.batch_size, generator.seq_len, generator.token_dim, cache.lengths.device
    w, ell = min(window, n), paths.path_len
    cols = torch.arange(w, device=device)[None]  # 1 w
    seq = torch.zeros(b, n, d, device=device)  # accepted tokens below `acc`, drafts / placeholders above
    acc = torch.zeros(b, dtype=torch.long, device=device)
    front = torch.zeros(b, dtype=torch.long, device=device)  # drafts drawn by the model lie in [acc, front)
    # per-position draft records: condition(s) they were drawn with, path, log q, last-step std
    zq = zq_null = draft_path = log_q = std_q = None
    noise_bank, drawn = None, 0  # aligned noise per absolute position, filled in position order
    hist = torch.zeros(w + 1, dtype=torch.long, device=device)
    nfe_per_sample = torch.zeros(b, dtype=torch.long, device=device)
    nfe, res_draws, res_tries, res_capped = 0, 0, 0, 0
    bar = _progress(progress, n, "csd")

    def noise_for(bi: Tensor, pi: Tensor) -> Tensor:
        """(L, r, d) noise for rows (sample bi, position pi)."""
        nonlocal noise_bank, drawn
        if not align:
            return paths.path_noise(len(bi), rng)
        need = int(pi.max()) + 1 if len(pi) else 0
        while drawn < need:
            eps = paths.path_noise(b, rng)  # L b d
            if noise_bank is None:
                noise_bank = eps.new_zeros(ell, b, n, d)
            noise_bank[:, :, drawn] = eps
            drawn += 1
        return noise_bank[:, bi, pi]

    while True:
        active = acc < n
        if not bool(active.any()):
            break
        start = acc.clamp(max=n - w)
        pos = start[:, None] + cols  # b w
        # -- placeholders for the inputs not drafted yet: [front, start + w - 1)
        fresh = (pos >= front[:, None]) & (pos < (start + w - 1)[:, None])
        if bool(fresh.any()):
            before = seq[torch.arange(b, device=device), (front - 1).clamp(min=0)] * (front > 0)[:, None]
            fill = before if init == "repeat" else torch.zeros_like(before)
            seq[fresh.nonzero(as_tuple=True)[0], pos[fresh]] = fill[fresh.nonzero(as_tuple=True)[0]]
        # -- one forward pass over the window
        inputs = seq.gather(1, (pos - 1).clamp(min=0)[..., None].expand(-1, -1, d))
        z, z_null = step(inputs, pos)  # b w c (each)
        nfe += 1
        nfe_per_sample += active.long()
        if zq is None:
            zq = z.new_zeros(b, n, z.shape[-1])
            zq_null = None if z_null is None else z.new_zeros(b, n, z.shape[-1])
        drafted = (pos >= acc[:, None]) & (pos < front[:, None])
        ok = pos < acc[:, None]
        aligned = None  # last_step: the target's aligned draws at the drafted columns
        # -- verification of every drafted column, vectorised
        if bool(drafted.any()):
            rb, rc = drafted.nonzero(as_tuple=True)
            rp = pos[rb, rc]
            zr, zr_null = z[rb, rc], None if z_null is None else z_null[rb, rc]
            x = seq[rb, rp]
            if exact:
                log_p = kernel.log_prob(draft_path[rb, rp].transpose(0, 1), zr, zr_null)
                ratio = accept_log_ratio(log_p, log_q[rb, rp])
            else:
                tpath, _, std_p = kernel.sample(zr, zr_null, noise_for(rb, rp))
                aligned = (tpath, std_p)
                k = inner_temperature
                ratio = accept_log_ratio(_gauss_logpdf(x, tpath[-1], k * std_p), _gauss_logpdf(x, x, k * std_q[rb, rp]))
            u = torch.rand(len(rb), generator=rng, device=device)
            ok[rb, rc] = u.log() < ratio
        first = ok.long().cumprod(1).sum(1)  # first failing column, w if none
        at_first = cols == first[:, None]
        # -- the first rejected draft: residual sample
        resid = at_first & drafted
        if bool(resid.any()):
            rb, rc = resid.nonzero(as_tuple=True)
            rp = pos[rb, rc]
            sub = lambda v, i, j: None if v is None else v[i, j]
            if exact:
                tok, tries, capped = _residual_paths(kernel, z[rb, rc], sub(z_null, rb, rc), zq[rb, rp],
                                                     sub(zq_null, rb, rp), rng, max_resample)
            else:
                sel = at_first[drafted.nonzero(as_tuple=True)]  # drafted rows (in order) that are the first rejection
                tpath, std_p = aligned[0][:, sel], aligned[1][sel]
                tok, tries, capped = _residual_gauss(tpath[-1], std_p, seq[rb, rp], std_q[rb, rp], tpath[-1], rng,
                                                     max_resample)
            seq[rb, rp] = tok.to(seq.dtype)
            res_draws, res_tries, res_capped = res_draws + len(rb), res_tries + tries, res_capped + capped
        # -- fresh draws from p: the first column when it had no draft, and every column after it (new drafts)
        redraw = (at_first & ~drafted) | (cols > first[:, None])
        if bool(redraw.any()):
            rb, rc = redraw.nonzero(as_tuple=True)
            rp = pos[rb, rc]
            zr, zr_null = z[rb, rc], None if z_null is None else z_null[rb, rc]
            if aligned is None:
                new_path, new_log_q, new_std = kernel.sample(zr, zr_null, noise_for(rb, rp))
            else:  # last_step: a drafted column was already redrawn with its aligned noise during verification
                slot = torch.full((b, w), -1, dtype=torch.long, device=device)
                slot[drafted] = torch.arange(int(drafted.sum()), device=device)
                j = slot[rb, rc]
                new_path = aligned[0].new_zeros(ell, len(rb), d)
                new_std = aligned[1].new_zeros(len(rb), d)
                have = j >= 0
                new_path[:, have], new_std[have] = aligned[0][:, j[have]], aligned[1][j[have]]
                if bool((~have).any()):
                    m = ~have
                    new_path[:, m], _, new_std[m] = kernel.sample(zr[m], None if zr_null is None else zr_null[m],
                                                                  noise_for(rb[m], rp[m]))
                new_log_q = None
            seq[rb, rp] = new_path[-1].to(seq.dtype)
            zq[rb, rp] = zr
            if zq_null is not None:
                zq_null[rb, rp] = zr_null
            if exact:
                if draft_path is None:
                    draft_path, log_q = new_path.new_zeros(b, n, ell, d), new_log_q.new_zeros(b, n)
                draft_path[rb, rp] = new_path.transpose(0, 1)
                log_q[rb, rp] = new_log_q
            else:
                if std_q is None:
                    std_q = new_std.new_ones(b, n, d)
                std_q[rb, rp] = new_std
        new_acc = torch.where(first < w, start + first + 1, start + w)
        hist += torch.bincount((new_acc - acc)[active], minlength=w + 1)
        if bar is not None:
            bar.update(int(new_acc.min()) - int(acc.min()))
        acc, front = new_acc, start + w
        cache.truncate(acc)
    if bar is not None:
        bar.close()
    counts = hist.tolist()
    forwards = max(1, sum(counts))
    extras = {"decoder": "csd", "window": w, "verify": verify, "lossless": exact, "accepted_hist": counts,
              "nfe_per_sample": nfe_per_sample.tolist(),
              "mean_accepted": sum(k * c for k, c in enumerate(counts)) / forwards,
              "head_evals": getattr(paths, "evals", 0), "residual_draws": res_draws, "residual_tries": res_tries,
              "residual_capped": res_capped}
    return seq, nfe, extras
