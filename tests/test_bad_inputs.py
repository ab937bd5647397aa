"""Bad input across the public API and the CLIs, one table.

Each row: an id, a call on the shared tiny fixtures, the exception (or warning) it must raise, and a fragment of the
message that names the fix.  CLI rows run ``vistok-sample ... --debug`` (the exception itself, not the one-line
exit), with ``Pipeline.from_folder`` disabled: they must fail *before* anything is loaded.
"""

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import tiny_ar, tiny_titok

from vistok.decoding import SamplingArgs, generate
from vistok.hub import from_pretrained, save_pretrained
from vistok.interfaces import Conditioning
from vistok.sample import Pipeline, cli
from vistok.text import MiniLMTextEncoder, check_prompts

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class Ctx:
    tok: object  # VQ TiTok, 32x32 images, 8 ids over 64 codes
    vae: object  # continuous TiTok, latents (B, 8, 4)
    gen_c: object  # class-conditional AR, 4 classes
    gen_t: object  # text-conditional AR, text (B, <=4, 8)
    text: MiniLMTextEncoder  # max_length 8
    root: Path  # scratch folder: pipelines (ok, corrupt), files, prompt files


def _pipeline(folder: Path, tok, gen) -> Path:
    Pipeline(tok, gen, None, {"top_k": 10}).save(folder)
    return folder


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    tok = tiny_titok(codebook_size=64)
    gen_c = tiny_ar(vocab_size=64, seq_len=8, num_classes=4, depth=1)
    _pipeline(root / "ok", tok, gen_c)
    for part, name, data in [("generator", "config.json", b"{not json"), ("generator", "model.safetensors", b"junk"),
                             ("tokenizer", "model.safetensors", None)]:
        bad = _pipeline(root / f"bad_{part}_{name}", tok, gen_c)
        path = bad / part / name
        path.write_bytes(data if data is not None else path.read_bytes()[:100])  # None: truncated weights
    (root / "bad_json").mkdir()
    (root / "bad_json" / "pipeline.json").write_text("{'sampling': 1")
    (root / "list_json").mkdir()
    (root / "list_json" / "pipeline.json").write_text("[1, 2]")
    (root / "a_file.txt").write_text("not a folder")
    (root / "empty.txt").write_text("\n  \n")
    (root / "latin1.txt").write_bytes("un cercle rouge \xe9\n".encode("latin-1"))
    (root / "folder").mkdir()
    (root / "folder.png").mkdir()
    (root / "other_run").mkdir()
    (root / "other_run" / "run.json").write_text(json.dumps({"seed": 123}))
    return Ctx(tok=tok, vae=tiny_titok(codebook_size=None, token_size=4), gen_c=gen_c,
               gen_t=tiny_ar(vocab_size=64, seq_len=8, text_dim=8, max_text_len=4, depth=1),
               text=MiniLMTextEncoder(max_length=8), root=root)


def px(*shape, fill=None, dtype=torch.float32):
    x = torch.rand(*shape, dtype=dtype)
    if fill is not None:
        x.view(-1)[0] = fill
    return x


def ids(*shape, value=None, dtype=torch.long):
    x = torch.randint(0, 64, shape).to(dtype)
    if value is not None:
        x.view(-1)[0] = value
    return x


def labels(*values):
    return Conditioning(labels=torch.tensor(values))


def sample_cli(c, *args, model=None):
    """vistok-sample with --debug; a tiny pipeline folder unless ``model`` (folder name under ``c.root``)."""
    return cli([*args, "--model", str(c.root / (model or "ok")), "--debug"])


LONG = " ".join(["a red circle on the left next to a blue square"] * 4)

# (id, call(ctx), expected exception or warning, message fragment naming the fix)
ROWS = [
    # -- pixels -> TiTok.encode: shapes, dtypes, ranges, NaN/inf, empty batches
    ("pixels-3d", lambda c: c.tok.encode(px(3, 32, 32)), ValueError, "pixels[None]"),
    ("pixels-channels-last", lambda c: c.tok.encode(px(2, 32, 32, 3)), ValueError, "permute(0, 3, 1, 2)"),
    ("pixels-gray", lambda c: c.tok.encode(px(2, 1, 32, 32)), ValueError, "3 channels"),
    ("pixels-video-to-image-model", lambda c: c.tok.encode(px(1, 3, 2, 32, 32)), ValueError, "(B, 3, H, W)"),
    ("pixels-wrong-size", lambda c: c.tok.encode(px(2, 3, 16, 16)), ValueError, "interpolate"),
    ("pixels-minus1-1", lambda c: c.tok.encode(px(2, 3, 32, 32) * 2 - 1), ValueError, "(pixels + 1) / 2"),
    ("pixels-0-255", lambda c: c.tok.encode(px(2, 3, 32, 32) * 255), ValueError, "pixels / 255"),
    ("pixels-uint8", lambda c: c.tok.encode(px(2, 3, 32, 32).mul(255).byte()), TypeError, "pixels.float() / 255"),
    ("pixels-int64", lambda c: c.tok.encode(px(2, 3, 32, 32).long()), TypeError, "pixels.float()"),
    ("pixels-list", lambda c: c.tok.encode([[0.5]]), TypeError, "torch.Tensor"),
    ("pixels-nan", lambda c: c.tok.encode(px(2, 3, 32, 32, fill=math.nan)), ValueError, "nan_to_num"),
    ("pixels-inf", lambda c: c.tok.encode(px(2, 3, 32, 32, fill=math.inf)), ValueError, "NaN/inf"),
    ("pixels-neg-inf-fp16", lambda c: c.tok.encode(px(2, 3, 32, 32, fill=-math.inf, dtype=torch.float16)),
     ValueError, "nan_to_num"),
    ("pixels-empty-batch", lambda c: c.tok.encode(px(0, 3, 32, 32)), ValueError, "empty batch"),
    ("pixels-training-forward-nan", lambda c: c.tok(px(1, 3, 32, 32, fill=math.nan)), ValueError, "nan_to_num"),
    # -- token ids -> TiTok.decode
    ("ids-float", lambda c: c.tok.decode(ids(2, 8).float()), TypeError, ".long()"),
    ("ids-bool", lambda c: c.tok.decode(ids(2, 8) > 30), TypeError, ".long()"),
    ("ids-list", lambda c: c.tok.decode([[1, 2]]), TypeError, "torch.Tensor"),
    ("ids-too-large", lambda c: c.tok.decode(ids(2, 8, value=64)), ValueError, "[0, 63]"),
    ("ids-negative", lambda c: c.tok.decode(ids(2, 8, value=-1)), ValueError, "[0, 63]"),
    ("ids-1d", lambda c: c.tok.decode(ids(8)), ValueError, "tokens[None]"),
    ("ids-prefix-without-tail-drop", lambda c: c.tok.decode(ids(2, 5)), ValueError, "tail-token drop"),
    ("ids-empty-batch", lambda c: c.tok.decode(ids(0, 8)), ValueError, "empty batch"),
    # -- continuous latents -> TiTok.decode
    ("latents-ids-to-vae", lambda c: c.vae.decode(ids(2, 8)), TypeError, "float latents"),
    ("latents-wrong-dim", lambda c: c.vae.decode(torch.randn(2, 8, 5)), ValueError, "(B, N, 4)"),
    ("latents-nan", lambda c: c.vae.decode(torch.randn(2, 8, 4).index_fill(0, torch.tensor([1]), math.nan)),
     ValueError, "nan_to_num"),
    ("latents-empty-batch", lambda c: c.vae.decode(torch.randn(0, 8, 4)), ValueError, "empty batch"),
    # -- Conditioning (types and shapes at construction; values when a generator checks it)
    ("cond-float-labels", lambda c: Conditioning(labels=torch.tensor([1.0, 2.0])), TypeError, ".long()"),
    ("cond-bool-labels", lambda c: Conditioning(labels=torch.tensor([True])), TypeError, ".long()"),
    ("cond-2d-labels", lambda c: Conditioning(labels=torch.zeros(2, 1, dtype=torch.long)), ValueError, "(B,)"),
    ("cond-empty-labels", lambda c: Conditioning(labels=torch.zeros(0, dtype=torch.long)), ValueError, "empty batch"),
    ("cond-batch-zero", lambda c: Conditioning(batch=0), ValueError, "empty batch"),
    ("cond-batch-float", lambda c: Conditioning(batch=2.0), TypeError, "batch must be an int"),
    ("cond-int-text", lambda c: Conditioning(text=torch.zeros(2, 4, 8, dtype=torch.long)), TypeError,
     "MiniLMTextEncoder"),
    ("cond-2d-text", lambda c: Conditioning(text=torch.zeros(2, 8)), ValueError, "(B, T, D)"),
    ("cond-long-mask", lambda c: Conditioning(text=torch.zeros(2, 4, 8), text_mask=torch.ones(2, 4, dtype=torch.long)),
     TypeError, ".bool()"),
    ("cond-mask-shape", lambda c: Conditioning(text=torch.zeros(2, 4, 8), text_mask=torch.ones(2, 3, dtype=torch.bool)),
     ValueError, "text_mask must have shape"),
    ("cond-batch-mismatch", lambda c: Conditioning(labels=torch.tensor([0]), text=torch.zeros(2, 4, 8)),
     ValueError, "disagree"),
    ("cond-label-too-large", lambda c: generate(c.gen_c, labels(0, 4)), ValueError, "[-1, 3]"),
    ("cond-label-below-null", lambda c: generate(c.gen_c, labels(-2, 0)), ValueError, "-1 = null"),
    ("cond-missing-labels", lambda c: generate(c.gen_c, Conditioning(batch=2)), ValueError, "Conditioning(labels="),
    ("cond-labels-to-text-model", lambda c: generate(c.gen_t, labels(0)), ValueError, "text-conditional"),
    ("cond-text-nan", lambda c: generate(c.gen_t, Conditioning(text=torch.full((1, 4, 8), math.nan))),
     ValueError, "nan_to_num"),
    ("cond-text-too-long", lambda c: generate(c.gen_t, Conditioning(text=torch.zeros(1, 6, 8))), ValueError,
     "T <= 4"),
    # -- sampling options: SamplingArgs and generate
    ("temperature-nan", lambda c: generate(c.gen_c, labels(0), temperature=math.nan), ValueError, "finite"),
    ("temperature-inf", lambda c: generate(c.gen_c, labels(0), temperature=math.inf), ValueError, "finite"),
    ("temperature-negative", lambda c: SamplingArgs(temperature=-1.0), ValueError, "0 = greedy"),
    ("temperature-tiny", lambda c: SamplingArgs(temperature=1e-30), ValueError, "temperature=0"),
    ("temperature-str", lambda c: SamplingArgs(temperature="1"), TypeError, "must be a number"),
    ("top-p-nan", lambda c: generate(c.gen_c, labels(0), top_p=math.nan), ValueError, "finite"),
    ("top-p-zero", lambda c: SamplingArgs(top_p=0.0), ValueError, "(0, 1]"),
    ("top-p-above-1", lambda c: SamplingArgs(top_p=1.5), ValueError, "None or 1.0 = off"),
    ("top-k-negative", lambda c: SamplingArgs(top_k=-1), ValueError, "0 or None = off"),
    ("top-k-float", lambda c: SamplingArgs(top_k=2.5), TypeError, "must be an int"),
    ("num-samples-negative", lambda c: generate(c.gen_c, labels(0), num_samples=-1), ValueError, ">= 1"),
    ("num-samples-zero", lambda c: generate(c.gen_c, labels(0), num_samples=0), ValueError, ">= 1"),
    ("cfg-negative", lambda c: generate(c.gen_c, labels(0), cfg_scale=-1.0), ValueError, "1 = no guidance"),
    ("seed-float", lambda c: generate(c.gen_c, labels(0), seed=1.5), TypeError, "torch.Generator"),
    ("decoder-unknown", lambda c: generate(c.gen_c, labels(0), decoder="beam"), ValueError, "available"),
    # -- the pipeline API (vistok.sample.Pipeline): cfg_scale is checked there
    ("pipeline-cfg-nan", lambda c: Pipeline(c.tok, c.gen_t, None)(["x"], cfg_scale=math.nan), ValueError,
     "cfg_scale must be a finite"),
    ("pipeline-cfg-inf", lambda c: Pipeline(c.tok, c.gen_t, None)(["x"], cfg_scale=math.inf), ValueError,
     "cfg_scale must be a finite"),
    ("pipeline-num-samples-negative", lambda c: Pipeline(c.tok, c.gen_t, None)(["x"], num_samples=-2), ValueError,
     "num_samples must be >= 1"),
    ("pipeline-batch-size-zero", lambda c: Pipeline(c.tok, c.gen_t, None)(["x"], batch_size=0), ValueError,
     "batch_size must be >= 1"),
    ("pipeline-no-text-encoder", lambda c: Pipeline(c.tok, c.gen_t, None)(["x"]), ValueError, "Conditioning(labels"),
    # -- prompts and the text encoder
    ("prompt-too-long", lambda c: c.text([LONG, "a red circle"]), UserWarning, "truncated"),
    ("prompt-empty", lambda c: c.text(["a red circle", " "]), ValueError, "describe the image"),
    ("prompt-not-str", lambda c: check_prompts(["a red circle", 3]), TypeError, "strings"),
    ("prompts-none", lambda c: c.text([]), ValueError, "at least one prompt"),
    # -- folders of the wrong kind, corrupt weights and configs
    ("folder-missing", lambda c: from_pretrained(c.root / "nope"), FileNotFoundError, "nope"),
    ("folder-pipeline-as-model", lambda c: from_pretrained(c.root / "ok"), FileNotFoundError, "config.json"),
    ("folder-model-as-pipeline", lambda c: Pipeline.from_folder(c.root / "ok" / "tokenizer"), FileNotFoundError,
     "pipeline.json"),
    ("pipeline-json-corrupt", lambda c: Pipeline.from_folder(c.root / "bad_json"), ValueError, "pipeline.json"),
    ("pipeline-json-list", lambda c: Pipeline.from_folder(c.root / "list_json"), ValueError, "JSON object"),
    ("generator-config-corrupt", lambda c: Pipeline.from_folder(c.root / "bad_generator_config.json"), ValueError,
     "generator"),
    ("generator-weights-corrupt", lambda c: Pipeline.from_folder(c.root / "bad_generator_model.safetensors"),
     ValueError, "generator"),
    ("tokenizer-weights-truncated", lambda c: Pipeline.from_folder(c.root / "bad_tokenizer_model.safetensors"),
     ValueError, "tokenizer"),
    ("swap-generator-missing", lambda c: Pipeline(c.tok, c.gen_c, None).swap_generator(c.root / "nope"),
     FileNotFoundError, "nope"),
    ("save-non-vistok-model", lambda c: save_pretrained(torch.nn.Linear(2, 2), c.root / "lin"), TypeError,
     "Configurable"),
    # -- vistok-sample: everything below fails before the pipeline is loaded
    ("cli-temperature-nan", lambda c: sample_cli(c, "x", "--temperature", "nan"), ValueError, "finite"),
    ("cli-top-p-nan", lambda c: sample_cli(c, "x", "--top-p", "nan"), ValueError, "finite"),
    ("cli-top-k-negative", lambda c: sample_cli(c, "x", "--top-k", "-3"), ValueError, "top_k must be >= 0"),
    ("cli-cfg-inf", lambda c: sample_cli(c, "x", "--cfg-scale", "inf"), ValueError, "cfg_scale must be a finite"),
    ("cli-cfg-nan", lambda c: sample_cli(c, "x", "--cfg-scale", "nan"), ValueError, "cfg_scale must be a finite"),
    ("cli-num-samples-negative", lambda c: sample_cli(c, "x", "--num-samples", "-1"), ValueError, "num_samples"),
    ("cli-batch-size-zero", lambda c: sample_cli(c, "x", "--batch-size", "0"), ValueError, "batch_size must be >= 1"),
    ("cli-seed-negative", lambda c: sample_cli(c, "x", "--seed", "-1"), ValueError, "seed must be >= 0"),
    ("cli-scale-zero", lambda c: sample_cli(c, "x", "--scale", "0"), ValueError, "--scale must be >= 1"),
    ("cli-no-prompts", lambda c: sample_cli(c), ValueError, "--prompts-file"),
    ("cli-empty-prompt", lambda c: sample_cli(c, "  "), ValueError, "describe the image"),
    ("cli-prompts-and-file", lambda c: sample_cli(c, "x", "--prompts-file", str(c.root / "empty.txt")), ValueError,
     "not both"),
    ("cli-prompts-file-missing", lambda c: sample_cli(c, "--prompts-file", str(c.root / "nope.txt")),
     FileNotFoundError, "one prompt per line"),
    ("cli-prompts-file-is-dir", lambda c: sample_cli(c, "--prompts-file", str(c.root / "folder")), FileNotFoundError,
     "is a directory"),
    ("cli-prompts-file-blank", lambda c: sample_cli(c, "--prompts-file", str(c.root / "empty.txt")), ValueError,
     "one prompt per line"),
    ("cli-prompts-file-latin1", lambda c: sample_cli(c, "--prompts-file", str(c.root / "latin1.txt")), ValueError,
     "save it as UTF-8"),
    ("cli-model-not-pipeline", lambda c: sample_cli(c, "x", model="folder"), FileNotFoundError, "pipeline.json"),
    ("cli-generator-missing", lambda c: sample_cli(c, "x", "--generator", str(c.root / "nope")), FileNotFoundError,
     "save_pretrained"),
    ("cli-out-under-file", lambda c: sample_cli(c, "x", "--out", str(c.root / "a_file.txt" / "g.png")), ValueError,
     "writable folder"),
    ("cli-out-bad-extension", lambda c: sample_cli(c, "x", "--out", str(c.root / "grid.xyz")), ValueError, ".png"),
    ("cli-out-is-dir", lambda c: sample_cli(c, "x", "--out", str(c.root / "folder.png")), ValueError, "directory"),
    ("cli-grid-too-large", lambda c: sample_cli(c, "x", "--num-samples", "5000"), ValueError, "--out-dir"),
    ("cli-out-dir-is-file", lambda c: sample_cli(c, "x", "--out-dir", str(c.root / "a_file.txt")), ValueError,
     "give a folder"),
    ("cli-out-dir-under-file", lambda c: sample_cli(c, "x", "--out-dir", str(c.root / "a_file.txt" / "d")),
     ValueError, "writable folder"),
    ("cli-out-dir-other-run", lambda c: sample_cli(c, "x", "--out-dir", str(c.root / "other_run")), ValueError,
     "new --out-dir"),
]


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load a pipeline fails the test (validation must come first)."""

    def refuse(*a, **k):
        raise AssertionError("the pipeline was loaded before the input was validated")

    monkeypatch.setattr(Pipeline, "from_folder", classmethod(refuse))


def test_table_is_large_and_ids_unique():
    assert len(ROWS) >= 40 and len({r[0] for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("call, err, fragment", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input(ctx, request, call, err, fragment):
    if request.node.callspec.id.startswith("cli-"):
        request.getfixturevalue("no_loading")
    if issubclass(err, Warning):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call(ctx)
        hits = [w for w in caught if issubclass(w.category, err)]
        assert len(hits) == 1, [str(w.message) for w in caught]  # once per call, not once per prompt
        assert fragment in str(hits[0].message)
        return
    with pytest.raises(err) as info:
        call(ctx)
    assert fragment in str(info.value), str(info.value)


def test_accepted_dtypes(ctx):
    """The choice documented in check_pixels: any float pixel dtype is cast to the model's; any integer id dtype
    works (bool and float ids are refused by the table above)."""
    x = torch.rand(2, 3, 32, 32)
    ref = ctx.tok.encode(x)
    assert torch.equal(ctx.tok.encode(x.double()), ref)
    for dtype in (torch.float16, torch.bfloat16):
        out = ctx.tok.encode(x.to(dtype))
        assert out.dtype == torch.long and out.shape == ref.shape
    img = ctx.tok.decode(ref)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        assert torch.equal(ctx.tok.decode(ref.to(dtype)), img)
    assert ctx.vae.decode(torch.randn(2, 8, 4, dtype=torch.float64)).dtype == torch.float32


def test_cli_bad_input_is_one_line_without_traceback(ctx, capsys):
    with pytest.raises(SystemExit) as info:
        cli(["a red circle", "--temperature", "nan", "--model", str(ctx.root / "ok")])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith("vistok-sample: error: temperature must be a finite number")
    assert err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(SystemExit) as info:  # a multi-line message (hub's key listing) is folded into one line
        cli(["a red circle", "--model", str(ctx.root / "bad_generator_model.safetensors")])
    assert info.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_a_generator_on_another_device_than_the_model_is_refused():
    """Random draws happen on the model's device: a CPU torch.Generator for a GPU model would fail deep inside a
    decoder; it is refused up front, naming both devices (a "meta" model stands in for a GPU one here)."""
    from vistok import Conditioning

    gen = tiny_ar(num_classes=2).eval().to("meta")
    with pytest.raises(ValueError, match=r"torch.Generator is on cpu but the model on meta"):
        generate(gen, Conditioning(labels=torch.tensor([0])), seed=torch.Generator().manual_seed(0))
