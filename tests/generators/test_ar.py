import pytest
import torch
from conftest import tiny_ar

from vistok.interfaces import Conditioning


def _cond(gen, b=2):
    if gen.num_classes:
        return Conditioning(labels=torch.arange(b) % gen.num_classes)
    if gen.text_dim:
        mask = torch.ones(b, 5, dtype=torch.bool)
        mask[0, 3:] = False
        return Conditioning(text=torch.randn(b, 5, gen.text_dim), text_mask=mask)
    return Conditioning(batch=b)


@pytest.mark.parametrize("kw", [dict(num_classes=10), dict(text_dim=12, max_text_len=6), dict()])
def test_stepwise_decoding_matches_teacher_forcing(kw):
    gen = tiny_ar(**kw).eval()
    torch.nn.init.normal_(gen.output.weight)
    cond = _cond(gen)
    tokens = torch.randint(0, 64, (2, 8))
    full = gen(tokens, cond).logits
    cache = gen.new_cache(cond)
    prev = torch.zeros(2, 1, dtype=torch.long)
    steps = []
    for p in range(8):
        steps.append(gen.step(prev, torch.full((2, 1), p), cache)[:, 0])
        prev = tokens[:, p : p + 1]
    assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)
    # a window of positions with per-sample offsets gives the same predictions
    cache = gen.new_cache(cond)
    gen.step(torch.nn.functional.pad(tokens[:, :2], (1, 0)), torch.arange(3).expand(2, -1), cache)
    win = gen.step(tokens[:, 2:6], torch.arange(3, 7).expand(2, -1), cache)
    assert torch.allclose(win, full[:, 3:7], atol=1e-5)


def test_text_padding_and_null_condition_are_masked():
    gen = tiny_ar(text_dim=12, max_text_len=6).eval()
    torch.nn.init.normal_(gen.output.weight)
    tokens = torch.randint(0, 64, (1, 8))
    text = torch.randn(1, 3, 12)
    a = gen(tokens, Conditioning(text=text)).logits
    padded = torch.cat([text, torch.randn(1, 2, 12)], 1)
    mask = torch.tensor([[True, True, True, False, False]])
    b = gen(tokens, Conditioning(text=padded, text_mask=mask)).logits
    assert torch.allclose(a, b, atol=1e-5)  # padded text states are invisible
    n1 = gen(tokens, Conditioning(text=text).null()).logits
    n2 = gen(tokens, Conditioning(text=torch.randn(1, 4, 12)).null()).logits
    assert torch.allclose(n1, n2, atol=1e-5)  # the null condition ignores the text


def test_condition_dropout_in_training():
    gen = tiny_ar(num_classes=10, cond_dropout=0.5)
    dropped = gen.drop_condition(Conditioning(labels=torch.zeros(1000, dtype=torch.long)))
    frac = (dropped.labels == -1).float().mean()
    assert 0.4 < frac < 0.6


def test_bad_inputs():
    gen = tiny_ar(num_classes=10)
    with pytest.raises(TypeError, match="continuous"):
        gen(torch.rand(2, 8, 4), Conditioning(labels=torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        gen(torch.zeros(2, 5, dtype=torch.long), Conditioning(labels=torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="class-conditional"):
        gen(torch.zeros(2, 8, dtype=torch.long), Conditioning(text=torch.randn(2, 3, 4)))
    with pytest.raises(ValueError, match=r"\[0, 63\]"):
        gen(torch.full((2, 8), 99), Conditioning(labels=torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match="labels must be in"):
        gen(torch.zeros(2, 8, dtype=torch.long), Conditioning(labels=torch.full((2,), 10)))
