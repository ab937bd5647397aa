"""Forced prefixes (frame prediction): every causal decoder keeps the prefix and samples the rest from the exact
conditional law given it (chi-square against the enumerated law, with broken controls that must fail)."""

import pytest
import torch
from conftest import tiny_ar
from exactness import PrefixTable, joint_pvalue

from vistok.decoding import ForcedPrefix, generate, jacobi
from vistok.interfaces import Conditioning

ALPHA = 1e-3
SETTING = dict(cfg_scale=2.0, temperature=1.3, top_k=2)
PREFIX = [2, 0]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def table():
    return PrefixTable.random(3, 5, scale=1.0, sticky=1.5)


@pytest.fixture(scope="module")
def laws(table):
    """Exact law of the last 3 tokens given the prefix, and their law without it (the marginal)."""
    law = table.law(1, **SETTING).view(3, 3, 27)
    given = law[PREFIX[0], PREFIX[1]]
    return given / given.sum(), law.sum((0, 1))


def samples(table, decoder: str, m: int, **kw):
    cond = Conditioning(labels=torch.tensor([1]))
    return generate(table, cond, decoder=decoder, num_samples=m, seed=3, prefix=torch.tensor([PREFIX]), **SETTING,
                    **kw)


def test_the_prefix_changes_the_law(laws):
    given, marginal = laws
    assert float((given - marginal).abs().sum()) > 0.2  # else the tests below could not tell them apart


@pytest.mark.parametrize("decoder,kw", [("ar", {}), ("sjd", dict(window=4)), ("mcsjd", dict(window=4)),
                                        ("mcsjd", dict(window=5, init="repeat"))])
def test_decoders_sample_the_conditional_law_given_the_prefix(table, laws, decoder, kw):
    out = samples(table, decoder, 40_000, **kw)
    assert (out.tokens[:, :2] == torch.tensor(PREFIX)).all()
    given, marginal = laws
    assert joint_pvalue(out.tokens[:, 2:], given) >= ALPHA
    assert joint_pvalue(out.tokens[:, 2:], marginal) < ALPHA  # control: the law that ignores the prefix fails


def test_a_biased_acceptance_rule_fails_with_a_prefix_too(table, laws, monkeypatch):
    real = jacobi.accept_ratio
    monkeypatch.setattr(jacobi, "accept_ratio", lambda *a: 1.1 * real(*a))
    out = samples(table, "mcsjd", 40_000, window=4)
    assert joint_pvalue(out.tokens[:, 2:], laws[0]) < ALPHA


def test_network_prefix_rows_per_condition_and_greedy_agreement():
    gen = tiny_ar(num_classes=4).eval()
    torch.nn.init.normal_(gen.output.weight, std=0.5)
    cond = Conditioning(labels=torch.tensor([0, 1, 3]))
    prefix = torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 13]])
    for decoder, kw in (("ar", {}), ("sjd", dict(window=4)), ("mcsjd", dict(window=8))):
        out = generate(gen, cond, decoder=decoder, num_samples=2, seed=0, prefix=prefix, cfg_scale=2.0, **kw)
        assert torch.equal(out.tokens[:, :3], prefix.repeat_interleave(2, 0)), decoder
    greedy = [generate(gen, cond, decoder=d, temperature=0.0, prefix=prefix, **kw).tokens
              for d, kw in (("ar", {}), ("mcsjd", dict(window=8)))]
    assert torch.equal(*greedy)
    free = generate(gen, cond, decoder="ar", temperature=0.0).tokens
    assert not torch.equal(free[:, :3], prefix)
    # the whole sequence given: nothing left to sample
    full = torch.randint(0, 64, (3, 8))
    assert torch.equal(generate(gen, cond, decoder="mcsjd", window=8, prefix=full).tokens, full)


def test_bad_prefixes_raise():
    gen = tiny_ar(num_classes=4).eval()
    cond = Conditioning(labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="one row per condition"):
        generate(gen, cond, prefix=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="one row per condition"):
        generate(gen, cond, prefix=torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        generate(gen, cond, prefix=torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\[0, 63\]"):
        generate(gen, cond, prefix=torch.full((2, 2), 64))
    with pytest.raises(ValueError, match=r"prefix length must be in \[1, 8\]"):
        generate(gen, cond, prefix=torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="causal generator"):
        masked = type("Masked", (), {"kind": "discrete", "is_causal": False})()
        ForcedPrefix(masked, torch.zeros(1, 1, dtype=torch.long))
