"""Parity of vistok's FlexTok with apple/ml-flextok (fixture: random weights under the official keys, a small VAE).

Every size is read from the fixture's ``config.json``; tolerances follow the fixture README.  The full-size key
lists check that the converter consumes every official key of each released size, on the meta device.
"""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import vistok
from vistok.hub import from_pretrained, load_official, save_pretrained
from vistok.tokenizers import flextok
from vistok.tokenizers.flextok import FlexTok, convert_flextok_state_dict, sincos_table

FLEXTOK = Path(__file__).resolve().parents[1].parent / "shared" / "parity" / "flextok"
pytestmark = pytest.mark.skipif(not FLEXTOK.is_dir(), reason=f"FlexTok parity fixture folder {FLEXTOK} is absent")

# state-dict totals of the full-size key lists (fixture README)
OFFICIAL_TOTALS = {"flextok_d12_d12": 341_651_737, "flextok_d18_d18": 949_734_553, "flextok_d18_d28": 2_540_882_841}


@pytest.fixture(scope="module")
def fixture_json():
    return json.loads((FLEXTOK / "config.json").read_text())


@pytest.fixture(scope="module")
def io():
    return load_file(str(FLEXTOK / "io.safetensors"))


@pytest.fixture(scope="module")
def model():
    return load_official(FLEXTOK)  # dispatches through vistok.hub.OFFICIAL_FAMILIES


def _modules(fixture_json, side: str, cls: str) -> dict:
    found = [c for c in fixture_json["config"][side]["module_dict"].values() if c["_target_"].endswith("." + cls)]
    assert len(found) == 1
    return found[0]


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float = 1e-4) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def test_config_comes_from_the_fixture(model, fixture_json):
    cfg = fixture_json["config"]
    enc = _modules(fixture_json, "encoder", "FlexTransformer")
    dec = _modules(fixture_json, "decoder", "FlexTransformer")
    assert isinstance(model, FlexTok) and model.image_size == fixture_json["image_size"]
    assert model.num_tokens == _modules(fixture_json, "encoder", "Registers1D")["n_max"]
    assert model.quantizer.levels == tuple(cfg["regularizer"]["levels"])
    assert model.codebook_size == torch.tensor(cfg["regularizer"]["levels"]).prod()
    assert model.latent_channels == cfg["vae"]["latent_channels"] and model.vae_scale == cfg["vae"]["scaling_factor"]
    assert model.patch_size == _modules(fixture_json, "encoder", "PatchEmbedder")["patch_sizes"][0]
    assert (model.encoder.patch_embed.out_features, len(model.encoder.blocks)) == (enc["dim"], enc["depth"])
    assert (model.decoder.patch_embed.out_features, len(model.decoder.blocks)) == (dec["dim"], dec["depth"])
    assert model.decoder.blocks[0].attn.num_heads == dec["dim"] // dec["head_dim"]
    assert model.null_prob == _modules(fixture_json, "decoder", "LearnedNullCond")["dropout_prob"]
    assert model.vae.config.block_out_channels == tuple(fixture_json["vae_base_cfg_override"]["block_out_channels"])


def test_sincos_tables_are_the_official_ones(model):
    official = load_file(str(FLEXTOK / "weights.safetensors"))
    for side in ("enc_posemb_module", "dec_patches_posemb_module"):
        part = "encoder" if side.startswith("enc") else "decoder"
        table = official[f"{part}.module_dict.{side}.posembs"][0]  # (c, H, W)
        rebuilt = sincos_table(table.shape[1], table.shape[2], table.shape[0]).permute(2, 0, 1)
        _close(rebuilt, table, atol=1e-6)


def test_token_ids_are_exact(model, io):
    pixels = (io["image"] + 1) / 2  # the official code takes [-1, 1]
    with torch.no_grad():
        latents = model.to_latents(pixels)
        prequant = model.encoder(io["vae_latents"])
        codes, ids = model.quantizer(prequant)
    _close(latents, io["vae_latents"], atol=1e-4)
    _close(prequant, io["enc_registers_prequant"], atol=1e-5)
    assert torch.equal(codes, io["fsq_quants"])
    assert torch.equal(ids, io["token_ids"])
    assert torch.equal(model.encode(pixels), io["token_ids"])


def test_velocity_of_truncated_tokens(model, io):
    keep, n = io["keep_k"], model.num_tokens
    padded = torch.stack([F.pad(io["token_ids"][i, : keep[i]], (0, n - int(keep[i]))) for i in range(len(keep))])
    assert torch.equal(model.quantizer.ids_to_codes(padded), io["dec_quants_padded"])
    with torch.no_grad():
        registers = model.decoder.registers(io["dec_quants_padded"], keep)
        v, _ = model.decoder(io["flow_noise"], io["flow_timestep"], registers)
    _close(v, io["velocity_t1"], atol=1e-5)
    _close(io["flow_noise"] - v, io["latent_x0_1step"], atol=1e-5)


@pytest.mark.parametrize("name, kwargs", [
    ("decoded_1step", dict(num_steps=1)),
    ("decoded_2step_cfg3", dict(num_steps=2, guidance_scale=3.0)),
    ("decoded_2step_apg3", dict(num_steps=2, guidance_scale=3.0, apg=True)),
])
def test_fixed_noise_decode(model, io, name, kwargs):
    keep = io["keep_k"].tolist()
    out = torch.cat([model.decode(io["token_ids"][i : i + 1, :k], noise=io["flow_noise"][i : i + 1], clamp=False,
                                  **kwargs) for i, k in enumerate(keep)])
    _close(out * 2 - 1, io[name], atol=5e-4)


def test_generator_draws_the_official_noise(model, io):
    g = torch.Generator().manual_seed(2000)  # the official pipeline draws one (1, C, h, w) tensor per image
    out = model.decode(io["token_ids"][:1, : int(io["keep_k"][0])], num_steps=1, generator=g, clamp=False)
    _close(out * 2 - 1, io["decoded_1step"][:1], atol=5e-4)


def test_config_in_safetensors_metadata(tmp_path, fixture_json, io):
    """Official checkpoints may carry the config only in the safetensors header (python-literal strings)."""
    meta = {k: str(v) for k, v in fixture_json["config"].items()}
    meta.update(image_size="64", vae_base_cfg_override=str(fixture_json["vae_base_cfg_override"]))
    save_file(load_file(str(FLEXTOK / "weights.safetensors")), str(tmp_path / "model.safetensors"), metadata=meta)
    model = load_official(tmp_path)
    assert isinstance(model, FlexTok)
    assert torch.equal(model.encode((io["image"] + 1) / 2), io["token_ids"])


def test_vistok_roundtrip_keeps_the_ids(model, io, tmp_path):
    save_pretrained(model, tmp_path / "ft")
    again = from_pretrained(tmp_path / "ft")
    assert torch.equal(again.encode((io["image"] + 1) / 2), io["token_ids"])


def test_unknown_keys_are_listed(fixture_json):
    state = load_file(str(FLEXTOK / "weights.safetensors"))
    state["decoder.module_dict.dec_extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"no vistok counterpart \(1\): \['decoder.module_dict.dec_extra.weight'\]"):
        convert_flextok_state_dict(state, fixture_json)


def test_hub_vae_path_is_refused(tmp_path, fixture_json):
    config = json.loads(json.dumps(fixture_json))
    config["config"]["vae"]["hf_hub_path"] = "EPFL-VILAB/flextok_vae_c16"
    shutil.copy(FLEXTOK / "weights.safetensors", tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="set hf_hub_path to null"):
        flextok.load_official(tmp_path)


def _official_meta_state(name: str) -> dict[str, torch.Tensor]:
    state = {}
    for line in (FLEXTOK / f"full_keys_{name}.txt").read_text().splitlines():
        key, shape = line.split(None, 1)
        state[key] = torch.empty(tuple(int(s) for s in re.findall(r"\d+", shape)), device="meta")
    return state


@pytest.mark.parametrize("name", sorted(OFFICIAL_TOTALS))
def test_every_full_size_key_maps_onto_the_preset(name, fixture_json):
    official = _official_meta_state(name)
    assert sum(v.numel() for v in official.values()) == OFFICIAL_TOTALS[name]
    converted = convert_flextok_state_dict(official, fixture_json)  # module names as in the fixture config
    with torch.device("meta"):
        model = vistok.create_tokenizer(name)
    own = model.state_dict()
    assert set(converted) == set(own)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in own.items()}
    n_params = sum(p.numel() for p in model.parameters())  # the sincos tables are buffers here, parameters there
    assert abs(n_params - OFFICIAL_TOTALS[name]) <= 0.005 * OFFICIAL_TOTALS[name]
