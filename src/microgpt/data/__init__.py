"""Data: sources (text, files, ...) -> documents -> tokens -> packed block_size + 1 windows."""

from microgpt.data.datamodule import TextDataModule

__all__ = ["TextDataModule"]
