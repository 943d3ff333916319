"""HellaSwag scoring speed on CPU: examples/s for one example per forward pass vs batches of
several (padded, masked), for a `nano` GPT (character and GPT-2 vocabularies) and a
`gpt2_124m`-shaped GPT (random weights: speed does not depend on them).

    python bench/bench_hellaswag.py [--reps 3] [--threads 0] [--device cpu]

Batches are scored exactly as `microgpt.evals.hellaswag.evaluate` does in the callback and in
`python -m microgpt.eval`; the figures are medians of `--reps` runs, taken side by side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import shared_file  # noqa: E402
from microgpt.core.model import GPT, GPTConfig  # noqa: E402
from microgpt.core.tokenizer import CharTokenizer, TiktokenTokenizer  # noqa: E402
from microgpt.evals.hellaswag import encode_examples, evaluate, read_examples  # noqa: E402

NANO = dict(n_layer=4, n_head=4, n_embd=128, block_size=128)
GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024)

# (label, model shape, tokenizer kind, examples timed, batch sizes in examples per forward)
CASES = [
    ("nano, char vocab", NANO, "char", 200, [1, 4, 16, 32]),
    ("nano, gpt2 vocab", NANO, "gpt2", 64, [1, 4, 16]),
    ("gpt2_124m, gpt2 vocab", GPT2_124M, "gpt2", 16, [1, 4, 8]),
]


def median_seconds(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> list:
    """Prints the detailed table; returns the summary rows for bench/run_all.py."""
    from common import Row

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    rows = []
    if args.threads:
        torch.set_num_threads(args.threads)
    examples = read_examples(shared_file("hellaswag_val.jsonl"))
    text = "\n".join(ex.context + " " + " ".join(ex.endings) for ex in examples)
    tokenizers = {"char": CharTokenizer.from_texts([text]), "gpt2": TiktokenTokenizer("gpt2")}
    print(f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, {args.reps} reps (median)\n")
    print("| model | examples | examples/forward | examples/s | speed-up vs 1 |")
    print("|---|---:|---:|---:|---:|")
    for label, shape, kind, count, batch_sizes in CASES:
        tokenizer = tokenizers[kind]
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **shape)).to(args.device).eval()
        encoded, _ = encode_examples(examples[:count], tokenizer)
        evaluate(model, encoded[: max(batch_sizes)], batch_size=max(batch_sizes))  # warm-up
        base = None
        for batch_size in batch_sizes:
            seconds = median_seconds(lambda: evaluate(model, encoded, batch_size=batch_size), args.reps)
            rate = len(encoded) / seconds
            base = base or rate
            print(f"| {label} | {len(encoded)} | {batch_size} | {rate:.1f} | {rate / base:.2f}x |", flush=True)
        rows.append(Row("hellaswag", f"{label}, batches of {batch_size}", f"{rate:.1f} examples/s ({rate / base:.2f}x one at a time)"))
    return rows


if __name__ == "__main__":
    main()
