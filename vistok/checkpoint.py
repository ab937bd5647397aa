"""Low-level checkpoint I/O shared by :mod:`vistok.hub` and the families' official loaders.

Depends only on torch and safetensors and imports no model family.  Weights are read without arbitrary
unpickling: ``*.safetensors`` through safetensors, ``*.bin`` / ``*.pt`` / ``*.pth`` through
``torch.load(weights_only=True)``, with training-checkpoint wrappers (``model_ema``, ``model``, ``module``,
``state_dict``) unwrapped.  Every error names the file and what to do about it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["WRAPPER_KEYS", "check_finite", "find_weight_file", "load_state_dict_strict", "read_json",
           "read_keys", "read_release", "read_state_dict", "rename_state_dict"]

# Keys training scripts nest the weights under, most preferred first (EMA weights are what one samples with).
WRAPPER_KEYS = ("model_ema", "model", "module", "state_dict")


def _unwrap(state: object, path: Path, wrappers: Iterable[str]) -> dict[str, Tensor]:
    wrappers = tuple(wrappers)
    while isinstance(state, dict):
        inner = next((state[k] for k in wrappers if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ValueError(f"{path} does not hold a state dict (name -> tensor) at its top level or under one of "
                         f"{list(wrappers)}; give a weights file or a training checkpoint that wraps one")
    return state


def read_state_dict(path: str | Path, *, wrappers: Iterable[str] = WRAPPER_KEYS, device: str | torch.device = "cpu",
                    mmap: bool = False) -> dict[str, Tensor]:
    """Read a weight file into ``{name: tensor}``.

    Args:
        path: ``*.safetensors``, or a torch pickle (``*.bin``, ``*.pt``, ``*.pth``) loaded with
            ``weights_only=True`` (nothing but tensors and containers is unpickled).
        wrappers: keys a training checkpoint nests the state dict under, tried in order, repeatedly
            (``{"model": {"module": {...}}}`` unwraps fully).
        device: where the tensors land.
        mmap: memory-map a torch zip checkpoint (cheap key listing); old non-zip pickles fall back to a full read.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a corrupt or truncated file, a pickle holding more than tensors, or no state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weight file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(device))
        except Exception as e:  # safetensors raises its own SafetensorError (and OSError on I/O failures)
            raise ValueError(f"{path} is not a readable safetensors file ({e}); it is corrupt or truncated: "
                             "download or save it again") from e
    try:
        try:
            state = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            state = torch.load(path, map_location=device, weights_only=True)  # pre-1.6 pickles cannot be mmapped
    except Exception as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise ValueError(f"{path} holds Python objects besides tensors, which vistok does not unpickle; convert "
                             "it to safetensors (or a plain state dict) in a trusted environment") from e
        raise ValueError(f"{path} is not a readable torch checkpoint ({e}); it is corrupt or truncated: download "
                         "or save it again") from e
    return _unwrap(state, path, wrappers)


def read_keys(path: str | Path, *, wrappers: Iterable[str] = WRAPPER_KEYS) -> set[str]:
    """The tensor names in a weight file, read cheaply (safetensors header, or a memory-mapped torch file)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return set(read_state_dict(path, wrappers=wrappers, mmap=True))
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return set(f.keys())
    except Exception as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}); download or save it again") from e


def find_weight_file(folder: str | Path, names: Iterable[str], patterns: Iterable[str] = (), *,
                     unique: bool = False) -> Path | None:
    """The weight file of ``folder``: the first of ``names`` that exists, else the first (sorted) glob match of
    ``patterns``; None when there is none.

    ``unique=True`` raises ``ValueError`` when several candidates exist (keep one weight file per folder).
    """
    folder = Path(folder)
    found = [folder / n for n in names if (folder / n).is_file()]
    found += [p for pattern in patterns for p in sorted(folder.glob(pattern)) if p not in found]
    if unique and len(found) > 1:
        raise ValueError(f"{folder} holds several weight files {[p.name for p in found]}; keep one per folder")
    return found[0] if found else None


def read_release(folder: str | Path, names: tuple[str, ...], patterns: tuple[str, ...] = (), *,
                 unique: bool = False) -> tuple[dict, dict[str, Tensor], Path]:
    """``(config.json or {}, state dict, weight path)`` of an official release folder (:func:`find_weight_file`).

    Raises:
        FileNotFoundError: the folder holds no weight file named ``names`` or matching ``patterns``.
    """
    folder = Path(folder)
    path = find_weight_file(folder, names, patterns, unique=unique)
    if path is None:
        raise FileNotFoundError(f"{folder} holds no weights: none of {[*names, *patterns]}")
    return read_json(folder / "config.json", missing_ok=True), read_state_dict(path), path


def read_json(path: str | Path, *, missing_ok: bool = False) -> dict:
    """A JSON object from ``path`` (``{}`` if it is absent and ``missing_ok``).

    Raises:
        FileNotFoundError: no such file (unless ``missing_ok``).
        ValueError: not valid JSON, or not a JSON object; the message names the file and the position.
    """
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return {}
        raise FileNotFoundError(f"no such file: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix or rewrite the file") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, expected an object ({{...}})")
    return data


def check_finite(state: dict[str, Tensor], source: str = "state_dict") -> None:
    """Raise ``ValueError`` naming every floating tensor of ``state`` that holds a NaN or an infinity (meta tensors,
    which hold no values, are skipped)."""
    bad = sorted(k for k, v in state.items()
                 if v.is_floating_point() and not v.is_meta and not bool(torch.isfinite(v).all()))
    if bad:
        raise ValueError(f"{source} holds non-finite values (NaN or inf) in {len(bad)} tensors: "
                         f"{bad[:20]}{' ...' if len(bad) > 20 else ''}; the file is damaged (download or save it "
                         "again) or the model diverged")


def load_state_dict_strict(model: nn.Module, state: dict[str, Tensor], source: str = "state_dict", *,
                           finite: bool = True) -> None:
    """``load_state_dict`` that lists missing, unexpected and mis-shaped keys in one ``ValueError``.

    With ``finite`` (the default) it also refuses floating tensors holding NaN or inf (:func:`check_finite`).
    Values are cast to the dtype of the model's own tensors.  ``source`` names the file in the messages.
    """
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
    if finite:
        check_finite(state, source)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def rename_state_dict(state: dict[str, Tensor], rules: list[tuple[str, str]], *, unknown_error: str,
                      transform: Callable[[str, Tensor], Tensor] | None = None,
                      skip: Callable[[str], bool] | None = None) -> dict[str, Tensor]:
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
