"""A run directory: one run at a time (a lock), and the checkpoint a resumed run starts from."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import socket
import time
from pathlib import Path

from microgpt.core.errors import CheckpointError, ConfigError
from microgpt.io.checkpoints import read_checkpoint

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


class RunDirLock:
    """An exclusive lock on `<run dir>/run.lock`, held for the whole run.

    The operating system drops the lock when its process dies (`flock`), so a lock left by a
    killed run is simply taken over. The file names its holder (host, pid, start time) for the
    message a second run gets, and a random token other ranks read to check that they see this
    directory (a shared filesystem).
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.token = secrets.token_hex(8)
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise ConfigError(f"{self.path.parent} is in use by another run ({holder(self.path)}); wait for it "
                              f"to finish or stop it, or give this run its own directory (hydra.run.dir=...)") from e
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "token": self.token}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def refuse_if_in_use(run_dir: str | os.PathLike) -> None:
    """The lock's error, now, if a live run holds `run_dir` (nothing is created)."""
    path = Path(run_dir) / LOCK_FILE
    if path.is_file():
        RunDirLock(run_dir).acquire().release()


def holder(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text())
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def lock_token(run_dir: str | os.PathLike) -> str | None:
    try:
        return json.loads((Path(run_dir) / LOCK_FILE).read_text()).get("token")
    except (OSError, ValueError, AttributeError):
        return None


def checkpoint_step(path: Path) -> int:
    """The training step a checkpoint holds; CheckpointError when it is unreadable."""
    return int(read_checkpoint(path).get("global_step", -1))


def newest_checkpoint(checkpoints: Path) -> tuple[Path, int] | None:
    """The readable checkpoint with the highest training step (not the newest file: a copy or a
    `touch` changes modification times); corrupt ones are reported and skipped. On a tie,
    last.ckpt wins, then the step files, so the choice is the same on every rank. Returns
    (path, step): each file is read once."""
    best: tuple[int, int, str] | None = None
    for path in checkpoints.glob("*.ckpt"):
        try:
            step = checkpoint_step(path)
        except CheckpointError as e:
            log.warning("skipping %s", e)
            continue
        rank = 2 if path.name == "last.ckpt" else 1 if path.name.startswith("step") else 0
        key = (step, rank, path.name)
        if best is None or key > best:
            best = key
    return (checkpoints / best[2], best[0]) if best else None


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str) -> str | None:
    """`last`: this run directory's last.ckpt; `auto`: its readable checkpoint with the highest
    step, if any; anything else is a path that must exist and be readable."""
    if not ckpt_path:
        return None
    checkpoints = Path(output_dir) / "checkpoints"
    if ckpt_path == "auto":
        found = newest_checkpoint(checkpoints) if checkpoints.is_dir() else None
        if found is None:
            log.info("no checkpoint to resume in %s: starting fresh", checkpoints)
            return None
        path, step = found
        log.info("resuming from %s (step %d)", path, step)
        return str(path)
    if ckpt_path == "last":
        path = checkpoints / "last.ckpt"
        if not path.is_file():
            raise CheckpointError(
                f"no checkpoint at {path}; to resume a run pass its directory "
                f"(hydra.run.dir=<run dir> ckpt_path=last) or ckpt_path=<file.ckpt>"
            )
    else:
        path = Path(ckpt_path)
    read_checkpoint(path)  # fail here, clearly, on a missing or corrupt file
    return str(path)


FAILED_MARKER = "FAILED"  # in a multirun job's directory while its latest run has failed; the text says why


def _one_line(text: str) -> str:
    return " ".join(text.split())


def read_failure(job_dir: Path) -> str | None:
    """Why the job's latest run failed, or None if it did not."""
    marker = job_dir / FAILED_MARKER
    return (marker.read_text().strip() or "failed") if marker.is_file() else None


def failed_jobs(sweep_dir: Path, since: float = 0.0) -> list[str]:
    """`#<job dir> (<reason>)` for each job of `sweep_dir` marked FAILED at or after `since`: a rerun
    into an old sweep directory clears the markers of the jobs it runs, not of those it does not."""
    markers = [m for m in sweep_dir.rglob(FAILED_MARKER) if m.is_file() and m.stat().st_mtime >= since]
    dirs = sorted((m.parent for m in markers), key=lambda d: (len(d.parts), len(d.name), d.name))  # 9 before 10
    return [f"#{d.relative_to(sweep_dir)} ({read_failure(d)})" for d in dirs]
