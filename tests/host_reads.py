"""Counting host reads: the ops that make the host wait for a device (tests/decoding/test_host_reads.py,
tests/test_device.py).

A read is an op whose result the host needs before it can go on: ``.item()`` / ``int()`` / ``bool()`` of a tensor
(``aten._local_scalar_dense``), ``torch.equal``, and the ops whose output *shape* depends on values (``nonzero``,
boolean-mask indexing, ``bincount``, ``unique``, ``masked_select``, ``repeat_interleave`` with tensor repeats and no
``output_size``).  On a GPU each one waits for the device's queue to drain.
"""

from __future__ import annotations

import collections
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ALWAYS = {"aten._local_scalar_dense", "aten.equal", "aten.nonzero", "aten.bincount", "aten._unique2",
           "aten.unique_dim", "aten.unique_consecutive", "aten.masked_select"}


def is_host_read(func, args, kwargs) -> bool:
    name = str(func.overloadpacket)
    if name in _ALWAYS:
        return True
    if name in ("aten.index", "aten.index_put", "aten.index_put_") and len(args) > 1:
        return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in (args[1] or []))
    if name == "aten.repeat_interleave":
        repeats = args[1] if len(args) > 1 else args[0]
        return isinstance(repeats, torch.Tensor) and (kwargs or {}).get("output_size") is None
    return False


class HostReads(TorchDispatchMode):
    """Counts host reads while active (``device_only``: only those of non-CPU tensors); ``sites`` names the innermost
    vistok line of each."""

    def __init__(self, device_only: bool = False):
        super().__init__()
        self.device_only, self.count, self.sites = device_only, 0, collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if is_host_read(func, args, kwargs) and (not self.device_only or any(
                isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args)):
            self.count += 1
            frames = [f for f in traceback.extract_stack() if "/vistok/" in f.filename]
            if frames:
                self.sites[f"{frames[-1].filename.rsplit('/vistok/', 1)[-1]}:{frames[-1].lineno}"] += 1
        return func(*args, **(kwargs or {}))
