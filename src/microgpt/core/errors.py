"""User-facing errors: one clear line on stderr and a non-zero exit, never a bare traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

EXIT_USER_ERROR = 2


class MicroGPTError(Exception):
    """A problem the user can fix; its message names the problem and the fix."""


class ConfigError(MicroGPTError, ValueError):
    """A setting that cannot work (bad size, unknown name, out-of-range value)."""


class DataError(MicroGPTError):
    """Missing, empty or unreadable training data."""


class CheckpointError(MicroGPTError):
    """A checkpoint that does not exist, is corrupt, or does not match the requested model."""


class TrainingDiverged(MicroGPTError):
    """The loss or gradients became NaN/inf; the run stopped before the bad update."""


class Interrupted(MicroGPTError):
    """The run was stopped by a signal after saving a checkpoint (exit status 128 + the signal:
    143 for SIGTERM, 130 for Ctrl-C)."""

    exit_code = 143

    def __init__(self, message: str, exit_code: int = 143) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Requeued(SystemExit):
    """A pre-empted job (SLURM / Hydra's submitit launcher) that saved its checkpoint and was handed
    back to the scheduler to run again: the process exits, yet the job has not failed."""


def debug_enabled() -> bool:
    return os.environ.get("MICROGPT_DEBUG", "") not in ("", "0") or os.environ.get("HYDRA_FULL_ERROR") == "1"


def require_positive_int(name: str, value) -> int:
    """`value` as a positive int, or a ConfigError naming the setting (catches `x=abc` overrides too)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def report_user_errors(fn: F) -> F:
    """Turn a MicroGPTError raised by an entry point into `error: <message>` and exit status 2.

    MICROGPT_DEBUG=1 (or HYDRA_FULL_ERROR=1) re-raises to show the whole traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MicroGPTError as e:
            if debug_enabled():
                raise
            message = " ".join(str(e).split())  # one line, whatever the message held
            label = "stopped" if isinstance(e, Interrupted) else "error"
            print(f"{label}: {message}", file=sys.stderr, flush=True)
            sys.exit(getattr(e, "exit_code", EXIT_USER_ERROR))

    return wrapper  # type: ignore[return-value]
