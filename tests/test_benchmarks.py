"""benchmarks/vs_official.py in its vistok-only mode on tiny presets (the side-by-side mode needs official checkouts,
which are never vendored: it is exercised by hand, see docs/speed.md)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vs_official():
    spec = importlib.util.spec_from_file_location("vs_official", ROOT / "benchmarks" / "vs_official.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["vs_official"] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["vs_official"]


def test_vistok_alone_on_tiny_presets(vs_official, tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "rows.json"
    try:
        rows = vs_official.main(["--tiny", "--threads", "1", "--repeats", "1", "--batch-sizes", "2", "--out",
                                 str(out)])
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text()) == rows
    got = {(r["model"], r["op"], r["batch"]): r for r in rows}
    assert set(got) == {(m, op, b) for m, op in [("titok", "encode"), ("titok", "decode"), ("nar", "generate"),
                                                  ("llamagen", "generate"), ("mar", "generate"),
                                                  ("xar", "generate")] for b in (2,)}
    passes = {m: {k: v for k, v in got[(m, "generate", 2)]["vistok_passes"].items() if k in ("passes", "head")}
              for m in ("nar", "llamagen", "mar", "xar")}
    assert passes == {"nar": {"passes": 2 * 8 - 1}, "llamagen": {"passes": 64},  # 8x8 grids
                      "mar": {"passes": 4, "head": 4 * 10}, "xar": {"passes": 4 * 3}}
    assert got[("titok", "decode", 2)]["vistok_passes"]["decoder"] == 1
    ar = got[("llamagen", "generate", 2)]["vistok_passes"]
    assert ar["ops"] > 64 * 2 * 10 and 0 <= ar["syncs"] < ar["ops"]  # >= 10 ops per block per pass
    assert all(r["vistok_s"] > 0 and "official_s" not in r for r in rows)
    table = capsys.readouterr().out
    assert "| NAR-B tiny | generate | 2 |" in table and "vistok / official" in table


def test_vs_official_compile_counts_eager_passes_and_checks_agreement(vs_official, capsys):
    """``--compile``: a third side (vistok compiled) beside eager vistok; passes are counted in eager mode, the
    hooks come off before compiling (they would not count inside a graph), and every cell reports the compiled
    output's agreement with eager mode."""
    threads = torch.get_num_threads()
    try:
        rows = vs_official.main(["--tiny", "--threads", "1", "--repeats", "1", "--batch-sizes", "1", "--models",
                                 "llamagen", "--compile"])
    finally:
        torch.set_num_threads(threads)
    (row,) = rows
    assert row["vs_eager"] == "ids equal" and row["compile_s"] > 0 and row["compiled_s"] > 0
    assert row["compiled_vs_eager"] == row["compiled_s"] / row["vistok_s"]
    assert row["vistok_passes"]["passes"] == 64
    assert "compiled (Inductor, frozen weights" in capsys.readouterr().out


def test_a_bad_checkout_is_reported_and_vistok_still_runs(vs_official, tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        rows = vs_official.main(["--tiny", "--threads", "1", "--repeats", "1", "--batch-sizes", "1",
                                 "--models", "nar", "--nar-repo", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "official code unavailable" in printed and "autoregressive/models/gpt.py" in printed  # says what is missing
    assert [(r["model"], "official_s" in r) for r in rows] == [("nar", False)]


def test_vs_official_device_option(vs_official, capsys):
    threads = torch.get_num_threads()
    try:
        rows = vs_official.main(["--tiny", "--threads", "1", "--repeats", "1", "--batch-sizes", "1", "--models",
                                 "titok", "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    assert [r["op"] for r in rows] == ["encode", "decode"] and "CPU fp32" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # no such GPU here (none, or fewer than 100)
        vs_official.main(["--tiny", "--models", "titok", "--device", "cuda:99"])
    with pytest.raises(SystemExit):
        vs_official.main(["--tiny", "--models", "titok", "--compile-mode", "reduce-overhead"])  # needs --compile


def test_bad_arguments_are_refused(vs_official):
    with pytest.raises(SystemExit):
        vs_official.main(["--repeats", "0"])
    with pytest.raises(SystemExit):
        vs_official.main(["--models", "dit"])


@pytest.fixture(scope="module")
def video_benchmark():
    return _load_benchmark("video")


@pytest.fixture(scope="module")
def tiny_video_models(tmp_path_factory):
    """A random tiny LARP (4 frames of 32x32, 8 tokens) and a class-conditional AR (96 classes) over its ids."""
    from conftest import tiny_ar, tiny_larp

    from vistok import save_pretrained

    folder = tmp_path_factory.mktemp("video_models")
    torch.manual_seed(0)
    tok = tiny_larp(image_size=32, prior_depth=0)
    torch.nn.init.normal_(tok.head.weight, std=0.5)
    gen = tiny_ar(num_classes=96)
    torch.nn.init.normal_(gen.output.weight, std=0.5)
    save_pretrained(tok, folder / "tok", dtype=None)
    save_pretrained(gen, folder / "gen", dtype=None)
    return folder


def test_video_geneval_benchmark_rows(video_benchmark, tiny_video_models, tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        result = video_benchmark.main(["geneval", "--tokenizer", str(tiny_video_models / "tok"), "--generator",
                                       str(tiny_video_models / "gen"), "--frame-prediction", "2", "--out",
                                       str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(threads)
    rows = result["rows"]
    assert result["num_clips"] == 96 and json.loads((tmp_path / "r.json").read_text())["rows"] == rows
    assert rows["ground truth"] == {"color": 1.0, "shape": 1.0, "motion": 1.0, "overall": 1.0}
    assert rows["ground truth reversed"]["motion"] == 0 and rows["static disc"]["motion"] == 0
    assert rows["generator"]["motion"] < 0.2  # random weights: noise clips
    fp = result["frame_prediction"]
    assert fp["num_cond_frames"] == 2 and fp["prefix_tokens"] == 4 and "frame prediction" in rows
    assert len(result["generator_per_frame"]["color"]) == 4
    assert "| static disc |" in capsys.readouterr().out


def test_video_decoding_benchmark_rows(video_benchmark, tiny_video_models, capsys):
    threads = torch.get_num_threads()
    try:
        result = video_benchmark.main(["decoding", "--generator", str(tiny_video_models / "gen"), "--windows", "4",
                                       "8", "64", "--num-labels", "4", "--batch", "2"])
    finally:
        torch.set_num_threads(threads)
    assert [(r["decoder"], r["window"]) for r in result["trained"]] == [("sjd", 4), ("sjd", 8), ("mcsjd", 4),
                                                                        ("mcsjd", 8)]  # 64 > N = 8: dropped
    for r in result["trained"] + result["random_init"]:
        assert 1 <= r["step_compression"] <= 8 and r["speedup"] > 0
    assert "random-init generator (artefact" in capsys.readouterr().out


def test_video_decoding_benchmark_passes_decoder_options(video_benchmark, tiny_video_models, capsys):
    threads = torch.get_num_threads()
    try:
        result = video_benchmark.main(["decoding", "--generator", str(tiny_video_models / "gen"), "--windows", "4",
                                       "--num-labels", "2", "--batch", "1", "--decoders", "mcsjd", "--skip-random",
                                       "--set", "coupling=gumbel", "--set", "proactive=2"])
        with pytest.raises(ValueError, match="proactive"):  # reaches the decoder: a bad value is refused there
            video_benchmark.main(["decoding", "--generator", str(tiny_video_models / "gen"), "--windows", "4",
                                  "--num-labels", "1", "--decoders", "mcsjd", "--skip-random", "--set", "proactive=0"])
    finally:
        torch.set_num_threads(threads)
    (row,) = result["trained"]
    assert row["options"] == {"coupling": "gumbel", "proactive": 2} and 1 <= row["step_compression"] <= 8
    assert "decoder options {'coupling': 'gumbel', 'proactive': 2}" in capsys.readouterr().out


def test_larp_prior_benchmark(tiny_video_models, tmp_path, capsys):
    bench = _load_benchmark("larp_prior")
    # the unigram baselines on a hand-checked case: vocab 2, train ids [[0, 0], [0, 1]], add-one smoothing
    train, ids = torch.tensor([[0, 0], [0, 1]]), torch.tensor([[0, 1]])
    nll = bench.unigram_nll
    assert nll(train, ids, 2, per_position=False) == pytest.approx(-(math.log(4 / 6) + math.log(2 / 6)) / 2)
    assert nll(train, ids, 2, per_position=True) == pytest.approx(-(math.log(3 / 4) + math.log(2 / 4)) / 2)
    threads = torch.get_num_threads()
    try:
        arm = f"a={tiny_video_models / 'tok'}:{tiny_video_models / 'gen'}"
        rows = bench.main(["--arm", arm, "--num-clips", "4", "--train-clips", "4", "--batch", "2",
                           "--out", str(tmp_path / "r.json")])
        with pytest.raises(SystemExit):
            bench.main(["--arm", "no-generator-given"])
    finally:
        torch.set_num_threads(threads)
    (row,) = rows
    assert json.loads((tmp_path / "r.json").read_text()) == rows
    assert row["uniform_nll"] == pytest.approx(math.log(bench.from_pretrained(tiny_video_models / "tok").codebook_size))
    assert row["ar_nll"] > 0 and 1 <= row["distinct_ids"] <= 4 * 8 and row["psnr"] > 0
    assert "| a |" in capsys.readouterr().out


def test_video_analyser_rows(video_benchmark):
    threads = torch.get_num_threads()
    try:
        rows = video_benchmark.main(["analyser", "--num-clips", "8", "--num-frames", "8"])
    finally:
        torch.set_num_threads(threads)
    for objects in (1, 2):
        assert rows[f"{objects} object(s), ground truth"]["overall"] == 1
        assert rows[f"{objects} object(s), ground truth reversed"]["motion"] == 0
        assert rows[f"{objects} object(s), static disc"]["motion"] == 0


def test_video_clips_scores_the_files_of_a_vistok_sample_run(video_benchmark, tiny_video_models, tmp_path, capsys):
    """`clips` reads PROMPT_SAMPLE.mp4 back in prompt order: real clips written under their class names score 1 on
    motion, the same files under the reversed motions 0; a class pipeline's samples (random weights) are scored."""
    from vistok import from_pretrained
    from vistok.data.videos import MOTIONS, MovingShapesDataset, write_video
    from vistok.sample import Pipeline, cli, image_name

    ds = MovingShapesDataset(6, image_size=32, num_frames=8, seed=5, max_objects=1)
    real, names, flipped = tmp_path / "real", tmp_path / "names.txt", tmp_path / "flipped.txt"
    real.mkdir()
    opposite = dict(zip(MOTIONS, ("left", "right", "down", "up"), strict=True))
    rows = []
    for i in range(len(ds)):
        o = ds.clip(i).objects[0]
        write_video(ds[i]["pixels"], real / image_name(i, 0, ".mp4"))
        rows.append((f"{o.color} {o.shape} moving {o.motion}", f"{o.color} {o.shape} moving {opposite[o.motion]}"))
    names.write_text("\n".join(n for n, _ in rows))
    flipped.write_text("\n".join(f for _, f in rows))
    score = lambda *a: video_benchmark.main(["clips", "--prompts-file", *a])
    threads = torch.get_num_threads()
    try:
        right = score(str(names), "--dir", str(real))["rows"]
        assert right["clips"]["motion"] == 1 and right["static disc"]["motion"] == 0
        assert score(str(flipped), "--dir", str(real))["rows"]["clips"]["motion"] == 0
        pipe = tmp_path / "pipe"
        Pipeline(from_pretrained(tiny_video_models / "tok"), from_pretrained(tiny_video_models / "gen"), None,
                 classes="moving_shapes").save(pipe, dtype=None)
        cli(["--prompts-file", str(names), "--num-samples", "2", "--model", str(pipe), "--out-dir",
             str(tmp_path / "samples")])
        result = score(str(names), "--dir", str(tmp_path / "samples"), "--num-samples", "2")
        assert result["num_clips"] == 12 and result["rows"]["clips"]["motion"] < 0.5  # random weights
        with pytest.raises(FileNotFoundError, match="--num-samples 3"):
            score(str(names), "--dir", str(real), "--num-samples", "3")
    finally:
        torch.set_num_threads(threads)
    assert "| static disc |" in capsys.readouterr().out


def test_flextok_budget_benchmark_on_a_tiny_random_pipeline(tmp_path, capsys):
    """benchmarks/flextok_budget.py end to end (no FID): one row per reference, per k (reconstruction and sample),
    the untrained generator and each speculative decoder; AR makes k passes, SJD / MC-SJD at most N."""
    from conftest import save_tiny_flextok_pipeline

    module = _load_benchmark("flextok_budget")
    folder = save_tiny_flextok_pipeline(tmp_path / "pipe")
    threads = torch.get_num_threads()
    try:
        result = module.main(["--model", str(folder), "--num-prompts", "6", "--ks", "1", "8", "--batch", "4",
                              "--fid-reference", "0", "--window", "4", "--grid", str(tmp_path / "g.png"),
                              "--out", str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(threads)
    rows = {r["row"]: r for r in result["rows"]}
    assert len(rows) == 3 + 2 * 2 + 1 + 2 and json.loads((tmp_path / "r.json").read_text()) == result
    assert rows["flat fill of the prompted colour (trivial baseline)"]["color"] == 1.0
    assert rows["real renders of the prompts (scorer ceiling)"]["overall"] == 1.0
    for k in (1, 8):
        assert rows[f"AR, budget k = {k}"]["nfe_per_image"] == k and rows[f"AR, budget k = {k}"]["compression"] == 1
    for decoder in ("sjd", "mcsjd"):
        row = rows[f"{decoder} (W = 4), k = 8"]
        assert 2 <= row["nfe_per_image"] <= 8 and row["compression"] == 8 / row["nfe_per_image"]
    assert "| AR, budget k = 8 | 8 |" in capsys.readouterr().out and (tmp_path / "g.png").is_file()
    with pytest.raises(ValueError, match="num_tokens"):
        module.main(["--model", str(folder), "--ks", "9", "--fid-reference", "0"])


def test_decoding_benchmark_parses_mcsjd_option_sets():
    module = _load_benchmark("decoding")
    assert module.option_sets(["", "proactive=4", "coupling=gumbel, proactive=8"]) == [
        {}, {"proactive": 4}, {"coupling": "gumbel", "proactive": 8}]
    parsed = module.option_sets(["coupled=true,p_thr=0.3,group_rank=-1"])[0]
    assert parsed == {"coupled": True, "p_thr": 0.3, "group_rank": -1} and isinstance(parsed["group_rank"], int)
    assert module.option_sets(["proactive=8x2,coupling=gumbel"]) == [{"proactive": (8, 2), "coupling": "gumbel"}]
    with pytest.raises(SystemExit, match="key=value"):
        module.option_sets(["proactive"])


def test_step_annealing_paired_difference():
    bench = _load_benchmark("step_annealing")
    # per-image differences [1, 0, -1, 0]: mean 0, sample stdev sqrt(2/3), half-width 1.96 * stdev / 2
    diff, half = bench.paired_difference([1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0])
    assert diff == 0 and half == pytest.approx(1.96 * math.sqrt(2 / 3) / 2)
    diff, _ = bench.paired_difference([1.0, 1.0, 1.0], [0.0, 1.0, 1.0])
    assert diff == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="equal"):
        bench.paired_difference([1.0], [1.0, 0.0])


def test_step_annealing_row_options():
    bench = _load_benchmark("step_annealing")
    assert bench.row_options("25,5") == {"step_schedule": (25, 5)}
    assert bench.row_options("dpm:10,8") == {"step_schedule": (10, 8), "head_sampler": "dpm"}
    for bad in ["10", "dpm:10", "a,b"]:
        with pytest.raises(SystemExit, match="first,last"):
            bench.row_options(bad)


def test_video_edge_error_marks_the_pixels_beside_a_colour_change():
    bench = _load_benchmark("video_edge_error")
    video = torch.zeros(1, 3, 2, 6, 6)
    video[:, 0, :, 2:4, 2:4] = 1.0  # a red 2x2 square: every pixel of it and its 4-neighbours lie on an edge
    edge = bench.edge_mask(video)[0, 0]
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[2:4, 1:5] = True
    expected[1:5, 2:4] = True
    assert torch.equal(edge, expected)
    assert not bench.edge_mask(torch.full((1, 3, 2, 6, 6), 0.5)).any()


def test_ab_sampler_runs_both_draws_and_restores_the_decoders_draw(capsys, monkeypatch):
    import vistok.decoding.sampling as sampling_module

    bench = _load_benchmark("ab_sampler")
    before = sampling_module.sample_probs
    monkeypatch.setattr(sys, "argv", ["ab_sampler.py", "--model", "vistok/assets/vq256", "--num-prompts", "1",
                                      "--rounds", "1", "--threads", "1", "--configs", "sjd:4"])
    monkeypatch.chdir(ROOT)
    bench.main()
    out = capsys.readouterr().out
    assert "| sjd | 4 |" in out and "draw alone, (64, 1024)" in out
    assert sampling_module.sample_probs is before


def test_cpu_lowp_runs_both_paths_and_restores_them(capsys, monkeypatch):
    import vistok.layers.attention as attention_module
    import vistok.layers.refine as refine_module

    bench = _load_benchmark("cpu_lowp")
    before = attention_module.attend, refine_module.PixelRefiner.forward
    with bench.old_paths(True):
        assert attention_module.attend is bench.sdpa
    assert (attention_module.attend, refine_module.PixelRefiner.forward) == before
    monkeypatch.setattr(sys, "argv", ["cpu_lowp.py", "--threads", "1", "--rounds", "1", "--reps", "1",
                                      "--steps", "1"])
    monkeypatch.chdir(ROOT)
    bench.main()
    out = capsys.readouterr().out
    assert "| attention bf16 fwd+bwd, (8, 4, 320, 32) |" in out and "| LARP training step" in out
    assert (attention_module.attend, refine_module.PixelRefiner.forward) == before


def test_decoding_benchmark_pairs_images_with_ar_and_runs_ar_once_without_timing(monkeypatch):
    module = _load_benchmark("decoding")
    from vistok.sample import Pipeline

    pipe = Pipeline.from_folder(ROOT / "vistok" / "assets" / "default")
    calls = []
    timed = module.timed
    monkeypatch.setattr(module, "timed", lambda *a: calls.append((a[5], a[1].batch_size)) or timed(*a))
    sampling = {"cfg_scale": 2.0, "top_k": 100}
    captions = ["a red circle in the center", "a blue square at the top left"]
    rows = module.benchmark(pipe, captions, num_samples=1, batch=2, seeds=[0, 1], sampling=sampling,
                            decoders=["ar", "mcsjd"], windows=[4], reps=1, time_ar=False)
    # warm-up on the first prompt, then AR once per seed (one batch of 2 prompts)
    assert calls == [("ar", 1), ("mcsjd", 1), ("ar", 2), ("ar", 2), ("mcsjd", 2), ("mcsjd", 2)]
    ar, spec = rows
    assert len(ar["per_image"]) == len(spec["per_image"]) == 4
    assert ar["paired_delta"] == 0 and ar["paired_ci95"] == 0 and spec["t_ar"] == ar["t_ar"]
    diff = [a - b for a, b in zip(spec["per_image"], ar["per_image"])]
    assert spec["paired_delta"] == pytest.approx(sum(diff) / 4)
    assert spec["geneval_seeds"] == pytest.approx([sum(spec["per_image"][:2]) / 2, sum(spec["per_image"][2:]) / 2])
    assert "+- " in module.table(rows, "t")
    # pairing with another row: against itself every image is the same; against AR the same numbers as above
    paired = module.paired_rows(rows, 1)
    assert "Paired with row 1 (mcsjd W=4 -)" in paired and f"| ar | 1 | - | {ar['geneval']:.3f} | " in paired
    assert f"{-spec['paired_delta']:+.3f} +- {spec['paired_ci95']:.3f}" in paired
    same = float((spec["tokens"] == ar["tokens"]).all(1).float().mean())
    assert paired.strip().endswith(f"| {same:.0%} |")
    with pytest.raises(SystemExit, match="--pair-row 2"):
        module.paired_rows(rows, 2)


def test_pass_cost_splits_forward_from_the_rest_and_unwraps_the_step(capsys):
    bench = _load_benchmark("pass_cost")
    from vistok.generators import ARGenerator

    rows = bench.main(["--model", str(ROOT / "vistok" / "assets" / "default"), "--windows", "4", "--decoders",
                       "mcsjd", "--num-prompts", "2", "--rounds", "1"])
    ar, spec = rows
    assert ar["passes"] == 2 * 32 and spec["passes"] < ar["passes"]
    assert all(0 < r["forward"] < r["seconds"] for r in rows)
    assert "| mcsjd | 4 |" in capsys.readouterr().out
    gen = ARGenerator(vocab_size=8, seq_len=4, width=16, depth=1, num_heads=2, num_classes=2)
    with bench.StepTimer(gen) as timer:
        assert gen.step is timer
    assert gen.step.__func__ is ARGenerator.step
    own = gen.__dict__["step"] = lambda *a, **k: ARGenerator.step(gen, *a, **k)  # e.g. a compiled step
    with bench.StepTimer(gen) as timer:
        assert gen.step is timer and timer.inner is own
    assert gen.step is own
    with pytest.raises(SystemExit):  # no such GPU here (none, or fewer than 100)
        bench.main(["--device", "cuda:99"])
