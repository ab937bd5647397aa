"""LightningModules and DataModules (the only part of vistok that imports Lightning)."""

from vistok.training.data import ShapesDataModule
from vistok.training.generator_module import GeneratorModule
from vistok.training.tokenizer_module import TokenizerModule

__all__ = ["GeneratorModule", "ShapesDataModule", "TokenizerModule"]
