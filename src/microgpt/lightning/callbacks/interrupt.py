"""Stop on a signal at an optimizer-step boundary that every rank agrees on; report train/loss there.

Terminals, systemd and most schedulers signal the whole process group (every DDP rank at once),
some signal one process, launchers forward extra copies. So a handler only records the signal.
At the end of an optimizer step (never mid-accumulation) every rank takes part in one all-reduce
that carries the step's loss and the signals seen; when any rank saw one, all stop after that
step, the run's checkpoint callback brings last.ckpt to it, and `train()` exits 143 / 130, or
hands a pre-empted job back to the scheduler. In one process the check runs every step and costs
nothing; across ranks it runs every `sync_every_n_steps` (default: the logging interval), so it
adds no collective and no host sync to the other steps.
"""

from __future__ import annotations

import logging
import signal
import threading

import lightning as L
import torch

from microgpt.core.errors import ConfigError

log = logging.getLogger(__name__)


def parse_signal(value: str | int | None) -> signal.Signals | None:
    """`SIGUSR2`, `USR2` or 12 -> signal.SIGUSR2; null -> None."""
    if value is None:
        return None
    try:
        if isinstance(value, int) or str(value).isdigit():
            return signal.Signals(int(value))
        name = str(value).upper()
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except (KeyError, ValueError) as e:
        raise ConfigError(f"interrupt.requeue_signal={value!r} is not a signal; use e.g. SIGUSR2 or SIGUSR1") from e


class StopOnSignal(L.Callback):
    """The owner of the stop decision (and of train/loss: the mean over the optimizer step's
    micro-batches and all ranks, computed in the same collective).

    SIGTERM and SIGINT stop the run; `requeue_signal` (SLURM pre-emption: SIGUSR2 from Hydra's
    submitit launcher) stops it for a requeue. Repeats of a signal are ignored: the first one
    already stops the run at the next boundary.
    """

    def __init__(self, requeue_signal: str | int | None = None, sync_every_n_steps: int | None = None) -> None:
        self.requeue_signal = parse_signal(requeue_signal)
        self.sync_every_n_steps = sync_every_n_steps
        self.received: list[signal.Signals] = []  # signals this process got, first copy of each
        self.stopped_by: signal.Signals | None = None  # the signal all ranks stopped for
        self.stopped_at: int | None = None
        self.previous_handlers: dict[signal.Signals, object] = {}  # kept after uninstall: requeue calls one
        self._installed = False
        self._window_loss: torch.Tensor | None = None
        self._step_seen = -1

    @property
    def signals(self) -> tuple[signal.Signals, ...]:
        """In order of precedence when ranks saw different ones: a requeue outranks a plain stop."""
        wanted = (self.requeue_signal, signal.SIGTERM, signal.SIGINT)
        return tuple(dict.fromkeys(s for s in wanted if s is not None))

    # --- handlers: record and return ---------------------------------------------------------

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread() or self._installed:
            return  # handlers can only be set from the main thread
        for signum in self.signals:
            self.previous_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, self._record)
        self._installed = True

    def uninstall(self) -> None:
        if threading.current_thread() is not threading.main_thread() or not self._installed:
            return
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._installed = False

    def _record(self, signum: int, frame) -> None:
        signum = signal.Signals(signum)
        if signum in self.received:
            return  # a forwarded copy, or a second Ctrl-C: the stop is already under way
        self.received.append(signum)
        log.warning("%s received: stopping after the current optimizer step, with a checkpoint", signum.name)

    # --- Lightning hooks -----------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.install()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.uninstall()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step_seen = trainer.global_step
        self._window_loss = None
        # A signal during start-up stops the run before its first step.
        self._decide(trainer, self._exchange(trainer, pl_module, None, with_flags=True)[1])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            # Lightning hands over each micro-batch's loss divided by the accumulation: their sum
            # over the window is the optimizer step's mean loss.
            loss = loss.detach()
            self._window_loss = loss if self._window_loss is None else self._window_loss + loss
        if trainer.global_step == self._step_seen:
            return  # mid-accumulation: no boundary yet
        self._step_seen = trainer.global_step
        step_loss, self._window_loss = self._window_loss, None
        logging_step = trainer.global_step % max(1, trainer.log_every_n_steps) == 0
        sync_step = trainer.world_size == 1 or trainer.global_step % self._sync_every(trainer) == 0
        if not (logging_step or sync_step):
            return
        mean_loss, seen = self._exchange(trainer, pl_module, step_loss if logging_step else None, with_flags=sync_step)
        if sync_step:
            self._decide(trainer, seen)
        if logging_step and mean_loss is not None:
            pl_module.log("train/loss", mean_loss, on_step=True, on_epoch=False, prog_bar=True, sync_dist=False)

    def _sync_every(self, trainer: L.Trainer) -> int:
        return max(1, self.sync_every_n_steps or trainer.log_every_n_steps)

    def _exchange(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor | None,
                  with_flags: bool) -> tuple[torch.Tensor | None, set[signal.Signals]]:
        """The step's loss averaged over ranks and the signals any rank saw: across ranks, one
        all-reduce (sum) of [loss, one flag per signal]; every rank calls this at the same step."""
        if trainer.world_size == 1:
            return loss, set(self.received)
        flags = [float(s in self.received) for s in self.signals] if with_flags else []
        values = torch.tensor([0.0, *flags], device=pl_module.device)
        if loss is not None:
            values[0] = loss.float()
        values = trainer.strategy.reduce(values, reduce_op="sum")
        mean_loss = values[0] / trainer.world_size if loss is not None else None
        seen = {s for s, flag in zip(self.signals, values[1:].tolist()) if flag > 0}
        return mean_loss, seen

    def _decide(self, trainer: L.Trainer, seen: set[signal.Signals]) -> None:
        stop_for = next((s for s in self.signals if s in seen), None)
        if stop_for is None or self.stopped_by is not None:
            return
        self.stopped_by, self.stopped_at = stop_for, trainer.global_step
        trainer.should_stop = True  # the run's checkpoint callback brings last.ckpt to this step at train end
        log.warning("stopping at step %d (%s)", trainer.global_step, stop_for.name)



def disable_lightning_signal_handling(trainer: L.Trainer) -> None:
    """StopOnSignal owns the signals. Lightning's own SIGTERM path broadcasts from inside the
    handler (which hangs a DDP job signalled on every rank), raises mid-accumulation, and adds a
    collective plus a host sync to every micro-batch; its SLURM requeue listens on one signal
    while Hydra's submitit launcher sends another."""
    trainer._signal_connector.register_signal_handlers = lambda: None
    trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None
