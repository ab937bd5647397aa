"""LightningModule that trains a :class:`vistok.tokenizers.larp.LARP` video tokenizer together with its AR prior.

Loss (per step), as LARP's tokenizer trainer without its LPIPS and GAN terms:
``l1_weight * L1 + mse_weight * MSE + vq_weight * VQ + prior_weight * prior cross-entropy``, where the prior term is
averaged over the prior's rounds and its scheduled-sampling ratio follows the training progress
``global_step / total_steps``.  The prior trains at ``lr * prior_lr_mult`` (official: 1e-4 x 50).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vistok.evaluation import psnr
from vistok.training.base import TrainingModule, warmup_cosine


class LARPModule(TrainingModule):
    """Reconstruction + VQ + AR-prior training of a LARP tokenizer on batches ``{"pixels": (B, 3, T, H, W)}``.

    Args:
        tokenizer: the LARP network (injected, e.g. ``vistok.tokenizers.LARP``).
        lr, betas, weight_decay: AdamW settings (official LARP: Adam, 1e-4, (0.5, 0.9), no weight decay); weight
            decay touches only matrices outside the prior, the learned queries and the codebook.
        prior_lr_mult: learning-rate multiplier of the prior (official 50).
        warmup_steps, final_lr_ratio: linear warm-up, then cosine to ``final_lr_ratio`` at ``total_steps``.
        total_steps: training length for the LR schedule and the scheduled-sampling ramp (None: the trainer's
            ``estimated_stepping_batches``, i.e. ``max_steps`` when set).
        l1_weight, mse_weight: pixel losses (official: L1 1.0, no MSE; the official LPIPS and GAN terms are not here).
        vq_weight: weight of the VQ loss (official 0.1).
        prior_weight: weight of the prior's cross-entropy (official 0.06; 0 trains no prior even if the model has one).
        prior_ramp: the prior's weight ramps linearly from 0 to ``prior_weight`` over this fraction of training
            (vistok option, official 0 = full weight from the start: an early prior term pulls every clip to one
            easily predicted code before the decoder uses the tokens).
        vq_warmup: fraction of training that decodes the continuous (l2-normalised) latents instead of the codes
            (vistok option, official 0): the decoder learns to read the latents before quantisation erases their
            small early differences; the codebook follows the encoder meanwhile (``LARP.forward(quantize=False)``).
        export_dir, export_fp16: write the trained tokenizer as a hub folder when training ends.

    Logs ``train/{loss,l1,mse,vq,prior_ce,prior_acc,ss_ratio}``; validation logs ``val/psnr`` (argmax ids),
    ``val/prior_acc`` (teacher-forced next-id accuracy of the prior), ``val/codebook_usage`` and
    ``val/codebook_perplexity``.
    """

    def __init__(self, tokenizer: nn.Module, lr: float = 1e-4, betas: tuple[float, float] = (0.5, 0.9),
                 weight_decay: float = 0.0, prior_lr_mult: float = 50.0, warmup_steps: int = 100,
                 final_lr_ratio: float = 0.01, total_steps: int | None = None, l1_weight: float = 1.0,
                 mse_weight: float = 0.0, vq_weight: float = 0.1, prior_weight: float = 0.06, prior_ramp: float = 0.0,
                 vq_warmup: float = 0.0,
                 export_dir: str | None = None, export_fp16: bool = True):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        if getattr(tokenizer, "prior_loss", None) is None:
            raise TypeError(f"LARPModule trains a vistok LARP tokenizer, got {type(tokenizer).__name__}")
        if min(l1_weight, mse_weight, vq_weight, prior_weight) < 0 or not l1_weight + mse_weight > 0:
            raise ValueError("loss weights must be >= 0 and l1_weight + mse_weight > 0")
        if not (0 <= prior_ramp <= 1 and 0 <= vq_warmup <= 1):
            raise ValueError(f"prior_ramp and vq_warmup are fractions of training in [0, 1], got {prior_ramp}, "
                             f"{vq_warmup}")
        self.tokenizer = tokenizer

    def _total_steps(self) -> float:
        return float(self.schedule_steps())

    def prior_scale(self, progress: float) -> float:
        """Weight of the prior's cross-entropy at training ``progress``: the linear ramp of ``prior_ramp``."""
        h = self.hparams
        return h.prior_weight * (min(1.0, progress / h.prior_ramp) if h.prior_ramp > 0 else 1.0)

    # -- training --------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, h, tok = batch["pixels"], self.hparams, self.tokenizer
        progress = min(1.0, self.global_step / self._total_steps())
        out = tok(x, progress=progress, quantize=progress >= h.vq_warmup)
        l1, mse = F.l1_loss(out.reconstruction, x), F.mse_loss(out.reconstruction, x)
        loss = h.l1_weight * l1 + h.mse_weight * mse + h.vq_weight * out.loss
        logs = {"train/l1": l1, "train/mse": mse, "train/vq": out.loss.detach()}
        if "prior_loss" in out.extras and h.prior_weight > 0:
            loss = loss + self.prior_scale(progress) * out.extras["prior_loss"]
            logs.update({"train/prior_weight": torch.tensor(self.prior_scale(progress)),
                         "train/prior_ce": out.extras["prior_loss"].detach(),
                         "train/prior_acc": out.extras["prior_acc"],
                         "train/ss_ratio": torch.tensor(tok.ss_ratio(progress))})
        logs["train/loss"] = loss
        self.log_dict(logs, prog_bar=True, batch_size=len(x))
        return loss

    # -- validation ------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_codes: list[torch.Tensor] = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x, tok = batch["pixels"], self.tokenizer
        ids = tok.encode(x)
        self.log("val/psnr", psnr(tok.decode(ids), x).mean(), prog_bar=True, batch_size=len(x))
        if tok.prior is not None:
            acc = (tok.prior_logits(tok.quantizer.lookup(ids)).argmax(-1) == ids[:, 1:]).float().mean()
            self.log("val/prior_acc", acc, batch_size=len(x))
        self._val_codes.append(ids.flatten())

    def on_validation_epoch_end(self) -> None:
        if not self._val_codes:
            return
        counts = torch.bincount(torch.cat(self._val_codes), minlength=self.tokenizer.codebook_size).float()
        p = counts[counts > 0] / counts.sum()
        self.log("val/codebook_usage", (counts > 0).float().mean())
        self.log("val/codebook_perplexity", torch.exp(-(p * p.log()).sum()))

    # -- optimisation ----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        h, tok = self.hparams, self.tokenizer
        prior = {id(p) for p in tok.prior.parameters()} if tok.prior is not None else set()
        decay, rest, prior_params = [], [], []
        for name, p in tok.named_parameters():
            if id(p) in prior:
                prior_params.append(p)
            elif p.ndim >= 2 and name not in ("latent_queries", "quantizer.embedding.weight"):
                decay.append(p)
            else:
                rest.append(p)
        groups = [{"params": decay, "weight_decay": h.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        if prior_params:
            groups.append({"params": prior_params, "weight_decay": 0.0, "lr": h.lr * h.prior_lr_mult})
        opt = torch.optim.AdamW(groups, lr=h.lr, betas=tuple(h.betas))
        total = self.schedule_steps()
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, h.warmup_steps, total, h.final_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def exported_model(self) -> nn.Module:
        return self.tokenizer
