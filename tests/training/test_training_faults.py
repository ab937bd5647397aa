"""``vistok fit`` survives faults: SIGTERM / SIGINT save a checkpoint, ``--ckpt_path last`` resumes to the weights of an
uninterrupted run (data order and random state included), a NaN loss stops the run naming the step."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vistok.cli import main

ROOT = Path(__file__).parents[2]


def tiny_config(tmp: Path, name: str, max_steps: int = 8, callbacks: tuple = (), **data) -> Path:
    """A tiny TiTok on 32 px shapes: 6 batches of 4 an epoch, validation every 3 steps, One-D-Piece tail drop (so
    training draws from torch's random state)."""
    run = tmp / name
    config = {
        "seed_everything": 3,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": max_steps, "logger": False,
            "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(run),
            "val_check_interval": 3, "check_val_every_n_epoch": None, "limit_val_batches": 1,
            "num_sanity_val_steps": 1,
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(run / "checkpoints"), "save_last": True,
                                         "every_n_train_steps": 100}}, *callbacks],
        },
        "model": {"class_path": "vistok.training.TokenizerModule", "init_args": {
            "tokenizer": {"class_path": "vistok.tokenizers.TiTok", "init_args": {
                "image_size": 32, "patch_size": 16, "width": 16, "depth": 1, "num_heads": 2, "num_latent_tokens": 4,
                "codebook_size": 16, "token_size": 4, "tail_drop": True}},
            "lr": 3e-3, "warmup_steps": 2, "rfid_in_validate": False, "export_dir": str(run / "export"),
            "export_fp16": False}},
        "data": {"class_path": "vistok.training.ShapesDataModule", "init_args": {
            "image_size": 32, "train_size": 24, "val_size": 4, "batch_size": 4, "seed": 5, **data}},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def exported(tmp: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(tmp / name / "export" / "model.safetensors")


def signal_at(step: int, signum: int) -> dict:
    return {"class_path": "fault_helpers.SignalAt", "init_args": {"step": step, "signum": int(signum)}}


def test_sigterm_saves_and_resume_matches_an_uninterrupted_run(tmp_path):
    main(["fit", "--config", str(tiny_config(tmp_path, "straight"))])
    straight = exported(tmp_path, "straight")

    # interrupted: a real SIGTERM to a separate `vistok fit` process after step 4 of 8 (mid-epoch: 6 batches each)
    config = tiny_config(tmp_path, "resumed", callbacks=(signal_at(4, signal.SIGTERM),))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same float reductions as this process's straight run
    proc = subprocess.run([sys.executable, "-m", "vistok.cli", "fit", "--config", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert last.is_file() and not (tmp_path / "resumed" / "export").exists()
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["global_step"] == 4 and ckpt["ShapesDataModule"] == {"epoch": 0, "batches": 4, "items": 16}
    assert "interrupted at step 4" in proc.stderr + proc.stdout

    # resume (same command, without the signal) to step 8: same weights as the straight run
    main(["fit", "--config", str(tiny_config(tmp_path, "resumed")), "--ckpt_path", "last"])
    resumed = exported(tmp_path, "resumed")
    at_four = {k.removeprefix("tokenizer."): v for k, v in ckpt["state_dict"].items()}
    assert any(not torch.equal(at_four[k], straight[k]) for k in straight)  # steps 5..8 changed the weights
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=key)

    # the check can fail: the same resume with a sampler that forgot where it was (epoch 0 restarts) ends elsewhere
    ckpt["ShapesDataModule"] = {}
    ckpt["hyper_parameters"]["export_dir"] = str(tmp_path / "forgot" / "export")  # the CLI reads hparams from it
    torch.save(ckpt, tmp_path / "forgot.ckpt")
    main(["fit", "--config", str(tiny_config(tmp_path, "forgot")), "--ckpt_path", str(tmp_path / "forgot.ckpt")])
    forgot = exported(tmp_path, "forgot")
    assert any(not torch.allclose(forgot[k], straight[k], atol=1e-4) for k in straight)


def test_sigint_stops_at_a_batch_end_with_a_checkpoint(tmp_path, capsys):
    config = tiny_config(tmp_path, "ctrl_c", callbacks=(signal_at(3, signal.SIGINT),))
    before = signal.getsignal(signal.SIGINT)  # the default handler, or SIG_IGN in a background job
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 128 + signal.SIGTERM
    ckpt = torch.load(tmp_path / "ctrl_c" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3
    assert signal.getsignal(signal.SIGINT) is before  # handlers put back


def test_nan_loss_stops_naming_the_step(tmp_path, capsys):
    config = tiny_config(tmp_path, "nan", callbacks=({"class_path": "fault_helpers.NaNAt",
                                                       "init_args": {"step": 3}},))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vistok fit: error: FloatingPointError: the training loss is nan at step 3"), err
    assert "Traceback" not in err and not (tmp_path / "nan" / "checkpoints" / "last.ckpt").exists()


def test_rng_state_round_trip_and_the_older_cuda_list():
    from vistok.training.callbacks import rng_state, set_rng_state

    state = rng_state()
    assert (state["cuda"] is None) == (not torch.cuda.is_available())  # this process's device only, when there is one
    first = torch.rand(3)
    set_rng_state({**state, "cuda": []})  # checkpoints written before kept a (possibly empty) list per device
    assert torch.equal(torch.rand(3), first)
