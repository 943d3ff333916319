"""lm-eval speed: the `microgpt` lm-eval model vs lm-eval's own `hf` model on the same weights.

    python bench/bench_lm_eval.py [--reps 3] [--requests 1000] [--batch 16] [--threads 1]

A GPT-2-shaped GPT (GPT-2's vocabulary, learned positions; random weights: speed does not depend
on them) is exported to a Hugging Face directory (`microgpt.io.export`), which both models load.
Both score the same lm-eval requests, batched: `--requests` loglikelihood requests (Tiny
Shakespeare contexts of 12-70 words and a 1-8 word continuation), a 20th as many rolling
documents of 60-200 words (loglikelihood_rolling) and a 32nd as many greedy generations of up to 32 tokens; the
variants alternate, repetition after repetition, and the table gives medians in seconds per 1,000
requests, with the largest difference between their log-likelihoods and whether their generations
agree. Then both run the local tasks of tests/fixtures/lm_eval through lm-eval's `simple_evaluate`
(one repetition each): their metrics side by side.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, Row, interleaved, median, print_rows, spread  # noqa: E402

SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=128, pos_emb="learned")
TASKS_DIR = REPO / "tests" / "fixtures" / "lm_eval"
TASKS = ["microgpt_tiny_mc", "microgpt_tiny_ppl", "microgpt_tiny_gen"]


def export_model(directory: Path) -> None:
    from microgpt.core.model import GPT, GPTConfig
    from microgpt.core.tokenizer import TiktokenTokenizer
    from microgpt.io.export import export

    torch.manual_seed(0)
    export(GPT(GPTConfig(vocab_size=50257, **SHAPE)).eval(), TiktokenTokenizer("gpt2"), directory)


def make_requests(n: int, seed: int = 0) -> dict[str, list]:
    """lm-eval Instances of the three kinds, cut from Tiny Shakespeare at random places."""
    from lm_eval.api.instance import Instance

    from conftest import fixture_text

    words = fixture_text("tinyshakespeare.txt").split(" ")
    rng = random.Random(seed)

    def span(lo: int, hi: int) -> str:
        start = rng.randrange(len(words) - hi)
        return " ".join(words[start : start + rng.randint(lo, hi)])

    pairs = [(span(12, 70), " " + span(1, 8)) for _ in range(n)]
    return {
        "loglikelihood": [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)],
        "loglikelihood_rolling": [Instance("loglikelihood_rolling", {}, (span(60, 200),), i) for i in range(max(1, n // 20))],
        "generate_until": [Instance("generate_until", {}, (span(12, 70), {"until": ["\n\n"], "max_gen_toks": 32}), i)
                           for i in range(max(1, n // 32))],
    }


def load_both(directory: Path, batch: int) -> dict:
    from lm_eval.models.huggingface import HFLM

    from microgpt.evals.lm_eval import register_microgpt

    ours = register_microgpt().create_from_arg_string(f"ckpt={directory},batch_size={batch}", {"device": "cpu"})
    theirs = HFLM(pretrained=str(directory), batch_size=batch, device="cpu", dtype="float32")
    return {"microgpt": ours, "hf": theirs}


def speed_rows(models: dict, requests: dict[str, list], reps: int) -> list[Row]:
    rows, outputs = [], {}
    for kind, reqs in requests.items():
        for model in models.values():  # warm-up: first-call allocations and lazy imports stay out of the timing
            getattr(model, kind)(reqs[:2])
        def call(name, kind=kind, reqs=reqs):
            outputs[name, kind] = getattr(models[name], kind)(reqs)

        times = interleaved({name: lambda name=name: call(name) for name in models}, reps, warmup=0)
        per_1000 = {name: [t * 1000 / len(reqs) for t in ts] for name, ts in times.items()}
        ratio = median(per_1000["microgpt"]) / median(per_1000["hf"])
        ours, theirs = outputs["microgpt", kind], outputs["hf", kind]
        if kind == "generate_until":
            agree = f"same replies: {sum(a == b for a, b in zip(ours, theirs))}/{len(ours)}"
        else:
            values = [(o[0], t[0]) if isinstance(o, tuple) else (o, t) for o, t in zip(ours, theirs)]
            agree = f"largest logprob difference {max(abs(a - b) for a, b in values):.2g}"
        rows.append(Row("lm_eval", f"{kind}, {len(reqs)} requests, batch {models['hf'].batch_size}: microgpt / hf time",
                        f"{ratio:.2f}x ({spread(per_1000['microgpt'])} vs {spread(per_1000['hf'])} s per 1,000; {agree})"))
    return rows


def task_rows(models: dict) -> list[Row]:
    """Both models on the local tasks through lm-eval's own evaluation loop: their metrics and time."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    results, seconds = {}, {}
    for name, model in models.items():
        start = time.perf_counter()
        results[name] = simple_evaluate(model=model, tasks=TASKS, task_manager=manager, bootstrap_iters=0)["results"]
        seconds[name] = time.perf_counter() - start
    rows = []
    for task in TASKS:
        for key, value in results["microgpt"][task].items():
            if isinstance(value, float) and "_stderr" not in key:
                rows.append(Row("lm_eval", f"{task} {key.split(',')[0]} (microgpt vs hf)",
                                f"{value:.4f} vs {results['hf'][task][key]:.4f}"))
    rows.append(Row("lm_eval", "the three local tasks, whole simple_evaluate: microgpt / hf time",
                    f"{seconds['microgpt'] / seconds['hf']:.2f}x ({seconds['microgpt']:.2f} vs {seconds['hf']:.2f} s)"))
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    """Prints the detailed table; returns the summary rows for bench/run_all.py."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000, help="loglikelihood requests per repetition")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        export_model(Path(tmp))
        models = load_both(Path(tmp), args.batch)
        rows = speed_rows(models, make_requests(args.requests), args.reps)
        rows += task_rows(models)
    print_rows(f"lm-eval: microgpt vs hf, GPT-2 shape {SHAPE['n_layer']} x {SHAPE['n_embd']}, "
               f"context {SHAPE['block_size']}, GPT-2 vocabulary, CPU, {torch.get_num_threads()} thread(s)", rows)
    return rows


if __name__ == "__main__":
    main()
