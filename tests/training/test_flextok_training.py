"""FlexTokModule: ``vistok fit`` on the shipped tiny config, REPA against a local TorchScript encoder, bad options."""

from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import RandomPixels
from torch import nn
from torch.utils.data import DataLoader

from vistok import from_pretrained
from vistok.cli import main
from vistok.tokenizers.flextok import FlexTok
from vistok.training.flextok_module import FlexTokModule, features_on_grid

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = str(Path(__file__).parents[2] / "configs/tokenizers/flextok_tiny.yaml")


def tiny(**kw) -> FlexTok:
    return FlexTok(**{**dict(image_size=16, patch_size=4, width=32, depth=2, head_dim=16, num_registers=8), **kw})


def test_vistok_fit_two_steps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the config's relative checkpoint folder lands here, not in the checkout's runs/
    args = ["fit", "--config", CONFIG, "--trainer.max_steps", "2", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
            "--data.init_args.train_size=8", "--data.init_args.val_size=4", "--data.init_args.batch_size=4",
            "--model.init_args.tokenizer.init_args.depth=1", "--model.init_args.val_steps=1",
            f"--model.init_args.export_dir={tmp_path / 'export'}"]
    main(args)
    model = from_pretrained(tmp_path / "export")
    assert isinstance(model, FlexTok) and model.num_tokens == 32 and len(model.encoder.blocks) == 1


def test_repa_aligns_decoder_features_with_a_torchscript_encoder(tmp_path):
    encoder = torch.jit.script(nn.Sequential(nn.Conv2d(3, 12, 8, stride=8), nn.Flatten(2)))  # (B, 12, 4)
    torch.jit.save(encoder, str(tmp_path / "enc.pt"))

    class Tokens(nn.Module):  # (B, T, D) layout
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x).transpose(1, 2)

    torch.jit.save(torch.jit.script(Tokens(encoder)), str(tmp_path / "tokens.pt"))
    module = FlexTokModule(tiny(), repa_encoder=str(tmp_path / "tokens.pt"), repa_layer=1, repa_hidden=16,
                           val_prefixes=(1,), lr=1e-3, warmup_steps=1, total_steps=4)
    assert module.projector[-1].out_features == 12
    assert not any(k.startswith("_frozen") or "net." in k for k in module.state_dict())  # the encoder stays out
    before = [p.detach().clone() for p in module.projector.parameters()]
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader(RandomPixels(4, 16), batch_size=4))
    metrics = trainer.callback_metrics
    assert -1.0 <= float(metrics["train/repa"]) <= 1.0
    assert float(metrics["train/loss"]) == pytest.approx(float(metrics["train/flow"]) + 0.5 * float(
        metrics["train/repa"]), rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.projector.parameters()))


def test_features_on_grid_layouts():
    assert features_on_grid(torch.randn(2, 16, 5), 2).shape == (2, 4, 5)
    assert features_on_grid(torch.randn(2, 5, 8, 8), 4).shape == (2, 16, 5)
    with pytest.raises(ValueError, match="square token count"):
        features_on_grid(torch.randn(2, 17, 5), 4)


def test_encoder_lr_scale_and_nested_warmup():
    module = FlexTokModule(tiny(), lr=1e-3, encoder_lr_scale=0.25, nested_warmup_steps=3, warmup_steps=1,
                           total_steps=10)
    opt = module.configure_optimizers()["optimizer"]
    enc = {id(p) for p in module.tokenizer.encoder.parameters()}
    for group in opt.param_groups:
        in_enc = {id(p) in enc for p in group["params"]}
        assert len(in_enc) <= 1  # a group is all-encoder or no-encoder
        assert group["lr"] == pytest.approx(2.5e-4 if in_enc == {True} else 1e-3)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(module.parameters()))
    plain = FlexTokModule(tiny(), warmup_steps=1, total_steps=10).configure_optimizers()["optimizer"]
    assert len(plain.param_groups) == 2  # decay / no-decay, as before
    # during the warm-up every register is kept; afterwards nested dropout samples prefixes again
    keeps = []
    module.tokenizer.forward = lambda x, return_layer=None, nested=True: keeps.append(nested) or _Out()
    trainer = L.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader(RandomPixels(4, 16), batch_size=1))
    assert keeps == [False, False, False, True, True]


class _Out:
    def __init__(self):
        self.loss = (_W * 1.0).sum()


_W = nn.Parameter(torch.ones(1))


def test_bad_options_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="repa_encoder .* is not a file"):
        FlexTokModule(tiny(), repa_encoder=str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match=r"repa_layer must be in \[0, 1\]"):
        FlexTokModule(tiny(), repa_layer=2)
    with pytest.raises(ValueError, match="encoder_lr_scale must be > 0"):
        FlexTokModule(tiny(), encoder_lr_scale=0.0)
    with pytest.raises(ValueError, match=r"val_prefixes must lie in \[1, 8\]"):
        FlexTokModule(tiny(), val_prefixes=(0, 9))


def test_repa_until_switches_repa_off_for_the_rest_of_training(tmp_path):
    encoder = torch.jit.script(nn.Sequential(nn.Conv2d(3, 12, 4, stride=4)))  # (B, 12, 4, 4)
    torch.jit.save(encoder, str(tmp_path / "enc.pt"))
    module = FlexTokModule(tiny(), repa_encoder=str(tmp_path / "enc.pt"), repa_until=0.5, repa_hidden=16,
                           val_prefixes=(1,), lr=1e-3, warmup_steps=1, total_steps=4)
    calls, logged = [], []
    frozen = module._frozen["repa"]

    class Counting(nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return frozen(x)

    module._frozen["repa"] = Counting()

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})

    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[Record()])
    trainer.fit(module, DataLoader(RandomPixels(4, 16), batch_size=4))
    assert len(calls) == 2  # steps 0 and 1 of a 4-step schedule; the encoder is not run afterwards
    assert logged[1]["train/loss"] != pytest.approx(logged[1]["train/flow"])  # REPA in the loss before the cut
    assert logged[3]["train/loss"] == pytest.approx(logged[3]["train/flow"])  # the flow loss alone after it
    with pytest.raises(ValueError, match="repa_until"):
        FlexTokModule(tiny(), repa_until=0.0)


def test_repa_on_tokens_aligns_the_first_codes_with_the_image_mean_feature(tmp_path):
    encoder = torch.jit.script(nn.Sequential(nn.Conv2d(3, 12, 4, stride=4)))  # (B, 12, 4, 4)
    torch.jit.save(encoder, str(tmp_path / "enc.pt"))
    tok = tiny()
    module = FlexTokModule(tok, repa_encoder=str(tmp_path / "enc.pt"), repa_target="tokens", repa_tokens=2,
                           repa_hidden=16, repa_weight=0.5, val_prefixes=(1,), total_steps=4)
    code_dim = tok.decoder.from_codes.in_features
    assert module.projector[0].in_features == 2 * code_dim and module.projector[-1].out_features == 12
    module.configure_optimizers()
    layers, logged = [], {}
    decoder_forward = tok.decoder.forward
    tok.decoder.forward = lambda *a, **k: layers.append(a[3] if len(a) > 3 else k.get("return_layer")) or \
        decoder_forward(*a, **k)
    module.log_dict = lambda d, **k: logged.update({n: float(v) for n, v in d.items()})
    x = torch.rand(4, 3, 16, 16)
    loss = module.training_step({"pixels": x}, 0)
    assert layers == [None]  # the decoder's features are not asked for
    with torch.no_grad():  # the same term by hand: codes are deterministic given the image
        codes, _ = tok.quantizer(tok.encoder(tok.to_latents(x)))
        target = encoder(x).flatten(2).mean(-1)
        repa = -F.cosine_similarity(module.projector(codes[:, :2].flatten(1)), target, dim=-1).mean()
    assert logged["train/repa"] == pytest.approx(float(repa), abs=1e-6)
    assert float(loss) == pytest.approx(logged["train/flow"] + 0.5 * float(repa), rel=1e-5)
    loss.backward()  # the straight-through codes carry the REPA gradient into the encoder
    assert tok.encoder.to_codes.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="repa_target"):
        FlexTokModule(tiny(), repa_target="encoder")
    with pytest.raises(ValueError, match=r"repa_tokens must lie in \[1, 8\]"):
        FlexTokModule(tiny(), repa_tokens=9)
