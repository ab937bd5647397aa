"""Contract tests over every registered preset, in a tiny configuration (timm-style)."""

import pytest
import torch

import vistok
from vistok.generators import ARGenerator, MARARGenerator, MARGenerator, NARGenerator, XARGenerator
from vistok.interfaces import Conditioning, Generator, MaskedGenerator, Tokenizer
from vistok.tokenizers import LARP, FlexTok, TiTok, VQTokenizer

TINY = {
    TiTok: dict(image_size=32, patch_size=8, width=32, depth=1, num_heads=2, num_latent_tokens=8,
                codebook_size=64, token_size=8),
    FlexTok: dict(image_size=16, patch_size=4, width=32, depth=1, head_dim=16, decoder_width=32, decoder_depth=1,
                  num_registers=8, num_steps=2),
    LARP: dict(image_size=16, num_frames=4, patch_size=8, temporal_patch_size=2, width=32, depth=1, num_heads=2,
               num_latent_tokens=8, codebook_size=64, token_size=8, prior_width=32, prior_depth=1, prior_num_heads=2,
               prior_max_len=8),
    VQTokenizer: dict(image_size=16, patch_size=2, channels=(32, 32), codebook_size=64, code_dim=4),
    ARGenerator: dict(vocab_size=64, seq_len=8, width=32, depth=1, num_heads=2, max_text_len=6),
    NARGenerator: dict(vocab_size=64, seq_len=16, grid=(4, 4), width=32, depth=1, num_heads=2, max_text_len=6),
    XARGenerator: dict(grid_size=4, cell_size=2, token_dim=4, width=32, depth=1, decoder_depth=1, num_heads=2,
                       max_text_len=6),
    MARGenerator: dict(token_dim=4, seq_len=8, encoder_width=32, encoder_depth=1, encoder_heads=2, decoder_width=32,
                       decoder_depth=1, decoder_heads=2, buffer_size=6, max_text_len=6, head_width=32, head_depth=1,
                       num_sampling_steps=4),
    MARARGenerator: dict(token_dim=4, seq_len=8, width=32, depth=1, num_heads=2, max_text_len=6, head_width=32,
                         head_depth=1, num_sampling_steps=4),
}


def _tiny(kind, name):
    from vistok.registry import _GENERATORS, _TOKENIZERS

    cls, preset = (_TOKENIZERS if kind == "tok" else _GENERATORS)[name]
    create = vistok.create_tokenizer if kind == "tok" else vistok.create_generator
    overrides = dict(TINY[cls])
    if cls is TiTok:
        # shrink the decoder too (full presets give it its own size), keep the preset's head and quantiser kind
        overrides.update(decoder_width=32, decoder_depth=1, decoder_num_heads=2)
        if preset.get("pixel_codebook_size"):
            overrides.update(pixel_codebook_size=16, pixel_code_dim=8, pixel_channels=(32, 32, 32, 32),
                             pixel_res_blocks=1)
        if "codebook_size" in preset and preset["codebook_size"] is None:
            overrides.pop("codebook_size")
    if cls is FlexTok and preset.get("vae"):  # a tiny random AutoencoderKL (f2, 4 channels) instead of the SD one
        overrides.update(patch_size=2, vae=dict(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                                                latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 2,
                                                up_block_types=("UpDecoderBlock2D",) * 2))
    return create(name, **overrides)


@pytest.mark.parametrize("name", vistok.list_tokenizers())
def test_tokenizer_contract(name):
    tok = _tiny("tok", name).eval()
    assert isinstance(tok, Tokenizer)
    frames = (tok.num_frames,) if hasattr(tok, "num_frames") else ()  # video tokenizers: (B, 3, T, H, W)
    x = torch.rand(2, 3, *frames, tok.image_size, tok.image_size)
    ids = tok.encode(x)
    if tok.codebook_size is None:  # continuous tokenizer: (B, N, D) floats
        assert ids.shape == (2, tok.num_tokens, tok.token_dim) and ids.is_floating_point()
    else:
        assert ids.shape == (2, tok.num_tokens) and ids.dtype == torch.long
        assert 0 <= int(ids.min()) and int(ids.max()) < tok.codebook_size
    y = tok.decode(ids)
    assert y.shape == x.shape and 0 <= float(y.min()) and float(y.max()) <= 1
    assert torch.equal(tok.encode(x), ids)  # deterministic eval
    out = tok.train()(x)
    assert torch.isfinite(out.loss) and out.reconstruction.shape[0] == 2


@pytest.mark.parametrize("name", vistok.list_generators())
def test_generator_contract(name):
    gen = _tiny("gen", name)
    assert isinstance(gen, Generator)
    b = 3
    if gen.num_classes:
        cond = Conditioning(labels=torch.randint(0, gen.num_classes, (b,)))
    elif gen.text_dim:
        cond = Conditioning(text=torch.randn(b, 5, gen.text_dim))
    else:
        cond = Conditioning(batch=b)
    if gen.kind == "continuous":  # (B, N, D) floats
        tokens = torch.randn(b, gen.seq_len, gen.token_dim)
    else:
        tokens = torch.randint(0, gen.vocab_size, (b, gen.seq_len))
    out = gen.train()(tokens, cond)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
    gen.eval()
    if isinstance(gen, MaskedGenerator):  # bidirectional: head conditions of every position from the known tokens
        logits = gen.predict(tokens, torch.rand(b, gen.seq_len) > 0.5, cond)[:, :4]
    else:
        logits = gen.step(tokens[:, :4], torch.arange(4).expand(b, -1), gen.new_cache(cond))
    if gen.kind == "discrete":
        width = gen.vocab_size
    else:  # diffusion-head models return the head's conditions, flow models the velocity itself
        width = gen.head.cond_dim if hasattr(gen, "head") else gen.token_dim
    assert logits.shape == (b, 4, width)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="available"):
        vistok.create_tokenizer("titok_xxl_typo")
    with pytest.raises(ValueError, match="available"):
        vistok.create_generator("nope")


def test_presets_listed():
    assert "titok_tiny" in vistok.list_tokenizers()
    assert "ar_tiny_t2i" in vistok.list_generators()


@pytest.mark.parametrize(("kind", "name"), [("tok", n) for n in vistok.list_tokenizers()]
                         + [("gen", n) for n in vistok.list_generators()])
def test_every_preset_saves_and_reloads(tmp_path, kind, name):
    """Every preset class is on the from_pretrained allow-list, its config is complete and JSON-ready, and its
    fresh weights pass the load-time checks (finite)."""
    import inspect
    import json

    model = _tiny(kind, name).eval()
    folder = vistok.save_pretrained(model, tmp_path / name)
    saved = json.loads((folder / "config.json").read_text())
    assert set(saved["kwargs"]) == set(inspect.signature(type(model).__init__).parameters) - {"self"}
    back = vistok.from_pretrained(folder, expect="tokenizer" if kind == "tok" else "generator")
    assert type(back) is type(model) and back.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_register_model_checks_its_argument():
    with pytest.raises(ValueError, match="kind"):
        vistok.registry.register_model(TiTok, "vae")
    with pytest.raises(TypeError, match="Configurable"):
        vistok.registry.register_model(torch.nn.Linear, "generator")
    assert "vistok.tokenizers.titok.TiTok" in vistok.registry.list_models()
