"""`python -m microgpt.train`: compose the config, then train."""

from omegaconf import DictConfig

from microgpt.cli.command import hydra_command


@hydra_command("train")
def main(cfg: DictConfig) -> float | None:
    from microgpt.cli.ddp import install_hydra_ddp_fix
    from microgpt.lightning.training import train  # heavy imports after Hydra has parsed the command line

    install_hydra_ddp_fix()
    return train(cfg).get("val/loss")


if __name__ == "__main__":
    main()
