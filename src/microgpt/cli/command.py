"""The decorator every `python -m microgpt.<command>` uses: Hydra, plus one-line user errors."""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback

from microgpt.cli.ddp import command_of, set_job_command
from microgpt.cli.overrides import CONFIG_DIR, literal_text, quote_numeric_choices
from microgpt.core.errors import Interrupted, MicroGPTError, Requeued, debug_enabled, report_user_errors
from microgpt.io.run_dir import FAILED_MARKER, _one_line, failed_jobs
from microgpt.lightning.ranks import is_first_process

log = logging.getLogger(__name__)

# Exit statuses of a job that stopped without failing: success, Ctrl-C (128 + 2), SIGTERM (128 + 15).
_NOT_FAILED = (None, 0, 130, 143)
_failed_jobs: list[str] = []  # filled in the launching process by FailedJobs at the end of a multirun


def hydra_command(config_name: str) -> Callable:
    """`@hydra.main` over conf/<config_name>.yaml, with bad overrides and MicroGPTErrors reported
    as one `error: ...` line and exit status 2 (MICROGPT_DEBUG=1 shows tracebacks).

    In a multirun a failing job does not stop the sweep: it is reported, marked FAILED in its
    directory (for the soup callback, which soups the survivors), and the command exits 1 at the end,
    whichever launcher ran the jobs.
    """

    def decorate(task: Callable) -> Callable:
        job = runs_as(command_of(task), keep_sweeping(report_user_errors(task)))
        hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(job)

        @functools.wraps(task)
        @report_user_errors
        def entry_point():
            from microgpt.cli.check import check_command_line, flags_first

            if any(a in ("-h", "--help") for a in sys.argv[1:]):
                from microgpt.cli.usage import help_text

                print(help_text(config_name))
                return None
            argv = quote_numeric_choices(flags_first(literal_text(sys.argv[1:])))
            composed = check_command_line(config_name, argv)
            if composed is not None and "paths" in composed and is_first_process():
                from microgpt.io.run_dir import refuse_if_in_use

                # Before Hydra writes .hydra/ and the log into a directory another run is using.
                run_dir = planned_run_dir(composed)
                if run_dir is not None:
                    refuse_if_in_use(run_dir)
            sys.argv[1:] = argv
            result = hydra_main()
            if _failed_jobs:
                print(f"error: {len(_failed_jobs)} job(s) of the multirun failed: {', '.join(_failed_jobs)}",
                      file=sys.stderr, flush=True)
                sys.exit(1)
            return result

        return entry_point

    return decorate


def planned_run_dir(composed) -> str | None:
    """The run directory, or None where it names ${hydra:...} values that exist only inside a
    running job (the job takes the directory's lock itself then)."""
    from omegaconf.errors import InterpolationResolutionError

    try:
        return composed.hydra.run.dir
    except InterpolationResolutionError:
        return None


def runs_as(command: list[str], task: Callable) -> Callable:
    """Record, in whichever process runs the job, the command it belongs to (DDP starts its other
    ranks with it). `command` travels with the job: joblib and submitit pickle this closure."""

    @functools.wraps(task)
    def job(cfg):
        set_job_command(command)
        return task(cfg)

    return job


def keep_sweeping(task: Callable) -> Callable:
    """In a multirun, a failing job writes its reason into <job dir>/FAILED and the sweep goes on."""

    @functools.wraps(task)
    def job(cfg):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return task(cfg)
        marker = Path(hydra_cfg.runtime.output_dir) / FAILED_MARKER
        marker.unlink(missing_ok=True)  # a rerun into the same sweep directory: the old failure is history
        try:
            return task(cfg)
        except (Exception, SystemExit) as e:  # report_user_errors turns user mistakes into SystemExit
            if stopped_without_failing(e):
                raise  # the whole sweep obeys a signal; a requeued job runs again later
            reason = failure_reason(e)
            marker.write_text(reason + "\n")
            log.error("job #%s failed (%s); the sweep goes on", hydra_cfg.job.num, reason, exc_info=debug_enabled())
            return None

    return job


def stopped_without_failing(e: BaseException) -> bool:
    """Success, an interrupt that saved a checkpoint, or a pre-empted job handed back to the scheduler."""
    if isinstance(e, (Requeued, Interrupted)):
        return True
    return isinstance(e, SystemExit) and e.code in _NOT_FAILED


def failure_reason(e: BaseException) -> str:
    """The job's last error line. report_user_errors has already printed a MicroGPTError as
    `error: <message>` and exited while handling it, so the exit's context is that error."""
    if isinstance(e, SystemExit) and isinstance(e.__context__, MicroGPTError):
        e = e.__context__
    if isinstance(e, MicroGPTError):
        return _one_line(str(e))
    if isinstance(e, SystemExit):
        return _one_line(e.code) if isinstance(e.code, str) else f"exit status {e.code}"
    return _one_line(f"{type(e).__name__}: {e}")


class FailedJobs(Callback):
    """Hydra callback: after a multirun, find its failed jobs by their markers. Under the joblib and
    submitit launchers jobs run in other processes, so the launching process cannot see them fail."""

    started = 0.0

    def on_multirun_start(self, config, **kwargs) -> None:
        self.started = time.time()

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        # Hydra's sweeper writes multirun.yaml as the run begins: its time and the markers' are both
        # the file server's, whatever the clocks of the cluster's nodes say.
        stamp = sweep_dir / "multirun.yaml"
        _failed_jobs[:] = failed_jobs(sweep_dir, since=stamp.stat().st_mtime if stamp.is_file() else self.started)
