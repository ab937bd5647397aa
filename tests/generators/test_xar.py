"""xAR: block-causal cells, noisy-context training, KV-cached next-cell decoding, CFG ramp, presets, bad input."""

import pytest
import torch

import vistok
from vistok.decoding import DECODERS, generate
from vistok.decoding.cells import cell_cfg_scales, decode_cells
from vistok.generators import XARGenerator
from vistok.interfaces import Conditioning, Generator

TINY = dict(grid_size=4, cell_size=2, token_dim=4, width=32, depth=1, decoder_depth=1, num_heads=2, dropout=0.0,
            num_classes=5)


def _model(**kw) -> XARGenerator:
    torch.manual_seed(0)
    return XARGenerator(**{**TINY, **kw}).eval()


def _cond(b=2, **kw):
    return Conditioning(labels=torch.arange(b) % 5, **kw)


def test_forward_loss_backward_and_shapes():
    gen = _model().train()
    assert isinstance(gen, Generator) and gen.kind == "continuous"
    assert (gen.num_cells, gen.cell_tokens, gen.seq_len) == (4, 4, 16)
    tokens = torch.randn(3, 16, 4)
    out = gen(tokens, _cond(3))
    assert torch.isfinite(out.loss)
    assert out.extras["velocity"].shape == tokens.shape and out.extras["t"].shape == (3, 4)
    out.loss.backward()
    assert gen.out.weight.grad.abs().sum() > 0 and gen.class_embed.weight.grad.abs().sum() > 0


def test_target_is_noise_minus_data_and_x_t_on_the_linear_path():
    gen, tokens, noise = _model(), torch.randn(2, 16, 4), torch.randn(2, 16, 4)
    t = torch.rand(2, 4)
    seen = {}
    gen.token_proj.register_forward_hook(lambda m, i, o: seen.update(x_t=i[0]))
    out = gen(tokens, _cond(), t=t, noise=noise)
    assert torch.allclose(out.extras["target"], noise - tokens)
    tt = t.repeat_interleave(4, dim=1)[..., None]  # per token, cell-major
    expect = (1 - tt) * gen.to_cell_major(tokens) + tt * gen.to_cell_major(noise)
    assert torch.allclose(seen["x_t"], expect, atol=1e-6)


def test_cell_major_layout_round_trips_and_groups_cells():
    gen = _model()
    grid = torch.arange(16.0).view(1, 16, 1)  # raster ids of a 4x4 grid
    cells = gen.to_cell_major(grid)[0, :, 0].view(4, 4)
    assert cells[0].tolist() == [0, 1, 4, 5] and cells[1].tolist() == [2, 3, 6, 7]  # 2x2 cells, raster order
    assert torch.equal(gen.to_raster(gen.to_cell_major(grid)), grid)


def test_rectangular_grid_and_cells():
    gen = _model(grid_size=(4, 2), cell_size=(2, 1))  # 8 tokens, 4 cells of 2 x 1 (the TiTok-32 layout, scaled)
    assert (gen.seq_len, gen.num_cells, gen.cell_tokens, gen.cells) == (8, 4, 2, (2, 2))
    grid = torch.arange(8.0).view(1, 8, 1)  # raster ids of a 4-row, 2-column grid
    cells = gen.to_cell_major(grid)[0, :, 0].view(4, 2)
    assert cells.tolist() == [[0, 2], [1, 3], [4, 6], [5, 7]]  # each cell is one column of two rows
    assert torch.equal(gen.to_raster(gen.to_cell_major(grid)), grid)
    cos, _ = gen._rope(torch.arange(8)[None])  # rows rotate the first half, columns the second
    row_part, col_part = cos[0, :, : cos.shape[-1] // 2], cos[0, :, cos.shape[-1] // 2 :]
    # cell-major positions 0 and 1 are raster tokens 0 and 2: rows 0 and 1 of column 0
    assert torch.equal(col_part[0], col_part[1]) and not torch.equal(row_part[0], row_part[1])
    tokens, nfe, _ = decode_cells(gen, _cond(), num_steps=2, rng=torch.Generator().manual_seed(0))
    assert tokens.shape == (2, 8, 4) and nfe == 8
    assert torch.isfinite(gen.train()(torch.randn(2, 8, 4), _cond()).loss)
    with pytest.raises(ValueError, match="along each side"):
        XARGenerator(grid_size=(8, 4), cell_size=(4, 3))
    with pytest.raises(ValueError, match=r"\(rows, columns\)"):
        XARGenerator(grid_size=(8, 4, 2), cell_size=2)


def test_attention_is_block_causal_over_cells():
    gen, tokens, noise, t = _model(), torch.randn(1, 16, 4), torch.randn(1, 16, 4), torch.rand(1, 4)
    v0 = gen.to_cell_major(gen(tokens, _cond(1), t=t, noise=noise).extras["velocity"])
    changed = gen.to_cell_major(tokens).clone()
    changed[:, 8:12] += 1.0  # cell 2
    v1 = gen.to_cell_major(gen(gen.to_raster(changed), _cond(1), t=t, noise=noise).extras["velocity"])
    assert torch.allclose(v0[:, :8], v1[:, :8], atol=1e-6)  # earlier cells do not see cell 2
    assert not torch.allclose(v0[:, 8:], v1[:, 8:], atol=1e-4)  # cells 2 and 3 do


def test_cached_cell_steps_equal_one_uncached_pass():
    gen, b = _model(), 2
    clean, noisy = torch.randn(b, 12, 4), torch.randn(b, 4, 4)
    full = gen.step(torch.cat([clean, noisy], 1), torch.arange(16), gen.new_cache(_cond()),
                    torch.tensor([0, 0, 0, 0.7]).expand(b, -1))[:, 12:]
    cache = gen.new_cache(_cond())
    gen.step(clean[:, :4], torch.arange(4), cache, 0.3)  # a noisy step of cell 0 ...
    for c in range(1, 3):  # ... then the official pattern: [previous cell clean, this cell noisy]
        gen.step(torch.cat([clean[:, (c - 1) * 4 : c * 4], torch.randn(b, 4, 4)], 1),
                 torch.arange((c - 1) * 4, (c + 1) * 4), cache, torch.tensor([0.0, 0.5]).expand(b, -1))
    first = gen.step(torch.cat([clean[:, 8:12], noisy], 1), torch.arange(8, 16), cache,
                     torch.tensor([0.0, 0.7]).expand(b, -1))[:, 4:]
    later = gen.step(noisy, torch.arange(12, 16), cache, 0.7)  # context from the cache only
    assert torch.allclose(first, full, atol=1e-5) and torch.allclose(later, full, atol=1e-5)


def test_step_refuses_missing_context_and_partial_cells():
    gen = _model()
    cache = gen.new_cache(_cond())
    with pytest.raises(ValueError, match="not in the cache"):
        gen.step(torch.randn(2, 4, 4), torch.arange(8, 12), cache, 0.5)
    with pytest.raises(ValueError, match="whole cells"):
        gen.step(torch.randn(2, 3, 4), torch.arange(3), cache, 0.5)
    with pytest.raises(ValueError, match="whole cells"):
        gen.step(torch.randn(2, 4, 4), torch.arange(1, 5), cache, 0.5)
    with pytest.raises(ValueError, match=r"t must be in \[0, 1\]"):
        gen.step(torch.randn(2, 4, 4), torch.arange(4), cache, 1.5)


def test_decode_shapes_nfe_and_seed_determinism():
    gen = _model()
    tokens, nfe, extras = decode_cells(gen, _cond(), num_steps=3, rng=torch.Generator().manual_seed(0))
    assert tokens.shape == (2, 16, 4) and nfe == 12 and extras["cells"].shape == (2, 4, 4, 4)
    assert torch.equal(gen.to_cell_major(tokens), extras["cells"].flatten(1, 2))
    again, _, _ = decode_cells(gen, _cond(), num_steps=3, rng=torch.Generator().manual_seed(0))
    other, _, _ = decode_cells(gen, _cond(), num_steps=3, rng=torch.Generator().manual_seed(1))
    assert torch.equal(tokens, again) and not torch.allclose(tokens, other)


def test_single_step_sde_and_ode_match_their_formulas():
    """One step from t=1 to 0: the SDE's mean step gives -v (drift v + x at t=1), the ODE's Euler step x - v."""
    gen, b = _model(), 2
    x0 = torch.randn(b, 4, 4, generator=torch.Generator().manual_seed(5))
    v = gen.step(x0, torch.arange(4), gen.new_cache(_cond()), 1.0)
    for method, expect in (("sde", -v), ("ode", x0 - v)):
        _, _, ex = decode_cells(gen, _cond(), num_steps=1, method=method, rng=torch.Generator().manual_seed(5))
        assert torch.allclose(ex["cells"][:, 0], expect, atol=1e-5), method


def test_cfg_ramp_leaves_the_first_cell_unguided():
    gen, seed = _model(), lambda: torch.Generator().manual_seed(3)
    assert cell_cfg_scales(3.0, 4) == pytest.approx([1.0, 5 / 3, 7 / 3, 3.0])
    plain = decode_cells(gen, _cond(), num_steps=2, rng=seed())[2]["cells"]
    ramp = decode_cells(gen, _cond(), num_steps=2, cfg_scale=3.0, rng=seed())[2]["cells"]
    const = decode_cells(gen, _cond(), num_steps=2, cfg_scale=3.0, cfg_schedule="constant", rng=seed())[2]["cells"]
    assert torch.allclose(plain[:, 0], ramp[:, 0], atol=1e-5)  # scale 1 on cell 0
    assert not torch.allclose(plain[:, 1:], ramp[:, 1:], atol=1e-3)
    assert not torch.allclose(plain[:, 0], const[:, 0], atol=1e-3)


def test_generate_entry_point_routes_guidance_to_the_cells_decoder():
    gen = _model()
    assert DECODERS["cells"] is decode_cells
    out = generate(gen, _cond(), decoder="cells", cfg_scale=2.0, num_steps=2, seed=7)
    direct = decode_cells(gen, _cond(), num_steps=2, cfg_scale=2.0, rng=torch.Generator().manual_seed(7))[0]
    assert out.nfe == 8 and torch.equal(out.tokens, direct)


def test_text_conditioning_through_the_prefix():
    gen = _model(num_classes=0, text_dim=6, max_text_len=3).train()
    text = torch.randn(2, 3, 6)
    cond = Conditioning(text=text, text_mask=torch.tensor([[True, True, False], [True, False, False]]))
    out = gen(torch.randn(2, 16, 4), cond)
    out.loss.backward()
    assert gen.text_proj[0].weight.grad.abs().sum() > 0
    gen.eval()
    a = decode_cells(gen, cond, num_steps=2, cfg_scale=2.0, rng=torch.Generator().manual_seed(0))[0]
    b = decode_cells(gen, Conditioning(text=text.flip(0), text_mask=cond.text_mask),
                     num_steps=2, cfg_scale=2.0, rng=torch.Generator().manual_seed(0))[0]
    assert a.shape == (2, 16, 4) and not torch.allclose(a, b)


def test_presets_match_official_parameter_counts():
    # measured on the official xAR class (OliverRensu/xAR @ 121e9c9) built on the meta device
    official = {"xar_b": 172_638_224, "xar_l": 608_397_968, "xar_h": 1_186_024_096}
    for name, count in official.items():
        with torch.device("meta"):
            gen = vistok.create_generator(name)
        ours = sum(p.numel() for p in gen.parameters())
        assert abs(ours - count) / count < 0.005, (name, ours, count)


def test_tiny_preset_and_save_load(tmp_path):
    gen = vistok.create_generator("xar_tiny").eval()
    vistok.save_pretrained(gen, tmp_path)
    back = vistok.from_pretrained(tmp_path)
    x, cond = torch.randn(1, gen.seq_len, gen.token_dim), Conditioning(labels=torch.tensor([3]))
    t, noise = torch.rand(1, gen.num_cells), torch.randn(1, gen.seq_len, gen.token_dim)
    assert torch.equal(gen(x, cond, t=t, noise=noise).loss, back(x, cond, t=t, noise=noise).loss)


def test_bad_input_errors():
    gen = _model()
    with pytest.raises(ValueError, match="4x4 grid"):
        gen(torch.randn(2, 9, 4), _cond())
    with pytest.raises(ValueError, match="4x4 grid"):
        gen(torch.randn(2, 16, 3), _cond())
    with pytest.raises(TypeError, match="continuous"):
        gen(torch.randint(0, 10, (2, 16)), _cond())
    with pytest.raises(ValueError, match="num_steps"):
        decode_cells(gen, _cond(), num_steps=0)
    with pytest.raises(ValueError, match="null condition"):
        decode_cells(_model(num_classes=0), Conditioning(batch=2), cfg_scale=2.0)
    with pytest.raises(ValueError, match="null condition"):
        generate(_model(num_classes=0), Conditioning(batch=2), decoder="cells", cfg_scale=2.0)
    with pytest.raises(ValueError, match="class-conditional"):
        decode_cells(gen, Conditioning(batch=2))
    with pytest.raises(ValueError, match="temperature"):
        generate(gen, _cond(), decoder="cells", temperature=0.5)
    with pytest.raises(ValueError, match="cell-autoregressive"):
        decode_cells(vistok.create_generator("ar_tiny_c2i", width=32, depth=1, num_heads=2),
                     Conditioning(labels=torch.tensor([0])))
    with pytest.raises(ValueError, match="multiple of cell_size"):
        XARGenerator(grid_size=6, cell_size=4)
