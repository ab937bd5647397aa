"""Moving-shapes clips (determinism, captions, labels, real motion) and mp4 / gif files (round trip, bad files)."""

import random

import pytest
import torch

from vistok.data.shapes import COLORS
from vistok.data.videos import (
    MOTIONS,
    NUM_VIDEO_CLASSES,
    TRAVEL,
    Clip,
    MovingObject,
    MovingShapesDataset,
    parse_video_caption,
    random_clip,
    read_video,
    render_clip,
    video_class_id,
    video_class_name,
    write_video,
)

av = pytest.importorskip("av")


def test_items_are_deterministic_clips_in_range():
    ds = MovingShapesDataset(8, image_size=32, num_frames=6, seed=3)
    a, b = ds[5], MovingShapesDataset(8, image_size=32, num_frames=6, seed=3)[5]
    assert a["pixels"].shape == (3, 6, 32, 32) and a["pixels"].dtype == torch.float32
    assert 0 <= float(a["pixels"].min()) and float(a["pixels"].max()) <= 1
    assert torch.equal(a["pixels"], b["pixels"]) and a["caption"] == b["caption"]
    other = MovingShapesDataset(8, image_size=32, num_frames=6, seed=4)[5]
    assert not torch.equal(a["pixels"], other["pixels"])
    assert not torch.equal(a["pixels"][:, 0], a["pixels"][:, -1])  # things move
    with pytest.raises(IndexError):
        ds[8]


def test_captions_parse_back_to_the_structured_labels():
    ds = MovingShapesDataset(40, seed=1, max_objects=2, sizes=("small",))
    for i in range(40):
        item = ds[i]
        clip = ds.clip(i)
        assert parse_video_caption(item["caption"]) == clip
        assert item["label"] == (clip.class_label if len(clip.objects) == 1 else -1)
    with pytest.raises(ValueError, match="motions"):
        parse_video_caption("a red circle moving sideways from the top left")
    with pytest.raises(ValueError, match="cannot parse"):
        parse_video_caption("a red circle on the left")


def test_class_ids_cover_colour_shape_motion():
    ids = {video_class_id(c, s, m) for c in COLORS for s in ("circle", "square", "triangle", "star") for m in MOTIONS}
    assert ids == set(range(NUM_VIDEO_CLASSES))
    assert video_class_name(video_class_id("blue", "star", "up")) == "blue star moving up"
    with pytest.raises(ValueError, match="class id"):
        video_class_name(NUM_VIDEO_CLASSES)


@pytest.mark.parametrize("motion", list(MOTIONS))
def test_objects_move_as_captioned(motion):
    start = {"right": "left", "left": "right", "up": "bottom", "down": "top"}[motion]
    clip = Clip((MovingObject("red", "square", start, motion),))
    size, frames = 64, 8
    video = render_clip(clip, frames, size, random.Random(0))
    red = (video[0] > 0.7) & (video[1] < 0.3) & (video[2] < 0.3)  # t h w mask of the red square
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    cx = [float((xs * red[t]).sum() / red[t].sum()) for t in (0, frames - 1)]
    cy = [float((ys * red[t]).sum() / red[t].sum()) for t in (0, frames - 1)]
    dx, dy = MOTIONS[motion]
    assert cx[1] - cx[0] == pytest.approx(dx * TRAVEL * size, abs=1.5)
    assert cy[1] - cy[0] == pytest.approx(dy * TRAVEL * size, abs=1.5)


def test_random_clips_stay_in_frame_and_apart():
    rng = random.Random(0)
    for _ in range(200):
        clip = random_clip(rng, 2, 2)
        for o in clip.objects:
            for p in (0.0, 1.0):
                assert all(0.2 <= c <= 0.8 for c in o.centre(p))
        for k in range(11):
            centres = [o.centre(k / 10) for o in clip.objects]
            for i, a in enumerate(centres):
                for b in centres[i + 1:]:
                    assert max(abs(a[0] - b[0]), abs(a[1] - b[1])) > 0.3


def test_dataset_arguments_are_checked():
    with pytest.raises(ValueError, match="num_frames"):
        MovingShapesDataset(num_frames=1)
    with pytest.raises(ValueError, match="image_size"):
        MovingShapesDataset(image_size=16)
    with pytest.raises(ValueError, match="max_objects"):
        MovingShapesDataset(max_objects=3)
    with pytest.raises(ValueError, match="could not place"):
        random_clip(random.Random(0), 3, 3)
    with pytest.raises(ValueError, match="unknown sizes"):
        MovingShapesDataset(sizes=("huge",))


def test_datamodule_batches():
    from vistok.training import MovingShapesDataModule

    dm = MovingShapesDataModule(image_size=32, num_frames=4, train_size=8, val_size=4, batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixels"].shape == (4, 3, 4, 32, 32) and len(batch["caption"]) == 4
    assert next(iter(dm.val_dataloader()))["pixels"].shape == (4, 3, 4, 32, 32)


@pytest.mark.parametrize("suffix, tol", [(".mp4", 0.03), (".gif", 0.05)])
def test_file_round_trip(tmp_path, suffix, tol):
    clip = MovingShapesDataset(2, image_size=32, num_frames=6)[0]["pixels"]
    path = write_video(clip, tmp_path / f"clip{suffix}", fps=4)
    back = read_video(path)
    assert back.shape == clip.shape and back.dtype == torch.float32
    assert float((back - clip).abs().mean()) < tol


def test_bad_files_and_tensors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such video"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 50)
    with pytest.raises(ValueError, match="corrupt"):
        read_video(tmp_path / "junk.mp4")
    good = write_video(torch.rand(3, 4, 16, 16), tmp_path / "good.mp4")
    (tmp_path / "cut.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(ValueError, match="corrupt"):
        read_video(tmp_path / "cut.mp4")
    clip = torch.rand(3, 4, 16, 16)
    with pytest.raises(ValueError, match=r"permute\(1, 0, 2, 3\)"):
        write_video(clip.transpose(0, 1), tmp_path / "x.mp4")
    with pytest.raises(ValueError, match=r"permute\(3, 0, 1, 2\)"):
        write_video(clip.permute(1, 2, 3, 0), tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="even"):
        write_video(torch.rand(3, 4, 15, 15), tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="suffix"):
        write_video(clip, tmp_path / "x.avi")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_video(clip * 2, tmp_path / "x.gif")
    with pytest.raises(TypeError, match="float"):
        write_video((clip * 255).to(torch.uint8), tmp_path / "x.gif")
