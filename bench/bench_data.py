"""Data pipeline speed (issue 3): tokenization throughput, time the training loop waits for data,
and reading pre-tokenized shards.

    python bench/bench_data.py [--reps 3] [--shard-batches 3000]

1. Tokenization: `microgpt.data.packing.tokenize_documents` (GPT-2 tiktoken, EOT separators,
   packed into one uint16 array) vs raw tiktoken `encode_ordinary_batch` on the same documents
   (wikitext-2 articles and Tiny Shakespeare paragraphs), interleaved. Target >= 0.8x.
2. Data wait on `model=nano`: a real `microgpt.lightning.training.train` run with a callback timing the gap
   between one batch's end and the next batch's start (the DataLoader `next()` plus the loop's own
   bookkeeping, so an upper bound on waiting for data), as a share of the steady-state step period.
   Also the loader alone (batches/s) vs the steps/s the model consumes. Target < 2%.
3. Shards: `python -m microgpt.prepare` writes GPT-2 token shards; `TextDataModule(mode="shards")`
   reads random windows for many epochs; batches/s vs what the model consumes, and RSS over the read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, Row, current_rss_mib, interleaved, median, print_rows

from conftest import shared_file


def documents() -> list[str]:
    """Real documents of mixed length: wikitext-2 articles and Tiny Shakespeare speeches."""
    docs, article = [], []
    for line in shared_file("wikitext2_raw_valid.txt").read_text().splitlines(keepends=True):
        if line.startswith(" = ") and not line.startswith(" = = ") and article:
            docs.append("".join(article))
            article = []
        article.append(line)
    docs.append("".join(article))
    docs += [p for p in shared_file("tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    return docs


def tokenization(reps: int) -> list[Row]:
    from microgpt.core.tokenizer import TiktokenTokenizer
    from microgpt.data.packing import tokenize_documents

    docs = documents()
    tokenizer = TiktokenTokenizer("gpt2")
    megabytes = sum(len(d.encode()) for d in docs) / 1e6
    times = interleaved({
        "pipeline": lambda: tokenize_documents(docs, tokenizer),
        "tiktoken": lambda: tokenizer.enc.encode_ordinary_batch(docs),
    }, reps)
    ours, raw = median(times["pipeline"]), median(times["tiktoken"])
    ratio = raw / ours
    return [Row("data", f"tokenize {len(docs):,} docs ({megabytes:.1f} MB), pipeline / raw tiktoken batch",
                f"{ratio:.2f}x ({megabytes / ours:.1f} vs {megabytes / raw:.1f} MB/s)", ">= 0.8x", ratio >= 0.8)]


def data_wait(reps: int, steps: int, skip: int) -> tuple[list[Row], float]:
    """Rows, and the steps/s the nano model consumes."""
    from bench_overhead import framework_run

    fractions, periods, loader_rates = [], [], []
    for _ in range(reps):
        seconds, clock = framework_run("nano", 16, steps, skip)
        fractions.append(clock.data_wait_fraction(skip))
        periods.append(seconds)
        loader = iter(clock.datamodule.train_dataloader())
        next(loader)
        start = time.perf_counter()
        for _ in range(200):
            next(loader)
        loader_rates.append(200 / (time.perf_counter() - start))
    wait, step_rate = median(fractions), 1 / median(periods)
    rows = [
        Row("data", "nano (16 x 128) train: time between batches / step period (Trainer run)",
            f"{wait:.2%} (runs: {', '.join(f'{f:.2%}' for f in fractions)})", "< 2%", wait < 0.02),
        Row("data", "nano memory-mode loader alone vs model consumption",
            f"{median(loader_rates):,.0f} batches/s vs {step_rate:.2f} steps/s ({median(loader_rates) / step_rate:,.0f}x)"),
    ]
    return rows, step_rate


def shards(batches: int, step_rate: float | None) -> list[Row]:
    from microgpt.lightning.datamodule import TextDataModule

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents()))
        out = Path(tmp) / "shards"
        subprocess.run([sys.executable, "-m", "microgpt.prepare", "data=files", f"data.paths=[{corpus}]",
                        "tokenizer=gpt2", f"out={out}"], check=True, cwd=REPO, capture_output=True)
        rows = []
        for label, block, batch in (("nano shape 16 x 128", 128, 16), ("gpt2_124m shape 8 x 1024", 1024, 8)):
            data = TextDataModule(sources=None, tokenizer={}, block_size=block, batch_size=batch,
                                  mode="shards", shards_dir=str(out))
            data.load()
            loader = iter(data.train_dataloader())
            next(loader)
            rss, windows = [], 0
            start = time.perf_counter()
            for i in range(batches):
                windows += len(next(loader))
                if i % max(1, batches // 10) == 0:
                    rss.append(current_rss_mib())
            rate = batches / (time.perf_counter() - start)
            rss.append(current_rss_mib())
            epochs = windows / len(data.train_dataloader().dataset)
            consumes = f" vs the nano model's {step_rate:.2f} steps/s ({rate / step_rate:,.0f}x)" if block == 128 and step_rate else ""
            rows.append(Row("data", f"shards read, {label}, {batches:,} batches ({epochs:.0f} epochs)",
                            f"{rate:,.0f} batches/s{consumes}"))
            growth = rss[-1] - rss[1]
            rows.append(Row("data", f"shards read, {label}: RSS over the read",
                            f"{rss[1]:.0f} MiB after 10% -> {rss[-1]:.0f} MiB at the end ({growth:+.1f} MiB)",
                            "flat (< 5 MiB growth)", growth < 5))
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per nano run")
    parser.add_argument("--skip", type=int, default=3)
    parser.add_argument("--shard-batches", type=int, default=3000)
    args = parser.parse_args(argv)

    rows = tokenization(max(args.reps, 5))
    wait_rows, step_rate = data_wait(args.reps, args.steps, args.skip)
    rows += wait_rows + shards(args.shard_batches, step_rate)
    print_rows(f"Data pipeline, CPU ({args.reps} reps, medians)", rows)
    return rows


if __name__ == "__main__":
    main()
