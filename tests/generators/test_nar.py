"""NAR generator and the anti-diagonal decoder: tiny random models, CPU."""

import pytest
import torch
from conftest import tiny_ar

import vistok
from vistok.decoding import DECODERS, generate
from vistok.decoding.neighboring import decode_nar, diagonal_schedule
from vistok.generators import NARGenerator
from vistok.hub import from_pretrained, save_pretrained
from vistok.interfaces import Conditioning


def tiny_nar(**kw):
    cfg = dict(vocab_size=64, seq_len=16, width=32, depth=2, num_heads=2, dropout=0.0, num_classes=10)
    gen = NARGenerator(**{**cfg, **kw}).eval()
    torch.nn.init.normal_(gen.right_head.weight)  # the official init zeroes it: make both heads informative
    return gen


def _labels(b=2):
    return Conditioning(labels=torch.arange(b) % 10)


def _diag(q, w):
    return q // w + q % w


def test_schedule_covers_the_grid_by_diagonals():
    assert diagonal_schedule(4, 4) == [[0], [1, 4], [2, 5, 8], [3, 6, 9, 12], [7, 10, 13], [11, 14], [15]]
    sched = diagonal_schedule(3, 5)
    assert len(sched) == 3 + 5 - 1
    assert sorted(q for cells in sched for q in cells) == list(range(15))
    assert all({_diag(q, 5) for q in cells} == {d} for d, cells in enumerate(sched))
    assert diagonal_schedule(1, 6) == [[q] for q in range(6)]


@pytest.mark.parametrize("grid,cfg", [((4, 4), 1.0), ((3, 5), 2.5)])
def test_decoder_matches_teacher_forcing(grid, cfg):
    """Greedy tokens are the argmax of the teacher-forced (guided) logits on the decoded grid itself, and each
    pass's recorded logits equal the teacher-forced ones: the KV-cache path and the proximity mask agree."""
    h, w = grid
    gen = tiny_nar(seq_len=h * w, grid=grid)
    cond = _labels(3)
    out = generate(gen, cond, decoder="nar", temperature=0, cfg_scale=cfg, record=True)
    assert out.nfe == h + w - 1 and out.extras["schedule"] == diagonal_schedule(h, w)
    c = gen(out.tokens, cond).logits
    u = gen(out.tokens, cond.null()).logits
    full = u + cfg * (c - u)
    assert torch.equal(full.argmax(-1), out.tokens)
    for step in out.extras["steps"]:
        rec = step["logits"]
        cells = step["cells"]
        assert torch.allclose(rec[:3], c[:, cells], atol=1e-5)
        if cfg != 1.0:
            assert torch.allclose(rec[3:], u[:, cells], atol=1e-5)


def test_proximity_mask_causal_across_bidirectional_within_diagonals():
    gen = tiny_nar()
    cond = _labels(1)
    tokens = torch.randint(0, 64, (1, 16))
    base = gen(tokens, cond).logits
    diag = torch.tensor([_diag(q, 4) for q in range(16)])
    for d in range(1, 7):
        later = tokens.clone()
        later[:, diag >= d] = torch.randint(0, 64, (int((diag >= d).sum()),))
        # a token on diagonal D is predicted from diagonals < D only
        assert torch.allclose(gen(later, cond).logits[:, diag <= d], base[:, diag <= d], atol=1e-6)
    # (0, 3) is predicted by the right head at (0, 2), which attends to (2, 0) on its own diagonal: a raster-causal
    # model could not see it
    changed = tokens.clone()
    changed[0, 8] = (tokens[0, 8] + 1) % 64
    assert not torch.allclose(gen(changed, cond).logits[0, 3], base[0, 3], atol=1e-4)


def test_one_dimensional_grid_is_next_token_ar():
    gen = tiny_nar(seq_len=8, grid=(1, 8))
    assert gen.is_causal and gen.down_head is None and len(gen.down_blocks) == 0
    cond = _labels(2)
    nar = generate(gen, cond, decoder="nar", temperature=0)
    ar = generate(gen, cond, decoder="ar", temperature=0)
    assert nar.nfe == 8 and torch.equal(nar.tokens, ar.tokens)
    # a causal generator: speculative Jacobi decoding (windows, rollbacks) reproduces greedy AR
    assert torch.equal(generate(gen, cond, decoder="sjd", temperature=0).tokens, ar.tokens)
    # token p depends on tokens < p only
    tokens = torch.randint(0, 64, (2, 8))
    later = tokens.clone()
    later[:, 5:] = 0
    assert torch.allclose(gen(tokens, cond).logits[:, :6], gen(later, cond).logits[:, :6], atol=1e-6)


def test_sampling_filters_and_seed():
    gen = tiny_nar()
    cond = _labels(2)
    greedy = generate(gen, cond, decoder="nar", temperature=0).tokens
    assert torch.equal(generate(gen, cond, decoder="nar", top_k=1, seed=3).tokens, greedy)
    assert torch.equal(generate(gen, cond, decoder="nar", top_p=1e-6, seed=3).tokens, greedy)
    a = generate(gen, cond, decoder="nar", temperature=1.5, top_k=20, seed=7, num_samples=2).tokens
    b = generate(gen, cond, decoder="nar", temperature=1.5, top_k=20, seed=7, num_samples=2).tokens
    assert a.shape == (4, 16) and torch.equal(a, b) and int(a.max()) < 64
    assert not torch.equal(a, generate(gen, cond, decoder="nar", temperature=1.5, top_k=20, seed=8,
                                       num_samples=2).tokens)


def test_cfg_interval_stops_guidance():
    gen = tiny_nar()
    cond = _labels(2)
    out = generate(gen, cond, decoder="nar", temperature=0, cfg_scale=3.0, cfg_interval=0, record=True)
    for i, step in enumerate(out.extras["steps"]):
        c, u = step["logits"].chunk(2)
        want = u + 3.0 * (c - u) if i == 0 else c  # only the prefill (0 tokens decoded so far) is guided
        assert torch.equal(want.argmax(-1), out.tokens[:, step["cells"]])


def test_text_conditioning_masks_padding_and_decodes():
    gen = tiny_nar(num_classes=0, text_dim=12, max_text_len=6)
    tokens = torch.randint(0, 64, (1, 16))
    text = torch.randn(1, 3, 12)
    a = gen(tokens, Conditioning(text=text)).logits
    padded = torch.cat([text, torch.randn(1, 2, 12)], 1)
    b = gen(tokens, Conditioning(text=padded, text_mask=torch.tensor([[True] * 3 + [False] * 2]))).logits
    assert torch.allclose(a, b, atol=1e-5)
    out = generate(gen, Conditioning(text=text), decoder="nar", temperature=0, cfg_scale=2.0)
    assert out.tokens.shape == (1, 16) and out.nfe == 7


def test_training_step_condition_dropout_and_grid_tokens():
    gen = tiny_nar(cond_dropout=0.5).train()
    dropped = gen.drop_condition(Conditioning(labels=torch.zeros(1000, dtype=torch.long)))
    assert 0.4 < float((dropped.labels == -1).float().mean()) < 0.6
    tokens = torch.randint(0, 64, (4, 4, 4))  # (B, H, W) grids are accepted
    out = gen(tokens, _labels(4))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.logits.shape == (4, 16, 64)
    assert gen.down_head.weight.grad.abs().sum() > 0 and gen.right_head.weight.grad.abs().sum() > 0


def test_save_and_load_roundtrip(tmp_path):
    gen = tiny_nar(seq_len=6, grid=(2, 3))
    tokens = torch.randint(0, 64, (2, 6))
    back = from_pretrained(save_pretrained(gen, tmp_path / "nar"))
    assert back.grid == (2, 3)
    assert torch.allclose(back(tokens, _labels()).logits, gen(tokens, _labels()).logits, atol=1e-6)


@pytest.mark.parametrize("name,official", [("nar_b", 130.6e6), ("nar_l", 372e6), ("nar_xl", 816e6),
                                           ("nar_xxl", 1.46e9)])
def test_preset_parameter_counts(name, official):
    with torch.device("meta"):
        gen = vistok.create_generator(name)
    n = sum(p.numel() for p in gen.parameters())
    assert abs(n - official) / official < 0.005, n


def test_bad_inputs():
    gen = tiny_nar()
    cond = _labels(2)
    with pytest.raises(TypeError, match="continuous"):
        gen(torch.rand(2, 16, 8), cond)
    with pytest.raises(ValueError, match=r"\(B, 16\) or \(B, 4, 4\)"):
        gen(torch.zeros(2, 9, dtype=torch.long), cond)
    with pytest.raises(ValueError, match=r"\(B, 16\) or \(B, 4, 4\)"):
        gen(torch.zeros(2, 2, 8, dtype=torch.long), cond)
    with pytest.raises(ValueError, match=r"\[0, 63\]"):
        gen(torch.full((2, 16), 64), cond)
    with pytest.raises(ValueError, match="class-conditional"):
        gen(torch.zeros(2, 16, dtype=torch.long), Conditioning(batch=2))
    with pytest.raises(ValueError, match="not a square grid"):
        NARGenerator(seq_len=32)
    with pytest.raises(ValueError, match="does not hold"):
        NARGenerator(seq_len=16, grid=(3, 5))
    with pytest.raises(ValueError, match="null condition"):  # cfg on an unconditional model
        generate(tiny_nar(num_classes=0), Conditioning(batch=2), decoder="nar", cfg_scale=2.0)
    with pytest.raises(ValueError, match="cond_dropout"):  # cfg without a learned null condition
        generate(tiny_nar(cond_dropout=0.0), cond, decoder="nar", cfg_scale=2.0)
    with pytest.raises(ValueError, match="decoder='ar'"):
        generate(tiny_ar(num_classes=10), cond, decoder="nar")
    with pytest.raises(ValueError, match="decoder='nar'"):  # raster AR decoding cannot feed the upper neighbour
        generate(gen, cond, decoder="ar")
    assert DECODERS["nar"] is decode_nar


def test_shipped_tokenizer_latents_are_spatial_so_an_8x4_nar_grid_fits():
    """configs/generators/nar_tiny_t2i.yaml reads the shipped TiTok's 32 tokens as an 8 x 4 grid: latent j should
    own the 1 x 2-patch region (row j // 4, columns 2 (j % 4) .. + 1) that spatial_init dealt it.  Replacing latent
    j's id must change that region more than any other."""
    from vistok.data import ShapesDataset
    from vistok.sample import DEFAULT_MODEL

    torch.manual_seed(0)
    tok = from_pretrained(DEFAULT_MODEL / "tokenizer").float().eval()
    ds = ShapesDataset(32, seed=5)
    x = torch.stack([ds[i]["pixels"] for i in range(len(ds))])
    ids = tok.encode(x)
    base = tok.decode(ids)
    hits, share = 0, []
    for j in range(tok.num_tokens):
        other = ids.clone()
        other[:, j] = torch.randint(0, tok.codebook_size, (len(ids),))
        cells = (tok.decode(other) - base).abs().mean((0, 1)).reshape(8, 8, 8, 8).mean((1, 3))  # 8 x 8 patches
        regions = cells.reshape(8, 4, 2).sum(-1)  # 8 x 4 regions of 1 x 2 patches
        hits += int(regions.argmax()) == j
        share.append(float(regions.flatten()[j] / regions.sum()))
    assert hits >= 30, f"only {hits}/32 latents change their own region most"
    assert sum(share) / len(share) > 0.3  # uniform would be 1/32
