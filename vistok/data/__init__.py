"""Datasets the project renders itself, and the GenEval-lite analyser."""

from vistok.data.shapes import COLORS, NUM_CLASSES, POSITIONS, SHAPES, SIZES, Scene, ShapeObject, ShapesDataset
from vistok.data.videos import MOTIONS, NUM_VIDEO_CLASSES, MovingShapesDataset, read_video, write_video

__all__ = ["COLORS", "MOTIONS", "NUM_CLASSES", "NUM_VIDEO_CLASSES", "POSITIONS", "SHAPES", "SIZES",
           "MovingShapesDataset", "Scene", "ShapeObject", "ShapesDataset", "read_video", "write_video"]
