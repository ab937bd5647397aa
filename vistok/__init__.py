"""vistok: visual tokenizers, autoregressive generators and fast lossless decoding."""

from vistok import generators, tokenizers
from vistok.compiling import compile_inference, uncompile
from vistok.hub import from_pretrained, save_pretrained
from vistok.interfaces import Conditioning, Generator, GeneratorOutput, KVCache, Tokenizer, TokenizerOutput
from vistok.registry import create_generator, create_tokenizer, list_generators, list_tokenizers

__all__ = [
    "Conditioning",
    "Generator",
    "GeneratorOutput",
    "KVCache",
    "Tokenizer",
    "TokenizerOutput",
    "compile_inference",
    "create_generator",
    "create_tokenizer",
    "from_pretrained",
    "generators",
    "list_generators",
    "list_tokenizers",
    "save_pretrained",
    "tokenizers",
    "uncompile",
]
