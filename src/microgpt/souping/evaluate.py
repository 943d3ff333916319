"""The held-out data (and HellaSwag) every ingredient and soup is scored on."""

from __future__ import annotations

from omegaconf import DictConfig

from microgpt.core.model import GPT
from microgpt.io.checkpoints import STATE_PREFIX, model_from_checkpoint
from microgpt.souping.average import Ingredient


class Evaluator:
    """Held-out loss (and HellaSwag when enabled) of any state dict, on data fixed once."""

    def __init__(self, template: Ingredient, data: DictConfig, seed: int, val_batches: int | None,
                 hellaswag: dict | None = None) -> None:
        from microgpt.data.text_data import build_text_data

        self.model, self.tokenizer = model_from_checkpoint(template.ckpt, source=template.name)
        block = min(data.get("block_size") or self.model.config.block_size, self.model.config.block_size)
        datamodule = build_text_data(data, self.tokenizer, seed, block_size=block)
        datamodule.load()
        self.batches = list(datamodule.val_dataloader())[:val_batches] if val_batches else list(datamodule.val_dataloader())
        self.hellaswag = hellaswag if hellaswag and hellaswag.get("enabled") else None

    def load(self, state: dict) -> GPT:
        self.model.load_state_dict({k[len(STATE_PREFIX):]: v for k, v in state.items() if k.startswith(STATE_PREFIX)},
                                   strict=False)
        return self.model

    def loss(self, state: dict) -> float:
        from microgpt.evals.perplexity import held_out_loss

        return held_out_loss(self.load(state), self.batches).loss

    def metrics(self, state: dict) -> dict:
        out = {"val_loss": self.loss(state)}
        if self.hellaswag:
            from microgpt.evals.hellaswag import evaluate_hellaswag

            result = evaluate_hellaswag(self.load(state), self.tokenizer, source=self.hellaswag.get("source"),
                                        limit=self.hellaswag.get("limit"), cache_dir=self.hellaswag.get("cache_dir"))
            out.update({"hellaswag_acc": result.acc, "hellaswag_acc_norm": result.acc_norm})
        return out
