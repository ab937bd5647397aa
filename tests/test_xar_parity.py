"""xAR parity with the official OliverRensu/xAR code, from the fixture in shared/parity/xar.

Every size, seed, step count and guidance scale is read from the fixture's config.json and io.safetensors.
"""

import json
from pathlib import Path

import pytest
import torch
from einops import rearrange

import vistok
from vistok.decoding.cells import decode_cells
from vistok.generators.xar import XARGenerator, convert_xar_state_dict
from vistok.hub import load_official, load_state_dict_strict
from vistok.interfaces import Conditioning

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "parity" / "xar"
pytestmark = pytest.mark.skipif(not (FIXTURES / "io.safetensors").is_file(),
                                reason=f"xAR parity fixture not found at {FIXTURES}")
ATOL_FWD, ATOL_SAMPLE = 1e-5, 1e-4  # fp32 single forwards; sampled outputs after 4 x num_steps calls


@pytest.fixture(scope="module")
def fx():
    from safetensors.torch import load_file

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = json.loads((FIXTURES / "config.json").read_text())
    yield dict(model=load_official(FIXTURES), io=load_file(str(FIXTURES / "io.safetensors")), config=config)
    torch.set_num_threads(threads)  # later tests (e.g. the resume-equals-straight run) compare across processes


def _cond(model: XARGenerator, labels: torch.Tensor) -> Conditioning:
    """Official labels (the null class is row ``num_classes``) -> vistok's (-1 = null)."""
    return Conditioning(labels=torch.where(labels == model.num_classes, -1, labels))


def _raster(imgs: torch.Tensor) -> torch.Tensor:
    return rearrange(imgs, "b c h w -> b (h w) c")


def test_sizes_come_from_the_config(fx):
    model, args = fx["model"], fx["config"]["constructor_args"]
    grid = args["img_size"] // args["vae_stride"] // args["patch_size"]
    assert model.grid_size == grid and model.num_cells == args["clusters"]
    assert (model.width, len(model.encoder_blocks), len(model.decoder_blocks), model.num_heads) == (
        args["encoder_embed_dim"], args["encoder_depth"], args["decoder_depth"], args["encoder_num_heads"])
    assert model.seq_len == fx["io"]["attn_mask"].shape[0] and not model.training


def test_block_causal_mask(fx):
    model, io = fx["model"], fx["io"]
    cache = model.new_cache(Conditioning(labels=torch.zeros(1, dtype=torch.long)))
    ours = model._attention_mask(torch.arange(model.seq_len)[None], cache)[0, 0]
    assert torch.equal(ours, io["attn_mask"] == 0)


def test_training_path(fx):
    model, io = fx["model"], fx["io"]
    b, g = io["labels"].shape[0], model.num_cells
    seen = {}
    hooks = [model.encoder_norm.register_forward_hook(lambda m, i, o: seen.update(enc=o)),
             model.token_proj.register_forward_hook(lambda m, i, o: seen.update(x_t=i[0]))]
    try:
        out = model(_raster(io["imgs"]), _cond(model, io["labels"]), t=io["tr_t"].view(g, b).T,
                    noise=model.to_raster(rearrange(io["tr_noise"], "g b k d -> b (g k) d")))
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(model.to_cell_major(_raster(io["imgs"])), rearrange(io["cells"], "b g k d -> b (g k) d"))
    torch.testing.assert_close(model.time_embed(io["tr_t"]), io["tr_time_embed"], atol=ATOL_FWD, rtol=0)
    torch.testing.assert_close(seen["x_t"], io["tr_model_input"], atol=ATOL_FWD, rtol=0)
    torch.testing.assert_close(model.to_cell_major(out.extras["target"]), io["tr_target"], atol=ATOL_FWD, rtol=0)
    torch.testing.assert_close(seen["enc"], io["tr_enc_out"], atol=ATOL_FWD, rtol=0)
    torch.testing.assert_close(model.to_cell_major(out.extras["velocity"]), io["tr_velocity"], atol=ATOL_FWD, rtol=0)
    torch.testing.assert_close(out.loss, io["tr_loss"], atol=ATOL_FWD, rtol=1e-5)


def test_training_loss_with_recorded_draws(fx):
    """The official forward's own draws (label-drop uniforms, logit-normal t, noise) injected into ours."""
    model, io, args = fx["model"], fx["io"], fx["config"]["constructor_args"]
    b, g = io["labels"].shape[0], model.num_cells
    assert model.cond_dropout == args["label_drop_prob"]
    labels = torch.where(io["fwd_label_drop_u"] < model.cond_dropout, -1, io["labels"])
    out = model(_raster(io["imgs"]), Conditioning(labels=labels), t=io["fwd_t"].view(g, b).T,
                noise=model.to_raster(rearrange(io["fwd_noise"], "g b k d -> b (g k) d")))
    torch.testing.assert_close(out.loss, io["fwd_loss"], atol=ATOL_FWD, rtol=1e-5)


@pytest.mark.parametrize("index", [0, 1])
def test_every_recorded_velocity_call(fx, index):
    """Replay each sampler call (CFG-doubled batch, first call of a cell feeds the previous clean cell) through
    one KV cache and compare the velocities."""
    model, io = fx["model"], fx["io"]
    run = fx["config"]["sampling"][index]
    k = model.cell_tokens
    cache = None
    for call in run["calls"]:
        name = f"{run['name']}_call{call['idx']:02d}"
        x, t = io[f"{name}_x"], io[f"{name}_t"]
        if cache is None:
            cache = model.new_cache(_cond(model, torch.tensor(call["label"])))
        end = (call["scale_index"] + 1) * k
        t_cells = t.view(x.shape[1] // k, x.shape[0]).T
        v = model.step(x, torch.arange(end - x.shape[1], end), cache, t_cells)[:, -k:]
        torch.testing.assert_close(v, io[f"{name}_out"], atol=ATOL_FWD, rtol=0, msg=name)


def test_uncached_call_equals_cached(fx):
    model, io = fx["model"], fx["io"]
    x, k = io["nocache_x"], model.cell_tokens
    t = io["nocache_t"].view(x.shape[1] // k, x.shape[0]).T
    v = model.step(x, torch.arange(x.shape[1]), model.new_cache(_cond(model, io["nocache_labels"])), t)[:, -k:]
    torch.testing.assert_close(v, io["nocache_out"], atol=ATOL_FWD, rtol=0)


@pytest.mark.parametrize("index", [0, 1])
def test_fixed_noise_generations(fx, index):
    model, io = fx["model"], fx["io"]
    run = fx["config"]["sampling"][index]
    rng = torch.Generator().manual_seed(run["seed"])  # the official run seeds torch's global CPU generator
    first = torch.randn(io[f"{run['name']}_rand00"].shape, generator=torch.Generator().manual_seed(run["seed"]))
    assert torch.equal(first, io[f"{run['name']}_rand00"])  # same stream as the recorded first draw
    tokens, nfe, extras = decode_cells(model, _cond(model, io["labels"]), num_steps=run["num_steps"],
                                       cfg_scale=run["cfg"], rng=rng)
    assert nfe == len(run["calls"]) and extras["cfg_scales"] == pytest.approx(run["per_cell_cfg"])
    torch.testing.assert_close(extras["cells"], io[f"{run['name']}_cells_out"], atol=ATOL_SAMPLE, rtol=0)
    torch.testing.assert_close(tokens, _raster(io[f"{run['name']}_out"]), atol=ATOL_SAMPLE, rtol=0)


def test_full_size_keys_all_consumed_and_filled():
    """xar_b against the key list of the official xar_base: every official key used (the mask and RoPE tables are
    recomputed, so dropped), every vistok parameter filled with the right shape."""
    rows = [line.split("\t") for line in (FIXTURES / "full_keys_xar_base.txt").read_text().splitlines() if line]
    official = {key: torch.zeros(json.loads(shape), device="meta") for key, shape, *_ in rows}
    converted = convert_xar_state_dict(official)  # raises on any official key it does not know
    with torch.device("meta"):
        model = vistok.create_generator("xar_b")
    load_state_dict_strict(model, converted, "full_keys_xar_base.txt")  # raises on missing/unexpected/mis-shaped
    used = {id(v) for v in converted.values()}
    dropped = sorted(k for k, v in official.items() if id(v) not in used)
    assert all(k == "mask" or ".attn.rope." in k for k in dropped), dropped
    assert len(converted) == len(official) - len(dropped) == len(model.state_dict())


def test_bare_release_folder_sizes_from_weight_shapes(tmp_path):
    """A folder holding only an official ``xAR-*.pth`` (HF OliverRen/xAR) is recognised and sized from its shapes."""
    from vistok.generators.xar import XAR_PRESETS, official_matches, xar_kwargs_from_official_weights

    rows = [line.split("\t") for line in (FIXTURES / "full_keys_xar_base.txt").read_text().splitlines() if line]
    official = {key: torch.zeros(json.loads(shape), device="meta") for key, shape, *_ in rows}
    kwargs = xar_kwargs_from_official_weights(official)
    assert {k: kwargs[k] for k in XAR_PRESETS["xar_b"]} == XAR_PRESETS["xar_b"]
    with torch.device("meta"):
        xar_b = vistok.create_generator("xar_b")
    assert (kwargs["grid_size"], kwargs["cell_size"]) == (xar_b.grid_size, xar_b.cell_size)
    (tmp_path / "xAR-B.pth").touch()
    assert official_matches({}, tmp_path) and not official_matches({}, tmp_path / "missing")
    assert not official_matches({"cls": "models.mar.MAR"}, FIXTURES)
