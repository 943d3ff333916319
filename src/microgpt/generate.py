"""`python -m microgpt.generate ckpt=... prompt="..."`: stream a continuation to stdout
(`prompts=[...]`: several prompts sampled as one batch). ckpt may also be `gpt2` ... `gpt2-xl`."""

import sys

from omegaconf import DictConfig

from microgpt.cli.command import hydra_command
from microgpt.core.errors import ConfigError


@hydra_command("generate")
def main(cfg: DictConfig) -> None:
    from microgpt.core.sampling import check_sampling
    from microgpt.io.loading import load_model

    check_sampling(cfg.temperature, cfg.top_k, cfg.top_p)
    if cfg.max_new_tokens < 0 or cfg.num_samples < 1:
        raise ConfigError("max_new_tokens must be >= 0 and num_samples >= 1")
    lm = load_model(cfg.ckpt, device=cfg.device)
    if cfg.get("prompts"):  # one batch, printed when done
        prompts = [str(p) for p in cfg.prompts]
        for i in range(cfg.num_samples):
            texts = lm.generate_texts(
                prompts, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                top_p=cfg.top_p, seed=cfg.seed + i, stop_at_eot=cfg.stop_at_eot,
            )
            sys.stdout.write("\n---\n".join(texts) + ("\n---\n" if i + 1 < cfg.num_samples else "\n"))
        return
    for i in range(cfg.num_samples):
        if i:
            sys.stdout.write("\n---\n")
        sys.stdout.write(cfg.prompt)
        for piece in lm.stream_text(
            cfg.prompt, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
            top_p=cfg.top_p, seed=cfg.seed + i, stop_at_eot=cfg.stop_at_eot,
        ):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
