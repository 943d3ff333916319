"""The Hydra callback that soups a multirun's jobs when the sweep ends."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from microgpt.core.errors import ConfigError, MicroGPTError
from microgpt.io.run_dir import read_failure
from microgpt.souping.average import read_ingredients
from microgpt.souping.evaluate import Evaluator
from microgpt.souping.report import make_soup, report_markdown, write_report

log = logging.getLogger(__name__)


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
