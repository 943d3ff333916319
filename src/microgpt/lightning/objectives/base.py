"""The objective interface, and pretraining's next-token cross-entropy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torchmetrics import MeanMetric

if TYPE_CHECKING:
    from microgpt.core.model import GPT
    from microgpt.lightning.module import GPTModule


def batch_ids(batch) -> torch.Tensor:
    """The (rows, block_size + 1) token windows of any stage's batch: a tensor, or a dict's `ids`."""
    return batch["ids"] if isinstance(batch, dict) else batch


class Objective(nn.Module):
    """`training_loss` per micro-batch; `validation_update` per validation batch, then
    `validation_metrics` once per evaluation (synchronised over ranks: MeanMetric). A module so
    that its metrics follow the GPT to its device; it holds no parameters."""

    needs_reference = False  # DPO and GRPO's KL: a frozen copy of the starting weights

    def __init__(self) -> None:
        super().__init__()
        self.val_loss = MeanMetric()
        self.reference: GPT | None = None

    def set_reference(self, model: GPT) -> None:
        # Kept out of the module tree: never trained, saved, averaged into a soup or wrapped by DDP.
        self.__dict__["reference"] = model.eval().requires_grad_(False)

    def on_fit_start(self, module: GPTModule) -> None:
        if self.reference is not None:
            self.reference.to(module.device)

    def training_loss(self, module: GPTModule, batch) -> torch.Tensor:
        raise NotImplementedError

    def validation_update(self, module: GPTModule, batch) -> None:
        raise NotImplementedError

    def validation_metrics(self) -> dict[str, torch.Tensor]:
        value = self.val_loss.compute()
        self.val_loss.reset()
        return {"val/loss": value}


class NextToken(Objective):
    """Pretraining: next-token cross-entropy on every position of `block_size + 1` windows."""

    def inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(inputs, targets with -1 where nothing is learned, extra forward arguments)."""
        return batch[:, :-1], batch[:, 1:], {}

    def training_loss(self, module: GPTModule, batch) -> torch.Tensor:
        inputs, targets, extra = self.inputs(batch)
        _, loss = module._train_forward(inputs, targets, **extra)
        if module.model.config.n_experts:  # the routers' balancing and z-losses (validation: cross-entropy alone)
            loss = loss + module.model.moe_loss()
        return loss

    def validation_update(self, module: GPTModule, batch) -> None:
        inputs, targets, extra = self.inputs(batch)
        _, loss = module.model(inputs, targets, **extra)
        self.val_loss.update(loss, weight=(targets >= 0).sum())

    def validation_metrics(self) -> dict[str, torch.Tensor]:
        metrics = super().validation_metrics()
        return {**metrics, "val/ppl": torch.exp(metrics["val/loss"])}
