"""NAR parity against the official ThisisBillhe/NAR code (fixture in shared/parity/nar): logits, heads, greedy
generations, the per-pass decode schedule, and the full-size key list.  Every size comes from the fixture."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vistok
from vistok.decoding import generate
from vistok.generators import NARGenerator
from vistok.generators.nar import convert_nar_state_dict
from vistok.hub import load_official
from vistok.interfaces import Conditioning

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "parity" / "nar"
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"NAR parity fixture not found at {FIXTURE}")
ATOL = 1e-5  # fixture README: KV-cache vs no-cache raw logits differ by < 3e-6


@pytest.fixture(scope="module")
def fx():
    from safetensors.torch import load_file

    cfg = json.loads((FIXTURE / "config.json").read_text())
    return cfg, load_file(str(FIXTURE / "io.safetensors")), load_official(FIXTURE)


def _cond(labels, num_classes):
    return Conditioning(labels=torch.where(labels == num_classes, -1, labels))  # official null id -> vistok's -1


def test_sizes_follow_the_official_config(fx):
    cfg, _, model = fx
    args = cfg["model_args"]
    assert isinstance(model, NARGenerator) and not model.training
    assert (model.vocab_size, model.seq_len, model.width, model.num_heads, model.num_classes) == (
        args["vocab_size"], args["block_size"], args["dim"], args["n_head"], args["num_classes"])
    assert (len(model.blocks), len(model.down_blocks)) == (args["n_layer"], args["medusa_attention_num"])
    assert model.blocks[0].attention_norm.eps == args["norm_eps"]


@pytest.mark.parametrize("suffix", ["", "_null"])
def test_teacher_forced_logits_and_heads(fx, suffix):
    cfg, io, model = fx
    n = model.num_classes
    labels = io["labels"] if not suffix else torch.full_like(io["labels"], n)
    cond = _cond(labels, n)
    out = model(io["idx"], cond)
    torch.testing.assert_close(out.logits, io[f"fwd_logits{suffix}"], atol=ATOL, rtol=0)
    if not suffix:
        torch.testing.assert_close(out.loss, io["fwd_loss"], atol=ATOL, rtol=0)
    # raw heads at every slot (start + all grid tokens)
    cache = model.new_cache(cond, max_tokens=model.seq_len + 1)
    b = labels.shape[0]
    right, down = model.step_heads(F.pad(io["idx"], (1, 0)), torch.arange(model.seq_len + 1).expand(b, -1), cache)
    torch.testing.assert_close(right, io[f"fwd_raw_R{suffix}"], atol=ATOL, rtol=0)
    torch.testing.assert_close(down, io[f"fwd_raw_B{suffix}"], atol=ATOL, rtol=0)


def test_proximity_mask_matches_the_official_train_mask(fx):
    _, io, model = fx
    s = model.seq_len + 1
    cache = model.new_cache(Conditioning(labels=torch.zeros(1, dtype=torch.long)), max_tokens=s)
    mask = model._proximity_mask(torch.arange(s)[None], cache)[0, 0]
    assert torch.equal(mask, io["train_mask"].bool())


@pytest.mark.parametrize("index", [0, 1])
def test_greedy_generation_and_decode_schedule(fx, index):
    cfg, io, model = fx
    spec = cfg["generation"][index]
    name, n = spec["name"], model.num_classes
    greedy = not spec["sample_logits"] or spec["top_k"] == 1
    assert greedy, "the fixture records greedy generations only"
    out = generate(model, _cond(io["labels"], n), decoder="nar", temperature=0, cfg_scale=spec["cfg_scale"],
                   cfg_interval=spec["cfg_interval"], record=True)
    assert torch.equal(out.tokens, io[f"{name}_tokens"])
    assert out.nfe == len(spec["steps"]) == 2 * int(model.seq_len ** 0.5) - 1
    assert out.extras["schedule"] == cfg["decode_schedule_grid_positions"]
    for rec, step in zip(out.extras["steps"], spec["steps"], strict=True):
        key = f"{name}_step{step['step']:02d}"
        assert rec["cells"] == step["output_grid_positions"]
        assert (rec["positions"] == io[f"{key}_input_pos"]).all()  # same slots for every sample
        if step["kind"] == "decode":  # the prefill's input is the class token (null class for CFG's half)
            assert torch.equal(rec["inputs"], io[f"{key}_in_tokens"])
        torch.testing.assert_close(rec["right"], io[f"{key}_raw_R"], atol=ATOL, rtol=0)
        torch.testing.assert_close(rec["down"], io[f"{key}_raw_B"], atol=ATOL, rtol=0)
        torch.testing.assert_close(rec["logits"], io[f"{key}_logits"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["gen_a", "gen_b"])
def test_no_cache_heads_on_the_generated_grid(fx, name):
    _, io, model = fx
    tokens = io[f"{name}_tokens"]
    b = tokens.shape[0]
    cache = model.new_cache(_cond(io["labels"], model.num_classes), max_tokens=model.seq_len + 1)
    right, down = model.step_heads(F.pad(tokens, (1, 0)), torch.arange(model.seq_len + 1).expand(b, -1), cache)
    torch.testing.assert_close(right, io[f"{name}_nocache_raw_R"], atol=ATOL, rtol=0)
    torch.testing.assert_close(down, io[f"{name}_nocache_raw_B"], atol=ATOL, rtol=0)


def test_full_size_key_list_converts_completely():
    rows = [line.split("\t") for line in (FIXTURE / "full_keys_nar_base.txt").read_text().splitlines() if line]
    shapes = {k: json.loads(s) for k, s, *_ in rows}
    with torch.device("meta"):
        model = vistok.create_generator("nar_b")
        zeros = {k: torch.zeros(s) for k, s in shapes.items()}
    converted = convert_nar_state_dict(zeros, depth=len(model.blocks), num_classes=model.num_classes)
    assert len(converted) == len(shapes)  # every official key consumed (unknown keys raise)
    own = model.state_dict()
    assert set(converted) == set(own)  # every vistok parameter filled
    assert all(tuple(converted[k].shape) == tuple(own[k].shape) for k in own)
