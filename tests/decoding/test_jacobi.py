"""Speculative Jacobi decoders (sjd, mcsjd, gsd, lantern): greedy exactness, NFE, ragged batches, cache
rollback, relaxed rules and bad input.  Distribution-level exactness is in test_lossless.py."""

import math

import pytest
import torch
from conftest import ar_conditioning, peaked_ar

from vistok.decoding import DECODERS, SamplingArgs, decode_gsd, decode_mcsjd, decode_sjd, generate, jacobi
from vistok.decoding.grouped import gsd_ratio, lantern_neighbours, lantern_ratio
from vistok.decoding.guidance import Guidance
from vistok.interfaces import Conditioning, KVCache

EXACT = ["sjd", "mcsjd"]


pytestmark = pytest.mark.usefixtures("one_thread")


class Stub:
    """Exact toy generator: logits of token p depend only on token p - 1 (``tables[c][prev]``), where ``c`` is
    the sample's class label; position 0 uses ``starts[c]``."""

    kind, is_causal = "discrete", True

    def __init__(self, tables, starts, seq_len):
        self.tables, self.starts, self.seq_len, self.vocab_size = tables, starts, seq_len, tables.shape[-1]

    def new_cache(self, cond, max_tokens=None):
        cache = KVCache(1, cond.batch_size, 1, 1, 0, max_tokens or self.seq_len)
        cache.start = cond.labels
        return cache

    def step(self, inputs, positions, cache):
        cache.advance(positions)
        c = cache.start[:, None].expand_as(inputs)
        return torch.where((positions == 0)[..., None], self.starts[c], self.tables[c, inputs])


def _chain(v):  # next = prev + 1 (mod v), start at 1: every Jacobi draft made from a wrong prefix is wrong
    return 10.0 * torch.nn.functional.one_hot((torch.arange(v) + 1) % v, v).float(), 10.0 * torch.eye(v)[1]


def _const(v, z=3):  # context-free: always token z
    return 10.0 * torch.eye(v)[z].expand(v, v), 10.0 * torch.eye(v)[z]


def _stub(*kinds, v=40, n=24):
    made = [k(v) if callable(k) else k for k in kinds]
    return Stub(torch.stack([t for t, _ in made]), torch.stack([s for _, s in made]), n)


_ar, _cond = peaked_ar, ar_conditioning


# ------------------------------------------------------------------------------------------------------------
# temperature 0: the Jacobi fixed point is greedy AR
# ------------------------------------------------------------------------------------------------------------
def test_registered():
    assert {"sjd", "mcsjd", "gsd", "lantern"} <= set(DECODERS)


@pytest.mark.parametrize("decoder", EXACT)
@pytest.mark.parametrize("text", [False, True])
def test_greedy_equals_ar_on_tiny_models(decoder, text):
    gen, cond = _ar(text), _cond(text)
    ref = generate(gen, cond, temperature=0.0, cfg_scale=2.0)
    for window, init in [(3, "random"), (16, "repeat"), (7, "random")]:
        out = generate(gen, cond, decoder=decoder, temperature=0.0, cfg_scale=2.0, window=window, init=init,
                       seed=0)
        assert torch.equal(out.tokens, ref.tokens), (window, init)
        assert 1 <= out.nfe <= 16 and out.nfe == max(out.extras["nfe_per_sample"])
        hist = out.extras["accepted_hist"]
        assert len(hist) == min(window, 16) + 1 and hist[0] == 0
        assert sum(k * c for k, c in enumerate(hist)) == 3 * 16  # every token accepted exactly once


@pytest.mark.parametrize("decoder", EXACT)
def test_greedy_equals_ar_on_context_dependent_stub(decoder):
    torch.manual_seed(1)
    stub = Stub(torch.randn(1, 12, 12) * 3, torch.randn(1, 12), 20)
    cond = Conditioning(labels=torch.zeros(4, dtype=torch.long))
    ref = generate(stub, cond, temperature=0.0)
    for window in (1, 2, 5, 20):
        out = generate(stub, cond, decoder=decoder, temperature=0.0, window=window, seed=0)
        assert torch.equal(out.tokens, ref.tokens)


@pytest.mark.parametrize("decoder", EXACT)
def test_accept_all_and_reject_all(decoder):
    n, w = 24, 5
    const, chain = _stub(_const, n=n), _stub(_chain, n=n)
    one = Conditioning(labels=torch.zeros(1, dtype=torch.long))
    for stub, nfe in [(const, 1 + math.ceil((n - 1) / w)), (chain, n)]:
        ref = generate(stub, one, temperature=0.0)
        out = generate(stub, one, decoder=decoder, temperature=0.0, window=w, init="repeat")
        assert torch.equal(out.tokens, ref.tokens)
        assert out.nfe == nfe
    # accept-all: the first pass fixes one token, then every pass accepts its W - 1 drafts plus the bonus
    out = generate(const, one, decoder=decoder, temperature=0.0, window=w, init="repeat")
    assert out.extras["accepted_hist"][w] == (n - 1) // w and out.extras["accepted_hist"][1] == 1
    # random init: a fresh random draft is (almost surely) wrong, so it costs about one pass per W + 1 tokens
    out = generate(const, one, decoder=decoder, temperature=0.0, window=w, init="random", seed=0)
    assert out.nfe <= 2 * math.ceil(n / (w + 1)) + 1 < n


@pytest.mark.parametrize("decoder", EXACT)
def test_window_one_is_ar(decoder):
    gen, cond = _ar(), _cond(False)
    ref = generate(gen, cond, temperature=0.0)
    out = generate(gen, cond, decoder=decoder, temperature=0.0, window=1)
    assert torch.equal(out.tokens, ref.tokens) and out.nfe == 16
    out = generate(gen, cond, decoder=decoder, window=1, top_k=5, seed=0)
    assert out.nfe == 16 and out.extras["accepted_hist"] == [0, 3 * 16]


# ------------------------------------------------------------------------------------------------------------
# batches: each sample accepts its own count
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", EXACT)
def test_ragged_batch_equals_individual_runs(decoder):
    n, w = 24, 6
    stub = _stub(_const, _chain, n=n)  # class 0 accepts everything, class 1 nothing
    labels = torch.tensor([0, 1, 0])
    out = generate(stub, Conditioning(labels=labels), decoder=decoder, temperature=0.0, window=w, init="repeat")
    fast = 1 + math.ceil((n - 1) / w)
    assert out.extras["nfe_per_sample"] == [fast, n, fast]  # no min over the batch
    for i, label in enumerate(labels.tolist()):
        alone = generate(stub, Conditioning(labels=torch.tensor([label])), decoder=decoder, temperature=0.0,
                         window=w, init="repeat")
        assert torch.equal(out.tokens[i : i + 1], alone.tokens)
        assert alone.nfe == out.extras["nfe_per_sample"][i]
    # a real model, CFG, ragged acceptance
    gen, cond = _ar(), _cond(False, b=4)
    batch = generate(gen, cond, decoder=decoder, temperature=0.0, cfg_scale=2.0, window=4, init="repeat")
    for i in range(4):
        one = Conditioning(labels=cond.labels[i : i + 1])
        alone = generate(gen, one, decoder=decoder, temperature=0.0, cfg_scale=2.0, window=4, init="repeat")
        assert torch.equal(batch.tokens[i : i + 1], alone.tokens)
        assert alone.nfe == batch.extras["nfe_per_sample"][i]


# ------------------------------------------------------------------------------------------------------------
# KV cache rollback
# ------------------------------------------------------------------------------------------------------------
class Recorder:
    """Wraps a generator; before every step, snapshots the valid part of the cache."""

    def __init__(self, inner):
        self.inner, self.snaps = inner, []
        self.kind, self.is_causal, self.seq_len, self.vocab_size = "discrete", True, inner.seq_len, inner.vocab_size

    def new_cache(self, cond, max_tokens=None):
        return self.inner.new_cache(cond, max_tokens)

    def step(self, inputs, positions, cache):
        self.snaps.append((cache.lengths.clone(), [k.clone() for k in cache.k], [v.clone() for v in cache.v]))
        return self.inner.step(inputs, positions, cache)


def rows_per_sample(proactive) -> int:
    """Cache rows per sample of ``proactive=K`` or a candidate tree ``(K1, K2, ..)``."""
    return math.prod(proactive) if isinstance(proactive, tuple | list) else proactive


@pytest.mark.parametrize("decoder,options", [(decode_sjd, {}), (decode_mcsjd, {}), (decode_mcsjd, {"proactive": 3}),
                                             (decode_mcsjd, {"proactive": 2, "coupling": "gumbel"}),
                                             (decode_mcsjd, {"proactive": (2, 3)}),
                                             (decode_mcsjd, {"proactive": (3, 2), "coupling": "gumbel"})])
def test_cache_rollback_matches_ar_pass(decoder, options):
    """The valid part of every cache row before every pass equals one teacher-forced pass over the final tokens
    (proactive drafting: ``k`` rows per sample, each a copy of the winning row after every pass)."""
    gen = _ar(text=True)
    torch.nn.init.normal_(gen.output.weight, std=0.15)  # some drafts accepted, many rejected
    cond = _cond(True, b=3)
    rec, guidance = Recorder(gen), Guidance(2.0, gen)
    tokens, nfe, extras = decoder(rec, cond, SamplingArgs(1.0, top_k=20), torch.Generator().manual_seed(0),
                                  window=6, guidance=guidance, **options)
    k = rows_per_sample(options.get("proactive", 1))
    hist = extras["accepted_hist"]
    assert hist[1] > 0 and sum(hist[2:]) > 0, hist  # a mix of accepts and rejects
    ref = guidance.new_cache(gen, cond)
    n = gen.seq_len
    gen.step(guidance.double(torch.nn.functional.pad(tokens[:, :-1], (1, 0))),
             guidance.double(torch.arange(n).expand(3, -1)), ref)
    p = ref.prefix_len
    checked = 0
    for lengths, ks, vs in rec.snaps[1:]:
        assert lengths.shape == (6 * k,) and torch.equal(lengths[: 3 * k], lengths[3 * k :])  # cond and null agree
        for row, length in enumerate(lengths.tolist()):
            sample = row // (3 * k) * 3 + row % (3 * k) // k  # the reference row (cond rows, then null rows)
            for buf, want in [(ks, ref.k), (vs, ref.v)]:
                for layer in range(len(want)):
                    torch.testing.assert_close(buf[layer][row, :, : p + length],
                                               want[layer][sample, :, : p + length], atol=1e-5, rtol=0)
            checked += length
    assert checked > 0 and len(rec.snaps) == nfe


# ------------------------------------------------------------------------------------------------------------
# mcsjd's coupling keeps drafts whose distribution barely moved
# ------------------------------------------------------------------------------------------------------------
def test_coupling_accepts_more_on_mildly_context_dependent_model():
    torch.manual_seed(0)
    v = 16
    stub = Stub(0.5 * torch.randn(1, v, v), torch.zeros(1, v), 64)
    cond = Conditioning(labels=torch.zeros(200, dtype=torch.long))
    sjd = generate(stub, cond, decoder="sjd", window=16, seed=0)
    mc = generate(stub, cond, decoder="mcsjd", window=16, seed=0)
    assert mc.extras["mean_accepted"] > 1.1 * sjd.extras["mean_accepted"] > 1.1


# ------------------------------------------------------------------------------------------------------------
# mcsjd's options: Gumbel coupling and proactive drafting
# ------------------------------------------------------------------------------------------------------------
OPTIONS = [dict(proactive=3), dict(coupling="gumbel"), dict(coupling="gumbel", proactive=3), dict(proactive=2),
           dict(proactive=(2, 2)), dict(coupling="gumbel", proactive=(3, 2, 2))]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("text", [False, True])
def test_mcsjd_options_at_temperature_zero_are_greedy_ar(options, text):
    gen, cond = _ar(text), _cond(text)
    ref = generate(gen, cond, temperature=0.0, cfg_scale=2.0)
    for window, init in [(3, "random"), (16, "repeat"), (7, "random"), (1, "random")]:
        out = generate(gen, cond, decoder="mcsjd", temperature=0.0, cfg_scale=2.0, window=window, init=init, seed=0,
                       **options)
        assert torch.equal(out.tokens, ref.tokens), (window, init)
        hist, k = out.extras["accepted_hist"], options.get("proactive", 1)
        assert out.nfe == max(out.extras["nfe_per_sample"]) and hist[0] == 0
        assert sum(c * i for i, c in enumerate(hist)) == 3 * 16  # every token accepted exactly once
        assert out.extras["proactive"] == k
        assert out.extras["positions_per_pass"] == rows_per_sample(k) * window
        assert out.extras["coupling"] == options.get("coupling", "maximal") and out.extras["lossless"]


@pytest.mark.parametrize("text", [False, True])
def test_gumbel_coupling_is_ar_with_the_same_noise(text):
    """The output is the AR sample of the noise drawn first (argmax(log p + g) position by position, written out
    here), whatever the window, the initial drafts and the candidates; only the number of passes changes."""
    gen, cond = _ar(text), _cond(text)
    sampling, seed = SamplingArgs(1.0, top_k=20), 3
    n, v, b = gen.seq_len, gen.vocab_size, cond.batch_size
    noise = jacobi.gumbel_noise((b, n, v), torch.Generator().manual_seed(seed), torch.device("cpu"))
    guidance = Guidance(2.0, gen)
    cache, tokens = guidance.new_cache(gen, cond), torch.zeros(b, n, dtype=torch.long)
    with torch.no_grad():
        for i in range(n):
            prev = tokens[:, i - 1 : i] if i else torch.zeros(b, 1, dtype=torch.long)
            p = sampling.probs(guidance.mix(guidance.step(gen, prev, torch.full((b, 1), i), cache)))[:, 0]
            tokens[:, i] = (p.log() + noise[:, i]).argmax(-1)
    nfes = []
    for window, init, k in [(1, "random", 1), (4, "random", 1), (16, "repeat", 1), (6, "random", 4), (16, "random", 2),
                            (6, "random", (3, 2)), (16, "repeat", (2, 2, 2))]:
        tok, nfe, extras = decode_mcsjd(gen, cond, sampling, torch.Generator().manual_seed(seed), window=window,
                                        init=init, coupling="gumbel", proactive=k, guidance=guidance)
        assert torch.equal(tok, tokens), (window, init, k)
        nfes.append(nfe)
    assert nfes[0] == n and min(nfes[1:]) < n


@pytest.mark.parametrize("coupling", ["maximal", "gumbel"])
def test_proactive_drafting_accepts_more(coupling):
    """On a mildly context-dependent model, candidates for the first open position lengthen the accepted runs."""
    torch.manual_seed(0)
    v = 16
    stub = Stub(2.0 * torch.randn(1, v, v), torch.zeros(1, v), 48)
    cond = Conditioning(labels=torch.zeros(200, dtype=torch.long))
    one = generate(stub, cond, decoder="mcsjd", window=16, seed=0, coupling=coupling)
    four = generate(stub, cond, decoder="mcsjd", window=16, seed=0, coupling=coupling, proactive=4)
    assert four.extras["mean_accepted"] > 1.1 * one.extras["mean_accepted"], (one.extras, four.extras)
    # a candidate tree: 4 for the first open position and 4 for the next decides two positions before the drafts
    tree = generate(stub, cond, decoder="mcsjd", window=16, seed=0, coupling=coupling, proactive=(4, 4))
    assert tree.extras["mean_accepted"] > 1.02 * four.extras["mean_accepted"], (four.extras, tree.extras)


def test_proactive_tree_of_one_level_is_plain_proactive():
    """``proactive=(K,)`` is ``proactive=K`` token for token; under the Gumbel coupling so is ``(K, 1)`` (a single
    candidate at the second level is the draft itself)."""
    gen, cond = _ar(True), _cond(True)
    kw = dict(decoder="mcsjd", window=6, seed=2, cfg_scale=2.0, top_k=20)
    for coupling in ["maximal", "gumbel"]:
        ref = generate(gen, cond, coupling=coupling, proactive=3, **kw)
        same = [(3,)] + ([(3, 1), [3, 1, 1]] if coupling == "gumbel" else [])
        for k in same:
            out = generate(gen, cond, coupling=coupling, proactive=k, **kw)
            assert torch.equal(out.tokens, ref.tokens) and out.nfe == ref.nfe, (coupling, k)


def test_multi_draft_test_is_exact_by_enumeration():
    """The multi-draft test of the first open position, enumerated: with the draft drawn from q and the other
    candidates drawn from q without replacement, the token's law is p (and it is not with a biased ratio)."""
    torch.manual_seed(0)
    v, k = 4, 3
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    law = torch.zeros(v, dtype=torch.float64)
    for cand in torch.cartesian_prod(*[torch.arange(v)] * k):
        if len(set(cand.tolist())) < k:
            continue
        prob, left = 1.0, q[0].clone()  # probability of this ordered draw without replacement
        for c in cand.tolist():
            prob, left = prob * float(left[c] / left.sum()), left.index_fill(0, torch.tensor([c]), 0.0)
        # integrate the uniforms: each candidate's test is passed with probability min(1, ratio)
        target, left, reach = p[0], q[0].clone(), 1.0
        for c in cand.tolist():
            qj = left / left.sum()
            accept = min(1.0, float(target[c] / qj[c]))
            law[c] += prob * reach * accept
            reach *= 1 - accept
            target = jacobi._residual(target[None], qj[None])[0]
            left = left.index_fill(0, torch.tensor([c]), 0.0)
        law += prob * reach * target
    torch.testing.assert_close(law, p[0], atol=1e-12, rtol=0)
    # and the implementation draws from it: 40,000 tests of one fixed candidate triple per row
    m = 40_000
    cand = torch.tensor([[3, 1, 0]]).expand(m, -1)
    g = torch.Generator().manual_seed(0)
    winner, hit, token = jacobi._multi_draft(p.float().expand(m, -1), q.float().expand(m, -1), cand,
                                             torch.rand(m, k, generator=g), SamplingArgs(), g)
    assert bool((token == cand.gather(1, winner[:, None])[:, 0])[hit].all())
    # its own exact law for these candidates, enumerated the same way
    target, left, reach, want = p[0], q[0].clone(), 1.0, torch.zeros(v, dtype=torch.float64)
    for c in [3, 1, 0]:
        qj = left / left.sum()
        accept = min(1.0, float(target[c] / qj[c]))
        want[c] += reach * accept
        reach *= 1 - accept
        target, left = jacobi._residual(target[None], qj[None])[0], left.index_fill(0, torch.tensor([c]), 0.0)
    want += reach * target
    freq = torch.bincount(token, minlength=v).double() / m
    assert float((freq - want).abs().max()) < 0.015, (freq, want)


def test_bad_mcsjd_options():
    gen, cond = _ar(), _cond(False, b=1)
    with pytest.raises(ValueError, match="coupling must be one of"):
        generate(gen, cond, decoder="mcsjd", coupling="exact")
    for k in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="proactive must be an int >= 1"):
            generate(gen, cond, decoder="mcsjd", proactive=k)
    with pytest.raises(ValueError, match=r"proactive must be <= vocab_size \(64\)"):
        generate(gen, cond, decoder="mcsjd", proactive=65)
    for name in ("sjd", "lantern"):
        with pytest.raises(ValueError, match=r"unknown option\(s\) \['proactive'\]"):
            generate(gen, cond, decoder=name, proactive=2)
    with pytest.raises(ValueError, match="'gsd': proactive drafting needs coupled drafts"):
        generate(gen, cond, decoder="gsd", proactive=2)


# ------------------------------------------------------------------------------------------------------------
# relaxed rules
# ------------------------------------------------------------------------------------------------------------
def test_relaxed_rules_reduce_to_sjd():
    gen, cond = _ar(), _cond(False)
    kw = dict(cfg_scale=2.0, top_k=20, window=5, seed=3)
    sjd = generate(gen, cond, decoder="sjd", **kw)
    gsd = generate(gen, cond, decoder="gsd", group_rank=0, **kw)
    lantern = generate(gen, cond, decoder="lantern", delta=0.0, **kw)
    assert torch.equal(gsd.tokens, sjd.tokens) and torch.equal(lantern.tokens, sjd.tokens)
    assert sjd.extras["lossless"] and gsd.extras["lossless"]
    assert not generate(gen, cond, decoder="gsd", **kw).extras["lossless"]
    assert not generate(gen, cond, decoder="lantern", **kw).extras["lossless"]


def test_coupled_gsd_reduces_to_mcsjd_and_differs_from_sjd_drafts():
    gen, cond = _ar(), _cond(False)
    kw = dict(cfg_scale=2.0, top_k=20, window=5, seed=3)
    mcsjd = generate(gen, cond, decoder="mcsjd", **kw)
    coupled0 = generate(gen, cond, decoder="gsd", group_rank=0, coupled=True, **kw)
    assert torch.equal(coupled0.tokens, mcsjd.tokens) and coupled0.nfe == mcsjd.nfe
    assert coupled0.extras["accepted_hist"] == mcsjd.extras["accepted_hist"]
    plain, coupled = (generate(gen, cond, decoder="gsd", coupled=c, **kw) for c in (False, True))
    assert not torch.equal(plain.tokens, coupled.tokens)
    with pytest.raises(ValueError, match="coupled must be True or False"):
        generate(gen, cond, decoder="gsd", coupled="yes")
    # proactive drafting under the group rule: group_rank=0 is mcsjd's proactive drafting, token for token
    pro = generate(gen, cond, decoder="mcsjd", proactive=3, **kw)
    pro0 = generate(gen, cond, decoder="gsd", group_rank=0, coupled=True, proactive=3, **kw)
    assert torch.equal(pro0.tokens, pro.tokens) and pro0.extras["accepted_hist"] == pro.extras["accepted_hist"]
    relaxed = generate(gen, cond, decoder="gsd", coupled=True, proactive=3, **kw)
    assert relaxed.extras["positions_per_pass"] == 3 * 5 and not relaxed.extras["lossless"]
    # the Gumbel coupling under the group rule: group_rank=0 is mcsjd's Gumbel coupling, with and without proactive
    for k in (1, 3):
        exact = generate(gen, cond, decoder="mcsjd", coupling="gumbel", proactive=k, **kw)
        grouped0 = generate(gen, cond, decoder="gsd", group_rank=0, coupled=True, coupling="gumbel", proactive=k, **kw)
        assert torch.equal(grouped0.tokens, exact.tokens) and grouped0.nfe == exact.nfe
        grouped = generate(gen, cond, decoder="gsd", group_rank=20, p_thr=1.0, d_thr=1e9, coupled=True,
                           coupling="gumbel", proactive=k, **kw)
        assert not grouped.extras["lossless"] and not torch.equal(grouped.tokens, exact.tokens)
        if k == 1:  # (with proactive drafting the first open position keeps the exact test, where most runs end here)
            assert grouped.nfe < exact.nfe
    with pytest.raises(ValueError, match="coupling must be one of"):
        generate(gen, cond, decoder="gsd", coupled=True, coupling="exact")
    with pytest.raises(ValueError, match="pass coupled=True with it"):
        generate(gen, cond, decoder="gsd", coupling="gumbel")


def test_gsd_group_candidates():
    """``group_candidates``: at group_rank=0 it changes nothing (mcsjd's Gumbel proactive drafting, token for token);
    with a wide group a candidate near the Gumbel token wins the first open position, so runs get longer."""
    torch.manual_seed(0)
    v = 16
    stub = Stub(2.0 * torch.randn(1, v, v), torch.zeros(1, v), 48)
    cond = Conditioning(labels=torch.zeros(100, dtype=torch.long))
    kw = dict(decoder="gsd", window=16, seed=0, coupled=True, coupling="gumbel")
    for k in (3, (3, 2)):
        exact = generate(stub, cond, decoder="mcsjd", window=16, seed=0, coupling="gumbel", proactive=k)
        same = generate(stub, cond, proactive=k, group_rank=0, group_candidates=True, **kw)
        assert torch.equal(same.tokens, exact.tokens) and same.nfe == exact.nfe
        wide = dict(group_rank=3, p_thr=1.0, d_thr=1e9, proactive=k)
        tree_exact = generate(stub, cond, **wide, **kw)
        tree_group = generate(stub, cond, **wide, group_candidates=True, **kw)
        assert tree_group.extras["mean_accepted"] > 1.05 * tree_exact.extras["mean_accepted"], k
    gen, cond = _ar(), _cond(False)
    with pytest.raises(ValueError, match="group_candidates=True applies to the Gumbel coupling"):
        generate(gen, cond, decoder="gsd", coupled=True, proactive=2, group_candidates=True)
    with pytest.raises(ValueError, match="group_candidates must be True or False"):
        generate(gen, cond, decoder="gsd", coupled=True, coupling="gumbel", group_candidates=1)


def test_gsd_match_is_the_group_of_the_gumbel_token():
    from vistok.decoding.grouped import gsd_match

    p = torch.tensor([[[0.40, 0.30, 0.20, 0.05, 0.05]]])  # ranks 0..4; ids 3 and 4 tie (3 first)
    made = torch.tensor([[0]])
    kw = dict(p_thr=0.15, d_thr=0.5, embeddings=None)
    members = [bool(gsd_match(p, torch.tensor([[x]]), made, group_rank=2, **kw)) for x in range(5)]
    assert members == [True, True, False, False, False]  # id 2: rank 2 but |0.2 - 0.4| >= p_thr
    loose = dict(kw, p_thr=1.0)
    assert [bool(gsd_match(p, torch.tensor([[x]]), made, group_rank=2, **loose)) for x in range(5)] == [
        True, True, True, False, False]
    tie = torch.tensor([[3]])  # equal probabilities are still distinct ranks: group_rank=0 matches only itself
    assert not gsd_match(p, torch.tensor([[4]]), tie, group_rank=0, **loose)
    assert gsd_match(p, torch.tensor([[4]]), tie, group_rank=1, **loose)
    emb = torch.tensor([[0.0], [5.0], [0.1], [0.0], [0.0]])  # id 1 is far from id 0 in embedding space
    near = [bool(gsd_match(p, torch.tensor([[x]]), made, group_rank=2, **dict(loose, embeddings=emb)))
            for x in range(5)]
    assert near == [True, False, True, False, False]


def test_relaxed_rules_accept_more():
    gen, cond = _ar(), Conditioning(labels=torch.zeros(16, dtype=torch.long))
    torch.nn.init.normal_(gen.output.weight, std=0.1)
    kw = dict(window=8, seed=0)
    sjd = generate(gen, cond, decoder="sjd", **kw).extras["mean_accepted"]
    gsd = generate(gen, cond, decoder="gsd", p_thr=1.0, d_thr=1e3, **kw).extras["mean_accepted"]
    lantern = generate(gen, cond, decoder="lantern", latents=torch.randn(64, 4), delta=0.3, **kw)
    assert gsd > sjd and lantern.extras["mean_accepted"] > sjd


def test_gsd_group_definition():
    p = torch.tensor([[[0.40, 0.30, 0.20, 0.06, 0.04]]])
    q = torch.tensor([[[0.05, 0.05, 0.10, 0.40, 0.40]]])
    x = torch.tensor([[3]])  # rank 3 in p
    # +-1 rank: tokens 2, 3, 4; |p - p(x)| < 0.15 keeps 2 (0.14), 3, 4
    r = gsd_ratio(p, q, x, group_rank=1, p_thr=0.15, d_thr=1.0, embeddings=None)
    assert r.item() == pytest.approx((0.20 + 0.06 + 0.04) / (0.10 + 0.40 + 0.40))
    # the probability filter drops token 2 (|0.20 - 0.06| = 0.14 >= 0.1)
    r = gsd_ratio(p, q, x, group_rank=1, p_thr=0.1, d_thr=1.0, embeddings=None)
    assert r.item() == pytest.approx(0.10 / 0.80)
    # the embedding filter drops token 4 (far away), the draft itself always stays
    emb = torch.tensor([[0.0], [0.0], [0.1], [0.0], [5.0]])
    r = gsd_ratio(p, q, x, group_rank=1, p_thr=0.15, d_thr=0.5, embeddings=emb)
    assert r.item() == pytest.approx((0.20 + 0.06) / (0.10 + 0.40))
    assert gsd_ratio(p, q, x, group_rank=0, p_thr=0.15, d_thr=0.5, embeddings=emb).item() == pytest.approx(0.15)


def test_lantern_neighbour_mass():
    latents = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    nb = lantern_neighbours(latents, k=10)
    assert nb.shape == (4, 3) and nb[0].tolist() == [1, 2, 3] and nb[2].tolist() == [1, 3, 0]
    p = torch.tensor([[[0.1, 0.05, 0.05, 0.8]]])
    q = torch.tensor([[[0.5, 0.2, 0.2, 0.1]]])
    x = torch.tensor([[0]])
    # neighbours of 0 in distance order: 1 (0.05), 2 (cum 0.10), 3 (cum 0.90)
    assert lantern_ratio(p, q, x, neighbours=nb, delta=0.1).item() == pytest.approx((0.1 + 0.1) / 0.5)
    assert lantern_ratio(p, q, x, neighbours=nb, delta=0.07).item() == pytest.approx((0.1 + 0.05) / 0.5)
    assert lantern_ratio(p, q, x, neighbours=nb, delta=0.0).item() == pytest.approx(0.1 / 0.5)


# ------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["sjd", "mcsjd", "gsd", "lantern"])
def test_bad_input(decoder):
    gen, cond = _ar(), _cond(False, b=1)
    for window in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="window must be an int >= 1"):
            generate(gen, cond, decoder=decoder, window=window)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['windw'\]; it takes window="):
        generate(gen, cond, decoder=decoder, windw=4)
    with pytest.raises(ValueError, match="init must be one of"):
        generate(gen, cond, decoder=decoder, init="zeros")

    class NonCausal(Stub):
        is_causal = False

    class Continuous(Stub):
        kind = "continuous"

    for cls, match in [(NonCausal, "is_causal=True.*use its own decoder.*'ar'"),
                       (Continuous, "continuous.*decoder='csd'")]:
        bad = cls(torch.zeros(1, 8, 8), torch.zeros(1, 8), 4)
        with pytest.raises(ValueError, match=match):
            generate(bad, Conditioning(labels=torch.zeros(1, dtype=torch.long)), decoder=decoder)


def test_bad_relaxed_options():
    gen, cond = _ar(), _cond(False, b=1)
    with pytest.raises(ValueError, match="group_rank"):
        decode_gsd(gen, cond, SamplingArgs(), group_rank=-1)
    with pytest.raises(ValueError, match="p_thr and d_thr"):
        generate(gen, cond, decoder="gsd", p_thr=0.0)
    with pytest.raises(ValueError, match=r"embeddings must be a \(64, D\)"):
        generate(gen, cond, decoder="gsd", embeddings=torch.zeros(10, 4))
    with pytest.raises(ValueError, match=r"latents must be a \(64, D\)"):
        generate(gen, cond, decoder="lantern", latents=torch.zeros(64))
    with pytest.raises(ValueError, match="delta"):
        generate(gen, cond, decoder="lantern", delta=-0.1)
    stub = _stub(_chain, v=8, n=4)
    with pytest.raises(ValueError, match="lantern needs latents"):
        generate(stub, Conditioning(labels=torch.zeros(1, dtype=torch.long)), decoder="lantern")
