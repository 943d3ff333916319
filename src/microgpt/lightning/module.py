"""The LightningModule around the GPT: loss, optimizer groups, LR schedule, gradient clipping,
validation metrics; and the plain GPT to evaluate or generate with under FSDP.

The gradient-norm hook. Once per optimizer step, after the last backward and before the update,
`GPTModule.configure_gradient_clipping` computes the total gradient norm exactly once (the global
one under FSDP, where each rank holds a shard), clips by it when `trainer.gradient_clip_val` is
set, keeps it as `grad_norm` (a detached tensor on the device: reading it syncs the host, so
nothing here does) and calls

    callback.on_gradient_norm(trainer, pl_module, optimizer, norm)

on every callback that defines that method (NanGuard does). Lightning calls
`configure_gradient_clipping` on every step of automatic optimization, clipping or not
(`gradient_clip_val=None` included), so the hook never misses a step.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from typing import TYPE_CHECKING

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException

from microgpt.core.errors import CheckpointError, ConfigError, MicroGPTError
from microgpt.core.lora import add_lora, has_lora
from microgpt.core.model import GPT, GPTConfig
from microgpt.core.moe import moe_stats
from microgpt.core.tokenizer import Tokenizer
from microgpt.core.tokenizers import tokenizer_from_state
from microgpt.lightning.loggers import shorten_long_values

if TYPE_CHECKING:
    from torch.distributed.fsdp import FullyShardedDataParallel

# What wrapping adds to parameter names: FSDP units, activation checkpointing, torch.compile.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")

# What checkpoints written before optimizers and schedules were `_target_` configs were trained
# with. Not defaults for new runs: those are conf/optim and conf/schedule, whose values fill the
# rest of every composed config.
LEGACY_OPTIM = {"_target_": "torch.optim.AdamW", "_partial_": True}
LEGACY_SCHEDULE = {"_target_": "microgpt.core.schedule.WarmupCosine"}
NEXT_TOKEN = {"_target_": "microgpt.lightning.objectives.base.NextToken"}  # pretraining: the default objective


class GPTModule(L.LightningModule):
    """Next-token cross-entropy on `block_size + 1` windows.

    Hyper-parameters are plain dicts (model config, tokenizer state, optimizer, schedule), so every
    checkpoint alone is enough to rebuild, resume, evaluate or generate, and loads with
    `torch.load(weights_only=True)`. The optimizer and the schedule are `_target_` configs
    (conf/optim, conf/schedule): the optimizer a partial class this module calls with its parameter
    groups, the schedule a callable from step to learning rate, given `optim.lr` as its peak.
    """

    def __init__(
        self,
        model: dict,
        tokenizer: dict,
        optim: dict,
        schedule: dict,
        compile: bool = False,
        objective: dict | None = None,
        lora: dict | None = None,
    ) -> None:
        super().__init__()
        optim, schedule = with_target(optim, LEGACY_OPTIM), with_target(schedule, LEGACY_SCHEDULE)
        objective = with_target(objective or {}, NEXT_TOKEN)
        # Not handed to the loggers as they are: a Hub tokenizer's state is megabytes of JSON, which
        # CSVLogger would rewrite as YAML at every save; on_fit_start logs a shortened copy instead.
        self.save_hyperparameters(dict(model=model, tokenizer=tokenizer, optim=optim, schedule=schedule, compile=compile,
                                       objective=objective, lora=lora), logger=False)
        self.model = GPT(GPTConfig.from_dict(model))
        self.schedule = instantiate_setting("schedule", schedule, peak_lr=optim.get("lr"))
        # Built (and its settings checked) here, before any trainer starts; called with the
        # parameter groups in configure_optimizers.
        self._optimizer_factory = optimizer_factory(optim)
        self.objective = instantiate_setting("objective", objective)
        self._tokenizer: Tokenizer | None = None
        self._train_forward = self.model  # replaced by a compiled view in setup(); never registered
        # Decided here, on the plain GPT: once FSDP has wrapped it, every parameter is a 1-D shard,
        # so shapes no longer tell matrices (decayed) from biases and norm gains (not decayed).
        self._decays = {name: p.dim() >= 2 for name, p in self.model.named_parameters()}
        self.grad_norm: torch.Tensor | None = None  # this step's total gradient norm, see the module doc

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = tokenizer_from_state(self.hparams.tokenizer)
        return self._tokenizer

    def on_fit_start(self) -> None:
        summary = shorten_long_values(dict(self.hparams))
        for logger in self.loggers:
            logger.log_hyperparams(summary)
        self.objective.on_fit_start(self)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.compile:
            # Compile a view of the GPT, not the module itself: state-dict keys stay free of
            # `_orig_mod.` and evaluation / generation run the plain eager model.
            self.__dict__["_train_forward"] = torch.compile(self.model)

    def configure_model(self) -> None:
        # After init_from's weights went into the plain GPT, before a resume restores the adapters.
        if self.hparams.get("lora") and not has_lora(self.model.state_dict()):
            add_lora(self.model, self.hparams.lora)
            self._decays = {name: p.dim() >= 2 for name, p in self.model.named_parameters()}

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)[0]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self.objective.training_loss(self, batch)

    def on_before_optimizer_step(self, optimizer) -> None:
        # Once per optimizer step, after the window's last backward: its last micro-batch's routing.
        if self.model.config.n_experts:
            self._log_moe_stats()

    def _log_moe_stats(self) -> None:
        stats = moe_stats(self.model)  # this rank's, like the other per-step metrics without sync_dist
        if not stats:
            return
        for name, key in (("train/moe_aux_loss", "aux_loss"), ("train/moe_z_loss", "z_loss"),
                          ("train/expert_max_load", "max_load")):
            self.log(name, stats[key], on_step=True, on_epoch=False, sync_dist=False)
        trainer = self.trainer
        every = trainer.log_every_n_steps
        if every and (trainer.global_step + 1) % every == 0:  # Lightning's own logging steps
            log_expert_load(trainer, stats["load"].tolist())

    def validation_step(self, batch, batch_idx: int) -> None:
        self.objective.validation_update(self, batch)

    def on_validation_epoch_end(self) -> None:
        for name, value in self.objective.validation_metrics().items():  # synchronised across ranks by torchmetrics
            self.log(name, value, prog_bar=name == "val/loss", sync_dist=False, rank_zero_only=False)

    def configure_optimizers(self):
        optim, extra = self.hparams.optim, {}
        groups = self._parameter_groups(optim["weight_decay"],
                                        getattr(self._optimizer_factory.func, "splits_hidden_matrices", False))
        if "fused" in optim and optim["fused"] is None:  # null: fused wherever the parameters allow it
            extra["fused"] = fused_kernels_apply([p for g in groups for p in g["params"]])
        try:
            optimizer = self._optimizer_factory(groups, **extra)
        except (TypeError, ValueError) as e:  # e.g. torch's "Invalid learning rate: -1.0"
            raise ConfigError(f"optim._target_={optim['_target_']}: {e}") from e
        peak = self.schedule.peak_lr
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.schedule(step) / peak)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _parameter_groups(self, weight_decay: float, split_hidden: bool) -> list[dict]:
        """Weight decay on matrices only (linear weights, embeddings), never on biases or norms; for
        Muon-style optimizers the matrices inside the blocks ("hidden") apart from the embeddings and
        the head, every group tagged with its `kind`."""
        hidden, decay, no_decay = [], [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if not self._decayed(name):
                no_decay.append(p)
            elif split_hidden and unwrapped_name(name) not in OUTER_MATRICES:
                hidden.append(p)
            else:
                decay.append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if split_hidden:
            groups = [{"params": hidden, "weight_decay": weight_decay, "kind": "hidden"},
                      *({**g, "kind": "adam"} for g in groups)]
        return groups

    def _decayed(self, name: str) -> bool:
        plain = unwrapped_name(name)
        if plain not in self._decays:  # e.g. FSDP's flat parameters (use_orig_params=false)
            raise ConfigError(
                f"parameter {name} is not one of the GPT's own (an FSDP flat parameter?); "
                f"with trainer=fsdp keep trainer.strategy.use_orig_params=true"
            )
        return self._decays[plain]

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # We clip by norm ourselves: Lightning's mixed-precision plugin refuses to for fused
        # optimizers (bf16 too, which has no scaler), its FSDP plugin refuses norm clipping, and
        # either would compute a second norm. Two cases stay Lightning's: value clipping, and fp16
        # gradients a fused optimizer unscales only inside its step (Lightning refuses to clip
        # those, rightly); there the norm is measured first, before any clamping.
        scale = self._pending_grad_scale(optimizer)
        if gradient_clip_algorithm == "value" or scale is not None:
            norm = self._gradient_norm(max_norm=None)
            if scale is not None:
                norm = norm / scale
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        else:
            norm = self._gradient_norm(max_norm=gradient_clip_val)
        self.grad_norm = norm.detach()
        for callback in self.trainer.callbacks:
            hook = getattr(callback, "on_gradient_norm", None)
            if callable(hook):
                hook(self.trainer, self, optimizer, self.grad_norm)

    def _gradient_norm(self, max_norm: float | None) -> torch.Tensor:
        """The total gradient norm over every rank's gradients; clips to `max_norm` when set."""
        root = fsdp_root(self.trainer)
        if root is not None:  # each rank's gradients are a shard: FSDP combines the shards' norms
            # FSDP has no norm-only call; with no limit it scales by 1 (on the device, no sync).
            return root.clip_grad_norm_(max_norm or math.inf)
        params = [p for p in self.parameters() if p.grad is not None]
        if max_norm:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        return torch.nn.utils.get_total_norm([p.grad for p in params])

    def _pending_grad_scale(self, optimizer) -> torch.Tensor | None:
        """The fp16 loss scale the gradients still carry (a fused optimizer unscales them only
        inside its step), as a device tensor; None when they carry none."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's torch optimizer
        if scaler is None or not getattr(optimizer, "_step_supports_amp_scaling", False):
            return None
        return scaler._get_scale_async()  # get_scale() would sync the host

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng_states"] = rng

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("hyper_parameters", {})
        for key in ("model", "tokenizer"):
            if key in saved and saved[key] != self.hparams[key]:
                raise CheckpointError(
                    f"the checkpoint was trained with a different {key}: {describe_difference(saved[key], self.hparams[key])}; "
                    f"resume with the {key} settings it was trained with"
                )
        rng = checkpoint.get("rng_states")
        if rng:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


def log_expert_load(trainer: L.Trainer, load: list[float]) -> None:
    """The fraction of routed assignments each expert got (mean over MoE layers), at this step:
    a W&B histogram with one bin per expert; a scalar per expert for the other loggers. Straight
    to the loggers (self.log takes scalars only), at the step Lightning gives this step's metrics."""
    from lightning.pytorch.loggers import WandbLogger

    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            histogram = wandb.Histogram(np_histogram=(load, list(range(len(load) + 1))))
            logger.log_metrics({"train/expert_load": histogram}, step=step)
        else:
            logger.log_metrics({f"train/expert_load_{e}": v for e, v in enumerate(load)}, step=step)


def instantiate_setting(group: str, settings: dict, **kwargs):
    """`hydra.utils.instantiate` of a `group=` config, with plain lists and dicts for arguments
    (they end up in optimizer state, which checkpoints load weights-only). A mistake in it is one
    ConfigError naming the group; the class's own ConfigError passes through as it is."""
    try:
        return hydra.utils.instantiate(settings, _convert_="all", **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, MicroGPTError):
            raise e.__cause__ from None
        raise ConfigError(f"{group}._target_={settings.get('_target_')}: {e.__cause__ or e}") from e


# The matrices outside the blocks: Muon-style optimizers leave them to AdamW.
OUTER_MATRICES = frozenset({"transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"})


def optimizer_factory(optim: dict) -> functools.partial:
    """The `optim=` config as a partial optimizer class, still waiting for its parameter groups."""
    target = optim.get("_target_")
    if optim.get("_partial_") is not True:
        raise ConfigError(f"optim._target_={target} needs `_partial_: true`: the module calls it with the parameter groups")
    if "weight_decay" not in optim:  # the module applies it to the matrices' group
        raise ConfigError(f"optim.weight_decay is not set for {target}; set it (0.0: no weight decay)")
    factory = instantiate_setting("optim", optim)
    try:  # unknown settings (optim.betas for SGD) fail now, not once training has started
        inspect.signature(factory.func).bind(None, *factory.args, **factory.keywords)
    except TypeError as e:
        raise ConfigError(f"optim._target_={target}: {e}; check the optim.* settings") from e
    return factory


def with_target(settings: dict, legacy: dict) -> dict:
    """`settings` as given, or, from a checkpoint written before it named a `_target_`, with the
    target it was trained with."""
    return settings if "_target_" in settings else {**legacy, **settings}


def fused_kernels_apply(params: list[torch.Tensor]) -> bool:
    """Whether fused optimizer kernels can take these parameters: CPU and CUDA floating point."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def unwrapped_name(name: str) -> str:
    """A parameter's name in the plain GPT, whatever wrappers (FSDP, checkpointing, compile) hold it."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def fsdp_root(trainer: L.Trainer) -> FullyShardedDataParallel | None:
    """The trainer's root FSDP module when the model is sharded, else None."""
    if not torch.distributed.is_available():
        return None
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = trainer.model
    return model if isinstance(model, FullyShardedDataParallel) else None


@contextmanager
def unsharded(trainer: L.Trainer, model: GPT) -> Iterator[GPT]:
    """`model` in a form any rank can run on its own, any number of times (evaluation, generation).

    Without FSDP that is `model` itself. Under FSDP every rank must enter together: gathering the
    full weights is a collective. The FSDP units themselves would not do: run outside the root's
    forward they fail (`'weight' must be 2-D`), and even with the weights gathered each unit
    gathers again in its own forward, a collective every rank would have to join. So inside, the
    model is a plain GPT built around the gathered tensors (no copy), valid until the block ends.
    """
    root = fsdp_root(trainer)
    if root is None:
        yield model
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(root, writeback=False, recurse=True):
        yield plain_view(model)


def plain_view(model: GPT) -> GPT:
    """A GPT without wrappers whose parameters and buffers are `model`'s own tensor objects."""
    with torch.device("meta"):  # no memory, no initialisation: every tensor is replaced below
        plain = GPT(model.config)
    named = chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
    for name, tensor in named:  # remove_duplicate=False: the tied LM head and the shared RoPE too
        owner, _, leaf = unwrapped_name(name).rpartition(".")
        setattr(plain.get_submodule(owner), leaf, tensor)
    left = [name for name, t in chain(plain.named_parameters(), plain.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"the wrapped GPT has no tensors for {left[:3]}")
    return plain.train(model.training)


def describe_difference(saved: dict, current: dict) -> str:
    if not (isinstance(saved, dict) and isinstance(current, dict)):
        return "settings differ"
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    parts = []
    for k in keys[:4]:
        a, b = saved.get(k), current.get(k)
        if isinstance(a, str) and len(a) > 20 or isinstance(b, str) and len(b) > 20:
            parts.append(f"{k} differs")
        else:
            parts.append(f"{k}={a!r} in the checkpoint vs {b!r} now")
    return ", ".join(parts)
