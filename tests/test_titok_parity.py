"""Parity of vistok's TiTok with bytedance/1d-tokenizer (fixture: random weights under the official keys).

Every size is read from the fixture's ``config.json``; tolerances follow the fixture README.
"""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vistok.hub import from_pretrained, load_official, save_pretrained
from vistok.registry import create_tokenizer
from vistok.tokenizers import titok
from vistok.tokenizers.titok import convert_titok_state_dict

TITOK = Path(__file__).resolve().parents[1].parent / "shared" / "parity" / "titok"
pytestmark = pytest.mark.skipif(not TITOK.is_dir(), reason=f"TiTok parity fixture folder {TITOK} is absent")


@pytest.fixture(scope="module")
def fixture_json():
    return json.loads((TITOK / "config.json").read_text())


@pytest.fixture(scope="module")
def io():
    return load_file(str(TITOK / "io.safetensors"))


@pytest.fixture(scope="module")
def official_state():
    return load_file(str(TITOK / "weights.safetensors"))


@pytest.fixture(scope="module")
def model():
    return load_official(TITOK)  # dispatches through vistok.hub.OFFICIAL_FAMILIES


def _tol(ref: torch.Tensor, rel: float = 1e-5) -> float:
    return rel * float(ref.max() - ref.min())


def _tokens_last(x: torch.Tensor) -> torch.Tensor:
    return x.squeeze(2).transpose(1, 2)  # official (b, d, 1, n) -> (b, n, d)


def test_config_comes_from_the_fixture(model, fixture_json):
    tree = fixture_json["config"]
    vq, pv = tree["model"]["vq_model"], tree["model"]["vq_model"]["pixel_vqgan"]
    assert model.image_size == tree["dataset"]["preprocessing"]["crop_size"]
    assert model.patch_size == vq["vit_enc_patch_size"]
    assert (model.num_tokens, model.codebook_size, model.token_dim) == (
        vq["num_latent_tokens"], vq["codebook_size"], vq["token_size"])
    assert model.encoder.pos_embed.shape[1] == vq["vit_enc_custom_size"]["width"]
    assert len(model.decoder.blocks) == vq["vit_dec_custom_size"]["num_layers"]
    assert model.decoder.blocks[0].attn.num_heads == vq["vit_dec_custom_size"]["num_heads"]
    assert model.decoder.pixel_codebook.shape == (pv["num_embeddings"], pv["z_channels"])
    assert len(model.decoder.pixel_decoder.up) == pv["num_resolutions"]
    assert sum(p.numel() for p in model.parameters()) == fixture_json["n_params"]


def test_encoder_latents(model, io):
    ours = model.encoder(io["image"], model.latent_tokens)
    ref = _tokens_last(io["enc_latent_prequant"])
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, rtol=0, atol=_tol(ref))


def test_token_ids_exact(model, io):
    ids = model.encode(io["image"])
    ref = io["token_ids"].squeeze(1)
    assert ids.dtype == torch.long and torch.equal(ids, ref)


def test_codes_and_decoder_logits(model, io):
    codes = model.quantizer.lookup(io["token_ids"].squeeze(1))
    assert torch.allclose(codes, _tokens_last(io["dec_z_from_ids"]), rtol=0, atol=1e-6)
    logits = model.decoder.pixel_logits(codes)
    ref = io["dec_titok_logits"]
    assert logits.shape == ref.shape
    assert torch.allclose(logits, ref, rtol=0, atol=_tol(ref))


def test_decoded_pixels(model, io):
    ids = io["token_ids"].squeeze(1)
    ref = io["decoded"]
    out = model.decode(ids, clamp=False)
    err = float((out - ref).abs().max())
    assert out.shape == ref.shape
    assert err <= _tol(ref), f"max abs error {err:.3g} vs range {float(ref.max() - ref.min()):.3g}"
    assert torch.allclose(model.decode(ids), io["decoded_clamped"], rtol=0, atol=_tol(ref))
    assert torch.allclose(model.reconstruct(io["image"]), io["decoded_clamped"], rtol=0, atol=_tol(ref))


def test_hub_layout_and_vistok_roundtrip(tmp_path, fixture_json, io, model):
    # The hub repos hold the OmegaConf tree at the top of config.json and the weights as model.safetensors.
    (tmp_path / "config.json").write_text(json.dumps(fixture_json["config"]))
    shutil.copy(TITOK / "weights.safetensors", tmp_path / "model.safetensors")
    again = load_official(tmp_path)
    assert torch.equal(again.encode(io["image"]), model.encode(io["image"]))
    # ... and the ported model saves and reloads in vistok's own format
    save_pretrained(again, tmp_path / "vistok")
    mine = from_pretrained(tmp_path / "vistok")
    ids = io["token_ids"].squeeze(1)
    assert torch.equal(mine.decode(ids, clamp=False), again.decode(ids, clamp=False))


def test_onedpiece_bin_with_config(tmp_path, fixture_json, official_state, io, model):
    tree = json.loads(json.dumps(fixture_json["config"]))
    tree["model"]["type"] = "one_d_piece"  # One-D-Piece's YAML marks its model type
    (tmp_path / "config.json").write_text(json.dumps(tree))
    torch.save(dict(official_state), tmp_path / "pytorch_model.bin")
    piece = load_official(tmp_path)
    assert piece.tail_drop
    ids = piece.encode(io["image"])
    assert torch.equal(ids, io["token_ids"].squeeze(1))
    assert torch.equal(piece.decode(ids, clamp=False), model.decode(ids, clamp=False))
    assert piece.decode(ids[:, :3]).shape == io["image"].shape  # prefix decoding


def test_onedpiece_bare_bin_infers_sizes(tmp_path, fixture_json, official_state, io):
    torch.save(dict(official_state), tmp_path / "pytorch_model.bin")  # as turing-motors/One-D-Piece-* ship it
    piece = load_official(tmp_path)
    vq = fixture_json["config"]["model"]["vq_model"]
    width = vq["vit_enc_custom_size"]["width"]
    assert piece.tail_drop and piece.image_size == fixture_json["config"]["dataset"]["preprocessing"]["crop_size"]
    assert piece.encoder.blocks[0].attn.num_heads == width // 64  # heads are 64 wide in every official size
    assert piece.config["pixel_channels"] == [vq["pixel_vqgan"]["hidden_channels"] * m  # config: JSON-ready lists
                                              for m in vq["pixel_vqgan"]["channel_mult"]]
    assert piece.decode(piece.encode(io["image"])[:, :2]).shape == io["image"].shape
    # a width whose head count cannot be inferred asks for the config
    state = dict(official_state)
    state["encoder.positional_embedding"] = torch.zeros(state["encoder.positional_embedding"].shape[0], 48)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="config.json"):
        load_official(tmp_path)


def test_missing_and_unknown_keys_are_listed(tmp_path, fixture_json, official_state):
    state = dict(official_state)
    state["decoder.text_guidance_proj.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match=r"decoder\.text_guidance_proj\.weight"):
        convert_titok_state_dict(state)
    state = {k: v for k, v in official_state.items() if k != "decoder.mask_token"}
    (tmp_path / "config.json").write_text(json.dumps(fixture_json))
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \(1\): \['decoder.mask_token'\]"):
        load_official(tmp_path)


def test_official_matches(tmp_path, fixture_json):
    assert titok.official_matches(fixture_json, TITOK)
    assert not titok.official_matches({"model": {"type": "flextok"}}, TITOK)
    assert not titok.official_matches(fixture_json, tmp_path)  # no weights
    save_pretrained(create_tokenizer("titok_tiny", spatial_init=False), tmp_path)
    assert not titok.official_matches(json.loads((tmp_path / "config.json").read_text()), tmp_path)
    with pytest.raises(ValueError, match="not an official release"):
        load_official(tmp_path)


def _official_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    rows = (re.fullmatch(r"(\S+)\s+\(([\d, ]*)\)", line) for line in lines)
    return {m.group(1): tuple(int(s) for s in m.group(2).replace(" ", "").split(",") if s) for m in rows}


@pytest.mark.parametrize("path", sorted(TITOK.glob("full_keys_titok_*.txt")), ids=lambda p: p.stem)
def test_full_size_keys_convert(path):
    preset = "titok_" + path.stem.removeprefix("full_keys_titok_")
    shapes = _official_shapes(path)
    official = {k: torch.zeros(s, device="meta") for k, s in shapes.items()}
    converted = convert_titok_state_dict(official)  # raises on any official key it does not consume
    assert len(converted) == len(official)
    with torch.device("meta"):
        ours = create_tokenizer(preset).state_dict()
    assert sorted(converted) == sorted(ours), set(converted) ^ set(ours)
    bad = {k: (tuple(v.shape), tuple(ours[k].shape)) for k, v in converted.items() if v.shape != ours[k].shape}
    assert not bad
    assert sum(v.numel() for v in ours.values()) == sum(v.numel() for v in official.values())
