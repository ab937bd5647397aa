"""The setup every FlexTok diagnostic script here shares: one thread, torch seed 0, and the 8 fixed 64x64 shapes
scenes (1-2 objects, dataset seed 0) they overfit or probe."""

import torch

from vistok.data.shapes import ShapesDataset


def eight_scenes() -> torch.Tensor:
    """``(8, 3, 64, 64)`` in [0, 1], after ``torch.set_num_threads(1)`` and ``torch.manual_seed(0)``."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ds = ShapesDataset(8, seed=0, image_size=64, min_objects=1, max_objects=2)
    return torch.stack([ds[i]["pixels"] for i in range(8)])
