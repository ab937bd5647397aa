import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from conftest import tiny_ar, tiny_titok
from torch import nn

import vistok
from vistok import registry
from vistok.hub import from_pretrained, load_official, load_state_dict_strict, save_pretrained
from vistok.interfaces import Configurable

NAR_FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "parity" / "nar"


def test_roundtrip_fp16(tmp_path):
    gen = tiny_ar(num_classes=3).eval()
    save_pretrained(gen, tmp_path, dtype=torch.float16)
    again = from_pretrained(tmp_path)
    assert again.config == gen.config
    for (k, a), b in zip(gen.state_dict().items(), again.state_dict().values()):
        assert b.dtype == a.dtype and torch.allclose(a, b, atol=1e-2), k


def test_saved_config_holds_every_default(tmp_path):
    import inspect

    gen = tiny_ar()
    save_pretrained(gen, tmp_path / "ar")
    saved = json.loads((tmp_path / "ar" / "config.json").read_text())["kwargs"]
    params = set(inspect.signature(type(gen).__init__).parameters) - {"self"}
    assert set(saved) == params  # every argument, including those never passed (e.g. rope_base)
    assert saved["rope_base"] == 10000.0 and saved["mlp_hidden"] is None
    again = from_pretrained(tmp_path / "ar")
    assert again.config == gen.config == saved


def _toy_class(width_default: int) -> type:
    """A model class as one vistok version would define it; two calls = the same class before and after a change
    of default (same module and qualname, so the same name in config.json)."""

    class Toy(nn.Module, Configurable):
        def __init__(self, width: int = width_default, sizes: tuple[int, ...] = (1, 2)):
            super().__init__()
            self.proj = nn.Linear(width, 2)

    return Toy


@pytest.fixture
def toy_registry(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))  # registrations below do not leak
    return registry


def test_changed_default_still_builds_the_saved_model(tmp_path, toy_registry):
    old = toy_registry.register_model(_toy_class(3), "generator")
    save_pretrained(old(), tmp_path / "toy")
    assert json.loads((tmp_path / "toy" / "config.json").read_text())["kwargs"] == {"width": 3, "sizes": [1, 2]}
    new = toy_registry.register_model(_toy_class(5), "generator")  # a later release changes the default
    assert new().proj.in_features == 5
    back = from_pretrained(tmp_path / "toy")
    assert type(back) is new and back.proj.in_features == 3 and back.config == {"width": 3, "sizes": [1, 2]}


def test_config_of_subclasses():
    base = _toy_class(3)

    class Inherits(base):  # no __init__ of its own: the inherited signature is recorded
        pass

    class Narrows(base):
        def __init__(self, depth: int = 2):
            super().__init__(width=4 * depth)

    assert Inherits(width=6).config == {"width": 6, "sizes": [1, 2]}
    assert Narrows().config == {"depth": 2}  # what Narrows(**config) needs, not the parent's arguments


@pytest.mark.parametrize("payload", ["overwrite", "create"])
def test_config_cannot_call_arbitrary_functions(tmp_path, payload):
    """Issue 15 finding 1: ``"class": "vistok.hub.save_file"`` used to write any file through from_pretrained."""
    folder = save_pretrained(tiny_ar(), tmp_path / "model")
    victim = tmp_path / ("victim.txt" if payload == "overwrite" else "created.bin")
    if payload == "overwrite":
        victim.write_text("precious")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update({"class": "vistok.hub.save_file", "kwargs": {"tensors": {}, "filename": str(victim)}})
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not a registered vistok model class") as e:
        vistok.from_pretrained(folder)
    assert str(folder / "config.json") in str(e.value)
    if payload == "overwrite":
        assert victim.read_text() == "precious"
    else:
        assert not victim.exists()
    cfg["class"] = "os.system"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not a registered"):
        from_pretrained(folder)


def _snapshot(parent: Path) -> dict[str, bytes]:
    return {str(p.relative_to(parent)): p.read_bytes() if p.is_file() else b"<dir>" for p in parent.rglob("*")}


@pytest.mark.parametrize("existing", [False, True])
def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch, existing):
    if existing:
        save_pretrained(tiny_ar(), tmp_path / "model")
    before = _snapshot(tmp_path)

    def broken_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("vistok.hub.save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(tiny_ar(depth=1), tmp_path / "model")
    assert _snapshot(tmp_path) == before  # no temp folder, old folder byte-identical (or still absent)


def test_save_over_existing_folder_swaps_it_and_keeps_other_files(tmp_path):
    folder = save_pretrained(tiny_ar(depth=2), tmp_path / "model")
    (folder / "notes.txt").write_text("mine")
    save_pretrained(tiny_ar(depth=1), folder)
    assert from_pretrained(folder).config["depth"] == 1
    assert (folder / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or backup folder left
    for name in ("config.json", "model.safetensors"):
        assert (folder / name).stat().st_mode & 0o777 == 0o644, name


def test_save_rejects_non_float_dtype(tmp_path):
    with pytest.raises(ValueError, match="floating"):
        save_pretrained(tiny_ar(), tmp_path / "m", dtype=torch.int8)
    assert not (tmp_path / "m").exists()
    assert from_pretrained(save_pretrained(tiny_ar(), tmp_path / "bf", dtype=torch.bfloat16)) is not None


def _poke_weights(folder: Path, value: float) -> str:
    """Write ``value`` (float32) over the first element of the first float32 tensor; returns its name."""
    path = folder / "model.safetensors"
    raw = bytearray(path.read_bytes())
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + size])
    name = next(k for k, v in sorted(header.items()) if k != "__metadata__" and v["dtype"] == "F32")
    start = 8 + size + header[name]["data_offsets"][0]
    raw[start:start + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(raw))
    return name


def _edit_config(folder: Path, edit) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# (id, how the saved tiny AR folder is damaged, load kwargs, error type, message pattern)
LOAD_ERRORS = [
    ("no-folder", lambda f: shutil.rmtree(f), {}, FileNotFoundError, "no such folder"),
    ("no-config", lambda f: (f / "config.json").unlink(), {}, FileNotFoundError, "has no config.json"),
    ("no-weights", lambda f: (f / "model.safetensors").unlink(), {}, FileNotFoundError, "has no model.safetensors"),
    ("bad-json", lambda f: (f / "config.json").write_text("{'class': oops"), {}, ValueError, "not valid JSON"),
    ("json-list", lambda f: (f / "config.json").write_text("[1, 2]"), {}, ValueError, "expected an object"),
    ("no-class", lambda f: _edit_config(f, lambda c: c.pop("class")), {}, ValueError, r"lacks \['class'\]"),
    ("no-kwargs", lambda f: _edit_config(f, lambda c: c.pop("kwargs")), {}, ValueError, r"lacks \['kwargs'\]"),
    ("unknown-kwarg", lambda f: _edit_config(f, lambda c: c["kwargs"].update(bogus=1)), {}, ValueError,
     r"no constructor argument\(s\) \['bogus'\]"),
    ("shape-change", lambda f: _edit_config(f, lambda c: c["kwargs"].update(width=64)), {}, ValueError,
     "does not fit ARGenerator"),
    ("truncated", _truncate, {}, ValueError, "not a readable safetensors file"),
    ("garbage", lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 64), {}, ValueError,
     "corrupt or truncated"),
    ("nan", lambda f: _poke_weights(f, float("nan")), {}, ValueError, r"non-finite values .* in 1 tensors"),
    ("inf", lambda f: _poke_weights(f, float("inf")), {}, ValueError, r"non-finite values .* in 1 tensors"),
    ("wrong-kind", lambda f: None, {"expect": "tokenizer"}, ValueError,
     "holds a generator .*but a tokenizer is expected"),
]


@pytest.mark.parametrize(("damage", "kwargs", "error", "match"), [row[1:] for row in LOAD_ERRORS],
                         ids=[row[0] for row in LOAD_ERRORS])
def test_load_errors_name_the_file(tmp_path, damage, kwargs, error, match):
    folder = save_pretrained(tiny_ar(), tmp_path / "ar")
    damage(folder)
    with pytest.raises(error, match=match) as e:
        from_pretrained(folder, **kwargs)
    assert str(folder) in str(e.value)


def test_expect_accepts_the_right_kind(tmp_path):
    assert from_pretrained(save_pretrained(tiny_titok(), tmp_path / "t"), expect="tokenizer").num_tokens == 8
    with pytest.raises(ValueError, match="holds a tokenizer"):
        from_pretrained(tmp_path / "t", expect="generator")
    with pytest.raises(ValueError, match="expect must be"):
        from_pretrained(tmp_path / "t", expect="tokeniser")


def test_unknown_override_is_named(tmp_path):
    with pytest.raises(ValueError, match="overrides.*nope"):
        from_pretrained(save_pretrained(tiny_ar(), tmp_path / "ar"), nope=1)


def test_nan_message_names_the_tensor(tmp_path):
    folder = save_pretrained(tiny_ar(), tmp_path / "ar")
    name = _poke_weights(folder, float("nan"))
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        from_pretrained(folder)


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


@pytest.fixture
def fake_hub(monkeypatch):
    """``huggingface_hub.snapshot_download`` answered from local folders: ``fake_hub[repo_id] = folder``."""
    import huggingface_hub

    repos, calls = {}, []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        calls.append(dict(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns))
        if repo_id not in repos:
            raise OSError(f"404 {repo_id}")  # what the hub client raises derives from OSError
        return str(repos[repo_id])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    repos["calls"] = calls
    return repos


def test_from_pretrained_downloads_a_repo_id(tmp_path, fake_hub):
    gen = tiny_ar()
    fake_hub["someone/tiny-ar"] = save_pretrained(gen, tmp_path / "snapshot")
    back = from_pretrained("someone/tiny-ar", revision="v1", expect="generator")
    assert back.config == gen.config
    assert fake_hub["calls"] == [dict(repo_id="someone/tiny-ar", revision="v1", allow_patterns=None)]
    with pytest.raises(FileNotFoundError, match="someone/missing.*Hugging Face hub failed.*404"):
        from_pretrained("someone/missing")


def test_local_paths_never_reach_the_hub(tmp_path, fake_hub, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for missing in ("./gone/model", str(tmp_path / "gone"), "gone"):
        with pytest.raises(FileNotFoundError, match="no such folder"):
            from_pretrained(missing)
    save_pretrained(tiny_ar(), "local/model")  # a relative folder that looks like a repo id loads from disk
    assert from_pretrained("local/model") is not None
    assert fake_hub["calls"] == []


@pytest.mark.skipif(not NAR_FIXTURE.is_dir(), reason="needs the shared NAR parity fixture")
def test_load_official_downloads_a_repo_id(fake_hub):
    fake_hub["ThisisBillhe/NAR-B"] = NAR_FIXTURE
    model = load_official("ThisisBillhe/NAR-B")
    assert type(model).__name__ == "NARGenerator" and not model.training
    (call,) = fake_hub["calls"]
    assert call["repo_id"] == "ThisisBillhe/NAR-B" and "*.safetensors" in call["allow_patterns"]


def test_official_loader_reads_wrapped_torch_checkpoints(tmp_path):
    from vistok.checkpoint import read_keys, read_state_dict

    state = {"a.weight": torch.randn(2, 3), "b": torch.arange(3)}
    torch.save({"model": {"module": state}, "epoch": 3}, tmp_path / "ckpt.pt")
    torch.save({"model_ema": state, "model": {"a.weight": torch.zeros(1)}}, tmp_path / "ema.pth")
    for name in ("ckpt.pt", "ema.pth"):
        got = read_state_dict(tmp_path / name)
        assert got.keys() == state.keys() and torch.equal(got["a.weight"], state["a.weight"]), name
        assert read_keys(tmp_path / name) == set(state)
    torch.save({"model": {"a.weight": torch.ones(1)}, "note": os.sep}, tmp_path / "plain.bin")
    assert read_state_dict(tmp_path / "plain.bin").keys() == {"a.weight"}
    (tmp_path / "evil.pt").write_bytes(b"\x80\x02cos\nsystem\n.")  # a pickle naming os.system
    with pytest.raises(ValueError, match="evil.pt"):
        read_state_dict(tmp_path / "evil.pt")
