"""Video GenEval-lite: score generated moving-shapes clips against their prompt (caption, :class:`Clip` or class id).

Per frame, the image analyser of :mod:`vistok.data.geneval` finds the coloured regions; each prompted object is
matched, among the n *largest* regions of the frame (n = objects prompted), to one of its colour (best shape
agreement, then area).  Per clip and object:

* ``color``: fraction of frames in which the object has a matched region;
* ``shape``: fraction of frames in which the matched region has the prompted shape (0 where none matched);
* ``motion``: 1 when the direction fitted to the object's **centroid track** is the prompted one.  The track is
  the matched region's centroid over the frames where it was found (at least half of them); a least-squares line
  through it gives the displacement over the clip ``(dx, dy)`` (fractions of the side).  The direction is the
  dominant axis and sign, and it counts only when the displacement is at least ``min_travel`` (default 0.1; the
  renderer moves objects by 0.28) and the other axis is at most ``max_cross`` (0.5) of it; a static,
  diagonal or too short track is wrong (``direction`` None);
* ``overall``: 1 when every object's motion is right and its colour and shape are right in at least half of the
  frames.

Scores are averaged over objects; :func:`score_clips` averages them over clips.  Start position and size are not
scored (a class id names neither).  Trivial baselines: :func:`static_disc_baseline` (a disc of the prompted colour
that never moves: motion 0) and the ground-truth clips played backwards (every motion reversed: motion 0).

The structure follows GenEval (Ghosh et al., arXiv 2310.11513) with colour segmentation instead of a detector.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from torch import Tensor

from vistok.data.geneval import Region, detect
from vistok.data.shapes import POSITIONS, draw_shape, to_tensor
from vistok.data.videos import MOTIONS, Clip, MovingObject, parse_video_caption, video_class_name

__all__ = ["VIDEO_ATTRIBUTES", "centroid_track", "fit_direction", "per_frame_scores", "prompt_objects",
           "reverse_clips", "score_clip", "score_clips", "static_disc_baseline"]

VIDEO_ATTRIBUTES = ("color", "shape", "motion", "overall")
Prompt = Clip | str | int


def prompt_objects(prompt: Prompt) -> tuple[MovingObject, ...]:
    """The prompted objects of a :class:`Clip`, a moving-shapes caption or a class id (``video_class_id``).

    A class id names colour, shape and motion only; its object gets the start ``"center"`` (not scored).
    """
    if isinstance(prompt, Clip):
        return prompt.objects
    if isinstance(prompt, str):
        return parse_video_caption(prompt).objects
    if isinstance(prompt, (int, np.integer)) and not isinstance(prompt, bool):
        color, shape, _, motion = video_class_name(int(prompt)).split()
        return (MovingObject(color, shape, "center", motion),)
    raise TypeError(f"a video prompt is a Clip, a caption or a class id, got {type(prompt).__name__}")


def _check_clip(clip: Tensor) -> None:
    if not isinstance(clip, Tensor) or not clip.is_floating_point():
        raise TypeError(f"clip must be a float tensor (3, T, H, W) in [0, 1], got {getattr(clip, 'dtype', clip)}")
    if clip.ndim != 4 or clip.shape[0] != 3:
        hint = " (time first: use `clip.permute(1, 0, 2, 3)`)" if clip.ndim == 4 and clip.shape[1] == 3 else ""
        raise ValueError(f"clip must have shape (3, T, H, W), got {tuple(clip.shape)}{hint}")
    if clip.shape[1] < 2:
        raise ValueError(f"motion needs at least 2 frames, got {clip.shape[1]}")


def _match(regions: list[Region], objects: tuple[MovingObject, ...],
           prev: list[tuple[float, float]]) -> list[Region | None]:
    """Each object's region among the n largest: its colour, then best shape and size agreement, then nearest to
    ``prev`` (the object's last centroid, or its start cell), so two objects of one colour keep their tracks."""
    main = sorted(regions, key=lambda r: -r.area)[: len(objects)]
    out: list[Region | None] = []
    for obj, (px, py) in zip(objects, prev):
        cands = [r for r in main if r.color == obj.color and not any(r is u for u in out)]
        agree = [(r.shape == obj.shape, r.size == obj.size, -np.hypot(r.centroid[0] - px, r.centroid[1] - py))
                 for r in cands]
        out.append(cands[max(range(len(cands)), key=agree.__getitem__)] if cands else None)
    return out


def _tracks(clip: Tensor, objects: tuple[MovingObject, ...]) -> tuple[list[np.ndarray], np.ndarray]:
    """Centroid tracks ``(T, 2)`` per object (NaN where unmatched) and per-frame hits ``(n, T, 2)`` (colour, shape)."""
    frames = clip.shape[1]
    tracks = [np.full((frames, 2), np.nan) for _ in objects]
    hits = np.zeros((len(objects), frames, 2))
    prev = [POSITIONS[o.start] for o in objects]
    for t in range(frames):
        for k, (obj, r) in enumerate(zip(objects, _match(detect(clip[:, t]), objects, prev))):
            if r is not None:
                tracks[k][t] = prev[k] = r.centroid
                hits[k, t] = (1, r.shape == obj.shape)
    return tracks, hits


def centroid_track(clip: Tensor, prompt: Prompt) -> list[np.ndarray]:
    """Per prompted object, its centroid ``(T, 2)`` (x, y as fractions of the side) in every frame of ``clip``
    ``(3, T, H, W)``; NaN where the frame has no matching region."""
    _check_clip(clip)
    return _tracks(clip, prompt_objects(prompt))[0]


def fit_direction(track: np.ndarray, *, min_travel: float = 0.1, max_cross: float = 0.5,
                  min_found: float = 0.5) -> str | None:
    """The motion name (a key of :data:`~vistok.data.videos.MOTIONS`) of a centroid track ``(T, 2)``, or None.

    A least-squares line through the frames where the object was found (NaN rows skipped; fewer than
    ``min_found`` of the frames: None) gives the displacement over the clip; None unless it is at least
    ``min_travel`` along one axis and at most ``max_cross`` times that along the other (static or diagonal).
    """
    t = np.arange(len(track), dtype=np.float64)
    ok = ~np.isnan(track).any(1)
    if ok.sum() < max(2, min_found * len(track)):
        return None
    slope = np.polyfit(t[ok], track[ok], 1)[0]  # (2,) per-frame velocity of x and y
    dx, dy = slope * (len(track) - 1)
    major, minor = (dx, dy) if abs(dx) >= abs(dy) else (dy, dx)
    if abs(major) < min_travel or abs(minor) > max_cross * abs(major):
        return None
    unit = (int(np.sign(dx)), 0) if abs(dx) >= abs(dy) else (0, int(np.sign(dy)))
    return next(name for name, d in MOTIONS.items() if d == unit)


def score_clip(clip: Tensor, prompt: Prompt, **fit) -> dict:
    """Scores of one clip ``(3, T, H, W)`` in [0, 1] against its prompt: ``color``, ``shape``, ``motion``,
    ``overall`` in [0, 1], plus ``directions`` (the fitted motion of each object, None = static / ambiguous).
    ``fit``: options of :func:`fit_direction`."""
    _check_clip(clip)
    objects = prompt_objects(prompt)
    tracks, frame_hits = _tracks(clip, objects)
    hits = frame_hits.mean(1)  # (n, 2) fraction of frames with colour / shape right
    directions = [fit_direction(tr, **fit) for tr in tracks]
    motion = np.array([d == o.motion for d, o in zip(directions, objects)], dtype=float)
    overall = float(motion.all() and (hits >= 0.5).all())
    return {"color": float(hits[:, 0].mean()), "shape": float(hits[:, 1].mean()), "motion": float(motion.mean()),
            "overall": overall, "directions": directions}


def score_clips(clips: Tensor, prompts: list[Prompt], **fit) -> dict[str, float]:
    """Mean of :func:`score_clip` over clips ``(B, 3, T, H, W)`` with one prompt each (:data:`VIDEO_ATTRIBUTES`)."""
    if clips.ndim != 5:
        raise ValueError(f"clips must have shape (B, 3, T, H, W), got {tuple(clips.shape)}")
    if len(clips) != len(prompts):
        raise ValueError(f"got {len(clips)} clips but {len(prompts)} prompts")
    if not len(clips):
        raise ValueError("no clips to score")
    rows = [score_clip(c, p, **fit) for c, p in zip(clips, prompts)]
    return {k: float(np.mean([r[k] for r in rows])) for k in VIDEO_ATTRIBUTES}


def per_frame_scores(clips: Tensor, prompts: list[Prompt]) -> dict[str, list[float]]:
    """``color`` and ``shape`` hit rates per frame index (mean over clips and objects): ``{"color": [T], ...}``."""
    if len(clips) != len(prompts) or not len(clips):
        raise ValueError(f"got {len(clips)} clips and {len(prompts)} prompts; need one prompt per clip, at least one")
    hits = np.concatenate([_tracks(c, prompt_objects(p))[1] for c, p in zip(clips, prompts)])  # (objects, T, 2)
    return {"color": hits[..., 0].mean(0).tolist(), "shape": hits[..., 1].mean(0).tolist()}


def reverse_clips(clips: Tensor) -> Tensor:
    """Clips ``(B, 3, T, H, W)`` played backwards: every motion reversed (the motion score's negative control)."""
    return clips.flip(2)


def static_disc_baseline(prompts: list[Prompt], num_frames: int = 16, image_size: int = 32,
                         seed: int = 0) -> Tensor:
    """A medium disc of each prompted colour that never moves, at the object's start cell (class ids: the centre):
    ``(B, 3, num_frames, S, S)`` in [0, 1].  Right colour, a circle, no motion: its motion score is 0."""
    from PIL import Image, ImageDraw

    clips = []
    for i, prompt in enumerate(prompts):
        rng = random.Random(seed * 1_000_003 + i)
        bg = rng.randint(215, 255)
        img = Image.new("RGB", (image_size, image_size), (bg, bg, bg))
        draw = ImageDraw.Draw(img)
        for o in prompt_objects(prompt):
            x, y = POSITIONS[o.start]
            draw_shape(draw, "circle", o.color, x * image_size, y * image_size, 0.15 * image_size)
        clips.append(to_tensor(img)[:, None].expand(3, num_frames, image_size, image_size))
    return torch.stack(clips)

