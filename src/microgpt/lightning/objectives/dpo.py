"""Direct preference optimisation (Rafailov et al., 2023): raise the chosen reply's log-probability
over the rejected one's, relative to the frozen starting model (`init_from`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from microgpt.core.errors import ConfigError
from microgpt.core.logprobs import masked_targets, token_logprobs
from microgpt.lightning.objectives.base import Objective

if TYPE_CHECKING:
    from microgpt.lightning.module import GPTModule


def reply_logprobs(forward, batch: dict, vocab_size: int) -> torch.Tensor:
    """Each row's summed log-probability of its marked (reply) tokens, (rows,)."""
    ids = batch["ids"]
    logits = forward(ids[:, :-1])[0]
    return token_logprobs(logits, masked_targets(ids, batch["trained"]), vocab_size).sum(dim=-1)


class DPO(Objective):
    """Batches from data/preferences.py: the chosen rows, then the rejected ones. Reports the
    implicit rewards beta * (log pi - log pi_ref): their margin and how often the chosen one wins."""

    needs_reference = True

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        if not isinstance(beta, (int, float)) or beta <= 0:
            raise ConfigError(f"objective.beta={beta!r} must be a number > 0 (0.1 is usual)")
        self.beta = float(beta)
        self.val_margin, self.val_accuracy, self.val_logp_margin = MeanMetric(), MeanMetric(), MeanMetric()

    def scores(self, forward, module: GPTModule, batch: dict) -> dict[str, torch.Tensor]:
        vocab = module.model.config.vocab_size
        policy = reply_logprobs(forward, batch, vocab)
        with torch.no_grad():
            reference = reply_logprobs(self.reference, batch, vocab)
        half = policy.size(0) // 2
        rewards = self.beta * (policy - reference)
        margin = rewards[:half] - rewards[half:]
        return {"loss": -F.logsigmoid(margin).mean(), "margin": margin.detach(),
                "chosen": rewards[:half].detach(), "rejected": rewards[half:].detach(),
                "logp_margin": (policy[:half] - policy[half:]).detach()}

    def training_loss(self, module: GPTModule, batch: dict) -> torch.Tensor:
        s = self.scores(module._train_forward, module, batch)
        for name, value in (("reward_margin", s["margin"].mean()), ("reward_accuracy", (s["margin"] > 0).float().mean()),
                            ("chosen_reward", s["chosen"].mean()), ("rejected_reward", s["rejected"].mean())):
            module.log(f"train/{name}", value, on_step=True, on_epoch=False)
        return s["loss"]

    def validation_update(self, module: GPTModule, batch: dict) -> None:
        s = self.scores(module.model, module, batch)
        n = s["margin"].numel()
        self.val_loss.update(s["loss"], weight=n)
        self.val_margin.update(s["margin"].mean(), weight=n)
        self.val_accuracy.update((s["margin"] > 0).float().mean(), weight=n)
        self.val_logp_margin.update(s["logp_margin"].mean(), weight=n)

    def validation_metrics(self) -> dict[str, torch.Tensor]:
        metrics = super().validation_metrics()
        for name, metric in (("reward_margin", self.val_margin), ("reward_accuracy", self.val_accuracy),
                             ("logp_margin", self.val_logp_margin)):
            metrics[f"val/{name}"] = metric.compute()
            metric.reset()
        return metrics
