"""What the throughput callback costs per step: the `ThroughputMonitor` subclass of today against the
hand-written callback it replaced (loaded from git history) and against no throughput callback.

    python bench/bench_throughput.py [--reps 5] [--steps 150] [--old-rev REV]

Each repetition trains the same tiny GPT (2 layers x 32, batch 4 x 32, the real
`microgpt.lightning.training.train`: Trainer, default callbacks, CSV logger, a validation every 50
steps, logging every 10) once per variant, the variants' order rotating from one repetition to the
next. Per run: the median step period (batch end to batch end, after 5 warm-up steps) and the time
spent inside the throughput callback's hooks per step. Medians over repetitions; ratios. The hook
time is the cost itself, and the target; step periods carry it too (~3% of a step this small), but
on a shared 2-core machine they moved by up to 30% from one run to the next.

The old callback is the newest commit's whose `throughput.py` still holds the hand-written class,
with that commit's `core/flops.py`, written to a temporary directory as modules of their own.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, Row, StepClock, compose_train, load_average, machine, median, print_rows, spread

CALLBACK = "src/microgpt/lightning/callbacks/throughput.py"
FLOPS = "src/microgpt/core/flops.py"
OLD_MARK = "class Throughput(L.Callback)"  # the hand-written callback; today's subclasses ThroughputMonitor
SKIP = 5  # warm-up steps left out of the step periods

TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "data.batch_size=4",
        "eval_every=50", "eval_batches=2", "schedule.warmup_steps=5", "trainer.log_every_n_steps=10",
        "callbacks.text_samples=null", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "callbacks.throughput.peak_flops=1e11"]  # a peak: MFU is computed


def git_show(rev: str, path: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], capture_output=True, text=True,
                          check=True).stdout


def old_revision() -> str:
    revisions = subprocess.run(["git", "-C", str(REPO), "log", "--format=%H", "--", CALLBACK], capture_output=True,
                               text=True, check=True).stdout.split()
    for rev in revisions:
        if OLD_MARK in git_show(rev, CALLBACK):
            return rev
    sys.exit(f"error: no commit holds the hand-written callback ({OLD_MARK!r} in {CALLBACK}); give --old-rev")


def install_old(rev: str, directory: Path) -> str:
    """Write the old callback as `old_throughput`, importing its own `old_flops`; the `_target_` to use."""
    (directory / "old_flops.py").write_text(git_show(rev, FLOPS))
    (directory / "old_throughput.py").write_text(git_show(rev, CALLBACK).replace("microgpt.core.flops", "old_flops"))
    sys.path.insert(0, str(directory))
    return "old_throughput.Throughput"


class HookClock(StepClock):
    """StepClock, plus the seconds spent inside the throughput callback's hooks: it wraps them at
    fit start (Lightning looks hooks up on the instance), so set-up is not counted, every step is."""

    def on_fit_start(self, trainer, pl_module) -> None:
        super().on_fit_start(trainer, pl_module)
        self.inside = 0.0
        for callback in trainer.callbacks:
            if type(callback).__name__ == "Throughput":
                for name in dir(callback):
                    if name.startswith("on_") and callable(getattr(callback, name)):
                        setattr(callback, name, self._timed(getattr(callback, name)))

    def _timed(self, hook):
        @functools.wraps(hook)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                self.inside += time.perf_counter() - start

        return timed

    def step_period(self) -> float:
        ends = self.batch_end[SKIP:]
        return statistics.median(b - a for a, b in zip(ends, ends[1:]))

    def hook_seconds_per_step(self) -> float:
        return self.inside / len(self.batch_end)


def run(overrides: list[str], steps: int) -> HookClock:
    from omegaconf import open_dict

    from microgpt.lightning.training import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_train(*TINY, f"max_steps={steps}", f"checkpoint_every={steps}", *overrides,
                            f"paths.output_dir={tmp}")
        with open_dict(cfg):  # `__main__` when run as a script, `bench_throughput` under run_all
            cfg.callbacks["step_clock"] = {"_target_": f"{__name__}.HookClock"}
        train(cfg)
    return StepClock.last


def main(argv: list[str] | None = None) -> list[Row]:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--old-rev", help="the commit to take the hand-written callback from (default: found)")
    args = parser.parse_args(argv)
    # A model this small runs fastest on one thread, and two threads on a shared 2-core machine
    # stall at their barriers (0.3 s steps seen), a noise that would drown microseconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rev = args.old_rev or old_revision()
    where, load_before = machine(), load_average()
    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            "ThroughputMonitor subclass (new)": [],
            f"hand-written callback ({rev[:7]}, old)": [f"callbacks.throughput._target_={install_old(rev, Path(tmp))}"],
            "no throughput callback": ["callbacks.throughput=null"],
        }
        names = list(variants)
        for name in names:  # warm-up: imports, first-call costs
            run(variants[name], steps=2 * SKIP)
        clocks: dict[str, list[HookClock]] = {name: [] for name in names}
        for rep in range(args.reps):
            for name in names[rep % 3:] + names[:rep % 3]:
                clocks[name].append(run(variants[name], args.steps))
    torch.set_num_threads(threads)

    periods = {name: [c.step_period() for c in runs] for name, runs in clocks.items()}
    new, old, none = names
    rows = [Row("throughput", f"{name}: step period", f"{spread([p * 1e3 for p in periods[name]])} ms")
            for name in names]
    hooks = {name: median([c.hook_seconds_per_step() for c in clocks[name]]) for name in (new, old)}
    ratio = hooks[new] / hooks[old]
    rows.append(Row("throughput", "new / old time inside the callback's hooks per step",
                    f"{ratio:.3f}x ({hooks[new] * 1e6:.1f} vs {hooks[old] * 1e6:.1f} us)", "<= 1.05x", ratio <= 1.05))
    paired = ", ".join(f"{a / b:.3f}" for a, b in zip(periods[new], periods[old]))
    rows.append(Row("throughput", "new / old step period", f"{median(periods[new]) / median(periods[old]):.3f}x "
                    f"(per-rep ratios {paired})"))
    for name in (new, old):
        rows.append(Row("throughput", f"{name.split(' (')[0]} / none step period",
                        f"{median(periods[name]) / median(periods[none]):.3f}x"))
    print_rows(f"Throughput callback cost, 2 x 32 GPT, batch 4 x 32, {args.steps} steps x {args.reps} reps; "
               f"{where}; load average {load_before} before, {load_average()} after", rows)
    return rows


if __name__ == "__main__":
    main()
