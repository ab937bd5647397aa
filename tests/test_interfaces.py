import pytest
import torch

from vistok import interfaces
from vistok.interfaces import Conditioning, KVCache, check_pixels, check_positions, validating


@pytest.mark.parametrize(
    "x, err, match",
    [
        (torch.rand(3, 32, 32), ValueError, "batch axis"),
        (torch.rand(2, 1, 32, 32), ValueError, "3 channels"),
        (torch.rand(2, 32, 32, 3), ValueError, "3 channels"),
        (torch.rand(2, 3, 32, 32) * 2 - 1, ValueError, r"\[0, 1\]"),
        ((torch.rand(2, 3, 32, 32) * 255).to(torch.uint8), TypeError, "float"),
        (torch.rand(2, 3, 16, 16), ValueError, "32x32"),
        ([[0.0]], TypeError, "Tensor"),
    ],
)
def test_check_pixels_rejects_bad_input(x, err, match):
    with pytest.raises(err, match=match):
        check_pixels(x, size=32)


def test_check_pixels_accepts_images_and_video():
    check_pixels(torch.rand(2, 3, 32, 32), size=32)
    check_pixels(torch.rand(2, 3, 4, 32, 32), video=True)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        check_pixels(torch.rand(2, 3, 4, 32, 32), video=False)


def test_conditioning_null_and_cat():
    c = Conditioning(labels=torch.tensor([3, 5]))
    both = c.cat(c.null())
    assert both.labels.tolist() == [3, 5, -1, -1]
    t = Conditioning(text=torch.randn(2, 4, 8))
    assert t.text_mask.all() and not t.null().text_mask.any()
    assert t.repeat_interleave(3).batch_size == 6
    with pytest.raises(ValueError, match="empty"):
        _ = Conditioning().batch_size


def test_kvcache_truncate_and_mask():
    cache = KVCache(1, 2, 1, 4, prefix_len=2, max_tokens=5)
    cache.prefix_mask[1, 1] = False
    cache.advance(torch.tensor([[0, 1, 2], [0, 1, 2]]))
    assert cache.lengths.tolist() == [3, 3]
    cache.truncate(torch.tensor([1, 2]))
    assert cache.lengths.tolist() == [1, 2]
    m = cache.attention_mask(torch.tensor([[1], [2]]))[:, 0, 0]  # (B, S)
    assert m[0].tolist() == [True, True, True, True, False, False, False]
    assert m[1].tolist() == [True, False, True, True, True, False, False]
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(4)


def test_kvcache_visible_narrows_each_query_position():
    cache = KVCache(1, 1, 1, 4, prefix_len=1, max_tokens=4)
    cache.advance(torch.tensor([[0, 1, 2, 3]]))
    cache.visible = torch.ones(1, 4, 4, dtype=torch.bool)
    cache.visible[0, 3, 1] = False  # position 3 may not see token slot 1; position 2 may
    m = cache.attention_mask(torch.tensor([[2, 3]]))[0, 0]  # (L, S)
    assert m[0].tolist() == [True, True, True, True, False]
    assert m[1].tolist() == [True, True, False, True, True]
    assert cache.clone().visible is not cache.visible
    cache.visible = None
    assert cache.attention_mask(torch.tensor([[3]]))[0, 0, 0].all()


def test_kvcache_take_rows_copies_every_per_sample_buffer():
    cache = KVCache(2, 3, 1, 2, prefix_len=1, max_tokens=4)
    for t in cache.k + cache.v:
        t.copy_(torch.arange(3.0)[:, None, None, None].expand_as(t))
    cache.lengths = torch.tensor([1, 2, 3])
    cache.prefix_mask[2] = False
    cache.start = torch.arange(3.0)[:, None].expand(3, 4).clone()
    cache.tokens = torch.tensor([[0], [1], [2]])  # a generator's own per-sample state
    cache.take_rows(torch.tensor([2, 2, 0]))
    assert all(t[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0] for t in cache.k + cache.v)
    assert cache.lengths.tolist() == [3, 3, 1] and cache.prefix_mask[:, 0].tolist() == [False, False, True]
    assert cache.start[:, 0].tolist() == [2.0, 2.0, 0.0] and cache.tokens[:, 0].tolist() == [2, 2, 0]
    cache.k[0][0] += 1  # rows are copies, not views of each other
    assert cache.k[0][1, 0, 0, 0] == 2.0
    with pytest.raises(ValueError, match=r"take_rows needs one source row per row, shape \(3,\)"):
        cache.take_rows(torch.tensor([0, 1]))


def test_kvcache_with_prefix_puts_the_real_prefix_slots_first():
    cache = KVCache(1, 2, 1, 4, prefix_len=2, max_tokens=3)
    cache.prefix_mask[0, 1] = False
    seen = torch.tensor([[[True, False, True]], [[False, False, False]]])  # (B, L=1, max_tokens)
    m = cache.with_prefix(seen)
    assert m.shape == (2, 1, 1, 5)
    assert m[0, 0, 0].tolist() == [True, False, True, False, True]
    assert m[1, 0, 0].tolist() == [True, True, False, False, False]


def test_check_choice_and_check_count_messages():
    from vistok.interfaces import check_choice, check_count

    check_choice("method", "sde", ("sde", "ode"))
    with pytest.raises(ValueError, match=r"method must be one of \('sde', 'ode'\) \(hint\), got 'euler'"):
        check_choice("method", "euler", ("sde", "ode"), " (hint)")
    check_count("k", 0, low=0)
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="window must be an int >= 1"):
            check_count("window", bad)


def test_per_pass_value_checks_run_on_the_cpu_and_skip_on_accelerators(monkeypatch):
    """Per-pass checks read values on the host: free on the CPU, a wait for the device's queue on a GPU (one per
    decoding pass would serialise launching and running).  A "meta" tensor stands in for an accelerator here."""
    with pytest.raises(ValueError, match=r"positions must be in \[0, 7\]"):
        check_positions(torch.tensor([[3, 8]]), 8)
    assert validating() and validating(torch.zeros(2))
    on_device = torch.empty(2, device="meta")
    assert not validating(on_device)
    check_positions(torch.empty(1, 2, dtype=torch.long, device="meta"), 8)  # skipped: nothing is read
    monkeypatch.setattr(interfaces, "CHECK_VALUES_ON_DEVICE", True)
    assert validating(on_device)
    assert not torch.compile(lambda x: torch.tensor(validating(x)), backend="eager")(torch.zeros(2))  # compiled
