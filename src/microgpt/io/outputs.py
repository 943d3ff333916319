"""Checking where a command will write, before it does the work: no hour of evaluation lost to a
path that cannot be written, and no earlier result replaced unless the user said so."""

from __future__ import annotations

import os
from pathlib import Path

from microgpt.core.errors import ConfigError


def check_outputs(setting: str, files: list[Path], overwrite: bool = False) -> None:
    """Refuse (ConfigError naming the path and the fix) when any of `files` already exists and
    `overwrite` is false, or when their folder cannot be made or written. Nothing is created here."""
    existing = [f for f in files if f.exists()]
    if existing and not overwrite:
        names = ", ".join(str(f) for f in existing[:3])
        raise ConfigError(f"{setting} would replace {names}; pass overwrite=true to replace it, "
                          f"or choose another {setting}=<path>")
    for f in files:
        if f.is_dir():
            raise ConfigError(f"{setting}: {f} is a directory; give the path of a file to write")
    for folder in {f.parent for f in files}:
        check_writable_dir(setting, folder)


def check_writable_dir(setting: str, folder: Path) -> None:
    """`folder` exists as a writable directory, or could be created (its nearest existing ancestor
    is a writable directory)."""
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        where = f"{ancestor} is a file" if ancestor == folder else f"cannot create {folder}: {ancestor} is a file"
        raise ConfigError(f"{setting}: {where}, not a directory; choose another {setting}=<path>")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        action = "write to" if ancestor == folder else f"create {folder} in"
        raise ConfigError(f"{setting}: cannot {action} {ancestor} (permission denied); "
                          f"choose a folder you can write to with {setting}=<path>")
