"""The data, model and Trainer a composed config describes."""

from __future__ import annotations

import logging

import hydra
import lightning as L
from omegaconf import DictConfig

from microgpt.core.errors import ConfigError
from microgpt.core.model import GPTConfig
from microgpt.core.tokenizer import Tokenizer
from microgpt.core.tokenizers import tokenizer_from_state
from microgpt.data.text_data import build_text_data
from microgpt.io.checkpoints import read_checkpoint
from microgpt.io.config import to_plain
from microgpt.lightning.callbacks.interrupt import disable_lightning_signal_handling
from microgpt.lightning.checkpoint_io import AtomicCheckpointIO
from microgpt.lightning.datamodule import TextDataModule
from microgpt.lightning.module import GPTModule
from microgpt.lightning.plan import RunPlan
from microgpt.lightning.post_datamodule import PostDataModule

log = logging.getLogger(__name__)


def build_datamodule(data: DictConfig, tokenizer: dict | Tokenizer, seed: int, block_size: int | None = None,
                     val_windows: int | None = None) -> TextDataModule | PostDataModule:
    """The LightningDataModule a `data=` config describes: text windows (see `build_text_data`), or
    a post-training stage's rows when it names a `kind` (chat, preferences, prompts)."""
    if data.get("kind"):
        return PostDataModule(to_plain(data), tokenizer, seed, block_size or data.block_size)
    return build_text_data(data, tokenizer, seed, block_size, val_windows, cls=TextDataModule)


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
        schedule=fitted_schedule(to_plain(cfg.schedule)),
        compile=bool(cfg.get("compile", False)),
        objective=to_plain(cfg.objective) if cfg.get("objective") else None,
        lora=to_plain(cfg.lora) if (cfg.get("lora") or {}).get("r") else None,
    )


def fitted_schedule(settings: dict) -> dict:
    """The schedule config with a warmup longer than the run cut to fit (one warning line), so
    that changing max_steps alone works."""
    from microgpt.core.schedule import Warmup

    try:
        schedule = hydra.utils.get_class(settings.get("_target_", ""))
    except Exception:  # not a class: the module reports the setting when it instantiates it
        return settings
    if not (isinstance(schedule, type) and issubclass(schedule, Warmup)):
        return settings
    settings, warning = schedule.fit_warmup(settings)
    if warning:
        log.warning(warning)
    return settings


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


def build_trainer(cfg: DictConfig, plan: RunPlan, extra_callbacks: list[L.Callback] = ()) -> L.Trainer:
    callbacks = [*instantiate_all(cfg.get("callbacks")), *extra_callbacks]
    plugins = [hydra.utils.instantiate(p) for p in cfg.trainer.get("plugins") or []]
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=instantiate_all(cfg.get("logger")) or False,
        strategy=build_strategy(cfg.trainer.get("strategy", "auto")),
        plugins=[AtomicCheckpointIO(), *plugins],
        accumulate_grad_batches=plan.accumulate,
        # Lightning counts micro-batches here; the config speaks in optimizer steps.
        val_check_interval=cfg.eval_every * plan.accumulate,
    )
    disable_lightning_signal_handling(trainer)
    return trainer
