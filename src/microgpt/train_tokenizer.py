"""`python -m microgpt.train_tokenizer data=... tokenizer.vocab_size=8192 tokenizer.out=bpe.json`."""

import itertools
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from microgpt.cli.command import hydra_command
from microgpt.core.errors import ConfigError


@hydra_command("train_tokenizer")
def main(cfg: DictConfig) -> None:
    from microgpt.core.bpe import train_bpe
    from microgpt.data.sources import documents_from
    from microgpt.io.config import to_plain
    from microgpt.io.outputs import check_outputs

    settings = to_plain(cfg.tokenizer)
    if settings.get("kind") != "bpe" or not settings.get("out"):
        raise ConfigError("train_tokenizer trains tokenizer=bpe and needs tokenizer.out=<file>")
    out = Path(settings["out"])
    check_outputs("tokenizer.out", [out], overwrite=bool(cfg.overwrite))  # before reading and training
    documents = itertools.chain.from_iterable(documents_from(s) for s in to_plain(cfg.data.sources))
    start = time.perf_counter()
    tokenizer = train_bpe(
        documents, vocab_size=settings["vocab_size"], pattern=settings["pattern"],
        special_tokens=settings.get("special_tokens") or [], min_frequency=settings.get("min_frequency", 0),
        show_progress=bool(settings.get("progress", True)),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(out)
    print(f"trained a {tokenizer.vocab_size}-token BPE ({len(tokenizer.merges)} merges) in "
          f"{time.perf_counter() - start:.1f} s; wrote {out}\n"
          f"use it: python -m microgpt.train tokenizer=bpe tokenizer.path={out}", file=sys.stderr)


if __name__ == "__main__":
    main()
