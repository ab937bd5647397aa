"""The 2-D grid VQ tokenizer: raster-order tokens, locality, save/load, bad input."""

import pytest
import torch

import vistok
from vistok.hub import from_pretrained, save_pretrained
from vistok.tokenizers import VQTokenizer


def tiny(**kw) -> VQTokenizer:
    return VQTokenizer(**{**dict(image_size=32, patch_size=2, channels=(32, 32), codebook_size=64, code_dim=4), **kw})


def test_sizes_and_roundtrip_shapes():
    tok = tiny().eval()
    assert tok.factor == 4 and tok.grid == (8, 8) and tok.num_tokens == 64
    x = torch.rand(3, 3, 32, 32)
    ids = tok.encode(x)
    assert ids.shape == (3, 64) and ids.dtype == torch.long
    assert tok.decode(ids).shape == x.shape
    assert vistok.create_tokenizer("vq_f4_tiny").num_tokens == 256


def test_tokens_are_in_raster_order():
    """Token i * w + j is the code of latent cell (i, j): rows first, as 2-D decoders and the AR expect."""
    tok = tiny().eval()
    torch.nn.init.normal_(tok.quantizer.embedding.weight)  # spread codes so that cells get different ids
    x = torch.rand(2, 3, 32, 32)
    latents = tok.encoder(torch.nn.functional.pixel_unshuffle(x * 2 - 1, 2))  # (2, d, 8, 8)
    grid_ids = tok.quantizer.indices(latents.permute(0, 2, 3, 1))  # (2, 8, 8)
    assert grid_ids.unique().numel() > 4
    assert torch.equal(tok.encode(x).view(2, 8, 8), grid_ids)


def test_training_pass_and_save_load(tmp_path):
    tok = tiny(reseed_every=1)
    out = tok(torch.rand(2, 3, 32, 32))
    out.loss.backward()
    assert out.tokens.shape == (2, 64) and out.reconstruction.shape == (2, 3, 32, 32)
    save_pretrained(tok.eval(), tmp_path / "vq")
    again = from_pretrained(tmp_path / "vq")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(again.encode(x), tok.encode(x))
    assert again.config["patch_size"] == 2 and again.config["l2_norm"] is True  # defaults saved too


def test_bad_input():
    tok = tiny().eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny(channels=(48,))
    with pytest.raises(ValueError, match="multiple of the downsampling factor"):
        tiny(image_size=30)
    with pytest.raises(ValueError):
        tok.encode(torch.rand(1, 3, 16, 16))  # wrong size
    with pytest.raises(ValueError):
        tok.decode(torch.zeros(1, 10, dtype=torch.long))  # a prefix: a 2-D grid needs every token
    with pytest.raises(ValueError):
        tok.decode(torch.full((1, 64), 64))  # id outside the codebook
