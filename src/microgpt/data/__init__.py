"""Data: sources (text, files, URLs, HF datasets) -> documents -> tokens -> packed block_size + 1 windows."""
