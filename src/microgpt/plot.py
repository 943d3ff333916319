"""`python -m microgpt.plot <run or sweep dir>`: PNG figures from the metrics a run wrote.

- `loss_and_eval.png`: train loss (faint: raw, solid: smoothed) and val loss against tokens seen;
  beside it HellaSwag acc_norm against tokens with the GPT-2 / GPT-3 124M reference lines, when the
  run evaluated HellaSwag.
- `--x seconds`: against the wall seconds since each run's process started (time to quality,
  start-up included), from the `time/process_s` the throughput callback logs.
- A sweep directory (`<sweep>/0/`, `<sweep>/1/`, ... each a run): one line per run, labelled with
  the overrides that differ between runs; `soup.png` too when `soup_report.json` is there.

Figures go to `<dir>/plots/` (or `--out`). Only the files are read: works on a laptop after copying
a cluster run's directory, with no W&B.
"""

from __future__ import annotations

import argparse
import sys

from microgpt.core.errors import report_user_errors
from microgpt.evals.plots import plot_directory


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m microgpt.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="a run directory (with metrics.csv) or a sweep directory (0/, 1/, ...)")
    parser.add_argument("--out", help="where to write the PNGs (default: <directory>/plots)")
    parser.add_argument("--x", choices=["tokens", "seconds"], default="tokens",
                        help="the loss against tokens seen, or against wall seconds since each process started")
    args = parser.parse_args(argv)
    for path in plot_directory(args.directory, args.out, x=args.x):
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
