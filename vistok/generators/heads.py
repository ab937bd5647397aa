"""Per-token diffusion heads for continuous-token generators: MAR's DiffLoss.

Paper: Li et al., "Autoregressive Image Generation without Vector Quantization", NeurIPS 2024, arXiv 2406.11838.
Reference code (facts only: shapes, key names, hyper-parameters): github.com/LTH14/mar at fe470ac
(``models/diffloss.py``; its ``diffusion/`` package is the IDDPM/DiT Gaussian diffusion).

:class:`DiffLossHead` models ``p(x | z)`` for one token ``x`` (``token_dim`` floats) given the generator's
per-token condition ``z``: an adaLN residual MLP predicts the noise ``eps`` and a variance interpolation value ``v``.
The cosine schedule is diffusers' ``DDPMScheduler(beta_schedule="squaredcos_cap_v2")`` respaced with MAR's rule; the
DDPM step maths lives once, in float64, in :meth:`DiffLossHead.step_table`, shared by the training loss,
:meth:`DiffLossHead.sample` and :class:`DiffusionPaths` (the sampler with path densities, for lossless continuous
speculative decoding).  Schedule, samplers, temperature, guidance and the measured precision: ``docs/mar.md``.

Legend: n rows (tokens), d token dim, c condition dim, w head width, s sampling steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import accumulate
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor, nn
from torch.distributions import Normal

from vistok.interfaces import Configurable, check_choice
from vistok.layers import TimestepMLP, modulate
from vistok.layers.init import xavier_linears

__all__ = ["DiffLossHead", "DiffusionPaths", "SAMPLERS"]

SAMPLERS = ("ddpm", "ddim", "dpm", "dpm_sde")


def _mar_respacing(num_train_timesteps: int, num_steps: int) -> list[int]:
    """Kept timesteps, descending: MAR's ``space_timesteps(T, str(N))`` (stride summed in floating point)."""
    stride = 1.0 if num_steps <= 1 else (num_train_timesteps - 1) / (num_steps - 1)
    return sorted({round(p) for p in accumulate([stride] * (num_steps - 1), initial=0.0)}, reverse=True)


def _guided(z_null: Tensor | None, cfg_scale: float | Tensor) -> bool:
    """Whether a call mixes in the null rows (classifier-free guidance)."""
    return z_null is not None and (torch.is_tensor(cfg_scale) or cfg_scale != 1.0)


class _ResBlock(nn.Module):
    """LN -> adaLN (shift, scale) -> Linear-SiLU-Linear -> gated residual (MAR ``ResBlock``)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Linear(width, 3 * width)

    def forward(self, x: Tensor, act: Tensor) -> Tensor:
        """x (n, w), act = SiLU(adaLN input) (n or 1, w) -> (n, w)."""
        shift, scale, gate = self.modulation(act).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))


def _normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(bin of x) for a Gaussian, bins of width 2/255 on [-1, 1] (IDDPM's decoder NLL; tanh CDF approx)."""
    cdf = lambda v: 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))
    centered, inv_std = x - mean, torch.exp(-log_scale)
    cdf_plus, cdf_min = cdf(inv_std * (centered + 1 / 255)), cdf(inv_std * (centered - 1 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class DiffLossHead(nn.Module, Configurable):
    """Diffusion head ``p(x | z)`` per token: eps-prediction with learned variance (IDDPM), cosine schedule.

    Args:
        token_dim, cond_dim: d, channels of one token, and c, width of the generator's per-token condition ``z``.
        width, depth: w, the MLP width, and its number of adaLN residual blocks.
        num_train_timesteps: diffusion steps of the training process (MAR: 1000).
        num_sampling_steps: respaced steps used by :meth:`sample` (MAR: 100).
        sampler: ``"ddpm"`` (MAR's ancestral sampler with the learned variance), ``"ddim"``, ``"dpm"``
            (DPM-Solver++(2M), deterministic after the initial noise) or ``"dpm_sde"`` (SDE-DPM-Solver++(2M), its
            noise times the temperature); the two DPM-Solver++ samplers are second-order multistep solvers for few
            steps (Lu et al., arXiv 2211.01095).
        ddim_eta: DDIM's eta (0 = deterministic); only for ``sampler="ddim"``.
        clip_denoised: clamp the predicted x0 to ``[-c, c]`` at every sampling step (diffusers'
            ``clip_sample_range``); None = MAR's unclipped sampler.  A briefly trained head's first step (t = T)
            can throw x hundreds of stds away; with unit-variance tokens c = 4 is safe.
    """

    def __init__(self, *, token_dim: int = 16, cond_dim: int = 1024, width: int = 1024, depth: int = 3,
                 num_train_timesteps: int = 1000, num_sampling_steps: int = 100,
                 sampler: Literal["ddpm", "ddim", "dpm", "dpm_sde"] = "ddpm", ddim_eta: float = 0.0,
                 clip_denoised: float | None = None):
        super().__init__()
        check_choice("sampler", sampler, SAMPLERS)
        self.token_dim, self.cond_dim, self.sampler, self.ddim_eta = token_dim, cond_dim, sampler, ddim_eta
        if clip_denoised is not None and not clip_denoised > 0:
            raise ValueError(f"clip_denoised must be > 0 or None, got {clip_denoised}")
        self.clip_denoised = clip_denoised
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                                       variance_type="learned_range", prediction_type="epsilon", clip_sample=False,
                                       timestep_spacing="linspace")
        self._abar = torch.cumprod(1 - self.scheduler.betas.double(), dim=0)  # float64, CPU
        self._schedulers: dict[int, DDIMScheduler] = {}
        self._dpm_tables: dict[tuple[int, bool], Tensor] = {}
        self.set_sampling_steps(num_sampling_steps)
        # the network (key names: see vistok.generators.mar.convert_mar_state_dict)
        self.time_mlp = TimestepMLP(width)
        self.cond_proj = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList(_ResBlock(width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Linear(width, 2 * width)
        self.out_proj = nn.Linear(width, 2 * token_dim)
        # the training schedule's per-timestep constants (row t = timestep t), fp32, not saved: the step_table
        # columns, then 1 / sqrt(abar) and sqrt(1 / abar - 1)
        tab = self.step_table(list(range(num_train_timesteps - 1, -1, -1))).flip(0)
        tab = torch.cat([tab, 1 / tab[:, 1:2], tab[:, 0:1] / tab[:, 1:2]], dim=1)
        self.register_buffer("train_table", tab.float(), persistent=False)
        # MAR's init: xavier-uniform Linears, N(0, 0.02) time MLP, zero adaLN and output layers
        xavier_linears(self)
        nn.init.normal_(self.time_mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_mlp[2].weight, std=0.02)
        for layer in [*(b.modulation for b in self.blocks), self.out_modulation, self.out_proj]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def step_table(self, timesteps: list[int]) -> Tensor:
        """The DDPM step maths, once, in float64: one row per kept timestep ``t`` (descending) stepping to the next
        kept one ``t'`` (-1 after the last), ``beta = 1 - abar_t / abar_t'`` (IDDPM's respacing).

        Columns: ``sqrt(1 - abar_t)``, ``sqrt(abar_t)``, the posterior-mean coefficients of x0 and x_t,
        ``log beta`` and the log posterior variance (the last row takes the row before it: IDDPM's clipping at t = 0).
        """
        a_t = self._abar[timesteps]
        a_prev = torch.cat([self._abar[timesteps[1:]], a_t.new_ones(1)])
        beta = 1 - a_t / a_prev
        post = (1 - a_prev) / (1 - a_t) * beta
        post = torch.cat([post[:-1], post[-2:-1] if len(timesteps) > 1 else beta[-1:]])  # clipped at t = 0
        table = torch.stack([(1 - a_t).sqrt(), a_t.sqrt(), a_prev.sqrt() * beta / (1 - a_t),
                             (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t), beta.log(), post.log()], dim=1)
        return table

    def set_sampling_steps(self, num_sampling_steps: int) -> None:
        """Change the number of respaced sampling steps (e.g. 100 for MAR's reported numbers)."""
        self.num_sampling_steps = self.steps(num_sampling_steps)

    def steps(self, num_steps: int | None = None, sampler: str | None = None) -> int:
        """``num_steps`` checked against the schedule and ``sampler`` (None: ``num_sampling_steps``, the head's
        sampler)."""
        sampler = self.sampler if sampler is None else sampler
        if num_steps is None and sampler == self.sampler:
            return self.num_sampling_steps
        if num_steps is None:
            num_steps = self.num_sampling_steps
        total = self.scheduler.config.num_train_timesteps
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= total:
            raise ValueError(f"num_sampling_steps must be an int in [1, {total}], got {num_steps!r}")
        if sampler == "ddim" and total % num_steps:
            raise ValueError(f"sampler='ddim' steps by {total} // num_sampling_steps, so num_sampling_steps must "
                             f"divide {total} (e.g. 25, 50, 100, 250); got {num_steps}")
        return num_steps

    # -- network -----------------------------------------------------------------------------------------------
    def net(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """Noisy tokens x (n, d), integer timesteps t (n,), conditions z (n, c) -> (n, 2d): [eps | v]."""
        return self.denoise(x, self.time_mlp(t) + self.cond_proj(z))

    def denoise(self, x: Tensor, y: Tensor) -> Tensor:
        """:meth:`net` from its adaLN input ``y = time_mlp(t) + cond_proj(z)`` (n or 1, w): x (n, d) -> (n, 2d).

        The samplers build ``y`` from a condition projected once per call and a time embedding computed once per
        step (not per row), so a step costs only the residual blocks."""
        act = F.silu(y)
        h = self.input_proj(x)
        for block in self.blocks:
            h = block(h, act)
        shift, scale = self.out_modulation(act).chunk(2, dim=-1)
        return self.out_proj(modulate(self.out_norm(h), shift, scale))

    def guided_net(self, x: Tensor, t: Tensor, z: Tensor, z_null: Tensor | None = None,
                   cfg_scale: float | Tensor = 1.0) -> Tensor:
        """:meth:`net` with classifier-free guidance on eps (the conditional half's variance is kept): x (n, d), t (n,)
        or (2n,) (conditional rows' timesteps, then the null rows'), z and z_null (n, c), cfg_scale float or (n,)."""
        if not _guided(z_null, cfg_scale):
            return self.net(x, t[: x.shape[0]], z)
        tt = t if t.shape[0] == 2 * x.shape[0] else torch.cat([t, t])
        return self._mix(self.net(torch.cat([x, x]), tt, torch.cat([z, z_null])), cfg_scale)

    def conditioned(self, z: Tensor, z_null: Tensor | None, cfg_scale: float | Tensor,
                    timesteps: Tensor) -> Callable[[Tensor, Tensor | int], Tensor]:
        """:meth:`guided_net` for fixed conditions z, z_null (n, c) over a sampler's ``timesteps`` (s,), as a function
        ``f(x (n, d), k) -> (n, 2d)`` of the state and the step index ``k`` (an int, or one per row (n,)).

        What the samplers call at every step: the condition projection and the time embeddings of all ``s`` steps are
        computed here, once per call, so a step costs only the residual blocks (and a step's rows share one time
        embedding, bit for bit, whichever call evaluates them).  A :meth:`net` redefined (by a subclass, on the
        instance, or compiled) is called as is."""
        if getattr(self.net, "__func__", None) is not DiffLossHead.net:  # redefined (subclass, patch, compiled)
            def f_net(x: Tensor, k: Tensor | int) -> Tensor:
                t = timesteps[k]
                return self.guided_net(x, t.expand(x.shape[0]) if t.dim() == 0 else t, z, z_null, cfg_scale)

            return f_net
        guided = _guided(z_null, cfg_scale)
        y_cond = self.cond_proj(torch.cat([z, z_null]) if guided else z)  # (2)n w
        temb = self.time_mlp(timesteps)  # s w

        def f(x: Tensor, k: Tensor | int) -> Tensor:
            t = temb[k]  # w, or n w
            if not guided:
                return self.denoise(x, t + y_cond)
            t = torch.cat([t, t]) if t.dim() == 2 else t
            return self._mix(self.denoise(torch.cat([x, x]), t + y_cond), cfg_scale)

        return f

    def _mix(self, out: Tensor, cfg_scale: float | Tensor) -> Tensor:
        """Guidance on eps from the network output of the conditional rows then the null rows (2n, 2d) -> (n, 2d)."""
        cond, null = out.chunk(2)
        scale = cfg_scale[:, None] if torch.is_tensor(cfg_scale) else cfg_scale
        d = self.token_dim
        return torch.cat([null[:, :d] + scale * (cond[:, :d] - null[:, :d]), cond[:, d:]], dim=-1)

    # -- training ----------------------------------------------------------------------------------------------
    def loss_terms(self, target: Tensor, z: Tensor, t: Tensor, noise: Tensor) -> dict[str, Tensor]:
        """Per-row IDDPM hybrid loss: ``mse`` (eps) + ``vb`` (KL in bits, learning only the variance; at t = 0
        the discretised-Gaussian decoder NLL).  target/noise (n, d), z (n, c), t (n,) -> dict of (n,) tensors."""
        columns = self.train_table[t].T[..., None]  # 8 x (n, 1)
        sqrt_1m_abar, sqrt_abar, coef_x0, coef_xt, log_beta, post_logvar, recip, recipm1 = columns
        x_t = sqrt_abar * target + sqrt_1m_abar * noise  # q(x_t | x_0)
        out = self.net(x_t, t, z)
        eps, v = out[:, : self.token_dim], out[:, self.token_dim :]
        mse = (noise - eps).pow(2).mean(-1)
        frac = (v + 1) / 2
        model_logvar = frac * log_beta + (1 - frac) * post_logvar
        x0_pred = recip * x_t - recipm1 * eps.detach()  # the mean is not trained by vb
        model_mean = coef_x0 * x0_pred + coef_xt * x_t
        true_mean = coef_x0 * target + coef_xt * x_t
        kl = _normal_kl(true_mean, post_logvar, model_mean, model_logvar).mean(-1) / math.log(2.0)
        nll = -_discretized_gaussian_log_likelihood(target, model_mean, 0.5 * model_logvar).mean(-1) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        return {"loss": mse + vb, "mse": mse, "vb": vb, "x_t": x_t}

    def loss(self, target: Tensor, z: Tensor, weight: Tensor | None = None, *, t: Tensor | None = None,
             noise: Tensor | None = None) -> Tensor:
        """Weighted mean of the per-row loss.  target (n, d), z (n, c), weight (n,) (e.g. the mask).

        ``t`` (n,) and ``noise`` (n, d) are drawn (torch global RNG, in that order) unless given.
        """
        if t is None:
            t = torch.randint(0, self.scheduler.config.num_train_timesteps, (target.shape[0],), device=target.device)
        if noise is None:
            noise = torch.randn_like(target)
        loss = self.loss_terms(target, z, t, noise)["loss"]
        if weight is None:
            return loss.mean()
        return (loss * weight).sum() / weight.sum().clamp(min=1e-12)

    # -- sampling ----------------------------------------------------------------------------------------------
    def sample_noise(self, n: int, *, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                     num_steps: int | None = None) -> Tensor:
        """Every Gaussian draw :meth:`sample` needs for ``n`` rows: ``(s, n, d)``; [0] is the initial noise, [k] the
        noise added by step k - 1.  Sharing it between two heads couples their trajectories."""
        ref = self.input_proj.weight
        return torch.randn(self.steps(num_steps), n, self.token_dim, generator=generator, device=device or ref.device,
                           dtype=dtype or ref.dtype)

    @torch.no_grad()
    def sample(self, z: Tensor, *, z_null: Tensor | None = None, cfg_scale: float | Tensor = 1.0,
               temperature: float = 1.0, generator: torch.Generator | None = None, noise: Tensor | None = None,
               num_steps: int | None = None, sampler: str | None = None) -> Tensor:
        """Draw one token per condition.  z (n, c) -> tokens (n, d).

        Args:
            z_null: the unconditional conditions (n, c); required when ``cfg_scale != 1``.
            cfg_scale: guidance scale, float or per-row (n,).
            temperature: multiplies the per-step noise (0 = no noise after the initial draw).
            generator: RNG for the noise (ignored when ``noise`` is given).
            noise: ``(s, n, d)`` from :meth:`sample_noise` (or recorded), to reproduce or couple runs.
            num_steps: respaced steps for this call (None: ``num_sampling_steps``); diffusion step annealing
                (DiSA) gives later tokens fewer.
            sampler: one of :data:`SAMPLERS` for this call (None: the head's ``sampler``).
        """
        sampler = self.sampler if sampler is None else sampler
        check_choice("sampler", sampler, SAMPLERS)
        guided = torch.is_tensor(cfg_scale) or cfg_scale != 1.0
        if guided and z_null is None:
            raise ValueError("cfg_scale != 1 needs z_null, the conditions of the null (unconditional) input; "
                             "run the generator on cond.null() too, or use cfg_scale=1.0")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        s, n = self.steps(num_steps, sampler), z.shape[0]
        if noise is None:
            noise = self.sample_noise(n, generator=generator, device=z.device, dtype=z.dtype, num_steps=s)
        elif noise.shape != (s, n, self.token_dim):
            raise ValueError(f"noise must have shape (steps={s}, n={n}, d={self.token_dim}), got {tuple(noise.shape)}")
        else:
            noise = noise.to(z.device)  # a recorded draw may come from another device
        if n == 0:
            return z.new_zeros(0, self.token_dim)
        z_null = z_null if guided else None
        if sampler == "ddpm":
            paths = DiffusionPaths(self, final_noise=False, num_steps=s)
            return paths.path_sample(z, z_null, cfg_scale, temperature, noise, density=False)[0][-1].to(z.dtype)
        if sampler in ("dpm", "dpm_sde"):
            return self._dpm_sample(z, z_null, cfg_scale, temperature, noise, sde=sampler == "dpm_sde")
        scheduler = self._ddim_scheduler(s)
        f, x = self.conditioned(z, z_null, cfg_scale, scheduler.timesteps.to(z.device)), noise[0]
        for k, t in enumerate(scheduler.timesteps.tolist()):
            out = f(x, k)
            step_noise = noise[k + 1] * temperature if k + 1 < s else torch.zeros_like(x)
            x = scheduler.step(out[:, : self.token_dim], t, x, eta=self.ddim_eta, variance_noise=step_noise,
                               return_dict=False)[0]
        return x

    def paths(self, *, final_noise: bool, num_steps: int | None = None) -> DiffusionPaths:
        """The ancestral sampler with its path densities (:class:`vistok.interfaces.PathDensity`), for
        continuous speculative decoding.  ``final_noise=True`` also adds noise at the last step; ``num_steps``
        (None: ``num_sampling_steps``) sets its respaced steps."""
        if self.sampler != "ddpm":
            raise ValueError(f"the head samples with sampler={self.sampler!r}, which has no step densities here; "
                             "build the generator with head_sampler='ddpm'")
        return DiffusionPaths(self, final_noise=final_noise, num_steps=num_steps)

    def dpm_table(self, num_steps: int, sde: bool) -> Tensor:
        """DPM-Solver++(2M) in float64, one row per model evaluation ``k`` at timestep ``t_k`` stepping to ``t_k+1``.

        Timesteps: ``num_steps`` evenly spaced from T - 1 down (diffusers' ``"linspace"``: 999, 899, ..., 100 for
        10), then the clean end (``sigma = 0``).  With ``alpha = sqrt(abar)``, ``sigma = sqrt(1 - abar)``,
        ``lambda = log(alpha / sigma)``, ``h = lambda' - lambda`` and the data prediction
        ``x0 = (x - sigma eps) / alpha``, a step is ``x' = c_x x + c_d D + c_z z`` where ``D = x0 + q (x0 - x0_prev)``,
        ``q = h / (2 h_prev)`` (0 on the first and the last step: first order there, diffusers' ``lower_order_final``).
        ODE: ``c_x = sigma' / sigma``, ``c_d = alpha' (1 - exp(-h))``, ``c_z = 0``; SDE: ``c_x = sigma' / sigma
        exp(-h)``, ``c_d = alpha' (1 - exp(-2h))``, ``c_z = sigma' sqrt(1 - exp(-2h))``.

        Columns (float64, on the CPU): ``t``, ``1 / alpha``, ``sigma / alpha``, ``c_x``, ``c_d``, ``c_z``, ``q``.
        """
        key = (num_steps, sde)
        if key not in self._dpm_tables:
            total = self.scheduler.config.num_train_timesteps
            t = torch.linspace(0, total - 1, num_steps + 1, dtype=torch.float64).round().flip(0)[:-1].long()
            a = self._abar[t]
            alpha, sigma = torch.cat([a.sqrt(), a.new_ones(1)]), torch.cat([(1 - a).sqrt(), a.new_zeros(1)])
            lam = alpha.log() - sigma.log()  # +inf at the clean end
            h = lam[1:] - lam[:-1]
            c_x = sigma[1:] / sigma[:-1] * (torch.exp(-h) if sde else 1)
            c_d = alpha[1:] * (1 - torch.exp(-2 * h if sde else -h))
            c_z = sigma[1:] * (1 - torch.exp(-2 * h)).sqrt() if sde else torch.zeros_like(h)
            q = torch.zeros_like(h)
            if num_steps > 2:
                q[1:-1] = h[1:-1] / (2 * h[:-2])
            tab = torch.stack([t.double(), 1 / alpha[:-1], sigma[:-1] / alpha[:-1], c_x, c_d, c_z, q], dim=1)
            self._dpm_tables[key] = tab  # CPU: the sampler reads it as Python floats
        return self._dpm_tables[key]

    def _dpm_sample(self, z: Tensor, z_null: Tensor | None, cfg_scale: float | Tensor, temperature: float,
                    noise: Tensor, sde: bool) -> Tensor:
        """DPM-Solver++(2M) (``sampler="dpm"``) or its SDE form (``"dpm_sde"``, noise times ``temperature``);
        float64 states, see :meth:`dpm_table`.  z (n, c), noise (s, n, d) -> (n, d)."""
        s, d = noise.shape[0], noise.shape[2]
        table = self.dpm_table(s, sde)
        f = self.conditioned(z, z_null, cfg_scale, table[:, 0].to(z.device, torch.long))
        x, x0_prev = noise[0].double(), None
        for k, (_, inv_alpha, sig_alpha, c_x, c_d, c_z, q) in enumerate(table.tolist()):
            eps = f(x.to(z.dtype), k)[:, :d].double()
            x0 = inv_alpha * x - sig_alpha * eps
            if self.clip_denoised is not None:
                x0 = x0.clamp(-self.clip_denoised, self.clip_denoised)
            dx = x0 if q == 0 else x0 + q * (x0 - x0_prev)  # q = 0 on the first step
            x = c_x * x + c_d * dx
            if sde and k + 1 < s and temperature > 0:
                x = x + (c_z * temperature) * noise[k + 1].double()
            x0_prev = x0
        return x.to(z.dtype)

    def _ddim_scheduler(self, num_steps: int) -> DDIMScheduler:
        """diffusers' DDIM scheduler for ``num_steps`` (cached: stepping leaves it unchanged)."""
        if num_steps not in self._schedulers:
            cfg = self.scheduler.config
            sched = DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                                  prediction_type="epsilon", clip_sample=self.clip_denoised is not None,
                                  clip_sample_range=self.clip_denoised or 1.0, set_alpha_to_one=True,
                                  timestep_spacing="trailing")
            sched.set_timesteps(num_steps)
            sched.alphas_cumprod = self._abar  # float64 (diffusers' float32 copy loses 1 - abar at small t)
            self._schedulers[num_steps] = sched
        return self._schedulers[num_steps]


def _gauss_logpdf(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Sum over the last axis of ``log N(x; mean, std^2)`` (torch's Normal, no argument validation)."""
    return Normal(mean, std, validate_args=False).log_prob(x).sum(-1)


class DiffusionPaths:
    """The ancestral DDPM sampler of a :class:`DiffLossHead` (MAR's ``p_sample`` loop), with path log-densities.

    Per kept timestep: the posterior mean of the predicted ``x_0`` plus ``T * exp(logvar / 2) * noise`` (learned-range
    log-variance, :meth:`DiffLossHead.step_table`); the last step (t = 0) returns the mean (MAR) unless
    ``final_noise``.  States and step arithmetic are float64 (the network runs in its own dtype); see ``docs/csd.md``.

    Layouts: paths and noise ``(L, r, d)``, ``L = steps + 1``; ``path[0]`` is the initial noise, ``path[k]`` the state
    after step ``k`` (the token last); ``noise[k]`` the noise of step ``k``.  ``evals`` counts head-network rows.
    """

    def __init__(self, head: DiffLossHead, *, final_noise: bool, num_steps: int | None = None):
        self.head, self.final_noise, self.evals = head, final_noise, 0
        s = self.steps = head.steps(num_steps)
        self.path_len, self.token_dim = s + 1, head.token_dim
        self.timesteps = _mar_respacing(head.scheduler.config.num_train_timesteps, s)
        device = head.input_proj.weight.device
        self._table, self._t = head.step_table(self.timesteps).to(device), torch.tensor(self.timesteps, device=device)

    def path_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Every Gaussian draw of ``n`` paths: ``(L, n, d)``."""
        ref = self.head.input_proj.weight
        return torch.randn(self.path_len, n, self.token_dim, generator=generator, device=ref.device, dtype=ref.dtype)

    def moments(self, out: Tensor, x: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Float64 mean and log-variance (r, d) of step indices ``k`` (r,) from the network output ``out`` (r, 2d)
        ``[eps | v]`` at float64 states ``x`` (r, d)."""
        tab = self._table[k].view(-1, 6)  # r 6, or 1 6 for one step index
        out, d = out.double(), self.token_dim
        eps, frac = out[:, :d], (out[:, d:] + 1) / 2
        x0 = (x - tab[:, 0:1] * eps) / tab[:, 1:2]
        if self.head.clip_denoised is not None:
            x0 = x0.clamp(-self.head.clip_denoised, self.head.clip_denoised)
        return tab[:, 2:3] * x0 + tab[:, 3:4] * x, frac * tab[:, 4:5] + (1 - frac) * tab[:, 5:6]

    def _step(self, x: Tensor, k: Tensor | int, f: Callable[[Tensor, Tensor | int], Tensor],
              guided: bool) -> tuple[Tensor, Tensor]:
        """Moments of step indices ``k`` ((r,) or one int) at float64 states x (r, d); f from ``head.conditioned``."""
        out = f(x.to(self.head.input_proj.weight.dtype), k)
        self.evals += x.shape[0] * (2 if guided else 1)
        return self.moments(out, x, k)

    def path_sample(self, z: Tensor, z_null: Tensor | None, cfg_scale: float | Tensor, temperature: float,
                    noise: Tensor, *, density: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Paths ``(L, r, d)`` (float64) from conditions ``z`` (r, c) and ``noise`` (L or L - 1, r, d), with the
        log-density of the stochastic steps (as :meth:`path_log_prob` evaluates it; zeros when not ``density``) and
        the last step's std (``T exp(logvar / 2)``, also when it adds no noise), as ``PathDensity`` specifies."""
        r = z.shape[0]
        noise = noise.double()
        x, path, logp = noise[0], [noise[0]], noise.new_zeros(r)
        std = noise.new_zeros(r, self.token_dim)
        f, guided = self.head.conditioned(z, z_null, cfg_scale, self._t), _guided(z_null, cfg_scale)
        for k in range(self.steps):
            mean, logvar = self._step(x, k, f, guided)
            std = (0.5 * logvar).exp() * temperature
            if k == self.steps - 1 and not self.final_noise:
                x = mean
            else:
                x = mean + std * noise[k + 1]
                if density:
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
        f = self.head.conditioned(rep(z), rep(z_null), cfg_scale, self._t)
        mean, logvar = self._step(path[:steps].flatten(0, 1), k, f, _guided(z_null, cfg_scale))
        std = (0.5 * logvar).exp() * temperature
        return _gauss_logpdf(path[1 : steps + 1].flatten(0, 1), mean, std).view(steps, r).sum(0)
