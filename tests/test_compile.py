"""The models' decoding ``step`` paths have no host syncs: they capture as one graph under ``torch.compile``
(``fullgraph=True`` fails on any graph break; the eager backend keeps the test fast and compiler-free), and give the
same outputs as eager mode.  Value checks that read tensors on the host run in eager mode only."""

import pytest
import torch
from conftest import tiny_ar

import vistok
from vistok.interfaces import Conditioning

pytestmark = pytest.mark.usefixtures("one_thread")


def _cases():
    cond = Conditioning(labels=torch.tensor([0, 1]))
    ar = tiny_ar(num_classes=2)
    nar = vistok.create_generator("nar_tiny_c2i", seq_len=16, width=32, depth=1, num_heads=2, num_classes=2)
    mar_ar = vistok.create_generator("mar_ar_tiny", token_dim=4, seq_len=8, width=32, depth=1, num_heads=2,
                                     num_classes=2, head_width=16, head_depth=1)
    xar = vistok.create_generator("xar_tiny", grid_size=4, cell_size=2, token_dim=4, width=32, depth=1,
                                  decoder_depth=1, num_heads=2, num_classes=2)
    pos = torch.arange(3).expand(2, -1)
    return {
        "ar": (ar.step, (torch.zeros(2, 3, dtype=torch.long), pos), ar, cond),
        "nar": (nar.step_heads, (torch.zeros(2, 3, dtype=torch.long), pos), nar, cond),
        "mar_ar": (mar_ar.step, (torch.randn(2, 3, 4), pos), mar_ar, cond),
        "xar": (xar.step, (torch.randn(2, 4, 4), torch.arange(4).expand(2, -1)), xar, cond),
    }


@pytest.mark.parametrize("name", ["ar", "nar", "mar_ar", "xar"])
@torch.no_grad()
def test_step_compiles_as_one_graph(name):
    fn, args, model, cond = _cases()[name]
    model.eval()
    eager = fn(*args, model.new_cache(cond))
    compiled = torch.compile(fn, backend="eager", fullgraph=True)(*args, model.new_cache(cond))
    for a, b in zip(eager if isinstance(eager, tuple) else (eager,), compiled if isinstance(compiled, tuple)
                    else (compiled,)):
        if a is not None:
            torch.testing.assert_close(a, b)


def test_eager_mode_still_checks_positions():
    model = tiny_ar(num_classes=2).eval()
    cache = model.new_cache(Conditioning(labels=torch.tensor([0])))
    with pytest.raises(ValueError, match="positions must be in"):
        model.step(torch.zeros(1, 1, dtype=torch.long), torch.full((1, 1), 99), cache)


# -- vistok.compile_inference: Inductor with frozen weights (the real compiler, so the tests below take ~30 s) ------
@torch.no_grad()
def test_compile_inference_gives_eager_tokens_and_undoes():
    from conftest import peaked_ar

    from vistok.decoding import generate

    model = peaked_ar(seq_len=12)
    cond = Conditioning(labels=torch.tensor([0, 3]))
    eager = generate(model, cond, decoder="ar", temperature=0, cfg_scale=2.0).tokens
    spec = generate(model, cond, decoder="mcsjd", window=4, temperature=0, cfg_scale=2.0).tokens
    assert vistok.compile_inference(model) is model and vistok.compiling.is_compiled(model)
    assert "step" in model.__dict__  # the instance's step is the compiled one
    assert torch.equal(generate(model, cond, decoder="ar", temperature=0, cfg_scale=2.0).tokens, eager)
    assert torch.equal(generate(model, cond, decoder="mcsjd", window=4, temperature=0, cfg_scale=2.0).tokens, spec)
    with vistok.compiling.eager_mode(model):  # eager inside the block, compiled again after it
        assert "step" not in model.__dict__
        assert torch.equal(generate(model, cond, decoder="ar", temperature=0, cfg_scale=2.0).tokens, eager)
    assert "step" in model.__dict__
    vistok.uncompile(model)
    assert not vistok.compiling.is_compiled(model) and "step" not in model.__dict__
    # new weights: uncompile, change, compile again -> the new weights' tokens
    model.output.weight.mul_(-1)
    changed = generate(model, cond, decoder="ar", temperature=0, cfg_scale=2.0).tokens
    assert not torch.equal(changed, eager)
    vistok.compile_inference(model)
    assert torch.equal(generate(model, cond, decoder="ar", temperature=0, cfg_scale=2.0).tokens, changed)


@torch.no_grad()
def test_compile_inference_tokenizer_and_dotted_methods():
    from vistok.tokenizers.vq import VQTokenizer

    tok = VQTokenizer(image_size=8, channels=(32, 32), codebook_size=16, code_dim=4).eval()
    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ids, images = tok.encode(pixels), tok.decode(tok.encode(pixels))
    vistok.compile_inference(tok)
    assert torch.equal(tok.encode(pixels), ids)
    torch.testing.assert_close(tok.decode(ids), images, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="token ids must be in"):  # eager mode checks values again
        vistok.uncompile(tok).decode(torch.full((1, ids.shape[1]), 99))
    mar = vistok.create_generator("mar_ar_tiny", token_dim=4, seq_len=8, width=32, depth=1, num_heads=2,
                                  num_classes=2, head_width=16, head_depth=1).eval()
    x, t, z = torch.randn(3, 4), torch.tensor([1, 5, 9]), torch.randn(3, 32)
    ref = mar.head.net(x, t, z)
    vistok.compile_inference(mar, ["head.net"])
    assert "net" in mar.head.__dict__
    torch.testing.assert_close(mar.head.net(x, t, z), ref, atol=1e-5, rtol=1e-5)
    vistok.uncompile(mar)
    assert "net" not in mar.head.__dict__


def test_compile_inference_errors():
    with pytest.raises(ValueError, match="no inference_methods"):
        vistok.compile_inference(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="has no method 'nope'"):
        vistok.compile_inference(tiny_ar(), ["nope"])
