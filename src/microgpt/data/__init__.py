"""Data: sources (text, files, URLs, HF datasets) -> documents -> tokens -> packed block_size + 1 windows."""

__all__ = ["TextDataModule"]


def __getattr__(name: str):
    # Lazy: the data module pulls in Lightning, which commands like train_tokenizer never need.
    if name == "TextDataModule":
        from microgpt.data.datamodule import TextDataModule

        return TextDataModule
    raise AttributeError(name)
