"""`python -m microgpt.train`: compose the config, then train."""

from omegaconf import DictConfig

from microgpt.cli import hydra_command


@hydra_command("train")
def main(cfg: DictConfig) -> float | None:
    from microgpt.distributed import install_hydra_ddp_fix
    from microgpt.training import train  # heavy imports after Hydra has parsed the command line

    install_hydra_ddp_fix()
    return train(cfg).get("val/loss")


if __name__ == "__main__":
    main()
