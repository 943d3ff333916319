"""Run every benchmark and print one combined table; also write it to bench/results.md.

    python bench/run_all.py                      # what `make bench` runs (~30 min on a quiet 2-core CPU)
    python bench/run_all.py --only overhead data  # a subset (results.md names the command)

Each script prints its own detailed table as it goes; the summary rows it returns are collected
here. Ratios are always measured side by side in the same run (variants interleaved, medians of
repetitions), because the machine may be shared; the load average is recorded with the table.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, Row, load_average, machine, markdown_table, today  # noqa: E402

# (name, module, arguments for the default run): each kept to a few minutes.
SUITE = [
    ("overhead", "bench_overhead", []),
    ("speedrun", "bench_speedrun", ["--reps", "2"]),
    ("mfu", "bench_mfu", []),
    ("throughput callback", "bench_throughput", []),
    ("memory", "bench_memory", []),
    ("data", "bench_data", []),
    ("bpe", "bench_bpe", ["--reps", "3", "--python-chars", "20000"]),
    ("generate", "bench_generate", ["--reps", "3"]),
    ("matvec", "bench_matvec", []),
    ("hellaswag", "bench_hellaswag", ["--reps", "3"]),
    ("lm_eval", "bench_lm_eval", ["--reps", "3", "--requests", "320"]),
    ("post-training", "bench_posttrain", []),
    ("prepare", "bench_prepare", []),
    ("stream shards", "bench_stream_shards", []),
    ("architectures", "compare_architectures", ["--steps", "100"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=[name for name, _, _ in SUITE], help="run only these")
    parser.add_argument("--out", default=str(BENCH_DIR / "results.md"))
    args = parser.parse_args()

    started, load_before = today(), load_average()
    rows: list[Row] = []
    durations: list[str] = []

    def report(done: bool) -> str:
        status = "" if done else "**Incomplete: still running.** "
        return (f"# Benchmark results\n\n{status}{started}; {machine()}\n\n"
                f"Load average (1, 5, 15 min) at the start: {load_before}; at the end: {load_average()} "
                f"(the machine may be shared: absolute figures vary with load, ratios are measured side by side).\n\n"
                f"Command: `python bench/run_all.py {shlex.join(sys.argv[1:])}`; time per benchmark: "
                f"{', '.join(durations)}.\n\n{markdown_table(rows)}\n")

    for name, module, argv in SUITE:
        if args.only and name not in args.only:
            continue
        print(f"\n===== {name}: python bench/{module}.py {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        try:
            rows += importlib.import_module(module).main(argv)
        except Exception as e:  # one broken benchmark must not hide the others' results
            traceback.print_exc()
            rows.append(Row(name, "benchmark failed", f"{type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}",
                            "runs", False))
        durations.append(f"{name} {time.perf_counter() - start:.0f} s")
        Path(args.out).write_text(report(done=False))  # as it goes: an interrupted run still leaves its figures

    print("\n" + report(done=True))
    Path(args.out).write_text(report(done=True))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
