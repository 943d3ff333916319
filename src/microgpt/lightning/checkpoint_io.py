"""Checkpoint writes that a crash, a full disk or a kill cannot half-finish."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from microgpt.core.errors import CheckpointError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file beside the target, fsync, then rename over it: readers (and a
    resumed run) see the previous complete checkpoint or the new one, never a torn file."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if "://" in str(path):  # remote storage: its own semantics
            return super().save_checkpoint(checkpoint, path, storage_options)
        target = Path(path)
        tmp = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
            raise CheckpointError(f"could not write checkpoint {target} ({write_failure(e, target.parent)}); "
                                  f"the previous checkpoint is intact; free disk space or fix permissions") from e
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)


def write_failure(error: Exception, folder: Path) -> str:
    """Why a write failed, in words: torch's zip writer hides ENOSPC behind `unexpected pos ...`."""
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return first_line
    if free < 1 << 20:
        return f"no space left on the device: {free:,} bytes free"
    return f"{first_line}; {free:,} bytes free on that disk"
