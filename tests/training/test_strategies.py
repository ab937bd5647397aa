"""What the training modules do for the strategies and precisions of GPU clusters, checked on the CPU: the
weight-decay split survives FSDP's flattening, norm clipping goes through FSDP's own ``clip_grad_norm_``, modules
that leave parameters without gradients refuse plain DDP with the fix, the GAN's ``grad_clip`` acts on unscaled
``16-mixed`` gradients, and the generator's training tokens are made before the strategy's forward."""

import types

import lightning as L
import pytest
import torch
from conftest import tiny_ar, tiny_titok
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.strategies import DDPStrategy

from vistok.hub import save_pretrained
from vistok.training import GANTokenizerModule, GeneratorModule, ShapesDataModule, TokenizerModule
from vistok.training.base import adamw_warmup_cosine


def _decayed(module: torch.nn.Module, h) -> set[int]:
    groups = adamw_warmup_cosine(module, h, 10)["optimizer"].param_groups
    return {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}


def test_weight_decay_split_survives_flattened_parameters():
    """FSDP (use_orig_params) makes every parameter a 1-D shard before configure_optimizers: the split goes by the
    rank recorded in setup, not by the flattened one (without the record, nothing would be decayed)."""
    module = TokenizerModule(tiny_titok(), weight_decay=0.05)
    before = _decayed(module.tokenizer, module.hparams)
    assert before
    module.setup("fit")
    with torch.no_grad():
        for p in module.parameters():
            p.data = p.data.flatten()  # what FSDP leaves behind
    assert _decayed(module.tokenizer, module.hparams) == before
    fresh = TokenizerModule(tiny_titok(), weight_decay=0.05)  # the control: flattened without the record
    with torch.no_grad():
        for p in fresh.parameters():
            p.data = p.data.flatten()
    assert not _decayed(fresh.tokenizer, fresh.hparams)


def test_norm_clipping_under_fsdp_uses_fsdps_own():
    module = TokenizerModule(tiny_titok())
    calls = []
    model = types.SimpleNamespace(clip_grad_norm_=lambda v: calls.append(v))
    module._trainer = types.SimpleNamespace(strategy=type("FSDPStrategy", (), {})(), model=model)
    module.configure_gradient_clipping(None, 1.0, "norm")
    module.configure_gradient_clipping(None, 0.5, None)
    assert calls == [1.0, 0.5]


def test_modules_with_gradient_free_parameters_refuse_plain_ddp():
    module = GANTokenizerModule(tiny_titok(), disc_channels=8, disc_layers=1)
    module._trainer = types.SimpleNamespace(strategy=DDPStrategy())
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
        module.setup("fit")
    module._trainer = types.SimpleNamespace(strategy=DDPStrategy(find_unused_parameters=True))
    module.setup("fit")


def test_gan_grad_clip_acts_on_unscaled_16_mixed_gradients(monkeypatch):
    """``16-mixed`` unscales inside ``opt.step()``: the clip runs there (on_before_optimizer_step), so every step
    sees gradients of norm ``grad_clip`` (clipping before step clipped the loss-scaled ones: norm / 65536 after)."""
    norms, real = [], torch.optim.AdamW.step

    def step(self, *a, **k):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads]))))
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    L.seed_everything(0)
    module = GANTokenizerModule(tiny_titok(patch_size=16, width=16, num_latent_tokens=4, codebook_size=16,
                                           token_size=4), lr=3e-3, warmup_steps=1, disc_start=0, disc_channels=8,
                                disc_layers=1, grad_clip=0.01)
    data = ShapesDataModule(image_size=32, train_size=16, val_size=4, batch_size=4, seed=2)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0,
                        plugins=[MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))])
    trainer.fit(module, data)
    assert norms and all(n == pytest.approx(0.01, rel=1e-3) for n in norms), norms


def test_generator_tokens_come_from_the_batch_start_hook(tmp_path):
    """The trainer's batch-start hook makes the tokens (outside an FSDP forward, which would cast the pixels to
    bf16); the step uses them, and a step called on its own still makes its own."""
    torch.manual_seed(0)
    save_pretrained(tiny_titok(), tmp_path / "tok")
    module = GeneratorModule(tiny_ar(num_classes=4), str(tmp_path / "tok"), conditioning="class")
    batch = {"index": torch.arange(2), "pixels": torch.rand(2, 3, 32, 32), "label": torch.tensor([0, 1])}
    seen = []
    real = module.generator.forward
    module.generator.forward = lambda tokens, cond: (seen.append(tokens), real(tokens, cond))[1]
    module.on_train_batch_start(batch, 0)
    ready = module._ready["train"]
    module._ready["train"] = ready.flip(0)  # marked: the step must take these, not encode again
    module._loss(batch, "train")
    assert torch.equal(seen[-1], ready.flip(0)) and not module._ready
    module._loss(batch, "train")  # no hook: encoded here
    assert torch.equal(seen[-1], ready)


@pytest.mark.parametrize("old,new", [(4, 2), (2, 4), (2, 2), (1, 3)])
def test_resuming_on_another_number_of_ranks_trains_each_item_once(old, new):
    """An epoch interrupted after 3 batches of 2 on ``old`` ranks resumes on ``new`` ranks with the items not trained
    yet (plus at most the padding that equal shares need; skipping each rank's first batches of its new share had
    re-trained or skipped a third of them); on the same number of ranks each rank continues its uninterrupted
    order."""
    from vistok.training.data import ResumableSampler

    data, batch, done = list(range(40)), 2, 3

    def sampler(w: int, r: int) -> ResumableSampler:
        s = ResumableSampler(data, batch, seed=5, num_replicas=w, rank=r)
        s.set_epoch(1)
        return s

    trained = [i for r in range(old) for i in list(sampler(old, r))[: done * batch]]
    resumed = []
    for r in range(new):
        s = sampler(new, r)
        s.resume(1, done * batch * old)
        resumed.append(list(s))
    assert len({len(x) for x in resumed}) == 1  # equal shares
    flat = [i for x in resumed for i in x]
    assert set(trained) | set(flat) == set(data)  # nothing skipped ...
    assert len(flat) < len(data) - len(trained) + 2 * new  # ... nothing re-trained beyond equal-share padding
    if old == new:
        assert all(x == list(sampler(new, r))[done * batch:] for r, x in enumerate(resumed))


def test_codebook_usage_counts_the_codes_of_every_rank():
    module = TokenizerModule(tiny_titok())
    codes = [torch.tensor([0, 1, 1]), torch.tensor([3])]
    assert module.code_counts(codes, 5).tolist() == [1, 2, 0, 1, 0]  # no trainer: this process's codes
    sent = []
    module._trainer = types.SimpleNamespace(world_size=2, strategy=types.SimpleNamespace(
        reduce=lambda t, reduce_op: (sent.append(reduce_op), t + torch.tensor([0, 0, 4, 0, 0.0]))[1]))
    assert module.code_counts(codes, 5).tolist() == [1, 2, 4, 1, 0] and sent == ["sum"]  # the other rank's code 2


def test_adaptive_gan_weight_survives_fp16_with_the_loss_scale():
    """Under fp16 autocast the reconstruction gradient through the decoder underflows (weight near 0 at 256 px x
    16); the grad scaler's scale on both losses, taken off the gradients, gives the fp32 weight back, and a scale
    that overflows falls back to the unscaled gradients (a finite weight, not NaN)."""
    import torch.nn.functional as F

    from vistok.training.losses import PatchDiscriminator, adaptive_gan_weight, hinge_g_loss

    torch.manual_seed(0)
    feat, x = torch.randn(16, 8, 256, 256), torch.rand(16, 3, 256, 256)
    conv, disc = torch.nn.Conv2d(8, 3, 3, padding=1), PatchDiscriminator(16, 3)
    weights = {}
    runs = (("fp32", None, 1.0), ("fp16", torch.float16, 1.0), ("fp16 scaled", torch.float16, 2.0 ** 10),
            ("fp16 overflow", torch.float16, 2.0 ** 16))
    for name, dtype, scale in runs:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            recon = 0.5 + 0.05 * conv(feat)
            rec = F.mse_loss(recon, x) + 0.2 * F.l1_loss(recon, x)
            weights[name] = float(adaptive_gan_weight(rec, hinge_g_loss(disc(recon)), conv.weight, loss_scale=scale))
    assert weights["fp16"] < 0.5 * weights["fp32"]  # the control: unscaled fp16 loses the reconstruction gradient
    assert weights["fp16 scaled"] == pytest.approx(weights["fp32"], rel=0.05)
    assert weights["fp16 overflow"] == weights["fp16"]  # fell back, finite
