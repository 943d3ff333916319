"""Model soups (Wortsman et al. 2022): average the weights of models fine-tuned from one start.

`uniform` is the element-wise mean of every ingredient; `greedy` adds ingredients in order of
held-out loss, keeping each only if the running average's held-out loss improves. Every
ingredient and every soup is evaluated on the same held-out data, and the report says whether
the soup beat its ingredients. `SoupCallback` does all of this at the end of a Hydra multirun;
`python -m microgpt.soup ckpts=[...]` does it for any checkpoints.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from microgpt.cli import hydra_command, read_failure
from microgpt.checkpoint import STATE_PREFIX, model_from_checkpoint, read_checkpoint
from microgpt.errors import CheckpointError, ConfigError, MicroGPTError
from microgpt.model import GPT

log = logging.getLogger(__name__)

METHODS = ("uniform", "greedy")


@dataclass
class Ingredient:
    name: str
    path: Path
    ckpt: dict = field(repr=False)
    metrics: dict = field(default_factory=dict)

    @property
    def state(self) -> dict[str, torch.Tensor]:
        return self.ckpt["state_dict"]


def read_ingredients(paths: list[str | Path], names: list[str] | None = None) -> list[Ingredient]:
    ingredients = [Ingredient(names[i] if names else Path(p).name, Path(p), read_checkpoint(p))
                   for i, p in enumerate(paths)]
    check_compatible(ingredients)
    return ingredients


def check_compatible(ingredients: list[Ingredient]) -> None:
    """Refuse to average models that are not the same network with the same tokenizer."""
    if len(ingredients) < 2:
        raise ConfigError(f"a soup needs at least two ingredients, got {len(ingredients)}")
    first = ingredients[0]
    base_hp = first.ckpt.get("hyper_parameters") or {}
    for other in ingredients[1:]:
        hp = other.ckpt.get("hyper_parameters") or {}
        for key in ("model", "tokenizer"):
            if hp.get(key) != base_hp.get(key):
                raise CheckpointError(f"cannot soup {first.name} and {other.name}: their {key} differs "
                                      f"({_difference(base_hp.get(key), hp.get(key))})")
        if first.state.keys() != other.state.keys():
            extra = sorted(set(first.state) ^ set(other.state))[:3]
            raise CheckpointError(f"cannot soup {first.name} and {other.name}: different parameters ({extra})")
        for k, t in first.state.items():
            if t.shape != other.state[k].shape or t.dtype != other.state[k].dtype:
                raise CheckpointError(f"cannot soup {first.name} and {other.name}: {k} is {tuple(t.shape)} {t.dtype} "
                                      f"vs {tuple(other.state[k].shape)} {other.state[k].dtype}")


def _difference(a, b) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return ", ".join(f"{k}={a.get(k)!r} vs {b.get(k)!r}" if len(repr(a.get(k))) < 40 else f"{k} differs" for k in keys[:3])
    return "different settings"


def average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean: floating tensors averaged in fp32 and cast back; integer buffers from the first."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            total = torch.zeros(first.shape, dtype=torch.float32)
            for s in states:
                total += s[key].float()
            out[key] = (total / len(states)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def greedy_soup(ingredients: list[Ingredient], loss_of: Callable[[dict], float]) -> tuple[dict, list[str], float]:
    """Wortsman et al.'s greedy soup, by held-out loss. Returns the state, its members, its loss."""
    ranked = sorted(ingredients, key=lambda i: i.metrics["val_loss"])
    members, best_loss = [ranked[0]], ranked[0].metrics["val_loss"]
    for candidate in ranked[1:]:
        loss = loss_of(average([m.state for m in [*members, candidate]]))
        log.info("greedy soup: adding %s gives %.4f (current %.4f)", candidate.name, loss, best_loss)
        if loss < best_loss:
            members.append(candidate)
            best_loss = loss
    return average([m.state for m in members]), [m.name for m in members], best_loss


def soup_checkpoint(base: Ingredient, state: dict, method: str, members: list[Ingredient]) -> dict:
    """A checkpoint `load_model`, `generate` and `eval` accept; it records how it was made.
    (No optimizer state: a soup is a model to use or fine-tune from with init_from, not a run to resume.)"""
    return {
        "state_dict": state,
        "hyper_parameters": base.ckpt["hyper_parameters"],
        "global_step": base.ckpt.get("global_step", 0),
        "pytorch-lightning_version": base.ckpt.get("pytorch-lightning_version"),
        "soup": {"method": method, "ingredients": [str(m.path) for m in members]},
    }


class Evaluator:
    """Held-out loss (and HellaSwag when enabled) of any state dict, on data fixed once."""

    def __init__(self, template: Ingredient, data: DictConfig, seed: int, val_batches: int | None,
                 hellaswag: dict | None = None) -> None:
        from microgpt.training import build_datamodule

        self.model, self.tokenizer = model_from_checkpoint(template.ckpt, source=template.name)
        block = min(data.get("block_size") or self.model.config.block_size, self.model.config.block_size)
        datamodule = build_datamodule(data, self.tokenizer, seed, block_size=block)
        datamodule.load()
        self.batches = list(datamodule.val_dataloader())[:val_batches] if val_batches else list(datamodule.val_dataloader())
        self.hellaswag = hellaswag if hellaswag and hellaswag.get("enabled") else None

    def load(self, state: dict) -> GPT:
        self.model.load_state_dict({k[len(STATE_PREFIX):]: v for k, v in state.items() if k.startswith(STATE_PREFIX)},
                                   strict=False)
        return self.model

    def loss(self, state: dict) -> float:
        from microgpt.evals.perplexity import held_out_loss

        return held_out_loss(self.load(state), self.batches).loss

    def metrics(self, state: dict) -> dict:
        out = {"val_loss": self.loss(state)}
        if self.hellaswag:
            from microgpt.evals.hellaswag import evaluate_hellaswag

            result = evaluate_hellaswag(self.load(state), self.tokenizer, source=self.hellaswag.get("source"),
                                        limit=self.hellaswag.get("limit"), cache_dir=self.hellaswag.get("cache_dir"))
            out.update({"hellaswag_acc": result.acc, "hellaswag_acc_norm": result.acc_norm})
        return out


def make_soup(ingredients: list[Ingredient], evaluator: Evaluator, method: str, out_dir: Path,
              failed_jobs: list[dict] | None = None) -> dict:
    """Evaluate ingredients, cook the soup(s), write soup.ckpt, soup_report.json and soup_report.md."""
    if method not in METHODS:
        raise ConfigError(f"soup method must be one of {METHODS}, got {method!r}")
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


def sweep_jobs(sweep_dir: Path) -> tuple[list[tuple[str, Path]], list[dict]]:
    """(name, final checkpoint) of each finished job of a sweep, and the jobs that failed.
    A job is named by the overrides that set it apart from the others (e.g. `seed=2`)."""
    jobs = sorted((d for d in sweep_dir.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name))
    overrides = {j: job_overrides(j) for j in jobs}
    shared = set.intersection(*(set(o) for o in overrides.values())) if overrides else set()
    finished, failed = [], []
    for job in jobs:
        own = " ".join(o for o in overrides[job] if o not in shared)
        name = f"job {job.name}" + (f" ({own})" if own else "")
        reason, ckpt = read_failure(job), job / "checkpoints" / "last.ckpt"
        if reason:
            failed.append({"job": name, "reason": reason})
        elif not ckpt.is_file():
            failed.append({"job": name, "reason": "no final checkpoint (checkpoints/last.ckpt)"})
        else:
            finished.append((name, ckpt))
    return finished, failed


def job_overrides(job: Path) -> list[str]:
    """A job's overrides as typed: `${seed}` in one is text here, not an interpolation to resolve."""
    path = job / ".hydra" / "overrides.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.is_file() else []


class SoupCallback(Callback):
    """Hydra callback: at the end of a multirun, soup the jobs' final checkpoints.

    Hydra only warns when a callback raises, so failure here is reported on stderr and ends the
    command with exit status 1, and the report says why; a silent missing soup is impossible.
    """

    def __init__(self, method: str = "uniform", val_batches: int | None = None,
                 hellaswag: dict | None = None, min_ingredients: int = 2) -> None:
        self.method = method
        self.val_batches = val_batches
        self.hellaswag = dict(hellaswag) if hellaswag else None
        self.min_ingredients = min_ingredients

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            report = self.soup_sweep(sweep_dir)
        except Exception as e:  # noqa: BLE001 - every failure must end the command loudly
            message = " ".join(str(e).split()) if isinstance(e, MicroGPTError) else f"{type(e).__name__}: {e}"
            write_report(sweep_dir, {"status": "failed", "error": message})
            print(f"error: the soup failed: {message}", file=sys.stderr, flush=True)
            sys.exit(1)
        print(report_markdown(report), flush=True)
        if report["failed_jobs"]:
            print(f"error: {len(report['failed_jobs'])} job(s) of the sweep failed; the soup used the other "
                  f"{len(report['ingredients'])} (see {sweep_dir / 'soup_report.md'})", file=sys.stderr, flush=True)
            sys.exit(1)

    def soup_sweep(self, sweep_dir: Path) -> dict:
        finished, failed = sweep_jobs(sweep_dir)
        for job in failed:
            log.warning("job %s failed: %s", job["job"], job["reason"])
        if len(finished) < self.min_ingredients:
            raise ConfigError(f"only {len(finished)} of {len(finished) + len(failed)} jobs finished; a soup needs "
                              f"at least {self.min_ingredients}")
        ingredients = read_ingredients([p for _, p in finished], [n for n, _ in finished])
        job_cfg = OmegaConf.load(finished[0][1].parent.parent / ".hydra" / "config.yaml")
        evaluator = Evaluator(ingredients[0], job_cfg.data, job_cfg.seed, self.val_batches, self.hellaswag)
        return make_soup(ingredients, evaluator, self.method, sweep_dir, failed)


@hydra_command("soup")
def main(cfg: DictConfig) -> None:
    """`python -m microgpt.soup ckpts=[a.ckpt,b.ckpt,c.ckpt] method=uniform|greedy data=...`"""
    from microgpt.config import to_plain

    paths = to_plain(cfg.ckpts)
    if not isinstance(paths, list) or not paths:
        raise ConfigError("ckpts must be a list of checkpoint paths: ckpts=[a.ckpt,b.ckpt]")
    ingredients = read_ingredients(paths)
    evaluator = Evaluator(ingredients[0], cfg.data, cfg.seed, cfg.val_batches, to_plain(cfg.hellaswag))
    report = make_soup(ingredients, evaluator, cfg.method, Path(cfg.out))
    print(report_markdown(report))
    print(f"soup written to {report['checkpoint']}")


if __name__ == "__main__":
    main()
