"""Make a soup, save it, and report how it compares with its ingredients."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from microgpt.core.errors import ConfigError
from microgpt.evals.plots import checkpoint_labels
from microgpt.souping.average import METHODS, Ingredient, average, greedy_soup, soup_checkpoint
from microgpt.souping.evaluate import Evaluator

log = logging.getLogger(__name__)


SOUP_FILES = ("soup.ckpt", "soup_report.json", "soup_report.md")


def soup_files(out_dir: Path) -> list[Path]:
    """What `make_soup` writes into `out_dir`."""
    return [out_dir / name for name in SOUP_FILES]


def make_soup(ingredients: list[Ingredient], evaluator: Evaluator, method: str, out_dir: Path,
              failed_jobs: list[dict] | None = None) -> dict:
    """Evaluate ingredients, cook the soup(s), write soup.ckpt, soup_report.json and soup_report.md."""
    if method not in METHODS:
        raise ConfigError(f"soup method must be one of {METHODS}, got {method!r}")
    if len({i.name for i in ingredients}) < len(ingredients):  # e.g. every one a `last.ckpt`
        for ing, label in zip(ingredients, checkpoint_labels([i.path for i in ingredients])):
            ing.name = label
    for ing in ingredients:
        ing.metrics = evaluator.metrics(ing.state)
        log.info("ingredient %s: %s", ing.name, ing.metrics)
    uniform = average([i.state for i in ingredients])
    soups = {"uniform": {"members": [i.name for i in ingredients], **evaluator.metrics(uniform)}}
    chosen_state, chosen_members = uniform, ingredients
    if method == "greedy":
        state, names, _ = greedy_soup(ingredients, evaluator.loss)
        soups["greedy"] = {"members": names, **evaluator.metrics(state)}
        chosen_state, chosen_members = state, [i for i in ingredients if i.name in names]
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "soup.ckpt"
    torch.save(soup_checkpoint(ingredients[0], chosen_state, method, chosen_members), ckpt_path)
    losses = [i.metrics["val_loss"] for i in ingredients]
    soup_loss = soups[method]["val_loss"]
    report = {
        "status": "ok",
        "method": method,
        "checkpoint": str(ckpt_path),
        "ingredients": [{"name": i.name, "path": str(i.path), **i.metrics} for i in ingredients],
        "soups": soups,
        "mean_ingredient_val_loss": sum(losses) / len(losses),
        "best_ingredient_val_loss": min(losses),
        "soup_val_loss": soup_loss,
        "soup_beats_mean": soup_loss <= sum(losses) / len(losses),
        "soup_beats_best": soup_loss < min(losses),
        "failed_jobs": failed_jobs or [],
    }
    write_report(out_dir, report)
    return report


def write_report(out_dir: Path, report: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "soup_report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "soup_report.md").write_text(report_markdown(report))


def report_markdown(report: dict) -> str:
    if report.get("status") != "ok":
        return f"# Soup failed\n\n{report.get('error', '')}\n"
    columns = ["val_loss"] + [k for k in ("hellaswag_acc", "hellaswag_acc_norm") if k in report["soups"]["uniform"]]
    ingredients = report["ingredients"]
    mean = {k: sum(i[k] for i in ingredients) / len(ingredients) for k in columns}
    rows = [(i["name"], i) for i in ingredients] + [("mean of ingredients", mean)]
    rows += [(f"**{name} soup** ({len(s['members'])} of {len(ingredients)})", s) for name, s in report["soups"].items()]
    lines = ["| model | " + " | ".join(c.replace("_", " ") for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    lines += ["| " + name + " | " + " | ".join(f"{m[c]:.4f}" for c in columns) + " |" for name, m in rows]
    verdict = (f"The {report['method']} soup's held-out loss {report['soup_val_loss']:.4f} is "
               f"{'no worse than' if report['soup_beats_mean'] else 'worse than'} the ingredients' mean "
               f"({report['mean_ingredient_val_loss']:.4f}) and "
               f"{'better than' if report['soup_beats_best'] else 'not better than'} the best ingredient "
               f"({report['best_ingredient_val_loss']:.4f}).")
    failed = [f"- {j['job']} failed and was left out: {j['reason']}" for j in report["failed_jobs"]]
    return "\n".join(["# Model soup", "", *lines, "", verdict, *([""] + failed if failed else []), ""])
