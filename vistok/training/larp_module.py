"""LightningModule that trains a :class:`vistok.tokenizers.larp.LARP` video tokenizer together with its AR prior.

Loss (per step), as LARP's tokenizer trainer without its LPIPS and GAN terms:
``l1_weight * L1 + mse_weight * MSE + vq_weight * VQ + prior_weight * prior cross-entropy``, where the prior term is
averaged over the prior's rounds and its scheduled-sampling ratio follows the training progress
``global_step / total_steps``.  The prior trains at ``lr * prior_lr_mult`` (official: 1e-4 x 50).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from vistok.evaluation import fvd, psnr, psnr_per_frame, ssim_per_frame, temporal_consistency
from vistok.training.base import TrainingModule, load_pretrained_weights, param_ndim, warmup_cosine


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
        pretrained: a ``save_pretrained`` folder (e.g. an export) whose weights replace the injected tokenizer's:
            ``vistok validate --config configs/tokenizers/larp_tiny.yaml --model.init_args.pretrained runs/x/export``.
        i3d_path: a local I3D TorchScript file (``i3d_torchscript.pt`` of StyleGAN-V / LARP; never downloaded):
            validation then also reports ``val/fvd`` between the validation clips and their reconstructions.

    Logs ``train/{loss,l1,mse,vq,prior_ce,prior_acc,ss_ratio}``; validation logs ``val/psnr`` (argmax ids, per clip),
    per-frame video metrics (``val/psnr_first_frame``, ``val/psnr_last_frame``, ``val/ssim`` and its first / last
    frame, ``val/temporal_consistency``: :mod:`vistok.evaluation`), ``val/prior_acc`` (teacher-forced next-id
    accuracy of the prior), ``val/codebook_usage``, ``val/codebook_perplexity`` and ``val/fvd`` with ``i3d_path``.
    The per-frame lists are kept in :attr:`video_metrics` and printed under ``vistok validate``.
    """

    def __init__(self, tokenizer: nn.Module, lr: float = 1e-4, betas: tuple[float, float] = (0.5, 0.9),
                 weight_decay: float = 0.0, prior_lr_mult: float = 50.0, warmup_steps: int = 100,
                 final_lr_ratio: float = 0.01, total_steps: int | None = None, l1_weight: float = 1.0,
                 mse_weight: float = 0.0, vq_weight: float = 0.1, prior_weight: float = 0.06, prior_ramp: float = 0.0,
                 vq_warmup: float = 0.0, export_dir: str | None = None, export_fp16: bool = True,
                 pretrained: str | None = None, i3d_path: str | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        if getattr(tokenizer, "prior_loss", None) is None:
            raise TypeError(f"LARPModule trains a vistok LARP tokenizer, got {type(tokenizer).__name__}")
        if min(l1_weight, mse_weight, vq_weight, prior_weight) < 0 or not l1_weight + mse_weight > 0:
            raise ValueError("loss weights must be >= 0 and l1_weight + mse_weight > 0")
        if not (0 <= prior_ramp <= 1 and 0 <= vq_warmup <= 1):
            raise ValueError(f"prior_ramp and vq_warmup are fractions of training in [0, 1], got {prior_ramp}, "
                             f"{vq_warmup}")
        if i3d_path is not None and not Path(i3d_path).is_file():
            raise FileNotFoundError(f"i3d_path={i3d_path!r}: no such file; FVD needs a local I3D TorchScript file "
                                    "(i3d_torchscript.pt of StyleGAN-V / LARP), vistok does not download it")
        if pretrained:
            load_pretrained_weights(tokenizer, pretrained)
        self.tokenizer = tokenizer
        self.video_metrics: dict = {}

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
        self._val_sums: dict[str, torch.Tensor] = {}
        self._val_clips: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _accumulate(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().double().cpu()
        self._val_sums[name] = self._val_sums[name] + value if name in self._val_sums else value

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x, tok = batch["pixels"], self.tokenizer
        ids = tok.encode(x)
        recon = tok.decode(ids).float()
        self.log("val/psnr", psnr(recon, x).mean(), prog_bar=True, batch_size=len(x), sync_dist=True)
        if tok.prior is not None:
            acc = (tok.prior_logits(tok.quantizer.lookup(ids)).argmax(-1) == ids[:, 1:]).float().mean()
            self.log("val/prior_acc", acc, batch_size=len(x), sync_dist=True)
        self._val_codes.append(ids.flatten())
        self._accumulate("clips", torch.tensor(len(x)))
        self._accumulate("psnr_per_frame", psnr_per_frame(recon, x).sum(0))
        self._accumulate("ssim_per_frame", ssim_per_frame(recon, x) * len(x))
        self._accumulate("temporal_consistency", temporal_consistency(recon, x).sum())
        if self.hparams.get("i3d_path"):
            self._val_clips.append((x.detach().float().cpu(), recon.clamp(0, 1).cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val_codes:
            return
        counts = self.code_counts(self._val_codes, self.tokenizer.codebook_size)
        p = counts[counts > 0] / counts.sum()
        self.log("val/codebook_usage", (counts > 0).float().mean())
        self.log("val/codebook_perplexity", torch.exp(-(p * p.log()).sum()))
        n, sums = self._val_sums["clips"], self._val_sums
        frames = {k: (sums[k] / n).tolist() for k in ("psnr_per_frame", "ssim_per_frame")}
        metrics = {"psnr_first_frame": frames["psnr_per_frame"][0], "psnr_last_frame": frames["psnr_per_frame"][-1],
                   "ssim": sum(frames["ssim_per_frame"]) / len(frames["ssim_per_frame"]),
                   "ssim_first_frame": frames["ssim_per_frame"][0], "ssim_last_frame": frames["ssim_per_frame"][-1],
                   "temporal_consistency": float(sums["temporal_consistency"] / n)}
        if self._val_clips:
            real, fake = (torch.cat(c) for c in zip(*self._val_clips))
            if len(real) < 2:
                raise ValueError(f"FVD needs at least 2 validation clips, got {len(real)}; validate on more clips")
            metrics["fvd"] = fvd(real, fake, self.hparams.i3d_path)
        for k, v in metrics.items():
            self.log(f"val/{k}", float(v))
        self.video_metrics = {**frames, **metrics, "num_clips": int(n)}
        if self.trainer.state.fn == "validate" and not self.trainer.sanity_checking:
            fmt = lambda values, d: " ".join(f"{v:.{d}f}" for v in values)
            rank_zero_info(f"per-frame PSNR (dB, {int(n)} clips): {fmt(frames['psnr_per_frame'], 2)}\n"
                           f"per-frame SSIM: {fmt(frames['ssim_per_frame'], 4)}"
                           + ("" if "fvd" in metrics else "\nFVD: not computed; pass --model.init_args.i3d_path "
                              "PATH (a local I3D TorchScript file, e.g. i3d_torchscript.pt; nothing is downloaded)"))

    # -- optimisation ----------------------------------------------------------------------------------------
    def configure_optimizers(self):
        h, tok = self.hparams, self.tokenizer
        prior = {id(p) for p in tok.prior.parameters()} if tok.prior is not None else set()
        decay, rest, prior_params = [], [], []
        for name, p in tok.named_parameters():
            if id(p) in prior:
                prior_params.append(p)
            elif param_ndim(p) >= 2 and name not in ("latent_queries", "quantizer.embedding.weight"):
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
