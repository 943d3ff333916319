"""DDP inside Hydra: child ranks run exactly their own job, and each job leaves no process group behind."""

from __future__ import annotations

import os
import sys

import torch.distributed as dist

_DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def job_subprocess_cmd(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning starts each extra DDP rank with: this job's overrides in this job's
    directory. Lightning's own version re-runs `sys.argv`, which inside a multirun (`-m`) makes
    every child rank launch the whole sweep again."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    import __main__

    hydra_cfg = HydraConfig.get()
    if getattr(__main__, "__spec__", None) is not None:
        command = [sys.executable, "-m", __main__.__spec__.name]
    else:
        command = [sys.executable, os.path.abspath(sys.argv[0])]
    command += list(hydra_cfg.overrides.task)
    command += [
        f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"',
        "hydra.output_subdir=null",  # only rank 0 writes the job's .hydra/ config
        f"hydra.job.name={hydra_cfg.job.name}_rank{local_rank}",
    ]
    return command, get_original_cwd()


def install_hydra_ddp_fix() -> None:
    from lightning.pytorch.strategies.launchers import subprocess_script

    subprocess_script._hydra_subprocess_cmd = job_subprocess_cmd


def teardown_distributed(launched_ranks: bool) -> None:
    """Leave the process as a fresh one for the next job of a multirun."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if launched_ranks:  # the variables Lightning's launcher set for the ranks it started
        for name in _DDP_ENV:
            os.environ.pop(name, None)
