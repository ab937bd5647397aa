"""Save and load vistok models as a folder: ``config.json`` (class + constructor kwargs) and
``model.safetensors``.  Loading never unpickles: weights come from safetensors only, and the class must live
inside the ``vistok`` package.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"

__all__ = ["from_pretrained", "load_official", "load_state_dict_strict", "rename_state_dict", "save_pretrained"]


def save_pretrained(model: nn.Module, folder: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` to ``folder`` (created).  ``dtype=torch.float16`` halves the file; loading restores fp32.

    Returns the folder path.
    """
    if not hasattr(model, "config"):
        raise TypeError(f"{type(model).__name__} does not record its constructor kwargs (vistok.interfaces."
                        "Configurable); only vistok models can be saved this way")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cls = type(model)
    cfg = {"class": f"{cls.__module__}.{cls.__qualname__}", "kwargs": model.config,
           "dtype": str(dtype or torch.float32).removeprefix("torch.")}
    (folder / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, default=list))
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME))
    return folder


def _resolve_class(path: str) -> type:
    if not path.startswith("vistok."):
        raise ValueError(f"refusing to build {path!r}: config.json may only name classes inside vistok")
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state_dict") -> None:
    """``load_state_dict`` that lists missing, unexpected and mis-shaped keys in one ``ValueError``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(state[k].shape)}"
              for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{source} does not fit {type(model).__name__}:"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected[:20]}"
                         f"{' ...' if len(unexpected) > 20 else ''}")
        if shapes:
            parts.append(f"shape mismatches: {shapes[:20]}")
        raise ValueError("\n  ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def rename_state_dict(state: dict[str, torch.Tensor], rules: list[tuple[str, str]], *, unknown_error: str,
                      transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
                      skip: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Rename official keys to vistok's with ``(regex, replacement)`` rules: the first rule whose regex fully matches
    a key wins (``\\1`` groups expand).  ``transform(new_key, value)`` reshapes values, ``skip(key)`` drops keys
    (e.g. derived buffers).  Raises ``ValueError("<unknown_error> (n): [keys]")`` listing every key no rule matched.
    """
    compiled = [(re.compile(a), b) for a, b in rules]
    out, unknown = {}, []
    for key, value in state.items():
        if skip is not None and skip(key):
            continue
        new = next((m.expand(b) for p, b in compiled if (m := p.fullmatch(key))), None)
        if new is None:
            unknown.append(key)
            continue
        out[new] = transform(new, value) if transform is not None else value
    if unknown:
        raise ValueError(f"{unknown_error} ({len(unknown)}): {unknown[:20]}{' ...' if len(unknown) > 20 else ''}")
    return out


def from_pretrained(folder: str | Path, *, map_location: str | torch.device = "cpu", **overrides) -> nn.Module:
    """Rebuild a model saved by :func:`save_pretrained`; returned in eval mode, fp32.

    ``overrides`` replace constructor kwargs of the saved config (those that change no weight shape), e.g.
    ``from_pretrained(folder, code_tokens=True)`` reads a VQ TiTok's code vectors as continuous tokens.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder} (give a folder written by vistok.hub.save_pretrained)")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}; a vistok model folder holds {CONFIG_NAME} and "
                                    f"{WEIGHTS_NAME} (write one with vistok.hub.save_pretrained)")
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    model = _resolve_class(cfg["class"])(**{**cfg["kwargs"], **overrides})
    load_state_dict_strict(model, load_file(str(folder / WEIGHTS_NAME), device=str(map_location)), str(folder))
    return model.eval()


# Official-format checkpoints.  Each family module that can read an official release exposes
#   ``official_matches(config: dict, folder: Path) -> bool`` and ``load_official(folder: Path) -> nn.Module``;
# list it here (import is lazy, so hub does not pull every family in).
OFFICIAL_FAMILIES: list[str] = ["vistok.tokenizers.titok", "vistok.generators.nar", "vistok.generators.xar"]
OFFICIAL_FAMILIES.append("vistok.generators.mar")  # MAR (LTH14/mar fixture format)
OFFICIAL_FAMILIES.append("vistok.tokenizers.larp")  # LARP (hywang66/LARP tokenizer + AR prior)


def load_official(folder: str | Path) -> nn.Module:
    """Load an official release folder (as the official hub repos hold it) into a vistok model.

    The family is detected from the folder's ``config.json`` (and weight-file names); weights are read from
    safetensors, or from a bare ``pytorch_model.bin`` with ``torch.load(weights_only=True)``.  Returns the model
    in eval mode with vistok's own module names.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder} (give a folder holding an official release: "
                                "config.json + model.safetensors or pytorch_model.bin)")
    cfg_path = folder / CONFIG_NAME
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    for name in OFFICIAL_FAMILIES:
        module = importlib.import_module(name)
        if module.official_matches(cfg, folder):
            return module.load_official(folder).eval()
    known = ", ".join(n.rsplit(".", 1)[-1] for n in OFFICIAL_FAMILIES) or "none yet"
    raise ValueError(f"{folder} is not an official release vistok can read (families it reads: {known}); "
                     "for a folder written by vistok itself use vistok.hub.from_pretrained")
