"""Synthetic *moving shapes* clips with exact captions, structured labels and class ids, plus mp4 / gif I/O.

Each clip holds 1..``max_objects`` (at most 2) objects from :data:`~vistok.data.shapes.COLORS` x
:data:`~vistok.data.shapes.SHAPES`; each starts at a named cell of the 3x3 grid of :mod:`vistok.data.shapes` and
moves in a straight line (:data:`MOTIONS`) by one grid cell over the clip, so it ends on the neighbouring cell and
never leaves the frame.  Objects never overlap in any frame.  Captions spell every attribute ("a red circle moving
right from the top left and a small blue star moving down from the top right"); single-object clips have a class id
over colour x shape x motion (:data:`NUM_VIDEO_CLASSES`).  The same ``(seed, index)`` renders the same clip at any
resolution and frame count.  Frames are drawn with :func:`vistok.data.shapes.draw_shape`.

Tensors follow vistok's video convention: float in [0, 1], ``(3, T, H, W)`` per clip, ``(B, 3, T, H, W)`` batched.
Video files are read and written with PyAV (``pip install "vistok[video]"``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from vistok.data.shapes import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapesDataset,
    class_id,
    draw_shape,
    to_tensor,
)

__all__ = ["MOTIONS", "NUM_VIDEO_CLASSES", "Clip", "MovingObject", "MovingShapesDataset", "parse_video_caption",
           "random_clip", "read_video", "render_clip", "video_class_id", "video_class_name", "write_video"]

#: motion name -> unit direction (x right, y down) in image coordinates
MOTIONS: dict[str, tuple[int, int]] = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}
#: distance travelled over a clip, as a fraction of the frame side (one grid cell)
TRAVEL = POSITIONS["center"][0] - POSITIONS["left"][0]
NUM_VIDEO_CLASSES = len(COLORS) * len(SHAPES) * len(MOTIONS)


@dataclass(frozen=True)
class MovingObject:
    color: str
    shape: str
    start: str  # a key of POSITIONS
    motion: str  # a key of MOTIONS
    size: str = "medium"

    def phrase(self) -> str:
        size = "" if self.size == "medium" else f"{self.size} "
        return f"a {size}{self.color} {self.shape} moving {self.motion} from the {self.start}"

    def centre(self, progress: float) -> tuple[float, float]:
        """Centre (x, y) as fractions of the frame side at clip ``progress`` in [0, 1]."""
        (x, y), (dx, dy) = POSITIONS[self.start], MOTIONS[self.motion]
        return x + dx * TRAVEL * progress, y + dy * TRAVEL * progress


@dataclass(frozen=True)
class Clip(Scene):
    """A scene of moving objects; ``caption`` joins their phrases as :class:`~vistok.data.shapes.Scene` does."""

    objects: tuple[MovingObject, ...]

    @property
    def class_label(self) -> int:
        """colour x shape x motion class of a single-object clip (-1 for multi-object clips)."""
        if len(self.objects) != 1:
            return -1
        o = self.objects[0]
        return video_class_id(o.color, o.shape, o.motion)


def video_class_id(color: str, shape: str, motion: str) -> int:
    return class_id(color, shape) * len(MOTIONS) + list(MOTIONS).index(motion)


def video_class_name(label: int) -> str:
    """``"red circle moving right"`` for a class id."""
    if not 0 <= label < NUM_VIDEO_CLASSES:
        raise ValueError(f"video class id must be in [0, {NUM_VIDEO_CLASSES - 1}], got {label}")
    still, motion = divmod(label, len(MOTIONS))
    color, shape = list(COLORS)[still // len(SHAPES)], SHAPES[still % len(SHAPES)]
    return f"{color} {shape} moving {list(MOTIONS)[motion]}"


def parse_video_caption(caption: str) -> Clip:
    """Inverse of :attr:`Clip.caption`; raises ``ValueError`` naming the unknown words."""
    objects = []
    for part in caption.strip().lower().rstrip(".").split(" and "):
        words = part.split()
        size = "medium"
        if len(words) > 1 and words[1] in SIZES:
            size = words.pop(1)
        ok = len(words) >= 7 and words[0] in ("a", "an") and words[3] == "moving" and words[5:7] == ["from", "the"]
        start = " ".join(words[7:])
        if not ok or words[1] not in COLORS or words[2] not in SHAPES or words[4] not in MOTIONS \
                or start not in POSITIONS:
            raise ValueError(f"cannot parse {part!r}: expected 'a [small|large] <color> <shape> moving <motion> from "
                             f"the <position>' with colours {list(COLORS)}, shapes {list(SHAPES)}, motions "
                             f"{list(MOTIONS)}, positions {list(POSITIONS)}")
        objects.append(MovingObject(words[1], words[2], start, words[4], size))
    return Clip(tuple(objects))


def _valid_starts(motion: str) -> list[str]:
    """Grid cells from which one cell of ``motion`` stays on the grid."""
    lo, hi = POSITIONS["top left"][0], POSITIONS["bottom right"][0]
    return [p for p in POSITIONS
            if all(lo - 1e-6 <= c <= hi + 1e-6 for c in MovingObject("red", "circle", p, motion).centre(1.0))]


def _overlap(a: MovingObject, b: MovingObject) -> bool:
    """True when the two objects' bounding boxes (stars reach 1.15 of the half-side, plus jitter) ever meet."""
    gap = 1.15 * (SIZES[a.size] + SIZES[b.size]) / 2 + 0.06
    for k in range(11):
        (ax, ay), (bx, by) = a.centre(k / 10), b.centre(k / 10)
        if max(abs(ax - bx), abs(ay - by)) < gap:
            return True
    return False


def random_clip(rng: random.Random, min_objects: int = 1, max_objects: int = 2,
                sizes: tuple[str, ...] = tuple(SIZES)) -> Clip:
    """Objects with random colour, shape, start cell and motion that never overlap during the clip."""
    n = rng.randint(min_objects, max_objects)
    for _ in range(1000):
        objects: list[MovingObject] = []
        for _ in range(n):
            motion = rng.choice(list(MOTIONS))
            objects.append(MovingObject(rng.choice(list(COLORS)), rng.choice(SHAPES),
                                        rng.choice(_valid_starts(motion)), motion, rng.choice(sizes)))
        if not any(_overlap(a, b) for i, a in enumerate(objects) for b in objects[i + 1:]):
            return Clip(tuple(objects))
    raise ValueError(f"could not place {n} non-overlapping moving objects of sizes {sizes}; use fewer or smaller")


def render_clip(clip: Clip, num_frames: int = 16, size: int = 32, rng: random.Random | None = None) -> Tensor:
    """Draw ``clip`` on a light background: float (3, T, H, W) in [0, 1].

    ``rng`` jitters the background tone and each object's centre and size once per clip (as
    :func:`vistok.data.shapes.render`), so motion is the only change between frames.
    """
    if num_frames < 2:
        raise ValueError(f"a moving clip needs num_frames >= 2, got {num_frames}")
    rng = rng or random.Random(0)
    bg = rng.randint(215, 255)
    jitter = [(SIZES[o.size] * rng.uniform(0.93, 1.07), rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02))
              for o in clip.objects]
    frames = []
    for f in range(num_frames):
        img = Image.new("RGB", (size, size), (bg, bg, bg))
        draw = ImageDraw.Draw(img)
        for o, (side, jx, jy) in zip(clip.objects, jitter):
            x, y = o.centre(f / (num_frames - 1))
            draw_shape(draw, o.shape, o.color, (x + jx) * size, (y + jy) * size, side * size / 2)
        frames.append(to_tensor(img))
    return torch.stack(frames, dim=1)


class MovingShapesDataset(ShapesDataset):
    """Deterministic moving-shapes clips (a :class:`~vistok.data.shapes.ShapesDataset` of clips instead of images).

    Args:
        length: number of clips.
        image_size: frame side in pixels (32..256).
        num_frames: frames per clip (>= 2).
        seed: clips are a pure function of ``(seed, index)``; use different seeds for train/val.
        min_objects, max_objects: objects per clip (1..2).
        sizes: which named sizes may appear.

    Items are dicts: ``pixels`` (3, T, H, W) float in [0, 1], ``caption`` str, ``label`` int (colour x shape x motion
    class, -1 for multi-object clips) and ``index`` int (``dataset.clip(index)`` gives the structured labels).
    """

    def __init__(self, length: int = 10000, image_size: int = 32, num_frames: int = 16, seed: int = 0,
                 min_objects: int = 1, max_objects: int = 2, sizes: tuple[str, ...] = tuple(SIZES)):
        if num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 (the objects move), got {num_frames}")
        if max_objects > 2:
            raise ValueError(f"max_objects must be <= 2 (a third moving object cannot stay clear of the others on "
                             f"the 3x3 grid), got {max_objects}")
        super().__init__(length, image_size, seed, min_objects, max_objects, sizes)
        self.num_frames = num_frames

    def clip(self, index: int) -> Clip:
        return random_clip(self._rng(index), self.min_objects, self.max_objects, self.sizes)

    scene = clip  # the structured labels, under the image dataset's name too

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = self._rng(index)
        clip = random_clip(rng, self.min_objects, self.max_objects, self.sizes)
        pixels = render_clip(clip, self.num_frames, self.image_size, rng)
        return {"pixels": pixels, "caption": clip.caption, "label": clip.class_label, "index": index}


# ----------------------------------------------------------------------------------------------------------------
# Video files (PyAV)
# ----------------------------------------------------------------------------------------------------------------
_CODECS = {".mp4": ("libx264", "yuv420p"), ".gif": ("gif", "rgb8")}


def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('video files need PyAV: pip install "vistok[video]"') from e
    return av


def write_video(video: Tensor, path: str | Path, fps: int = 8) -> Path:
    """Write a clip (3, T, H, W) float in [0, 1] to ``path``: ``.mp4`` (H.264, yuv420p: even sides) or ``.gif``.

    Returns the path.  Raises ``ValueError`` for a wrong layout, range or suffix.
    """
    path = Path(path)
    if path.suffix.lower() not in _CODECS:
        raise ValueError(f"unsupported video suffix {path.suffix!r}; use one of {sorted(_CODECS)}")
    if not isinstance(video, Tensor) or not video.is_floating_point():
        raise TypeError(f"video must be a float tensor (3, T, H, W) in [0, 1], got {getattr(video, 'dtype', video)}")
    if video.ndim != 4 or video.shape[0] != 3:
        hint = " (one clip of a batch: `video[0]`)" if video.ndim == 5 else ""
        if video.ndim == 4 and video.shape[1] == 3:
            hint = " (time first: use `video.permute(1, 0, 2, 3)`)"
        elif video.ndim == 4 and video.shape[-1] == 3:
            hint = " (channels last: use `video.permute(3, 0, 1, 2)`)"
        raise ValueError(f"video must have shape (3, T, H, W), got {tuple(video.shape)}{hint}")
    if float(video.min()) < -1e-3 or float(video.max()) > 1 + 1e-3:
        raise ValueError("video values must lie in [0, 1]")
    codec, pix_fmt = _CODECS[path.suffix.lower()]
    h, w = video.shape[-2:]
    if codec == "libx264" and (h % 2 or w % 2):
        raise ValueError(f"mp4 (yuv420p) needs even frame sides, got {h}x{w}; crop or pad, or write a .gif")
    frames = (video.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()
    av = _av()
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        if codec == "libx264":
            stream.options = {"crf": "12"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    return path


def read_video(path: str | Path) -> Tensor:
    """Read every frame of a video file: float (3, T, H, W) in [0, 1].

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty, corrupt, has no video stream or no frames.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such video file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes); was the write interrupted?")
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream")
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.FFmpegError as e:
        raise ValueError(f"cannot decode {path}: the file is corrupt or not a video ({e})") from e
    if not frames:
        raise ValueError(f"{path} holds no decodable frames (corrupt or truncated video)")
    return torch.from_numpy(np.stack(frames)).permute(3, 0, 1, 2).float() / 255.0
