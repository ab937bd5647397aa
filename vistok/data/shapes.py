"""Synthetic *shapes* scenes rendered with PIL: exact captions and structured labels, deterministic per index.

Each scene holds 1..``max_objects`` objects drawn from :data:`COLORS` x :data:`SHAPES`, each at a named
position of a 3x3 grid (no two objects in neighbouring cells, so they never touch) and a named size.
Captions spell every attribute ("a large red circle on the left
and a blue square at the bottom"; medium size is left unsaid).  The same ``(seed, index)`` always renders
the same scene at any resolution, so image quality is measurable offline (see :mod:`vistok.data.geneval`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 20),
    "yellow": (235, 205, 20),
    "green": (30, 165, 55),
    "blue": (35, 65, 220),
    "purple": (145, 45, 190),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
#: position name -> (x, y) centre as a fraction of the image side
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.22, 0.22), "top": (0.5, 0.22), "top right": (0.78, 0.22),
    "left": (0.22, 0.5), "center": (0.5, 0.5), "right": (0.78, 0.5),
    "bottom left": (0.22, 0.78), "bottom": (0.5, 0.78), "bottom right": (0.78, 0.78),
}
PHRASES: dict[str, str] = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom", "bottom right": "at the bottom right",
}
#: size name -> object side as a fraction of the image side
SIZES: dict[str, float] = {"small": 0.22, "medium": 0.30, "large": 0.38}
NUM_CLASSES = len(COLORS) * len(SHAPES)


@dataclass(frozen=True)
class ShapeObject:
    color: str
    shape: str
    position: str
    size: str = "medium"

    def phrase(self) -> str:
        size = "" if self.size == "medium" else f"{self.size} "
        return f"a {size}{self.color} {self.shape} {PHRASES[self.position]}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]

    @property
    def caption(self) -> str:
        return " and ".join(o.phrase() for o in self.objects)

    @property
    def class_label(self) -> int:
        """``color x shape`` class of a single-object scene (-1 for multi-object scenes)."""
        if len(self.objects) != 1:
            return -1
        o = self.objects[0]
        return class_id(o.color, o.shape)


def class_id(color: str, shape: str) -> int:
    return list(COLORS).index(color) * len(SHAPES) + SHAPES.index(shape)


def class_name(label: int) -> str:
    """``"red circle"`` for a class id."""
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"class id must be in [0, {NUM_CLASSES - 1}], got {label}")
    return f"{list(COLORS)[label // len(SHAPES)]} {SHAPES[label % len(SHAPES)]}"


def parse_caption(caption: str) -> Scene:
    """Inverse of :attr:`Scene.caption`; raises ``ValueError`` naming the unknown words."""
    objects = []
    for part in caption.strip().lower().rstrip(".").split(" and "):
        words = part.split()
        if len(words) < 3 or words[0] not in ("a", "an"):
            raise ValueError(f"cannot parse {part!r}: expected 'a [small|large] <color> <shape> <where>'")
        rest = words[1:]
        size = "medium"
        if rest[0] in SIZES:
            size, rest = rest[0], rest[1:]
        color, shape, where = rest[0], rest[1], " ".join(rest[2:])
        position = next((p for p, ph in PHRASES.items() if ph == where), None)
        if color not in COLORS or shape not in SHAPES or position is None:
            raise ValueError(
                f"cannot parse {part!r}: colours {list(COLORS)}, shapes {list(SHAPES)}, "
                f"positions {list(PHRASES.values())}"
            )
        objects.append(ShapeObject(color, shape, position, size))
    return Scene(tuple(objects))


def random_scene(rng: random.Random, min_objects: int = 1, max_objects: int = 3,
                 sizes: tuple[str, ...] = tuple(SIZES)) -> Scene:
    """Objects in mutually non-neighbouring cells of the 3x3 grid, so they never touch or occlude each other."""
    n = rng.randint(min_objects, max_objects)
    while True:
        places = rng.sample(list(POSITIONS), n)
        objects = tuple(ShapeObject(rng.choice(list(COLORS)), rng.choice(SHAPES), p, rng.choice(sizes))
                        for p in places)
        if not any(_neighbours(a.position, b.position) for i, a in enumerate(objects) for b in objects[i + 1:]):
            return Scene(objects)


def _neighbours(a: str, b: str) -> bool:
    (ax, ay), (bx, by) = POSITIONS[a], POSITIONS[b]
    return max(abs(ax - bx), abs(ay - by)) < 0.4


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "star":
        pts = []
        for i in range(10):
            rad = r * 1.15 if i % 2 == 0 else r * 0.47
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + 0.05 * r + rad * math.sin(a)))
        return pts
    raise ValueError(shape)


def render(scene: Scene, size: int = 64, rng: random.Random | None = None) -> Image.Image:
    """Draw ``scene`` on a light background; ``rng`` jitters background tone, centres and sizes."""
    rng = rng or random.Random(0)
    bg = rng.randint(215, 255)
    img = Image.new("RGB", (size, size), (bg, bg, bg))
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        fx, fy = POSITIONS[o.position]
        side = SIZES[o.size] * size * rng.uniform(0.93, 1.07)
        cx = (fx + rng.uniform(-0.02, 0.02)) * size
        cy = (fy + rng.uniform(-0.02, 0.02)) * size
        draw_shape(draw, o.shape, o.color, cx, cy, side / 2)
    return img


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, color: str, cx: float, cy: float, r: float) -> None:
    """Draw one filled ``shape`` of a named ``color`` centred at pixel ``(cx, cy)`` with half-side ``r``."""
    fill = COLORS[color]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=fill)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class ShapesDataset(Dataset):
    """Deterministic shapes scenes.

    Args:
        length: number of scenes.
        image_size: side in pixels (32..256).
        seed: scenes are a pure function of ``(seed, index)``; use different seeds for train/val.
        min_objects, max_objects: objects per scene (1..3).
        sizes: which named sizes may appear.

    Items are dicts: ``pixels`` (3, H, W) float in [0, 1], ``caption`` str, ``label`` int (colour x shape class,
    -1 for multi-object scenes) and ``index`` int (``dataset.scene(index)`` gives the structured labels).
    """

    def __init__(self, length: int = 20000, image_size: int = 64, seed: int = 0, min_objects: int = 1,
                 max_objects: int = 3, sizes: tuple[str, ...] = tuple(SIZES)):
        if not 32 <= image_size <= 256:
            raise ValueError(f"image_size must be in [32, 256], got {image_size}")
        if not 1 <= min_objects <= max_objects <= 3:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 3, got {min_objects}, {max_objects}")
        unknown = set(sizes) - set(SIZES)
        if unknown:
            raise ValueError(f"unknown sizes {sorted(unknown)}; choose from {list(SIZES)}")
        self.length, self.image_size, self.seed = length, image_size, seed
        self.min_objects, self.max_objects, self.sizes = min_objects, max_objects, tuple(sizes)

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> random.Random:
        return random.Random(self.seed * 1_000_003 + index)

    def scene(self, index: int) -> Scene:
        return random_scene(self._rng(index), self.min_objects, self.max_objects, self.sizes)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = self._rng(index)
        scene = random_scene(rng, self.min_objects, self.max_objects, self.sizes)
        pixels = to_tensor(render(scene, self.image_size, rng))
        return {"pixels": pixels, "caption": scene.caption, "label": scene.class_label, "index": index}
