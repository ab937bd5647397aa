import pytest
import torch
from conftest import tiny_titok

from vistok.hub import from_pretrained, save_pretrained


def test_encode_decode_shapes():
    tok = tiny_titok().eval()
    x = torch.rand(3, 3, 32, 32)
    ids = tok.encode(x)
    assert ids.shape == (3, 8)
    assert tok.decode(ids).shape == (3, 3, 32, 32)


def test_prefix_decoding_needs_tail_drop():
    plain = tiny_titok().eval()
    ids = plain.encode(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="tail-token drop"):
        plain.decode(ids[:, :4])
    piece = tiny_titok(tail_drop=True).eval()
    ids = piece.encode(torch.rand(2, 3, 32, 32))
    for k in (1, 4, 8):
        assert piece.decode(ids[:, :k]).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"prefix length must be in \[1, 8\]"):
        piece.decode(ids[:, :0])
    with pytest.raises(ValueError, match=r"prefix length must be in \[1, 8\]"):
        piece.decode(torch.cat([ids, ids], 1))


def test_tail_drop_training_decodes_a_prefix():
    piece = tiny_titok(tail_drop=True).train()
    lengths = {int(piece(torch.rand(2, 3, 32, 32)).extras["prefix_len"]) for _ in range(30)}
    assert len(lengths) > 3 and max(lengths) <= 8 and min(lengths) >= 1


def test_bad_inputs():
    tok = tiny_titok().eval()
    with pytest.raises(ValueError, match="32x32"):
        tok.encode(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tok.encode(torch.rand(1, 3, 32, 32) * 2)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 63\]"):
        tok.decode(torch.full((1, 8), 64))
    with pytest.raises(TypeError, match="integer"):
        tok.decode(torch.rand(1, 8))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        tiny_titok(image_size=30)


def test_vq_reseeds_dead_codes():
    tok = tiny_titok(reseed_every=2).train()
    before = tok.quantizer.embedding.weight.detach().clone()
    for _ in range(2):
        tok(torch.rand(2, 3, 32, 32))
    changed = (tok.quantizer.embedding.weight != before).any(1).sum()
    assert changed > 32  # 16 tokens can use at most 16 of the 64 codes; the unused ones were re-seeded


def test_legacy_readout_scrambles_like_a_raw_reshape():
    tok = tiny_titok(legacy_readout=True).eval()
    x = torch.rand(1, 3, 32, 32)
    enc = tok.encoder
    feats = {}
    enc.norm_post.register_forward_hook(lambda m, i, o: feats.setdefault("h", o))
    out = enc(x, tok.latent_tokens)
    h = feats["h"]  # (1, n, c)
    manual = enc.proj_out(h.reshape(1, h.shape[2], h.shape[1]).transpose(1, 2))
    assert torch.allclose(out, manual)
    assert not torch.allclose(out, enc.proj_out(h))


def test_save_load_roundtrip(tmp_path):
    tok = tiny_titok().eval()
    x = torch.rand(2, 3, 32, 32)
    save_pretrained(tok, tmp_path / "tok")
    again = from_pretrained(tmp_path / "tok")
    assert torch.equal(again.encode(x), tok.encode(x))
    assert torch.equal(again.decode(tok.encode(x)), tok.decode(tok.encode(x)))


def test_vae_latent_scale_gives_unit_variance_tokens_and_survives_save(tmp_path):
    torch.manual_seed(0)
    tok = tiny_titok(codebook_size=None, token_size=8).eval()
    x = torch.rand(16, 3, *([tok.image_size] * 2))
    before = tok.decode(tok.encode(x))
    raw_std = float(tok.encode(x).std())
    scale = tok.calibrate_latent_scale(x)
    assert scale == pytest.approx(1 / raw_std, rel=1e-5)
    assert float(tok.encode(x).std()) == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(tok.decode(tok.encode(x)), before, atol=1e-5, rtol=0)  # decode undoes the scale
    back = from_pretrained(save_pretrained(tok, tmp_path / "vae"))
    assert back.latent_scale == pytest.approx(scale)
    torch.testing.assert_close(back.encode(x), tok.encode(x))
    with pytest.raises(ValueError, match="VQ"):
        tiny_titok().calibrate_latent_scale(x)
    with pytest.raises(ValueError, match="latent_scale"):
        tiny_titok(codebook_size=None, latent_scale=0.0)


def test_code_tokens_expose_the_vq_code_vectors_as_continuous_tokens(tmp_path):
    torch.manual_seed(0)
    vq = tiny_titok().eval()
    x = torch.rand(8, 3, *([vq.image_size] * 2))
    folder = save_pretrained(vq, tmp_path / "vq")
    codes = from_pretrained(folder, code_tokens=True)
    assert (vq.kind, codes.kind) == ("discrete", "continuous")
    z = codes.encode(x)
    assert z.shape == (8, vq.num_tokens, vq.token_dim) and z.is_floating_point()
    torch.testing.assert_close(z, vq.quantizer.lookup(vq.encode(x)))  # exactly the ids' code vectors
    torch.testing.assert_close(codes.decode(z), vq.decode(vq.encode(x)))  # same pixels as the id path
    scale = codes.calibrate_latent_scale(x)
    assert float(codes.encode(x).std()) == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(codes.decode(codes.encode(x)), vq.decode(vq.encode(x)), atol=1e-5, rtol=0)
    # l2-normalised codes: decode puts vectors back on the unit sphere, so a rescaled vector decodes the same
    torch.testing.assert_close(codes.decode(3 * codes.encode(x)), codes.decode(codes.encode(x)), atol=1e-5, rtol=0)
    back = from_pretrained(save_pretrained(codes, tmp_path / "codes"))
    assert back.kind == "continuous" and back.latent_scale == pytest.approx(scale)
    with pytest.raises(TypeError, match="float latents"):
        codes.decode(vq.encode(x))
    with pytest.raises(ValueError, match="continuous already"):
        tiny_titok(codebook_size=None, code_tokens=True)
