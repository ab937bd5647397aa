"""Continuous speculative decoding (csd) and plain causal AR over continuous tokens: tiny random models.

Exactness is tested at the distribution level on a Gaussian toy head (one stochastic step, exact densities) and on
a 3-step DiffLoss head (``verify="path"``) that is the exact denoiser of a Gaussian: on both, a token's law given its
prefix is an exact Gaussian, so 20,000 csd samples are tested against it directly (standardised residuals must be
i.i.d. N(0, 1), :func:`exactness.gaussian_pvalue`).  The acceptance ratio times 1.1 or 1.2 must fail the same test
(method and measured power: ``docs/lossless.md``).
"""

import math

import pytest
import torch
from conftest import tiny_ar
from exactness import gaussian_pvalue, gaussian_residuals
from torch import nn

from vistok.decoding import DECODERS, SamplingArgs, continuous, decode_csd, generate
from vistok.decoding.continuous import decode_car
from vistok.generators.heads import DiffLossHead
from vistok.generators.mar import MARARGenerator, MARGenerator
from vistok.interfaces import Conditioning, KVCache

AR_KW = dict(token_dim=2, seq_len=4, width=16, depth=1, num_heads=2, num_classes=2, attn_dropout=0.0,
             proj_dropout=0.0, head_width=16, head_depth=1, num_sampling_steps=3)


pytestmark = pytest.mark.usefixtures("one_thread")


class GaussHead(nn.Module):
    """Toy head with an exact density: ``x = mu(z) + T sigma(z) eps`` (CFG mixes mu like eps)."""

    path_len = 1

    def __init__(self, cond_dim: int, token_dim: int, scale: float = 1.0):
        super().__init__()
        self.token_dim = token_dim
        self.mu, self.log_sigma = nn.Linear(cond_dim, token_dim), nn.Linear(cond_dim, token_dim)
        with torch.no_grad():
            self.mu.weight.normal_(0, scale)
            self.log_sigma.weight.normal_(0, 0.1 * scale)
            self.log_sigma.bias.fill_(-0.5)

    def _moments(self, z, z_null, cfg_scale, temperature):
        mu = self.mu(z)
        if z_null is not None and cfg_scale != 1.0:
            u = self.mu(z_null)
            mu = u + cfg_scale * (mu - u)
        return mu, self.log_sigma(z).exp() * temperature

    def path_noise(self, n, generator=None):
        return torch.randn(1, n, self.token_dim, generator=generator)

    def path_sample(self, z, z_null, cfg_scale, temperature, noise):
        mu, std = self._moments(z, z_null, cfg_scale, temperature)
        x = mu + std * noise[0]
        return x[None], self.path_log_prob(x[None], z, z_null, cfg_scale, temperature), std

    def path_log_prob(self, path, z, z_null, cfg_scale, temperature):
        mu, std = self._moments(z, z_null, cfg_scale, temperature)
        return (-0.5 * ((path[-1] - mu) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


class AnalyticHead(DiffLossHead):
    """A DiffLoss head whose network is the exact denoiser of ``x_0 ~ N(m(z), s^2 I)``, ``m`` linear: unlike a
    random network it keeps samples O(1) and makes them depend on the context, so law tests have power."""

    def __init__(self, *, cond_dim: int, token_dim: int, num_sampling_steps: int = 3, s: float = 0.5):
        super().__init__(token_dim=token_dim, cond_dim=cond_dim, width=8, depth=1,
                         num_sampling_steps=num_sampling_steps)
        self.m, self.v, self.s = nn.Linear(cond_dim, token_dim), nn.Linear(cond_dim, token_dim), s
        with torch.no_grad():
            self.m.weight.normal_(0, 0.6)
            self.v.weight.normal_(0, 0.3)

    def net(self, x, t, z):
        a = self._abar.to(x.device)[t].to(x.dtype)[:, None]
        eps = (1 - a).sqrt() * (x - a.sqrt() * self.m(z)) / (a * self.s**2 + 1 - a)
        return torch.cat([eps, torch.tanh(self.v(z))], -1)


class Stub:
    """Continuous causal stub: ``z_p = a[c] * tanh(x_{p-1}) @ W + pos[p]`` for class ``c`` (2 = null), so ``a[c] = 0``
    makes class ``c`` context-free.  Every step checks that the cache was rolled back to the accepted prefix."""

    kind, is_causal, num_classes = "continuous", True, 2

    def __init__(self, a=(0.0, 3.0), n=8, d=2, c=6):
        g = torch.Generator().manual_seed(0)
        self.a = torch.tensor([*a, 1.0])
        self.w, self.pos = torch.randn(d, c, generator=g), torch.randn(n, c, generator=g)
        self.seq_len, self.token_dim, self.head = n, d, GaussHead(c, d)

    def new_cache(self, cond, max_tokens=None):
        cache = KVCache(1, cond.batch_size, 1, 1, 0, max_tokens or self.seq_len)
        cache.start = torch.where(cond.labels < 0, 2, cond.labels)
        return cache

    def step(self, inputs, positions, cache):
        assert bool((positions.min(1).values <= cache.lengths).all()), "a gap between the cache and the window"
        cache.advance(positions)
        ctx = self.a[cache.start][:, None, None] * torch.tanh(inputs) @ self.w
        return torch.where((positions == 0)[..., None], 0.0, ctx) + self.pos[positions]


def mar_ar(head: str = "gauss", seed: int = 0, s: float = 0.5, **kw):
    torch.manual_seed(seed)
    gen = MARARGenerator(**{**AR_KW, **kw}).eval()
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if not name.startswith("head"):
                p.normal_(0, 0.5)
    if head == "gauss":
        gen.head = GaussHead(gen.width, gen.token_dim, scale=0.6)
    elif head == "analytic":
        gen.head = AnalyticHead(cond_dim=gen.width, token_dim=gen.token_dim, s=s)
    else:
        with torch.no_grad():
            for p in gen.head.parameters():
                p.normal_(0, 0.01)
    return gen


# ------------------------------------------------------------------------------------------------------------
# deterministic consistency
# ------------------------------------------------------------------------------------------------------------
def test_registered_and_ar_routes_to_continuous():
    assert DECODERS["csd"] is decode_csd
    gen, cond = mar_ar("diffloss"), Conditioning(labels=torch.tensor([0, 1]))
    a = generate(gen, cond, decoder="ar", seed=1)
    b = generate(gen, cond, decoder="ar", seed=1)
    assert a.tokens.shape == (2, 4, 2) and a.nfe == 4 and torch.equal(a.tokens, b.tokens)


def test_paths_reproduce_the_head_sampler_and_their_density():
    torch.manual_seed(0)
    head = DiffLossHead(token_dim=3, cond_dim=8, width=16, depth=1, num_sampling_steps=4).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.3)
    z, z_null = torch.randn(5, 8), torch.randn(5, 8)
    for final_noise in (False, True):
        paths = head.paths(final_noise=final_noise)
        noise = paths.path_noise(5, torch.Generator().manual_seed(2))
        with torch.no_grad():
            path, logp, _ = paths.path_sample(z, z_null, 2.0, 0.7, noise)
            if not final_noise:  # MAR's sampler, draw for draw
                want = head.sample(z, z_null=z_null, cfg_scale=2.0, temperature=0.7, noise=noise[:4])
                torch.testing.assert_close(path[-1].float(), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
            torch.testing.assert_close(paths.path_log_prob(path, z, z_null, 2.0, 0.7), logp)
    with pytest.raises(ValueError, match="head_sampler='ddpm'"):
        DiffLossHead(token_dim=3, cond_dim=8, width=16, depth=1, sampler="ddim",
                     num_sampling_steps=10).paths(final_noise=True)


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_window_one_is_plain_ar(cfg):
    gen, cond = mar_ar("diffloss"), Conditioning(labels=torch.tensor([0, 1, 1]))
    ar = generate(gen, cond, decoder="ar", final_noise=True, seed=5, cfg_scale=cfg, temperature=0.8)
    csd = generate(gen, cond, decoder="csd", window=1, seed=5, cfg_scale=cfg, temperature=0.8)
    assert torch.equal(ar.tokens, csd.tokens) and csd.nfe == ar.nfe == 4
    assert csd.extras["accepted_hist"] == [0, 12]


def test_context_free_sample_accepts_every_draft_and_batch_rows_accept_their_own_count():
    """Class 0 of the stub is context-free (q == p exactly): the pattern is fixed.  Class 1 depends strongly on
    its context and needs more passes, in the same batch."""
    stub, sampling = Stub(), SamplingArgs(temperature=1.0)
    alone = decode_csd(stub, Conditioning(labels=torch.tensor([0])), sampling, torch.Generator().manual_seed(0),
                       window=4)
    # passes: accept 1 (no drafts yet); 3 drafts + 1 fresh; 1 fresh (window shifted to the end); 2 drafts
    assert alone[1] == 4 and alone[2]["accepted_hist"] == [0, 2, 1, 0, 1]
    tokens, nfe, extras = decode_csd(stub, Conditioning(labels=torch.tensor([0, 1])), sampling,
                                     torch.Generator().manual_seed(0), window=4)
    assert extras["nfe_per_sample"][0] == 4 < extras["nfe_per_sample"][1] == nfe
    assert tokens.shape == (2, 8, 2) and torch.isfinite(tokens).all()


def _ratio(value):
    return lambda log_p, log_q: torch.full_like(log_p, value)


def test_accept_all_and_reject_all(monkeypatch):
    stub, cond, sampling = Stub(a=(3.0, 3.0)), Conditioning(labels=torch.tensor([0, 1])), SamplingArgs()
    monkeypatch.setattr(continuous, "accept_log_ratio", _ratio(-math.inf))
    _, nfe, extras = decode_csd(stub, cond, sampling, torch.Generator().manual_seed(0), window=4)
    assert nfe == 8 and extras["accepted_hist"] == [0, 16, 0, 0, 0] and extras["residual_draws"] == 14
    monkeypatch.setattr(continuous, "accept_log_ratio", _ratio(math.inf))
    _, nfe, extras = decode_csd(stub, cond, sampling, torch.Generator().manual_seed(0), window=4)
    assert nfe == 4 and extras["accepted_hist"] == [0, 4, 2, 0, 2] and extras["residual_draws"] == 0


def test_cache_rollback_equals_a_fresh_pass_over_accepted_tokens():
    """Every window output whose inputs are all final tokens must equal the teacher-forced condition of the final
    sequence (so rolled-back cache entries never leak), for a ragged batch with CFG."""
    gen, cond = mar_ar("gauss", seed=3), Conditioning(labels=torch.tensor([0, 1, 1, 0]))
    records = []
    real_step = gen.step

    def recording_step(inputs, positions, cache):
        lengths = cache.lengths.clone()
        out = real_step(inputs, positions, cache)
        records.append((inputs.clone(), positions.clone(), out.clone(), lengths))
        return out

    gen.step = recording_step
    out = generate(gen, cond, decoder="csd", window=3, seed=0, cfg_scale=1.5)
    del gen.step
    full_cond = cond.cat(cond.null())
    tokens = out.tokens.repeat(2, 1, 1)  # cond rows, then null rows
    with torch.no_grad():
        z_full = gen.step(torch.nn.functional.pad(tokens[:, :-1], (0, 0, 1, 0)), torch.arange(4).expand(8, -1),
                          gen.new_cache(full_cond))
    fed = torch.full((8, 4, 2), float("nan"))  # the token last fed at each position (cache entry p holds p - 1)
    checked = 0
    for inputs, positions, z, lengths in records:
        for b in range(8):  # every entry kept in the cache was computed from a token that is final
            kept = max(0, int(lengths[b]) - 1)
            assert torch.equal(fed[b, :kept], tokens[b, :kept])
        rows = torch.arange(8)[:, None].expand_as(positions)
        prev = (positions - 1).clamp(min=0)
        fed[rows[positions > 0], prev[positions > 0]] = inputs[positions > 0]
        for b in range(8):
            for j, p in enumerate(positions[b].tolist()):
                if torch.equal(fed[b, :p], tokens[b, :p]):
                    torch.testing.assert_close(z[b, j], z_full[b, p], atol=1e-5, rtol=1e-5)
                    checked += 1
    assert checked > 8 * 4 and out.extras["accepted_hist"][1] < sum(out.extras["accepted_hist"])


# ------------------------------------------------------------------------------------------------------------
# distribution-level exactness: one-sample tests against the exact law
# ------------------------------------------------------------------------------------------------------------
M = 20_000
#: (head, generator options, decoder settings) of the law tests.  "sharp": a DiffLoss head (3 DDPM steps, exact
#: denoiser of N(m(z), 0.02^2)) on 1-D tokens, so the token's spread is comparable to the last step's noise and the
#: path ratios of drafts are spread over (0, 1) instead of being 0 or 1 (where a wrong rule changes nothing).
LAWS = {
    "gauss-w4": ("gauss", {}, dict(window=4, cfg_scale=1.0, temperature=1.0)),
    "gauss-w3-cfg2-t0.8": ("gauss", {}, dict(window=3, cfg_scale=2.0, temperature=0.8)),
    "gauss-w4-cfg1.5-noalign": ("gauss", {}, dict(window=4, cfg_scale=1.5, align=False, init="zeros")),
    "diffloss-w3-cfg1.5": ("sharp", {}, dict(window=3, cfg_scale=1.5)),
    "diffloss-n4-w4-t0.9": ("sharp", dict(seq_len=4), dict(window=4, temperature=0.9)),
}


def law_model(head: str, **kw):
    if head == "sharp":
        return mar_ar("analytic", s=0.02, **{"token_dim": 1, "seq_len": 3, **kw})
    return mar_ar(head, **kw)


def law_pvalue(gen, tokens, cfg_scale: float = 1.0, temperature: float = 1.0) -> float:
    """p-value of tokens (M, N, D) of class 1 against the exact law of ``gen`` (:func:`exactness.gaussian_pvalue`)."""
    paths = continuous.path_sampler(gen.head, final_noise=True)
    labels = torch.ones(len(tokens), dtype=torch.long)
    return gaussian_pvalue(gaussian_residuals(gen, paths, tokens, labels, cfg_scale, temperature))


def law_samples(name: str, decoder: str = "csd"):
    head, gen_kw, kw = LAWS[name]
    gen = law_model(head, **gen_kw)
    if decoder == "ar":
        kw = {k: v for k, v in kw.items() if k in ("cfg_scale", "temperature")} | {"final_noise": True}
    out = generate(gen, Conditioning(labels=torch.tensor([1])), decoder=decoder, num_samples=M, seed=11, **kw)
    return gen, out, {k: v for k, v in kw.items() if k in ("cfg_scale", "temperature")}


def _scale_ratio(factor):
    def patch(monkeypatch):
        real = continuous.accept_log_ratio
        monkeypatch.setattr(continuous, "accept_log_ratio", lambda log_p, log_q: real(log_p, log_q) + math.log(factor))

    return patch


#: broken controls that must fail.  A residual with 10 % of ``p`` mixed in is *not* caught here: when draft and target
#: paths barely overlap the residual is nearly ``p`` itself, so that mix changes almost nothing (docs/lossless.md).
CSD_BROKEN = {"ratio x1.1": _scale_ratio(1.1), "ratio x1.2": _scale_ratio(1.2)}


def test_law_is_exact_gaussian_and_reproduces_ar():
    """The law used by the tests: plain AR samples (csd's reference) pass it; shifted ones fail it."""
    for name in ("gauss-w4", "diffloss-w3-cfg1.5"):
        gen, ar, kw = law_samples(name, decoder="ar")
        assert law_pvalue(gen, ar.tokens, **kw) >= 1e-3
        assert law_pvalue(gen, ar.tokens + 0.03 * ar.tokens.std(), **kw) < 1e-3


@pytest.mark.parametrize("name", list(LAWS))
def test_csd_follows_the_exact_law(name):
    gen, csd, kw = law_samples(name)
    hist = csd.extras["accepted_hist"]
    assert csd.extras["lossless"] and hist[1] > 0.1 * sum(hist), hist  # rejections happen
    # capped residual loops (each moves that token's law by <= 0.0036 in TV) are rare enough not to matter
    assert csd.extras["residual_capped"] <= 1e-3 * csd.extras["residual_draws"]
    assert law_pvalue(gen, csd.tokens, **kw) >= 1e-3


@pytest.mark.parametrize("broken", list(CSD_BROKEN))
@pytest.mark.parametrize("name", ["gauss-w4", "diffloss-w3-cfg1.5"])
def test_broken_controls_fail_the_same_test(monkeypatch, name, broken):
    CSD_BROKEN[broken](monkeypatch)
    gen, csd, kw = law_samples(name)
    assert law_pvalue(gen, csd.tokens, **kw) < 1e-3


def test_accept_all_is_caught_diffloss_head(monkeypatch):
    monkeypatch.setattr(continuous, "accept_log_ratio", _ratio(math.inf))
    gen, csd, kw = law_samples("diffloss-w3-cfg1.5")
    assert law_pvalue(gen, csd.tokens, **kw) < 1e-3


def test_last_step_mode_runs_and_is_flagged_inexact():
    gen, cond = mar_ar("diffloss"), Conditioning(labels=torch.tensor([0, 1]))
    out = generate(gen, cond, decoder="csd", window=3, verify="last_step", inner_temperature=42.0, seed=0,
                   cfg_scale=2.0)
    assert out.tokens.shape == (2, 4, 2) and torch.isfinite(out.tokens).all()
    assert out.extras["lossless"] is False and out.extras["verify"] == "last_step"
    assert sum(out.extras["nfe_per_sample"]) <= 2 * out.nfe


# ------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------
def test_bad_input():
    gen, cond = mar_ar("diffloss"), Conditioning(labels=torch.tensor([0]))
    for window in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="window must be an int >= 1.*decoder='ar'"):
            generate(gen, cond, decoder="csd", window=window)
    with pytest.raises(ValueError, match="use decoder='sjd'"):
        generate(tiny_ar(num_classes=2), cond, decoder="csd")
    mar = MARGenerator(token_dim=2, seq_len=4, encoder_width=16, encoder_depth=1, encoder_heads=2, decoder_width=16,
                       decoder_depth=1, decoder_heads=2, buffer_size=2, num_classes=2, head_width=16, head_depth=1)
    with pytest.raises(ValueError, match="not causal: use decoder='masked'"):
        generate(mar, cond, decoder="csd")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        generate(gen, cond, decoder="csd", temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        generate(gen, cond, decoder="csd", top_k=3)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['windw'\]"):
        generate(gen, cond, decoder="csd", windw=2)
    with pytest.raises(ValueError, match="verify must be one of"):
        generate(gen, cond, decoder="csd", verify="marginal")
    with pytest.raises(ValueError, match="init must be one of"):
        generate(gen, cond, decoder="csd", init="random")
    with pytest.raises(ValueError, match="max_resample"):
        generate(gen, cond, decoder="csd", max_resample=0)
    with pytest.raises(ValueError, match="inner_temperature only applies"):
        generate(gen, cond, decoder="csd", inner_temperature=42.0)
    with pytest.raises(ValueError, match="head_sampler='ddpm'"):
        generate(mar_ar("diffloss", head_sampler="ddim", num_sampling_steps=10), cond, decoder="csd")
    with pytest.raises(ValueError, match="needs a DiffLossHead"):
        generate(mar_ar("gauss"), cond, decoder="csd", verify="last_step")
    with pytest.raises(ValueError, match="unknown option"):
        decode_car(gen, cond, SamplingArgs(), window=2)
