"""TokenizerModule's optional terms: PatchGAN with its own optimizer, perceptual loss from a local file, and TiTok's
stage 1 (proxy codes of a frozen 2D VQ tokenizer).  Tiny models, a few Lightning steps on CPU."""

import lightning as L
import pytest
import torch
from conftest import tiny_titok
from einops import rearrange
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vistok import save_pretrained
from vistok.training import GANTokenizerModule, ProxyCodeModule, TokenizerModule
from vistok.training.losses import GAN_LOSSES, PatchDiscriminator, VGGPerceptual, load_perceptual

pytestmark = pytest.mark.usefixtures("one_thread")


class _Fixed(Dataset):
    """The same images over and over (one fixed batch when ``batch_size == len(pixels)``)."""

    def __init__(self, pixels: torch.Tensor, length: int):
        self.pixels, self.length = pixels, length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return {"pixels": self.pixels[i % len(self.pixels)]}


class _Record(L.Callback):
    """After every training batch: the logged metrics and copies of the discriminator / tokenizer weights."""

    def __init__(self):
        self.metrics, self.disc, self.tok = [], [], []

    def on_train_batch_end(self, trainer, module, *args):
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})
        if hasattr(module, "discriminator"):
            self.disc.append([p.detach().clone() for p in module.discriminator.parameters()])
        self.tok.append([p.detach().clone() for p in module.tokenizer.parameters()])


def _trainer(max_steps: int, *callbacks) -> L.Trainer:
    return L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))


def _fit(module: TokenizerModule, max_steps: int, pixels: torch.Tensor) -> tuple[L.Trainer, _Record]:
    record = _Record()
    trainer = _trainer(max_steps, record)
    trainer.fit(module, DataLoader(_Fixed(pixels, 1000), batch_size=len(pixels)))
    return trainer, record


def _validate(module: TokenizerModule, pixels: torch.Tensor) -> dict[str, float]:
    loader = DataLoader(_Fixed(pixels, len(pixels)), batch_size=len(pixels))
    return _trainer(1).validate(module, loader, verbose=False)[0]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# -- defaults and argument checks --------------------------------------------------------------------------------
def test_defaults_keep_automatic_optimization_and_a_tokenizer_only_state():
    module = TokenizerModule(tiny_titok())
    assert module.automatic_optimization and not hasattr(module, "discriminator")
    assert all(k.startswith("tokenizer.") for k in module.state_dict())
    module.trainer = _trainer(700)
    schedule = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert module.schedule_steps() == 700  # total_steps=None: the trainer's max_steps
    assert schedule.lr_lambdas[0](700) == pytest.approx(module.hparams.final_lr_ratio)
    with pytest.raises(ValueError, match="gan_weight must be > 0"):
        GANTokenizerModule(tiny_titok(), gan_weight=0.0)
    with pytest.raises(ValueError, match="gan_loss"):
        GANTokenizerModule(tiny_titok(), gan_loss="wasserstein")
    with pytest.raises(TypeError):  # the GAN's options belong to GANTokenizerModule
        TokenizerModule(tiny_titok(), grad_clip=1.0)


def test_gan_schedule_counts_generator_steps():
    module = GANTokenizerModule(tiny_titok(), disc_start=2000)
    module.trainer = _trainer(14000)  # 2000 generator-only steps + 6000 batches of two optimizer steps
    assert module.schedule_steps() == 8000 and module.hparams.gan_weight == 0.1
    module.trainer = _trainer(1500)
    assert module.schedule_steps() == 1500


# -- GAN ---------------------------------------------------------------------------------------------------------
def test_patch_discriminator_and_gan_losses():
    assert PatchDiscriminator(8, 3)(torch.rand(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert PatchDiscriminator(8, 2, "group")(torch.rand(2, 3, 32, 32)).shape == (2, 1, 6, 6)
    d_hinge, g_hinge = GAN_LOSSES["hinge"]
    real, fake = torch.full((2, 1, 3, 3), 2.0), torch.full((2, 1, 3, 3), -2.0)
    assert float(d_hinge(real, fake)) == 0.0 and float(d_hinge(-real, -fake)) == 3.0
    assert float(g_hinge(fake)) == 2.0
    d_ns, g_ns = GAN_LOSSES["non_saturating"]
    zero = torch.zeros(1, 1, 2, 2)
    assert float(d_ns(zero, zero)) == pytest.approx(float(torch.log(torch.tensor(2.0))))
    assert float(g_ns(real)) < float(g_ns(fake))


def test_gan_trains_the_discriminator_from_disc_start_only():
    torch.manual_seed(0)
    module = GANTokenizerModule(tiny_titok(), warmup_steps=1, total_steps=10, gan_weight=0.5, disc_start=2,
                             disc_layers=2, disc_channels=8, grad_clip=1.0)
    assert not module.automatic_optimization
    disc0 = [p.detach().clone() for p in module.discriminator.parameters()]
    tok0 = [p.detach().clone() for p in module.tokenizer.parameters()]
    # Lightning's global_step counts both optimizers' steps: 1 + 1 (generator only) + 2 = 4 after three batches.
    trainer, rec = _fit(module, 4, torch.rand(4, 3, 32, 32))
    assert trainer.global_step == 4 and len(rec.disc) == 3
    assert _same(rec.disc[0], disc0) and _same(rec.disc[1], disc0)  # before disc_start: untouched
    assert not _same(rec.disc[2], disc0)  # generator step 2 = disc_start: the discriminator trains
    assert not _same(rec.tok[0], tok0) and not _same(rec.tok[2], rec.tok[1])  # the generator trains throughout
    assert "train/g_adv" not in rec.metrics[1] and "train/d_loss" not in rec.metrics[1]
    last = rec.metrics[2]
    for key in ("train/g_adv", "train/d_loss", "train/logits_real", "train/logits_fake"):
        assert key in last and torch.isfinite(torch.tensor(last[key]))
    assert module.lr_schedulers().last_epoch == 3  # the generator's schedule steps once per batch


def test_gan_adaptive_weight_and_non_saturating_loss():
    torch.manual_seed(0)
    module = GANTokenizerModule(tiny_titok(), warmup_steps=1, gan_weight=0.5, gan_loss="non_saturating",
                             gan_adaptive=True, disc_layers=2, disc_channels=8, disc_norm="group", disc_lr=1e-3)
    disc0 = [p.detach().clone() for p in module.discriminator.parameters()]
    _, rec = _fit(module, 2, torch.rand(4, 3, 32, 32))
    weight = rec.metrics[0]["train/gan_weight"]
    assert 0 < weight != 0.5 and torch.isfinite(torch.tensor(weight))  # gan_weight x gradient-norm ratio
    assert not _same(rec.disc[0], disc0)  # disc_start=0: trains from the first batch


# -- perceptual --------------------------------------------------------------------------------------------------
class _ScriptedL1(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x - y).abs().flatten(1).mean(1)  # per-sample distances, as LPIPS returns them


def test_perceptual_missing_warns_once_and_trains_without(tmp_path):
    with pytest.warns(UserWarning, match="no perceptual_path was given") as caught:
        module = TokenizerModule(tiny_titok(), perceptual_weight=1.0)
    assert len([w for w in caught if "perceptual" in str(w.message)]) == 1
    assert "perceptual" not in module._frozen
    with pytest.warns(UserWarning, match="is not a file.*TorchScript"):
        TokenizerModule(tiny_titok(), perceptual_weight=1.0, perceptual_path=str(tmp_path / "lpips.pt"))


def test_scripted_perceptual_loss_enters_the_training_loss(tmp_path):
    path = tmp_path / "l1.pt"
    torch.jit.save(torch.jit.script(_ScriptedL1()), str(path))
    module = TokenizerModule(tiny_titok(), warmup_steps=1, perceptual_weight=10.0, perceptual_path=str(path))
    net = module._frozen["perceptual"]
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(net(a, b), 2 * (a - b).abs().mean())  # called on [-1, 1] pixels
    _, rec = _fit(module, 1, torch.rand(4, 3, 32, 32))
    m = rec.metrics[0]
    assert m["train/perceptual"] > 0
    # without the term the loss would be mse + 0.2 * l1 + vq, well under 10 x the perceptual distance (2 x l1)
    assert m["train/loss"] >= 10 * m["train/perceptual"] + m["train/mse"]
    assert all(k.startswith("tokenizer.") for k in module.state_dict())  # the frozen net is not checkpointed


def test_vgg16_state_dict_perceptual(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        shapes = torchvision.models.vgg16(weights=None).features.state_dict()
    state = {f"features.{k}": torch.randn(v.shape) * (2 / v[0].numel()) ** 0.5 if v.ndim == 4 else torch.zeros(v.shape)
             for k, v in shapes.items()}  # He-initialised VGG16 features, as a torchvision state_dict holds them
    torch.save(state, tmp_path / "vgg16.pth")
    net = load_perceptual(str(tmp_path / "vgg16.pth"))
    assert isinstance(net, VGGPerceptual) and not any(p.requires_grad for p in net.parameters())
    assert torch.equal(net.features[28].weight, state["features.28.weight"])
    a, b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert float(net(a, a)) == 0.0
    full = float(net(a, b))
    assert full > 0
    lin = {f"lin{i}.model.1.weight": torch.full((1, c, 1, 1), float(i == 0))
           for i, c in enumerate(VGGPerceptual.CHANNELS)}  # LPIPS-style linear weights: first layer only
    first_only = float(VGGPerceptual({**state, **lin})(a, b).detach())
    assert 0 < first_only < full
    with pytest.raises(ValueError, match="missing keys"):
        VGGPerceptual({k: v for k, v in state.items() if k != "features.0.weight"})


# -- TiTok stage 1: proxy codes ----------------------------------------------------------------------------------
class _Tiny2DVQ(nn.Module):
    """A minimal 2D VQ tokenizer: one of 16 codes per 8x8 patch, ids (B, h, w)."""

    codebook_size = 16

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 4, 8, stride=8)
        self.codes = nn.Parameter(torch.randn(16, 4))
        self.dec = nn.ConvTranspose2d(4, 3, 8, stride=8)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        z = rearrange(self.enc(pixels), "b c h w -> b h w c")
        return (z.unsqueeze(-2) - self.codes).pow(2).sum(-1).argmin(-1)  # b h w

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.dec(rearrange(self.codes[ids], "b h w c -> b c h w")))


def _two_stage(**kw):  # 32 px, patch 8: a 4x4 decoder grid with a 16-code pixel head
    return tiny_titok(pixel_codebook_size=16, pixel_code_dim=8, pixel_channels=(32, 32, 32, 32),
                      pixel_res_blocks=1, **kw)


def test_proxy_codes_from_a_saved_folder_cross_entropy_falls(tmp_path):
    torch.manual_seed(0)
    folder = save_pretrained(tiny_titok(num_latent_tokens=16, codebook_size=16), tmp_path / "proxy")  # 16 ids
    module = ProxyCodeModule(_two_stage(), lr=3e-3, warmup_steps=1, total_steps=20, proxy_tokenizer=str(folder),
                             rfid_in_validate=False)
    assert module.hparams.proxy_tokenizer == str(folder)
    assert all(k.startswith("tokenizer.") for k in module.state_dict())
    pixels = torch.rand(4, 3, 32, 32)
    _, rec = _fit(module, 20, pixels)
    ce = [m["train/ce"] for m in rec.metrics]
    assert len(ce) == 20 and ce[-1] < 0.7 * ce[0], ce
    assert rec.metrics[-1]["train/proxy_acc"] > rec.metrics[0]["train/proxy_acc"]
    out = _validate(module, pixels)
    assert out["val/proxy_acc"] >= rec.metrics[0]["train/proxy_acc"] and "val/psnr" in out


def test_proxy_module_with_2d_ids_trains_and_validates():
    module = ProxyCodeModule(_two_stage(), warmup_steps=1, proxy_tokenizer=_Tiny2DVQ(), rfid_in_validate=False)
    assert "proxy_tokenizer" not in module.hparams
    pixels = torch.rand(4, 3, 32, 32)
    _, rec = _fit(module, 2, pixels)
    assert {"train/ce", "train/proxy_acc"} <= set(rec.metrics[-1])
    out = _validate(module, pixels)
    assert 0 <= out["val/proxy_acc"] <= 1 and out["val/psnr"] > 0


def test_proxy_mismatches_raise(tmp_path):
    wrong_size = save_pretrained(tiny_titok(num_latent_tokens=16, codebook_size=32), tmp_path / "k32")
    with pytest.raises(ValueError, match="pixel_codebook_size=32"):
        ProxyCodeModule(_two_stage(), proxy_tokenizer=str(wrong_size))
    wrong_grid = save_pretrained(tiny_titok(num_latent_tokens=8, codebook_size=16), tmp_path / "n8")
    with pytest.raises(ValueError, match=r"\(8,\) codes .* 4x4 patch grid"):
        ProxyCodeModule(_two_stage(), proxy_tokenizer=str(wrong_grid))
    with pytest.raises(ValueError, match="pixel_codebook_size"):
        ProxyCodeModule(tiny_titok(), proxy_tokenizer=_Tiny2DVQ())
    with pytest.raises(ValueError, match="stage 2"):
        ProxyCodeModule(_two_stage(), proxy_tokenizer=_Tiny2DVQ(), perceptual_weight=0.1)
    with pytest.raises(FileNotFoundError):
        ProxyCodeModule(_two_stage(), proxy_tokenizer=str(tmp_path / "nowhere"))


# -- stage 2: decoder-only fine-tuning with a pixel refiner ---------------------------------------------------------
def test_pixel_refiner_starts_as_identity_and_rejects_the_vqgan_head():
    torch.manual_seed(0)
    plain = tiny_titok(pixel_conv_out=False).eval()
    refined = tiny_titok(pixel_conv_out=False, pixel_refine=8, pixel_refine_blocks=1, pixel_refine_features=4).eval()
    missing, unexpected = refined.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("decoder.") for k in missing)
    ids = plain.encode(torch.rand(3, 3, 32, 32))
    assert torch.equal(refined.decode(ids, clamp=False), plain.decode(ids, clamp=False))  # zero-init output conv
    with pytest.raises(ValueError, match="direct pixel head"):
        tiny_titok(pixel_codebook_size=16, pixel_code_dim=8, pixel_channels=(8, 8, 8, 8), pixel_refine=8)


def test_decoder_only_training_keeps_every_id_and_moves_only_the_decoder(tmp_path):
    torch.manual_seed(0)
    base = tiny_titok(pixel_conv_out=False, reseed_every=1)
    save_pretrained(base, tmp_path / "stage1")
    pixels = torch.rand(8, 3, 32, 32)
    ids_before = base.eval().encode(pixels)
    tok = tiny_titok(pixel_conv_out=False, reseed_every=1, pixel_refine=8, pixel_refine_blocks=1)
    module = TokenizerModule(tok, pretrained=str(tmp_path / "stage1"), train_decoder_only=True, lr=1e-2,
                             warmup_steps=1)
    trainer, record = _fit(module, 6, pixels)
    names = [n for n, _ in module.tokenizer.named_parameters()]
    first, last = record.tok[0], record.tok[-1]
    moved = {n for n, a, b in zip(names, first, last) if not torch.equal(a, b)}
    assert moved and all(n.startswith("decoder.") for n in moved)
    assert any(n.startswith("decoder.refine.") for n in moved)
    assert torch.equal(module.tokenizer.eval().encode(pixels), ids_before)  # re-seeding never ran
    module.train()  # the frozen parts stay in eval mode whatever Lightning toggles
    assert module.tokenizer.decoder.training and not module.tokenizer.encoder.training
    assert not module.tokenizer.quantizer.training
    losses = [m["train/loss"] for m in record.metrics]
    assert losses[-1] < losses[0]


def test_pretrained_that_does_not_fit_lists_the_keys(tmp_path):
    save_pretrained(tiny_titok(pixel_conv_out=False), tmp_path / "stage1")
    with pytest.raises(ValueError, match="missing .*decoder.refine"):  # new modules are only allowed in stage 2
        TokenizerModule(tiny_titok(pixel_conv_out=False, pixel_refine=8), pretrained=str(tmp_path / "stage1"))
    save_pretrained(tiny_titok(pixel_conv_out=True), tmp_path / "with_conv")
    with pytest.raises(ValueError, match="unexpected .*decoder.conv_out"):
        TokenizerModule(tiny_titok(pixel_conv_out=False), pretrained=str(tmp_path / "with_conv"),
                        train_decoder_only=True)
    with pytest.raises(ValueError, match="stage 1"):
        ProxyCodeModule(tiny_titok(), train_decoder_only=True, proxy_tokenizer=tiny_titok())


def test_generator_module_pretrained_continues_from_a_folder(tmp_path):
    """GeneratorModule(pretrained=...) shares the loader: same weights in, mismatching keys listed."""
    from conftest import tiny_ar

    from vistok.training import GeneratorModule

    save_pretrained(tiny_titok(), tmp_path / "tok")
    torch.manual_seed(0)
    trained = tiny_ar(num_classes=4)
    save_pretrained(trained, tmp_path / "gen")
    module = GeneratorModule(tiny_ar(num_classes=4), str(tmp_path / "tok"), conditioning="class",
                             pretrained=str(tmp_path / "gen"))
    assert all(torch.equal(a, b) for a, b in zip(module.generator.state_dict().values(),
                                                 trained.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="missing .*class_embed"):
        GeneratorModule(tiny_ar(num_classes=4), str(tmp_path / "tok"), conditioning="class",
                        pretrained=str(save_pretrained(tiny_ar(), tmp_path / "unconditional")))


def test_generator_module_trains_a_continuous_generator_on_vq_code_vectors(tmp_path):
    """tokenizer_kwargs={"code_tokens": True} turns a VQ TiTok folder into continuous (B, N, D) training tokens."""
    from vistok.generators import XARGenerator
    from vistok.training import GeneratorModule

    torch.manual_seed(0)
    vq = tiny_titok()
    save_pretrained(vq, tmp_path / "tok")
    gen = XARGenerator(grid_size=(4, 2), cell_size=(2, 1), token_dim=vq.token_dim, width=32, depth=1,
                       decoder_depth=1, num_heads=2, num_classes=4)
    module = GeneratorModule(gen, str(tmp_path / "tok"), conditioning="class",
                             tokenizer_kwargs={"code_tokens": True, "latent_scale": 2.0})
    pixels = torch.rand(3, 3, vq.image_size, vq.image_size)
    batch = {"index": torch.arange(3), "pixels": pixels, "label": torch.tensor([0, 1, 2])}
    tokens = module.tokens_of(batch, "train")
    torch.testing.assert_close(tokens, 2.0 * vq.eval().quantizer.lookup(vq.encode(pixels)))
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert gen.out.weight.grad.abs().sum() > 0


def test_generator_activation_checkpointing_gives_the_same_gradients(tmp_path):
    from conftest import tiny_ar

    from vistok.training import GeneratorModule
    from vistok.training.base import checkpoint_activations

    save_pretrained(tiny_titok(), tmp_path / "tok")
    torch.manual_seed(0)
    plain, ckpt = tiny_ar(num_classes=4), tiny_ar(num_classes=4)
    ckpt.load_state_dict(plain.state_dict())
    module = GeneratorModule(ckpt, str(tmp_path / "tok"), conditioning="class", activation_checkpointing=True)
    assert checkpoint_activations(tiny_ar()) == 2  # the two transformer blocks
    assert module.state_dict().keys() == {f"generator.{k}" for k in plain.state_dict()}
    batch = {"index": torch.arange(3), "pixels": torch.rand(3, 3, 32, 32), "label": torch.tensor([0, 1, 2])}
    tokens, cond = module.tokens_of(batch, "train"), module.condition_of(batch)
    plain.train(), ckpt.train()  # dropout 0 and the same seed for the label drop: the two passes must agree
    torch.manual_seed(1)
    plain(tokens, cond).loss.backward()
    calls = []
    next(ckpt.blocks[0].children()).register_forward_hook(lambda *_: calls.append(1))
    torch.manual_seed(1)
    ckpt(tokens, cond).loss.backward()
    assert len(calls) == 2  # the block ran again in the backward pass
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_unconditional_generator_module_and_fp32_frozen_encodes_under_bf16(tmp_path):
    """conditioning="none" trains an unconditional generator (it built an empty Conditioning before); the frozen
    tokenizer encodes in fp32 even inside a bf16 autocast step (the cached latents are what sampling decodes)."""
    from conftest import tiny_ar

    from vistok.training import GeneratorModule
    from vistok.training.base import frozen_encode

    torch.manual_seed(0)
    save_pretrained(tiny_titok(), tmp_path / "tok")
    module = GeneratorModule(tiny_ar(), str(tmp_path / "tok"), conditioning="none")
    batch = {"index": torch.arange(2), "pixels": torch.rand(2, 3, 32, 32), "caption": ["a", "b"]}
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    vae = tiny_titok(codebook_size=None).eval()  # continuous latents show the precision
    x = torch.rand(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside, plain = frozen_encode(vae, x), vae.encode(x)
    assert inside.dtype == torch.float32 and torch.equal(inside, vae.encode(x))
    assert not torch.equal(plain.float(), inside)  # the control: autocast reaches a plain encode
