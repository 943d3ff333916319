"""`python -m microgpt.chat ckpt=<a chat model's .ckpt>`: chat in the terminal. Each line typed is a
user turn and the reply streams as it is sampled; the conversation is kept (its oldest turns give way
when it outgrows the context, see LanguageModel.chat_prompt). `/reset` starts over (keeping `system=`),
`/quit` or the end of input (Ctrl-D) exits. `prompt="..."` (`prompt=-`: standard input) answers that one
message, prints only the reply and exits: for scripts. A chat model is one fine-tuned with stage=sft."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, TextIO

from omegaconf import DictConfig

from microgpt.cli.command import hydra_command
from microgpt.core.errors import ConfigError, MicroGPTError

if TYPE_CHECKING:
    from microgpt.core.language_model import LanguageModel
    from microgpt.core.sampling import SamplingOptions

COMMANDS = "/reset clears the history, /quit (or Ctrl-D) exits"


class Conversation:
    """The turns so far, and the model's reply to each new user line."""

    def __init__(self, lm: LanguageModel, options: SamplingOptions, system: str | None = None) -> None:
        self.tokenizer = lm.chat_tokenizer  # a model without chat tokens fails here, before any line is read
        self.lm, self.options = lm, options
        self.system = [{"role": "system", "content": system}] if system else []
        self.messages = list(self.system)

    def reset(self) -> None:
        self.messages = list(self.system)

    def reply(self, text: str, out: TextIO) -> str:
        """The reply to the user's `text`, written to `out` piece by piece as it is sampled; the
        exchange joins the history once the reply is whole (a refused line leaves no trace)."""
        turns = [*self.messages, {"role": "user", "content": text}]
        pieces = []
        for piece in self.lm.stream_chat(turns, options=self.options):
            out.write(piece)
            out.flush()
            pieces.append(piece)
        out.write("\n")
        out.flush()
        reply = "".join(pieces)
        self.messages = [*turns, {"role": "assistant", "content": reply}]
        return reply


def run_session(conversation: Conversation, lines: Iterable[str], out: TextIO, err: TextIO) -> None:
    """Answer `lines` one by one until `/quit` or their end. A line the model cannot take (a character
    its vocabulary lacks) is one `error:` line on `err`, and the chat goes on."""
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if text.startswith("/") and len(text.split()) == 1:  # a command; "/etc is ..." is a message
            if text == "/quit":
                return
            if text == "/reset":
                conversation.reset()
            else:
                err.write(f"unknown command {text}: {COMMANDS}\n")
            continue
        try:
            conversation.reply(text, out)
        except MicroGPTError as e:
            err.write(f"error: {' '.join(str(e).split())}\n")
            err.flush()


def typed_lines(prompt: str) -> Iterator[str]:
    """Standard input line by line (with `prompt` before each, and line editing, in a terminal)."""
    while True:
        try:
            yield input(prompt)
        except EOFError:  # Ctrl-D in a terminal: end the prompt's line before the shell's
            if prompt:
                print()
            return


def one_message(cfg: DictConfig) -> str | None:
    """The message of `prompt=` (`-`: standard input) for one reply; None for an interactive chat."""
    if cfg.prompt is None:
        return None
    text = sys.stdin.read() if cfg.prompt == "-" else str(cfg.prompt)
    if not text.strip():
        raise ConfigError("prompt= is empty; give the message to answer (prompt=\"...\"), or leave prompt out "
                          "to chat interactively")
    return text.strip()


@hydra_command("chat")
def main(cfg: DictConfig) -> None:
    from microgpt.core.sampling import SamplingOptions
    from microgpt.io.loading import check_device, check_dtype, load_model

    options = SamplingOptions(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                              top_p=cfg.top_p, seed=cfg.seed)
    check_device(cfg.device)
    dtype = check_dtype(cfg.dtype)
    message = one_message(cfg)
    lm = load_model(cfg.ckpt, device=cfg.device, dtype=dtype)
    conversation = Conversation(lm, options, system=None if cfg.system is None else str(cfg.system))
    if message is not None:
        conversation.reply(message, sys.stdout)
        return
    interactive = sys.stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401 - input() then edits lines and recalls earlier ones
        except ImportError:  # not on every platform; input() works without it
            pass
        print(f"chatting with {cfg.ckpt}: {COMMANDS}", file=sys.stderr)
    try:
        run_session(conversation, typed_lines("> " if interactive else ""), sys.stdout, sys.stderr)
    except KeyboardInterrupt:  # Ctrl-C: leave as a shell command does, without a traceback
        sys.stdout.write("\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
