"""Checkpoint writes that a crash, a full disk or a kill cannot half-finish."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from microgpt.errors import CheckpointError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file beside the target, fsync, then rename over it: readers (and a
    resumed run) see the previous complete checkpoint or the new one, never a torn file."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):  # remote storage: its own semantics
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as e:
            raise CheckpointError(f"could not write checkpoint {target} ({e.strerror or e}); the previous "
                                  f"checkpoint is intact; free disk space or fix permissions") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
