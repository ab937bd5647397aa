"""The shipped tiny video pipeline of docs/video.md (LARP fifth run + the class-conditional AR on its ids, fp16 under
tests/assets) against issue 17's bar: video GenEval-lite motion >= 0.6 on generated clips, met with CFG 3."""

from pathlib import Path

import pytest
import torch

from vistok import from_pretrained
from vistok.data import NUM_VIDEO_CLASSES
from vistok.data.geneval_video import score_clips
from vistok.sample import Pipeline

ASSETS = Path(__file__).parents[1] / "assets"


@pytest.fixture(scope="module")
def pipe():
    tok = from_pretrained(ASSETS / "larp_tiny_fifth", expect="tokenizer").eval()
    gen = from_pretrained(ASSETS / "ar_larp_fifth", expect="generator").eval()
    return Pipeline(tok, gen, None, classes="moving_shapes").check_compatible()


def _motion(pipe, cfg_scale: float) -> dict:
    labels = [c for c in range(NUM_VIDEO_CLASSES) for _ in range(2)]  # what benchmarks/video.py geneval samples
    with torch.no_grad():
        clips = pipe(labels, num_samples=1, seed=0, batch_size=32, cfg_scale=cfg_scale)[0].clamp(0, 1)
    return score_clips(clips, labels)


def test_generated_clips_move_as_prompted_with_cfg(pipe):
    scores = _motion(pipe, 3.0)
    assert scores["motion"] >= 0.6 and scores["color"] >= 0.9  # docs: 0.672 / 0.932 (seeds 1, 2: 0.693, 0.615)
    # control at the bar: the same generator without guidance moves the wrong way too often (docs: 0.490)
    assert _motion(pipe, 1.0)["motion"] < 0.6
