"""Shared helpers for the benchmarks: interleaved timing, medians, one table format, a step clock.

Every bench script exposes `main(argv=None) -> list[Row]`: it prints its own detailed table and
returns the summary rows that `bench/run_all.py` collects into one table.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO / "tests"))  # conftest.shared_file: the shared data files, or a skip

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Row:
    """One line of the combined table: what was measured, the result, the target and whether it was met."""

    benchmark: str
    case: str
    result: str
    target: str = ""
    met: bool | None = None  # None: informational, no target

    def cells(self) -> list[str]:
        verdict = "" if self.met is None else ("met" if self.met else "NOT met")
        return [self.benchmark, self.case, self.result, self.target, verdict]


HEADER = ["benchmark", "case", "result (medians)", "target", ""]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def print_rows(title: str, rows: list[Row]) -> None:
    print(f"\n### {title}\n\n{markdown_table(rows)}\n", flush=True)


def interleaved(variants: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each variant, run a, b, c, a, b, c, ... so a load change on a shared
    machine hits every variant alike; `warmup` untimed rounds first."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def median(values) -> float:
    return statistics.median(values)


def spread(values) -> str:
    """`median (min-max)` of a few repetitions, for the detailed tables."""
    return f"{median(values):.4g} ({min(values):.4g}-{max(values):.4g})"


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    import torch

    return (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def today() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def compose_train(*overrides: str):
    """The real train config, composed as `python -m microgpt.train` composes it."""
    from hydra import compose, initialize_config_dir

    from microgpt.cli.overrides import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def with_step_clock(cfg):
    """Add a `StepClock` to a composed config's callbacks; returns the clock once training built it."""
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.callbacks["step_clock"] = {"_target_": "common.StepClock"}
    return StepClock


def _lightning_callback():
    import lightning as L

    return L.Callback


class StepClock(_lightning_callback()):
    """Timestamps of a real Trainer run: the start and end of every training batch, and every
    validation's end with its loss. The newest instance is `StepClock.last`."""

    last: StepClock | None = None

    def __init__(self) -> None:
        self.batch_start: list[float] = []
        self.batch_end: list[float] = []
        self.validations: list[tuple[int, float, float]] = []  # (step, seconds since fit start, val/loss)
        self.fit_start = 0.0
        StepClock.last = self

    def on_fit_start(self, trainer, pl_module) -> None:
        self.fit_start = time.perf_counter()
        # What the run trained on, so a hand-written loop can train the very same thing.
        self.model_settings = dict(pl_module.hparams.model)
        self.datamodule = trainer.datamodule

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_start.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batch_end.append(time.perf_counter())

    def on_validation_end(self, trainer, pl_module) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if loss is not None and not trainer.sanity_checking:
            self.validations.append((trainer.global_step, time.perf_counter() - self.fit_start, float(loss)))

    def steady_seconds_per_step(self, skip: int) -> float:
        """Mean period of the steps after the first `skip` (start-up, first-call costs), measured
        from one batch end to the next: everything the loop does per step is inside."""
        ends = self.batch_end[skip:]
        return (ends[-1] - ends[0]) / (len(ends) - 1)

    def data_wait_fraction(self, skip: int) -> float:
        """Share of the steady-state step period spent between one batch's end and the next one's
        start: fetching the next batch plus the loop's bookkeeping (an upper bound on data wait)."""
        starts, ends = self.batch_start[skip + 1:], self.batch_end[skip:-1]
        gaps = sum(s - e for s, e in zip(starts, ends))
        return gaps / (self.batch_end[-1] - self.batch_end[skip])
