"""GenEval-lite: score a generated shapes image against its structured prompt, with no learned model.

Inspired by GenEval (Ghosh et al., arXiv 2310.11513), which checks object count, colour and position with a
detector; here the scenes are simple enough to read with colour segmentation:

1. every pixel that is saturated and not too dark is assigned the nearest palette hue (the background is grey);
2. connected regions of one colour larger than ``min_area`` (a fraction of the image) are objects;
3. each region gets a shape from two scale-free measures: *solidity* (area / convex-hull area; stars are
   concave) and *extent* (area / bounding-box area: square ~1, circle ~0.79, triangle ~0.5), a position
   from its centroid (3x3 grid with boundaries halfway between the named centres) and a size: its side, read
   from its area through the fill factor of its shape (a square fills side^2, a circle pi/4 of it, ...) less
   the half pixel of outline the rasteriser adds along the perimeter, is named after the nearest
   :data:`~vistok.data.shapes.SIZES` entry (boundaries at the geometric means, 0.257 and 0.338 of the image side);
4. the n prompted objects are matched to regions of their colour among the n *largest* regions (best attribute
   agreement first), so stray blobs never earn credit.

Scores per image, each in [0, 1]: ``count`` (number of regions == number of objects), ``color`` (fraction of
expected objects with a region of their colour), ``shape``, ``size`` and ``position`` (fraction of expected
objects whose matched region has the right shape / size / position; 0 where no region matched), and
``overall`` = 1 only when the count is right and every object is matched with colour, shape, size and position
right (GenEval's strict rule: everything the prompt asks for).  A caption that names no size asks for the
medium one, as the renderer draws it.

:func:`disc_baseline` renders the degenerate answer to a prompt (one medium disc of the prompted colour at the
prompted position per object): the floor any generator's row should be read against.
"""

from __future__ import annotations

import colorsys
import random
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from vistok.data.shapes import COLORS, POSITIONS, SIZES, Scene, ShapeObject, parse_caption, render, to_tensor

ATTRIBUTES = ("count", "color", "shape", "size", "position", "overall")
_HUES = {name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] for name, rgb in COLORS.items()}
#: area / side^2 and perimeter / side of each rendered shape (the star: 10 points at radii 1.15 r and 0.47 r, side 2 r)
_FILL = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5, "star": 5 * 1.15 * 0.47 * np.sin(np.pi / 5) / 4}
_PERIMETER = {"square": 4.0, "circle": np.pi, "triangle": 1 + 5 ** 0.5,
              "star": 5 * (1.15**2 + 0.47**2 - 2 * 1.15 * 0.47 * np.cos(np.pi / 5)) ** 0.5}


@dataclass
class Region:
    color: str
    area: float  # fraction of the image
    centroid: tuple[float, float]  # (x, y) as fractions of the side
    shape: str
    position: str
    side: float = 0.0  # estimated object side as a fraction of the image side
    size: str = "medium"


def _hue_map(img: np.ndarray, min_saturation: float, min_value: float) -> np.ndarray:
    """(H, W, 3) floats in [0, 1] -> (H, W) palette index, -1 for background."""
    mx, mn = img.max(-1), img.min(-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    d = np.maximum(mx - mn, 1e-6)
    h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) / 6
    hues = np.array(list(_HUES.values()))
    dist = np.abs(h[..., None] - hues)
    dist = np.minimum(dist, 1 - dist)
    idx = dist.argmin(-1)
    return np.where((sat >= min_saturation) & (mx >= min_value), idx, -1)


def _classify_shape(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    area = len(xs)
    extent = area / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1))
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    try:
        hull_area = ConvexHull(corners).volume
    except QhullError:
        hull_area = float(area)
    solidity = area / max(hull_area, 1.0)
    if solidity < 0.8:
        return "star"
    if extent > 0.88:
        return "square"
    if extent > 0.66:
        return "circle"
    return "triangle"


def _position_name(x: float, y: float) -> str:
    xs = sorted({p[0] for p in POSITIONS.values()})
    col = sum(x > (a + b) / 2 for a, b in zip(xs, xs[1:]))
    row = sum(y > (a + b) / 2 for a, b in zip(xs, xs[1:]))
    return next(name for name, (px, py) in POSITIONS.items() if px == xs[col] and py == xs[row])


def _side(area: float, shape: str, pixel: float) -> float:
    """Object side (fraction of the image side) from its area fraction: the rasteriser adds about half a pixel
    along the outline, so ``area = fill * side^2 + perimeter * side * pixel / 2``; solved for ``side``."""
    fill, half_perimeter = _FILL[shape], _PERIMETER[shape] * pixel / 2
    return float((np.sqrt(half_perimeter**2 + 4 * fill * area) - half_perimeter) / (2 * fill))


def _size_name(side: float) -> str:
    """Nearest named size on a log scale (boundaries at the geometric means of neighbouring sizes)."""
    return min(SIZES, key=lambda name: abs(np.log(max(side, 1e-6) / SIZES[name])))


def detect(image: torch.Tensor | np.ndarray, *, min_area: float = 0.006, min_saturation: float = 0.4,
           min_value: float = 0.3) -> list[Region]:
    """Find coloured objects in one image ``(3, H, W)`` tensor in [0, 1] or ``(H, W, 3)`` uint8 array."""
    if isinstance(image, torch.Tensor):
        img = image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    else:
        img = np.asarray(image, dtype=np.float32) / (255.0 if np.asarray(image).dtype == np.uint8 else 1.0)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected one RGB image (3, H, W) or (H, W, 3), got shape {img.shape}")
    hmap = _hue_map(img, min_saturation, min_value)
    side_h, side_w = hmap.shape
    regions = []
    for ci, name in enumerate(_HUES):
        labels, n = ndimage.label(hmap == ci)
        for j in range(1, n + 1):
            mask = labels == j
            area = mask.sum() / mask.size
            if area < min_area:
                continue
            ys, xs = np.nonzero(mask)
            cx, cy = (xs.mean() + 0.5) / side_w, (ys.mean() + 0.5) / side_h
            shape = _classify_shape(mask)
            side = _side(area, shape, 1 / np.sqrt(side_h * side_w))
            regions.append(Region(name, float(area), (float(cx), float(cy)), shape, _position_name(cx, cy),
                                  side, _size_name(side)))
    return regions


def score_image(image: torch.Tensor | np.ndarray, prompt: Scene | str) -> dict[str, float]:
    """Per-attribute scores of one image against its prompt (a :class:`Scene` or a shapes caption)."""
    scene = parse_caption(prompt) if isinstance(prompt, str) else prompt
    regions = detect(image)
    n = len(scene.objects)
    # only the n largest regions can stand for the n prompted objects: stray blobs (noise, an untrained model's
    # confetti) never earn colour/shape/position credit, they only break the count
    main = set(sorted(range(len(regions)), key=lambda i: -regions[i].area)[:n])
    used: set[int] = set()
    hits = dict.fromkeys(("color", "shape", "size", "position"), 0)
    for obj in scene.objects:
        cands = [i for i, r in enumerate(regions) if r.color == obj.color and i in main and i not in used]
        if not cands:
            continue
        agree = {i: {k: getattr(regions[i], k) == getattr(obj, k) for k in ("shape", "size", "position")}
                 for i in cands}
        best = max(cands, key=lambda i: (sum(agree[i].values()), regions[i].area))
        used.add(best)
        hits["color"] += 1
        for k, ok in agree[best].items():
            hits[k] += ok
    count = float(len(regions) == n)
    overall = float(count == 1 and all(v == n for v in hits.values()))
    return {"count": count, **{k: v / n for k, v in hits.items()}, "overall": overall}


def disc_baseline(prompts: list[Scene | str] | Scene | str, image_size: int = 64, seed: int = 0) -> torch.Tensor:
    """The degenerate generator: for each prompt, one medium disc of each prompted colour at its prompted position.

    It knows colour and position but ignores shape and size, so it bounds from below what a GenEval-lite score
    means: a generator's row is worth reading only by how far it sits above this one.  Returns
    ``(B, 3, image_size, image_size)`` in [0, 1]; ``seed`` jitters backgrounds and centres like the renderer.
    """
    prompts = [prompts] if isinstance(prompts, (str, Scene)) else list(prompts)
    if not prompts:
        raise ValueError("disc_baseline needs at least one prompt")
    images = []
    for i, prompt in enumerate(prompts):
        scene = parse_caption(prompt) if isinstance(prompt, str) else prompt
        discs = Scene(tuple(ShapeObject(o.color, "circle", o.position, "medium") for o in scene.objects))
        images.append(to_tensor(render(discs, image_size, random.Random(seed * 1_000_003 + i))))
    return torch.stack(images)


def score_batch(images: torch.Tensor, prompts: list[Scene | str]) -> dict[str, float]:
    """Mean scores over a batch ``(B, 3, H, W)`` in [0, 1] with one prompt per image."""
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    rows = [score_image(img, p) for img, p in zip(images, prompts)]
    return {k: float(np.mean([r[k] for r in rows])) for k in ATTRIBUTES}
