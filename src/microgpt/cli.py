"""The decorator every `python -m microgpt.<command>` uses: Hydra, plus one-line user errors."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Callable

import hydra

from microgpt.config import CONFIG_DIR, check_command_line, quote_numeric_choices
from microgpt.errors import Interrupted, report_user_errors

log = logging.getLogger(__name__)

FAILED_MARKER = "FAILED"  # written into a multirun job's directory when that job fails
_failed_jobs: list[str] = []


def hydra_command(config_name: str) -> Callable:
    """`@hydra.main` over conf/<config_name>.yaml, with bad overrides and MicroGPTErrors reported
    as one `error: ...` line and exit status 2 (MICROGPT_DEBUG=1 shows tracebacks).

    In a multirun a failing job does not stop the sweep: it is reported, marked FAILED in its
    directory (for the soup callback, which soups the survivors), and the command exits 1 at the end.
    """

    def decorate(task: Callable) -> Callable:
        hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(
            keep_sweeping(report_user_errors(task))
        )

        @functools.wraps(task)
        @report_user_errors
        def entry_point():
            sys.argv[1:] = quote_numeric_choices(sys.argv[1:])
            check_command_line(config_name, sys.argv[1:])
            result = hydra_main()
            if _failed_jobs:
                print(f"error: {len(_failed_jobs)} job(s) of the multirun failed: {', '.join(_failed_jobs)}",
                      file=sys.stderr, flush=True)
                sys.exit(1)
            return result

        return entry_point

    return decorate


def keep_sweeping(task: Callable) -> Callable:
    @functools.wraps(task)
    def job(cfg):
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return task(cfg)
        try:
            return task(cfg)
        except (Exception, SystemExit) as e:  # report_user_errors turns user mistakes into SystemExit
            if isinstance(e, SystemExit) and (not e.code or e.code == Interrupted.exit_code):
                raise  # success, or a SIGTERM the whole sweep must obey
            reason = f"exit status {e.code}" if isinstance(e, SystemExit) else f"{type(e).__name__}: {e}"
            job_dir = Path(hydra_cfg.runtime.output_dir)
            (job_dir / FAILED_MARKER).write_text(reason + "\n")
            _failed_jobs.append(f"#{hydra_cfg.job.num} ({reason})")
            log.error("job #%s failed (%s); the sweep goes on", hydra_cfg.job.num, reason)
            return None

    return job
