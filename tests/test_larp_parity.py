"""Parity of vistok's LARP with hywang66/LARP (fixture: random weights under the official keys, prior included).

Every size is read from the fixture's ``config.json``, so another official variant runs through the same tests;
tolerances follow the fixture README (ids exact, latents 1e-5, decoded pixels 1e-4).
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vistok.hub import from_pretrained, load_official, save_pretrained
from vistok.registry import create_tokenizer
from vistok.tokenizers.larp import LARP, convert_larp_state_dict, larp_kwargs_from_official_config

LARP_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "parity" / "larp"
FULL_KEYS = LARP_DIR / "full_keys_larp_l_long_tokenizer.txt"
pytestmark = pytest.mark.skipif(not LARP_DIR.is_dir(), reason=f"LARP parity fixture folder {LARP_DIR} is absent")


@pytest.fixture(scope="module")
def fixture_json():
    return json.loads((LARP_DIR / "config.json").read_text())


@pytest.fixture(scope="module")
def io():
    return load_file(str(LARP_DIR / "io.safetensors"))


@pytest.fixture(scope="module")
def model():
    return load_official(LARP_DIR)  # dispatches through vistok.hub.OFFICIAL_FAMILIES


def _close(ours: torch.Tensor, ref: torch.Tensor, atol: float) -> None:
    assert ours.shape == ref.shape
    err = float((ours - ref).abs().max())
    assert err <= atol, f"max abs error {err:.3g} > {atol:g} (reference range {float(ref.min()):.3g}.." \
                        f"{float(ref.max()):.3g})"


def test_config_comes_from_the_fixture(model, fixture_json):
    args = fixture_json["args"]
    vq = args["bottleneck"]["args"]["regularizer"]["args"]
    assert isinstance(model, LARP) and not model.training
    assert (model.image_size, model.num_frames) == (args["input_size"], args["frame_num"])
    assert (model.patch_size, model.temporal_patch_size) == (args["patch_size"], args["temporal_patch_size"])
    assert (model.num_tokens, model.codebook_size, model.token_dim) == (
        args["bottleneck_token_num"], vq["codebook_size"], args["bottleneck"]["args"]["bottleneck_dim"])
    assert model.latent_queries.shape[1] == args["encoder_hidden_size"]
    assert len(model.encoder.blocks) == args["encoder_depth"] and len(model.decoder.blocks) == args["decoder_depth"]
    assert model.encoder.blocks[0].attn.num_heads == args["encoder_num_heads"]
    assert model.decoder.blocks[0].attn.num_heads == args["decoder_num_heads"]
    assert model.quantizer.temperature == vq["stochastic_temperature"]
    prior = fixture_json.get("fixture_prior_registry_additions", {}).get(args["prior_model"]["name"])
    if prior is not None:
        assert len(model.prior.blocks) == prior["n_layer"] and model.prior.max_len == prior["max_seq_len"]
        assert model.prior.proj_in.out_features == prior["n_embd"]
    assert model.prior_rounds == args["prior_model"]["n_rounds"]
    assert sum(v.numel() for v in model.state_dict().values()) == fixture_json["n_params_and_buffers"]


def test_sincos_buffers_are_regenerated_identically(model):
    fresh = LARP(**model.config)  # vistok computes the tables itself
    for name in ("patch_pos", "decoder_latent_pos", "decoder_patch_pos"):
        _close(getattr(fresh, name), getattr(model, name), 1e-6)


@torch.no_grad()
def test_encoder_and_bottleneck_latents(model, io):
    video = io["video"]
    _close(model.encoder_queries(video), io["encoder_query_out"], 1e-5)
    z = model.project(video)
    _close(z, io["bottleneck_projected_z"], 1e-5)
    _close(torch.nn.functional.normalize(z, dim=-1), io["bottleneck_z_l2norm"], 1e-5)


def test_token_ids_exact(model, io):
    ids = model.encode(io["video"])
    assert ids.dtype == torch.long and torch.equal(ids, io["token_ids"])


@torch.no_grad()
def test_codes_and_decoder(model, io):
    ids = io["token_ids"]
    codes = model.quantizer.lookup(ids)
    _close(codes, io["quantized_codes"], 1e-6)
    _close(model.code_out(codes), io["bottleneck_out_from_ids"], 1e-5)
    _close(model.code_out(codes), io["decoder_input_from_encode"], 1e-5)
    _close(model.decode(ids, clamp=False), io["decoded"], 1e-4)
    _close(model.decode(ids), io["decoded_clamped"], 1e-4)
    _close(model.reconstruct(io["video"]), io["decoded_clamped"], 1e-4)


@torch.no_grad()
def test_prior_teacher_forcing(model, io):
    codes = io["quantized_codes"]
    _close(model.prior.predict(codes), io["prior_pred"], 1e-5)
    logits = model.prior_logits(codes)
    _close(logits, io["prior_logits"], 1e-5)
    assert logits.shape[1] == model.num_tokens - 1  # targets would be token_ids[:, 1:]


def test_official_eval_default_samples(model, io):
    # The official eval mode samples unless set_vq_eval_deterministic(True); vistok makes that a constructor flag.
    sampling = LARP(**{**model.config, "deterministic_eval": False}).eval()
    sampling.load_state_dict(model.state_dict())
    runs = [sampling.encode(io["video"]) for _ in range(3)]
    assert any(not torch.equal(r, io["token_ids"]) for r in runs)
    assert torch.equal(model.encode(io["video"]), io["token_ids"])


def test_hub_layout_and_vistok_roundtrip(tmp_path, fixture_json, io, model):
    # PyTorchModelHubMixin folders hold the constructor kwargs at the top of config.json and model.safetensors.
    (tmp_path / "config.json").write_text(json.dumps(fixture_json["args"]))
    shutil.copy(LARP_DIR / "weights.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="unknown prior"):  # the fixture's tiny prior is not an official size
        load_official(tmp_path)
    args = json.loads(json.dumps(fixture_json["args"]))
    (tmp_path / "config.json").write_text(json.dumps({**args, "fixture_prior_registry_additions":
                                                      fixture_json["fixture_prior_registry_additions"]}))
    again = load_official(tmp_path)
    assert torch.equal(again.encode(io["video"]), io["token_ids"])
    save_pretrained(again, tmp_path / "vistok")
    mine = from_pretrained(tmp_path / "vistok")
    assert torch.equal(mine.decode(io["token_ids"], clamp=False), again.decode(io["token_ids"], clamp=False))


def test_unsupported_official_options_are_named(fixture_json):
    for key, value in (("learned_encoder_patch_pe", True), ("decoder_patch_size", 4),
                       ("transformer_name", "transformer_encoder_fused")):
        cfg = json.loads(json.dumps(fixture_json))
        cfg["args"][key] = value
        with pytest.raises(ValueError, match=key.split("_name")[0] if key == "transformer_name" else key):
            larp_kwargs_from_official_config(cfg)
    with pytest.raises(ValueError, match="not an official LARP config"):
        larp_kwargs_from_official_config({"model": {}})


@pytest.mark.skipif(not FULL_KEYS.is_file(), reason="full-size key list absent")
def test_every_full_size_official_key_is_consumed():
    """LARP-L-Long on the meta device: the official key list converts onto exactly vistok's state dict."""
    shapes = {}
    for line in FULL_KEYS.read_text().splitlines():
        key, shape = line.split(None, 1)
        shapes[key] = tuple(int(s) for s in shape.strip("() ").split(",") if s.strip())
    official = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    with torch.device("meta"):
        full = create_tokenizer("larp_l_long")
    own = full.state_dict()
    converted = convert_larp_state_dict(official)
    assert set(converted) == set(own)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in own.items()}
    assert sum(v.numel() for v in official.values()) == sum(v.numel() for v in own.values()) == 196_239_520
