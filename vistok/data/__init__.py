"""Datasets the project renders itself, and the GenEval-lite analyser."""

from vistok.data.shapes import COLORS, NUM_CLASSES, POSITIONS, SHAPES, SIZES, Scene, ShapeObject, ShapesDataset

__all__ = ["COLORS", "NUM_CLASSES", "POSITIONS", "SHAPES", "SIZES", "Scene", "ShapeObject", "ShapesDataset"]
