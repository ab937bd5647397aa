"""MAR (masked, bidirectional), its causal AR+DiffLoss variant, the DiffLoss head and masked decoding: tiny models."""

import math

import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler
from torch import Tensor

import vistok
from vistok.decoding import generate
from vistok.decoding.masked import mask_schedule, sample_masked
from vistok.generators.heads import DiffLossHead, _mar_respacing
from vistok.generators.mar import (
    MAR_AR_PRESETS,
    MAR_PRESETS,
    MARARGenerator,
    MARGenerator,
    grid_rope,
    grid_sincos,
    patchify,
    unpatchify,
)
from vistok.hub import from_pretrained, save_pretrained
from vistok.interfaces import Conditioning, Generator

HEAD = dict(head_width=32, head_depth=2, num_sampling_steps=5)
TINY_MAR = dict(token_dim=4, seq_len=8, encoder_width=32, encoder_depth=1, encoder_heads=2, decoder_width=32,
                decoder_depth=1, decoder_heads=2, buffer_size=6, max_text_len=6, attn_dropout=0.0, proj_dropout=0.0,
                **HEAD)
TINY_AR = dict(token_dim=4, seq_len=8, width=32, depth=2, num_heads=2, max_text_len=6, attn_dropout=0.0,
               proj_dropout=0.0, **HEAD)


def tiny_mar(**kw):
    return MARGenerator(**{**TINY_MAR, "num_classes": 5, **kw})


def tiny_mar_ar(**kw):
    return MARARGenerator(**{**TINY_AR, "num_classes": 5, **kw})


def _randomize(model):
    """Non-zero weights everywhere (the head's output layers start at zero)."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, total, head", [("mar_b", 207.9e6, 35.7e6), ("mar_l", 479e6, None),
                                               ("mar_h", 943e6, None)])
def test_preset_parameter_counts_match_official(name, total, head):
    with torch.device("meta"):
        model = vistok.create_generator(name)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / total - 1) < 0.005, (name, n)
    if head is not None:
        assert abs(sum(p.numel() for p in model.head.parameters()) / head - 1) < 0.005


def test_presets_registered():
    names = vistok.list_generators()
    assert set(MAR_PRESETS) | set(MAR_AR_PRESETS) <= set(names)


# --------------------------------------------------------------------------------------------------------------
# The generators
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [tiny_mar, tiny_mar_ar, lambda: tiny_mar(num_classes=0, text_dim=12),
                                   lambda: tiny_mar_ar(num_classes=0, text_dim=12), lambda: tiny_mar(num_classes=0),
                                   lambda: tiny_mar(num_classes=0, text_dim=12, decoder_cond=True,
                                                    mask_ratio_dist="cosine", mask_ratio_min=0.05),
                                   lambda: tiny_mar(pos_grid=(2, 4), pos_init="sincos", rope=True)])
def test_contract_forward_backward_step(build):
    gen = build()
    assert isinstance(gen, Generator) and gen.kind == "continuous" and gen.vocab_size is None
    b = 3
    if gen.num_classes:
        cond = Conditioning(labels=torch.tensor([0, 4, -1]))
    elif gen.text_dim:
        cond = Conditioning(text=torch.randn(b, 5, gen.text_dim), text_mask=torch.rand(b, 5) > 0.3)
    else:
        cond = Conditioning(batch=b)
    tokens = torch.randn(b, gen.seq_len, gen.token_dim)
    out = gen.train()(tokens, cond)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    gen.eval()
    if gen.is_causal:
        z = gen.step(tokens[:, :4], torch.arange(4).expand(b, -1), gen.new_cache(cond))
    else:
        z = gen.predict(tokens, torch.rand(b, gen.seq_len) > 0.5, cond)[:, :4]
    assert z.shape == (b, 4, gen.head.cond_dim)
    assert gen.head.sample(z.flatten(0, 1)).shape == (b * 4, gen.token_dim)


def test_ragged_masks_equal_per_row_dropping():
    """Rows with different numbers of known tokens (padded + attention-masked) = each row encoded alone."""
    gen = _randomize(tiny_mar())
    tokens = torch.randn(3, 8, 4)
    mask = torch.tensor([[1, 1, 0, 1, 0, 0, 1, 1], [1] * 8, [0, 0, 0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    cond = Conditioning(labels=torch.tensor([1, 2, 3]))
    together = gen.predict(tokens, mask, cond)
    for i in range(3):
        alone = gen.predict(tokens[i : i + 1], mask[i : i + 1], Conditioning(labels=cond.labels[i : i + 1]))
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_masked_tokens_are_ignored():
    gen = _randomize(tiny_mar())
    tokens, mask = torch.randn(2, 8, 4), torch.rand(2, 8) > 0.5
    cond = Conditioning(labels=torch.tensor([0, 1]))
    z = gen.predict(tokens, mask, cond)
    torch.testing.assert_close(gen.predict(torch.where(mask[..., None], 9.0, tokens), mask, cond), z)
    assert not torch.allclose(gen.predict(tokens + 1, mask, cond), z)


def test_mar_ar_incremental_equals_teacher_forced_and_rolls_back():
    gen = _randomize(tiny_mar_ar())
    tokens, cond = torch.randn(2, 8, 4), Conditioning(labels=torch.tensor([1, 2]))
    inputs = torch.nn.functional.pad(tokens[:, :-1], (0, 0, 1, 0))
    full = gen.step(inputs, torch.arange(8).expand(2, -1), gen.new_cache(cond))
    cache = gen.new_cache(cond)
    parts = [gen.step(inputs[:, p : p + 1], torch.full((2, 1), p), cache) for p in range(8)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    cache.truncate(3)  # roll back and redo positions 3.. with other drafts, then the true ones
    gen.step(torch.randn(2, 2, 4), torch.arange(3, 5).expand(2, -1), cache)
    cache.truncate(3)
    torch.testing.assert_close(gen.step(inputs[:, 3:], torch.arange(3, 8).expand(2, -1), cache), full[:, 3:],
                               atol=1e-5, rtol=1e-5)


def test_mar_ar_is_causal():
    gen = _randomize(tiny_mar_ar())
    tokens, cond = torch.randn(1, 8, 4), Conditioning(labels=torch.tensor([0]))
    inputs = torch.nn.functional.pad(tokens[:, :-1], (0, 0, 1, 0))
    z = gen.step(inputs, torch.arange(8)[None], gen.new_cache(cond))
    changed = tokens.clone()
    changed[:, 4] += 1  # token 4 is the input of position 5
    z2 = gen.step(torch.nn.functional.pad(changed[:, :-1], (0, 0, 1, 0)), torch.arange(8)[None], gen.new_cache(cond))
    torch.testing.assert_close(z2[:, :5], z[:, :5])
    assert not torch.allclose(z2[:, 5:], z[:, 5:])


def test_text_padding_is_ignored_and_empty_text_is_null():
    for gen in (_randomize(tiny_mar(num_classes=0, text_dim=12)), _randomize(tiny_mar_ar(num_classes=0, text_dim=12))):
        text, keep = torch.randn(2, 5, 12), torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
        tokens = torch.randn(2, 8, 4)
        if gen.is_causal:
            run = lambda c, gen=gen, tokens=tokens: gen.step(tokens[:, :3], torch.arange(3).expand(2, -1),
                                                              gen.new_cache(c))
        else:
            run = lambda c, gen=gen, tokens=tokens: gen.predict(tokens, torch.arange(8).expand(2, -1) >= 3, c)
        z = run(Conditioning(text=text, text_mask=keep))
        torch.testing.assert_close(run(Conditioning(text=torch.where(keep[..., None], text, 5.0), text_mask=keep)), z)
        null = Conditioning(text=text, text_mask=torch.zeros_like(keep))
        torch.testing.assert_close(run(null), run(Conditioning(text=torch.randn(2, 3, 12),
                                                               text_mask=torch.zeros(2, 3, dtype=torch.bool))))


def test_random_mask_follows_truncated_normal():
    gen = tiny_mar(seq_len=1000, buffer_size=6)
    counts = torch.stack([gen.random_mask(2).sum(1) for _ in range(400)])  # (draws, b)
    assert bool((counts[:, 0] == counts[:, 1]).all())  # one ratio per batch
    ratios = counts[:, 0].double() / 1000
    assert float(ratios.min()) >= 0.7 and float(ratios.max()) <= 1.0
    a = -1.2  # (0.7 - 1) / 0.25
    phi = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    mean = 1 + 0.25 * (phi(a) - phi(0)) / (0.5 - 0.5 * math.erfc(-a / math.sqrt(2)))
    assert abs(float(ratios.mean()) - mean) < 0.015
    assert bool((tiny_mar(mask_ratio_min=1.0).random_mask(3)).all())


def test_random_mask_cosine_covers_every_context_size():
    """``mask_ratio_dist="cosine"``: ratio = cos(pi/2 u) on [mask_ratio_min, 1], so E[ratio] = 2/pi at min -> 0
    and small ratios (most tokens visible), which the truncated normal never draws, are common."""
    gen = tiny_mar(seq_len=1000, mask_ratio_dist="cosine", mask_ratio_min=1e-6)
    counts = torch.stack([gen.random_mask(2).sum(1) for _ in range(2000)])
    assert bool((counts[:, 0] == counts[:, 1]).all())
    ratios = counts[:, 0].double() / 1000
    assert abs(float(ratios.mean()) - 2 / math.pi) < 0.02
    assert 0.25 < float((ratios < 0.5).double().mean()) < 0.42  # P(cos(pi/2 u) < 1/2) = 1/3
    low = tiny_mar(seq_len=1000, mask_ratio_dist="cosine", mask_ratio_min=0.6)
    r = torch.stack([low.random_mask(1).sum() for _ in range(300)]).double() / 1000
    assert float(r.min()) >= 0.6 and float(r.max()) <= 1.0 and float(r.min()) < 0.65
    with pytest.raises(ValueError, match="mask_ratio_dist"):
        tiny_mar(mask_ratio_dist="uniform")


def test_decoder_cond_reads_the_pooled_condition():
    """decoder_cond adds a projection of the pooled condition to every decoder slot: with every token masked
    and the buffer's influence cut, z still depends on the condition; off, it does not."""
    tokens, mask = torch.randn(2, 8, 4), torch.ones(2, 8, dtype=torch.bool)
    cond = Conditioning(labels=torch.tensor([1, 3]))
    for on in (False, True):
        gen = _randomize(tiny_mar(decoder_cond=on))
        with torch.no_grad():
            gen.decoder_embed.weight.zero_()
            gen.decoder_embed.bias.zero_()  # the buffer no longer reaches the decoder
        z = gen.predict(tokens, mask, cond)
        assert torch.allclose(z[0], z[1]) != on
        assert (gen.decoder_cond is not None) == on
    x, idx, valid = gen.encode(tokens, mask, gen.cond_buffer(cond))
    with pytest.raises(ValueError, match="decoder_cond"):
        gen.decode(x, idx, valid)


def test_sincos_position_init_is_a_2d_table_on_the_token_slots():
    gen = tiny_mar(pos_grid=(2, 4), pos_init="sincos")
    table = grid_sincos((2, 4), 32)
    for p in (gen.encoder_pos, gen.decoder_pos):
        torch.testing.assert_close(p[6:].detach(), table)  # token slots; the 6 buffer slots stay N(0, 0.02)
        assert p[:6].abs().max() < 0.2
    torch.testing.assert_close(gen.head_pos.detach(), table)
    # rows share the first half of the channels, columns the second half; neighbours are more alike than far slots
    assert torch.equal(table[1, :16], table[0, :16]) and torch.equal(table[4, 16:], table[0, 16:])
    assert torch.dist(table[0], table[1]) < torch.dist(table[0], table[3])
    assert tiny_mar().encoder_pos.abs().max() < 0.2  # default: MAR's N(0, 0.02)


def test_rope_carries_position_when_the_learned_tables_are_zero():
    """With the learned position tables zeroed, a bidirectional MAR cannot tell which known token sits where
    (swapping two known tokens leaves z unchanged); with 2-D RoPE it can."""
    cond = Conditioning(labels=torch.tensor([1]))
    a, b = torch.randn(1, 4), torch.randn(1, 4)

    def z_after_swap(gen) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            for p in (gen.encoder_pos, gen.decoder_pos, gen.head_pos):
                p.zero_()
        mask = torch.tensor([[False, False] + [True] * 6])
        one, two = torch.zeros(1, 8, 4), torch.zeros(1, 8, 4)
        one[:, 0], one[:, 1], two[:, 0], two[:, 1] = a, b, b, a
        return gen.predict(one, mask, cond)[0, 5], gen.predict(two, mask, cond)[0, 5]

    torch.testing.assert_close(*z_after_swap(_randomize(tiny_mar(pos_grid=(2, 4)))), atol=1e-5, rtol=1e-5)
    with_rope = z_after_swap(_randomize(tiny_mar(pos_grid=(2, 4), rope=True)))
    assert not torch.allclose(*with_rope, atol=1e-3)
    assert tiny_mar().rope is False and tiny_mar()._rope(torch.zeros(1, 3, dtype=torch.long), 32, 2) is None


def test_grid_rope_leaves_buffer_slots_unrotated():
    cos, sin = grid_rope(torch.arange(10)[None], (2, 4), 8, offset=2)
    assert cos.shape == (1, 10, 4)
    torch.testing.assert_close(cos[0, :3], torch.ones(3, 4))  # buffer slots 0, 1 and token (0, 0)
    torch.testing.assert_close(sin[0, :3], torch.zeros(3, 4))
    assert sin[0, 3, 2] != 0 and sin[0, 3, 0] == 0  # token 1 = (row 0, col 1): only the column pairs turn
    assert sin[0, 6, 0] != 0 and sin[0, 6, 2] == 0  # token 4 = (row 1, col 0): only the row pairs turn


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 8, 8)
    tok = patchify(x, 2)
    assert tok.shape == (2, 16, 12)
    torch.testing.assert_close(tok[0, 1, :4], x[0, 0, 0:2, 2:4].flatten())  # channel-major inside a patch
    torch.testing.assert_close(unpatchify(tok, 3, 2), x)


def test_save_and_load_roundtrip(tmp_path):
    gen = _randomize(tiny_mar())
    back = from_pretrained(save_pretrained(gen, tmp_path / "m"))
    tokens, mask = torch.randn(1, 8, 4), torch.rand(1, 8) > 0.5
    cond = Conditioning(labels=torch.tensor([2]))
    torch.testing.assert_close(back.predict(tokens, mask, cond), gen.predict(tokens, mask, cond))


# --------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    gen = tiny_mar()
    cond = Conditioning(labels=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="continuous tokens"):
        gen(torch.randint(0, 10, (2, 8)), cond)
    with pytest.raises(TypeError, match="continuous tokens"):
        tiny_mar_ar()(torch.randint(0, 10, (2, 8, 4)), cond)
    with pytest.raises(ValueError, match=r"shape \(B, 8, 4\)"):
        gen(torch.randn(2, 8, 3), cond)
    for bad in (0.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="mask_ratio_min"):
            tiny_mar(mask_ratio_min=bad)
    with pytest.raises(ValueError, match="no masked position"):
        gen(torch.randn(2, 8, 4), cond, mask=torch.zeros(2, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="class-conditional"):
        gen(torch.randn(2, 8, 4), Conditioning(batch=2))
    with pytest.raises(ValueError, match="labels must be in"):
        gen(torch.randn(2, 8, 4), Conditioning(labels=torch.tensor([0, 5])))
    with pytest.raises(ValueError, match="buffer"):
        tiny_mar(num_classes=0, text_dim=8, max_text_len=10)
    with pytest.raises(ValueError, match="not both"):
        tiny_mar(text_dim=8)
    with pytest.raises(ValueError, match="pos_grid"):
        tiny_mar(pos_grid=(3, 3))
    with pytest.raises(ValueError, match="pos_init"):
        tiny_mar(pos_init="learned")


def test_decoding_bad_inputs():
    gen = tiny_mar().eval()
    cond = Conditioning(labels=torch.tensor([0]))
    for bad in (0, -3, 1.5):
        with pytest.raises(ValueError, match="num_iter"):
            sample_masked(gen, cond, num_iter=bad)
    with pytest.raises(ValueError, match="null condition"):
        sample_masked(tiny_mar(num_classes=0).eval(), Conditioning(batch=1), num_iter=2, cfg_scale=2.0)
    with pytest.raises(ValueError, match="null condition"):
        generate(tiny_mar(num_classes=0), Conditioning(batch=1), decoder="masked", cfg_scale=2.0, num_iter=2)
    with pytest.raises(ValueError, match="cfg_schedule"):
        sample_masked(gen, cond, num_iter=2, cfg_scale=2.0, cfg_schedule="cosine")
    with pytest.raises(ValueError, match="top_k"):
        generate(gen, cond, decoder="masked", top_k=5, num_iter=2)
    with pytest.raises(ValueError, match="z_null"):
        gen.head.sample(torch.randn(3, 32), cfg_scale=2.0)
    with pytest.raises(ValueError, match="masked continuous generator"):
        generate(vistok.create_generator("ar_tiny_c2i", vocab_size=16, seq_len=4, width=16, depth=1, num_heads=2),
                 cond, decoder="masked")


# --------------------------------------------------------------------------------------------------------------
# DiffLoss head and its diffusers schedulers
# --------------------------------------------------------------------------------------------------------------
def test_respacing_rule_and_diffusers_linspace():
    for n in (10, 25, 64, 100, 250):
        assert _mar_respacing(1000, n) == sorted({round(i * 999 / (n - 1)) for i in range(n)}, reverse=True)
        sched = DDPMScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
        sched.set_timesteps(n)
        assert sched.timesteps.tolist() == _mar_respacing(1000, n)
    assert _mar_respacing(1000, 21) != [round(i * 999 / 20) for i in range(21)][::-1]  # accumulated stride


@pytest.mark.parametrize("t_index", [0, 4, 9])
def test_ddpm_step_equals_diffusers_step(t_index):
    head = _randomize(DiffLossHead(token_dim=4, cond_dim=8, width=16, depth=1, num_sampling_steps=10))
    paths = head.paths(final_noise=False)
    ref = DDPMScheduler.from_config(head.scheduler.config)
    ref.set_timesteps(timesteps=paths.timesteps)
    ref.alphas_cumprod = head._abar  # same float64 table: the test is about the arithmetic
    t = paths.timesteps[t_index]
    x, z = torch.randn(6, 4), torch.randn(6, 8)
    out = head.net(x, torch.full((6,), t), z)
    out = torch.cat([out[:, :4], out[:, 4:].tanh()], 1)  # v in [-1, 1] as a trained head gives
    want = ref.step(out, t, x, generator=torch.Generator().manual_seed(5)).prev_sample
    mean, logvar = paths.moments(out, x.double(), torch.full((6,), t_index))
    noise = torch.randn(6, 4, generator=torch.Generator().manual_seed(5)).double()
    got = mean if t == 0 else mean + (0.5 * logvar).exp() * noise
    torch.testing.assert_close(got.float(), want, atol=1e-5, rtol=1e-5)


def test_head_sample_noise_temperature_and_cfg():
    head = _randomize(DiffLossHead(token_dim=4, cond_dim=8, width=16, depth=1, num_sampling_steps=6))
    z, z_null = torch.randn(5, 8), torch.randn(5, 8)
    noise = head.sample_noise(5, generator=torch.Generator().manual_seed(0))
    assert noise.shape == (6, 5, 4)
    a = head.sample(z, noise=noise)
    torch.testing.assert_close(head.sample(z, noise=noise), a)  # noise fixes the draw
    assert not torch.allclose(head.sample(z, noise=torch.randn_like(noise)), a)
    other = noise.clone()
    other[1:] = torch.randn_like(other[1:])
    cold = head.sample(z, noise=noise, temperature=0.0)
    torch.testing.assert_close(head.sample(z, noise=other, temperature=0.0), cold)
    torch.testing.assert_close(head.sample(z, z_null=z_null, cfg_scale=1.0, noise=noise), a)  # cfg 1: null unused
    assert not torch.allclose(head.sample(z, z_null=z_null, cfg_scale=3.0, noise=noise), a)
    torch.testing.assert_close(head.sample(z, z_null=z, cfg_scale=3.0, noise=noise), a, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="noise must have shape"):
        head.sample(z, noise=noise[:3])


def test_ddim_sampler():
    head = _randomize(DiffLossHead(token_dim=4, cond_dim=8, width=16, depth=1, num_sampling_steps=10, sampler="ddim"))
    z = torch.randn(5, 8)
    noise = head.sample_noise(5)
    a = head.sample(z, noise=noise)
    other = noise.clone()
    other[1:] = 0
    torch.testing.assert_close(head.sample(z, noise=other), a)  # eta 0: only the initial noise matters
    assert torch.isfinite(a).all() and a.shape == (5, 4)
    with pytest.raises(ValueError, match="divide"):
        DiffLossHead(token_dim=4, cond_dim=8, width=16, depth=1, num_sampling_steps=30, sampler="ddim")


_MU = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
_SD = torch.tensor([0.3, 1.0, 0.1, 2.0], dtype=torch.float64)


def _gaussian_head(sampler: str, steps: int = 10) -> DiffLossHead:
    """A float64 head whose network is the exact eps of the data law N(_MU, _SD^2) (the variance output unused):
    ``E[eps | x_t] = sigma (x_t - alpha mu) / (alpha^2 sd^2 + sigma^2)``."""
    head = DiffLossHead(token_dim=4, cond_dim=8, width=16, depth=1, num_sampling_steps=steps, sampler=sampler).double()

    def net(x: Tensor, t: Tensor, z: Tensor) -> Tensor:
        a = head._abar[t][:, None]
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        eps = sigma * (x - alpha * _MU) / (alpha**2 * _SD**2 + sigma**2)
        return torch.cat([eps, torch.zeros_like(eps)], dim=-1)

    head.net = net
    return head


@pytest.mark.parametrize("sampler, algorithm", [("dpm", "dpmsolver++"), ("dpm_sde", "sde-dpmsolver++")])
def test_dpm_samplers_follow_diffusers_dpm_solver(sampler, algorithm):
    """Same noise, same steps: our DPM-Solver++(2M) tables give diffusers' multistep scheduler's result (which
    runs in float32: agreement to ~2e-3 on values of ~2; a wrong coefficient is off by ~0.2-2)."""
    torch.manual_seed(0)
    head, z = _gaussian_head(sampler), torch.zeros(6, 8, dtype=torch.float64)
    for steps in (1, 2, 3, 7, 10):
        noise = head.sample_noise(6, num_steps=steps)
        ours = head.sample(z, noise=noise, num_steps=steps)
        sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                            algorithm_type=algorithm, solver_order=2, prediction_type="epsilon",
                                            timestep_spacing="linspace", final_sigmas_type="zero")
        sched.set_timesteps(steps)
        x = noise[0]
        for k, t in enumerate(sched.timesteps.tolist()):
            eps = head.net(x, torch.full((6,), t), z)[:, :4]
            step_noise = noise[k + 1] if k + 1 < steps else torch.zeros_like(x)
            x = sched.step(eps, t, x, variance_noise=step_noise, return_dict=False)[0].double()
        torch.testing.assert_close(ours, x, atol=5e-3, rtol=0)


def test_dpm_solver_is_second_order_on_a_gaussian():
    """For Gaussian data the probability-flow ODE has a closed form: x_0 = mu + sd (x_T - alpha_T mu) /
    sqrt(alpha_T^2 sd^2 + sigma_T^2).  DPM-Solver++(2M)'s error falls ~4x per doubling of steps, DDIM's ~2x."""
    torch.manual_seed(0)
    n, z = 2000, torch.zeros(2000, 8, dtype=torch.float64)
    x_T = torch.randn(n, 4, dtype=torch.float64)
    a_T = _gaussian_head("dpm")._abar[999]
    exact = _MU + _SD * (x_T - a_T.sqrt() * _MU) / (a_T * _SD**2 + 1 - a_T).sqrt()

    def error(sampler: str, steps: int) -> float:
        noise = torch.zeros(steps, n, 4, dtype=torch.float64)
        noise[0] = x_T
        return float((_gaussian_head(sampler, steps).sample(z, noise=noise) - exact).abs().mean())

    dpm, ddim = [error("dpm", s) for s in (25, 50)], [error("ddim", s) for s in (25, 50)]
    assert dpm[1] / dpm[0] < 0.4 < 0.45 < ddim[1] / ddim[0]
    assert dpm[0] < 0.5 * ddim[0]


def test_dpm_samplers_noise_and_temperature():
    torch.manual_seed(0)
    z = torch.zeros(5, 8, dtype=torch.float64)
    head = _gaussian_head("dpm", 7)  # any step count (no divisibility rule as for DDIM)
    noise = head.sample_noise(5)
    other = noise.clone()
    other[1:] = torch.randn_like(other[1:])
    ode = head.sample(z, noise=noise)
    torch.testing.assert_close(head.sample(z, noise=other, temperature=0.3), ode)  # only the initial noise counts
    head.sampler = "dpm_sde"
    sde = head.sample(z, noise=noise)
    assert not torch.allclose(head.sample(z, noise=other), sde)  # every step's noise counts
    torch.testing.assert_close(head.sample(z, noise=other, temperature=0.0), head.sample(z, noise=noise,
                                                                                           temperature=0.0))
    assert not torch.allclose(head.sample(z, noise=noise, temperature=0.5), sde)


def test_dpm_sde_samples_the_data_law():
    """50 steps of the SDE solver on the exact eps: the samples' mean and std match N(mu, sd^2) per dimension."""
    torch.manual_seed(0)
    head = _gaussian_head("dpm_sde", 50)
    out = head.sample(torch.zeros(20000, 8, dtype=torch.float64))
    torch.testing.assert_close(out.mean(0), _MU, atol=0.05, rtol=0)
    torch.testing.assert_close(out.std(0) / _SD, torch.ones(4, dtype=torch.float64), atol=0.1, rtol=0)


def test_head_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    head = DiffLossHead(token_dim=2, cond_dim=3, width=16, depth=1)
    x, z = torch.randn(32, 2) * 0.5, torch.randn(32, 3)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    t, noise = torch.randint(0, 1000, (32,)), torch.randn(32, 2)
    with torch.no_grad():
        first = float(head.loss(x, z, t=t, noise=noise))
    for _ in range(25):
        opt.zero_grad()
        head.loss(x, z, t=t, noise=noise).backward()
        opt.step()
    with torch.no_grad():
        assert float(head.loss(x, z, t=t, noise=noise)) < 0.7 * first


# --------------------------------------------------------------------------------------------------------------
# Masked decoding
# --------------------------------------------------------------------------------------------------------------
def test_mask_schedule():
    assert mask_schedule(16, 4) == [14, 11, 6, 0]
    assert mask_schedule(8, 1) == [0]
    sched = mask_schedule(4, 10)  # more steps than tokens: some steps reveal nothing
    assert sched[-1] == 0 and all(a >= b for a, b in zip([4, *sched], sched)) and min(sched[:-1]) == 1


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_masked_decoding_reveals_every_position_once(cfg):
    gen = _randomize(tiny_mar())
    cond = Conditioning(labels=torch.tensor([0, 3]))
    tokens, ex = sample_masked(gen, cond, num_iter=3, cfg_scale=cfg, rng=torch.Generator().manual_seed(1))
    assert tokens.shape == (2, 8, 4) and torch.isfinite(tokens).all()
    assert torch.equal(ex["revealed"].sum(0), torch.ones(2, 8, dtype=torch.long))
    left = torch.tensor(mask_schedule(8, 3))
    assert torch.equal(8 - ex["revealed"].sum(-1).cumsum(0), left[:, None].expand(-1, 2))
    # revealed from the end of each order backwards
    first = ex["revealed"][0]
    for b in range(2):
        assert set(ex["orders"][b, 8 - int(first[b].sum()) :].tolist()) == set(first[b].nonzero()[:, 0].tolist())


def test_generate_with_masked_decoder_is_seeded():
    gen = _randomize(tiny_mar())
    cond = Conditioning(labels=torch.tensor([1]))
    a = generate(gen, cond, decoder="masked", num_iter=4, cfg_scale=2.0, seed=3, num_samples=2)
    b = generate(gen, cond, decoder="masked", num_iter=4, cfg_scale=2.0, seed=3, num_samples=2)
    c = generate(gen, cond, decoder="masked", num_iter=4, cfg_scale=2.0, seed=4, num_samples=2)
    assert a.tokens.shape == (2, 8, 4) and a.nfe == 4
    torch.testing.assert_close(a.tokens, b.tokens)
    assert not torch.allclose(a.tokens, c.tokens)
    assert not torch.allclose(a.tokens[0], a.tokens[1])


def test_head_clip_denoised_bounds_the_samples():
    """``clip_denoised=c`` clamps the x0 estimate at every step; the last DDPM step returns that estimate, so every
    sample lies in [-c, c].  Without it, a head with large outputs throws samples far out (the failure a briefly
    trained head shows at t = T, where the eps error is divided by sqrt(abar_T))."""
    from vistok.generators.heads import DiffLossHead

    torch.manual_seed(0)
    wild = DiffLossHead(token_dim=4, cond_dim=8, width=16, depth=1, num_sampling_steps=10)
    for p in wild.parameters():
        torch.nn.init.normal_(p, std=0.15)
    z = torch.randn(64, 8)
    free = wild.sample(z, generator=torch.Generator().manual_seed(1))
    wild.clip_denoised = 1.5
    clipped = wild.sample(z, generator=torch.Generator().manual_seed(1))
    assert free.abs().max() > 1.5 and clipped.abs().max() <= 1.5 + 1e-5
    with pytest.raises(ValueError, match="clip_denoised"):
        DiffLossHead(token_dim=4, cond_dim=8, width=16, depth=1, clip_denoised=0.0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm", "dpm_sde"])
def test_hoisted_head_network_matches_the_per_step_network(sampler):
    """The samplers' ``conditioned`` function (condition projected once, time embedded once per step) computes
    ``guided_net``; every sampler gives the draws of the per-step network (a ``net`` patched on the instance, which
    the samplers call as is)."""
    torch.manual_seed(0)
    head = DiffLossHead(token_dim=4, cond_dim=8, width=32, depth=2, num_sampling_steps=10, sampler=sampler).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.2)
    z, z_null, x = torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 4)
    timesteps = torch.tensor([999, 500, 3, 0])
    with torch.no_grad():
        for zn, cfg in [(None, 1.0), (z_null, 1.0), (z_null, 2.5), (z_null, torch.linspace(1, 3, 5))]:
            f = head.conditioned(z, zn, cfg, timesteps)
            for k in (0, 2, torch.tensor([0, 1, 2, 3, 1])):
                t = timesteps[k].expand(5) if isinstance(k, int) else timesteps[k]
                torch.testing.assert_close(f(x, k), head.guided_net(x, t, z, zn, cfg), atol=1e-5, rtol=1e-5)
        noise = head.sample_noise(5, generator=torch.Generator().manual_seed(1))
        hoisted = head.sample(z, z_null=z_null, cfg_scale=2.0, temperature=0.9, noise=noise)
        head.net = lambda x, t, z: DiffLossHead.net(head, x, t, z)  # redefined: the per-step path
        per_step = head.sample(z, z_null=z_null, cfg_scale=2.0, temperature=0.9, noise=noise)
    torch.testing.assert_close(hoisted, per_step, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(hoisted, head.sample(z, z_null=z_null, cfg_scale=2.5, temperature=0.9, noise=noise))
