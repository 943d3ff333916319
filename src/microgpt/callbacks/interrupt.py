"""Save a checkpoint when the run is interrupted (SIGTERM from a scheduler, Ctrl-C)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class CheckpointOnInterrupt(L.Callback):
    """SIGTERM and a first Ctrl-C (SIGINT) both finish the current optimizer step, save
    `last.ckpt` and stop; a second Ctrl-C stops at once (the checkpoint is then saved mid-step)."""

    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self.saved_at: int | None = None
        self.signal_name: str | None = None  # set by a Ctrl-C; None: SIGTERM or no signal
        self._previous_sigint = None

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        self._previous_sigint = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._stop_after_this_step)

    def _stop_after_this_step(self, signum, frame) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signal_name = "Ctrl-C (SIGINT)"
        log.warning("Ctrl-C: saving a checkpoint after this step (press Ctrl-C again to stop at once)")
        # Lightning's SIGTERM handler: it flags the loops to stop at the step's end on every rank.
        handler = signal.getsignal(signal.SIGTERM)
        if not callable(handler):
            raise KeyboardInterrupt  # no graceful path to take: Lightning's own Ctrl-C handling saves
        handler(signum, frame)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._restore_sigint()

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        self._restore_sigint()
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return  # a failed step is no state worth keeping: the periodic checkpoints stay as they are
        trainer.save_checkpoint(self.path)
        self.saved_at = trainer.global_step
        log.warning("interrupted at step %d: checkpoint saved to %s", trainer.global_step, self.path)

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None
