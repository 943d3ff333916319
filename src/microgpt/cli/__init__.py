"""What every `python -m microgpt.<command>` shares: the Hydra entry point, override checks, DDP children."""

from microgpt.cli.command import hydra_command

__all__ = ["hydra_command"]
