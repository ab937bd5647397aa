"""One-D-Piece tail-token drop on a *trained* tiny model (weights shipped in tests/assets, made with
``vistok fit --config configs/tokenizers/onedpiece_tiny.yaml``): reconstruction error falls as the prefix grows."""

from pathlib import Path

import pytest
import torch

from vistok.data import ShapesDataset
from vistok.hub import from_pretrained

WEIGHTS = Path(__file__).parents[1] / "assets" / "onedpiece_tiny"
PREFIXES = (1, 2, 4, 8, 16, 32)


@pytest.fixture(scope="module")
def errors():
    tok = from_pretrained(WEIGHTS)
    ds = ShapesDataset(64, image_size=tok.image_size, seed=4242, min_objects=1, max_objects=2)
    x = torch.stack([ds[i]["pixels"] for i in range(len(ds))])
    with torch.no_grad():
        ids = tok.encode(x)
        return {k: torch.mean((tok.decode(ids[:, :k]) - x) ** 2).item() for k in PREFIXES if k <= tok.num_tokens}


def test_error_falls_monotonically_with_prefix_length(errors):
    ks = sorted(errors)
    for a, b in zip(ks, ks[1:]):
        assert errors[b] <= errors[a] * 1.02, f"MSE rose from k={a} ({errors[a]:.5f}) to k={b} ({errors[b]:.5f})"
    assert errors[ks[-1]] < 0.6 * errors[ks[0]], errors


def test_prefix_decodes_keep_shape_and_range():
    tok = from_pretrained(WEIGHTS)
    x = torch.rand(2, 3, tok.image_size, tok.image_size)
    ids = tok.encode(x)
    for k in (1, tok.num_tokens // 2, tok.num_tokens):
        y = tok.decode(ids[:, :k])
        assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
