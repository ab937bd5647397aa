"""Parity with the official LTH14/mar code (fixture: shared/parity/mar, see its README.md).

Every size comes from the fixture's config.json / io.safetensors.  Tolerances: forwards to fp32 rounding; the
diffusion constants come from diffusers' float32 betas, so the t = 999 loss term and the sampled latents carry a
~1e-5 relative offset (see vistok.generators.heads); sampled latents are compared relative to their magnitude.
"""

import json
from pathlib import Path

import pytest
import torch

from vistok.decoding.masked import mask_schedule, sample_masked
from vistok.generators.mar import convert_mar_state_dict, patchify, unpatchify
from vistok.hub import load_official, load_state_dict_strict
from vistok.interfaces import Conditioning

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "parity" / "mar"
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"MAR parity fixture not found at {FIXTURE}")


@pytest.fixture(scope="module")
def fx():
    from safetensors.torch import load_file

    config = json.loads((FIXTURE / "config.json").read_text())
    model = load_official(FIXTURE)
    return config, load_file(str(FIXTURE / "io.safetensors")), model


def _close(got, want, rtol=1e-5, atol=1e-5):
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


def _rel(got, want):
    return float((got - want).abs().max() / want.abs().max().clamp(min=1e-12))


def test_model_built_from_config(fx):
    config, io, model = fx
    args = config["constructor_args"]
    grid = args["img_size"] // args["vae_stride"] // args["patch_size"]
    assert model.seq_len == grid**2 == io["tokens"].shape[1]
    assert model.token_dim == args["vae_embed_dim"] * args["patch_size"] ** 2 == io["tokens"].shape[2]
    assert model.buffer_size == args["buffer_size"] and model.num_classes == args["class_num"]
    assert model.head.num_sampling_steps == int(args["num_sampling_steps"])
    assert model.diffusion_batch_mul == args["diffusion_batch_mul"] and not model.training


def test_patchify(fx):
    config, io, _ = fx
    p, c = config["constructor_args"]["patch_size"], config["constructor_args"]["vae_embed_dim"]
    _close(patchify(io["imgs"], p), io["tokens"], rtol=0, atol=0)
    _close(unpatchify(io["tokens"], c, p), io["imgs"], rtol=0, atol=0)


@torch.no_grad()
def test_encoder_decoder(fx):
    config, io, model = fx
    cond = Conditioning(labels=io["labels"])
    _close(model.condition_vector(cond), io["class_embedding"])
    mask = io["mask"].bool()
    for suffix, c in (("", cond), ("_uncond", cond.null())):
        x, idx, valid = model.encode(io["tokens"], mask, model.cond_buffer(c))
        _close(x, io["enc_out" + suffix])
        _close(model.decode(x, idx, valid), io["dec_out" + suffix])
    ones = torch.ones_like(mask)
    x, idx, valid = model.encode(torch.zeros_like(io["tokens"]), ones, model.cond_buffer(cond))
    _close(x, io["enc_out_allmasked"])
    _close(model.predict(torch.zeros_like(io["tokens"]), ones, cond), io["dec_out_allmasked"])


@torch.no_grad()
def test_diffloss_net_and_cfg(fx):
    _, io, model = fx
    head = model.head
    _close(head.net(io["dl_x"], io["dl_t"], io["dl_c"]), io["dl_net_out"])
    _close(head.time_mlp(io["dl_t"]), io["dl_t_embed"])  # sinusoid and MLP
    half = io["dl_x"].shape[0] // 2  # official: first half cond, second half null, x of the first half for both
    got = head.guided_net(io["dl_x"][:half], io["dl_t"], io["dl_c"][:half], io["dl_c"][half:],
                          float(io["dl_cfg_scale"]))
    _close(got, io["dl_net_out_cfg"][:half])


@torch.no_grad()
def test_diffusion_loss_terms(fx):
    _, io, model = fx
    head = model.head
    terms = head.loss_terms(io["loss_target"], io["loss_z"], io["loss_t"], io["loss_noise"])
    _close(terms["x_t"], io["loss_x_t"])
    _close(terms["mse"], io["loss_terms_mse"])
    _close(terms["vb"], io["loss_terms_vb"], rtol=5e-5, atol=1e-5)  # t = 999: float32 beta cap (1.3e-5 measured)
    _close(terms["loss"], io["loss_terms_loss"], rtol=5e-5, atol=1e-5)
    got = head.loss(io["loss_target"], io["loss_z"], io["loss_mask"], t=io["loss_t"], noise=io["loss_noise"])
    _close(got, io["loss_masked_mean"], rtol=5e-5, atol=1e-5)
    # the layout MAR's forward_loss builds from (tokens, dec_out, mask)
    mul = model.diffusion_batch_mul
    _close(io["tokens"].flatten(0, 1).repeat(mul, 1), io["loss_target"], rtol=0, atol=0)
    _close(io["mask"].flatten().repeat(mul), io["loss_mask"], rtol=0, atol=0)


@torch.no_grad()
def test_forward_loss_with_recorded_draws(fx):
    _, io, model = fx
    cond, mask = Conditioning(labels=io["labels"]), io["fwd_mask"].bool()
    n_masked = int(mask[0].sum())
    assert torch.equal(mask, torch.zeros_like(mask).scatter(1, io["fwd_orders"][:, :n_masked], True))
    z = model.predict(io["tokens"], mask, cond)
    loss = model.diffusion_loss(z, io["tokens"], mask, t=io["fwd_t"], noise=io["fwd_noise"])
    _close(loss, io["fwd_loss"], rtol=5e-5, atol=1e-5)


def _runs():
    if not FIXTURE.is_dir():
        return []
    return [r["name"] for r in json.loads((FIXTURE / "config.json").read_text())["sampling"]]


@pytest.mark.parametrize("name", _runs())
@torch.no_grad()
def test_sampling_with_recorded_orders_and_noise(fx, name):
    config, io, model = fx
    run = next(r for r in config["sampling"] if r["name"] == name)
    steps = model.head.num_sampling_steps
    assert all(len(calls) == steps + 1 for calls in run["rand_calls_per_step"])  # initial + one per DDPM step

    def recorded_noise(k, rows):  # the conditional half's draws; the t = 0 draw (scaled by 0) is not needed
        return torch.stack([io[f"{name}_step{k}_rand{j:02d}"][:rows] for j in range(steps)])

    calls = []
    sample = model.head.sample

    def spy(z, **kw):
        out = sample(z, **kw)
        calls.append((z, kw["z_null"], kw["cfg_scale"], out))
        return out

    model.head.sample = spy
    try:
        tokens, extras = sample_masked(model, Conditioning(labels=io["labels"]), num_iter=run["num_iter"],
                                       cfg_scale=run["cfg"], cfg_schedule=run["cfg_schedule"],
                                       temperature=run["temperature"], orders=io[f"{name}_orders"],
                                       head_noise=recorded_noise)
    finally:
        del model.head.sample
    assert torch.equal(extras["revealed"], io[f"{name}_pred_mask"].bool())
    left = mask_schedule(model.seq_len, run["num_iter"])
    assert (model.seq_len - extras["revealed"].sum(-1).cumsum(0)[:, 0]).tolist() == left
    assert len(calls) == run["num_iter"]
    for k, (z, z_null, scale, latent) in enumerate(calls):
        assert scale == pytest.approx(run["cfg_iter"][k])
        _close(z if z_null is None else torch.cat([z, z_null]), io[f"{name}_step{k}_z"], rtol=1e-5, atol=2e-5)
        want = io[f"{name}_step{k}_latent"][: z.shape[0]]
        assert _rel(latent, want) < 5e-5, (k, _rel(latent, want))  # measured ~7e-6 (diffusers' float32 betas)
    c, p = config["constructor_args"]["vae_embed_dim"], config["constructor_args"]["patch_size"]
    assert _rel(unpatchify(tokens, c, p), io[f"{name}_out"]) < 5e-5


def test_full_size_keys_all_consumed_and_filled():
    """Every key of the full MAR-B state dict converts, and the converted dict fills vistok's mar_b exactly."""
    import vistok

    path = next(FIXTURE.glob("full_keys_*.txt"))
    name = {"mar_base": "mar_b", "mar_large": "mar_l", "mar_huge": "mar_h"}[path.stem.removeprefix("full_keys_")]
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    shapes = {k: json.loads(shape) for k, shape, *_ in rows}
    official = {k: torch.zeros(shape, device="meta") for k, shape in shapes.items()}
    converted = convert_mar_state_dict(official)
    assert len(converted) == len(official)
    seq_len = shapes["diffusion_pos_embed_learned"][1]
    sizes = dict(seq_len=seq_len, buffer_size=shapes["encoder_pos_embed_learned"][1] - seq_len,
                 num_classes=shapes["class_emb.weight"][0], token_dim=shapes["z_proj.weight"][1],
                 head_width=shapes["diffloss.net.input_proj.weight"][0],
                 head_depth=len({k.split(".")[3] for k in shapes if k.startswith("diffloss.net.res_blocks.")}))
    with torch.device("meta"):
        model = vistok.create_generator(name, **sizes)
    load_state_dict_strict(model, converted, path.name)  # raises on missing / unexpected / mis-shaped keys
    assert set(converted) == set(model.state_dict())


def test_converter_rejects_unknown_keys():
    with pytest.raises(ValueError, match="not MAR keys"):
        convert_mar_state_dict({"fake_latent": torch.zeros(1, 4), "vae.encoder.conv_in.weight": torch.zeros(1)})
