"""When an evaluation callback scores the model: every `every_n_steps` optimizer steps and once at
the end of training (not twice at a step that is both)."""

from __future__ import annotations

import lightning as L

from microgpt.core.errors import require_positive_int


class EveryNSteps(L.Callback):
    """Calls `score(trainer, pl_module)`, which sets `self._last_step` to the step it scored."""

    def __init__(self, name: str, every_n_steps: int) -> None:
        if every_n_steps != 0:  # 0: only at the end
            require_positive_int(f"callbacks.{name}.every_n_steps", every_n_steps)
        self.every_n_steps = every_n_steps
        self._last_step = -1

    def score(self, trainer: L.Trainer, pl_module) -> None:
        raise NotImplementedError

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step and step % self.every_n_steps == 0 and step != self._last_step:
            self.score(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_step:
            self.score(trainer, pl_module)
