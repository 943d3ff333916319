"""The run's checkpoint files: one writer per file, never a `-v1` copy, valid after a move or copy."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, adjusted for run directories that are resumed, moved and copied.

    - No version counter: Lightning writes `last-v1.ckpt` / `best-v1.ckpt` beside an existing file it
      did not write in this process (after a resume, in a copied directory), and `last.ckpt` then
      stays old while every reader takes it for the newest state.
    - `last.ckpt` (when `save_last`) holds the newest step at the end of training, including a stop
      on a signal and a `max_steps` that is not a multiple of `every_n_train_steps`.
    - A checkpoint from the same run in another place (moved or copied directory) restores the
      callback's bookkeeping (best score, kept files), re-rooted in this directory; Lightning drops it.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(**kwargs)
        self._last_file_step: int | None = None  # the step last.ckpt holds, once this process wrote it

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_file_step = trainer.global_step

    def save_last_now(self, trainer: L.Trainer) -> None:
        """Bring last.ckpt to the current step (every rank calls this: sharded saves gather)."""
        if self.save_last and trainer.global_step > 0 and self._last_file_step != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save_last_now(trainer)

    def load_state_dict(self, state_dict: dict) -> None:
        saved_dir = state_dict.get("dirpath")
        if saved_dir and self.dirpath and saved_dir != self.dirpath:
            state_dict = rerooted(state_dict, saved_dir, self.dirpath)
        super().load_state_dict(state_dict)


def rerooted(state: dict, old: str, new: str) -> dict:
    """The callback state with paths under `old` moved under `new` (a file still named for the old
    place would be deleted or compared there)."""

    def move(value):
        if isinstance(value, str) and value and Path(value).parent == Path(old):
            return str(Path(new) / Path(value).name)
        return value

    out = {key: move(value) for key, value in state.items()}
    if isinstance(state.get("best_k_models"), dict):
        out["best_k_models"] = {move(path): score for path, score in state["best_k_models"].items()}
    out["dirpath"] = new
    return out
