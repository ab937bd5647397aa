"""Row-parallel Jacobi decoding (``pjd``): output and NFE accounting, the limits where it is plain AR (greedy at
``lag`` = row length, a one-row grid), the row-causal attention rules, exactness at ``lag >= G - 1`` (row length G)
against an enumerated law (with broken controls and the relaxed lags failing the same test), and bad input."""

import pytest
import torch
from conftest import ar_conditioning, peaked_ar, tiny_ar
from exactness import PrefixTable, joint_pvalue
from test_jacobi import Stub, _chain, _const, _stub

from vistok.decoding import DECODERS, SamplingArgs, decode_pjd, generate, jacobi
from vistok.interfaces import Conditioning

pytestmark = pytest.mark.usefixtures("one_thread")
ALPHA = 1e-3


def _ar(text=False, n=16):
    torch.manual_seed(0)
    return peaked_ar(text, seq_len=n)


_cond = ar_conditioning


def _check_accounting(out, b, n, window, rows):
    hist = out.extras["accepted_hist"]
    assert len(hist) == rows * window + 1 and hist[0] == 0
    assert sum(k * c for k, c in enumerate(hist)) == b * n  # every token accepted exactly once
    assert sum(hist) == sum(out.extras["nfe_per_sample"])  # one entry per (sample, pass)
    assert out.nfe == max(out.extras["nfe_per_sample"]) and 1 <= out.nfe <= n


def test_registered_and_output():
    assert DECODERS["pjd"] is decode_pjd
    gen, cond = _ar(), _cond(False)
    out = generate(gen, cond, decoder="pjd", num_samples=2, cfg_scale=2.0, top_k=10, seed=0, lag=1, window=3)
    assert out.tokens.shape == (6, 16) and out.tokens.dtype == torch.long
    assert 0 <= int(out.tokens.min()) and int(out.tokens.max()) < gen.vocab_size
    assert out.extras["grid"] == (4, 4) and not out.extras["lossless"] and out.extras["mean_active_rows"] > 1
    _check_accounting(out, 6, 16, 3, 4)
    again = generate(gen, cond, decoder="pjd", num_samples=2, cfg_scale=2.0, top_k=10, seed=0, lag=1, window=3)
    assert torch.equal(out.tokens, again.tokens)  # seeded


# ------------------------------------------------------------------------------------------------------------
# limits where it is plain AR
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [False, True])
def test_greedy_at_full_lag_equals_ar(text):
    gen, cond = _ar(text), _cond(text)
    ref = generate(gen, cond, temperature=0.0, cfg_scale=2.0)
    for window, init, coupled, rows, follow, mask in [(4, "vertical", True, None, True, True),
                                                      (2, "random", False, 2, False, False),
                                                      (3, "random", True, 1, True, False)]:
        out = generate(gen, cond, decoder="pjd", temperature=0.0, cfg_scale=2.0, lag=4, window=window, init=init,
                       coupled=coupled, rows=rows, follow=follow, row_mask=mask, seed=0)
        assert torch.equal(out.tokens, ref.tokens), (window, init)
        assert out.extras["lossless"] and out.extras["mean_active_rows"] == 1.0
        _check_accounting(out, 3, 16, window, rows or 4)


def test_one_row_grid_equals_ar_for_any_lag():
    gen, cond = _ar(), _cond(False)
    ref = generate(gen, cond, temperature=0.0, cfg_scale=2.0)
    for lag in (1, 5):
        out = generate(gen, cond, decoder="pjd", temperature=0.0, cfg_scale=2.0, grid=(1, 16), lag=lag, window=5)
        assert torch.equal(out.tokens, ref.tokens) and out.extras["lossless"]


def test_relaxed_lag_changes_the_greedy_result_of_a_context_sensitive_model():
    """At lag < row length the rows see only accepted context: the fixed point is not greedy AR (else the
    relaxation would be untested)."""
    gen, cond = _ar(), _cond(False)
    ref = generate(gen, cond, temperature=0.0, cfg_scale=2.0)
    out = generate(gen, cond, decoder="pjd", temperature=0.0, cfg_scale=2.0, lag=1)
    assert not torch.equal(out.tokens, ref.tokens) and out.nfe < 16


# ------------------------------------------------------------------------------------------------------------
# NFE on stubs with a known answer
# ------------------------------------------------------------------------------------------------------------
def test_accept_all_and_reject_all():
    h, g = 4, 6
    one = Conditioning(labels=torch.zeros(1, dtype=torch.long))
    const, chain = _stub(_const, n=h * g), _stub(_chain, n=h * g)
    # a context-free model: row 0 takes 1 or 2 passes (random first draft), each later row one pass (vertical drafts)
    out = generate(const, one, decoder="pjd", temperature=0.0, grid=(h, g), lag=g, window=g, seed=0)
    assert torch.equal(out.tokens, generate(const, one, temperature=0.0).tokens)
    assert out.nfe in (h, h + 1) and out.extras["accepted_hist"][g] >= h - 1
    # rows in parallel: row r starts one pass after row r - 1
    out = generate(const, one, decoder="pjd", temperature=0.0, grid=(h, g), lag=1, window=g, seed=0)
    assert out.nfe <= h + 1
    # every draft made from a wrong prefix is wrong: one token per pass, whatever the lag
    for lag in (1, g):
        out = generate(chain, one, decoder="pjd", temperature=0.0, grid=(h, g), lag=lag, window=3, seed=0)
        if lag == g:
            assert out.nfe == h * g and torch.equal(out.tokens, generate(chain, one, temperature=0.0).tokens)
        assert out.extras["accepted_hist"][0] == 0


def test_rows_caps_the_pass_width():
    gen, cond = _ar(), _cond(False)
    calls = []
    real = gen.step
    gen.step = lambda x, pos, cache: calls.append(pos.shape[1]) or real(x, pos, cache)
    out = generate(gen, cond, decoder="pjd", lag=1, window=3, rows=2, seed=0)
    assert max(calls) <= 2 * 3 and out.extras["mean_active_rows"] <= 2 and out.nfe == len(calls)
    _check_accounting(out, 3, 16, 3, 2)


# ------------------------------------------------------------------------------------------------------------
# row-causal attention
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lag,follow,row_mask", [(0, True, True), (1, True, True), (2, True, True), (2, False, True),
                                                 (3, True, True), (4, True, True), (1, True, False), (2, False, False)])
def test_row_causal_attention(lag, follow, row_mask):
    """Every query sees its own row up to itself, nothing after it and, of every row above, a prefix (its accepted
    tokens).  Of the row just above it sees at least ``min(lag + 1, G)`` slots (``follow=False``) or
    ``min(c + lag + 1, G)`` for a query in column ``c`` (``follow=True``; slot ``t`` holds token ``t - 1``, so the
    tokens up to column ``c + lag - 1``): all of it at lag >= row length - 1.  Of the positions other rows feed in the
    same pass it sees none (the row-causal mask) or, with ``row_mask=False``, all of those before it."""
    gen, cond, g = _ar(), _cond(False), 4
    seen = []
    real = gen.step

    def step(x, pos, cache):
        seen.append((pos.clone(), cache.attention_mask(pos)[:, 0, :, cache.prefix_len :].clone()))
        return real(x, pos, cache)

    gen.step = step
    generate(gen, cond, decoder="pjd", cfg_scale=2.0, lag=lag, follow=follow, row_mask=row_mask, window=2, seed=0)
    checked = 0
    for pos, mask in seen:
        assert torch.equal(mask[:3], mask[3:])  # CFG: the null half sees the same
        for b in range(3):
            for j, p in enumerate(pos[b].tolist()):
                r, c = divmod(p, g)
                row = mask[b, j].view(4, g)
                assert row[r, : c + 1].all() and not row.flatten()[p + 1 :].any()
                for above in range(r):
                    k = int(row[above].sum())
                    assert row[above, :k].all()  # a prefix
                    if above == r - 1:
                        assert k >= min((c if follow else 0) + lag + 1, g), (p, k)
                    assert lag < g - 1 or k == g
                fed = [t for t in set(pos[b].tolist()) if t // g != r and t < p]  # other rows' windows
                assert all(bool(mask[b, j, t]) != row_mask for t in fed)
                checked += len(fed)
    assert (checked > 0) == (lag < g - 1)


# ------------------------------------------------------------------------------------------------------------
# exactness at lag >= G - 1 (enumerated law), and the relaxed lags caught by the same test
# ------------------------------------------------------------------------------------------------------------
SETTING = dict(cfg_scale=2.0, temperature=1.3, top_k=2)
GRID = (2, 3)


@pytest.fixture(scope="module")
def table():
    return PrefixTable.random(3, 6, scale=1.0, sticky=1.5)


@pytest.fixture(scope="module")
def law(table):
    return table.law(1, **SETTING)


def _pvalue(table, law, m=60_000, **kw):
    out = generate(table, Conditioning(labels=torch.tensor([1])), decoder="pjd", num_samples=m, seed=7, grid=GRID,
                   **SETTING, **kw)
    return joint_pvalue(out.tokens, law), out


@pytest.mark.parametrize("kw", [dict(window=2, lag=2), dict(window=3, lag=3, init="random", coupled=False)])
def test_full_lag_follows_the_exact_law(table, law, kw):
    pvalue, out = _pvalue(table, law, **kw)
    assert out.extras["lossless"] and pvalue >= ALPHA, pvalue


@pytest.mark.parametrize("broken", ["lag 0", "lag 1", "ratio x1.05", "residual + 10% p"])
def test_broken_controls_and_relaxed_lags_fail_the_same_test(table, law, monkeypatch, broken):
    """Measured p-values (seed 7): lag 0 and 1 ~0, ratio x1.05 ~1e-237, residual mix ~1e-31."""
    kw = dict(lag=3, window=2)
    if broken.startswith("lag"):  # relaxed: rows see only the accepted tokens of the rows above
        kw["lag"] = int(broken[-1])
    elif broken.startswith("ratio"):
        real = jacobi.accept_ratio
        monkeypatch.setattr(jacobi, "accept_ratio", lambda *a: 1.05 * real(*a))
    else:
        real = jacobi._residual
        monkeypatch.setattr(jacobi, "_residual", lambda p, q: 0.9 * real(p, q) + 0.1 * p)
    pvalue, out = _pvalue(table, law, **kw)
    assert out.extras["lossless"] == (kw["lag"] >= 2) and pvalue < ALPHA, pvalue


def test_full_lag_follows_the_law_of_a_network():
    """The same on a tiny random ARGenerator: KV cache, ``KVCache.visible`` and CFG through the network."""
    torch.manual_seed(0)
    gen = tiny_ar(vocab_size=3, seq_len=6, num_classes=2, width=16, depth=1, num_heads=2).eval()
    torch.nn.init.normal_(gen.tok_embed.weight, std=1.0)
    torch.nn.init.normal_(gen.output.weight, std=0.5)
    m = 8000
    out = generate(gen, Conditioning(labels=torch.tensor([0, 1])), decoder="pjd", num_samples=m, seed=7, grid=GRID,
                   lag=3, window=2, **SETTING)
    seqs = torch.cartesian_prod(*[torch.arange(3)] * 6)
    with torch.no_grad():
        for label in (0, 1):
            c = Conditioning(labels=torch.full((len(seqs),), label))
            logits, null = gen(seqs, c).logits, gen(seqs, c.null()).logits
            probs = SamplingArgs(1.3, 2).probs(null + 2.0 * (logits - null)).double()
            law = probs.gather(-1, seqs[..., None])[..., 0].prod(-1)
            assert joint_pvalue(out.tokens[label * m : (label + 1) * m], law) >= ALPHA


# ------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------
def test_bad_input():
    gen, cond = _ar(), _cond(False, b=1)
    cases = [
        (dict(window=0), "window must be an int >= 1"),
        (dict(lag=-1), "lag must be an int >= 0"),
        (dict(lag=5), r"lag must be <= the row length 4 \(lag >= 3 is the exact decoder\)"),
        (dict(rows=0), "rows must be an int >= 1"),
        (dict(init="repeat"), "init must be one of"),
        (dict(coupled="yes"), "coupled must be a bool"),
        (dict(follow=1), "follow must be a bool"),
        (dict(row_mask=None), "row_mask must be a bool"),
        (dict(grid=(4, 5)), r"grid \(4, 5\) has 20 cells but the generator makes 16 tokens"),
        (dict(grid=(4,)), r"grid must be \(rows, row_length\)"),
        (dict(grid=(2.0, 8)), r"grid must be \(rows, row_length\)"),
        (dict(lagg=2), r"unknown option\(s\) \['lagg'\]; it takes grid="),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            generate(gen, cond, decoder="pjd", **kw)
    with pytest.raises(ValueError, match=r"12 tokens is not a square, pass grid="):
        generate(_ar(n=12), cond, decoder="pjd")
    assert generate(_ar(n=12), cond, decoder="pjd", grid=(3, 4)).tokens.shape == (1, 12)

    class NonCausal(Stub):
        is_causal = False

    bad = NonCausal(torch.zeros(1, 8, 8), torch.zeros(1, 8), 4)
    with pytest.raises(ValueError, match="is_causal=True"):
        generate(bad, Conditioning(labels=torch.zeros(1, dtype=torch.long)), decoder="pjd")


def test_generator_grid_attribute_is_used():
    gen, cond = _ar(), _cond(False, b=1)
    gen.grid = (2, 8)
    out = generate(gen, cond, decoder="pjd", lag=8, temperature=0.0)
    assert out.extras["grid"] == (2, 8)
    with pytest.raises(ValueError, match="lag must be <= the row length 8"):
        generate(gen, cond, decoder="pjd", lag=9)
