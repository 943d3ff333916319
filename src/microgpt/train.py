"""`python -m microgpt.train`: compose the config, then train."""

from omegaconf import DictConfig

from microgpt.cli import hydra_command


@hydra_command("train")
def main(cfg: DictConfig) -> float | None:
    from microgpt.training import train  # heavy imports after Hydra has parsed the command line

    return train(cfg).get("val/loss")


if __name__ == "__main__":
    main()
