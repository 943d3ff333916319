"""PNG figures from the metrics a run or sweep wrote (loss, HellaSwag, soups)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from microgpt.core.errors import DataError

METRICS_FILE = "metrics.csv"
HELLASWAG_METRIC = "hellaswag/acc_norm"
# (value, label): completion-style acc_norm, as measured in Karpathy's build-nanogpt (hellaswag.py)
# for the released GPT-2, and as published for GPT-3 Small (Brown et al. 2020, table 3.x).
HELLASWAG_REFERENCES = [
    (0.2955, "GPT-2 124M (OpenAI weights, build-nanogpt eval)"),
    (0.337, "GPT-3 124M (Brown et al. 2020)"),
]
HELLASWAG_CHANCE = 0.25
PROCESS_SECONDS = "time/process_s"  # the throughput callback's wall clock since the process started
LOGGED_AT_GLOBAL_STEP = ("hellaswag/",)  # metrics whose `step` is the optimizer steps done (see read_metrics)


@dataclass
class RunMetrics:
    """One run's metrics.csv, as {metric: [(tokens or steps, value), ...]} sorted by position."""

    name: str
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    x_is_tokens: bool = True
    x_is_seconds: bool = False


def on_wall_clock(run: RunMetrics) -> RunMetrics:
    """The same run with every metric against the wall seconds since its process started, where the
    run logged them (`time/process_s`, in the rows of its logging points and evaluations); points
    logged at positions without a clock reading are left out."""
    clock = dict(run.series.get(PROCESS_SECONDS, []))
    if not clock:
        raise DataError(f"{run.name}: no {PROCESS_SECONDS} in its {METRICS_FILE} (it is logged by "
                        f"callbacks.throughput); plot it against tokens (--x tokens)")
    series = {key: [(clock[x], v) for x, v in points if x in clock]
              for key, points in run.series.items() if key != PROCESS_SECONDS}
    return RunMetrics(name=run.name, series=series, x_is_tokens=False, x_is_seconds=True)


def read_metrics(run_dir: Path, name: str | None = None) -> RunMetrics:
    """Read `<run_dir>/metrics.csv` (Lightning's CSVLogger) and put every metric on a tokens axis.

    Lightning records a value logged with `self.log` after optimizer step k at `step` k-1, and the
    throughput callback's `train/tokens` is the token count after step k: so tokens =
    (step + 1) x tokens/step. Callbacks that write to the loggers directly (HellaSwag) record step k.
    A resumed run re-logs some steps: the latest value of a step wins.
    """
    path = run_dir / METRICS_FILE
    by_metric: dict[str, dict[int, float]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                step = int(float(row.get("step") or ""))
            except ValueError:
                continue
            for key, text in row.items():
                if key in ("step", "epoch") or not text:
                    continue
                try:
                    by_metric.setdefault(key, {})[step] = float(text)
                except ValueError:
                    continue
    tokens_per_step = None
    if by_metric.get("train/tokens"):
        ratios = sorted(tokens / (step + 1) for step, tokens in by_metric["train/tokens"].items())
        tokens_per_step = ratios[len(ratios) // 2]
    scale = tokens_per_step or 1.0
    series = {}
    for key, points in by_metric.items():
        offset = 0 if key.startswith(LOGGED_AT_GLOBAL_STEP) else 1
        series[key] = [((step + offset) * scale, v) for step, v in sorted(points.items()) if math.isfinite(v)]
    return RunMetrics(name=name or run_dir.name, series=series, x_is_tokens=tokens_per_step is not None)


def find_runs(directory: Path) -> list[tuple[Path, str]]:
    """The run directories to plot with their labels: the directory itself, or a sweep's job dirs."""
    if (directory / METRICS_FILE).is_file():
        return [(directory, directory.name)]
    jobs = sorted((d for d in directory.iterdir() if d.is_dir() and (d / METRICS_FILE).is_file()),
                  key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))
    labels = run_labels(jobs)
    return [(job, labels[job]) for job in jobs]


def run_labels(run_dirs: list[Path]) -> dict[Path, str]:
    """A label per run directory that tells the runs apart: the job number (or directory name) and
    the overrides whose value is not the same in every run, e.g. `job 2 (optim.lr=0.001 seed=3)`."""
    overrides = {d: job_overrides(d) for d in run_dirs}
    keys = {k for o in overrides.values() for k in o}
    varying = sorted(k for k in keys if len({o.get(k) for o in overrides.values()}) > 1)
    labels = {}
    for d in run_dirs:
        own = " ".join(f"{k}={clip(overrides[d][k])}" for k in varying if k in overrides[d])
        name = f"job {d.name}" if d.name.isdigit() else d.name
        labels[d] = f"{name} ({own})" if own else name
    if len(set(labels.values())) < len(labels):  # e.g. job 0 of two sweeps: name the sweeps too
        labels = {d: f"{d.parent.name}/{label}" for d, label in labels.items()}
    return labels


def checkpoint_labels(paths: list[Path]) -> list[str]:
    """Labels for checkpoints (soup ingredients) that tell them apart: their runs' labels (see
    `run_labels`; a checkpoint in `<run>/checkpoints/` belongs to `<run>`), and the file name
    where one run gives several."""
    runs = [p.parent.parent if p.parent.name == "checkpoints" else p.parent for p in paths]
    labels = run_labels(list(dict.fromkeys(runs)))
    return [f"{labels[r]} {p.name}" if runs.count(r) > 1 else labels[r] for r, p in zip(runs, paths)]


def job_overrides(run_dir: Path) -> dict[str, str]:
    """A run's command-line overrides (Hydra's `.hydra/overrides.yaml`) as {key: value}."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    import yaml

    items = [str(o) for o in (yaml.safe_load(path.read_text()) or [])]
    return dict(item.partition("=")[::2] for item in items)


def clip(value: str, limit: int = 32) -> str:
    """A long override value (a list of paths) cut in the middle: its start and its end both show."""
    return value if len(value) <= limit else value[: limit // 2 - 1] + "…" + value[-(limit // 2):]


def smooth(values: list[float]) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing), over ~1/20 of the points."""
    beta = min(0.95, max(0.0, 1 - 20 / max(len(values), 1)))
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


def _tokens_axis(ax, runs: list[RunMetrics]) -> None:
    from matplotlib.ticker import EngFormatter

    if all(r.x_is_seconds for r in runs):
        ax.set_xlabel("wall seconds since the process started (start-up included)")
    elif all(r.x_is_tokens for r in runs):
        ax.set_xlabel("tokens seen")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    else:
        ax.set_xlabel("optimizer steps (no train/tokens logged: enable callbacks.throughput)")
    ax.grid(True, alpha=0.3)


def plot_loss(ax, runs: list[RunMetrics]) -> None:
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    single = len(runs) == 1
    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        prefix = "" if single else f"{run.name} "
        train = run.series.get("train/loss", [])
        if train:
            xs, ys = zip(*train)
            if single:
                ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(xs, smooth(list(ys)), color=color, linewidth=1.2, linestyle="-" if single else ":",
                    label="train loss (smoothed)" if single else None)
        val = run.series.get("val/loss", [])
        if val:
            xs, ys = zip(*val)
            ax.plot(xs, ys, color="tab:red" if single else color, marker="o", markersize=3, linewidth=1.6,
                    label=f"{prefix}val loss (min {min(ys):.4f})")
    ax.set_ylabel("loss (cross-entropy, nats/token)")
    ax.set_title("Loss" if single else "Loss (dotted: train, smoothed; solid: val)")
    _tokens_axis(ax, runs)
    ax.legend(fontsize="small")


def plot_hellaswag(ax, runs: list[RunMetrics]) -> None:
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, run in enumerate(runs):
        points = run.series.get(HELLASWAG_METRIC, [])
        if points:
            xs, ys = zip(*points)
            label = "this run" if len(runs) == 1 else run.name
            ax.plot(xs, ys, color=colors[i % len(colors)], marker="o", markersize=3,
                    label=f"{label} (max {max(ys):.4f})")
    ref_styles = ["--", "-."]
    for (value, label), style in zip(HELLASWAG_REFERENCES, ref_styles):
        ax.axhline(value, color="gray" if style == "--" else "tab:orange", linestyle=style, linewidth=1.2,
                   label=f"{label}: {value}")
    ax.axhline(HELLASWAG_CHANCE, color="black", linestyle=":", linewidth=0.8, label="chance: 0.25")
    values = [v for run in runs for _, v in run.series.get(HELLASWAG_METRIC, [])]
    low = min([HELLASWAG_CHANCE, *values]) - 0.03
    ax.set_ylim(low, max([HELLASWAG_REFERENCES[-1][0], *values]) + 0.1)  # room for the legend above the lines
    ax.set_ylabel("HellaSwag acc_norm")
    ax.set_title("HellaSwag (completion style)")
    _tokens_axis(ax, runs)
    ax.legend(fontsize="small", loc="upper left")


def plot_runs(runs: list[RunMetrics], title: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_hellaswag = any(r.series.get(HELLASWAG_METRIC) for r in runs)
    fig, axes = plt.subplots(1, 2 if with_hellaswag else 1, figsize=(14 if with_hellaswag else 8, 5.5), squeeze=False)
    plot_loss(axes[0][0], runs)
    if with_hellaswag:
        plot_hellaswag(axes[0][1], runs)
    fig.suptitle(title)
    fig.tight_layout()
    path = out / ("loss_vs_seconds.png" if all(r.x_is_seconds for r in runs) else "loss_and_eval.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def numeric_leaves(value, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], float]]:
    """(path, number) for every number in a JSON value; list items are named by their `name` or `run`."""
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in numeric_leaves(v, path + (str(k),))]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in numeric_leaves(v, path + (item_label(v, i),))]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return [(path, float(value))]
    return []


def item_label(item, index: int) -> str:
    if isinstance(item, dict):
        return str(item.get("name") or item.get("run") or index)
    return str(index)


def plot_soup_report(report_path: Path, out: Path) -> Path | None:
    """Bars of every loss / accuracy figure in soup_report.json, one panel per kind of figure, so the
    soup stands beside its ingredients whatever else the report holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.loads(report_path.read_text())
    ingredients = report.get("ingredients") or []
    if len({i.get("name") for i in ingredients}) < len(ingredients):  # e.g. all `last.ckpt`, from older reports
        for item, label in zip(ingredients, checkpoint_labels([Path(i.get("path", "")) for i in ingredients])):
            item["name"] = label
    panels: dict[str, list[tuple[str, float]]] = {}
    for path, value in numeric_leaves(report):
        metric = path[-1]
        if any(word in metric.lower() for word in ("loss", "acc", "hellaswag", "ppl")):
            panels.setdefault(metric, []).append(("/".join(path[:-1]) or metric, value))
    panels = {k: bars for k, bars in panels.items() if len(bars) > 1}  # summaries (best_*, mean_*) repeat bars
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    for ax, (metric, bars) in zip(axes[0], sorted(panels.items())):
        labels, values = zip(*bars)
        colors = ["tab:green" if "soup" in lbl.lower() else "tab:blue" for lbl in labels]
        ax.bar(range(len(values)), values, color=colors)
        ax.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize="small")
        lo, hi = min(values), max(values)
        pad = (hi - lo) * 0.5 or abs(hi) * 0.05 or 0.1
        ax.set_ylim(lo - pad, hi + pad)  # differences between soups and ingredients are small
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.4f}", ha="center", va="bottom", fontsize="small")
        ax.set_title(metric)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"Soup report: {report_path.parent.name} (green: soups)")
    fig.tight_layout()
    path = out / "soup.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_directory(directory: str | Path, out: str | Path | None = None, x: str = "tokens") -> list[Path]:
    """Write the figures for a run or sweep directory; returns the PNG paths. `x`: tokens (seen) or
    seconds (of wall clock since each run's process started)."""
    if x not in ("tokens", "seconds"):
        raise DataError(f"--x must be tokens or seconds, got {x!r}")
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory; pass a run directory (outputs/<date>/<time>) "
                        f"or a sweep directory (outputs/multirun/<date>/<time>)")
    found = find_runs(directory)
    if not found:
        raise DataError(f"no {METRICS_FILE} in {directory} or its subdirectories; pass a run directory "
                        f"written with logger=csv (the default), or a sweep directory whose jobs are runs")
    runs = [read_metrics(run_dir, label) for run_dir, label in found]
    if x == "seconds":
        runs = [on_wall_clock(run) for run in runs]
    if not any(r.series.get("train/loss") or r.series.get("val/loss") for r in runs):
        raise DataError(f"{directory}: {METRICS_FILE} holds no train/loss or val/loss yet; plot once the run has "
                        f"logged some steps (trainer.log_every_n_steps)")
    out = Path(out) if out else directory / "plots"
    out.mkdir(parents=True, exist_ok=True)
    kind = f"sweep of {len(runs)} runs" if len(found) > 1 or found[0][0] != directory else "run"
    written = [plot_runs(runs, f"{directory.resolve().parent.name}/{directory.name} ({kind})", out)]
    report = directory / "soup_report.json"
    if report.is_file():
        soup = plot_soup_report(report, out)
        if soup:
            written.append(soup)
    return written
