"""Evaluate one model on a list of tasks and write the results table: what `python -m microgpt.eval` runs."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from omegaconf import DictConfig

from microgpt.core.errors import CheckpointError, ConfigError, DataError, MicroGPTError
from microgpt.core.language_model import LanguageModel
from microgpt.evals.hellaswag import evaluate_hellaswag
from microgpt.evals.perplexity import held_out_loss
from microgpt.io.config import to_plain
from microgpt.io.loading import load_model

log = logging.getLogger(__name__)

TASKS = ("val_loss", "hellaswag")
LM_EVAL = "lm_eval:"  # lm_eval:<task>: a task of the lm-evaluation-harness (pip install 'microgpt[eval]')


def load_for_eval(model: str, device: str = "cpu") -> LanguageModel:
    """The GPT and tokenizer to evaluate, from a checkpoint path. Every task goes through here, so
    other kinds of models (pretrained GPT-2 names) plug in at this one place."""
    return load_model(model, device=device)


def check_tasks(tasks) -> list[str]:
    tasks = [tasks] if isinstance(tasks, str) else list(tasks or [])
    unknown = [t for t in tasks if t not in TASKS and not is_lm_eval(t)]
    if unknown or not tasks:
        raise ConfigError(f"unknown or missing eval tasks {unknown or tasks}; choose from {list(TASKS)} or "
                          f"{LM_EVAL}<lm-eval task> (tasks=[val_loss,hellaswag,{LM_EVAL}arc_easy])")
    return tasks


def is_lm_eval(task) -> bool:
    return isinstance(task, str) and task.startswith(LM_EVAL) and len(task) > len(LM_EVAL)


def lm_eval_task(lm: LanguageModel, task: str, options: DictConfig, name: str) -> dict[str, dict]:
    """The metrics of an lm-eval task (of each task, for a group), keyed `lm_eval:<task>`."""
    from microgpt.evals.lm_eval.runner import LmEvalOptions, run_lm_eval

    metrics = run_lm_eval(lm, [task[len(LM_EVAL):]], LmEvalOptions(**to_plain(options)), name=name)
    return {f"{LM_EVAL}{t}": m for t, m in metrics.items()}


def val_loss_task(lm: LanguageModel, data: DictConfig, seed: int, max_batches: int | None) -> dict:
    """Held-out loss on `data=`'s validation split, tokenized with the model's own tokenizer."""
    from microgpt.data.text_data import build_text_data

    window = lm.model.config.block_size
    block_size = data.get("block_size") or window
    if block_size > window:
        raise ConfigError(f"data.block_size={block_size} is above the model's context ({window}); lower it or leave it null")
    datamodule = build_text_data(data, lm.tokenizer, seed, block_size=block_size)
    datamodule.load()
    return held_out_loss(lm.model, datamodule.val_dataloader(), max_batches).metrics()


def hellaswag_task(lm: LanguageModel, options: DictConfig) -> dict:
    result = evaluate_hellaswag(lm.model, lm.tokenizer, source=options.source, limit=options.limit,
                                batch_size=options.batch_size, cache_dir=options.cache_dir)
    return result.metrics()


def run_tasks(cfg: DictConfig) -> tuple[dict[str, dict], dict[str, MicroGPTError]]:
    """(results of the tasks that finished, errors of those that could not run): one task that
    cannot run (HellaSwag offline, say) does not throw away the others' results."""
    tasks = check_tasks(to_plain(cfg.tasks))
    lm = load_for_eval(cfg.ckpt, cfg.device)
    results: dict[str, dict] = {}
    failures: dict[str, MicroGPTError] = {}
    for task in tasks:
        try:
            if task == "val_loss":
                results[task] = val_loss_task(lm, cfg.data, cfg.seed, cfg.val_batches)
            elif task == "hellaswag":
                results[task] = hellaswag_task(lm, cfg.hellaswag)
            else:
                results.update(lm_eval_task(lm, task, cfg.lm_eval, str(cfg.ckpt)))
        except (ConfigError, DataError, CheckpointError) as e:
            failures[task] = e
            log.warning("%s could not run: %s", task, " ".join(str(e).split()))
            continue
        log.info("%s: %s", task, results.get(task))
    return results, failures


def failed_tasks_error(failures: dict[str, MicroGPTError], finished: list[str], saved: Path | None) -> MicroGPTError:
    """One error for the tasks that could not run, saying what did finish and where it was saved."""
    reasons = "; ".join(f"{task}: {' '.join(str(e).split())}" for task, e in failures.items())
    done = f"{', '.join(finished)} finished and saved to {saved}" if finished else "no task finished"
    first = next(iter(failures.values()))
    return type(first)(f"{len(failures)} eval task(s) could not run ({reasons}); {done}")


def output_files(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    return [out / "results.json", out / "results.md"]


def format_value(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def results_markdown(model: str, results: dict[str, dict]) -> str:
    lines = [f"model: `{model}`", "", "| task | metric | value |", "|---|---|---:|"]
    for task, metrics in results.items():
        lines += [f"| {task} | {name} | {format_value(v)} |" for name, v in metrics.items()]
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | Path, model: str, results: dict[str, dict],
                  failed: dict[str, MicroGPTError] | None = None) -> tuple[Path, Path]:
    json_path, md_path = output_files(out_dir)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": model, "results": results}
    if failed:
        payload["failed"] = {task: " ".join(str(e).split()) for task, e in failed.items()}
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(results_markdown(model, results))
    return json_path, md_path
