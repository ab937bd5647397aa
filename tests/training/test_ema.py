"""EMA weights through Lightning's ``EMAWeightAveraging`` callback (docs/training.md): the export is the average, not
the last step's weights, and ``vistok fit`` takes the callback from the command line."""

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import RandomPixels
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch.utils.data import DataLoader

from vistok import from_pretrained
from vistok.cli import main
from vistok.tokenizers.flextok import FlexTok
from vistok.training.flextok_module import FlexTokModule

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = str(Path(__file__).parents[2] / "configs/tokenizers/flextok_tiny.yaml")


class _Snapshots(L.Callback):
    """The tokenizer's weights after every optimizer step."""

    def __init__(self):
        self.after = []

    def on_train_batch_end(self, trainer, module, *args):
        self.after.append({k: v.detach().clone() for k, v in module.tokenizer.state_dict().items()})


def _fit(tmp_path, callbacks) -> tuple[dict, _Snapshots]:
    tok = FlexTok(image_size=16, patch_size=4, width=32, depth=1, head_dim=16, num_registers=8)
    module = FlexTokModule(tok, val_prefixes=(1,), lr=1e-2, warmup_steps=1, total_steps=3,
                           export_dir=str(tmp_path / "export"))
    snaps = _Snapshots()
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[*callbacks, snaps])
    trainer.fit(module, DataLoader(RandomPixels(4, 16), batch_size=4))
    return from_pretrained(tmp_path / "export").state_dict(), snaps


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_export_holds_the_ema_weights(tmp_path):
    # decay 1.0: the average is the first update's copy and never moves, so it must differ from the last weights
    exported, snaps = _fit(tmp_path / "ema", [EMAWeightAveraging(decay=1.0)])
    assert len(snaps.after) == 3 and not _same(snaps.after[0], snaps.after[-1])
    assert _same(exported, snaps.after[0]) and not _same(exported, snaps.after[-1])
    # control: without the callback the export is the last step's weights
    exported, snaps = _fit(tmp_path / "plain", [])
    assert _same(exported, snaps.after[-1]) and not _same(exported, snaps.after[0])


def test_vistok_fit_appends_the_ema_callback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", CONFIG, "--trainer.max_steps", "2", f"--trainer.default_root_dir={tmp_path}",
          "--trainer.logger=false", "--trainer.limit_val_batches=0", "--data.init_args.train_size=8",
          "--data.init_args.val_size=4", "--data.init_args.batch_size=4",
          "--model.init_args.tokenizer.init_args.depth=1", f"--model.init_args.export_dir={tmp_path / 'export'}",
          "--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging", "--trainer.callbacks.decay=0.999"])
    ckpt = torch.load(tmp_path / "runs/flextok_tiny/checkpoints/last.ckpt", weights_only=False)
    assert "current_model_state" in ckpt  # the checkpoint keeps both: the average and the live weights to resume
    exported = from_pretrained(tmp_path / "export").state_dict()
    assert _same(exported, {k.removeprefix("tokenizer."): v for k, v in ckpt["state_dict"].items()
                            if k.startswith("tokenizer.")})
