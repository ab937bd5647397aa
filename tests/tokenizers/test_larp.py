"""LARP on tiny random models: shapes, stochastic VQ, the AR prior and its scheduled sampling, presets, bad input,
and the LightningModule."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_larp

import vistok
from vistok.interfaces import Tokenizer
from vistok.layers.quantizers import StochasticVectorQuantizer
from vistok.tokenizers import LARP

pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny forward passes

# Official totals (shared/reference/tokenizers.md §4.1, counted on the official classes): 193.88M parameters,
# of which the gptc-S prior is 21.70M.
OFFICIAL_L_LONG_PARAMS, OFFICIAL_L_LONG_PRIOR = 193.88e6, 21.70e6


def tiny(**kw) -> LARP:
    return tiny_larp(**kw)


def video(b: int = 2, t: int = 4, s: int = 16) -> torch.Tensor:
    return torch.rand(b, 3, t, s, s)


def test_shapes_and_protocol():
    tok = tiny().eval()
    assert isinstance(tok, Tokenizer) and tok.kind == "discrete"
    x = video()
    ids = tok.encode(x)
    assert ids.shape == (2, 8) and ids.dtype == torch.long and 0 <= int(ids.min()) and int(ids.max()) < 64
    out = tok.decode(ids)
    assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1
    train = tok.train()(x, progress=0.5)
    assert train.reconstruction.shape == x.shape and train.tokens.shape == (2, 8)
    assert train.loss.ndim == 0 and train.extras["prior_loss"].requires_grad
    assert set(train.extras) >= {"codebook", "commitment", "prior_loss", "prior_acc"}


def test_eval_is_deterministic_by_default_and_training_samples():
    tok = tiny(vq_temperature=1.0).eval()  # a hot softmax: sampling almost always changes some id
    x = video(4)
    assert torch.equal(tok.encode(x), tok.encode(x))
    assert torch.equal(tok.encode(x), tok.quantizer.indices(tok.project(x)))  # argmax of the cosine
    cos = F.normalize(tok.project(x), dim=-1) @ tok.quantizer.codebook().t()
    assert torch.equal(tok.encode(x), cos.argmax(-1))
    tok.train()
    assert not torch.equal(tok.encode(x), tok.encode(x))
    plain = tiny(vq_temperature=None).train()  # no temperature: argmax also in training
    assert torch.equal(plain.encode(x), plain.encode(x))
    assert not tiny(deterministic_eval=False).quantizer.deterministic_eval


def test_stochastic_vq_samples_softmax_of_cosine():
    vq = StochasticVectorQuantizer(codebook_size=2, code_dim=2, temperature=0.5).train()
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    z = torch.tensor([[0.8, 0.6]]).expand(20000, -1)  # cosines 0.8 and 0.6
    freq = (vq.indices(z) == 0).float().mean()
    expected = torch.softmax(torch.tensor([0.8, 0.6]) / 0.5, 0)[0]
    assert abs(float(freq) - float(expected)) < 0.02
    zq, ids, parts = vq(torch.randn(3, 5, 2, requires_grad=True))
    assert zq.shape == (3, 5, 2) and ids.shape == (3, 5)
    assert torch.allclose(vq.loss(parts), 0.25 * parts["commitment"] + parts["codebook"])
    with pytest.raises(ValueError, match="temperature"):
        StochasticVectorQuantizer(temperature=0.0)


def test_prior_is_causal():
    prior = tiny().prior.eval()
    codes = F.normalize(torch.randn(1, 8, 8), dim=-1)
    changed = codes.clone()
    changed[0, 4] = F.normalize(torch.randn(8), dim=0)
    a, b = prior.predict(codes), prior.predict(changed)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)  # prediction j only reads codes < j
    assert not torch.allclose(a[:, 5:], b[:, 5:])
    assert torch.allclose(a.norm(dim=-1), torch.ones(1, 8), atol=1e-5)
    with pytest.raises(ValueError, match="positions"):
        prior(torch.randn(1, 9, 8))


def test_prior_loss_trains_the_encoder_through_the_codes_not_the_codebook():
    tok = tiny().train()
    out = tok(video())
    out.extras["prior_loss"].backward()
    assert tok.patch_embed.weight.grad.abs().sum() > 0  # the latent space is shaped by the prior
    assert tok.prior.head.weight.grad.abs().sum() > 0
    assert tok.quantizer.embedding.weight.grad is None or tok.quantizer.embedding.weight.grad.abs().sum() == 0
    assert tok.head.weight.grad is None  # the pixel decoder is not part of the prior loss


def test_scheduled_sampling_schedule_and_rounds():
    tok = tiny()
    assert [tok.ss_ratio(p) for p in (0.0, 0.15, 0.3, 1.0)] == pytest.approx([0.0, 0.25, 0.5, 0.5])
    assert tiny(ss_peak=0.0, ss_max_ratio=0.8).ss_ratio(0.0) == pytest.approx(0.8)
    tok.eval()
    x = video()
    with torch.no_grad():
        codes, ids, _ = tok.quantizer(tok.project(x))
        single = F.cross_entropy(tok.prior_logits(codes).flatten(0, 1), ids[:, 1:].flatten())
        # ratio 0: round 2 sees the true codes, so both rounds give the teacher-forced loss
        loss0, _ = tok.prior_loss(codes, ids, progress=0.0)
        assert torch.allclose(loss0, single, atol=1e-6)
        # ratio 1: round 2 sees ids sampled from round 1, so its loss differs
        full = tiny(ss_peak=0.0, ss_max_ratio=1.0).eval()
        full.load_state_dict(tok.state_dict())
        loss1, _ = full.prior_loss(codes, ids, progress=0.0)
        assert not torch.allclose(loss1, single)
        last_only = tiny(prior_avg_rounds=False, prior_rounds=1).eval()
        last_only.load_state_dict(tok.state_dict())
        assert torch.allclose(last_only.prior_loss(codes, ids)[0], single, atol=1e-6)


def test_no_prior():
    tok = tiny(prior_depth=0)
    assert tok.prior is None and "prior_loss" not in tok(video()).extras
    with pytest.raises(ValueError, match="without a prior"):
        tok.prior_logits(torch.randn(1, 8, 8))


def _meta(name: str):
    with torch.device("meta"):
        return vistok.create_tokenizer(name)


def test_official_preset_parameter_counts():
    full = _meta("larp_l_long")
    total = sum(p.numel() for p in full.parameters())
    prior = sum(p.numel() for p in full.prior.parameters())
    assert abs(total - OFFICIAL_L_LONG_PARAMS) <= 0.005 * OFFICIAL_L_LONG_PARAMS, total
    assert abs(prior - OFFICIAL_L_LONG_PRIOR) <= 0.005 * OFFICIAL_L_LONG_PRIOR, prior
    assert (full.num_tokens, full.codebook_size, full.token_dim, full.grid) == (1024, 8192, 16, (4, 16, 16))
    assert {"larp_l_long", "larp_tiny"} <= set(vistok.list_tokenizers())


def test_tiny_preset_runs():
    tok = vistok.create_tokenizer("larp_tiny").eval()
    x = torch.rand(1, 3, tok.num_frames, tok.image_size, tok.image_size)
    assert tok.decode(tok.encode(x)).shape == x.shape


def test_bad_input_is_named():
    tok = tiny().eval()
    with pytest.raises(ValueError, match="4 frames"):
        tok.encode(video(t=8))
    with pytest.raises(ValueError, match=r"permute\(0, 4, 1, 2, 3\)"):
        tok.encode(video().permute(0, 2, 3, 4, 1))  # channels last
    with pytest.raises(ValueError, match=r"permute\(0, 2, 1, 3, 4\)"):
        tok.encode(video().transpose(1, 2))  # (B, T, 3, H, W)
    with pytest.raises(ValueError, match="16x16"):
        tok.encode(video(s=24))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tok.encode(video() * 2 - 1)
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        tok.encode(torch.rand(3, 4, 16, 16))
    with pytest.raises(ValueError, match="exactly 8 tokens"):
        tok.decode(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 63\]"):
        tok.decode(torch.full((1, 8), 64))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        tiny(image_size=20)
    with pytest.raises(ValueError, match="temporal_patch_size"):
        tiny(num_frames=5)
    with pytest.raises(ValueError, match="prior_max_len"):
        tiny(prior_max_len=4)


def test_save_and_load_roundtrip(tmp_path):
    tok = tiny().eval()
    vistok.save_pretrained(tok, tmp_path)
    again = vistok.from_pretrained(tmp_path)
    x = video()
    assert torch.equal(again.encode(x), tok.encode(x))


def test_module_overfits_one_batch(tmp_path):
    from types import SimpleNamespace

    from vistok.training import LARPModule

    tok = tiny()
    module = LARPModule(tok, lr=3e-3, betas=(0.9, 0.99), prior_lr_mult=2.0, warmup_steps=1, mse_weight=1.0,
                        export_dir=str(tmp_path / "export"), export_fp16=False)
    fake = SimpleNamespace(global_step=0, estimated_stepping_batches=20)  # the two fields the module reads
    module._trainer = fake
    module.log_dict = lambda *a, **k: None
    opt = module.configure_optimizers()["optimizer"]
    assert opt.param_groups[-1]["lr"] == pytest.approx(2 * opt.param_groups[0]["lr"])  # the prior's group
    x = video(4)
    before = F.l1_loss(tok.eval().reconstruct(x), x)
    tok.train()
    for step in range(20):
        fake.global_step = step
        loss = module.training_step({"pixels": x}, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = F.l1_loss(tok.eval().reconstruct(x), x)
    assert after < 0.7 * before, (float(before), float(after))
    vistok.save_pretrained(module.exported_model(), tmp_path / "export")  # what the Export callback writes
    assert torch.equal(vistok.from_pretrained(tmp_path / "export").encode(x), tok.encode(x))
    with pytest.raises(TypeError, match="LARP"):
        LARPModule(torch.nn.Linear(2, 2))


def test_center_input_feeds_the_encoder_2x_minus_1():
    plain, centred = tiny().eval(), tiny(center_input=True).eval()
    centred.load_state_dict(plain.state_dict())
    x = video()
    with torch.no_grad():
        assert torch.allclose(centred.encoder_queries(x), plain.encoder_queries(2 * x - 1), atol=1e-6)
        assert not torch.allclose(centred.encoder_queries(x), plain.encoder_queries(x), atol=1e-3)
    assert centred.decode(centred.encode(x)).shape == x.shape  # outputs stay (B, 3, T, H, W) in [0, 1]
    assert vistok.create_tokenizer("larp_tiny").config["center_input"] is False  # the preset is the plain model


def test_vq_warmup_decodes_the_continuous_latents_and_moves_only_the_codebook():
    tok = tiny(vq_temperature=None).train()
    torch.nn.init.normal_(tok.head.weight, std=0.1)  # the pixel head starts at zero: give it outputs to compare
    x = video()
    out = tok(x, quantize=False)
    z = tok.project(x)
    with torch.no_grad():
        assert torch.allclose(out.reconstruction, tok.decode_codes(F.normalize(z, dim=-1)), atol=1e-5)
        assert not torch.allclose(out.reconstruction, tok(x).reconstruction, atol=1e-4)  # quantised decode differs
        assert torch.equal(out.tokens, tok.quantizer.indices(z))  # ids still come from the quantizer
    assert torch.allclose(out.loss, tok.quantizer.codebook_weight * out.extras["codebook"])
    out.loss.backward()  # the VQ term of the warm-up moves the codebook, not the encoder
    assert tok.quantizer.embedding.weight.grad.abs().sum() > 0 and tok.patch_embed.weight.grad is None


def _module(tok, **kw):
    from types import SimpleNamespace

    from vistok.training import LARPModule

    module = LARPModule(tok, warmup_steps=1, **kw)
    module._trainer = SimpleNamespace(global_step=0, estimated_stepping_batches=100)
    return module


def test_prior_ramp_and_vq_warmup_follow_progress(monkeypatch):
    tok = tiny()
    module = _module(tok, prior_weight=0.06, prior_ramp=0.5, vq_warmup=0.3)
    assert [module.prior_scale(p) for p in (0.0, 0.25, 0.5, 1.0)] == pytest.approx([0.0, 0.03, 0.06, 0.06])
    assert _module(tiny(), prior_weight=0.06).prior_scale(0.0) == pytest.approx(0.06)  # official: no ramp
    seen, logs = [], {}
    forward = type(tok).forward
    monkeypatch.setattr(type(tok), "forward", lambda self, v, progress=0.0, quantize=True:
                        seen.append(quantize) or forward(self, v, progress, quantize))
    module.log_dict = lambda d, **k: logs.update(d)
    for step in (0, 29, 30, 99):
        module._trainer.global_step = step
        module.training_step({"pixels": video()}, step)
        assert float(logs["train/prior_weight"]) == pytest.approx(module.prior_scale(step / 100))
    assert seen == [False, False, True, True]
    for bad in (dict(prior_ramp=1.5), dict(vq_warmup=-0.1)):
        with pytest.raises(ValueError, match="fractions of training"):
            _module(tiny(), **bad)


def test_pixel_refiner_starts_as_identity_works_frame_by_frame_and_round_trips(tmp_path):
    torch.manual_seed(0)
    plain = tiny().eval()
    torch.manual_seed(0)
    refined = tiny(pixel_refine=8, pixel_refine_blocks=1, pixel_refine_features=2).eval()
    missing, unexpected = refined.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith(("refine.", "feature_head.")) for k in missing)
    x = video()
    ids = plain.encode(x)
    assert torch.equal(refined.encode(x), ids)
    assert torch.allclose(refined.decode(ids, clamp=False), plain.decode(ids, clamp=False), atol=1e-6)  # zero out-conv
    # once trained, frame f of the output depends only on frame f of the head's output (a per-frame 2-D refiner)
    with torch.no_grad():
        for p in refined.refine.parameters():
            p.normal_(0, 0.1)
    t, p = refined.temporal_patch_size, refined.patch_size
    assert refined.feature_head.out_features == t * p * p * 2
    out = refined.decode(ids, clamp=False)
    assert not torch.allclose(out, plain.decode(ids, clamp=False), atol=1e-3)
    frames = plain.decode(ids, clamp=False)  # the same head output, refined by hand frame by frame
    z = refined.code_out(refined.quantizer.lookup(ids)) + refined.decoder_latent_pos
    q = (refined.decoder_patch_pos + refined.decoder_patch_type).expand(len(ids), -1, -1)
    feats = refined.feature_head(refined.head_norm(refined.decoder(z, q)))
    gt, gh, gw = refined.grid
    feats = feats.reshape(len(ids), gt, gh, gw, t, p, p, 2).permute(0, 1, 4, 7, 2, 5, 3, 6)
    feats = feats.reshape(len(ids), gt * t, 2, gh * p, gw * p)
    for f in (0, frames.shape[2] - 1):
        assert torch.allclose(out[:, :, f], refined.refine(frames[:, :, f], feats[:, f]), atol=1e-5)
    vistok.save_pretrained(refined, tmp_path)
    assert torch.equal(vistok.from_pretrained(tmp_path).decode(ids), refined.decode(ids))
    with pytest.raises(ValueError, match="PixelRefiner"):
        tiny(pixel_refine=8, pixel_refine_blocks=-1)
