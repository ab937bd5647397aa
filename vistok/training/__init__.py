"""LightningModules and DataModules (the only part of vistok that imports Lightning)."""

from vistok.training.data import MovingShapesDataModule, ShapesDataModule
from vistok.training.generator_module import GeneratorModule
from vistok.training.larp_module import LARPModule
from vistok.training.tokenizer_module import TokenizerModule

__all__ = ["GeneratorModule", "LARPModule", "MovingShapesDataModule", "ShapesDataModule", "TokenizerModule"]
