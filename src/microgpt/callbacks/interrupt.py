"""Save a checkpoint when the run is interrupted (SIGTERM from a scheduler, Ctrl-C)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class CheckpointOnInterrupt(L.Callback):
    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self.saved_at: int | None = None

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return  # a failed step is no state worth keeping: the periodic checkpoints stay as they are
        trainer.save_checkpoint(self.path)
        self.saved_at = trainer.global_step
        log.warning("interrupted at step %d: checkpoint saved to %s", trainer.global_step, self.path)
