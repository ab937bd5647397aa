"""Decoding loops read nothing back from the device per pass beyond the flags that steer them.

On a GPU a host read (``int()`` / ``bool()`` / ``.item()`` of a tensor, or an op whose output shape depends on values:
``nonzero``, boolean-mask indexing, ``bincount``, ...; :mod:`host_reads`) waits for the device's queue, so one per
pass serialises launching and running every pass.  The count is taken here on the CPU with the per-pass value checks
switched to their accelerator branch (:func:`vistok.interfaces.validating` skips them for non-CPU tensors), so a CI
machine without a GPU keeps the guarantee; ``tests/test_device.py`` counts the same on a real device.  Each
decoder's bound is per pass plus three per call (the label check, the loop's last test).
"""

import pytest
import torch
from host_reads import HostReads
from test_registry import _tiny

from vistok import interfaces
from vistok.decoding import generate, jacobi
from vistok.generators import nar, xar
from vistok.interfaces import Conditioning
from vistok.layers import sampling

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def as_on_a_gpu(monkeypatch):
    """The per-pass checks skip as they do for accelerator tensors (once-per-call checks, no tensor, still run)."""
    for module in (interfaces, xar, nar, sampling):
        monkeypatch.setattr(module, "validating", lambda tensor=None: tensor is None)


#: (preset, decoder, options, reads per pass): the Jacobi loop reads "is a sample still open" and "are new drafts
#: needed"; row-parallel Jacobi also the rows that start, the number of row slots (a shape) and the loop flag;
#: MAR's masked loop per iteration: the longest kept run (a shape), whether every row keeps as many, the revealed
#: positions.
RUNS = [
    ("ar_tiny_c2i", "ar", {}, 0),
    ("nar_tiny_c2i", "nar", {}, 0),
    ("ar_tiny_c2i", "sjd", {"window": 4}, 2),
    ("ar_tiny_c2i", "mcsjd", {"window": 4}, 2),
    ("ar_tiny_c2i", "mcsjd", {"window": 4, "proactive": 2}, 2),
    ("ar_tiny_c2i", "mcsjd", {"window": 4, "coupling": "gumbel", "proactive": (2, 2)}, 2),
    ("ar_tiny_c2i", "gsd", {"window": 4, "coupled": True, "proactive": 2}, 2),
    ("ar_tiny_c2i", "lantern", {"window": 4}, 2),
    ("ar_tiny_c2i", "pjd", {"window": 2, "grid": (2, 4)}, 4),
    ("mar_tiny", "masked", {"num_iter": 4}, 3),
]


def _reads(name: str, decoder: str, kw: dict) -> tuple[int, int, dict]:
    gen = _tiny("gen", name).eval()
    cond = Conditioning(labels=torch.arange(3) % gen.num_classes)
    extra = {"top_k": 8} if gen.kind == "discrete" else {}
    with HostReads() as reads:
        out = generate(gen, cond, decoder=decoder, seed=0, cfg_scale=2.0, **extra, **kw)
    return reads.count, out.nfe, dict(reads.sites)


@pytest.mark.parametrize("name,decoder,kw,per_pass", RUNS, ids=[f"{d}-{i}" for i, (_, d, _, _) in enumerate(RUNS)])
def test_decoding_reads_the_device_only_where_the_loop_needs_it(as_on_a_gpu, name, decoder, kw, per_pass):
    count, nfe, sites = _reads(name, decoder, kw)
    assert count <= per_pass * nfe + 3, (count, nfe, sites)


def test_the_count_catches_one_more_read_per_pass(as_on_a_gpu, monkeypatch):
    """Broken control: the per-pass accepted-count histogram as it was (``bincount`` of the active rows: two reads
    per pass) breaks the Jacobi bound."""
    def accept(self, start, first, cache, copies=1):
        new_acc = torch.where(first < self.w, start + first + 1, start + self.w)
        self.hist += torch.bincount((new_acc - self.acc)[self.active], minlength=self.w + 1)
        self.acc, self.front = new_acc, start + self.w
        cache.truncate(new_acc)

    count, nfe, _ = _reads("ar_tiny_c2i", "mcsjd", {"window": 4})
    assert count <= 2 * nfe + 3
    monkeypatch.setattr(jacobi.DraftWindow, "accept", accept)
    count, nfe, sites = _reads("ar_tiny_c2i", "mcsjd", {"window": 4})
    assert count > 2 * nfe + 3, (count, nfe, sites)


def test_per_pass_checks_still_run_on_the_cpu():
    """Without the patch (a CPU run) the per-pass checks read the tensors: the count is higher, so the fixture is
    what the bound above depends on."""
    count, nfe, sites = _reads("ar_tiny_c2i", "ar", {})
    assert count >= 2 * nfe, (count, nfe, sites)
