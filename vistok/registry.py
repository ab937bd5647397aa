"""Named presets for every tokenizer and generator family: ``create_*`` and ``list_*`` (timm-style, explicit).

It also keeps the allow-list of model classes a ``config.json`` may name (:func:`register_model`):
:func:`vistok.hub.from_pretrained` builds only these, so a crafted folder cannot call an arbitrary function.
Registering a preset registers its class.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

ModelKind = Literal["tokenizer", "generator"]

_TOKENIZERS: dict[str, tuple[type, dict]] = {}
_GENERATORS: dict[str, tuple[type, dict]] = {}
_MODELS: dict[str, tuple[type, ModelKind]] = {}  # "module.QualName" -> (class, kind)


def class_path(cls: type) -> str:
    """The name a ``config.json`` stores for ``cls``: ``"<module>.<qualname>"``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def register_model(cls: type, kind: ModelKind) -> type:
    """Allow ``cls`` to be built from a saved ``config.json`` (``kind``: "tokenizer" or "generator").

    Families register their classes through :func:`register_tokenizer` / :func:`register_generator`; call this
    for a class of your own that has no preset.  Returns ``cls``.
    """
    if kind not in ("tokenizer", "generator"):
        raise ValueError(f"kind must be 'tokenizer' or 'generator', got {kind!r}")
    if not isinstance(cls, type) or not issubclass(cls, nn.Module) or not hasattr(cls, "config"):
        raise TypeError(f"{cls!r} is not a model class recording its constructor kwargs (an nn.Module with "
                        "vistok.interfaces.Configurable)")
    _MODELS[class_path(cls)] = (cls, kind)
    return cls


def registered_model(path: str) -> tuple[type, ModelKind] | None:
    """``(class, kind)`` registered under ``path`` (as :func:`class_path` writes it), or None."""
    return _MODELS.get(path)


def list_models() -> list[str]:
    """Class paths a ``config.json`` may name."""
    return sorted(_MODELS)


def register_tokenizer(name: str, cls: type, **kwargs) -> None:
    register_model(cls, "tokenizer")
    _TOKENIZERS[name] = (cls, kwargs)


def register_generator(name: str, cls: type, **kwargs) -> None:
    register_model(cls, "generator")
    _GENERATORS[name] = (cls, kwargs)


def _create(table: dict[str, tuple[type, dict]], kind: str, name: str, overrides: dict) -> nn.Module:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; available: {sorted(table)}")
    cls, kwargs = table[name]
    return cls(**{**kwargs, **{k: v for k, v in overrides.items() if v is not None}})


def create_tokenizer(name: str, **overrides) -> nn.Module:
    """Build a registered tokenizer preset, e.g. ``create_tokenizer("titok_tiny", num_latent_tokens=16)``."""
    return _create(_TOKENIZERS, "tokenizer", name, overrides)


def create_generator(name: str, **overrides) -> nn.Module:
    """Build a registered generator preset, e.g. ``create_generator("ar_tiny", vocab_size=1024)``."""
    return _create(_GENERATORS, "generator", name, overrides)


def list_tokenizers() -> list[str]:
    return sorted(_TOKENIZERS)


def list_generators() -> list[str]:
    return sorted(_GENERATORS)
