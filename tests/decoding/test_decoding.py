import pytest
import torch
from conftest import tiny_ar

from vistok.decoding import SamplingArgs, generate
from vistok.decoding.sampling import top_k_filter, top_p_filter
from vistok.interfaces import Conditioning


def _gen(**kw):
    gen = tiny_ar(num_classes=4, **kw).eval()
    torch.nn.init.normal_(gen.output.weight, std=0.5)
    return gen


def test_generate_shapes_nfe_and_seed():
    gen = _gen()
    cond = Conditioning(labels=torch.tensor([0, 1]))
    a = generate(gen, cond, num_samples=3, seed=0, top_k=10, cfg_scale=2.0)
    b = generate(gen, cond, num_samples=3, seed=0, top_k=10, cfg_scale=2.0)
    c = generate(gen, cond, num_samples=3, seed=1, top_k=10, cfg_scale=2.0)
    assert a.tokens.shape == (6, 8) and a.nfe == 8
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(gen, cond, num_samples=3, seed=g, top_k=10, cfg_scale=2.0).tokens, a.tokens)


def test_greedy_is_argmax_of_teacher_forced_logits():
    gen = _gen()
    cond = Conditioning(labels=torch.tensor([2]))
    out = generate(gen, cond, temperature=0.0)
    logits = gen(out.tokens, cond).logits
    assert torch.equal(logits.argmax(-1), out.tokens)


def test_cfg_mixes_logits():
    gen = _gen()
    cond = Conditioning(labels=torch.tensor([1]))
    out = generate(gen, cond, temperature=0.0, cfg_scale=3.0)
    c = gen(out.tokens, cond).logits
    u = gen(out.tokens, cond.null()).logits
    assert torch.equal((u + 3.0 * (c - u)).argmax(-1), out.tokens)


def test_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[True, False, False, True]]
    probs = logits.softmax(-1)  # [0.087, 0.644, 0.237, 0.032]
    assert torch.isinf(top_p_filter(logits, 0.6)).tolist() == [[True, False, True, True]]
    assert torch.isinf(top_p_filter(logits, 0.7)).tolist() == [[True, False, False, True]]
    assert probs.sum() == pytest.approx(1.0)
    s = SamplingArgs(temperature=0.5, top_k=2)
    p = s.probs(logits)
    assert p[0, 0] == 0 and p[0, 3] == 0 and p[0, 1] > 0.8


def test_top_k_samples_stay_in_top_k():
    gen = _gen()
    cond = Conditioning(labels=torch.zeros(64, dtype=torch.long))
    out = generate(gen, cond, top_k=1, seed=0)
    greedy = generate(gen, cond, temperature=0.0)
    assert torch.equal(out.tokens, greedy.tokens)


def test_bad_arguments():
    gen = _gen()
    cond = Conditioning(labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="unknown decoder 'nope'; available"):
        generate(gen, cond, decoder="nope")
    with pytest.raises(ValueError, match="temperature"):
        generate(gen, cond, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        generate(gen, cond, top_p=1.5)
    with pytest.raises(ValueError, match="num_samples"):
        generate(gen, cond, num_samples=0)
    with pytest.raises(ValueError, match="null condition"):
        generate(tiny_ar(), Conditioning(batch=1), cfg_scale=2.0)


def test_generate_takes_a_torch_generator_by_keyword():
    gen = tiny_ar(num_classes=2).eval()
    cond = Conditioning(labels=torch.tensor([0, 1]))
    a = generate(gen, cond, generator=torch.Generator().manual_seed(3))
    b = generate(gen, cond, seed=torch.Generator().manual_seed(3))
    assert torch.equal(a.tokens, b.tokens)
    with pytest.raises(ValueError, match="not both"):
        generate(gen, cond, seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match="positional"):
        generate(gen, cond, generator=gen)
