"""Score HellaSwag every N optimizer steps and at the end of training; log `hellaswag/acc(_norm)`."""

from __future__ import annotations

import logging

import lightning as L
import torch

from microgpt.core.errors import require_positive_int
from microgpt.evals.hellaswag import EncodedExample, encode_examples, evaluate, load_examples
from microgpt.lightning.callbacks.periodic import EveryNSteps
from microgpt.lightning.module import unsharded

log = logging.getLogger(__name__)


class HellaSwag(EveryNSteps):
    """`source`: a jsonl path or URL (null: the official validation split, downloaded once);
    `limit`: score only the first K examples (quick runs); `every_n_steps`: 0 means only at the end.

    Scores the plain `pl_module.model` (never the compiled or DDP-wrapped view) with
    `pl_module.tokenizer`; under DDP and FSDP the ranks split the examples and the counts are
    summed (under FSDP each rank scores with the full weights, gathered once per evaluation).
    """

    def __init__(self, source: str | None = None, every_n_steps: int = 0, limit: int | None = None,
                 batch_size: int = 4, cache_dir: str | None = None) -> None:
        super().__init__("hellaswag", every_n_steps)
        require_positive_int("callbacks.hellaswag.batch_size", batch_size)
        self.source = source
        self.limit = limit
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self._examples: list[EncodedExample] | None = None
        self._skipped = 0

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        # Read and encode before training starts, so a bad file or URL fails at once.
        if stage == "fit" and self._examples is None:
            examples = load_examples(self.source, self.limit, self.cache_dir)
            self._examples, self._skipped = encode_examples(examples, pl_module.tokenizer)

    def score(self, trainer: L.Trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        with unsharded(trainer, pl_module.model) as model, trainer.precision_plugin.forward_context():
            # forward_context: the training precision (autocast, if any)
            result = evaluate(model, self._examples, self.batch_size, self._skipped)
        metrics = {"hellaswag/acc": result.acc, "hellaswag/acc_norm": result.acc_norm}
        # Straight to the loggers: self.log is not allowed in on_train_end, and in batch hooks it
        # only reaches the logger on `log_every_n_steps` boundaries. `step` is the optimizer steps
        # done (Lightning records its own metrics one lower; microgpt.plot knows both).
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        if trainer.is_global_zero:
            log.info("hellaswag at step %d: acc %.4f, acc_norm %.4f (%d examples)",
                     trainer.global_step, result.acc, result.acc_norm, result.count)
