"""Property tests (Hypothesis): the sampling filters, and the Jacobi loop's cache rollback under random
accept/reject patterns.  Small ``max_examples`` and tiny models keep the module to a few seconds."""

import math
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_ar
from hypothesis import given, settings
from hypothesis import strategies as st

from vistok.decoding import SamplingArgs, generate
from vistok.decoding.sampling import top_k_filter, top_p_filter
from vistok.interfaces import Conditioning

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = settings(max_examples=100, deadline=None, derandomize=True)  # same examples every run (no flaky CI)
MODEL = settings(max_examples=12, deadline=None, derandomize=True)


@st.composite
def logit_rows(draw, max_vocab=24):
    """(2, V) float logits with ties (values from a small grid), some -inf, never a row without a finite value."""
    v = draw(st.integers(1, max_vocab))
    values = st.one_of(st.sampled_from([-2.0, 0.0, 0.5, 3.0]), st.floats(-20, 20, width=32), st.just(-math.inf))
    rows = draw(st.lists(st.lists(values, min_size=v, max_size=v), min_size=2, max_size=2))
    x = torch.tensor(rows, dtype=torch.float32)
    x[:, draw(st.integers(0, v - 1))] = draw(st.floats(-5, 5, width=32))  # at least one finite logit per row
    return x


def _kept(x: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(x)


# ---------------------------------------------------------------------------------------------------------------
# top-k / top-p / SamplingArgs.probs
# ---------------------------------------------------------------------------------------------------------------
@FAST
@given(logit_rows(), st.integers(-2, 30))
def test_top_k_keeps_the_k_largest(x, k):
    out = top_k_filter(x, k)
    v = x.shape[-1]
    if k <= 0 or k >= v:
        assert torch.equal(out, x)  # k >= vocab (or off): nothing removed
        return
    kept = _kept(out)
    assert torch.equal(out[kept], x[kept])  # kept logits unchanged
    kth = x.topk(k, dim=-1).values[:, -1:]
    assert torch.equal(kept, _kept(x) & (x >= kth))  # exactly the logits >= the k-th largest (ties kept)
    assert (kept.sum(-1) >= torch.minimum(_kept(x).sum(-1), torch.tensor(k))).all()


@FAST
@given(logit_rows(), st.floats(1e-3, 1.0))
def test_top_p_keeps_a_minimal_nucleus(x, p):
    out = top_p_filter(x, p)
    if p >= 1.0:
        assert torch.equal(out, x)
        return
    kept = _kept(out)
    probs = x.softmax(-1)
    assert torch.equal(out[kept], x[kept]) and kept.any(-1).all()
    assert (kept <= _kept(x)).all()  # -inf logits stay out
    assert torch.equal(kept.gather(-1, x.argmax(-1, keepdim=True)), torch.ones(2, 1, dtype=torch.bool))  # top one kept
    mass = (probs * kept).sum(-1)
    assert (mass >= p - 1e-5).all()  # the nucleus reaches p ...
    for row in range(2):  # ... and is a top set: every dropped token is no more likely than every kept one
        k, d = probs[row][kept[row]], probs[row][~kept[row] & _kept(x)[row]]
        if len(d):
            assert float(d.max()) <= float(k.min()) + 1e-6


@FAST
@given(st.integers(1, 30), st.floats(0.05, 1.0))
def test_top_p_on_equal_logits_keeps_the_smallest_set_reaching_p(v, p):
    out = top_p_filter(torch.zeros(1, v), p)
    n = int(_kept(out).sum())
    assert n / v >= p - 1e-5 and (n - 1) / v < p + 1e-5


@FAST
@given(logit_rows(), st.one_of(st.just(0.0), st.floats(1e-6, 5.0)), st.one_of(st.none(), st.integers(0, 30)),
       st.one_of(st.none(), st.floats(1e-3, 1.0)))
def test_probs_sum_to_one_and_vanish_outside_the_kept_set(x, temperature, top_k, top_p):
    sampling = SamplingArgs(temperature, top_k, top_p)
    probs = sampling.probs(x)
    assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-5) and (probs >= 0).all()
    if sampling.greedy:
        assert torch.equal(probs, F.one_hot(sampling.process(x).argmax(-1), x.shape[-1]).float())
    else:
        assert (probs[~_kept(sampling.process(x))] == 0).all()
    if top_k is not None and top_k >= x.shape[-1] and top_p in (None, 1.0):  # k >= vocab, p = 1: no filter at all
        assert torch.allclose(probs, SamplingArgs(temperature).probs(x))


@FAST
@given(st.sampled_from(["temperature", "top_p"]), st.sampled_from([math.nan, math.inf, -math.inf]))
def test_non_finite_options_are_rejected(name, value):
    with pytest.raises(ValueError, match="finite"):
        SamplingArgs(**{name: value})


# ---------------------------------------------------------------------------------------------------------------
# Jacobi decoding and KV-cache rollback on a tiny random ARGenerator
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    g = tiny_ar(vocab_size=32, seq_len=10, num_classes=4).eval()
    torch.nn.init.normal_(g.output.weight, std=0.5)  # peaky logits: greedy depends on the context
    return g


@MODEL
@given(window=st.integers(1, 12), init=st.sampled_from(["random", "repeat"]), seed=st.integers(0, 2**31),
       decoder=st.sampled_from(["sjd", "mcsjd"]), cfg=st.sampled_from([1.0, 3.0]),
       labels=st.lists(st.integers(-1, 3), min_size=1, max_size=3),
       options=st.sampled_from([{}, {"proactive": 3}, {"coupling": "gumbel"}, {"coupling": "gumbel", "proactive": 2},
                                {"proactive": (2, 2)}, {"coupling": "gumbel", "proactive": (3, 2)}]))
def test_jacobi_at_temperature_zero_is_greedy_ar(gen, window, init, seed, decoder, cfg, labels, options):
    cond = Conditioning(labels=torch.tensor(labels))
    ar = generate(gen, cond, decoder="ar", temperature=0.0, cfg_scale=cfg)
    options = options if decoder == "mcsjd" else {}
    jac = generate(gen, cond, decoder=decoder, temperature=0.0, cfg_scale=cfg, window=window, init=init, seed=seed,
                   **options)
    assert torch.equal(jac.tokens, ar.tokens)
    assert jac.nfe <= ar.nfe


@MODEL
@given(grid=st.sampled_from([(1, 10), (2, 5), (5, 2), (10, 1)]), window=st.integers(1, 6), seed=st.integers(0, 2**31),
       rows=st.sampled_from([None, 1, 2]), init=st.sampled_from(["vertical", "random"]), coupled=st.booleans(),
       cfg=st.sampled_from([1.0, 3.0]), labels=st.lists(st.integers(-1, 3), min_size=1, max_size=3))
def test_row_parallel_jacobi_at_full_lag_and_temperature_zero_is_greedy_ar(gen, grid, window, seed, rows, init,
                                                                          coupled, cfg, labels):
    cond = Conditioning(labels=torch.tensor(labels))
    ar = generate(gen, cond, decoder="ar", temperature=0.0, cfg_scale=cfg)
    pjd = generate(gen, cond, decoder="pjd", temperature=0.0, cfg_scale=cfg, grid=grid, lag=grid[1], window=window,
                   rows=rows, init=init, coupled=coupled, seed=seed)
    assert torch.equal(pjd.tokens, ar.tokens) and pjd.nfe <= ar.nfe


@MODEL
@given(seed=st.integers(0, 2**31), window=st.integers(1, 6), batch=st.integers(1, 4))
def test_cache_rollback_equals_teacher_forcing(gen, seed, window, batch):
    """Feed windows whose inputs turn to garbage at a random column, keep a random number of the correct ones with
    ``cache.truncate`` (per sample), repeat: every output computed from a correct prefix equals the logits of one
    fresh teacher-forced pass.  Labels include -1 (the null class: the unconditional half of a CFG batch)."""
    rnd = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    n, v = gen.seq_len, gen.vocab_size
    cond = Conditioning(labels=torch.randint(-1, 4, (batch,), generator=g))
    tokens = torch.randint(0, v, (batch, n), generator=g)
    inputs = F.pad(tokens[:, :-1], (1, 0))  # the token before each position
    with torch.no_grad():
        ref = gen.step(inputs, torch.arange(n).expand(batch, -1), gen.new_cache(cond))  # b n v
        cache = gen.new_cache(cond)
        acc = [0] * batch
        cols = torch.arange(window)
        for _ in range(4 * n):
            if min(acc) == n:
                break
            start = [min(a, n - window) for a in acc]
            pos = torch.tensor(start)[:, None] + cols  # b w
            good = [window if a == n else rnd.randint(a - s + 1, window) for a, s in zip(acc, start)]
            ok = cols[None] < torch.tensor(good)[:, None]  # leading columns fed the right tokens
            garbage = torch.randint(0, v, (batch, window), generator=g)
            out = gen.step(torch.where(ok, inputs.gather(1, pos), garbage), pos, cache)
            want = ref.gather(1, pos[..., None].expand(-1, -1, v))
            assert torch.allclose(out[ok], want[ok], atol=1e-4), (start, good)
            acc = [rnd.randint(min(a + 1, s + k), s + k) for a, s, k in zip(acc, start, good)]  # accept 1..k
            cache.truncate(torch.tensor(acc))
        assert min(acc) == n
