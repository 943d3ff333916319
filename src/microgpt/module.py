"""The LightningModule around the GPT: loss, optimizer groups, LR schedule, validation metrics."""

from __future__ import annotations

import lightning as L
import torch
from torchmetrics import MeanMetric

from microgpt.errors import CheckpointError
from microgpt.model import GPT, GPTConfig
from microgpt.schedule import WarmupCosine
from microgpt.tokenizer import Tokenizer, tokenizer_from_state


class GPTModule(L.LightningModule):
    """Next-token cross-entropy on `block_size + 1` windows.

    Hyper-parameters are plain dicts (model config, tokenizer state, optimizer, schedule), so every
    checkpoint alone is enough to rebuild, resume, evaluate or generate, and loads with
    `torch.load(weights_only=True)`.
    """

    def __init__(
        self,
        model: dict,
        tokenizer: dict,
        optim: dict,
        schedule: dict,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = GPT(GPTConfig.from_dict(model))
        self.schedule = WarmupCosine(peak_lr=optim["lr"], **schedule)
        self.val_loss = MeanMetric()
        self._tokenizer: Tokenizer | None = None
        self._train_forward = self.model  # replaced by a compiled view in setup(); never registered

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = tokenizer_from_state(self.hparams.tokenizer)
        return self._tokenizer

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.compile:
            # Compile a view of the GPT, not the module itself: state-dict keys stay free of
            # `_orig_mod.` and evaluation / generation run the plain eager model.
            self.__dict__["_train_forward"] = torch.compile(self.model)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(idx)[0]

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        _, loss = self._train_forward(batch[:, :-1], batch[:, 1:])
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        targets = batch[:, 1:]
        _, loss = self.model(batch[:, :-1], targets)
        self.val_loss.update(loss, weight=targets.numel())

    def on_validation_epoch_end(self) -> None:
        value = self.val_loss.compute()  # synchronised across ranks by torchmetrics
        self.val_loss.reset()
        self.log("val/loss", value, prog_bar=True, sync_dist=False, rank_zero_only=False)
        self.log("val/ppl", torch.exp(value), sync_dist=False)

    def configure_optimizers(self):
        optim = self.hparams.optim
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                # Weight decay on matrices only (linear weights, embeddings); never on biases or norms.
                (decay if p.dim() >= 2 else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": optim.get("weight_decay", 0.0)},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        fused = optim.get("fused")
        if fused is None:  # auto: fused kernels exist for CPU and CUDA floating-point params
            fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in decay + no_decay)
        optimizer = torch.optim.AdamW(
            groups, lr=optim["lr"], betas=tuple(optim.get("betas", (0.9, 0.95))),
            eps=optim.get("eps", 1e-8), fused=bool(fused),
        )
        peak = self.schedule.peak_lr
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.schedule(step) / peak)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's mixed-precision plugin refuses to clip for fused optimizers, because under fp16
        # they unscale gradients themselves. bf16 and fp32 have no gradient scaler: clip directly.
        if self.trainer.precision in ("16-mixed", "16", "16-true") or gradient_clip_algorithm not in (None, "norm"):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_val:
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)

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
