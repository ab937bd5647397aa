"""Diffusion step annealing (DiSA): per-step head / flow step counts for MAR (masked and causal) and xAR (cells)."""

import pytest
import torch

from vistok.decoding import generate
from vistok.decoding.sampling import annealed_steps
from vistok.generators import MARARGenerator, MARGenerator, XARGenerator
from vistok.interfaces import Conditioning

HEAD = dict(head_width=32, head_depth=1, num_sampling_steps=6, num_classes=5)
MAR = dict(token_dim=4, seq_len=8, encoder_width=32, encoder_depth=1, encoder_heads=2, decoder_width=32,
           decoder_depth=1, decoder_heads=2, buffer_size=4, **HEAD)
MAR_AR = dict(token_dim=4, seq_len=6, width=32, depth=1, num_heads=2, **HEAD)
XAR = dict(grid_size=4, cell_size=2, token_dim=4, width=32, depth=1, decoder_depth=1, num_heads=2, num_classes=5)
COND = Conditioning(labels=torch.tensor([0, 3]))


def _model(cls, kw):
    torch.manual_seed(0)
    return cls(**kw).eval()


def test_annealed_steps_is_linear_from_first_to_last():
    assert annealed_steps((50, 5), 100, 4) == [50, 35, 20, 5]
    assert annealed_steps((50, 15), 40, 1) == [50]
    assert annealed_steps(None, 40, 3) == [40, 40, 40]
    assert annealed_steps("disa_xar", 40, 3) == [50, 32, 15]
    for bad in [(50,), (0, 5), (50, 2.5), "fast", (True, 5)]:
        with pytest.raises(ValueError, match="step_schedule"):
            annealed_steps(bad, 40, 3)


def test_masked_head_gets_the_annealed_steps(monkeypatch):
    gen = _model(MARGenerator, MAR)
    calls = []
    sample = type(gen.head).sample

    def spy(self, z, **kw):
        calls.append(kw["num_steps"])
        return sample(self, z, **kw)

    monkeypatch.setattr(type(gen.head), "sample", spy)
    out = generate(gen, COND, decoder="masked", num_iter=4, cfg_scale=2.0, seed=0, step_schedule=(6, 2))
    assert calls == [6, 5, 3, 2] and out.extras["head_steps"] == [6, 5, 3, 2]
    assert out.extras["head_nfe"] == 2 * sum(calls)  # guided: conditional and null rows each step


def test_masked_head_sampler_per_call():
    """``head_sampler=`` picks the DiffLoss sampler for one call: the same as a head built with it, any step count
    for DPM-Solver++, DDIM's divisibility rule still checked, unknown names refused."""
    gen = _model(MARGenerator, MAR)
    dpm = generate(gen, COND, decoder="masked", num_iter=4, cfg_scale=2.0, seed=0, head_sampler="dpm",
                   step_schedule=(7, 3)).tokens
    ddpm = generate(gen, COND, decoder="masked", num_iter=4, cfg_scale=2.0, seed=0, step_schedule=(7, 3)).tokens
    assert not torch.allclose(dpm, ddpm)
    gen.head.sampler = "dpm"
    built = generate(gen, COND, decoder="masked", num_iter=4, cfg_scale=2.0, seed=0, step_schedule=(7, 3)).tokens
    assert torch.equal(built, dpm)
    gen.head.sampler = "ddpm"
    with pytest.raises(ValueError, match="divide"):
        generate(gen, COND, decoder="masked", num_iter=4, seed=0, head_sampler="ddim", step_schedule=(7, 3))
    with pytest.raises(ValueError, match="sampler"):
        generate(gen, COND, decoder="masked", num_iter=4, seed=0, head_sampler="euler")


@pytest.mark.parametrize("decoder", ["masked", "ar"])
def test_constant_schedule_equals_the_heads_own_steps(decoder):
    """(s, s) must reproduce the plain sampler with ``num_sampling_steps = s`` draw for draw."""
    gen = _model(MARGenerator if decoder == "masked" else MARARGenerator, MAR if decoder == "masked" else MAR_AR)
    kw = dict(num_iter=4) if decoder == "masked" else {}
    plain = generate(gen, COND, decoder=decoder, cfg_scale=1.5, seed=3, **kw).tokens
    same = generate(gen, COND, decoder=decoder, cfg_scale=1.5, seed=3, step_schedule=(6, 6), **kw).tokens
    fewer = generate(gen, COND, decoder=decoder, cfg_scale=1.5, seed=3, step_schedule=(6, 2), **kw).tokens
    assert torch.equal(plain, same)
    assert not torch.allclose(plain, fewer)


def test_causal_mar_reports_steps_per_position():
    gen = _model(MARARGenerator, MAR_AR)
    out = generate(gen, COND, decoder="ar", seed=0, step_schedule=(6, 1))
    assert out.extras["head_steps"] == [6, 5, 4, 3, 2, 1] and out.tokens.shape == (2, 6, 4)


def test_cells_anneal_flow_steps():
    gen = _model(XARGenerator, XAR)
    plain = generate(gen, COND, decoder="cells", num_steps=5, cfg_scale=2.0, seed=1)
    same = generate(gen, COND, decoder="cells", cfg_scale=2.0, seed=1, step_schedule=(5, 5))
    annealed = generate(gen, COND, decoder="cells", cfg_scale=2.0, seed=1, step_schedule=(8, 2))
    assert torch.equal(plain.tokens, same.tokens)
    assert annealed.extras["steps"] == [8, 6, 4, 2] and annealed.nfe == 20 and plain.nfe == 20
    assert torch.isfinite(annealed.tokens).all()


def test_bad_step_counts():
    gen = _model(MARGenerator, MAR)
    with pytest.raises(ValueError, match="num_sampling_steps"):
        gen.head.sample(torch.randn(2, gen.head.cond_proj.in_features), num_steps=0)
    with pytest.raises(ValueError, match="step_schedule"):
        generate(gen, COND, decoder="masked", num_iter=4, step_schedule=(6,))
