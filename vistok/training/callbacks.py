"""Lightning callbacks for long runs: export on rank zero, stop on a non-finite loss, survive SIGTERM / SIGINT.

``vistok fit`` adds :class:`FiniteLoss` and :class:`Resumable` to every run (see :mod:`vistok.cli`); a module adds
:class:`Export` itself when its ``export_dir`` is set.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vistok.hub import save_pretrained

__all__ = ["Export", "FiniteLoss", "Resumable"]


def rng_state() -> dict:
    """torch (CPU and this process's CUDA device), numpy and python random states, as tensors / plain values
    (``weights_only`` loads).

    Only the current CUDA device's state is kept: a rank draws on its own device, and ``seed_everything`` seeds every
    rank's device alike, so rank zero's state (the one a checkpoint keeps) is every rank's; a state per visible
    device would not restore on a machine with fewer GPUs and would rewind the other ranks' devices."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state` (the CUDA state goes to the current device; checkpoints written before this
    kept a list, one per visible device: this device's entry, or the first one, is used)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):
        cuda = (cuda[min(torch.cuda.current_device(), len(cuda) - 1)] if cuda and torch.cuda.is_available()
                else None)
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))


class Export(L.Callback):
    """When training ends, write ``module.exported_model()`` as a hub folder (config.json + model.safetensors).

    Only rank zero writes: under DDP every rank holds the same weights.  Under a sharding strategy (FSDP) every rank
    first takes part in gathering the full state dict (``trainer.strategy.lightning_module_state_dict()``), then rank
    zero loads it into a fresh, unsharded copy of the network and writes that.

    Args:
        export_dir: target folder (created).
        fp16: store floating-point weights in fp16.
    """

    def __init__(self, export_dir: str, fp16: bool = True):
        self.export_dir, self.fp16 = export_dir, fp16

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # every rank: exported_model may run a forward pass (a VAE tokenizer calibrates its latent scale), which
        # under FSDP all ranks must join, and which must happen before the state is gathered
        model = module.exported_model()
        sharded = "FSDP" in type(trainer.strategy).__name__
        state = trainer.strategy.lightning_module_state_dict() if sharded else None  # a collective under FSDP
        if not trainer.is_global_zero:
            return
        if state is not None:
            prefix = next(f"{name}." for name, child in module.named_children() if child is model)
            fresh = type(model)(**model.config)
            fresh.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})
            model = fresh
        folder = save_pretrained(model, Path(self.export_dir), dtype=torch.float16 if self.fp16 else None)
        print(f"exported {type(model).__name__} to {folder}")


class FiniteLoss(L.Callback):
    """Stop with ``FloatingPointError`` naming the step when a training loss is NaN or infinite.

    The check runs before the backward pass, so the weights (and a checkpoint saved afterwards) are still finite.
    Under DDP the ranks agree first (one all-reduce per backward), so every rank stops together.
    """

    def on_before_backward(self, trainer: L.Trainer, module: L.LightningModule, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise FloatingPointError(
                f"the training loss is {float(loss.detach().float().mean())} at step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}, batch {trainer.fit_loop.epoch_loop.batch_idx}); lower the lr, keep "
                "trainer.gradient_clip_val on, or resume from the last checkpoint with --ckpt_path last")


class Resumable(L.Callback):
    """Interrupted runs resume exactly where they stopped.

    * SIGTERM (a scheduler's pre-emption, ``kill``) and SIGINT (Ctrl-C) stop the run at the end of the current
      batch (Lightning's own SIGTERM path; SIGINT is routed to it) and save ``last.ckpt`` in the
      ModelCheckpoint's folder, so ``vistok fit --config ... --ckpt_path last`` continues.
    * The random state (torch, CUDA, numpy, python) is saved in every checkpoint and restored when training resumes;
      validation runs on a forked random state, so the training stream does not depend on where validation
      happened.  With the resumable sampler of :class:`vistok.training.ShapesDataModule` (mid-epoch data order),
      a resumed run ends with the weights of an uninterrupted one.

    Args:
        dirpath: where the interrupt checkpoint goes when the trainer has no ModelCheckpoint (default
            ``<default_root_dir>/checkpoints``).
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath
        self._rng_to_restore: dict | None = None
        self._val_rng: dict | None = None
        self._old_sigint = None
        self.saved_to: str | None = None

    # -- signals ----------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._rng_to_restore is not None:  # after the sanity check and the loaders' set-up, like a straight run
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        try:  # SIGINT -> the SIGTERM handler Lightning installed: stop at the end of the batch, not mid-step
            self._old_sigint = signal.signal(signal.SIGINT, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
        except ValueError:  # not the main thread: keep Python's KeyboardInterrupt
            self._old_sigint = None

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if self._old_sigint is not None:
            signal.signal(signal.SIGINT, self._old_sigint)
            self._old_sigint = None

    def interrupt_path(self, trainer: L.Trainer) -> str:
        ckpt = trainer.checkpoint_callback
        folder = ckpt.dirpath if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath else self.dirpath
        return os.path.join(folder or os.path.join(trainer.default_root_dir, "checkpoints"), "last.ckpt")

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)) or trainer.state.fn != "fit":
            return
        self.saved_to = self.interrupt_path(trainer)
        trainer.save_checkpoint(self.saved_to)
        rank_zero_info(f"interrupted at step {trainer.global_step}: saved {self.saved_to}; continue with the same "
                       "command plus --ckpt_path last")

    # -- random state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"rng": rng_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._rng_to_restore = state_dict.get("rng")

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._val_rng = rng_state()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._val_rng is not None:
            set_rng_state(self._val_rng)
            self._val_rng = None
