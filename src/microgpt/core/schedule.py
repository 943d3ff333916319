"""Learning-rate schedules: callables from the optimizer step to the learning rate.

The `schedule=` config group names one of these by `_target_` (conf/schedule/*.yaml); the
module passes the peak, `optim.lr`, as `peak_lr`. Every schedule warms up linearly from `init_lr`
to the peak over `warmup_steps` and ends at `end_lr`; they differ in what happens in between.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from microgpt.core.errors import ConfigError, require_positive_int

# The share of a schedule a warmup longer than the schedule itself is cut to: `max_steps=20` alone works with
# the default 100-step warmup (it warms up for 2), instead of refusing a run whose length was all
# the user changed.
WARMUP_CAP = 0.1


@dataclass(frozen=True, kw_only=True)
class Warmup:
    """What every schedule shares: the peak, the linear warmup to it, and the floor it ends at."""

    peak_lr: float
    warmup_steps: int
    init_lr: float = 0.0
    end_lr: float = 0.0

    length_setting: ClassVar[str] = ""  # the field holding the schedule's whole length

    @classmethod
    def fit_warmup(cls, settings: dict) -> tuple[dict, str | None]:
        """`settings` (this schedule's config) with a warmup as long as the whole schedule or longer
        cut to WARMUP_CAP of it, and the warning that says so; else unchanged."""
        warmup, total = settings.get("warmup_steps"), settings.get(cls.length_setting)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (warmup, total)):
            return settings, None  # __post_init__ reports bad values
        if warmup + cls.later_steps(settings, total) <= total or warmup < total:
            return settings, None  # it fits, or it is a choice made for this length: __post_init__ says why not
        capped = int(WARMUP_CAP * total)
        return {**settings, "warmup_steps": capped}, (
            f"schedule.warmup_steps={warmup} does not fit in schedule.{cls.length_setting}={total}; warming up for "
            f"{capped} steps ({WARMUP_CAP:.0%}) instead (set schedule.warmup_steps to choose)")

    @classmethod
    def later_steps(cls, settings: dict, total: int) -> int:
        """Steps the schedule needs after the warmup."""
        return 0

    def __post_init__(self) -> None:
        for name, setting in (("peak_lr", "optim.lr"), ("init_lr", "schedule.init_lr"), ("end_lr", "schedule.end_lr")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{setting} must be a non-negative number, got {value!r}")
        if self.peak_lr == 0:
            raise ConfigError("the peak learning rate (optim.lr) must be positive, got 0")
        if self.warmup_steps != 0:  # 0 is allowed: start at the peak
            require_positive_int("schedule.warmup_steps", self.warmup_steps)

    def warming_up(self, step: int) -> bool:
        return step < self.warmup_steps

    def warmup_lr(self, step: int) -> float:
        return self.init_lr + (self.peak_lr - self.init_lr) * step / self.warmup_steps

    def check_fits(self, total_name: str, total: int, later_phases: dict[str, int] | None = None) -> None:
        """The schedule's length, `schedule.<total_name>`, holds the warmup and the phases after it."""
        require_positive_int(f"schedule.{total_name}", total)
        used = {"schedule.warmup_steps": self.warmup_steps, **(later_phases or {})}
        if sum(used.values()) > total:
            names = " + ".join(f"{name} ({steps})" for name, steps in used.items())
            raise ConfigError(f"{names} exceeds schedule.{total_name} ({total}); shorten them or lengthen the schedule")


@dataclass(frozen=True, kw_only=True)
class WarmupCosine(Warmup):
    """Linear warmup, then cosine decay to `end_lr` (optax's warmup_cosine_decay_schedule)."""

    decay_steps: int  # total length, warmup included, as in optax
    length_setting: ClassVar[str] = "decay_steps"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_fits("decay_steps", self.decay_steps)

    def __call__(self, step: int) -> float:
        if self.warming_up(step):
            return self.warmup_lr(step)
        if step >= self.decay_steps:
            return self.end_lr
        progress = (step - self.warmup_steps) / max(1, self.decay_steps - self.warmup_steps)
        return self.end_lr + 0.5 * (self.peak_lr - self.end_lr) * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True, kw_only=True)
class WarmupStableDecay(Warmup):
    """Warmup-stable-decay (MiniCPM; Hägele et al. 2024): linear warmup, the peak held, then a
    linear cooldown to `end_lr` over the last `cooldown_fraction` of the steps. Until the cooldown
    the rate does not depend on the run's length: a run resumed with a larger max_steps has taken
    the steps it would have taken had it been that long from the start."""

    total_steps: int  # the whole schedule, warmup and cooldown included
    cooldown_fraction: float = 0.2
    length_setting: ClassVar[str] = "total_steps"

    @classmethod
    def later_steps(cls, settings: dict, total: int) -> int:
        fraction = settings.get("cooldown_fraction", 0.2)
        return round(fraction * total) if isinstance(fraction, (int, float)) else 0

    def __post_init__(self) -> None:
        super().__post_init__()
        fraction = self.cooldown_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ConfigError(f"schedule.cooldown_fraction must be a number in [0, 1], got {fraction!r}")
        self.check_fits("total_steps", self.total_steps, {"schedule.cooldown_fraction x total_steps": self.cooldown_steps})

    @property
    def cooldown_steps(self) -> int:
        return round(self.cooldown_fraction * self.total_steps)

    def __call__(self, step: int) -> float:
        if self.warming_up(step):
            return self.warmup_lr(step)
        cooldown_start = self.total_steps - self.cooldown_steps
        if step < cooldown_start:
            return self.peak_lr
        if step >= self.total_steps:
            return self.end_lr
        progress = (step - cooldown_start) / self.cooldown_steps
        return self.peak_lr + (self.end_lr - self.peak_lr) * progress
