import json

import pytest
import torch
from conftest import tiny_ar, tiny_titok

from vistok.hub import from_pretrained, load_state_dict_strict, save_pretrained


def test_roundtrip_fp16(tmp_path):
    gen = tiny_ar(num_classes=3).eval()
    save_pretrained(gen, tmp_path, dtype=torch.float16)
    again = from_pretrained(tmp_path)
    assert again.config == gen.config
    for (k, a), b in zip(gen.state_dict().items(), again.state_dict().values()):
        assert b.dtype == a.dtype and torch.allclose(a, b, atol=1e-2), k


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        from_pretrained(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_pretrained(tmp_path)


def test_refuses_classes_outside_vistok(tmp_path):
    save_pretrained(tiny_titok(), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["class"] = "os.system"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="inside vistok"):
        from_pretrained(tmp_path)


def test_strict_load_lists_keys():
    tok = tiny_titok()
    state = dict(tok.state_dict())
    state.pop("latent_tokens")
    state["extra.weight"] = torch.zeros(1)
    state["quantizer.embedding.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError) as e:
        load_state_dict_strict(tok, state)
    msg = str(e.value)
    assert "missing keys (1): ['latent_tokens']" in msg and "extra.weight" in msg and "expected (64, 8)" in msg
