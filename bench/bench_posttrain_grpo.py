"""stage=grpo on CPU: the starting policy's held-out pass@1 and mean reward against the same after
GRPO, on the arithmetic task (pretrain on sums as text -> stage=sft -> stage=grpo).

    python bench/bench_posttrain_grpo.py                 # 1-digit addition, 2 x 64 model: ~2 min on one thread
    python bench/bench_posttrain_grpo.py --digits 2      # 2-digit addition, 4 x 128 model: ~15 min
    python bench/bench_posttrain_grpo.py --digits 2 --work /tmp/g --lr 3e-5   # keeps the runs; a rerun reuses pretrain + SFT
    python bench/bench_posttrain_grpo.py --seed 0       # every stage at seed=0 (the figures depend on it)

Every stage runs as `python -m microgpt.train ...` (a subprocess, as a user runs it). The figures
come from the checkpoints, on the fixed held-out problems (never in any training data): greedy
pass@1, the greedy mean reward, and the mean reward of 16 completions per problem sampled at
temperature 1 (what GRPO raises, with less noise than pass@1); and that sampled reward on the
training problems GRPO samples from (the first 200 of them), where the rise shows at every seed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from common import Row, load_average, print_rows

THREADS = {"OMP_NUM_THREADS": "1"}
COMMON = ["callbacks.progress_bar=null", "callbacks.text_samples=null", "trainer.enable_model_summary=false"]
# Per task: the model, the starting policy's recipe, and GRPO's settings. The one-digit recipe is the
# README's CPU path (and tests/test_grpo.py's), command for command.
RECIPES = {
    1: {"model": [2, 2, 64], "data_seed": 0, "sums": 4000, "pretrain_steps": 1000, "sft_records": 73, "sft_steps": 50, "sft_lr": 2e-3,
        "sft_batch": 8, "n_train": 73, "n_val": 27, "grpo_steps": 60, "eval_every": 20, "lr": 5e-4, "warmup": 0},
    2: {"model": [4, 4, 128], "data_seed": 1, "sums": 20000, "pretrain_steps": 1200, "sft_records": 4000, "sft_steps": 300, "sft_lr": 1e-3,
        "sft_batch": 32, "n_train": 5000, "n_val": 200, "grpo_steps": 200, "eval_every": 50, "lr": 1e-4, "warmup": 10},
}


def model_args(recipe: dict) -> list[str]:
    layers, heads, width = recipe["model"]
    return [f"model.n_layer={layers}", f"model.n_head={heads}", f"model.n_embd={width}", "model.block_size=64", *COMMON]


def train(run_dir: Path, *overrides: str) -> float:
    """Seconds of one `python -m microgpt.train` run; an existing finished run is reused (0 s)."""
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return 0.0
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "microgpt.train", *overrides, f"hydra.run.dir={run_dir}"],
                            env={**os.environ, **THREADS}, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{run_dir.name} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def stages(root: Path, digits: int, r: dict, extra: list[str], seeded: Sequence[str] = ()) -> dict[str, float]:
    """Pretrain on sums as text -> stage=sft -> stage=grpo, each as a user runs it (`seeded`: the
    overrides all three get); their seconds."""
    from microgpt.evals.arithmetic import write_sft_jsonl, write_text

    if not (root / "sums.txt").is_file():
        write_text(root / "sums.txt", r["sums"], digits, seed=r["data_seed"])
        write_sft_jsonl(root / "sft.jsonl", r["sft_records"], digits, seed=r["data_seed"])
    common = [*model_args(r), *seeded]
    seconds = {"pretrain": train(root / "pretrain", *common, "data=files", f"data.paths=[{root / 'sums.txt'}]",
                                 f"max_steps={r['pretrain_steps']}", f"eval_every={r['pretrain_steps']}", "optim.lr=3e-3",
                                 "schedule.warmup_steps=20")}
    seconds["sft"] = train(root / "sft", "stage=sft", *common, f"init_from={root / 'pretrain/checkpoints/last.ckpt'}",
                           f"data.path={root / 'sft.jsonl'}", f"max_steps={r['sft_steps']}", f"eval_every={r['sft_steps']}",
                           f"optim.lr={r['sft_lr']}", f"data.batch_size={r['sft_batch']}")
    seconds["grpo"] = train(root / grpo_name(r, extra), "stage=grpo", *common, f"init_from={root / 'sft/checkpoints/last.ckpt'}",
                            f"data.digits={digits}", f"data.n_train={r['n_train']}", f"data.n_val={r['n_val']}",
                            f"objective.max_new_tokens={digits + 3}", "data.batch_size=32", f"max_steps={r['grpo_steps']}",
                            f"eval_every={r['eval_every']}", f"optim.lr={r['lr']}",
                            f"schedule.warmup_steps={r['warmup']}", *extra)
    return seconds


def grpo_name(r: dict, extra: list[str]) -> str:
    return "_".join(["grpo", str(r["grpo_steps"]), str(r["lr"]), *(o.replace("=", "").replace("/", "") for o in extra)])


def scores(ckpt: Path, digits: int, n: int, held_out: bool = True, first: int | None = None) -> dict[str, float]:
    """Greedy pass@1 and the sampled reward on `n` held-out problems (held_out=False: the problems
    stage=grpo trains on with data.n_train=`n`, data.seed=0), or on the `first` of them."""
    from microgpt.evals.arithmetic import checkpoint_pass_at_1

    return checkpoint_pass_at_1(str(ckpt), digits, n, ["+"], max_new_tokens=digits + 3, samples=16, held_out=held_out,
                                first=first)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, default=1, choices=sorted(RECIPES))
    parser.add_argument("--grpo-steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--override", nargs="*", default=[], help="more stage=grpo overrides")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here (a rerun reuses finished ones)")
    parser.add_argument("--seed", type=int, default=None, help="every stage's seed= (default: the config's, 1337)")
    args = parser.parse_args(argv)
    r = {**RECIPES[args.digits], **{k: v for k, v in (("grpo_steps", args.grpo_steps), ("lr", args.lr)) if v is not None}}
    load_before = load_average()
    with tempfile.TemporaryDirectory() as scratch:
        root = (args.work or Path(scratch)) / ("" if args.seed is None else f"seed{args.seed}")
        root.mkdir(parents=True, exist_ok=True)
        seeded = [] if args.seed is None else [f"seed={args.seed}"]
        seconds = stages(root, args.digits, r, args.override, seeded)
        start, end = root / "sft" / "checkpoints" / "last.ckpt", root / grpo_name(r, args.override) / "checkpoints" / "last.ckpt"
        before, after = scores(start, args.digits, r["n_val"]), scores(end, args.digits, r["n_val"])
        trained = min(r["n_train"], 200)  # the training problems GRPO samples from (the first 200 of 5000 for 2 digits)
        before_train, after_train = (scores(c, args.digits, r["n_train"], held_out=False, first=trained) for c in (start, end))
    task = f"{args.digits}-digit addition, {r['n_val']} held-out problems"
    layers, _, width = r["model"]
    seed = "" if args.seed is None else f", seed {args.seed}"
    rows = [Row("grpo", f"starting policy ({layers} x {width}{seed}): pretrain {r['pretrain_steps']} + stage=sft {r['sft_steps']} "
                        f"steps ({seconds['pretrain'] + seconds['sft']:.0f} s)",
                f"pass@1 {before['pass@1']:.3f}, sampled reward {before['sampled']:.3f} ({task}); "
                f"sampled reward {before_train['sampled']:.3f} on {trained} training problems"),
            Row("grpo", f"stage=grpo {r['grpo_steps']} steps x 32 prompts x 8, lr {r['lr']} ({seconds['grpo']:.0f} s)",
                f"pass@1 {after['pass@1']:.3f}, sampled reward {after['sampled']:.3f}; "
                f"sampled reward {after_train['sampled']:.3f} on the training problems",
                "above the starting policy's on the training problems", after_train["sampled"] > before_train["sampled"] + 0.05)]
    print_rows(f"GRPO on CPU (one thread; load average before: {load_before}, after: {load_average()})", rows)
    return rows


if __name__ == "__main__":
    main()
