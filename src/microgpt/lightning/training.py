"""Run training from a composed config: one run per run directory, stops on signals, requeues."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import warnings
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from microgpt.core.errors import CheckpointError, Interrupted, Requeued, require_positive_int
from microgpt.io.run_dir import RunDirLock, resolve_ckpt_path
from microgpt.lightning.builders import build_datamodule, build_module, build_trainer, training_tokenizer
from microgpt.lightning.callbacks.checkpoints import RunCheckpoint
from microgpt.lightning.callbacks.interrupt import StopOnSignal
from microgpt.lightning.callbacks.shared_run_dir import SharedRunDirectory
from microgpt.lightning.distributed import teardown_distributed
from microgpt.lightning.loggers import finish_wandb_runs, log_run_config
from microgpt.lightning.plan import check_devices_available, make_plan
from microgpt.lightning.ranks import is_first_process, mark_launcher, started_by_first_process

log = logging.getLogger(__name__)


def quiet_lightning_logs() -> None:
    """Route Lightning's messages through the run's own log handlers (console + train.log) once."""
    lightning_log = logging.getLogger("lightning.pytorch")
    if logging.getLogger().handlers:
        lightning_log.handlers.clear()
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train as configured; returns the final validation metrics. One run per run directory at a
    time: a second one there is refused."""
    quiet_lightning_logs()
    for name in ("max_steps", "eval_every", "eval_batches", "checkpoint_every"):
        require_positive_int(name, cfg[name])
    lock = RunDirLock(cfg.paths.output_dir).acquire() if is_first_process() and not cfg.get("dry_run") else None
    try:
        return _train(cfg)
    except KeyboardInterrupt:  # before the graceful handlers were up: nothing was trained yet
        raise Interrupted("stopped by Ctrl-C (SIGINT) before training started; nothing to save", exit_code=130) from None
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.data, training_tokenizer(cfg), cfg.seed,
                                  val_windows=cfg.eval_batches * cfg.data.batch_size)
    tokenizer = datamodule.load()
    module = build_module(cfg, tokenizer)
    plan = make_plan(cfg, module.model.config)
    if cfg.get("dry_run"):
        print(plan.table())
        return {}
    check_devices_available(cfg.trainer, plan)
    if cfg.get("tf32"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    interrupt = cfg.get("interrupt") or {}
    stop = StopOnSignal(interrupt.get("requeue_signal"), interrupt.get("sync_every_n_steps"))
    requested = cfg.get("resume") or cfg.get("ckpt_path")
    ckpt_path, problem = resume_point(requested, cfg.paths.output_dir)
    extra = [stop] + ([SharedRunDirectory(cfg.paths.output_dir, ckpt_path, problem)] if requested else [])
    trainer = build_trainer(cfg, plan, extra)
    if cfg.get("init_from") and ckpt_path is None:  # a resumed run restores its own weights instead
        from microgpt.io.init_from import initial_weights

        initial_weights(str(cfg.init_from), module.model, tokenizer)
        log.info("weights initialised from %s", cfg.init_from)
    log.info("model: %s parameters", f"{module.model.count_params():,}")
    log_run_config(trainer.loggers, cfg)
    mark_launcher()
    failed = True
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        for callback in trainer.checkpoint_callbacks:  # Lightning skips the train-end hooks of a run resumed at its end
            if isinstance(callback, RunCheckpoint):
                callback.save_last_now(trainer)
        if stop.stopped_by is None and trainer.global_step % cfg.eval_every:  # the last step was no evaluation step
            trainer.validate(module, datamodule=datamodule, verbose=False)
        failed = False
    except SystemExit:
        if not trainer.interrupted:
            raise
        # Lightning turns a Ctrl-C outside the training steps (start-up, a final evaluation) into exit(1).
        step = trainer.global_step
        raise Interrupted("stopped by Ctrl-C (SIGINT) " + (
            "before training started; nothing to save" if step == 0 else
            f"after step {step}, outside a training step; checkpoints/last.ckpt holds that step"), exit_code=130) from None
    finally:
        finish_wandb_runs(trainer.loggers, failed)  # a multirun's next job must start its own W&B run
        teardown_distributed(launched_ranks=trainer.world_size > 1 and trainer.global_rank == 0)
    if stop.stopped_by is not None:
        return stopped(cfg, trainer, stop)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    log.info("finished at step %d: %s; checkpoints in %s", trainer.global_step,
             ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), Path(cfg.paths.output_dir) / "checkpoints")
    return metrics


def resume_point(requested: str | None, output_dir: str) -> tuple[str | None, str | None]:
    """The checkpoint to resume from. On a rank other than 0 an unreadable one is not fatal here:
    SharedRunDirectory reports it on every rank at once, where a lone failing rank would leave
    the others waiting for it in the process group's start-up."""
    try:
        return resolve_ckpt_path(requested, output_dir), None
    except CheckpointError as e:
        if is_first_process():
            raise
        return None, str(e)


def stopped(cfg: DictConfig, trainer: L.Trainer, stop: StopOnSignal) -> dict[str, float]:
    """End a run that all ranks stopped on a signal: rank 0 says so and exits 128 + signal, or
    hands a pre-empted job back to the scheduler."""
    saved = any(isinstance(c, RunCheckpoint) and c.save_last for c in trainer.checkpoint_callbacks)
    where = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    what = f"checkpoint saved to {where}" if saved else "no checkpoint callback is configured, nothing was saved"
    name = "Ctrl-C (SIGINT)" if stop.stopped_by == signal.SIGINT else stop.stopped_by.name
    if started_by_first_process():
        log.info("stopped by %s at step %d, as rank 0 decided", name, trainer.global_step)
        return {}  # rank 0 reports; a non-zero status here would make it kill the job
    if stop.stopped_by == stop.requeue_signal:
        requeue(stop, f"pre-empted ({name}) at step {trainer.global_step}; {what}")
    raise Interrupted(f"stopped by {name} at step {trainer.global_step}; {what}; continue with "
                      f"hydra.run.dir={cfg.paths.output_dir} resume=auto", exit_code=128 + int(stop.stopped_by))


def requeue(stop: StopOnSignal, what: str) -> None:
    """Hand a pre-empted job back to its scheduler, which runs it again (resume=auto continues).
    Under Hydra's submitit launcher that is submitit's own handler, taken over by StopOnSignal
    (it requeues from rank 0 and exits); under a plain SLURM job, `scontrol requeue`. Returns when
    there is no scheduler to hand it to."""
    handler = stop.previous_handlers.get(stop.requeue_signal)
    if callable(handler):
        log.warning("%s; handing the job back to the scheduler", what)
        try:
            handler(int(stop.requeue_signal), None)
        except SystemExit as e:
            raise Requeued(e.code) from None
        raise Requeued(0)  # submitit leaves the requeue to rank 0
    job = os.environ.get("SLURM_ARRAY_JOB_ID") and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    job = job or os.environ.get("SLURM_JOB_ID")
    if job and is_first_process():
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if result.returncode == 0:
            log.warning("%s; SLURM job %s requeued", what, job)
            raise Requeued(0)
        log.error("scontrol requeue %s failed: %s", job, result.stderr.strip())
