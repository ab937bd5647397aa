"""Official TiTok presets (built on the meta device), the MaskGIT-VQGAN head, the VAE variant, bad inputs."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_titok

import vistok
from vistok.interfaces import Tokenizer
from vistok.layers.vqgan import Conv2dSame, VQGANDecoder, VQGANResBlock

# Official parameter totals (shared/reference/tokenizers.md §1.2 and §2.1, counted on the official classes).
OFFICIAL_PARAMS = {
    "titok_s128": 83.67e6, "titok_b64": 204.8e6, "titok_l32": 641.1e6,
    "titok_bl64_vq8k": 390.0e6, "titok_sl256_vq8k": 330.3e6,
    "titok_ll32_vae_c16": 606.9e6, "titok_bl64_vae_c16": 389.4e6, "titok_bl128_vae_c16": 389.6e6,
    "onedpiece_s256": 83.87e6, "onedpiece_b256": 205.26e6, "onedpiece_l256": 641.74e6,
}


def _meta(name: str, **kw):
    with torch.device("meta"):
        return vistok.create_tokenizer(name, **kw)


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_official_parameter_counts(name):
    n = _count(_meta(name))
    ref = OFFICIAL_PARAMS[name]
    assert abs(n - ref) <= 0.005 * ref, f"{name}: {n:,} vs {ref:,.0f}"


def test_bl128_vq8k_adds_only_latent_tokens():
    # No published total; BL-128 differs from BL-64 by 64 latent tokens (+ their encoder and decoder positions).
    small, big = _meta("titok_bl64_vq8k"), _meta("titok_bl128_vq8k")
    enc_w, dec_w = big.encoder.pos_embed.shape[1], big.decoder.pos_embed.shape[1]
    assert _count(big) - _count(small) == 64 * (2 * enc_w + dec_w)


def test_preset_kinds():
    for name in ("titok_s128", "titok_bl64_vq8k", "onedpiece_s256"):
        tok = _meta(name)
        assert tok.kind == "discrete" and isinstance(tok, Tokenizer)
    vae = _meta("titok_bl64_vae_c16")
    assert vae.kind == "continuous" and vae.codebook_size is None and vae.quantizer is None
    assert vae.encoder.proj_out.out_features == 2 * vae.token_dim
    assert _meta("titok_s128").decoder.vqgan_head and not _meta("titok_sl256_vq8k").decoder.vqgan_head
    assert _meta("onedpiece_s256").tail_drop and not _meta("titok_s128").tail_drop
    assert set(OFFICIAL_PARAMS) | {"titok_bl128_vq8k"} <= set(vistok.list_tokenizers())


def test_wrong_resolution_for_the_preset():
    tok = _meta("titok_s128").eval()  # checks run before any compute, so a meta model is enough
    with pytest.raises(ValueError, match="256x256"):
        tok.encode(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tok.encode(torch.rand(1, 3, 256, 256) - 0.5)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 4095\]"):
        tok.decode(torch.full((1, 128), 4096))
    with pytest.raises(ValueError, match="exactly 128 tokens"):
        tok.decode(torch.zeros(1, 64, dtype=torch.long))
    piece = _meta("onedpiece_s256").eval()
    for k in (0, 257):
        with pytest.raises(ValueError, match=r"prefix length must be in \[1, 256\]"):
            piece.decode(torch.zeros(1, k, dtype=torch.long))


# -- tiny versions of each head / quantiser -----------------------------------------------------------------------
def _tiny_two_stage(**kw):
    return tiny_titok(legacy_readout=True, patch_size=4, pixel_codebook_size=16, pixel_code_dim=8,
                      pixel_channels=(32, 32, 32), pixel_res_blocks=1, **kw)


def test_vqgan_head_end_to_end():
    tok = _tiny_two_stage().eval()
    x = torch.rand(2, 3, 32, 32)
    ids = tok.encode(x)
    assert ids.shape == (2, 8)
    codes = tok.quantizer.lookup(ids)
    assert tok.decoder.pixel_logits(codes).shape == (2, 16, 8, 8)
    y = tok.decode(ids, clamp=False)
    assert y.shape == x.shape
    assert torch.equal(tok.decode(ids), y.clamp(0, 1))
    out = tok.train()(x)
    F.mse_loss(out.reconstruction, x).backward()
    for p in (tok.decoder.pixel_codebook, tok.decoder.pixel_decoder.conv_in.weight, tok.decoder.head[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_vqgan_head_checks():
    with pytest.raises(ValueError, match="must equal patch_size 8"):
        tiny_titok(pixel_codebook_size=16, pixel_channels=(32, 32, 32))
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny_titok(patch_size=4, pixel_codebook_size=16, pixel_channels=(32, 48, 32))
    with pytest.raises(ValueError, match="pixel_codebook_size"):
        tiny_titok().decoder.pixel_logits(torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match="codebook_size must be >= 1"):
        tiny_titok(codebook_size=0)


def test_vqgan_resblock_shortcut_projects_the_processed_states():
    blk = VQGANResBlock(32, 64).eval()
    x = torch.randn(1, 32, 5, 5)
    h = blk.conv2(F.silu(blk.norm2(blk.conv1(F.silu(blk.norm1(x))))))
    assert torch.allclose(blk(x), h + blk.nin_shortcut(h), atol=1e-6)
    same = VQGANResBlock(32, 32).eval()
    assert same.nin_shortcut is None
    h = same.conv2(F.silu(same.norm2(same.conv1(F.silu(same.norm1(x))))))
    assert torch.allclose(same(x), h + x, atol=1e-6)


def test_conv2d_same_padding_and_upscale():
    x = torch.randn(1, 2, 6, 6)
    odd = Conv2dSame(2, 3, 3)
    assert torch.allclose(odd(x), F.conv2d(x, odd.weight, odd.bias, padding=1), atol=1e-6)
    even = Conv2dSame(2, 3, 2)  # total pad 1: goes right/bottom
    assert torch.allclose(even(x), F.conv2d(F.pad(x, (0, 1, 0, 1)), even.weight, even.bias), atol=1e-6)
    dec = VQGANDecoder(z_channels=8, channels=(32, 64, 64), num_res_blocks=1)
    assert dec(torch.randn(1, 8, 3, 3)).shape == (1, 3, 12, 12)
    assert [type(m.upsample_conv).__name__ for m in dec.up] == ["NoneType", "Conv2dSame", "Conv2dSame"]


def test_vae_variant():
    tok = tiny_titok(codebook_size=None, token_size=6, legacy_readout=False).eval()
    assert tok.kind == "continuous" and isinstance(tok, Tokenizer)
    x = torch.rand(2, 3, 32, 32)
    z = tok.encode(x)
    assert z.shape == (2, 8, 6) and z.is_floating_point()
    assert torch.equal(tok.encode(x), z)  # eval encode = posterior mean, deterministic
    assert torch.equal(z, tok.encoder(x, tok.latent_tokens)[..., :6])
    assert tok.decode(z).shape == x.shape
    out = tok.train()(x)
    assert out.tokens.shape == (2, 8, 6) and not torch.allclose(out.tokens, z)  # training samples
    assert torch.isfinite(out.extras["kl"]) and torch.allclose(out.loss, tok.kl_weight * out.extras["kl"])
    out.loss.backward()
    with pytest.raises(TypeError, match="float latents"):
        tok.decode(torch.zeros(2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(B, N, 6\)"):
        tok.decode(torch.zeros(2, 8, 5))
    with pytest.raises(ValueError, match="exactly 8 tokens"):
        tok.decode(torch.zeros(2, 4, 6))
    piece = tiny_titok(codebook_size=None, token_size=6, tail_drop=True).eval()
    assert piece.decode(piece.encode(x)[:, :3]).shape == x.shape
    with pytest.raises(ValueError, match=r"prefix length must be in \[1, 8\]"):
        piece.decode(torch.zeros(2, 9, 6))


def test_euclidean_vq_without_l2_norm():
    tok = tiny_titok(l2_norm=False).eval()
    z = tok.encoder(torch.rand(2, 3, 32, 32), tok.latent_tokens)
    cb = tok.quantizer.embedding.weight
    brute = torch.cdist(z.reshape(-1, z.shape[-1]), cb).argmin(-1).reshape(2, 8)
    assert torch.equal(tok.quantizer.indices(z), brute)
    assert torch.equal(tok.quantizer.lookup(brute), cb[brute])  # raw (not normalised) codes
