"""Run lm-evaluation-harness tasks every N optimizer steps and at the end of training; log
`lm_eval/<task>/<metric>` (callbacks=lm_eval)."""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager

import lightning as L
import numpy as np
import torch

from microgpt.core.errors import ConfigError, require_positive_int
from microgpt.core.language_model import LanguageModel
from microgpt.lightning.callbacks.periodic import EveryNSteps
from microgpt.lightning.module import unsharded

log = logging.getLogger(__name__)


@contextmanager
def preserved_rng():
    """lm-eval seeds python's, numpy's and torch's generators for each evaluation; training's own
    draws after it (dropout, sampling) must be those it would have made without one."""
    state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
            yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])


class LmEval(EveryNSteps):
    """`tasks`: lm-eval task names (lm-eval's own, or defined by the YAMLs under `include_path`);
    `every_n_steps`: 0 means only at the end; `limit`: the first K examples of each task; the rest
    as for `python -m microgpt.eval`'s `lm_eval:` options.

    Rank 0 evaluates the plain `pl_module.model` (under FSDP with the full weights, gathered on every
    rank) with `pl_module.tokenizer` while the other ranks wait; the tasks are checked on every rank
    before training starts, so an unknown task or a missing lm-eval fails at once.
    """

    def __init__(self, tasks: list[str] | str, every_n_steps: int = 0, include_path: str | None = None,
                 limit: int | float | None = None, num_fewshot: int | None = None, batch_size: int = 16,
                 max_gen_toks: int = 256, bootstrap_iters: int = 0) -> None:
        from microgpt.evals.lm_eval.runner import LmEvalOptions

        tasks = [tasks] if isinstance(tasks, str) else list(tasks or [])
        if not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise ConfigError(f"callbacks.lm_eval.tasks must name lm-eval tasks, got {tasks!r} "
                              f"(callbacks.lm_eval.tasks=[arc_easy,piqa])")
        super().__init__("lm_eval", every_n_steps)
        require_positive_int("callbacks.lm_eval.batch_size", batch_size)
        self.tasks = tasks
        self.options = LmEvalOptions(include_path, limit, num_fewshot, batch_size, max_gen_toks, bootstrap_iters)

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            from microgpt.evals.lm_eval import require_lm_eval
            from microgpt.evals.lm_eval.runner import load_tasks, task_manager

            require_lm_eval()
            load_tasks(task_manager(self.tasks, self.options.include_path), self.tasks)  # data readable

    def evaluate(self, model, tokenizer) -> dict[str, float]:
        from microgpt.evals.lm_eval.runner import run_lm_eval

        was_training = model.training
        try:
            results = run_lm_eval(LanguageModel(model, tokenizer), self.tasks, self.options, name="training")
        finally:
            model.train(was_training)
        return {f"lm_eval/{task}/{metric}": float(value) for task, values in results.items()
                for metric, value in values.items() if metric != "count" and "_stderr" not in metric}

    def score(self, trainer: L.Trainer, pl_module) -> None:
        self._last_step = trainer.global_step
        metrics: dict[str, float] = {}
        with unsharded(trainer, pl_module.model) as model, trainer.precision_plugin.forward_context():
            if trainer.is_global_zero:
                with preserved_rng():
                    metrics = self.evaluate(model, pl_module.tokenizer)
            trainer.strategy.barrier("lm_eval")
        if not trainer.is_global_zero:
            return
        # Straight to the loggers, as the HellaSwag callback does: self.log is not allowed in
        # on_train_end, and `step` is the optimizer steps done.
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        log.info("lm-eval at step %d: %s", trainer.global_step,
                 ", ".join(f"{k.removeprefix('lm_eval/')} {v:.4f}" for k, v in metrics.items()))
