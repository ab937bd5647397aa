"""Distribution-level exactness of the lossless speculative decoders (sjd, mcsjd).

A tiny, strongly context-dependent ARGenerator with V = 3 and N = 5 has 243 possible sequences.  Their exact
probabilities are the product of the model's *processed* conditionals (CFG mix, temperature, top-k), computed
by one teacher-forced pass over every sequence.  Samples drawn in one large batch are tested with

* a chi-square test after pooling the sparse bins so that every expected count is >= 5 (alpha = 0.001), and
* the total-variation distance to the exact law against a bootstrap noise floor (the 99.9th percentile of the
  TV of as many exact draws).

Positive controls (a deliberately wrong acceptance rule, GSD with a large group, LANTERN) must fail the same
test, otherwise the test has no power.
"""

import itertools

import pytest
import torch
from conftest import tiny_ar
from scipy import stats

from vistok.decoding import SamplingArgs, generate, jacobi
from vistok.interfaces import Conditioning

V, N, M = 3, 5, 8000
SETTINGS = {
    "cfg2-t1.3-top2": dict(cfg_scale=2.0, temperature=1.3, top_k=2),
    "cfg1-t0.8": dict(cfg_scale=1.0, temperature=0.8, top_k=None),
}
SEQS = torch.tensor(list(itertools.product(range(V), repeat=N)))  # all 243 sequences


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    gen = tiny_ar(vocab_size=V, seq_len=N, num_classes=2, width=16, depth=1, num_heads=2).eval()
    torch.nn.init.normal_(gen.tok_embed.weight, std=1.0)  # make the conditionals depend on the prefix
    torch.nn.init.normal_(gen.output.weight, std=0.5)
    return gen


@torch.no_grad()
def exact_law(gen, label: int, cfg_scale: float, temperature: float, top_k: int | None) -> torch.Tensor:
    """Probability of each of the V**N sequences under the processed AR sampler."""
    cond = Conditioning(labels=torch.full((len(SEQS),), label))
    logits = gen(SEQS, cond).logits
    if cfg_scale != 1.0:
        u = gen(SEQS, cond.null()).logits
        logits = u + cfg_scale * (logits - u)
    probs = SamplingArgs(temperature, top_k).probs(logits)
    return probs.gather(-1, SEQS[..., None])[..., 0].prod(-1).double()


def _index(tokens: torch.Tensor) -> torch.Tensor:
    return (tokens * V ** torch.arange(N - 1, -1, -1)).sum(-1)


def verdict(tokens: torch.Tensor, law: torch.Tensor) -> tuple[float, float, float]:
    """(chi-square p-value with pooled bins, TV to the law, bootstrap TV noise floor) for samples (M, N)."""
    m = len(tokens)
    counts = torch.bincount(_index(tokens), minlength=len(law)).double()
    expected = law * m
    order = expected.argsort(descending=True)
    e, o = expected[order], counts[order]
    big = e >= 5
    e = torch.cat([e[big], e[~big].sum(0, keepdim=True)])
    o = torch.cat([o[big], o[~big].sum(0, keepdim=True)])
    if e[-1] < 5:  # fold a small pooled bin into the last kept one
        e, o = torch.cat([e[:-2], e[-2:].sum(0, keepdim=True)]), torch.cat([o[:-2], o[-2:].sum(0, keepdim=True)])
    chi2 = float(((o - e) ** 2 / e).sum())
    pvalue = float(stats.chi2.sf(chi2, len(e) - 1))
    tv = 0.5 * float((counts / m - law).abs().sum())
    reps = 400
    g = torch.Generator().manual_seed(1234)
    draws = torch.multinomial(law, m * reps, replacement=True, generator=g).view(reps, m)
    boot = torch.stack([torch.bincount(d, minlength=len(law)) for d in draws]).double() / m
    floor = float((0.5 * (boot - law).abs().sum(-1)).quantile(0.999))
    return pvalue, tv, floor


def exact_enough(tokens, law) -> bool:
    pvalue, tv, floor = verdict(tokens, law)
    return pvalue >= 1e-3 and tv <= floor


def _samples(gen, decoder: str, setting: dict, seed: int, **kw) -> dict[int, torch.Tensor]:
    """M samples per class label, both labels in one batch of 2 * M."""
    out = generate(gen, Conditioning(labels=torch.tensor([0, 1])), decoder=decoder, num_samples=M, seed=seed,
                   **setting, **kw)
    return {0: out.tokens[:M], 1: out.tokens[M:]}


def test_law_is_context_dependent(model):
    """The conditionals of the test model depend on the prefix (else every draft would be accepted)."""
    law = exact_law(model, 0, 1.0, 1.0, None).view(*[V] * N)
    p1 = law.sum((2, 3, 4))  # joint of tokens 0, 1
    cond = p1 / p1.sum(1, keepdim=True)
    assert float((cond.max(0).values - cond.min(0).values).max()) > 0.2


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("decoder,kw", [("ar", {}), ("sjd", {"window": 4}), ("mcsjd", {"window": 4}),
                                        ("sjd", {"window": 3, "init": "repeat"}),
                                        ("mcsjd", {"window": 5, "init": "repeat"})])
def test_exact_decoders_follow_the_ar_law(model, setting, decoder, kw):
    samples = _samples(model, decoder, SETTINGS[setting], seed=7, **kw)
    for label, tokens in samples.items():
        law = exact_law(model, label, **SETTINGS[setting])
        pvalue, tv, floor = verdict(tokens, law)
        assert pvalue >= 1e-3 and tv <= floor, (label, pvalue, tv, floor)


def _times(factor):
    real = jacobi.accept_ratio
    return lambda p_x, q_x: factor * real(p_x, q_x)


@pytest.mark.parametrize("decoder", ["sjd", "mcsjd"])
@pytest.mark.parametrize("broken", ["ratio x 1.5", "always accept"])
def test_broken_acceptance_rule_is_caught(model, monkeypatch, decoder, broken):
    monkeypatch.setattr(jacobi, "accept_ratio", _times(1.5) if broken == "ratio x 1.5" else _times(1e9))
    setting = SETTINGS["cfg2-t1.3-top2"]
    samples = _samples(model, decoder, setting, seed=7, window=4)
    for label, tokens in samples.items():
        law = exact_law(model, label, **setting)
        pvalue, tv, floor = verdict(tokens, law)
        assert pvalue < 1e-3 and tv > floor, (label, pvalue, tv, floor)
        assert not exact_enough(tokens, law)


@pytest.mark.parametrize("decoder,kw", [("gsd", {"group_rank": 2, "p_thr": 1.0, "d_thr": 1e3}),
                                        ("lantern", {"latents": torch.eye(V), "delta": 0.3})])
def test_relaxed_decoders_are_flagged_as_not_exact(model, decoder, kw):
    setting = SETTINGS["cfg2-t1.3-top2"]
    samples = _samples(model, decoder, setting, seed=7, window=4, **kw)
    assert not any(exact_enough(tokens, exact_law(model, label, **setting)) for label, tokens in samples.items())


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["sjd", "mcsjd"])
def test_marginals_and_pair_joints_larger_vocab(decoder):
    """V = 16, N = 16 (too many sequences to enumerate): per-position marginals and adjacent-pair joints of
    speculative samples vs plain AR samples, two-sample chi-square with pooled bins."""
    torch.manual_seed(0)
    gen = tiny_ar(vocab_size=16, seq_len=16, num_classes=2, width=32, depth=2, num_heads=2).eval()
    torch.nn.init.normal_(gen.tok_embed.weight, std=1.0)
    torch.nn.init.normal_(gen.output.weight, std=0.3)
    cond = Conditioning(labels=torch.tensor([1]))
    kw = dict(num_samples=20000, cfg_scale=1.5, top_k=12, temperature=0.9)
    ar = generate(gen, cond, seed=1, **kw).tokens
    spec = generate(gen, cond, decoder=decoder, window=8, seed=2, **kw).tokens
    pvalues = []
    for i in range(16):
        cols = [(ar[:, i], spec[:, i], 16)]
        if i < 15:
            cols.append((ar[:, i] * 16 + ar[:, i + 1], spec[:, i] * 16 + spec[:, i + 1], 256))
        for a, b, k in cols:
            table = torch.stack([torch.bincount(a, minlength=k), torch.bincount(b, minlength=k)]).double()
            big = table.sum(0) >= 20
            table = torch.cat([table[:, big], table[:, ~big].sum(1, keepdim=True)], 1)
            table = table[:, table.sum(0) > 0]
            pvalues.append(stats.chi2_contingency(table.numpy())[1])
    # Bonferroni over all the tests
    assert min(pvalues) * len(pvalues) >= 1e-3, min(pvalues)
