"""Named presets for every tokenizer and generator family: ``create_*`` and ``list_*`` (timm-style, explicit)."""

from __future__ import annotations

from torch import nn

_TOKENIZERS: dict[str, tuple[type, dict]] = {}
_GENERATORS: dict[str, tuple[type, dict]] = {}


def register_tokenizer(name: str, cls: type, **kwargs) -> None:
    _TOKENIZERS[name] = (cls, kwargs)


def register_generator(name: str, cls: type, **kwargs) -> None:
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
