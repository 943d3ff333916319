"""Every rank of a resumed run must see rank 0's run directory and resume from the same file."""

from __future__ import annotations

import lightning as L
import torch

from microgpt.core.errors import ConfigError
from microgpt.io.run_dir import lock_token


class SharedRunDirectory(L.Callback):
    """Checked once, when the process group exists and before any checkpoint is loaded: rank 0
    broadcasts its lock token and its choice of checkpoint; a rank that cannot read the token in
    its own copy of the run directory, or picked another checkpoint, fails the run on every rank
    with one line (rather than training from mismatched states, or hanging)."""

    def __init__(self, run_dir: str, resume_from: str | None, problem: str | None = None) -> None:
        self.run_dir = run_dir
        self.resume_from = resume_from
        self.problem = problem  # this rank could not read the checkpoint it was asked for

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.world_size == 1:
            return
        token, resume_from = trainer.strategy.broadcast((lock_token(self.run_dir), self.resume_from), src=0)
        problem = self.problem
        if problem is None and token is not None and lock_token(self.run_dir) != token:
            problem = f"rank {trainer.global_rank} does not see rank 0's files in {self.run_dir}"
        elif problem is None and resume_from != self.resume_from:
            problem = (f"rank {trainer.global_rank} found {self.resume_from or 'no checkpoint'} to resume from, "
                       f"rank 0 {resume_from or 'none'}")
        failed = trainer.strategy.reduce(torch.tensor(float(problem is not None), device=pl_module.device),
                                         reduce_op="sum")
        if failed.item() > 0:
            problem = problem or f"{int(failed.item())} other rank(s) do not see rank 0's files in {self.run_dir}"
            raise ConfigError(f"{problem}: "
                              f"resuming needs the run directory on a filesystem every node shares "
                              f"(point hydra.run.dir / paths.output_dir at shared storage)")
