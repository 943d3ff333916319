"""`python -m microgpt.export ckpt=... out=<dir>`: a trained model in the Hugging Face format."""

from omegaconf import DictConfig

from microgpt.cli.command import hydra_command


@hydra_command("export")
def main(cfg: DictConfig) -> None:
    from microgpt.io.export import export, export_files
    from microgpt.io.loading import load_model
    from microgpt.io.outputs import check_outputs

    lm = load_model(cfg.ckpt)
    check_outputs("out", export_files(lm.model, lm.tokenizer, cfg.out), overwrite=bool(cfg.overwrite))
    for path in export(lm.model, lm.tokenizer, cfg.out):
        print(path)


if __name__ == "__main__":
    main()
