"""`python -m microgpt.prepare data=... tokenizer=... out=DIR`: pre-tokenize a corpus into shards."""

from __future__ import annotations

from omegaconf import DictConfig

from microgpt.cli.command import hydra_command


@hydra_command("prepare")
def main(cfg: DictConfig) -> None:
    from microgpt.data.prepare import prepare_shards

    prepare_shards(cfg)


if __name__ == "__main__":
    main()
