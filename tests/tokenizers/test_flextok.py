"""FlexTok on tiny random models: FSQ, the register mask, prefix decoding, the pluggable VAE, training, bad input."""

import pytest
import torch
from torch import Tensor

import vistok
from vistok import from_pretrained, save_pretrained
from vistok.interfaces import Tokenizer
from vistok.layers import FSQ
from vistok.tokenizers.flextok import FlexTok, prefix_causal_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> FlexTok:
    cfg = dict(image_size=16, patch_size=4, width=32, depth=2, head_dim=16, num_registers=8, num_steps=2)
    return FlexTok(**{**cfg, **kw})


def _trained_looking(model: FlexTok) -> FlexTok:
    """Random non-zero weights everywhere (the zero-init heads would make every output identical)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    return model.eval()


# -- FSQ ------------------------------------------------------------------------------------------------------------
def test_fsq_codebook_basis_and_roundtrip():
    fsq = FSQ((8, 8, 8, 5, 5, 5))
    assert fsq.codebook_size == 64_000 and fsq.dim == 6
    ids = torch.arange(64_000)
    codes = fsq.ids_to_codes(ids)
    assert torch.equal(fsq.codes_to_ids(codes), ids)
    assert len(torch.unique(codes, dim=0)) == 64_000
    # basis [1, 8, 64, 512, 2560, 12800]: the first channel varies fastest
    assert torch.equal(fsq.ids_to_codes(torch.tensor(1)) - fsq.ids_to_codes(torch.tensor(0)),
                       torch.tensor([0.25, 0, 0, 0, 0, 0]))
    assert torch.equal(fsq.ids_to_codes(torch.tensor(12_800))[5] - codes[0, 5], torch.tensor(0.5))
    # 8 levels: steps -4..3 (half-integer offset), normalised by 4; 5 levels: -2..2 by 2
    assert torch.equal(codes[0], torch.tensor([-1.0, -1, -1, -1, -1, -1]))
    assert torch.equal(codes[-1], torch.tensor([0.75, 0.75, 0.75, 1, 1, 1]))


def test_fsq_bounds_rounds_and_passes_gradients():
    fsq = FSQ((8, 5))
    z = torch.tensor([[0.0, 0.0], [40.0, 40.0], [-40.0, -40.0]], requires_grad=True)
    codes, ids = fsq(z)
    assert torch.equal(codes.detach(), torch.tensor([[0.0, 0.0], [0.75, 1.0], [-1.0, -1.0]]))
    assert torch.equal(ids, fsq.codes_to_ids(codes.detach()))
    codes.sum().backward()
    assert z.grad[0].abs().min() > 0  # straight-through: d bound / dz at 0


def test_fsq_rejects_wrong_width_and_levels():
    with pytest.raises(ValueError, match=r"takes \(\.\.\., 2\) inputs"):
        FSQ((8, 5))(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="levels must be integers >= 2"):
        FSQ((8, 1))


# -- architecture ---------------------------------------------------------------------------------------------------
def test_prefix_causal_mask():
    m = prefix_causal_mask(3, 2)
    assert m[:3, :3].all() and not m[:3, 3:].any()  # patches see patches only
    assert m[3:, :3].all()  # registers see every patch
    assert m[3, 3] and not m[3, 4] and m[4, 3] and m[4, 4]  # and earlier registers


def test_registers_are_causal_and_patches_ignore_them():
    model = _trained_looking(tiny())
    lat = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = model.encoder(lat)
        model.encoder.registers[5:].normal_()  # later registers change ...
        after = model.encoder(lat)
    assert torch.allclose(before[:, :5], after[:, :5], atol=1e-6)  # ... earlier outputs do not
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_decoder_registers_mask_the_tail_and_null_everything():
    model = _trained_looking(tiny())
    codes = model.quantizer.ids_to_codes(torch.randint(0, model.codebook_size, (2, 8)))
    regs = model.decoder.registers(codes, torch.tensor([3, 8]), torch.tensor([False, True]))
    assert torch.equal(regs[0, 3:], model.decoder.mask_token.expand(5, -1))
    assert not torch.equal(regs[0, 2], model.decoder.mask_token)
    assert torch.equal(regs[1], model.decoder.null_token.expand(8, -1))


def test_protocol_and_prefix_decoding_coarse_to_fine():
    model = _trained_looking(tiny())
    assert isinstance(model, Tokenizer) and model.kind == "discrete" and model.codebook_size == 64_000
    x = torch.rand(2, 3, 16, 16)
    ids = model.encode(x)
    assert ids.shape == (2, 8) and ids.dtype == torch.long
    noise = torch.randn(2, 3, 16, 16)
    outs = {k: model.decode(ids[:, :k], noise=noise) for k in (1, 2, 8)}
    for out in outs.values():
        assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert not torch.allclose(outs[1], outs[8]) and not torch.allclose(outs[2], outs[8])
    # the tail beyond k is the mask token whatever the ids there: k tokens decode like any longer id list cut to k
    other = torch.cat([ids[:, :2], torch.randint(0, 64_000, (2, 6))], dim=1)
    assert torch.equal(model.decode(other[:, :2], noise=noise), outs[2])


def test_generator_makes_decoding_reproducible():
    model = _trained_looking(tiny())
    ids = torch.randint(0, 64_000, (2, 8))
    a = model.decode(ids, generator=torch.Generator().manual_seed(0))
    b = model.decode(ids, generator=torch.Generator().manual_seed(0))
    c = model.decode(ids, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_guidance_changes_the_result():
    model = _trained_looking(tiny())
    ids, noise = torch.randint(0, 64_000, (1, 8)), torch.randn(1, 3, 16, 16)
    plain = model.decode(ids, noise=noise, clamp=False)
    cfg = model.decode(ids, noise=noise, guidance_scale=2.0, clamp=False)
    apg = model.decode(ids, noise=noise, guidance_scale=2.0, apg=True, clamp=False)
    assert not torch.allclose(plain, cfg) and not torch.allclose(cfg, apg)


def test_training_forward_flows_gradient_into_encoder_and_decoder():
    fresh = tiny()  # adaLN-zero / zero heads: at init only the output layers receive gradient
    fresh(torch.rand(2, 3, 16, 16)).loss.backward()
    assert fresh.decoder.out.weight.grad.abs().sum() > 0 and fresh.encoder.to_codes.weight.grad.abs().sum() == 0
    model = _trained_looking(tiny(nested_dropout="uniform")).train()
    out = model(torch.rand(4, 3, 16, 16), return_layer=0)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.reconstruction.shape == (4, 3, 16, 16) and out.tokens.shape == (4, 8)
    assert out.extras["hidden"].shape == (4, 16, 32) and ((out.extras["keep"] >= 1) & (out.extras["keep"] <= 8)).all()
    out.loss.backward()
    assert model.encoder.to_codes.weight.grad.abs().sum() > 0  # through FSQ's straight-through estimator
    assert model.decoder.out.weight.grad.abs().sum() > 0


def _oracle_decoder(model: FlexTok, x0: Tensor, sign: float = 1.0):
    """A decoder that knows the clean latent ``x0``: it outputs x0 itself ("x") or the velocity ``(x_t - x0) / t``
    that carries x_t straight to x0 ("v"); ``sign=-1`` is the broken control (velocity of the wrong sign)."""

    def forward(x_t, t, registers, return_layer=None):
        tt = t.view(-1, 1, 1, 1)
        if model.prediction == "x":
            return x0 + (1 - sign) * (x_t - x0), None  # sign=-1: predicts 2 x_t - x0
        return sign * (x_t - x0) / tt, None

    return forward


@pytest.mark.parametrize("prediction", ["v", "x"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sampler_carries_noise_to_x0_under_an_oracle(prediction, shift):
    """Training target and sampler agree: x_t = t noise + (1 - t) x0 with velocity noise - x0, integrated from t = 1
    down to 0 by the scheduler, lands on x0.  A sign or t-direction mismatch would not."""
    model = tiny(prediction=prediction, time_shift=shift, t_min=1e-6).eval()
    x0, noise = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randn(2, 3, 16, 16)
    ids = torch.randint(0, 64_000, (2, 8))
    model.decoder.forward = _oracle_decoder(model, x0)
    for steps in (1, 4, 7):
        out = model.decode_latents(ids, num_steps=steps, noise=noise)
        assert torch.allclose(out, x0, atol=1e-5), (steps, (out - x0).abs().max())
    model.decoder.forward = _oracle_decoder(model, x0, sign=-1.0)  # broken control: caught
    assert (model.decode_latents(ids, num_steps=4, noise=noise) - x0).abs().mean() > 0.1


@pytest.mark.parametrize("prediction", ["v", "x"])
@pytest.mark.parametrize("loss_target", ["v", "x"])
def test_training_loss_is_zero_for_the_oracle(prediction, loss_target):
    model = tiny(prediction=prediction, loss_target=loss_target, time_shift=2.0, t_min=1e-6)
    pixels = torch.rand(4, 3, 16, 16)
    model.decoder.forward = _oracle_decoder(model, model.to_latents(pixels))
    out = model(pixels)
    assert out.loss < 1e-8 and torch.allclose(out.reconstruction, pixels, atol=1e-5)
    model.decoder.forward = _oracle_decoder(model, model.to_latents(pixels), sign=-1.0)
    assert model(pixels).loss > 1e-2


def test_time_shift_moves_times_towards_noise():
    model = tiny(time_shift=3.0)
    t = torch.linspace(0, 1, 11)
    shifted = model.shift_time(t)
    assert shifted[0] == 0 and shifted[-1] == 1 and (shifted[1:-1] > t[1:-1]).all()
    assert model.shift_time(0.5) == pytest.approx(0.75) and tiny().shift_time(0.3) == 0.3


def test_ae_prob_puts_that_share_of_images_at_pure_noise():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 16, 16)
    assert (tiny(ae_prob=1.0)(x).extras["t"] == 1).all()
    t = tiny(ae_prob=0.5)(x).extras["t"]
    assert 16 <= int((t == 1).sum()) <= 48
    assert not (tiny()(x).extras["t"] == 1).any()  # off by default (official)
    with pytest.raises(ValueError, match="ae_prob"):
        tiny(ae_prob=1.5)


def test_first_token_prob_adds_single_token_images():
    torch.manual_seed(0)
    share = lambda m: float((m._sample_keep(4000, "cpu") == 1).float().mean())  # noqa: E731
    assert abs(share(tiny()) - 1 / 4) < 0.03  # pow2 over {1, 2, 4, 8}
    assert abs(share(tiny(first_token_prob=0.5)) - (0.5 + 0.5 / 4)) < 0.03
    assert set(tiny(first_token_prob=0.5)._sample_keep(500, "cpu").tolist()) == {1, 2, 4, 8}
    with pytest.raises(ValueError, match="first_token_prob"):
        tiny(first_token_prob=-0.1)


def test_nested_dropout_modes():
    assert set(tiny()._sample_keep(200, "cpu").tolist()) == {1, 2, 4, 8}
    assert set(tiny(nested_dropout="uniform_pow2")._sample_keep(200, "cpu").tolist()) <= {1, 2, 4, 8}
    assert set(tiny(nested_dropout="none")._sample_keep(5, "cpu").tolist()) == {8}
    with pytest.raises(ValueError, match="power-of-two num_registers"):
        tiny(num_registers=6)


def test_save_and_load_roundtrip(tmp_path):
    model = _trained_looking(tiny())
    save_pretrained(model, tmp_path / "ft")
    again = from_pretrained(tmp_path / "ft")
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(again.encode(x), model.encode(x))


# -- bad input ------------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    model = tiny().eval()
    for k in (0, 9):
        with pytest.raises(ValueError, match=r"prefix length must be in \[1, 8\]"):
            model.decode(torch.zeros(1, k, dtype=torch.long))
    for bad in (64_000, -1):
        with pytest.raises(ValueError, match=r"token ids must be in \[0, 63999\]"):
            model.decode(torch.full((1, 8), bad))
    with pytest.raises(ValueError, match="noise must have shape"):
        model.decode(torch.zeros(1, 8, dtype=torch.long), noise=torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="16x16 images"):
        model.encode(torch.rand(1, 3, 32, 32))
    no_null = tiny(null_prob=0.0).eval()
    assert no_null.decoder.null_token is None
    with pytest.raises(ValueError, match="no null condition"):
        no_null.decode(torch.zeros(1, 8, dtype=torch.long), guidance_scale=3.0)
    with pytest.raises(ValueError, match="multiple of the VAE factor"):
        tiny(image_size=18)
    with pytest.raises(ValueError, match="latent_channels=16 but pixels"):
        tiny(latent_channels=16)
    with pytest.raises(ValueError, match="prediction must be"):
        tiny(prediction="eps")
    with pytest.raises(ValueError, match="loss_target must be"):
        tiny(loss_target="eps")
    with pytest.raises(ValueError, match="time_shift must be > 0"):
        tiny(time_shift=0.0)
    with pytest.raises(ValueError, match=r"t_min must be in \(0, 1\)"):
        tiny(t_min=0.0)


# -- VAE ------------------------------------------------------------------------------------------------------------
TINY_VAE = dict(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def test_diffusers_vae_from_config_and_folder(tmp_path):
    from diffusers import AutoencoderKL

    model = _trained_looking(tiny(vae=TINY_VAE, patch_size=2, vae_scale=2.0))
    assert model.latent_channels == 4 and model.latent_size == 8
    assert not any(p.requires_grad for p in model.vae.parameters())
    model.train()
    assert not model.vae.training  # frozen, always eval
    x = torch.rand(2, 3, 16, 16)
    ids = model.eval().encode(x)
    assert model.decode(ids[:, :3], generator=torch.Generator().manual_seed(0)).shape == (2, 3, 16, 16)
    # a local diffusers folder gives the same VAE
    model.vae.save_pretrained(tmp_path / "vae")
    from_folder = tiny(vae=str(tmp_path / "vae"), patch_size=2, vae_scale=2.0)
    assert isinstance(from_folder.vae, AutoencoderKL)
    assert torch.equal(from_folder.to_latents(x), model.to_latents(x))
    # a whole FlexTok with its VAE goes through save_pretrained / from_pretrained
    save_pretrained(model, tmp_path / "ft")
    assert torch.equal(from_pretrained(tmp_path / "ft").encode(x), ids)


def test_vae_mismatches_raise():
    with pytest.raises(ValueError, match="latent_channels=16 but the VAE gives 4-channel latents"):
        tiny(vae=TINY_VAE, patch_size=2, latent_channels=16)
    with pytest.raises(FileNotFoundError, match="no VAE folder"):
        tiny(vae="/nonexistent/vae")
    with pytest.raises(TypeError, match="vae must be None"):
        tiny(vae=3)


def test_presets_are_registered():
    assert {"flextok_d12_d12", "flextok_d18_d18", "flextok_d18_d28", "flextok_tiny",
            "flextok_tiny_vae"} <= set(vistok.list_tokenizers())
    model = vistok.create_tokenizer("flextok_tiny_vae").eval()
    ids = model.encode(torch.rand(1, 3, 32, 32))
    assert ids.shape == (1, 16)


def test_flow_decoder_keeps_an_fp32_latent_under_bf16_autocast():
    """The scheduler casts each step's result to the velocity's dtype: under bf16 autocast the latent would be
    rounded to bf16 at every step.  It stays fp32 (close to the fp32 decode), unlike a bf16 latent."""
    model = _trained_looking(tiny())
    ids = model.encode(torch.rand(2, 3, 16, 16))
    noise = torch.randn(2, model.latent_channels, model.latent_size, model.latent_size,
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.decode_latents(ids, num_steps=4, noise=noise)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.decode_latents(ids, num_steps=4, noise=noise)
    assert ref.dtype == low.dtype == torch.float32
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()
