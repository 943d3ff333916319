"""Run lm-eval tasks on a model in memory and keep their metrics: what `python -m microgpt.eval
tasks=[lm_eval:<task>]` and the training callback call."""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from microgpt.core.errors import ConfigError, DataError
from microgpt.core.language_model import LanguageModel
from microgpt.evals.lm_eval import register_microgpt, require_lm_eval

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LmEvalOptions:
    include_path: str | None = None  # a folder of task YAMLs of one's own, searched before lm-eval's
    limit: int | float | None = None  # per task: the first K examples (a fraction when < 1)
    num_fewshot: int | None = None    # None: each task's own
    batch_size: int = 16
    max_gen_toks: int = 256
    bootstrap_iters: int = 100000     # lm-eval's bootstrap for some metrics' stderr; 0: none


@functools.cache
def indexed(include_path: str | None, include_defaults: bool):
    """lm-eval's TaskManager over these task folders, built once a process: indexing lm-eval's own
    ~15k task YAMLs takes ~12 s, and the training callback asks again at every evaluation."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def task_manager(tasks: list[str], include_path: str | None):
    """A TaskManager that knows `tasks`: `include_path` alone when it holds them all (no index of
    lm-eval's own tasks), else lm-eval's own tasks and `include_path`'s."""
    if include_path is not None:
        if not Path(include_path).is_dir():
            raise ConfigError(f"lm_eval include_path {include_path} is not a directory; give the folder of your task YAMLs")
        include_path = str(Path(include_path).resolve())
        local = indexed(include_path, False)
        if all(local.match_tasks([t]) for t in tasks):
            return local
    manager = indexed(include_path, True)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise ConfigError(f"unknown lm-eval task(s) {unknown}; `lm-eval ls tasks` lists lm-eval's own, and "
                          f"lm_eval.include_path=<folder of task YAMLs> adds your own")
    return manager


def load_tasks(manager, tasks: list[str]) -> list:
    """The Task / Group objects of `tasks`, their data read: a task whose data cannot be had (the
    Hub offline, a missing file) is a DataError naming it, not a traceback from the dataset library."""
    built = []
    for task in tasks:
        try:
            loaded = manager.load(task)
        except Exception as e:  # datasets and the Hub raise many types: name the task and the cause
            reason = " ".join(str(e).split())[:300]
            raise DataError(f"lm-eval task {task} could not load its data ({type(e).__name__}: {reason}); "
                            f"check the network, or define the task over local files with lm_eval.include_path") from e
        groups = loaded["groups"]
        built += [groups[task]] if task in groups else list(loaded["tasks"].values())
    return built


def metric_name(key: str) -> str:
    """lm-eval's `acc,none` as `acc`; a filtered `exact_match,strict-match` as `exact_match/strict-match`."""
    metric, _, filter_name = key.partition(",")
    return metric if filter_name in ("", "none") else f"{metric}/{filter_name}"


def task_metrics(output: dict) -> dict[str, dict[str, float | int]]:
    """{task or group: {metric: value, ..., count}} from simple_evaluate's output (numbers only:
    an uncomputed stderr is the string 'N/A')."""
    samples = output.get("n-samples", {})
    metrics: dict[str, dict[str, float | int]] = {}
    for name, values in output["results"].items():
        numbers = {metric_name(k): float(v) for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "sample_len"}
        if name in samples:
            numbers["count"] = int(samples[name]["effective"])
        metrics[name] = numbers
    return metrics


def run_lm_eval(lm: LanguageModel, tasks: list[str], options: LmEvalOptions = LmEvalOptions(),
                name: str = "microgpt") -> dict[str, dict[str, float | int]]:
    """Metrics of every task (and group) in `tasks`, scored by the `microgpt` lm-eval model over `lm`."""
    require_lm_eval()
    from lm_eval import simple_evaluate

    adapter = register_microgpt().from_language_model(lm, options.batch_size, options.max_gen_toks, name)
    manager = task_manager(list(tasks), options.include_path)
    output = simple_evaluate(model=adapter, tasks=load_tasks(manager, list(tasks)), num_fewshot=options.num_fewshot,
                             limit=options.limit, bootstrap_iters=options.bootstrap_iters, task_manager=manager)
    metrics = task_metrics(output)
    log.info("lm-eval: %s", {t: {k: v for k, v in m.items() if not math.isnan(v)} for t, m in metrics.items()})
    return metrics
