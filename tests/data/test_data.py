import pytest
import torch

from vistok.data import ShapesDataset
from vistok.data.geneval import detect, score_batch, score_image
from vistok.data.shapes import class_name, parse_caption, render, to_tensor


def test_dataset_is_deterministic_and_captioned():
    a, b = ShapesDataset(10, seed=3), ShapesDataset(10, seed=3)
    assert torch.equal(a[4]["pixels"], b[4]["pixels"]) and a[4]["caption"] == b[4]["caption"]
    assert not torch.equal(ShapesDataset(10, seed=4)[4]["pixels"], a[4]["pixels"])
    item = a[0]
    assert item["pixels"].shape == (3, 64, 64) and 0 <= item["pixels"].min() and item["pixels"].max() <= 1
    assert parse_caption(item["caption"]) == a.scene(0)


def test_class_conditional_variant():
    ds = ShapesDataset(50, max_objects=1)
    labels = [ds[i]["label"] for i in range(50)]
    assert all(0 <= lab < 24 for lab in labels)
    name = class_name(labels[0])
    assert name in ds[0]["caption"]


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_any_resolution(size):
    ds = ShapesDataset(2, image_size=size)
    assert ds[0]["pixels"].shape == (3, size, size)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"\[32, 256\]"):
        ShapesDataset(image_size=16)
    with pytest.raises(ValueError, match="max_objects"):
        ShapesDataset(max_objects=4)
    with pytest.raises(ValueError, match="unknown sizes"):
        ShapesDataset(sizes=("huge",))
    with pytest.raises(ValueError, match="cannot parse"):
        parse_caption("a pink circle on the left")


@pytest.fixture(scope="module")
def renders():
    ds = ShapesDataset(300, seed=11)
    return torch.stack([ds[i]["pixels"] for i in range(300)]), [ds.scene(i) for i in range(300)]


def test_geneval_lite_scores_real_renders_high(renders):
    images, scenes = renders
    scores = score_batch(images, scenes)
    assert all(scores[k] >= 0.98 for k in scores), scores


def test_geneval_lite_scores_noise_and_wrong_prompts_near_zero(renders):
    images, scenes = renders
    noise = score_batch(torch.rand_like(images), scenes)
    assert noise["overall"] == 0 and noise["color"] < 0.05, noise
    shifted = scenes[1:] + scenes[:1]
    wrong = score_batch(images, shifted)
    assert wrong["overall"] < 0.03 and wrong["position"] < 0.1, wrong
    blank = score_batch(torch.ones_like(images), scenes)
    assert blank["overall"] == 0 and blank["color"] == 0


def test_geneval_reads_each_attribute():
    scene = parse_caption("a large blue star at the top right")
    img = to_tensor(render(scene, 64))
    (region,) = detect(img)
    assert (region.color, region.shape, region.position) == ("blue", "star", "top right")
    for wrong, attr in [("a large red star at the top right", "color"), ("a large blue circle at the top right",
                        "shape"), ("a large blue star at the bottom left", "position")]:
        s = score_image(img, wrong)
        assert s[attr] == 0 and s["overall"] == 0


def test_stray_blob_of_the_prompted_colour_earns_no_credit():
    """The prompted colour must be one of the main objects, not confetti beside a wrong-colour object."""
    from vistok.data.geneval import score_image

    img = torch.ones(3, 64, 64)
    img[:, 16:48, 16:48] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]  # big blue square in the centre
    img[:, 2:7, 2:7] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]      # small red blob in a corner
    assert score_image(img, "a red square in the center")["color"] == 0.0
    assert score_image(img, "a blue square in the center")["color"] == 1.0
