import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import vistok  # noqa: E402, F401

torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


def pytest_addoption(parser):
    parser.addoption("--device", default=None,
                     help="run tests/test_device.py on this device (cuda; cpu checks the tests themselves); without "
                          "it those tests skip")


@pytest.fixture(scope="session")
def device(request):
    """The device of ``--device`` (tests/test_device.py: every family there, compared with the CPU)."""
    name = request.config.getoption("--device")
    if not name:
        pytest.skip("needs an accelerator: pytest tests/test_device.py --device cuda (benchmarks/device_check.sh)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail(f"--device {name}: torch {torch.__version__} sees no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # compare with the CPU in fp32
    return torch.device(name)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class RandomPixels(torch.utils.data.Dataset):
    """``n`` random ``(3, side, side)`` images as ``{"pixels": ...}`` items: a training stream for smoke tests."""

    def __init__(self, n: int, side: int):
        self.x = torch.rand(n, 3, side, side)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixels": self.x[i]}


def tiny_titok(**kw):
    from vistok.tokenizers import TiTok

    cfg = dict(image_size=32, patch_size=8, width=32, depth=1, num_heads=2, num_latent_tokens=8,
               codebook_size=64, token_size=8)
    return TiTok(**{**cfg, **kw})


def tiny_ar(**kw):
    from vistok.generators import ARGenerator

    cfg = dict(vocab_size=64, seq_len=8, width=32, depth=2, num_heads=2, dropout=0.0)
    return ARGenerator(**{**cfg, **kw})


def peaked_ar(text=False, seq_len=16, **kw):
    """``tiny_ar`` with 4 classes (or 8-d text in 4 slots) and a peaked output head (N(0, 0.5)), in eval mode: a
    context-sensitive random model for decoder tests."""
    cond = {"text_dim": 8, "max_text_len": 4} if text else {"num_classes": 4}
    gen = tiny_ar(seq_len=seq_len, **cond, **kw).eval()
    torch.nn.init.normal_(gen.output.weight, std=0.5)
    return gen


def ar_conditioning(text, b=3):
    """Conditions for :func:`peaked_ar`: labels ``arange(b) % 4``, or random text with one padded slot."""
    from vistok.interfaces import Conditioning

    if text:
        mask = torch.ones(b, 3, dtype=torch.bool)
        mask[0, 2] = False
        return Conditioning(text=torch.randn(b, 3, 8), text_mask=mask)
    return Conditioning(labels=torch.arange(b) % 4)


def tiny_larp(**kw):
    from vistok.tokenizers import LARP

    cfg = dict(image_size=16, num_frames=4, patch_size=8, temporal_patch_size=2, width=32, depth=1, num_heads=2,
               num_latent_tokens=8, codebook_size=64, token_size=8, prior_width=32, prior_depth=1, prior_num_heads=2,
               prior_max_len=8)
    return LARP(**{**cfg, **kw})


def save_tiny_flextok_pipeline(folder):
    """Save a random tiny FlexTok (32x32, 8x8 patches, 8 registers, FSQ [5, 5] = 25 codes, 2 flow steps) + a text AR
    over its ids (MiniLM, top-k 10) as a pipeline folder; returns the folder."""
    from vistok.sample import Pipeline
    from vistok.text import MiniLMTextEncoder
    from vistok.tokenizers import FlexTok

    torch.manual_seed(0)
    tok = FlexTok(image_size=32, patch_size=8, width=32, depth=2, head_dim=16, num_registers=8, levels=(5, 5),
                  num_steps=2)
    gen = tiny_ar(vocab_size=25, seq_len=8, text_dim=384, max_text_len=16)
    torch.nn.init.normal_(gen.output.weight, std=0.5)  # AR's zero-init head would sample uniformly
    return Pipeline(tok, gen, MiniLMTextEncoder(max_length=16), {"top_k": 10}).save(folder, dtype=None)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of many tiny forward passes: extra threads only add overhead (and contention).
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
