"""The models' decoding ``step`` paths have no host syncs: they capture as one graph under ``torch.compile``
(``fullgraph=True`` fails on any graph break; the eager backend keeps the test fast and compiler-free), and give the
same outputs as eager mode.  Value checks that read tensors on the host run in eager mode only."""

import pytest
import torch
from conftest import tiny_ar

import vistok
from vistok.interfaces import Conditioning

pytestmark = pytest.mark.usefixtures("one_thread")


def _cases():
    cond = Conditioning(labels=torch.tensor([0, 1]))
    ar = tiny_ar(num_classes=2)
    nar = vistok.create_generator("nar_tiny_c2i", seq_len=16, width=32, depth=1, num_heads=2, num_classes=2)
    mar_ar = vistok.create_generator("mar_ar_tiny", token_dim=4, seq_len=8, width=32, depth=1, num_heads=2,
                                     num_classes=2, head_width=16, head_depth=1)
    xar = vistok.create_generator("xar_tiny", grid_size=4, cell_size=2, token_dim=4, width=32, depth=1,
                                  decoder_depth=1, num_heads=2, num_classes=2)
    pos = torch.arange(3).expand(2, -1)
    return {
        "ar": (ar.step, (torch.zeros(2, 3, dtype=torch.long), pos), ar, cond),
        "nar": (nar.step_heads, (torch.zeros(2, 3, dtype=torch.long), pos), nar, cond),
        "mar_ar": (mar_ar.step, (torch.randn(2, 3, 4), pos), mar_ar, cond),
        "xar": (xar.step, (torch.randn(2, 4, 4), torch.arange(4).expand(2, -1)), xar, cond),
    }


@pytest.mark.parametrize("name", ["ar", "nar", "mar_ar", "xar"])
@torch.no_grad()
def test_step_compiles_as_one_graph(name):
    fn, args, model, cond = _cases()[name]
    model.eval()
    eager = fn(*args, model.new_cache(cond))
    compiled = torch.compile(fn, backend="eager", fullgraph=True)(*args, model.new_cache(cond))
    for a, b in zip(eager if isinstance(eager, tuple) else (eager,), compiled if isinstance(compiled, tuple)
                    else (compiled,)):
        if a is not None:
            torch.testing.assert_close(a, b)


def test_eager_mode_still_checks_positions():
    model = tiny_ar(num_classes=2).eval()
    cache = model.new_cache(Conditioning(labels=torch.tensor([0])))
    with pytest.raises(ValueError, match="positions must be in"):
        model.step(torch.zeros(1, 1, dtype=torch.long), torch.full((1, 1), 99), cache)
