"""Callbacks that tests put into ``vistok fit`` configs (importable by the subprocesses: ``PYTHONPATH=tests``)."""

import os
import signal

import lightning as L
import torch


class SignalAt(L.Callback):
    """Send ``signum`` to this process after training step ``step`` (as a scheduler's pre-emption or Ctrl-C)."""

    def __init__(self, step: int, signum: int = int(signal.SIGTERM)):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class NaNAt(L.Callback):
    """Poison one weight with NaN before the batch of training step ``step`` (the loss turns NaN there)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, module, *args):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(module.parameters()).fill_(float("nan"))


class DumpWeights(L.Callback):
    """When training ends, every rank saves its state dict to ``<folder>/rank<r>.pt``."""

    def __init__(self, folder: str):
        self.folder = folder

    def on_train_end(self, trainer, module):
        os.makedirs(self.folder, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        torch.save(state, os.path.join(self.folder, f"rank{trainer.global_rank}.pt"))
