"""Tokenizer families; importing this package registers their presets."""

from vistok.registry import register_tokenizer
from vistok.tokenizers.flextok import FLEXTOK_PRESETS, FlexTok
from vistok.tokenizers.larp import LARP, LARP_PRESETS
from vistok.tokenizers.titok import TITOK_PRESETS, TiTok
from vistok.tokenizers.vq import VQ_PRESETS, VQTokenizer

for _presets, _cls in ((TITOK_PRESETS, TiTok), (FLEXTOK_PRESETS, FlexTok), (LARP_PRESETS, LARP),
                        (VQ_PRESETS, VQTokenizer)):
    for _name, _kwargs in _presets.items():
        register_tokenizer(_name, _cls, **_kwargs)

__all__ = ["LARP", "FlexTok", "TiTok", "VQTokenizer"]
