"""The shared blocks in vistok.layers that the generator families are built on: 2-D RoPE, condition embeddings and
the text-prefix prefill, norms, the ViT block's options.  The reference formulas below are the per-family copies the
shared pieces replaced (NAR/LlamaGen, xAR, MAR), kept here to pin the families' numerics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import vistok
from vistok.generators.nar import rope_2d_table
from vistok.generators.xar import TimestepEmbedding, XARGenerator
from vistok.interfaces import Conditioning, KVCache
from vistok.layers import Attention, ConditionEmbedder, RMSNorm, ViTBlock, rope_2d, rope_frequencies, rope_table

ASSETS = Path(vistok.__file__).parent / "assets"


# --------------------------------------------------------------------------------------------------------------
# 2-D RoPE
# --------------------------------------------------------------------------------------------------------------
def _llamagen_freqs(head_dim: int, base: float) -> torch.Tensor:
    half = head_dim // 2
    return 1.0 / base ** (torch.arange(0, half, 2)[: half // 2].float() / half)


@pytest.mark.parametrize(("h", "w", "head_dim"), [(4, 4, 16), (3, 5, 64), (1, 6, 80), (16, 16, 128)])
def test_nar_table_is_llamagen_2d_rope_with_a_zero_start_slot(h, w, head_dim):
    freqs = _llamagen_freqs(head_dim, 10000.0)  # LlamaGen precompute_freqs_cis_2d, as NAR had it inline
    rows, cols = torch.outer(torch.arange(h), freqs), torch.outer(torch.arange(w), freqs)
    angles = torch.cat([rows[:, None].expand(-1, w, -1), cols[None].expand(h, -1, -1)], dim=-1).flatten(0, 1)
    cos, sin = rope_2d_table(h, w, head_dim, 10000.0)
    assert cos.shape == (1 + h * w, head_dim // 2)
    assert torch.equal(cos[1:], angles.cos()) and torch.equal(sin[1:], angles.sin())
    assert not cos[0].any() and not sin[0].any()  # the start slot is zeroed (queries/keys vanish), not identity


def test_xar_rope_is_the_shared_2d_rope_in_cell_major_order():
    gen = XARGenerator(grid_size=(4, 6), cell_size=(2, 3), token_dim=4, width=64, depth=1, decoder_depth=1,
                       num_heads=2, num_classes=2, rope_base=100.0)
    positions = torch.arange(24)[None]
    half = 32 // 2  # the formula xAR had inline
    freqs = 1.0 / (100.0 ** (torch.arange(0, half, 2).float() / half))
    cell, j = positions // 6, positions % 6
    row, col = (cell // 2) * 2 + j // 3, (cell % 2) * 3 + j % 3
    angles = torch.cat([row.float()[..., None] * freqs, col.float()[..., None] * freqs], dim=-1)
    cos, sin = gen._rope(positions)
    assert torch.equal(cos, angles.cos()) and torch.equal(sin, angles.sin())
    # cell-major position 3 is token (1, 0) of cell 0; position 6 the first token of cell 1, at grid (0, 3)
    assert torch.equal(cos[0, 3], rope_2d(torch.tensor(1), torch.tensor(0), 32, 100.0)[0])
    assert torch.equal(cos[0, 6], rope_2d(torch.tensor(0), torch.tensor(3), 32, 100.0)[0])


def test_rope_2d_is_two_1d_ropes_side_by_side():
    rows, cols = torch.randint(0, 9, (2, 7)), torch.randint(0, 9, (2, 7))
    cos, sin = rope_2d(rows, cols, 32)
    (cr, sr), (cc, sc) = rope_table(rows, 16), rope_table(cols, 16)
    assert torch.equal(cos, torch.cat([cr, cc], -1)) and torch.equal(sin, torch.cat([sr, sc], -1))
    zero = torch.zeros(3, dtype=torch.long)
    c0, s0 = rope_2d(zero, zero, 32)
    assert torch.equal(c0, torch.ones(3, 16)) and torch.equal(s0, torch.zeros(3, 16))
    with pytest.raises(ValueError, match="divisible by 4"):
        rope_2d(rows, cols, 30)
    with pytest.raises(ValueError, match="one shape"):
        rope_2d(rows, cols[:, :3], 32)


def test_rope_frequencies_follow_llamagen():
    for dim in (16, 64, 80):
        assert torch.equal(rope_frequencies(dim, 10000.0), 1.0 / 10000.0 ** (torch.arange(0, dim, 2).float() / dim))
    with pytest.raises(ValueError, match="even"):
        rope_frequencies(7)


# --------------------------------------------------------------------------------------------------------------
# Conditioning
# --------------------------------------------------------------------------------------------------------------
class _Cond(nn.Module, ConditionEmbedder):
    def __init__(self, **kw):
        super().__init__()
        self.init_conditioning(8, **kw)


def test_null_row_and_null_vector_conventions():
    labels = Conditioning(labels=torch.tensor([2, -1, 0]))
    row = _Cond(num_classes=3)  # LlamaGen: null class = last row
    assert row.class_embed.num_embeddings == 4 and row.bos is None
    torch.testing.assert_close(row.condition_vector(labels), row.class_embed.weight[[2, 3, 0]])
    vec = _Cond(num_classes=3, null="vector")  # MAR: no null row, a learned null vector
    assert vec.class_embed.num_embeddings == 3
    want = torch.stack([vec.class_embed.weight[2], vec.null_embed, vec.class_embed.weight[0]])
    torch.testing.assert_close(vec.condition_vector(labels), want)
    with pytest.raises(ValueError, match="not both"):
        _Cond(num_classes=3, text_dim=4, null="vector")


def test_class_free_start_vectors_and_state_dict_names():
    uncond = Conditioning(batch=2)
    learned = _Cond(text_dim=5)  # AR / NAR: learned bos
    assert set(learned.state_dict()) == {"bos", "text_proj.0.weight", "text_proj.0.bias", "text_proj.2.weight",
                                         "text_proj.2.bias"}
    assert torch.equal(learned.condition_vector(uncond), learned.bos.expand(2, -1))
    fixed = _Cond(bos=False)  # xAR: zeros, not a parameter, not saved
    assert not fixed.condition_vector(uncond).any() and "bos" not in fixed.state_dict()
    assert fixed.to(torch.float64).condition_vector(uncond).dtype == torch.float64
    assert set(_Cond(num_classes=2, null="vector").state_dict()) == {"class_embed.weight", "null_embed"}
    assert _Cond(text_dim=5, text_bias=False).text_proj[0].bias is None  # NAR's cap_proj has no biases


def test_prefill_text_writes_the_prefix_with_its_own_mask():
    gen = _Cond(text_dim=5, max_text_len=4)
    text = torch.randn(2, 3, 5)
    cond = Conditioning(text=text, text_mask=torch.tensor([[True, True, False], [True, True, True]]))
    cache = KVCache(1, 2, 1, 8, gen.prefix_len, 6)
    seen = {}
    gen.prefill_text(cond, cache, lambda x, slots, mask: seen.update(x=x, slots=slots, mask=mask))
    assert torch.equal(cache.prefix_mask, torch.tensor([[True, True, False, False], [True, True, True, False]]))
    assert seen["x"].shape == (2, 4, 8) and torch.equal(seen["slots"], torch.arange(4).expand(2, -1))
    torch.testing.assert_close(seen["x"][:, :3], gen.text_proj(text))  # padded slots project zeros
    torch.testing.assert_close(seen["x"][:, 3], gen.text_proj(torch.zeros(2, 5)))
    mask = seen["mask"]
    assert mask.shape == (2, 1, 4, 10) and not mask[..., 4:].any()  # no token slot is visible
    want0 = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(mask[0, 0, :, :4], want0)  # real slots plus itself
    called = []
    _Cond(num_classes=2).prefill_text(Conditioning(labels=torch.tensor([0])), cache, lambda *a: called.append(a))
    assert not called  # class models have no prefix


# --------------------------------------------------------------------------------------------------------------
# Norms, blocks, time embedding
# --------------------------------------------------------------------------------------------------------------
def test_weightless_rmsnorm_matches_xar_formula():
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    norm = RMSNorm(16, eps=1e-6, elementwise_affine=False)
    assert list(norm.parameters()) == []
    xf = x.float()  # the formula xAR had as ``_rms``
    want = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).type_as(x)
    assert torch.equal(norm(x), want)
    affine = RMSNorm(16)
    with torch.no_grad():
        affine.weight.uniform_()
    torch.testing.assert_close(affine(x.float()), RMSNorm(16, elementwise_affine=False)(x.float()) * affine.weight)


def test_vit_block_keeps_titok_keys_and_applies_dropout_only_in_training():
    block = ViTBlock(16, 2, eps=1e-6, attn_dropout=0.5, dropout=0.5)
    assert {k for k in block.state_dict() if k.startswith("mlp")} == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
                                                                    "mlp.2.bias"}
    assert block.norm1.eps == 1e-6 and block.attn.attn_dropout == 0.5
    x = torch.randn(2, 6, 16)
    block.eval()
    assert torch.equal(block(x), block(x))
    block.train()
    assert not torch.equal(block(x), block(x))


def test_attention_dropout_is_off_in_eval():
    drop, plain = Attention(16, 2, attn_dropout=0.9), Attention(16, 2)
    plain.load_state_dict(drop.state_dict())
    x = torch.randn(1, 4, 16)
    assert torch.equal(drop.eval()(x), plain.eval()(x))
    assert not torch.equal(drop.train()(x), plain(x))


def test_xar_time_embedding_from_diffusers_matches_the_official_sinusoid():
    emb = TimestepEmbedding(32, freq_dim=16)
    t = torch.rand(3, 4)
    steps = (t.float() * 1000).long().float()  # the formula xAR had inline: floor(1000 t), [cos, sin]
    freqs = torch.exp(-math.log(10000.0) * torch.arange(8, dtype=torch.float32) / 8)
    args = steps[..., None] * freqs
    assert torch.equal(emb(t), nn.Sequential.forward(emb.mlp, torch.cat([args.cos(), args.sin()], dim=-1)))


# --------------------------------------------------------------------------------------------------------------
# Shipped generators keep loading (their safetensors keys are the pre-consolidation names)
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["default", "xar"])
def test_shipped_generators_load(name):
    gen = vistok.from_pretrained(ASSETS / name / "generator")
    assert gen.text_dim > 0 and gen.text_proj is not None and gen.prefix_len > 0
    cond = Conditioning(text=torch.randn(1, 3, gen.text_dim))
    cache = gen.new_cache(cond)
    assert cache.prefix_mask.sum() == 3 and cache.start.shape == (1, gen.width)


# --------------------------------------------------------------------------------------------------------------
# Shared generator plumbing: token layouts, block runs, LlamaGen widths
# --------------------------------------------------------------------------------------------------------------
def test_token_grid_square_row_fallback_and_errors():
    from vistok.layers import token_grid

    assert token_grid(16, None) == (4, 4) and token_grid(32, None, row_fallback=True) == (1, 32)
    assert token_grid(32, [8, 4]) == (8, 4) and token_grid(16, None, row_fallback=True) == (4, 4)
    with pytest.raises(ValueError, match="not a square grid: pass grid="):
        token_grid(32, None)
    with pytest.raises(ValueError, match=r"pos_grid \(4, 4\) does not hold seq_len=32"):
        token_grid(32, (4, 4), "pos_grid", row_fallback=True)


def test_run_blocks_numbers_cache_layers_from_first_layer():
    from vistok.layers import find_multiple, run_blocks

    calls = []

    class Rec(torch.nn.Module):
        def forward(self, x, mask, rope, cache, layer, slots, **extra):
            calls.append((layer, sorted(extra)))
            return x + 1

    out = run_blocks(torch.nn.ModuleList([Rec(), Rec()]), torch.zeros(1), first_layer=3, cond=None)
    assert out.item() == 2 and calls == [(3, ["cond"]), (4, ["cond"])]
    assert find_multiple(int(8 * 256 / 3), 64) == 704 and find_multiple(512, 256) == 512


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_cpu_attention_matches_sdpa(dtype):
    """``attend``'s explicit bf16/fp16 CPU path computes SDPA's law: against fp32 SDPA, within the dtype's rounding,
    for no mask, a causal bool mask, an additive float mask and a custom scale; values and input gradients."""
    import torch.nn.functional as F

    from vistok.layers.attention import attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 16, generator=g) for _ in range(3))
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    additive = torch.randn(7, 7, generator=g)
    for mask, scale in ((None, None), (causal, None), (additive, 0.3)):
        ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
        low_in = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        ref = F.scaled_dot_product_attention(*ref_in, attn_mask=mask, scale=scale)
        out = attend(*low_in, mask=mask, scale=scale)  # a float mask may stay fp32, as SDPA's callers pass it
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
        ref.backward(v)
        out.backward(v.to(dtype))
        for a, b in zip(low_in, ref_in):
            torch.testing.assert_close(a.grad.float(), b.grad, atol=6e-2, rtol=6e-2)
    # a broken control the tolerance catches: a softmax scale 10 % off
    wrong = attend(q.to(dtype), k.to(dtype), v.to(dtype), scale=1.1 * 16 ** -0.5).float()
    assert (wrong - F.scaled_dot_product_attention(q, k, v)).abs().max() > 3e-2
    # a row with every key masked averages the values instead of giving NaN
    none = torch.zeros(7, 7, dtype=torch.bool)
    torch.testing.assert_close(attend(q.to(dtype), k.to(dtype), v.to(dtype), mask=none).float(),
                               v.to(dtype).float().mean(-2, keepdim=True).expand_as(v), atol=2e-2, rtol=2e-2)
    # fp32 still goes through SDPA unchanged
    assert torch.equal(attend(q, k, v, mask=causal), F.scaled_dot_product_attention(q, k, v, attn_mask=causal))


def test_pixel_refiner_channels_last_path_keeps_the_output_and_layout():
    from vistok.layers.refine import PixelRefiner

    torch.manual_seed(0)
    ref = PixelRefiner(8, 1, 2)
    nn.init.normal_(ref.conv_out.weight, std=0.1)
    rgb, feats = torch.rand(3, 3, 12, 12), torch.randn(3, 2, 12, 12)
    out = ref(rgb, feats)
    assert out.is_contiguous()
    h = ref.conv_in(torch.cat([rgb, feats], 1))  # the same stack in the default layout, by hand
    h = h + ref.blocks[0](h)
    torch.testing.assert_close(out, rgb + ref.conv_out(torch.nn.functional.gelu(h)), atol=1e-5, rtol=1e-5)


def test_vit_block_queries_computes_the_last_rows_only():
    """``queries=n``: the last n rows of the full block's output (keys/values from every row), with a mask and RoPE;
    a block that ignored the option (or took the first rows) fails."""
    torch.manual_seed(0)
    blk = ViTBlock(32, 4).eval()
    x = torch.randn(2, 9, 32)
    mask = torch.rand(2, 1, 9, 9) > 0.3
    mask[..., 0] = True
    rope = (torch.randn(2, 9, 4).cos(), torch.randn(2, 9, 4).sin())
    for m, r in [(None, None), (mask, None), (mask, rope)]:
        full = blk(x, m, r)
        part = blk(x, m, r, queries=3)
        assert part.shape == (2, 3, 32)
        torch.testing.assert_close(part, full[:, -3:], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(part, full[:, :3], atol=1e-3)

