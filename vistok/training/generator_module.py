"""LightningModule that trains any vistok generator on the tokens of a frozen tokenizer."""

from __future__ import annotations

import time
from typing import Literal

import torch
from torch import nn

from vistok.hub import from_pretrained
from vistok.interfaces import Conditioning
from vistok.training.base import (
    TrainingModule,
    adamw_warmup_cosine,
    checkpoint_activations,
    frozen_encode,
    load_pretrained_weights,
)


class GeneratorModule(TrainingModule):
    """Next-token (or the generator's own) loss on tokens of a frozen tokenizer.

    Args:
        generator: the network (injected, e.g. ``vistok.generators.ARGenerator``).
        tokenizer_path: folder written by ``vistok.hub.save_pretrained`` (e.g. a TokenizerModule export).
        tokenizer_kwargs: constructor kwargs that override the folder's config (weights unchanged), e.g.
            ``{"code_tokens": True, "latent_scale": 3.587}`` to train a continuous generator on a VQ TiTok's
            code vectors.
        conditioning: ``"text"`` (captions through the MiniLM text encoder), ``"class"`` (the batch's
            ``label``), or ``"none"``.
        lr, betas, weight_decay: AdamW settings.
        warmup_steps, final_lr_ratio: warm-up + cosine schedule.
        total_steps: length of the schedule; None (default) = the trainer's ``max_steps`` (or epochs x batches).
        export_dir: where the generator's hub folder is written when training ends (rank zero).
        export_fp16: store exported weights in fp16.
        pretrained: a ``save_pretrained`` folder (e.g. a previous export) whose weights replace the injected
            generator's, to continue training it (every key must fit; a mismatch lists the keys).
        activation_checkpointing: recompute each transformer block's activations in the backward pass (less memory,
            one more forward pass per block; for the large presets, with DDP or FSDP; see docs/training.md).

    Token ids of each dataset item are computed once and memoised by index (the datasets are deterministic).
    """

    def __init__(self, generator: nn.Module, tokenizer_path: str,
                 conditioning: Literal["text", "class", "none"] = "text", lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.05, warmup_steps: int = 200,
                 total_steps: int | None = None, final_lr_ratio: float = 0.1, export_dir: str | None = None,
                 export_fp16: bool = True, pretrained: str | None = None,
                 tokenizer_kwargs: dict | None = None, activation_checkpointing: bool = False):
        super().__init__()
        self.save_hyperparameters(ignore=["generator"])
        if pretrained:
            load_pretrained_weights(generator, pretrained)
        self.generator = generator
        if activation_checkpointing:
            checkpoint_activations(generator)
        # frozen helpers are kept out of the state_dict (not registered as submodules)
        self._frozen: dict[str, nn.Module] = {
            "tokenizer": from_pretrained(tokenizer_path, **(tokenizer_kwargs or {})).requires_grad_(False)}
        if conditioning == "text":
            from vistok.text import MiniLMTextEncoder

            longest = getattr(generator, "prefix_len", None) or getattr(generator, "max_text_len", None) or 32
            self._frozen["text"] = MiniLMTextEncoder(max_length=longest)
        self._tokens: dict[tuple[str, int], torch.Tensor] = {}
        self._ready: dict[str, torch.Tensor] = {}  # this batch's tokens, made before the strategy's forward

    def on_fit_start(self) -> None:
        self._t0 = time.time()

    def _frozen_on_device(self, name: str) -> nn.Module:
        """A frozen helper where the module is (moved on first use: fit, validate and test alike)."""
        return self._frozen[name].to(self.device)

    # Tokens are made in the batch-start hooks, outside the training / validation forward: FSDP with bf16-mixed casts
    # the batch to bf16 when it enters that forward, and the tokenizer must see the fp32 pixels sampling decodes to.
    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._ready["train"] = self.tokens_of(batch, "train")

    def on_validation_batch_start(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._ready["val"] = self.tokens_of(batch, "val")

    @torch.no_grad()
    def tokens_of(self, batch: dict, split: str) -> torch.Tensor:
        keys = [(split, int(i)) for i in batch["index"]]
        todo = [i for i, k in enumerate(keys) if k not in self._tokens]
        if todo:
            ids = frozen_encode(self._frozen_on_device("tokenizer"), batch["pixels"][todo])
            for i, t in zip(todo, ids, strict=True):
                self._tokens[keys[i]] = t.cpu()
        return torch.stack([self._tokens[k] for k in keys]).to(self.device)

    def condition_of(self, batch: dict) -> Conditioning:
        mode = self.hparams.conditioning
        if mode == "text":
            return self._frozen_on_device("text")(list(batch["caption"])).to(self.device)
        if mode == "class":
            if bool((batch["label"] < 0).any()):
                raise ValueError("class conditioning needs single-object scenes: set data max_objects: 1")
            return Conditioning(labels=batch["label"].long())
        return Conditioning(batch=len(batch["index"]))  # unconditional

    def _loss(self, batch: dict, split: str) -> torch.Tensor:
        tokens = self._ready.pop(split, None)
        if tokens is None or len(tokens) != len(batch["index"]):  # called outside the trainer's loop
            tokens = self.tokens_of(batch, split)
        return self.generator(tokens, self.condition_of(batch)).loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, "train")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch, "val"), prog_bar=True, batch_size=len(batch["index"]), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.log("val/elapsed_min", (time.time() - getattr(self, "_t0", time.time())) / 60)

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.generator, self.hparams, self.schedule_steps())

    def exported_model(self) -> nn.Module:
        return self.generator
