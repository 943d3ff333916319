"""DDP inside Hydra: child ranks run exactly their own job, and each job leaves no process group behind.

Light to import (torch loads only when a process group is torn down): every command records here
how it was started, before it knows whether it will train on several ranks.
"""

from __future__ import annotations

import os

_DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

# How this process's command was started: ["-m", "microgpt.train"] or ["/path/to/script.py"].


def teardown_distributed(launched_ranks: bool) -> None:
    """Leave the process as a fresh one for the next job of a multirun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if launched_ranks:  # the variables Lightning's launcher set for the ranks it started
        for name in _DDP_ENV:
            os.environ.pop(name, None)
