"""DDP inside Hydra: Lightning's child ranks run exactly their own job, from the command's own module."""

from __future__ import annotations

import os
import sys

_command: list[str] = []  # the job's command, recorded by set_job_command in the process that runs it


def command_of(task) -> list[str]:
    """How to start the command `task` (a `@hydra_command` function) belongs to. Called when the
    command is defined, in the process the user started: later, in a joblib (loky) or submitit
    worker, `__main__` and `sys.argv` are the worker's, not the command's."""
    return ["-m", task.__module__] if task.__module__ != "__main__" else _main_command()


def _main_command() -> list[str]:
    import __main__

    spec = getattr(__main__, "__spec__", None)
    return ["-m", spec.name] if spec is not None else [os.path.abspath(sys.argv[0])]  # `python script.py`


def set_job_command(command: list[str]) -> None:
    """Record the command of the job this process runs (each job does, in whichever process runs it)."""
    _command[:] = command


def job_subprocess_cmd(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning starts each extra DDP rank with: this job's command, config and
    overrides, in this job's directory. Lightning's own version re-runs `sys.argv`, which inside a
    multirun (`-m`) makes every child rank launch the whole sweep again, and inside a joblib worker
    starts joblib's worker module."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    from microgpt.cli.overrides import typed_text

    hydra_cfg = HydraConfig.get()
    # A script's own @hydra.main records no command: its __main__ is right unless a joblib worker runs it.
    # The words as the user typed them: the child's own entry point quotes free text again.
    overrides = [typed_text(o) for o in hydra_cfg.overrides.task]
    command = [sys.executable, *(_command or _main_command()), *config_args(hydra_cfg), *overrides]
    command += [
        f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"',
        "hydra.output_subdir=null",  # only rank 0 writes the job's .hydra/ config
        f"hydra.job.name={hydra_cfg.job.name}_rank{local_rank}",
    ]
    return command, get_original_cwd()


def config_args(hydra_cfg) -> list[str]:
    """The options that chose where the job's config came from (`--config-path/-cp`,
    `--config-name/-cn`, `--config-dir`, `hydra.searchpath=`), so a child rank composes the same config."""
    args = []
    for source in hydra_cfg.runtime.config_sources:
        path = source.path.removeprefix("file://")
        if source.provider == "main":
            args.append(f"--config-path={path}")
        elif source.provider == "command-line":
            args.append(f"--config-dir={path}")
    args.append(f"--config-name={hydra_cfg.job.config_name}")
    return args + [o for o in hydra_cfg.overrides.hydra if o.lstrip("+~").startswith("hydra.searchpath")]


def install_hydra_ddp_fix() -> None:
    from lightning.pytorch.strategies.launchers import subprocess_script

    subprocess_script._hydra_subprocess_cmd = job_subprocess_cmd
