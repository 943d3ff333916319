"""`python -m microgpt.generate ckpt=... prompt="..."`: stream a continuation to stdout
(`prompts=[...]`: several prompts sampled as one batch; `prompt_file=notes.txt` or `prompt=-`
(standard input): a prompt of any length, exactly as written; `messages=[{role:user,content:Hi}]`: a chat
model's reply to a conversation). ckpt may also be `gpt2` ... `gpt2-xl`.
`dtype=bfloat16` (or float16) halves the bytes each token reads; `compile=true` compiles the decode step."""

import sys
from pathlib import Path

from omegaconf import DictConfig

from microgpt.cli.command import hydra_command
from microgpt.core.errors import ConfigError


def read_prompt(cfg: DictConfig) -> str:
    """The prompt exactly as typed: `prompt=`, the text of `prompt_file=`, or stdin for `prompt=-`."""
    prompt, prompt_file = cfg.prompt, cfg.get("prompt_file")
    if prompt_file is not None:
        if prompt or cfg.get("prompts"):
            raise ConfigError("give the prompt one way: prompt=..., prompts=[...] or prompt_file=<file>, not several")
        path = Path(str(prompt_file)).expanduser()
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"prompt_file={path} does not exist; check the path") from None
        except IsADirectoryError:
            raise ConfigError(f"prompt_file={path} is a directory; give a text file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"prompt_file={path} is not UTF-8 text") from None
        except OSError as e:
            raise ConfigError(f"prompt_file={path} cannot be read ({e.strerror})") from None
    if prompt == "-":
        return sys.stdin.read()
    return str(prompt)


def read_messages(cfg: DictConfig) -> list[dict] | None:
    """The conversation of `messages=`, checked before the model loads; None without one."""
    if cfg.get("messages") is None:
        return None
    if cfg.prompt or cfg.get("prompts") or cfg.get("prompt_file") is not None:
        raise ConfigError("give either messages=[...] (a chat model's reply) or a prompt (prompt=, prompts=, "
                          "prompt_file=), not both")
    from omegaconf import OmegaConf

    from microgpt.core.chat import check_messages

    messages = cfg.messages
    plain = OmegaConf.to_container(messages) if OmegaConf.is_config(messages) else messages
    return check_messages(plain, "messages", need_assistant=False)


def sample_options(options, i: int):
    """The i-th sample's settings: seed, seed + 1, ... (no seed: torch's global generator)."""
    return options if options.seed is None else options.replace(seed=options.seed + i)


@hydra_command("generate")
def main(cfg: DictConfig) -> None:
    from microgpt.core.sampling import SamplingOptions
    from microgpt.io.loading import check_device, check_dtype, load_model

    options = SamplingOptions(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                              top_p=cfg.top_p, seed=cfg.seed, stop_at_eot=cfg.stop_at_eot)
    if isinstance(cfg.num_samples, bool) or not isinstance(cfg.num_samples, int) or cfg.num_samples < 1:
        raise ConfigError(f"num_samples must be an integer >= 1, got {cfg.num_samples!r}")
    check_device(cfg.device)
    dtype = check_dtype(cfg.dtype)
    messages = read_messages(cfg)
    prompt = read_prompt(cfg)
    lm = load_model(cfg.ckpt, device=cfg.device, dtype=dtype)
    if cfg.compile:
        lm.model.compile_decode_step()
    if cfg.get("prompts"):  # one batch, printed when done
        prompts = [str(p) for p in cfg.prompts]
        for i in range(cfg.num_samples):
            texts = lm.generate_texts(prompts, options=sample_options(options, i))
            sys.stdout.write("\n---\n".join(texts) + ("\n---\n" if i + 1 < cfg.num_samples else "\n"))
        return
    for i in range(cfg.num_samples):
        if i:
            sys.stdout.write("\n---\n")
        if messages is None:
            sys.stdout.write(prompt)
        sampled = sample_options(options, i)
        pieces = lm.stream_text(prompt, options=sampled) if messages is None else lm.stream_chat(messages, options=sampled)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
