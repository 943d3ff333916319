"""What logging costs: a small GPT (2 layers x 64, block 64: logging is a large share of a step, so
this is the worst case) trained for a few steps with logger=csv, logger=many (CSV +
TensorBoard + W&B offline) and no loggers, runs interleaved, several repetitions; medians.

    python bench/bench_observability.py [--steps 60] [--repeats 3]

Reports the wall time of the whole run (start-up included: W&B starts a service process) and the
training rate the throughput callback logs (start-up, validation and samples excluded).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from hydra import compose, initialize_config_dir  # noqa: E402

from microgpt.cli.overrides import CONFIG_DIR  # noqa: E402
from microgpt.lightning.training import train  # noqa: E402

VARIANTS = {
    "no logger": ["~logger", "callbacks.lr_monitor=null"],
    "logger=csv": ["logger=csv"],
    "logger=many (csv+tb+wandb offline)": ["logger=many"],
}


def run_once(overrides: list[str], steps: int) -> tuple[float, float | None]:
    with tempfile.TemporaryDirectory() as tmp:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=[
                *overrides, "model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64",
                "data.batch_size=8", f"max_steps={steps}", f"eval_every={steps}", "eval_batches=2",
                f"checkpoint_every={steps}", "schedule.warmup_steps=5", "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
                "callbacks.text_samples=null", "trainer.enable_model_summary=false",
                "callbacks.throughput.peak_flops=null", f"paths.output_dir={tmp}",
            ])
        start = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - start
        rates = []
        metrics = Path(tmp) / "metrics.csv"
        if metrics.is_file():
            with metrics.open() as f:
                rates = [float(r["train/tokens_per_sec"]) for r in csv.DictReader(f) if r.get("train/tokens_per_sec")]
        return wall, statistics.median(rates) if rates else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float | None]]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, overrides in VARIANTS.items():  # interleaved: load changes hit every variant alike
            results[name].append(run_once(overrides, args.steps))
    base = statistics.median(w for w, _ in results["no logger"])
    print(f"\n2 x 64 GPT, batch 8 x 64 tokens, {args.steps} steps, {args.repeats} repetitions, medians")
    print(f"{'variant':<38} {'wall s':>8} {'vs none':>8} {'tokens/s':>10}")
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        rates = [r for _, r in runs if r is not None]
        rate = f"{statistics.median(rates):,.0f}" if rates else "-"
        print(f"{name:<38} {wall:>8.2f} {wall / base:>7.2f}x {rate:>10}")


if __name__ == "__main__":
    main()
