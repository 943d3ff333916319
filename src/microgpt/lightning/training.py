"""Run training from a composed config: one run per run directory, stops on signals, requeues."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from microgpt.core.errors import (
    CheckpointError,
    ConfigError,
    Interrupted,
    MicroGPTError,
    Requeued,
    require_positive_int,
)
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.tokenizer import Tokenizer
from microgpt.io.run_dir import RunDirLock, resolve_ckpt_path
from microgpt.lightning.builders import (
    build_datamodule,
    build_module,
    build_trainer,
    model_settings,
    training_tokenizer,
)
from microgpt.lightning.callbacks.checkpoints import RunCheckpoint
from microgpt.lightning.callbacks.interrupt import StopOnSignal
from microgpt.lightning.callbacks.progress import use_summary_lines
from microgpt.lightning.callbacks.shared_run_dir import SharedRunDirectory
from microgpt.lightning.distributed import teardown_distributed
from microgpt.lightning.loggers import check_wandb_login, finish_wandb_runs, log_run_config, wandb_settings_of
from microgpt.lightning.plan import check_devices_available, make_plan
from microgpt.lightning.ranks import is_first_process, mark_launcher, started_by_first_process

log = logging.getLogger(__name__)


def quiet_lightning_logs() -> None:
    """Route Lightning's messages through the run's own log handlers (console + train.log) once.

    `import lightning` puts an `INFO: ...` console handler on the `lightning` logger, and
    `lightning.pytorch` / `lightning.fabric` get their own when imported before logging was set up:
    with the run's handlers on the root logger, each message came out twice."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train as configured; returns the final validation metrics. One run per run directory at a
    time: a second one there is refused."""
    quiet_lightning_logs()
    with run_end_logged():
        for name in ("max_steps", "eval_every", "eval_batches", "checkpoint_every"):
            if not (name == "eval_batches" and cfg[name] is None):  # null: the whole validation split
                require_positive_int(name, cfg[name])
        check_data_paths(cfg)
        for settings in [] if cfg.get("dry_run") else wandb_settings_of(cfg.get("logger")):
            check_wandb_login(bool(settings.get("offline")))  # before the data is read
        lock = RunDirLock(cfg.paths.output_dir).acquire() if is_first_process() and not cfg.get("dry_run") else None
        try:
            return _train(cfg)
        except KeyboardInterrupt:  # before the graceful handlers were up: nothing was trained yet
            raise Interrupted("stopped by Ctrl-C (SIGINT) before training started; nothing to save", exit_code=130) from None
        finally:
            if lock is not None:
                lock.release()


def check_data_paths(cfg: DictConfig) -> None:
    """`data=files` (the shakespeare_char experiment's data) with no `data.paths=`: say what to pass."""
    data = cfg.get("data")
    if data is not None and "paths" in data.keys() and OmegaConf.is_missing(data, "paths"):
        example = "path/to/shakespeare.txt" if "shakespeare" in str(choice("experiment")) else "corpus.txt"
        raise ConfigError(f"no training text given: pass data.paths=[{example}] (files, folders or globs of "
                          f".txt/.jsonl/.parquet), or choose other data with data=<name>")


def choice(group: str) -> str | None:
    """The option the command line chose for a config group (None outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


@contextlib.contextmanager
def run_end_logged() -> Iterator[None]:
    """Write why the run ended into its train.log: stderr (where a user error is reported) is
    often lost with the terminal or the batch job, the run directory is not."""
    try:
        yield
    except Requeued:
        log_to_file(logging.INFO, "run ended: pre-empted and handed back to the scheduler")
        raise
    except Interrupted as e:
        log_to_file(logging.WARNING, "run ended: %s", _one_line(e))
        raise
    except MicroGPTError as e:
        log_to_file(logging.ERROR, "run ended with an error: %s", _one_line(e))
        raise
    except BaseException as e:  # a crash: its traceback goes into train.log as well
        log_to_file(logging.ERROR, "run ended by %s: %s", type(e).__name__, _one_line(e), exc_info=True)
        raise
    log_to_file(logging.INFO, "run ended: completed")


def log_to_file(level: int, message: str, *args, exc_info: bool = False) -> None:
    """A record for the run's log files alone: the console already shows the reason (report_user_errors'
    `error:` line), so the console handlers are skipped."""
    record = log.makeRecord(log.name, level, __file__, 0, message, args, sys.exc_info() if exc_info else None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and level >= handler.level:
            handler.handle(record)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def validation_windows(cfg: DictConfig) -> int | None:
    """How many validation windows an evaluation reads; None: all of them (eval_batches=null)."""
    return None if cfg.eval_batches is None else cfg.eval_batches * cfg.data.batch_size


def _train(cfg: DictConfig) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.data, training_tokenizer(cfg), cfg.seed,
                                  val_windows=validation_windows(cfg))
    tokenizer = datamodule.load()
    # The plan needs only the config: a dry run of Mixtral 8x7B must not allocate its 187 GB.
    plan = make_plan(cfg, GPTConfig.from_dict(model_settings(cfg, tokenizer)))
    if cfg.get("dry_run"):
        print(plan.table())
        return {}
    module = build_module(cfg, tokenizer)
    check_devices_available(cfg.trainer, plan)
    if cfg.get("tf32"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    interrupt = cfg.get("interrupt") or {}
    stop = StopOnSignal(interrupt.get("requeue_signal"), interrupt.get("sync_every_n_steps"))
    requested = cfg.get("resume") or cfg.get("ckpt_path")
    ckpt_path, problem = resume_point(requested, cfg.paths.output_dir)
    extra = [stop] + ([SharedRunDirectory(cfg.paths.output_dir, ckpt_path, problem)] if requested else [])
    trainer = build_trainer(cfg, plan, extra)
    use_summary_lines(trainer)
    if cfg.get("init_from") and ckpt_path is None:  # a resumed run restores its own weights instead
        from microgpt.io.init_from import initial_weights

        initial_weights(str(cfg.init_from), module.model, tokenizer)
        log.info("weights initialised from %s", cfg.init_from)
    if module.objective.needs_reference:
        module.objective.set_reference(reference_model(cfg, module.model.config, tokenizer))
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


def reference_model(cfg: DictConfig, config: GPTConfig, tokenizer: Tokenizer) -> GPT:
    """The frozen starting weights DPO and GRPO's KL compare with: `init_from`'s, read again on a
    resume too (the trained weights then come from the checkpoint), so a resumed run has the same one."""
    from microgpt.io.init_from import initial_weights

    if not cfg.get("init_from"):
        raise ConfigError(f"objective {cfg.objective._target_.rsplit('.', 1)[-1]} compares the model with the one it starts "
                          f"from: set init_from=<the SFT checkpoint, a .ckpt or a model directory>")
    reference = GPT(config)
    initial_weights(str(cfg.init_from), reference, tokenizer)
    return reference


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
