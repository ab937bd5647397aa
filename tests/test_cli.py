"""Every YAML in configs/ runs one training batch through ``vistok fit`` (LightningCLI)."""

from pathlib import Path

import pytest

from vistok import create_tokenizer, save_pretrained
from vistok.cli import main

CONFIGS = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_fit_fast_dev_run(config, tmp_path):
    args = ["fit", "--config", str(config), "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false", "--data.init_args.train_size=16", "--data.init_args.val_size=8",
            "--data.init_args.batch_size=8", f"--model.init_args.export_dir={tmp_path / 'export'}"]
    text = config.read_text()
    if "tokenizer_path" in text:
        save_pretrained(create_tokenizer("titok_tiny"), tmp_path / "tok")
        args.append(f"--model.init_args.tokenizer_path={tmp_path / 'tok'}")
    main(args)
    assert (tmp_path / "export" / "model.safetensors").is_file()
