"""The library on an accelerator: ``pytest tests/test_device.py --device cuda`` (these tests skip without
``--device``; ``benchmarks/device_check.sh`` runs them first on a lent GPU).

* Every registered tokenizer and generator preset, built tiny and random on the CPU and copied to the device,
  computes what it computes on the CPU there (fp32, TF32 off): ids / codes and pixels, a generator's per-pass
  outputs (``step``, or ``predict`` for masked generators); a training forward and backward give finite gradients.
* Every decoder samples there: the tokens stay on the device and a seed repeats them; AR's greedy tokens equal
  the CPU's.
* The exact decoders pass the network exactness test of ``tests/decoding/test_lossless.py`` with the model on the
  device, and the acceptance ratio x 1.5 fails the same test there (the test keeps its power).
* The shipped pipeline samples there (``Pipeline.to``), also compiled; the text encoder encodes there (prompts
  memoised before the move too).
* Every config in ``configs/`` trains one batch there through ``vistok fit`` (the multi-GPU recipes on one GPU,
  bf16-mixed as they are written); a resumed run's random state restores this device's stream.
* Decoding reads the device only where the loop needs it (host reads per pass, :mod:`host_reads`); ``vistok eval``
  runs there; ``from_pretrained(map_location=device)`` returns the model there, and a CPU ``torch.Generator`` for a
  device model is refused with a clear error.
"""

import copy
import inspect

import pytest
import torch
from exactness import joint_pvalue
from host_reads import HostReads
from test_cli import CONFIGS, fast_dev_run_args
from test_registry import _tiny

import vistok
from vistok.cli import main as vistok_main
from vistok.decoding import SamplingArgs, generate, jacobi
from vistok.interfaces import Conditioning, MaskedGenerator
from vistok.sample import Pipeline
from vistok.text import MiniLMTextEncoder

ATOL = 1e-4


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    err = float((a - b).abs().max()) if a.numel() else 0.0
    assert a.shape == b.shape and err <= ATOL * max(1.0, float(b.abs().max())), f"{what}: max |diff| {err:.2e}"


def _conditioning(gen, b: int) -> Conditioning:
    if gen.num_classes:
        return Conditioning(labels=torch.arange(b) % gen.num_classes)
    if gen.text_dim:
        return Conditioning(text=torch.randn(b, 5, gen.text_dim, generator=torch.Generator().manual_seed(b)))
    return Conditioning(batch=b)


@pytest.mark.parametrize("name", vistok.list_tokenizers())
@torch.no_grad()
def test_tokenizer_on_the_device_computes_what_it_computes_on_the_cpu(device, name):
    tok = _tiny("tok", name).eval()
    on = copy.deepcopy(tok).to(device)
    frames = (tok.num_frames,) if hasattr(tok, "num_frames") else ()
    x = torch.rand(2, 3, *frames, tok.image_size, tok.image_size, generator=torch.Generator().manual_seed(0))
    ids, ids_dev = tok.encode(x), on.encode(x.to(device))
    assert ids_dev.device.type == device.type
    if ids.is_floating_point():
        _close(ids_dev, ids, f"{name} encode")
    else:  # nearest-code search: a tie broken differently at float rounding may move a rare id
        assert float((ids_dev.cpu() == ids).float().mean()) >= 0.95, f"{name}: ids differ"
    noisy = "generator" in inspect.signature(tok.decode).parameters  # FlexTok: the same CPU-drawn noise on both
    kw = lambda: {"generator": torch.Generator().manual_seed(1)} if noisy else {}  # noqa: E731
    _close(on.decode(ids.to(device), **kw()), tok.decode(ids, **kw()), f"{name} decode")


@pytest.mark.parametrize("name", vistok.list_generators())
def test_generator_on_the_device_computes_what_it_computes_on_the_cpu(device, name):
    gen = _tiny("gen", name).eval()
    on = copy.deepcopy(gen).to(device)
    b, g = 3, torch.Generator().manual_seed(0)
    cond = _conditioning(gen, b)
    if gen.kind == "continuous":
        tokens = torch.randn(b, gen.seq_len, gen.token_dim, generator=g)
    else:
        tokens = torch.randint(0, gen.vocab_size, (b, gen.seq_len), generator=g)
    with torch.no_grad():
        if isinstance(gen, MaskedGenerator):
            mask = torch.rand(b, gen.seq_len, generator=g) > 0.5
            want, got = gen.predict(tokens, mask, cond), on.predict(tokens.to(device), mask.to(device),
                                                                   cond.to(device))
        else:
            pos = torch.arange(4).expand(b, -1)
            want = gen.step(tokens[:, :4], pos, gen.new_cache(cond))
            got = on.step(tokens[:, :4].to(device), pos.to(device), on.new_cache(cond.to(device)))
    assert got.device.type == device.type
    _close(got, want, f"{name} per-pass outputs")
    with torch.no_grad():  # a condition left on the CPU is moved by the model (as generate does)
        if isinstance(gen, MaskedGenerator):
            again = on.predict(tokens.to(device), mask.to(device), cond)
        else:
            again = on.step(tokens[:, :4].to(device), pos.to(device), on.new_cache(cond))
    _close(again, want, f"{name} per-pass outputs from a CPU condition")
    out = on.train()(tokens.to(device), cond.to(device))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grads = [p.grad for p in on.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(gr).all()) for gr in grads)


DECODER_RUNS = {  # preset -> decoders (with options) it is sampled by
    "ar_tiny_c2i": [("ar", {}), ("sjd", {"window": 4}), ("mcsjd", {"window": 4}),
                    ("mcsjd", {"window": 4, "coupling": "gumbel", "proactive": 2}), ("gsd", {"window": 4}),
                    ("lantern", {"window": 4}), ("pjd", {"window": 2, "grid": (2, 4)})],
    "nar_tiny_c2i": [("nar", {})],
    "mar_tiny": [("masked", {"num_iter": 2})],
    "mar_ar_tiny": [("ar", {}), ("csd", {"window": 3})],
    "xar_tiny": [("cells", {"num_steps": 2})],
}


@pytest.mark.parametrize("name,decoder,kw", [(n, d, kw) for n, runs in DECODER_RUNS.items() for d, kw in runs])
def test_every_decoder_samples_on_the_device(device, name, decoder, kw):
    gen = _tiny("gen", name).eval().to(device)
    cond = _conditioning(gen, 2)
    cfg = 2.0 if (gen.num_classes or gen.text_dim) and getattr(gen, "cond_dropout", 0) > 0 else 1.0
    first = generate(gen, cond, decoder=decoder, seed=3, cfg_scale=cfg, **kw)
    again = generate(gen, cond, decoder=decoder, seed=3, cfg_scale=cfg, **kw)
    assert first.tokens.device.type == device.type
    assert first.tokens.shape[:2] == (2, gen.seq_len)
    if first.tokens.is_floating_point():
        assert bool(torch.isfinite(first.tokens).all())
    else:
        assert 0 <= int(first.tokens.min()) and int(first.tokens.max()) < gen.vocab_size
    assert torch.equal(first.tokens, again.tokens), "the same seed gave other tokens on the device"


def test_greedy_ar_tokens_equal_the_cpus(device):
    gen = _tiny("gen", "ar_tiny_c2i").eval()
    torch.nn.init.normal_(gen.output.weight, std=1.0)  # well separated logits: no argmax tie at float rounding
    cond = _conditioning(gen, 4)
    want = generate(gen, cond, decoder="ar", temperature=0, cfg_scale=2.0).tokens
    got = generate(copy.deepcopy(gen).to(device), cond, decoder="ar", temperature=0, cfg_scale=2.0).tokens
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("decoder,kw,per_pass", [("ar", {}, 0), ("mcsjd", {"window": 4}, 2),
                                                  ("mcsjd", {"window": 4, "proactive": 2}, 2),
                                                  ("pjd", {"window": 2, "grid": (2, 4)}, 4)])
def test_decoding_reads_the_device_only_where_the_loop_needs_it(device, decoder, kw, per_pass):
    """AR reads nothing back per pass (the per-pass value checks skip on accelerators); the Jacobi loop reads two
    flags per pass (whether any sample is still open, whether new drafts are needed).  Three reads per call are
    allowed (the label check, the loop's last test).  tests/decoding/test_host_reads.py counts the same on the CPU."""
    gen = _tiny("gen", "ar_tiny_c2i").eval().to(device)  # 8 tokens: 8 AR passes
    cond = _conditioning(gen, 2)
    with HostReads(device_only=True) as reads:
        out = generate(gen, cond, decoder=decoder, seed=0, cfg_scale=2.0, top_k=8, **kw)
    assert reads.count <= per_pass * out.nfe + 3, (reads.count, out.nfe, dict(reads.sites))


# -- exactness on the device (the network test of tests/decoding/test_lossless.py) ----------------------------
V, N, SAMPLES, ALPHA = 3, 5, 8000, 1e-3
SETTING = dict(cfg_scale=2.0, temperature=1.3, top_k=2)


def _network():
    torch.manual_seed(0)
    gen = vistok.generators.ARGenerator(vocab_size=V, seq_len=N, num_classes=2, width=16, depth=1, num_heads=2,
                                        dropout=0.0).eval()
    torch.nn.init.normal_(gen.tok_embed.weight, std=1.0)
    torch.nn.init.normal_(gen.output.weight, std=0.5)
    return gen


@torch.no_grad()
def _law(gen, label: int) -> torch.Tensor:
    """Probability of each of the V**N sequences under the processed AR sampler, on the CPU."""
    seqs = torch.cartesian_prod(*[torch.arange(V)] * N)
    cond = Conditioning(labels=torch.full((len(seqs),), label))
    logits, null = gen(seqs, cond).logits, gen(seqs, cond.null()).logits
    probs = SamplingArgs(SETTING["temperature"], SETTING["top_k"]).probs(null + SETTING["cfg_scale"] * (logits - null))
    return probs.double().gather(-1, seqs[..., None])[..., 0].prod(-1)


def _pvalues(device, decoder: str, **kw) -> list[float]:
    gen = _network()
    out = generate(copy.deepcopy(gen).to(device), Conditioning(labels=torch.tensor([0, 1])), decoder=decoder,
                   num_samples=SAMPLES, seed=7, **SETTING, **kw)
    tokens = out.tokens.cpu()
    return [joint_pvalue(tokens[i * SAMPLES : (i + 1) * SAMPLES], _law(gen, i)) for i in (0, 1)]


@pytest.mark.parametrize("decoder,kw", [("ar", {}), ("sjd", {"window": 4}), ("mcsjd", {"window": 5, "init": "repeat"}),
                                        ("mcsjd", {"window": 4, "coupling": "gumbel", "proactive": 2})])
def test_exact_decoders_follow_the_law_on_the_device(device, decoder, kw):
    pvalues = _pvalues(device, decoder, **kw)
    assert min(pvalues) >= ALPHA, pvalues


def test_the_device_exactness_test_catches_a_broken_rule(device, monkeypatch):
    real = jacobi.accept_ratio
    monkeypatch.setattr(jacobi, "accept_ratio", lambda *a: 1.5 * real(*a))
    pvalues = _pvalues(device, "sjd", window=4)
    assert max(pvalues) < ALPHA, pvalues


# -- the shipped pipeline -------------------------------------------------------------------------------------
@pytest.mark.parametrize("compiled", [False, True])
def test_shipped_pipeline_samples_on_the_device(device, compiled):
    pipe = Pipeline.from_folder("default").to(device)
    assert pipe.device.type == device.type
    if compiled:
        pipe.compile()
    images, out = pipe(["a red circle", "a blue square"], num_samples=2, seed=0)
    assert images.device.type == device.type and images.shape[0] == 4
    assert 0 <= float(images.min()) and float(images.max()) <= 1 and out.tokens.shape[0] == 4


def test_text_encoder_on_the_device(device):
    enc = MiniLMTextEncoder(max_length=8)
    want = enc(["a red circle", "a blue square"])  # "a red circle" stays memoised from the CPU
    enc.to(device)
    got = enc(["a red circle", "a blue square", "a green star"])
    assert got.text.device.type == device.type and got.text_mask.device.type == device.type
    assert all(st.device.type == "cpu" for st, _, _ in enc._memo.values())  # the memo stays off the GPU
    enc._memo.clear()
    again = enc(["a red circle", "a blue square"])  # encoded on the device
    _close(again.text, want.text, "MiniLM states")
    assert torch.equal(again.text_mask.cpu(), want.text_mask) and torch.equal(got.text_mask[:2].cpu(), want.text_mask)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_fits_one_batch_on_the_device(device, config, tmp_path):
    vistok_main(fast_dev_run_args(config, tmp_path, accelerator="gpu" if device.type == "cuda" else device.type))
    assert (tmp_path / "export" / "model.safetensors").is_file()


def test_rng_state_round_trips_the_device_stream(device):
    """Resumed runs restore this device's random stream (and read the per-device lists older checkpoints kept)."""
    from vistok.training.callbacks import rng_state, set_rng_state

    state = rng_state()
    first = torch.rand(4, device=device)
    set_rng_state(state)
    assert torch.equal(torch.rand(4, device=device), first)
    if device.type == "cuda":
        set_rng_state({**state, "cuda": [state["cuda"]] * torch.cuda.device_count()})  # the older format
        assert torch.equal(torch.rand(4, device=device), first)


def test_loading_to_the_device_and_a_generator_on_another_device(device, tmp_path):
    from vistok.hub import from_pretrained, save_pretrained

    gen = _tiny("gen", "ar_tiny_c2i").eval()
    back = from_pretrained(save_pretrained(gen, tmp_path / "gen"), map_location=device)
    assert next(back.parameters()).device.type == device.type
    if device.type != "cpu":
        with pytest.raises(ValueError, match="torch.Generator is on cpu"):
            generate(back, _conditioning(gen, 1), seed=torch.Generator().manual_seed(0))


def test_vistok_eval_on_the_device(device, tmp_path):
    from pathlib import Path

    from vistok.eval_cli import main as eval_main

    folder = Path(__file__).parent / "assets" / "onedpiece_tiny"
    tok = eval_main(["tokenizer", str(folder), "--num-images", "4", "--batch", "2", "--no-fid", "--no-progress",
                     "--device", str(device), "--out", str(tmp_path / "tok.json")])
    assert tok["psnr"] > 10
    gen = eval_main(["generator", "default", "--num-prompts", "4", "--batch", "4", "--fid-reference", "0",
                     "--no-progress", "--device", str(device), "--out", str(tmp_path / "gen.json")])
    assert gen["nfe_per_image"] == 32
