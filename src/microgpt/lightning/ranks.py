"""Which process of a distributed job this is, told by the launcher's environment, before any
process group exists."""

from __future__ import annotations

import os

# Set by the first process before Lightning starts its child ranks (they inherit it).
LAUNCHER_PID = "MICROGPT_LAUNCHER_PID"


def is_first_process() -> bool:
    """Global rank 0: Lightning's child ranks, torchrun and SLURM / submitit tasks say otherwise."""
    for name in ("RANK", "SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID"):
        if os.environ.get(name) not in (None, ""):
            return os.environ[name] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def mark_launcher() -> None:
    if is_first_process():
        os.environ[LAUNCHER_PID] = str(os.getpid())


def started_by_first_process() -> bool:
    """A child rank Lightning's launcher started from this job's first process. Its exit status is
    watched by that process, which kills the whole job when a child exits non-zero."""
    return os.environ.get(LAUNCHER_PID) == str(os.getppid())
