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


def test_validate_tokenizer_reports_quality(tmp_path):
    """``vistok validate`` on an exported tokenizer: PSNR, SSIM, rFID and codebook statistics."""
    pytest.importorskip("torchmetrics")
    save_pretrained(create_tokenizer("titok_tiny"), tmp_path / "tok")
    config = Path(__file__).parents[1] / "configs" / "tokenizers" / "titok_tiny.yaml"
    from lightning.pytorch.cli import LightningCLI  # noqa: F401  (same entry point as `vistok validate`)

    cli_args = ["validate", "--config", str(config), f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
                "--data.init_args.val_size=4", "--data.init_args.batch_size=4", "--trainer.limit_val_batches=1",
                f"--model.init_args.pretrained={tmp_path / 'tok'}"]
    import lightning.pytorch as pl

    results = {}
    original = pl.Trainer.validate

    def capture(self, *a, **k):
        out = original(self, *a, **k)
        results.update(out[0])
        return out

    pl.Trainer.validate = capture
    try:
        main(cli_args)
    finally:
        pl.Trainer.validate = original
    for key in ("val/psnr", "val/ssim", "val/rfid", "val/codebook_usage", "val/codebook_perplexity"):
        assert key in results, f"{key} missing from {sorted(results)}"
    assert 0 < results["val/psnr"] < 60 and -1 <= results["val/ssim"] <= 1 and results["val/rfid"] >= 0
