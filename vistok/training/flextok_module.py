"""LightningModule that trains a FlexTok tokenizer: rectified-flow loss with nested dropout and CFG dropout (both
inside :meth:`vistok.tokenizers.flextok.FlexTok.forward`), plus optional REPA feature alignment.

REPA (Yu et al., "Representation Alignment for Generation", arXiv 2410.06940; FlexTok aligns an intermediate
decoder layer with DINOv2-L features): a small MLP projects the decoder's patch features after block
``repa_layer`` and the loss is ``-cos(projection, frozen features)`` averaged over patches.  The frozen encoder is
any local TorchScript file mapping pixels in [0, 1] ``(B, 3, H, W)`` to ``(B, T, D)`` tokens (square ``T``) or a
``(B, D, h, w)`` map; features are resized to the decoder's patch grid.  Nothing is downloaded.

``repa_target="tokens"`` is a vistok variant, not in FlexTok: the projector reads the quantized codes of the first
``repa_tokens`` registers (straight-through FSQ values, so the gradient reaches the encoder) and is aligned with the
frozen features averaged over the image.  It asks the first tokens to carry what the frozen encoder sees globally,
without constraining the decoder's features (docs/flextok.md, "Thirteenth and fourteenth runs").
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vistok.evaluation import psnr
from vistok.training.base import TrainingModule, adamw_warmup_cosine


def load_repa_encoder(path: str | Path) -> nn.Module:
    """A frozen TorchScript feature encoder from a local file (the REPA target)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"repa_encoder {path} is not a file: give a TorchScript module (torch.jit.save) that "
                                "maps pixels in [0, 1] (B, 3, H, W) to features (B, T, D) or (B, D, h, w), or leave "
                                "repa_encoder unset to train without REPA")
    net = torch.jit.load(str(path), map_location="cpu").eval()
    for p in net.parameters():  # ScriptModules have no requires_grad_()
        p.requires_grad_(False)
    return net


def features_on_grid(feats: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, T, D) with square T, or (B, D, h, w) -> (B, grid * grid, D), bilinearly resized to ``grid``."""
    if feats.ndim == 3:
        side = math.isqrt(feats.shape[1])
        if side * side != feats.shape[1]:
            raise ValueError(f"REPA features (B, T, D) need a square token count T, got {feats.shape[1]} (drop CLS "
                             "or register tokens in the TorchScript wrapper)")
        feats = feats.transpose(1, 2).unflatten(2, (side, side))
    if feats.ndim != 4:
        raise ValueError(f"REPA features must be (B, T, D) or (B, D, h, w), got {tuple(feats.shape)}")
    if feats.shape[-1] != grid:
        feats = F.interpolate(feats.float(), size=(grid, grid), mode="bilinear", align_corners=False)
    return feats.flatten(2).transpose(1, 2)


class FlexTokModule(TrainingModule):
    """Flow-matching training of :class:`~vistok.tokenizers.flextok.FlexTok` (loss ``flow + repa_weight * repa``).

    Args:
        tokenizer: the FlexTok network (injected); its VAE stays frozen.
        lr, betas, weight_decay: AdamW settings.
        warmup_steps, total_steps, final_lr_ratio: warm-up + cosine schedule (per optimizer step; ``total_steps``
            None = the trainer's length).
        repa_encoder: local TorchScript feature encoder for REPA (None = REPA off).
        repa_weight: weight of the REPA term.
        repa_until: fraction of the LR schedule (``total_steps``) after which REPA is off: the rest of training is
            the flow loss alone, and the frozen encoder is no longer run (1.0 = REPA throughout).
        repa_layer: decoder block whose patch features are aligned (None = ``decoder_depth // 3``).
        repa_hidden: hidden width of the projector MLP.
        repa_target: ``"decoder"`` (FlexTok's REPA: the decoder's patch features after ``repa_layer``, one target per
            patch) or ``"tokens"`` (the codes of the first ``repa_tokens`` registers, one image-mean target).
        repa_tokens: how many leading registers the ``"tokens"`` projector reads.
        val_steps: flow steps when decoding in validation (None = the tokenizer's ``num_steps``).
        val_prefixes: prefix lengths decoded in validation besides the full sequence (``val/psnr_k{K}``).
        encoder_lr_scale: factor on ``lr`` for the tokenizer's encoder (a slower encoder keeps FSQ codes from
            saturating before the decoder reads them).
        nested_warmup_steps: optimizer steps at the start that train with every register kept (no nested dropout).
        export_dir: where to write the hub folder (config.json + model.safetensors) when training ends.
        export_fp16: store exported weights in fp16.

    Logs ``train/loss``, ``train/flow``, ``train/repa``; validation logs ``val/psnr`` (all tokens),
    ``val/psnr_k{K}`` and ``val/codebook_usage``.
    """

    def __init__(self, tokenizer: nn.Module, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 1e-4, warmup_steps: int = 200, total_steps: int | None = None,
                 final_lr_ratio: float = 0.1, repa_encoder: str | None = None, repa_weight: float = 0.5,
                 repa_layer: int | None = None, repa_hidden: int = 512, val_steps: int | None = None,
                 val_prefixes: tuple[int, ...] = (1, 4), encoder_lr_scale: float = 1.0, nested_warmup_steps: int = 0,
                 export_dir: str | None = None, export_fp16: bool = False, repa_until: float = 1.0,
                 repa_target: str = "decoder", repa_tokens: int = 1):
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        self.tokenizer = tokenizer
        depth = len(tokenizer.decoder.blocks)
        self.repa_layer = depth // 3 if repa_layer is None else repa_layer
        if not 0 <= self.repa_layer < depth:
            raise ValueError(f"repa_layer must be in [0, {depth - 1}] (decoder blocks), got {repa_layer}")
        if not encoder_lr_scale > 0 or nested_warmup_steps < 0:
            raise ValueError(f"encoder_lr_scale must be > 0 and nested_warmup_steps >= 0, got {encoder_lr_scale}, "
                             f"{nested_warmup_steps}")
        if not 0 < repa_until <= 1:
            raise ValueError(f"repa_until is a fraction of training in (0, 1], got {repa_until}")
        if repa_target not in ("decoder", "tokens"):
            raise ValueError(f"repa_target must be 'decoder' or 'tokens', got {repa_target!r}")
        if not 1 <= repa_tokens <= tokenizer.num_tokens:
            raise ValueError(f"repa_tokens must lie in [1, {tokenizer.num_tokens}], got {repa_tokens}")
        bad = [k for k in val_prefixes if not 1 <= k <= tokenizer.num_tokens]
        if bad:
            raise ValueError(f"val_prefixes must lie in [1, {tokenizer.num_tokens}], got {bad}")
        self._frozen: dict[str, nn.Module] = {}  # outside the state dict: checkpoints stay small
        self.projector = None
        if repa_encoder is not None:
            enc = load_repa_encoder(repa_encoder)
            side = tokenizer.image_size
            with torch.no_grad():
                dim = features_on_grid(enc(torch.full((1, 3, side, side), 0.5)), 1).shape[-1]
            width = tokenizer.decoder.patch_embed.out_features
            if repa_target == "tokens":
                width = tokenizer.decoder.from_codes.in_features * repa_tokens
            self.projector = nn.Sequential(nn.Linear(width, repa_hidden), nn.SiLU(), nn.Linear(repa_hidden, dim))
            self._frozen["repa"] = enc

    # -- training --------------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x = batch["pixels"]
        nested = self.global_step >= self.hparams.nested_warmup_steps
        repa_on = self.projector is not None and self.global_step < self._repa_stop
        on_decoder = repa_on and self.hparams.repa_target == "decoder"
        out = self.tokenizer(x, return_layer=self.repa_layer if on_decoder else None, nested=nested)
        loss = out.loss
        logs = {"train/flow": out.loss.detach()}
        if self.projector is not None and not repa_on:  # zero-gradient link: DDP expects every parameter used
            loss = loss + 0.0 * sum(p.sum() for p in self.projector.parameters())
        if repa_on:
            enc = self._frozen["repa"].to(x.device)
            with torch.no_grad():
                feats = enc(x)
            if on_decoder:
                hidden = out.extras["hidden"]  # b P c
                target = features_on_grid(feats, math.isqrt(hidden.shape[1]))  # b P D
            else:  # the first registers' codes -> the features' image mean
                hidden = out.extras["codes"][:, :self.hparams.repa_tokens].flatten(1)  # b (k d)
                target = features_on_grid(feats, math.isqrt(feats.shape[1]) if feats.ndim == 3 else feats.shape[-1])
                target = target.mean(1)  # b D
            repa = -F.cosine_similarity(self.projector(hidden).float(), target.float(), dim=-1).mean()
            loss = loss + self.hparams.repa_weight * repa
            logs["train/repa"] = repa.detach()
        logs["train/loss"] = loss.detach()
        self.log_dict(logs, prog_bar=True)
        return loss

    def configure_optimizers(self):
        steps = self.schedule_steps()
        self._repa_stop = self.hparams.repa_until * steps  # the optimizer step from which REPA is off
        return adamw_warmup_cosine(self, self.hparams, steps,
                                   lr_scales={"tokenizer.encoder.": self.hparams.encoder_lr_scale})

    # -- validation ------------------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self._t0 = time.time()

    def on_validation_epoch_start(self) -> None:
        self._val_codes: list[torch.Tensor] = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = batch["pixels"]
        tok = self.tokenizer
        ids = tok.encode(x)
        gen = torch.Generator(device=x.device).manual_seed(batch_idx)
        steps = self.hparams.val_steps
        self.log("val/psnr", psnr(tok.decode(ids, num_steps=steps, generator=gen), x).mean(), prog_bar=True,
                 batch_size=len(x), sync_dist=True)
        for k in self.hparams.val_prefixes:
            recon = tok.decode(ids[:, :k], num_steps=steps, generator=gen)
            self.log(f"val/psnr_k{k}", psnr(recon, x).mean(), batch_size=len(x), sync_dist=True)
        self._val_codes.append(ids.flatten())

    def on_validation_epoch_end(self) -> None:
        self.log("val/elapsed_min", (time.time() - getattr(self, "_t0", time.time())) / 60)
        if self._val_codes:
            used = self.code_counts(self._val_codes, self.tokenizer.codebook_size) > 0
            self.log("val/codebook_usage", used.float().mean())

    def exported_model(self) -> nn.Module:
        return self.tokenizer
