"""Per-token diffusion heads for continuous-token generators: MAR's DiffLoss.

Paper: Li et al., "Autoregressive Image Generation without Vector Quantization", NeurIPS 2024, arXiv 2406.11838.
Reference code (facts only: shapes, key names, hyper-parameters): github.com/LTH14/mar at fe470ac
(``models/diffloss.py``; its ``diffusion/`` package is the IDDPM/DiT Gaussian diffusion).

:class:`DiffLossHead` models ``p(x | z)`` for one token ``x`` (``token_dim`` floats) given the generator's
per-token condition ``z``: a small MLP with adaLN residual blocks predicts the noise ``eps`` and a variance
interpolation value ``v`` in [-1, 1] (``2 * token_dim`` outputs).

Noise schedule and samplers are diffusers schedulers:

* the 1000-step cosine schedule is ``DDPMScheduler(beta_schedule="squaredcos_cap_v2")`` (the same
  ``betas_for_alpha_bar`` discretisation as IDDPM's ``"cosine"``, ``max_beta`` 0.999);
* MAR respaces the 1000 steps to ``num_sampling_steps`` N with ``space_timesteps(1000, "N")``: it adds the
  stride ``999 / (N - 1)`` N times in floating point and rounds half-to-even.  That is what
  ``DDPMScheduler.set_timesteps(N)`` with ``timestep_spacing="linspace"`` gives for the usual N (10, 16, 25, 32,
  50, 64, 100, 128, 250, 256, ...), but not for 278 of the 1000 possible N (the accumulated sum lands on the other
  side of a .5), so MAR's rule is passed to ``set_timesteps(timesteps=...)``.  A respaced step from ``t`` to the
  next kept ``t'`` uses ``beta = 1 - abar_t / abar_t'``, as IDDPM's ``SpacedDiffusion`` and diffusers'
  ``previous_timestep`` both do;
* ``sampler="ddpm"`` (default, MAR's ancestral ``p_sample``) with MAR's learned variance: the log-variance is
  ``frac * log(beta) + (1 - frac) * log(posterior variance)``, ``frac = (v + 1) / 2`` -- diffusers'
  ``variance_type="learned_range"``.  The step is written out here (posterior mean + noise) instead of calling
  ``DDPMScheduler.step`` because that method draws its own noise and has no temperature; the test suite checks
  that at temperature 1 and with the same noise the two agree;
* ``sampler="ddim"``: ``DDIMScheduler.step`` with ``eta`` (default 0, deterministic after the initial noise),
  ``timestep_spacing="trailing"`` (starts at t = 999); the variance output is not used.

Precision vs MAR's float64 numpy schedule: diffusers returns the betas as float32.  Cumulative products and all
per-timestep constants are recomputed here in float64 from those betas (diffusers' own float32 ``alphas_cumprod``
loses ``1 - abar`` at small t: with it the t = 0 VLB term of the parity fixture was 4.7 % off).  What remains is
the float32 rounding of the capped last beta (0.999): ``abar`` at t = 999 is off by 1.3e-5 relative, which moves
the t = 999 loss term by the same relative amount and the parity fixture's sampled latents by ~7e-6 of their
magnitude (float64 betas would give ~1e-6, the float32 arithmetic floor).  The training VLB term uses IDDPM's
clipped posterior log-variance at t = 0 (``log posterior_variance[1]``), where diffusers would clamp to 1e-20;
this only matters for the loss, never for sampling (no noise is added at t = 0).

Temperature multiplies the per-step noise only (not the initial Gaussian), as in MAR.  Classifier-free guidance
is applied inside every denoising step on ``eps`` only: ``eps_u + s * (eps_c - eps_u)`` with the conditional
half's variance output, and both halves share the noise (MAR's ``forward_with_cfg``).

Legend: n rows (tokens), d token dim, c condition dim, w head width, s sampling steps.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.embeddings import get_timestep_embedding
from torch import Tensor, nn

from vistok.interfaces import Configurable
from vistok.layers.init import xavier_linears

__all__ = ["DiffLossHead"]


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def _mar_respacing(num_train_timesteps: int, num_steps: int) -> list[int]:
    """Kept timesteps, descending: MAR's ``space_timesteps(T, str(N))`` (stride summed in floating point)."""
    stride = 1.0 if num_steps <= 1 else (num_train_timesteps - 1) / (num_steps - 1)
    kept, position = [], 0.0
    for _ in range(num_steps):
        kept.append(round(position))
        position += stride
    return sorted(set(kept), reverse=True)


class _ResBlock(nn.Module):
    """LN -> adaLN (shift, scale) -> Linear-SiLU-Linear -> gated residual (MAR ``ResBlock``)."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Linear(width, 3 * width)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        shift, scale, gate = self.modulation(F.silu(y)).chunk(3, dim=-1)
        return x + gate * self.mlp(_modulate(self.norm(x), shift, scale))


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
        token_dim: d, channels of one continuous token.
        cond_dim: c, width of the generator's per-token condition ``z``.
        width: w, MLP width.
        depth: adaLN residual blocks.
        num_train_timesteps: diffusion steps of the training process (MAR: 1000).
        num_sampling_steps: respaced steps used by :meth:`sample` (MAR: 100).
        sampler: ``"ddpm"`` (MAR's ancestral sampler with the learned variance) or ``"ddim"``.
        ddim_eta: DDIM's eta (0 = deterministic); only for ``sampler="ddim"``.
        clip_denoised: clamp the predicted x0 to ``[-c, c]`` at every sampling step (diffusers'
            ``clip_sample_range``); None = MAR's unclipped sampler.  At t = T the cosine schedule divides the eps
            error by sqrt(abar_T) (about 1e-4 of its square), so a briefly trained head's first step can throw x
            hundreds of stds away; with unit-variance tokens (a calibrated ``latent_scale``) c = 4 is safe.
    """

    def __init__(self, *, token_dim: int = 16, cond_dim: int = 1024, width: int = 1024, depth: int = 3,
                 num_train_timesteps: int = 1000, num_sampling_steps: int = 100,
                 sampler: Literal["ddpm", "ddim"] = "ddpm", ddim_eta: float = 0.0,
                 clip_denoised: float | None = None):
        super().__init__()
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        self.token_dim, self.num_sampling_steps, self.sampler, self.ddim_eta = token_dim, 0, sampler, ddim_eta
        self.cond_dim = cond_dim
        if clip_denoised is not None and not clip_denoised > 0:
            raise ValueError(f"clip_denoised must be > 0 or None, got {clip_denoised}")
        self.clip_denoised = clip_denoised
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                                       variance_type="learned_range", prediction_type="epsilon", clip_sample=False,
                                       timestep_spacing="linspace")
        self._schedulers: dict[int, DDPMScheduler | DDIMScheduler] = {}
        self.set_sampling_steps(num_sampling_steps)
        # the network (key names: see vistok.generators.mar.convert_mar_state_dict)
        self.time_mlp = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.cond_proj = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList(_ResBlock(width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Linear(width, 2 * width)
        self.out_proj = nn.Linear(width, 2 * token_dim)
        self._register_tables()
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAR's init: xavier-uniform Linears, N(0, 0.02) time MLP, zero adaLN and output layers."""
        xavier_linears(self)
        nn.init.normal_(self.time_mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_mlp[2].weight, std=0.02)
        for layer in [*(b.modulation for b in self.blocks), self.out_modulation, self.out_proj]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _register_tables(self) -> None:
        """Per-timestep constants, computed in float64 from the scheduler's betas, stored fp32 (not saved)."""
        betas = self.scheduler.betas.double()
        abar = self._abar = torch.cumprod(1 - betas, dim=0)  # float64, CPU; also used by the samplers
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        post_var = betas * (1 - abar_prev) / (1 - abar)
        tables = {
            "sqrt_abar": abar.sqrt(), "sqrt_1m_abar": (1 - abar).sqrt(),
            "sqrt_recip_abar": (1 / abar).sqrt(), "sqrt_recipm1_abar": (1 / abar - 1).sqrt(),
            "post_coef_x0": betas * abar_prev.sqrt() / (1 - abar),
            "post_coef_xt": (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar),
            "post_logvar": torch.log(torch.cat([post_var[1:2], post_var[1:]])),  # clipped at t = 0 (IDDPM)
            "log_betas": betas.log(),
        }
        for name, value in tables.items():
            self.register_buffer(name, value.float(), persistent=False)

    def _check_steps(self, num_steps: int) -> None:
        total = self.scheduler.config.num_train_timesteps
        if not 1 <= num_steps <= total:
            raise ValueError(f"num_sampling_steps must be in [1, {total}], got {num_steps}")
        if self.sampler == "ddim" and total % num_steps:
            raise ValueError(f"sampler='ddim' steps by {total} // num_sampling_steps, so num_sampling_steps must "
                             f"divide {total} (e.g. 25, 50, 100, 250); got {num_steps}")

    def set_sampling_steps(self, num_sampling_steps: int) -> None:
        """Change the number of respaced sampling steps (e.g. 100 for MAR's reported numbers)."""
        self._check_steps(num_sampling_steps)
        self.num_sampling_steps = num_sampling_steps

    # -- network -----------------------------------------------------------------------------------------------
    def net(self, x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        """Noisy tokens x (n, d), integer timesteps t (n,), conditions z (n, c) -> (n, 2d): [eps | v]."""
        t_freq = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0).to(x.dtype)
        y = self.time_mlp(t_freq) + self.cond_proj(z)  # n w
        h = self.input_proj(x)
        for block in self.blocks:
            h = block(h, y)
        shift, scale = self.out_modulation(F.silu(y)).chunk(2, dim=-1)
        return self.out_proj(_modulate(self.out_norm(h), shift, scale))

    def guided_net(self, x: Tensor, t: Tensor, z: Tensor, z_null: Tensor | None = None,
                   cfg_scale: float | Tensor = 1.0) -> Tensor:
        """:meth:`net` with classifier-free guidance on eps (the conditional half's variance is kept).

        x (n, d), t (n,) or (2n,) (conditional rows' timesteps, then the null rows'), z and z_null (n, c),
        ``cfg_scale`` float or (n,) -> (n, 2d).
        """
        if z_null is None or (not torch.is_tensor(cfg_scale) and cfg_scale == 1.0):
            return self.net(x, t[: x.shape[0]], z)
        tt = t if t.shape[0] == 2 * x.shape[0] else torch.cat([t, t])
        cond, null = self.net(torch.cat([x, x]), tt, torch.cat([z, z_null])).chunk(2)
        scale = cfg_scale[:, None] if torch.is_tensor(cfg_scale) else cfg_scale
        d = self.token_dim
        eps = null[:, :d] + scale * (cond[:, :d] - null[:, :d])
        return torch.cat([eps, cond[:, d:]], dim=-1)

    # -- training ----------------------------------------------------------------------------------------------
    def loss_terms(self, target: Tensor, z: Tensor, t: Tensor, noise: Tensor) -> dict[str, Tensor]:
        """Per-row IDDPM hybrid loss: ``mse`` (eps) + ``vb`` (KL in bits, learning only the variance; at t = 0
        the discretised-Gaussian decoder NLL).  target/noise (n, d), z (n, c), t (n,) -> dict of (n,) tensors."""
        tab = lambda name: getattr(self, name)[t][:, None]
        x_t = tab("sqrt_abar") * target + tab("sqrt_1m_abar") * noise  # q(x_t | x_0)
        out = self.net(x_t, t, z)
        eps, v = out[:, : self.token_dim], out[:, self.token_dim :]
        mse = (noise - eps).pow(2).mean(-1)
        frac = (v + 1) / 2
        model_logvar = frac * tab("log_betas") + (1 - frac) * tab("post_logvar")
        x0_pred = tab("sqrt_recip_abar") * x_t - tab("sqrt_recipm1_abar") * eps.detach()  # mean is not trained by vb
        model_mean = tab("post_coef_x0") * x0_pred + tab("post_coef_xt") * x_t
        true_mean = tab("post_coef_x0") * target + tab("post_coef_xt") * x_t
        kl = _normal_kl(true_mean, tab("post_logvar"), model_mean, model_logvar).mean(-1) / math.log(2.0)
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
    def sample_noise(self, n: int, *, generator: torch.Generator | None = None, num_steps: int | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """Every Gaussian draw :meth:`sample` needs for ``n`` rows: ``(s, n, d)``; [0] is the initial noise, [k] the
        noise added by step k - 1.  Sharing it between two heads couples their trajectories."""
        ref = self.input_proj.weight
        s = num_steps or self.num_sampling_steps
        return torch.randn(s, n, self.token_dim, generator=generator, device=device or ref.device,
                           dtype=dtype or ref.dtype)

    @torch.no_grad()
    def sample(self, z: Tensor, *, z_null: Tensor | None = None, cfg_scale: float | Tensor = 1.0,
               temperature: float = 1.0, generator: torch.Generator | None = None, noise: Tensor | None = None,
               num_steps: int | None = None) -> Tensor:
        """Draw one token per condition.  z (n, c) -> tokens (n, d).

        Args:
            z: per-token conditions.
            z_null: the unconditional conditions (n, c); required when ``cfg_scale != 1``.
            cfg_scale: guidance scale, float or per-row (n,).
            temperature: multiplies the per-step noise (0 = no noise after the initial draw).
            generator: RNG for the noise (ignored when ``noise`` is given).
            noise: ``(s, n, d)`` from :meth:`sample_noise` (or recorded), to reproduce or couple runs.
            num_steps: override ``num_sampling_steps`` for this call.
        """
        guided = torch.is_tensor(cfg_scale) or cfg_scale != 1.0
        if guided and z_null is None:
            raise ValueError("cfg_scale != 1 needs z_null, the conditions of the null (unconditional) input; "
                             "run the generator on cond.null() too, or use cfg_scale=1.0")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        s = num_steps or self.num_sampling_steps
        self._check_steps(s)
        n = z.shape[0]
        if noise is None:
            noise = self.sample_noise(n, generator=generator, num_steps=s, device=z.device, dtype=z.dtype)
        elif noise.shape != (s, n, self.token_dim):
            raise ValueError(f"noise must have shape (steps={s}, n={n}, d={self.token_dim}), got {tuple(noise.shape)}")
        if n == 0:
            return z.new_zeros(0, self.token_dim)
        scheduler = self._sampling_scheduler(s)
        x = noise[0]
        for k, t in enumerate(scheduler.timesteps.tolist()):
            tt = torch.full((n,), t, device=z.device, dtype=torch.long)
            out = self.guided_net(x, tt, z, z_null if guided else None, cfg_scale)
            step_noise = noise[k + 1] * temperature if k + 1 < s else torch.zeros_like(x)
            if self.sampler == "ddim":
                x = scheduler.step(out[:, : self.token_dim], t, x, eta=self.ddim_eta, variance_noise=step_noise,
                                   return_dict=False)[0]
            else:
                x = self._ddpm_step(scheduler, out, t, x, step_noise)
        return x

    def _sampling_scheduler(self, num_steps: int) -> DDPMScheduler | DDIMScheduler:
        """The respaced scheduler for ``num_steps`` (cached: stepping leaves it unchanged)."""
        if num_steps in self._schedulers:
            return self._schedulers[num_steps]
        cfg = self.scheduler.config
        if self.sampler == "ddim":
            sched = DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                                  prediction_type="epsilon", clip_sample=self.clip_denoised is not None,
                                  clip_sample_range=self.clip_denoised or 1.0, set_alpha_to_one=True,
                                  timestep_spacing="trailing")
            sched.set_timesteps(num_steps)
        else:
            sched = DDPMScheduler.from_config(cfg)
            sched.set_timesteps(timesteps=_mar_respacing(cfg.num_train_timesteps, num_steps))
        sched.alphas_cumprod = self._abar  # float64 (diffusers' float32 copy loses 1 - abar at small t)
        self._schedulers[num_steps] = sched
        return sched

    def _ddpm_step(self, sched: DDPMScheduler, out: Tensor, t: int, x: Tensor, noise: Tensor) -> Tensor:
        """One ancestral step from timestep ``t`` to the scheduler's previous timestep (learned-range variance).

        Same arithmetic as ``DDPMScheduler.step`` with ``variance_type="learned_range"``, except that the
        (temperature-scaled) noise is given.
        """
        d = self.token_dim
        eps, v = out[:, :d], out[:, d:]
        prev = int(sched.previous_timestep(t))
        abar_t = float(sched.alphas_cumprod[t])
        abar_prev = float(sched.alphas_cumprod[prev]) if prev >= 0 else 1.0
        beta = 1 - abar_t / abar_prev
        x0 = (x - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)
        if self.clip_denoised is not None:
            x0 = x0.clamp(-self.clip_denoised, self.clip_denoised)
        coef_x0 = math.sqrt(abar_prev) * beta / (1 - abar_t)
        coef_xt = math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar_t)
        mean = coef_x0 * x0 + coef_xt * x  # posterior mean of q(x_prev | x_t, x0)
        if t == 0:
            return mean
        post_var = (1 - abar_prev) / (1 - abar_t) * beta
        frac = (v + 1) / 2
        logvar = frac * math.log(beta) + (1 - frac) * math.log(post_var)
        return mean + torch.exp(0.5 * logvar) * noise
