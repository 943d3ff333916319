"""Build the data, model and Trainer a composed config describes, and run training."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from lightning.pytorch.utilities.exceptions import SIGTERMException

from microgpt.callbacks.interrupt import CheckpointOnInterrupt
from microgpt.checkpoint import read_checkpoint
from microgpt.checkpoint_io import AtomicCheckpointIO
from microgpt.config import to_plain
from microgpt.data import TextDataModule
from microgpt.distributed import teardown_distributed
from microgpt.errors import CheckpointError, ConfigError, Interrupted, require_positive_int
from microgpt.loggers import finish_wandb_runs, log_run_config
from microgpt.model import GPTConfig
from microgpt.module import GPTModule
from microgpt.plan import RunPlan, check_devices_available, make_plan
from microgpt.tokenizer import Tokenizer, tokenizer_from_state

log = logging.getLogger(__name__)


def build_datamodule(data: DictConfig, tokenizer: dict | Tokenizer, seed: int,
                     block_size: int | None = None) -> TextDataModule:
    """The data module a `data=` config describes; `tokenizer` is a config to build from or a
    ready tokenizer (evaluating or fine-tuning a checkpoint uses its own)."""
    return TextDataModule(
        sources=to_plain(data.get("sources")),
        val_sources=to_plain(data.get("val_sources")),
        tokenizer=tokenizer,
        block_size=block_size or data.block_size,
        batch_size=data.batch_size,
        val_fraction=data.get("val_fraction", 0.1),
        num_workers=data.get("num_workers", 0),
        seed=seed,
        mode=data.get("mode", "memory"),
        val_documents=data.get("val_documents", 100),
        shards_dir=data.get("shards_dir"),
    )


def model_settings(cfg: DictConfig, tokenizer: Tokenizer) -> dict:
    """The model config with the tokenizer's vocabulary filled in, checked against the data settings."""
    settings = dict(to_plain(cfg.model))
    if settings.get("vocab_size") is None:
        settings["vocab_size"] = tokenizer.vocab_size
    config = GPTConfig.from_dict(settings)  # validates types and sizes
    if config.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size={config.vocab_size} is smaller than the tokenizer's vocabulary "
            f"({tokenizer.vocab_size}); set model.vocab_size=null to use the tokenizer's"
        )
    if cfg.data.block_size > config.block_size:
        raise ConfigError(
            f"data.block_size={cfg.data.block_size} is above the model's context "
            f"(model.block_size={config.block_size}); lower data.block_size or raise model.block_size"
        )
    return settings


def training_tokenizer(cfg: DictConfig) -> dict | Tokenizer:
    """The configured tokenizer, except when continuing from a microgpt checkpoint (`init_from=<.ckpt>`,
    as stage 2 does): then the checkpoint's own, so ids mean what they meant in training."""
    init_from = cfg.get("init_from")
    if init_from and str(init_from).endswith(".ckpt"):
        hparams = read_checkpoint(init_from).get("hyper_parameters") or {}
        if "tokenizer" in hparams:
            return tokenizer_from_state(hparams["tokenizer"])
    return to_plain(cfg.tokenizer)


def build_module(cfg: DictConfig, tokenizer: Tokenizer) -> GPTModule:
    return GPTModule(
        model=model_settings(cfg, tokenizer),
        tokenizer=tokenizer.state(),
        optim=to_plain(cfg.optim),
        schedule=to_plain(cfg.schedule),
        compile=bool(cfg.get("compile", False)),
    )


def instantiate_all(group: DictConfig | None) -> list:
    """Every entry of a `name: {_target_: ...}` group; `name: null` switches one off."""
    if not group:
        return []
    return [hydra.utils.instantiate(c) for c in group.values() if c is not None]


def build_strategy(strategy):
    """Strategy configs name classes as strings (FSDP wrap policies); turn them into classes."""
    if not hasattr(strategy, "get") or "_target_" not in strategy:
        return strategy
    kwargs = {}
    for key in ("auto_wrap_policy", "activation_checkpointing_policy"):
        if strategy.get(key):
            kwargs[key] = {hydra.utils.get_class(name) for name in strategy[key]}
    return hydra.utils.instantiate(strategy, **kwargs)


def build_trainer(cfg: DictConfig, plan: RunPlan) -> L.Trainer:
    callbacks = instantiate_all(cfg.get("callbacks"))
    callbacks.append(CheckpointOnInterrupt(dirpath=str(Path(cfg.paths.output_dir) / "checkpoints")))
    plugins = [hydra.utils.instantiate(p) for p in cfg.trainer.get("plugins") or []]
    return hydra.utils.instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=instantiate_all(cfg.get("logger")) or False,
        strategy=build_strategy(cfg.trainer.get("strategy", "auto")),
        plugins=[AtomicCheckpointIO(), *plugins],
        accumulate_grad_batches=plan.accumulate,
        # Lightning counts micro-batches here; the config speaks in optimizer steps.
        val_check_interval=cfg.eval_every * plan.accumulate,
    )


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str) -> str | None:
    """`last`: this run directory's last.ckpt; `auto`: its newest readable checkpoint, if any
    (a corrupt newest one is reported and skipped); anything else is a path that must exist."""
    if not ckpt_path:
        return None
    checkpoints = Path(output_dir) / "checkpoints"
    if ckpt_path == "auto":
        for path in sorted(checkpoints.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                read_checkpoint(path)
                log.info("resuming from %s", path)
                return str(path)
            except CheckpointError as e:
                log.warning("skipping %s", e)
        log.info("no checkpoint to resume in %s: starting fresh", checkpoints)
        return None
    if ckpt_path == "last":
        path = checkpoints / "last.ckpt"
        if not path.is_file():
            raise CheckpointError(
                f"no checkpoint at {path}; to resume a run pass its directory "
                f"(hydra.run.dir=<run dir> ckpt_path=last) or ckpt_path=<file.ckpt>"
            )
    else:
        path = Path(ckpt_path)
    read_checkpoint(path)  # fail here, clearly, on a missing or corrupt file
    return str(path)


def quiet_lightning_logs() -> None:
    """Route Lightning's messages through the run's own log handlers (console + train.log) once."""
    lightning_log = logging.getLogger("lightning.pytorch")
    if logging.getLogger().handlers:
        lightning_log.handlers.clear()
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train as configured; returns the final validation metrics."""
    quiet_lightning_logs()
    for name in ("max_steps", "eval_every", "eval_batches", "checkpoint_every"):
        require_positive_int(name, cfg[name])
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.data, training_tokenizer(cfg), cfg.seed)
    tokenizer = datamodule.load()
    module = build_module(cfg, tokenizer)
    plan = make_plan(cfg, module.model.config)
    if cfg.get("dry_run"):
        print(plan.table())
        return {}
    check_devices_available(cfg.trainer, plan)
    if cfg.get("tf32"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    trainer = build_trainer(cfg, plan)
    ckpt_path = resolve_ckpt_path(cfg.get("resume") or cfg.get("ckpt_path"), cfg.paths.output_dir)
    if cfg.get("init_from") and ckpt_path is None:  # a resumed run restores its own weights instead
        from microgpt.pretrained import initial_weights

        initial_weights(str(cfg.init_from), module.model, tokenizer)
        log.info("weights initialised from %s", cfg.init_from)
    log.info("model: %s parameters", f"{module.model.count_params():,}")
    log_run_config(trainer.loggers, cfg)
    failed = True
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        if trainer.global_step % cfg.checkpoint_every:  # the periodic saves stopped short of the end
            trainer.save_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt")
        if trainer.global_step % cfg.eval_every:  # the last step was not an evaluation step
            trainer.validate(module, datamodule=datamodule, verbose=False)
        failed = False
    except (SIGTERMException, SystemExit) as e:
        if isinstance(e, SystemExit) and not trainer.interrupted:
            raise
        # A second Ctrl-C reaches Lightning as KeyboardInterrupt, which it turns into SystemExit(1).
        by = next((c.signal_name for c in trainer.callbacks if isinstance(c, CheckpointOnInterrupt)), None)
        by = by or ("SIGTERM" if isinstance(e, SIGTERMException) else "Ctrl-C (SIGINT)")
        raise Interrupted(f"stopped by {by} at step {trainer.global_step}; checkpoint saved in "
                          f"{Path(cfg.paths.output_dir) / 'checkpoints'}; continue with "
                          f"hydra.run.dir={cfg.paths.output_dir} resume=auto",
                          exit_code=143 if by == "SIGTERM" else 130) from None
    finally:
        finish_wandb_runs(trainer.loggers, failed)  # a multirun's next job must start its own W&B run
        teardown_distributed(launched_ranks=trainer.world_size > 1 and trainer.global_rank == 0)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    log.info("finished at step %d: %s; checkpoints in %s", trainer.global_step,
             ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), Path(cfg.paths.output_dir) / "checkpoints")
    return metrics
