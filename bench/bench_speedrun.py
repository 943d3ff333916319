"""CPU speedrun: `experiment=speedrun_shakespeare` against nanoGPT's own train.py on its
shakespeare-char CPU command (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 iterations,
val loss 1.8857), whole process to whole process, start-up included.

    python bench/bench_speedrun.py                 # nanoGPT and the speedrun alternately (2 each), then the levers
    python bench/bench_speedrun.py --reps 3 --no-levers
    python bench/bench_speedrun.py --plot docs/    # also the curve: val loss vs wall seconds, both runs

Both run as subprocesses, alternately: nanoGPT from a scratch copy of `../shared/anchors/nanoGPT`
(unchanged, with its README command and `--eval_iters=20`), ours as `python -m microgpt.train
experiment=speedrun_shakespeare data.paths=[tinyshakespeare.txt]`. Wall time is the parent's
clock around each process; each evaluation's time is when its line reached the parent.

The validation split is nanoGPT's: its `val.bin` (the last 10% of the characters) is decoded with
its `meta.pkl` and scored with the speedrun's final weights over every character (each one predicted
once, from up to 63 characters before it): the same characters as nanoGPT's 20-batch estimate, and
the whole split rather than 20 random batches. The in-run figure (our own split, off by at most one
character at its start, also every window) is reported beside it.

Levers: one row each, a single change to the speedrun (removed where the speedrun has it, added
where it has not), at the same steps, one run each: its wall time, the time of its first evaluation
at or under the target, and its final val loss. Rows that did not help stay in the table.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import Row, load_average, median, print_rows

from conftest import SHARED_DATA

ANCHOR = SHARED_DATA.parent / "anchors" / "nanoGPT"
CORPUS = SHARED_DATA / "tinyshakespeare.txt"
TARGET_LOSS = 1.8857  # nanoGPT's val loss at iteration 2000 with this command (deterministic, seed 1337)
TARGET_RATIO = 0.35   # the speedrun's whole-process wall time, as a fraction of nanoGPT's
NANOGPT_COMMAND = ["train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
                   "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4",
                   "--n_head=4", "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
SPEEDRUN = ["experiment=speedrun_shakespeare", f"data.paths=[{CORPUS}]"]


def levers(steps: int) -> list[tuple[str, list[str]]]:
    """(row name, overrides on top of the speedrun of `steps` steps): each lever alone."""
    return [
        ("AdamW (lr 3e-3) instead of Muon", ["optim=adamw", "~optim.adam_lr", "optim.lr=3e-3",
                                             "optim.betas=[0.9,0.95]", "optim.weight_decay=0.0"]),
        ("ReLU^2 MLP instead of GELU", ["model.mlp=relu2"]),
        ("no QK-norm", ["model.qk_norm=none"]),
        ("untied head", ["model.tie_embeddings=false"]),
        ("LayerNorm instead of RMSNorm", ["model.norm=layernorm"]),
        ("warmup-cosine instead of warmup-stable-decay", ["schedule=warmup_cosine", "~schedule.cooldown_fraction"]),
        ("batch 12 (nanoGPT's), same steps", ["data.batch_size=12"]),
        ("batch 64, half the steps", ["data.batch_size=64", f"max_steps={steps // 2}"]),
        ("+ bf16 autocast", ["trainer.precision=bf16-mixed"]),
        ("+ torch.compile", ["compile=true"]),
        ("+ a DataLoader worker", ["data.num_workers=1"]),
    ]


NANOGPT_EVAL = re.compile(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)")
MICROGPT_EVAL = re.compile(r"step (\d+) validation \| val/loss ([\d.]+)")


@dataclass
class Run:
    wall: float
    curve: list[tuple[float, int, float]] = field(default_factory=list)  # (seconds, step, val loss)
    run_dir: Path | None = None
    exact: float = math.nan  # the final weights' val loss on nanoGPT's split, every character

    @property
    def final_loss(self) -> float:
        return self.curve[-1][2] if self.curve else math.nan

    def seconds_to(self, target: float) -> float | None:
        return next((seconds for seconds, _, loss in self.curve if loss <= target), None)


THREADS: dict[str, str] = {}  # --threads: OMP_NUM_THREADS for both programs


def timed(command: list[str], cwd: Path, pattern: re.Pattern) -> Run:
    """Run `command` to its end; the evaluations its output reports, stamped as their lines arrive."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **THREADS}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run, lines = Run(wall=0.0), []
    for line in process.stdout:
        lines.append(line)
        if m := pattern.search(line):
            run.curve.append((time.perf_counter() - start, int(m.group(1)), float(m.group(2))))
    process.wait()
    run.wall = time.perf_counter() - start
    if process.returncode:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {process.returncode}:\n{''.join(lines[-20:])}")
    return run


def nanogpt_copy(scratch: Path) -> Path:
    """A scratch copy of the anchor with the corpus prepared (its prepare.py skips the download)."""
    directory = scratch / "nanoGPT"
    shutil.copytree(ANCHOR, directory)
    shutil.copy(CORPUS, directory / "data" / "shakespeare_char" / "input.txt")
    subprocess.run([sys.executable, "data/shakespeare_char/prepare.py"], cwd=directory, check=True, capture_output=True)
    return directory


def run_nanogpt(directory: Path) -> Run:
    shutil.rmtree(directory / "out-shakespeare-char", ignore_errors=True)
    return timed([sys.executable, *NANOGPT_COMMAND], directory, NANOGPT_EVAL)


def run_microgpt(overrides: list[str], run_dir: Path) -> Run:
    shutil.rmtree(run_dir, ignore_errors=True)
    run = timed([sys.executable, "-m", "microgpt.train", *SPEEDRUN, f"paths.output_dir={run_dir}", *overrides],
                Path.cwd(), MICROGPT_EVAL)
    run.run_dir = run_dir
    return run


def nanogpt_validation_text(directory: Path) -> str:
    import numpy as np

    meta = pickle.loads((directory / "data" / "shakespeare_char" / "meta.pkl").read_bytes())
    ids = np.fromfile(directory / "data" / "shakespeare_char" / "val.bin", dtype=np.uint16)
    return "".join(meta["itos"][int(i)] for i in ids)


def loss_on_text(checkpoint: Path, text: str, context: int = 64, batch: int = 64) -> float:
    """Mean cross-entropy over every character of `text` but the first, each predicted once from
    up to `context - 1` characters before it (windows of `context + 1` tokens, stride `context`),
    scored by the project's own `held_out_loss`."""
    import torch

    from microgpt.evals.perplexity import held_out_loss
    from microgpt.io.loading import load_model

    lm = load_model(checkpoint)
    ids = torch.tensor(lm.tokenizer.encode(text), dtype=torch.long)
    full = (len(ids) - 1) // context
    windows = ids[: full * context + 1].unfold(0, context + 1, context)  # (full, context + 1), overlapping by one
    batches = list(windows.split(batch))
    if len(ids) - 1 > full * context:  # the short last window
        batches.append(ids[full * context :][None])
    return held_out_loss(lm.model, batches).loss


def write_curve(run: Run, directory: Path) -> None:
    """A run's evaluations as a metrics.csv that `microgpt.plot --x seconds` reads."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "metrics.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "val/loss", "time/process_s"])
        for seconds, step, loss in run.curve:
            writer.writerow([step, loss, seconds])


def speedrun_steps() -> int:
    from common import compose_train

    return int(compose_train(*SPEEDRUN).max_steps)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2, help="alternating runs of nanoGPT and the speedrun")
    parser.add_argument("--no-levers", dest="levers", action="store_false", help="skip the one-lever rows")
    parser.add_argument("--plot", type=Path, help="write the curve (val loss vs wall seconds) PNG here")
    parser.add_argument("--threads", type=int, help="torch threads of both programs (default: torch's choice); "
                        "1 keeps the comparison fair on a machine another job shares")
    args = parser.parse_args(argv)
    if args.threads:
        THREADS["OMP_NUM_THREADS"] = str(args.threads)
    if not ANCHOR.is_dir() or not CORPUS.is_file():
        raise SystemExit(f"needs {ANCHOR} and {CORPUS} (../shared beside the project)")
    steps = speedrun_steps()
    load_before = load_average()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        directory = nanogpt_copy(scratch)
        validation = nanogpt_validation_text(directory)
        nanogpt, ours = [], []
        for rep in range(args.reps):
            nanogpt.append(run_nanogpt(directory))
            print(f"nanoGPT {rep}: {nanogpt[-1].wall:.1f} s, val loss {nanogpt[-1].final_loss}", flush=True)
            ours.append(run_microgpt([], scratch / f"speedrun{rep}"))
            ours[-1].exact = loss_on_text(ours[-1].run_dir / "checkpoints" / "last.ckpt", validation)
            print(f"speedrun {rep}: {ours[-1].wall:.1f} s, val loss {ours[-1].final_loss} "
                  f"(nanoGPT's split: {ours[-1].exact:.4f}); curve {ours[-1].curve}", flush=True)
        reference = median([r.wall for r in nanogpt])
        wall = median([r.wall for r in ours])
        exact = max(r.exact for r in ours)
        in_run = max(r.final_loss for r in ours)
        met = wall <= TARGET_RATIO * reference and exact <= TARGET_LOSS and in_run <= TARGET_LOSS
        rows.append(Row("speedrun", "nanoGPT train.py, shakespeare-char CPU command (2000 it)",
                        f"{reference:.1f} s whole process (runs: {', '.join(f'{r.wall:.0f}' for r in nanogpt)}); "
                        f"val loss {median([r.final_loss for r in nanogpt]):.4f}"))
        rows.append(Row("speedrun", f"experiment=speedrun_shakespeare ({steps} steps)",
                        f"{wall:.1f} s whole process = {wall / reference:.3f}x nanoGPT (runs: "
                        f"{', '.join(f'{r.wall:.0f}' for r in ours)}); val loss on nanoGPT's split, every "
                        f"character: {exact:.4f} (worst run); in-run {in_run:.4f}",
                        f"<= {TARGET_RATIO}x and val loss <= {TARGET_LOSS}", met))
        if args.plot:
            from microgpt.evals.plots import plot_directory

            # the preset evaluates once, at the end: the curve is one more run, evaluating every 30 steps
            # (each whole-split evaluation adds its seconds to that run's clock)
            curve = run_microgpt(["eval_every=30"], scratch / "curve")
            print(f"curve run (eval_every=30): {curve.wall:.1f} s, {curve.curve}", flush=True)
            curves = scratch / "speedrun vs nanoGPT"
            write_curve(nanogpt[0], curves / "nanoGPT train.py")
            write_curve(curve, curves / "microgpt speedrun_shakespeare (eval_every=30)")
            for path in plot_directory(curves, args.plot, x="seconds"):
                print(f"curve: {path}")
        if args.levers:
            for name, overrides in levers(steps):
                lever = run_microgpt(overrides, scratch / "lever")
                reached = lever.seconds_to(TARGET_LOSS)
                rows.append(Row("speedrun lever", name,
                                f"{lever.wall:.1f} s whole process ({lever.wall / wall:.2f}x the speedrun); "
                                f"val loss {lever.final_loss:.4f}; to {TARGET_LOSS}: "
                                f"{f'{reached:.1f} s' if reached is not None else 'not reached'}"))
                print(f"{name}: {rows[-1].result}", flush=True)
    threads = f"{args.threads} thread(s) each" if args.threads else "torch's default threads"
    print_rows(f"CPU speedrun ({threads}; load average before: {load_before}, after: {load_average()})", rows)
    return rows


if __name__ == "__main__":
    main()
