"""Tokenizer families; importing this package registers their presets."""

from vistok.registry import register_tokenizer
from vistok.tokenizers.larp import LARP, LARP_PRESETS
from vistok.tokenizers.titok import TITOK_PRESETS, TiTok

for _name, _kwargs in TITOK_PRESETS.items():
    register_tokenizer(_name, TiTok, **_kwargs)
for _name, _kwargs in LARP_PRESETS.items():
    register_tokenizer(_name, LARP, **_kwargs)

__all__ = ["LARP", "TiTok"]
