"""Save and load vistok models as a folder: ``config.json`` (class + every constructor kwarg) and
``model.safetensors``.

Security model: loading never unpickles (weights come from safetensors only) and ``config.json`` may only name a
model class registered with :func:`vistok.registry.register_model` (every family class with a preset is), so a
crafted folder cannot make :func:`from_pretrained` call anything else.  Saving is atomic per folder: everything is
written to a temporary folder beside the target, flushed to disk, then swapped in with renames.

A name that is not a local folder but looks like a Hugging Face repo id (``"owner/name"``) is downloaded with
``huggingface_hub.snapshot_download`` (into its cache) by :func:`from_pretrained` and :func:`load_official`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from torch import nn

from vistok.checkpoint import load_state_dict_strict, read_json, read_state_dict, rename_state_dict
from vistok.registry import ModelKind, class_path, list_models, registered_model

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"

__all__ = ["from_pretrained", "load_official", "load_state_dict_strict", "rename_state_dict", "resolve_folder",
           "save_pretrained"]

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


# --------------------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------------------
def save_pretrained(model: nn.Module, folder: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` to ``folder`` as ``config.json`` + ``model.safetensors``; returns the folder path.

    ``dtype`` (a floating dtype, e.g. ``torch.float16``) stores floating tensors at that precision; loading
    restores fp32.  The write is atomic: the files go to a temporary folder beside ``folder``, are fsynced, and
    the folder is swapped in with renames.  If anything fails, nothing is left behind and an existing ``folder``
    is untouched.  Files other than those two in an existing ``folder`` are carried over.  Files get mode 0644.
    """
    if not hasattr(model, "config"):
        raise TypeError(f"{type(model).__name__} does not record its constructor kwargs (vistok.interfaces."
                        "Configurable); only vistok models can be saved this way")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype (torch.float16, torch.bfloat16, torch.float32), "
                         f"got {dtype!r}: integer storage would truncate the weights")
    cfg = {"class": class_path(type(model)), "kwargs": model.config,
           "dtype": str(dtype or torch.float32).removeprefix("torch.")}
    try:
        config_text = json.dumps(cfg, indent=2)
    except TypeError as e:
        raise TypeError(f"{type(model).__name__}.config is not JSON-serialisable ({e}); constructor kwargs must be "
                        "numbers, strings, booleans, None, lists or dicts") from e
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}

    given, folder = Path(folder), Path(os.path.abspath(folder))  # abspath: "." has a name and a parent
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder; pick another path")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        (tmp / CONFIG_NAME).write_text(config_text + "\n")
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            os.chmod(tmp / name, 0o644)
            _fsync(tmp / name)
        os.chmod(tmp, folder.stat().st_mode & 0o7777 if folder.is_dir() else 0o755)
        _fsync(tmp)
        _swap_in(tmp, folder, keep_new={CONFIG_NAME, WEIGHTS_NAME})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return given


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk; folders cannot be opened on Windows, which is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(new: Path, target: Path, keep_new: set[str]) -> None:
    """Replace folder ``target`` by ``new`` (same parent) with renames; entries of the old ``target`` that are not in
    ``keep_new`` move into the new folder.  On failure the old ``target`` is put back."""
    if not target.exists():
        new.rename(target)
        _fsync(target.parent)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    old.rmdir()  # only the unique name is wanted
    target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        old.rename(target)
        raise
    for entry in old.iterdir():  # the user's other files stay in the folder
        if entry.name not in keep_new:
            entry.rename(target / entry.name)
    shutil.rmtree(old, ignore_errors=True)
    _fsync(target.parent)


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------
def resolve_folder(name_or_path: str | Path, *, revision: str | None = None,
                   allow_patterns: list[str] | None = None) -> Path:
    """A local folder for ``name_or_path``: the folder itself, or a Hugging Face repo id (``"owner/name"``)
    downloaded with ``huggingface_hub.snapshot_download`` (``revision``: branch, tag or commit).

    Raises:
        FileNotFoundError: neither a local folder nor a downloadable repo (the message says which was tried).
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(f"{path} is a file; give the folder that holds it")
    text = str(name_or_path)
    if not _REPO_ID.fullmatch(text) or text.startswith("."):
        raise FileNotFoundError(f"no such folder: {path} (give a local folder, or a Hugging Face repo id "
                                "'owner/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=text, revision=revision, allow_patterns=allow_patterns))
    except Exception as e:  # offline, unknown repo, gated repo, ...
        raise FileNotFoundError(f"{text} is not a local folder, and downloading it from the Hugging Face hub failed "
                                f"({type(e).__name__}: {e}); check the path, or the repo id and your network / "
                                "HF_HUB_OFFLINE setting") from e


def _read_model_config(path: Path) -> tuple[type, ModelKind, dict]:
    """``(class, kind, kwargs)`` from a vistok ``config.json``; ValueError naming the file on anything wrong."""
    cfg = read_json(path)
    missing = [k for k in ("class", "kwargs") if k not in cfg]
    if missing:
        raise ValueError(f"{path} lacks {missing}: it is not a vistok model config (a vistok folder's config.json "
                         "holds 'class' and 'kwargs'; for an official release use vistok.hub.load_official)")
    if not isinstance(cfg["class"], str) or not isinstance(cfg["kwargs"], dict):
        raise ValueError(f"{path}: 'class' must be a string and 'kwargs' an object")
    entry = registered_model(cfg["class"])
    if entry is None:
        raise ValueError(f"{path} names class {cfg['class']!r}, which is not a registered vistok model class; "
                         f"refusing to build it (registered: {list_models()}; register your own class with "
                         "vistok.registry.register_model)")
    return (*entry, cfg["kwargs"])


def _check_kwargs(cls: type, kwargs: dict, source: str) -> None:
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params) - {"self"})
    if unknown:
        raise ValueError(f"{source}: {cls.__name__} has no constructor argument(s) {unknown} (it takes "
                         f"{sorted(set(params) - {'self'})}); the folder was written by another vistok version: "
                         "remove those keys or re-save it")


def from_pretrained(folder: str | Path, *, map_location: str | torch.device = "cpu",
                    expect: Literal["tokenizer", "generator"] | None = None, revision: str | None = None,
                    **overrides) -> nn.Module:
    """Rebuild a model saved by :func:`save_pretrained`; returned in eval mode, fp32.

    Args:
        folder: a local folder, or a Hugging Face repo id (``"owner/name"``) holding such a folder.
        map_location: device the weights are read to and the model is returned on (e.g. ``"cuda"``).
        expect: ``"tokenizer"`` or ``"generator"``: refuse a folder holding the other kind (clear error instead of
            a failure later, e.g. when a CLI is given the wrong folder).
        revision: hub revision when ``folder`` is a repo id.
        overrides: replace constructor kwargs of the saved config (those that change no weight shape), e.g.
            ``from_pretrained(folder, code_tokens=True)`` reads a VQ TiTok's code vectors as continuous tokens.

    Raises:
        FileNotFoundError: no such folder (or repo), or it lacks ``config.json`` / ``model.safetensors``.
        ValueError: invalid ``config.json`` (bad JSON, no "class"/"kwargs", an unregistered class, unknown kwargs),
            the wrong ``expect`` kind, corrupt / truncated / non-finite weights, or weights that do not fit.
    """
    if expect not in (None, "tokenizer", "generator"):
        raise ValueError(f"expect must be None, 'tokenizer' or 'generator', got {expect!r}")
    folder = resolve_folder(folder, revision=revision)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}; a vistok model folder holds {CONFIG_NAME} and "
                                    f"{WEIGHTS_NAME} (write one with vistok.hub.save_pretrained; for an official "
                                    "release use vistok.hub.load_official)")
    cls, kind, kwargs = _read_model_config(folder / CONFIG_NAME)
    if expect is not None and kind != expect:
        raise ValueError(f"{folder} holds a {kind} ({cls.__name__}), but a {expect} is expected here; pass the "
                         f"{expect} folder")
    _check_kwargs(cls, kwargs, str(folder / CONFIG_NAME))
    _check_kwargs(cls, overrides, "from_pretrained overrides")
    state = read_state_dict(folder / WEIGHTS_NAME, device=map_location)
    model = cls(**{**kwargs, **overrides})
    load_state_dict_strict(model, state, str(folder / WEIGHTS_NAME))
    return model.to(map_location).eval()


# --------------------------------------------------------------------------------------------------------------
# Official-format checkpoints
# --------------------------------------------------------------------------------------------------------------
# Each family module that can read an official release exposes ``official_matches(config: dict, folder: Path) ->
# bool`` and ``load_official(folder: Path) -> nn.Module``; list it here (imported lazily, by name, so hub pulls no
# family in and families never import hub).
OFFICIAL_FAMILIES: list[str] = ["vistok.tokenizers.titok", "vistok.generators.nar", "vistok.generators.xar",
                                "vistok.generators.mar", "vistok.tokenizers.flextok",
                                "vistok.tokenizers.larp"]
_OFFICIAL_FILES = ["*.json", "*.safetensors", "*.bin", "*.pt", "*.pth"]


def load_official(folder: str | Path, *, revision: str | None = None) -> nn.Module:
    """Load an official release folder (as the official hub repos hold it) into a vistok model.

    ``folder`` may be a Hugging Face repo id (``"owner/name"``): its config and weight files are downloaded.  The
    family is detected from the folder's ``config.json`` (and weight-file names); weights are read from
    safetensors, or from a ``pytorch_model.bin`` / ``*.pth`` with ``torch.load(weights_only=True)``.  Returns the
    model in eval mode with vistok's own module names.
    """
    folder = resolve_folder(folder, revision=revision, allow_patterns=_OFFICIAL_FILES)
    cfg = read_json(folder / CONFIG_NAME, missing_ok=True)
    for name in OFFICIAL_FAMILIES:
        module = importlib.import_module(name)
        if module.official_matches(cfg, folder):
            return module.load_official(folder).eval()
    known = ", ".join(n.rsplit(".", 1)[-1] for n in OFFICIAL_FAMILIES) or "none yet"
    raise ValueError(f"{folder} is not an official release vistok can read (families it reads: {known}); "
                     "for a folder written by vistok itself use vistok.hub.from_pretrained")
