"""Every YAML in configs/ runs one training batch through ``vistok fit`` (LightningCLI)."""

import importlib
from pathlib import Path

import pytest
import torch
import yaml

from vistok import create_tokenizer, save_pretrained
from vistok.cli import main

ROOT = Path(__file__).parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def untrained_tokenizer_for(export_dir: str):
    """The tokenizer whose config in configs/tokenizers exports to ``export_dir``, freshly initialised."""
    for cfg in (ROOT / "configs" / "tokenizers").glob("*.yaml"):
        model = yaml.safe_load(cfg.read_text())["model"]["init_args"]
        if model.get("export_dir") == export_dir:
            spec = model["tokenizer"]
            module, name = spec["class_path"].rsplit(".", 1)
            return getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))
    raise AssertionError(f"no tokenizer config exports to {export_dir}: add one to configs/tokenizers")


def in_tmp(config: Path, tmp_path: Path) -> Path:
    """A copy of ``config`` whose callbacks write under ``tmp_path`` (configs name runs/<name>/checkpoints)."""
    cfg = yaml.safe_load(config.read_text())
    for callback in cfg["trainer"].get("callbacks") or []:
        if "dirpath" in callback.get("init_args", {}):
            callback["init_args"]["dirpath"] = str(tmp_path / "checkpoints")
    path = tmp_path / config.name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_print_config_parses(config, capsys):
    """Every shipped config parses (class paths, keys, types) and prints back without total_steps (derived)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["total_steps"] is None
    assert printed["trainer"]["max_steps"] > 0


def fast_dev_run_args(config: Path, tmp_path: Path, accelerator: str = "cpu") -> list[str]:
    """``vistok fit`` arguments that run ``config`` for one batch on ``accelerator``, writing under ``tmp_path``
    (untrained stand-ins for the exports it reads; the multi-GPU recipes on one device of that kind)."""
    args = ["fit", "--config", str(in_tmp(config, tmp_path)), "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false", "--data.init_args.train_size=16", "--data.init_args.val_size=8",
            "--data.init_args.batch_size=8", f"--model.init_args.export_dir={tmp_path / 'export'}"]
    args += [f"--trainer.accelerator={accelerator}", "--trainer.devices=1"]
    if config.parent.name == "multi_gpu":  # GPU-cluster recipes: the same model, one process, 2 blocks
        args += ["--trainer.num_nodes=1", "--trainer.strategy=auto", "--data.init_args.num_workers=0",
                 "--model.init_args.generator.init_args.depth=2"]
        if accelerator == "cpu":  # (bf16-mixed stays on a GPU)
            args.append("--trainer.precision=32-true")
    init_args = yaml.safe_load(config.read_text())["model"]["init_args"]
    for key in ("tokenizer_path", "pretrained"):  # a run's export (a generator's tokenizer, stage 1 of stage 2)
        path = init_args.get(key)
        if path and not (ROOT / path).is_dir():  # not trained on this machine: an untrained stand-in
            save_pretrained(untrained_tokenizer_for(path), tmp_path / key)
            args.append(f"--model.init_args.{key}={tmp_path / key}")
    repa = init_args.get("repa_encoder")
    if repa and not (ROOT / repa).is_file():  # made by benchmarks/flextok_debug/repa_encoder.py: a stand-in encoder
        torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 8, 8, stride=8)), str(tmp_path / "repa.pt"))
        args.append(f"--model.init_args.repa_encoder={tmp_path / 'repa.pt'}")
    return args


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_fit_fast_dev_run(config, tmp_path):
    args = fast_dev_run_args(config, tmp_path)
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
    results = _validate_results(cli_args)
    for key in ("val/psnr", "val/ssim", "val/rfid", "val/codebook_usage", "val/codebook_perplexity"):
        assert key in results, f"{key} missing from {sorted(results)}"
    assert 0 < results["val/psnr"] < 60 and -1 <= results["val/ssim"] <= 1 and results["val/rfid"] >= 0


class _StandInI3D(torch.nn.Module):
    """The I3D TorchScript call signature; features = per-channel means and stds over (T, H, W)."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = True,
                return_features: bool = True) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1)


def _validate_results(cli_args: list[str]) -> dict:
    import lightning.pytorch as pl

    results, original = {}, pl.Trainer.validate

    def capture(self, *a, **k):
        out = original(self, *a, **k)
        results.update(out[0])
        results["_module"] = self.lightning_module
        return out

    pl.Trainer.validate = capture
    try:
        main(cli_args)
    finally:
        pl.Trainer.validate = original
    return results


def test_validate_larp_reports_video_metrics(tmp_path, capsys, caplog):
    """``vistok validate`` with the LARP config: per-frame PSNR / SSIM, temporal consistency, FVD only with a local
    I3D file (a stand-in TorchScript module here), and a message saying how to get it otherwise."""
    pytest.importorskip("torchmetrics")
    config = ROOT / "configs" / "tokenizers" / "larp_tiny.yaml"
    tok = untrained_tokenizer_for("runs/larp_tiny/export")
    torch.nn.init.normal_(tok.head.weight, std=0.2)  # the zero-init pixel head would decode every clip to one value
    save_pretrained(tok, tmp_path / "tok")
    args = ["validate", "--config", str(in_tmp(config, tmp_path)), f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false", "--data.init_args.val_size=4", "--data.init_args.batch_size=4",
            "--trainer.limit_val_batches=1", f"--model.init_args.pretrained={tmp_path / 'tok'}"]
    results = _validate_results(args)
    for key in ("val/psnr", "val/psnr_first_frame", "val/psnr_last_frame", "val/ssim", "val/ssim_first_frame",
                "val/ssim_last_frame", "val/temporal_consistency", "val/codebook_usage"):
        assert key in results, f"{key} missing from {sorted(results)}"
    assert "val/fvd" not in results
    video = results["_module"].video_metrics
    assert len(video["psnr_per_frame"]) == len(video["ssim_per_frame"]) == 16 and video["num_clips"] == 4
    # the per-frame means agree with the clip PSNR's order of magnitude and with vistok.evaluation directly
    from vistok.data.videos import MovingShapesDataset
    from vistok.evaluation import psnr_per_frame

    clips = torch.stack([MovingShapesDataset(4, image_size=32, num_frames=16, seed=1)[i]["pixels"] for i in range(4)])
    with torch.no_grad():
        tok.eval()
        want = psnr_per_frame(tok.decode(tok.encode(clips)), clips).mean(0)
    assert torch.allclose(torch.tensor(video["psnr_per_frame"], dtype=torch.float64), want.double(), atol=1e-3)
    assert len(set(video["psnr_per_frame"])) > 1
    assert "per-frame PSNR (dB, 4 clips)" in caplog.text and "FVD: not computed" in caplog.text
    i3d = tmp_path / "i3d.pt"
    torch.jit.script(_StandInI3D()).save(str(i3d))
    results = _validate_results([*args, f"--model.init_args.i3d_path={i3d}"])
    assert results["val/fvd"] > 0  # untrained reconstructions are far from the clips
    with pytest.raises(SystemExit):
        main([*args, f"--model.init_args.i3d_path={tmp_path / 'none.pt'}"])
    assert "FVD needs a local I3D TorchScript file" in capsys.readouterr().err


# -- errors: one line, exit 1, no traceback (unless --debug) --------------------------------------------------------
TINY = ROOT / "configs" / "tokenizers" / "titok_tiny.yaml"


@pytest.mark.parametrize("args, message", [
    (["fit", "--config", "no/such.yaml"], "File does not exist"),
    (["fit", "--config", str(TINY), "--model.init_args.no_such_key", "1"], "'no_such_key' is not accepted"),
    (["validate", "--config", str(TINY), "--model.init_args.pretrained", "no/such/export"], "no such folder"),
    (["fit", "--config", str(TINY), "--model.init_args.perceptual_weight", "-1"],
     "perceptual_weight must be >= 0"),
])
def test_errors_are_one_readable_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("vistok ")]
    assert len(err) == 1 and err[0].startswith(f"vistok {args[0]}: error: ") and message in err[0], err
    assert "--debug" in err[0]


def test_debug_shows_the_exception():
    with pytest.raises(ValueError, match="perceptual_weight must be >= 0"):
        main(["fit", "--config", str(TINY), "--model.init_args.perceptual_weight", "-1", "--debug"])


def test_eval_dispatches_to_eval_cli(monkeypatch, capsys):
    import sys
    import types

    seen = []
    monkeypatch.setitem(sys.modules, "vistok.eval_cli", types.SimpleNamespace(main=seen.append))
    main(["eval", "--metric", "fid"])
    assert seen == [["--metric", "fid"]]
    monkeypatch.setitem(sys.modules, "vistok.eval_cli", None)  # as if the module were missing
    with pytest.raises(SystemExit) as exit_info:
        main(["eval"])
    assert exit_info.value.code == 1 and "no vistok/eval_cli.py" in capsys.readouterr().err
