"""Custom BPE speed: training vs Hugging Face `tokenizers` run directly and vs a plain-Python
(minbpe-style) trainer, and encode throughput vs tiktoken's GPT-2 encoding.

    python bench/bench_bpe.py [--reps 5] [--python-chars 100000] [--python-vocab 512]

Targets (issue 4): training within 1.5x of `tokenizers`; encoding at least 0.8x tiktoken gpt2.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import regex

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import shared_file  # noqa: E402
from microgpt.core.bpe import PATTERNS, train_bpe  # noqa: E402
from microgpt.core.tokenizer import tiktoken_encoding  # noqa: E402


def timed(fn, reps: int) -> tuple[float, object]:
    """Median wall time of `reps` calls, and the last result."""
    times, result = [], None
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def timed_side_by_side(fn_a, fn_b, reps: int) -> tuple[float, object, float, object]:
    """Like `timed` for two functions, alternating a, b, a, b, ... so a load change on a shared
    machine hits both alike."""
    times_a, times_b, result_a, result_b = [], [], None, None
    for _ in range(reps):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
            if fn is fn_a:
                result_a = result
            else:
                result_b = result
    return statistics.median(times_a), result_a, statistics.median(times_b), result_b


def train_hf_directly(text: str, vocab_size: int, pattern: str = "gpt4"):
    """`tokenizers` with exactly the settings `train_bpe` gives it (1 special token kept out of the merges)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERNS[pattern]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=0,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator([text], trainer=trainer)
    return hf


def train_plain_python(text: str, vocab_size: int, pattern: str = "gpt4") -> list[tuple[int, int]]:
    """minbpe's RegexTokenizer.train: count every adjacent pair, merge the most frequent, repeat."""
    chunks = [list(c.encode("utf-8")) for c in regex.findall(PATTERNS[pattern], text)]
    merges = []
    for new_id in range(256, vocab_size - 1):
        counts = collections.Counter()
        for ids in chunks:
            counts.update(zip(ids, ids[1:]))
        if not counts:
            break
        pair = max(counts, key=counts.get)
        for k, ids in enumerate(chunks):
            merged, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
                    merged.append(new_id)
                    i += 2
                else:
                    merged.append(ids[i])
                    i += 1
            chunks[k] = merged
        merges.append(pair)
    return merges


def main(argv: list[str] | None = None) -> list:
    """Prints the detailed tables; returns the summary rows for bench/run_all.py."""
    from common import Row

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--python-chars", type=int, default=100_000, help="corpus size for the slow plain-Python trainer")
    parser.add_argument("--python-vocab", type=int, default=512)
    args = parser.parse_args(argv)
    rows = []

    shakespeare = shared_file("tinyshakespeare.txt").read_text()
    corpora = {"tinyshakespeare (1.1 MB)": shakespeare, "10x tinyshakespeare (11 MB)": shakespeare * 10}

    print(f"## Training (median of {args.reps}, run alternately; microgpt = tokenizers + conversion + tiktoken build)\n")
    print("| corpus | vocab | microgpt s | tokenizers directly s | ratio (target <= 1.5) |")
    print("|---|---|---|---|---|")
    trained = {}
    for name, text in corpora.items():
        for vocab in (4096, 8192):
            ours, tok, hf, _ = timed_side_by_side(lambda: train_bpe([text], vocab, show_progress=False),
                                                  lambda: train_hf_directly(text, vocab), args.reps)
            trained[(name, vocab)] = tok
            print(f"| {name} | {vocab} | {ours:.2f} | {hf:.2f} | {ours / hf:.2f}x |", flush=True)
            rows.append(Row("bpe", f"train vocab {vocab} on {name}: microgpt / tokenizers time",
                            f"{ours / hf:.2f}x ({ours:.2f} vs {hf:.2f} s)", "<= 1.5x", ours / hf <= 1.5))

    small = shakespeare[: args.python_chars]
    print(f"\n## vs a plain-Python minbpe-style trainer (slow: {args.python_chars:,} characters, "
          f"vocab {args.python_vocab}, python timed once)\n")
    py, py_merges = timed(lambda: train_plain_python(small, args.python_vocab), 1)
    ours, tok = timed(lambda: train_bpe([small], args.python_vocab, show_progress=False), args.reps)
    print("| trainer | seconds | merges |")
    print("|---|---|---|")
    print(f"| plain Python | {py:.2f} | {len(py_merges)} |")
    print(f"| microgpt (tokenizers) | {ours:.3f} | {len(tok.merges)} |")
    same = next((i for i, (a, b) in enumerate(zip(py_merges, tok.merges)) if a != b), len(py_merges))
    print(f"\nspeed-up: {py / ours:.0f}x; the two learn the same first {same} merges "
          "(then they may break a tie between equally frequent pairs differently)")

    gpt2 = tiktoken_encoding("gpt2")
    wikitext = shared_file("wikitext2_raw_valid.txt").read_text()
    print(f"\n## Encode throughput, one thread (median of {args.reps}, run alternately); tokenizer trained on tinyshakespeare\n")
    print("| text | vocab | microgpt MB/s | tiktoken gpt2 MB/s | ratio (target >= 0.8) | tokens microgpt / gpt2 |")
    print("|---|---|---|---|---|---|")
    for text_name, text in (("tinyshakespeare", shakespeare), ("wikitext-2 valid", wikitext)):
        megabytes = len(text.encode()) / 1e6
        for vocab in (4096, 8192):
            tok = trained[("tinyshakespeare (1.1 MB)", vocab)]
            ours, ids, ref, ref_ids = timed_side_by_side(lambda: tok.encode(text), lambda: gpt2.encode_ordinary(text),
                                                         args.reps)
            print(f"| {text_name} | {vocab} | {megabytes / ours:.1f} | {megabytes / ref:.1f} | {ref / ours:.2f}x "
                  f"| {len(ids):,} / {len(ref_ids):,} |", flush=True)
            rows.append(Row("bpe", f"encode {text_name}, vocab {vocab}: microgpt / tiktoken gpt2 MB/s",
                            f"{ref / ours:.2f}x ({megabytes / ours:.1f} vs {megabytes / ref:.1f} MB/s)", ">= 0.8x",
                            ref / ours >= 0.8))
    return rows


if __name__ == "__main__":
    main()
