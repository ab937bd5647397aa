"""What every vistok LightningModule shares: AdamW with a warm-up + cosine schedule whose length comes from the
trainer, loading a ``save_pretrained`` folder to continue from, and the export of the trained network as a hub folder
(a rank-zero callback, see :class:`vistok.training.callbacks.Export`)."""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from vistok.hub import from_pretrained


def warmup_cosine(step: int, warmup: int, total: int, final_ratio: float) -> float:
    """LR multiplier: linear warm-up, then cosine from 1 to ``final_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def record_param_ndim(module: nn.Module) -> None:
    """Remember every parameter's rank before a sharding strategy flattens it (FSDP with ``use_orig_params`` turns
    each parameter into a 1-D shard before ``configure_optimizers`` runs): :func:`param_ndim` reads it back."""
    for p in module.parameters():
        if not hasattr(p, "_vistok_ndim"):
            p._vistok_ndim = p.ndim


def param_ndim(p: torch.Tensor) -> int:
    """The rank of ``p`` as built (see :func:`record_param_ndim`): what the weight-decay split goes by."""
    return getattr(p, "_vistok_ndim", p.ndim)


def require_unused_parameter_search(module: L.LightningModule, why: str) -> None:
    """Raise a clear error when ``module`` trains under plain DDP: DDP's reducer fails the first step when some
    trainable parameters get no gradient (``why``), unless it searches for them."""
    trainer = module._trainer
    strategy = getattr(trainer, "strategy", None)
    if type(strategy).__name__ == "DDPStrategy" and not getattr(strategy, "_ddp_kwargs", {}).get(
            "find_unused_parameters", False):
        raise ValueError(f"{type(module).__name__} under DDP needs --trainer.strategy "
                         f"ddp_find_unused_parameters_true: {why}")


def adamw_warmup_cosine(model: nn.Module, h, total_steps: int, lr_scales: dict[str, float] | None = None) -> dict:
    """AdamW (no weight decay on biases, norms and embeddings) + per-step warm-up/cosine over ``total_steps``, from
    hparams ``lr, betas, weight_decay, warmup_steps, final_lr_ratio``.  ``lr_scales`` maps a parameter-name prefix to
    a factor on ``lr`` for the parameters under it (e.g. ``{"tokenizer.encoder.": 0.3}``)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [(n, p) for n, p in named if param_ndim(p) >= 2 and "embed" not in n]
    rest = [(n, p) for n, p in named if not (param_ndim(p) >= 2 and "embed" not in n)]
    scales = lr_scales or {}

    def factor(name: str) -> float:
        return next((v for k, v in scales.items() if name.startswith(k)), 1.0)

    groups = []  # (decay, rest) as before; each split further by lr factor when lr_scales is given
    for params, wd in ((decay, h.weight_decay), (rest, 0.0)):
        for f in sorted({1.0} | {factor(n) for n, _ in params}, reverse=True):
            ps = [p for n, p in params if factor(n) == f]
            if ps or f == 1.0:
                groups.append({"params": ps, "weight_decay": wd, "lr": h.lr * f})
    opt = torch.optim.AdamW(groups, lr=h.lr, betas=h.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, h.warmup_steps, total_steps, h.final_lr_ratio))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


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
        rank_zero_info(f"pretrained: {len(missing)} new tensors keep their init ({fresh})")


@torch.no_grad()
def frozen_encode(tokenizer: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """``tokenizer.encode(pixels)`` of a frozen helper (a generator's tokenizer, TiTok's proxy codes) in fp32 even
    inside a ``bf16-mixed`` step, so its ids / latents are the ones sampling-time decoding and evaluation see."""
    with torch.autocast(pixels.device.type, enabled=False):
        return tokenizer.encode(pixels.float())


def checkpoint_activations(model: nn.Module) -> int:
    """Activation checkpointing: each block of every ``nn.ModuleList`` in ``model`` (the transformer blocks of every
    vistok generator) recomputes its activations in the backward pass instead of storing them; less memory, one more
    forward pass per block.  Outside training (no grad, eval mode: sampling with a KV cache) blocks run as before.
    State-dict keys are unchanged.  Returns the number of blocks wrapped."""
    from torch.utils.checkpoint import checkpoint

    def wrap(block: nn.Module) -> None:
        forward = block.forward

        def checkpointed(*args, **kwargs):
            if block.training and torch.is_grad_enabled():
                return checkpoint(forward, *args, use_reentrant=False, **kwargs)
            return forward(*args, **kwargs)

        block.forward = checkpointed

    def visit(module: nn.Module) -> int:  # outermost lists only: a wrapped block is not entered
        if isinstance(module, nn.ModuleList):
            for block in module:
                wrap(block)
            return len(module)
        return sum(visit(child) for child in module.children())

    return visit(model)


class TrainingModule(L.LightningModule):
    """Base of :class:`TokenizerModule` and :class:`GeneratorModule`.

    Subclasses save hparams ``lr, betas, weight_decay, warmup_steps, total_steps, final_lr_ratio, export_dir,
    export_fp16`` and implement :meth:`exported_model`.  ``total_steps=None`` (the default) takes the schedule's
    length from the trainer (``max_steps``, or epochs x batches), so configs state it once.
    """

    def exported_model(self) -> nn.Module:
        """The network written to ``export_dir`` when training ends (called on every rank; rank zero writes)."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        record_param_ndim(self)  # before a strategy wraps (and FSDP flattens) the parameters

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """``trainer.gradient_clip_val`` (by norm) under FSDP too: Lightning's FSDP precision plugin refuses norm
        clipping, FSDP's own ``clip_grad_norm_`` takes the norm over every shard."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        if gradient_clip_val and "FSDP" in type(strategy).__name__ and gradient_clip_algorithm in (None, "norm"):
            self.trainer.model.clip_grad_norm_(gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def schedule_steps(self) -> int:
        """Optimizer steps of the LR schedule: ``total_steps`` if given, else the trainer's estimate."""
        if self.hparams.get("total_steps"):
            return int(self.hparams.total_steps)
        steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            raise ValueError("cannot size the LR schedule: set trainer.max_steps (or max_epochs), or the model's "
                             "total_steps")
        return int(steps)

    def code_counts(self, codes: list[torch.Tensor], codebook_size: int) -> torch.Tensor:
        """Histogram (float, ``codebook_size``) of the validation codes of every rank: the per-rank counts summed
        under DDP / FSDP (a collective: every rank calls it), so codebook usage is not rank zero's shard alone."""
        counts = torch.bincount(torch.cat(codes), minlength=codebook_size).float()
        if self._trainer is not None and self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        return counts

    def configure_callbacks(self) -> list[L.Callback]:
        from vistok.training.callbacks import Export

        h = self.hparams
        return [Export(h.export_dir, h.export_fp16)] if h.get("export_dir") else []
