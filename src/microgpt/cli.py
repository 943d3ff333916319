"""The decorator every `python -m microgpt.<command>` uses: Hydra, plus one-line user errors."""

from __future__ import annotations

import functools
import sys
from typing import Callable

import hydra

from microgpt.config import CONFIG_DIR, check_command_line
from microgpt.errors import report_user_errors


def hydra_command(config_name: str) -> Callable:
    """`@hydra.main` over conf/<config_name>.yaml, with bad overrides and MicroGPTErrors reported
    as one `error: ...` line and exit status 2 (MICROGPT_DEBUG=1 shows tracebacks)."""

    def decorate(task: Callable) -> Callable:
        hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(
            report_user_errors(task)
        )

        @functools.wraps(task)
        @report_user_errors
        def entry_point():
            check_command_line(config_name, sys.argv[1:])
            return hydra_main()

        return entry_point

    return decorate
