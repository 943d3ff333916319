"""Held-out loss: the token-weighted mean next-token cross-entropy of a GPT over validation batches."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from microgpt.core.errors import DataError
from microgpt.core.model import GPT


@dataclass(frozen=True)
class HeldOutLoss:
    loss: float   # mean cross-entropy per target token (nats)
    tokens: int   # target tokens it averages over

    @property
    def ppl(self) -> float:
        return math.exp(self.loss)

    def metrics(self) -> dict[str, float | int]:
        return {"loss": self.loss, "ppl": self.ppl, "tokens": self.tokens}


@torch.no_grad()
def held_out_loss(model: GPT, batches: Iterable[torch.Tensor], max_batches: int | None = None) -> HeldOutLoss:
    """Loss over `block_size + 1` windows (e.g. `TextDataModule.val_dataloader()`), weighted by each
    batch's number of targets so a short last batch counts for what it holds: the same number as
    training's `val/loss` over the same batches."""
    device = model.transformer.wte.weight.device
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            batch = batch.to(device)
            targets = batch[:, 1:]
            _, loss = model(batch[:, :-1], targets)
            total += float(loss) * targets.numel()
            tokens += targets.numel()
    finally:
        model.train(was_training)
    if not tokens:
        raise DataError("no validation batches to evaluate: add validation text or lower data.block_size")
    return HeldOutLoss(total / tokens, tokens)
