"""Compiled inference: ``torch.compile`` (Inductor) on the methods a decoder calls on every pass, weights frozen.

    from vistok import compile_inference
    compile_inference(generator)           # its ``inference_methods``, e.g. ("step",) for the AR generator
    out = generate(generator, cond, ...)   # the first calls compile (seconds to minutes), later ones reuse it
    uncompile(generator)                   # back to eager

Each method named in ``model.inference_methods`` (a dotted path such as ``"head.net"`` reaches a submodule) is
replaced, on that instance only, by ``torch.compile(method)`` run with Inductor's ``freezing`` flag.  Under
``torch.no_grad`` freezing folds the parameters into the graph as constants and, on CPU, packs the linear layers'
weights for MKL once.  That pays where a pass multiplies a few rows by every weight matrix (batch-1 decoding):
LlamaGen GPT-B's 256-step greedy decode at batch 1 ran 1.3x faster than eager on a 2-core CPU, but at batch 8 it
ran slower than eager (docs/speed.md, "Compiled inference").  Measure before switching it on.

Frozen weights are captured when a method first compiles (some as packed copies, some by reference): after
changing the weights (training, ``load_state_dict``) a compiled method's results are undefined, so
:func:`uncompile` first and compile again.  Outputs equal eager mode's to float rounding (another summation
order); greedy tokens were equal in every benchmark case.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence

import torch
import torch._inductor.config as inductor_config
from torch import nn

_ATTR = "_vistok_compiled"  # instance attribute: the dotted names this module replaced


def _owner(model: nn.Module, name: str) -> tuple[object, str]:
    *path, attr = name.split(".")
    owner = model
    for part in path:
        owner = getattr(owner, part)
    if not callable(getattr(owner, attr, None)):
        raise ValueError(f"{type(model).__name__} has no method {name!r} to compile")
    return owner, attr


def _compiled(fn: Callable, freezing: bool, dynamic: bool | None, mode: str | None) -> Callable:
    """``torch.compile(fn)``, called with Inductor's ``freezing`` set (the flag is read from the global config when
    a graph compiles, not from ``torch.compile(options=...)``, so it is patched around every call)."""
    compiled = torch.compile(fn, dynamic=dynamic, mode=mode)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with inductor_config.patch(freezing=freezing):
            return compiled(*args, **kwargs)

    return call


def compile_inference(model: nn.Module, methods: Sequence[str] | None = None, *, freezing: bool = True,
                      dynamic: bool | None = None, mode: str | None = None) -> nn.Module:
    """Replace ``model``'s per-pass methods by compiled ones (in place; returns ``model``).

    Args:
        model: a generator or tokenizer in eval mode.
        methods: dotted method names (default ``model.inference_methods``).
        freezing: Inductor weight freezing (constant-folded, pre-packed weights; inference only).
        dynamic, mode: passed to ``torch.compile`` (``dynamic=None``: shapes become dynamic after a recompile).
    """
    if getattr(model, _ATTR, None):
        uncompile(model)
    if methods is None and not hasattr(model, "inference_methods"):
        raise ValueError(f"{type(model).__name__} declares no inference_methods; name the methods to compile")
    names = tuple(methods if methods is not None else model.inference_methods)
    for name in names:
        owner, attr = _owner(model, name)
        owner.__dict__[attr] = _compiled(getattr(owner, attr), freezing, dynamic, mode)  # this instance only
    model.__dict__[_ATTR] = names
    return model


def uncompile(model: nn.Module) -> nn.Module:
    """Undo :func:`compile_inference` (the eager methods again); a no-op on a model that was not compiled.

    Also clears torch's compilation caches (``torch.compiler.reset()``): a later compile of the same model must not
    reuse graphs holding its old frozen weights.  Other compiled functions recompile on their next call."""
    names = model.__dict__.pop(_ATTR, ())
    for name in names:
        owner, attr = _owner(model, name)
        owner.__dict__.pop(attr, None)
    if names:
        torch.compiler.reset()
    return model


@contextlib.contextmanager
def eager_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a compiled ``model`` in eager mode inside the block (its compiled methods come back after; nothing is
    recompiled): ``with eager_mode(model): ...``.  A no-op for a model that was not compiled."""
    saved = []
    for name in model.__dict__.get(_ATTR, ()):
        owner, attr = _owner(model, name)
        saved.append((owner, attr, owner.__dict__.pop(attr)))
    try:
        yield model
    finally:
        for owner, attr, fn in saved:
            owner.__dict__[attr] = fn


def is_compiled(model: nn.Module) -> bool:
    """Whether :func:`compile_inference` replaced methods of ``model``."""
    return bool(getattr(model, _ATTR, None))
