"""Learning-rate schedule: linear warmup, then cosine decay to a floor (optax's warmup_cosine_decay_schedule)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from microgpt.core.errors import ConfigError, require_positive_int


@dataclass(frozen=True)
class WarmupCosine:
    peak_lr: float
    warmup_steps: int
    decay_steps: int  # total length, warmup included, as in optax
    init_lr: float = 0.0
    end_lr: float = 0.0

    def __post_init__(self) -> None:
        for name, setting in (("peak_lr", "optim.lr"), ("init_lr", "schedule.init_lr"), ("end_lr", "schedule.end_lr")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{setting} must be a non-negative number, got {value!r}")
        if self.peak_lr == 0:
            raise ConfigError("the peak learning rate (optim.lr) must be positive, got 0")
        require_positive_int("schedule.decay_steps", self.decay_steps)
        if self.warmup_steps != 0:
            require_positive_int("schedule.warmup_steps", self.warmup_steps)
        if self.warmup_steps > self.decay_steps:
            raise ConfigError(f"schedule.warmup_steps ({self.warmup_steps}) exceeds schedule.decay_steps ({self.decay_steps})")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.init_lr + (self.peak_lr - self.init_lr) * step / self.warmup_steps
        if step >= self.decay_steps:
            return self.end_lr
        progress = (step - self.warmup_steps) / max(1, self.decay_steps - self.warmup_steps)
        return self.end_lr + 0.5 * (self.peak_lr - self.end_lr) * (1.0 + math.cos(math.pi * progress))
