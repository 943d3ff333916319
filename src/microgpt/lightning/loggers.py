"""Loggers: Weights & Biases around Lightning's WandbLogger, one W&B run per run directory; and a
CSV logger whose metrics.csv survives a resume.

- The run id is kept in `<run dir>/wandb/run_id`, so resuming in the same directory
  (`hydra.run.dir=<run dir> ckpt_path=last`) continues the same W&B run.
- A multirun's jobs share a W&B group (the sweep directory) and each job finishes its run, so the
  next job starts a new one instead of reusing the first (`wandb.run` is process-global).
- The composed config is logged as the run's config; long values (such as a BPE tokenizer's
  merges) are shortened so the W&B config stays readable.
"""

from __future__ import annotations

import configparser
import csv
import netrc
import os
import secrets
import string
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from microgpt.core.errors import ConfigError
from microgpt.io.config import to_plain

RUN_ID_FILE = Path("wandb") / "run_id"
WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")
LONGEST_CONFIG_STRING = 200
LONGEST_CONFIG_LIST = 64


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, minus deleting an existing metrics.csv: a resumed run appends."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])  # new keys later rewrite the header


class ResumableCSVLogger(CSVLogger):
    """`metrics.csv` that survives a resume (Lightning's CSVLogger deletes it when the run restarts
    in the same directory). Rows of steps a resumed run repeats appear twice; readers such as
    `microgpt.plot` keep the latest."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


def shorten_long_values(value: Any) -> Any:
    """A copy of a config with strings and lists too long for a dashboard replaced by a summary."""
    if isinstance(value, dict):
        return {k: shorten_long_values(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if len(value) > LONGEST_CONFIG_LIST:
            return f"<{len(value)} items>"
        return [shorten_long_values(v) for v in value]
    if isinstance(value, str) and len(value) > LONGEST_CONFIG_STRING:
        return f"<{len(value)} characters>"
    return value


class MicroGPTWandbLogger(WandbLogger):
    def log_hyperparams(self, params) -> None:
        super().log_hyperparams(shorten_long_values(dict(params)) if isinstance(params, dict) else params)


def persistent_run_id(run_dir: Path) -> str | None:
    """The W&B run id of this run directory: read back if a previous job here made one, else made
    and saved now. Other ranks return None: only rank 0 ever talks to W&B."""
    path = run_dir / RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    if rank_zero_only.rank != 0:
        return None
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's style
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(run_id + "\n")
    os.replace(tmp, path)  # never a half-written id
    return run_id


def hydra_job_names(run_dir: Path) -> tuple[str, str | None]:
    """(run name, group): `<date>/<time>` for a run; for a multirun job `<time>/<job num> <swept
    overrides>` grouped under the sweep directory, so a sweep's runs sit together on the dashboard."""
    default = (f"{run_dir.parent.name}/{run_dir.name}", None)
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return default
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return default
        sweep = Path(hc.sweep.dir)
        return " ".join([f"{sweep.name}/{hc.job.num}", *swept_overrides(hc.overrides.task)]), sweep.as_posix()
    except ImportError:  # pragma: no cover - hydra is a dependency
        return default


def swept_overrides(job_overrides: Iterable[str]) -> list[str]:
    """This job's values of the keys the command line sweeps (`seed=1` of `seed=1,2`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        typed = OverridesParser.create().parse_overrides([a for a in sys.argv[1:] if not a.startswith("-")])
    except Exception:  # noqa: BLE001 - only a run name is at stake
        return []
    swept = {o.get_key_element() for o in typed if o.is_sweep_override()}
    return [o for o in job_overrides if o.partition("=")[0] in swept]


def wandb_logger(
    save_dir: str,
    project: str = "microgpt",
    entity: str | None = None,
    name: str | None = None,
    group: str | None = None,
    tags: Iterable[str] = (),
    notes: str | None = None,
    offline: bool = False,
    log_model: bool = False,
) -> WandbLogger:
    """A WandbLogger for the run in `save_dir` (see the module docstring). `offline=True` or the
    environment's WANDB_MODE=offline writes `<save_dir>/wandb/offline-run-*` for `wandb sync`."""
    check_wandb_login(offline)
    run_dir = Path(save_dir)
    default_name, default_group = hydra_job_names(run_dir)
    return MicroGPTWandbLogger(
        save_dir=str(run_dir),
        project=project,
        entity=entity,
        name=name or default_name,
        group=group or default_group,
        tags=list(tags or []),
        notes=notes,
        offline=offline,
        log_model=log_model,
        id=persistent_run_id(run_dir),
        resume="allow",
    )


def wandb_settings_of(loggers_cfg) -> list[dict]:
    """The W&B entries of a `logger=` config group (`logger=wandb`, `logger=many`, ...)."""
    targets = ("microgpt.lightning.loggers.wandb_logger", "lightning.pytorch.loggers.WandbLogger")
    return [dict(c) for c in (loggers_cfg or {}).values() if c is not None and c.get("_target_") in targets]


def check_wandb_login(offline: bool = False) -> None:
    """Online W&B with no API key anywhere would stop at W&B's login prompt (forever, in a batch
    job) or fail with a traceback: refuse before anything is trained. Only local files and the
    environment are read; nothing is sent."""
    mode = os.environ.get("WANDB_MODE", "online").strip().lower()
    if mode not in WANDB_MODES:
        raise ConfigError(f"WANDB_MODE={mode!r} is not a W&B mode; use one of {', '.join(WANDB_MODES)} "
                          f"(offline: no login or network needed), or unset it")
    if offline or mode in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_DISABLED", "").lower() in ("true", "1"):
        return
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return
    if os.environ.get("WANDB_ANONYMOUS", "").lower() in ("allow", "must") or _netrc_has_wandb() or _settings_have_key():
        return
    raise ConfigError("logger=wandb needs a W&B login and none was found (no WANDB_API_KEY, no `wandb login` "
                      "entry in ~/.netrc): run `wandb login` or set WANDB_API_KEY; or train offline with "
                      "WANDB_MODE=offline (upload later with `wandb sync`), or use logger=csv")


def _netrc_has_wandb() -> bool:
    path = Path(os.environ.get("NETRC") or Path.home() / (".netrc" if os.name != "nt" else "_netrc"))
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    try:
        return bool(netrc.netrc(str(path)).authenticators(host))
    except FileNotFoundError:
        return False
    except (netrc.NetrcParseError, OSError):
        return True  # a file W&B may still read: let W&B decide


def _settings_have_key() -> bool:
    """An `api_key` in W&B's global settings file (`wandb login` on some setups writes it there)."""
    folder = Path(os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb")
    parser = configparser.ConfigParser()
    try:
        parser.read(folder / "settings")
    except configparser.Error:
        return True
    return any(parser.has_option(section, "api_key") for section in parser.sections())


@rank_zero_only
def log_run_config(loggers: Iterable[Logger], cfg) -> None:
    """Record the whole composed config (data, trainer, callbacks too, not just the module's
    hyper-parameters) in every W&B run."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_hyperparams(to_plain(cfg))


def finish_wandb_runs(loggers: Iterable[Logger], failed: bool = False) -> None:
    """Close this job's W&B runs (Lightning leaves them open), so a multirun's next job starts its own."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger._experiment.finish(exit_code=1 if failed else 0)
