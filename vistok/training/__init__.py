"""LightningModules, DataModules and callbacks (the only part of vistok that imports Lightning)."""

from vistok.training.callbacks import Export, FiniteLoss, Resumable
from vistok.training.data import MovingShapesDataModule, ResumableSampler, ShapesDataModule
from vistok.training.generator_module import GeneratorModule
from vistok.training.larp_module import LARPModule
from vistok.training.tokenizer_module import GANTokenizerModule, ProxyCodeModule, TokenizerModule

__all__ = ["Export", "FiniteLoss", "GANTokenizerModule", "GeneratorModule", "LARPModule", "MovingShapesDataModule",
           "ProxyCodeModule", "Resumable", "ResumableSampler", "ShapesDataModule", "TokenizerModule"]
