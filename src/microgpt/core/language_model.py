"""A trained GPT paired with its tokenizer: text in, text out; a conversation in, a reply out."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from microgpt.core.chat import ChatTokenizer, check_messages, render
from microgpt.core.errors import ConfigError
from microgpt.core.model import GPT
from microgpt.core.sampling import SamplingOptions
from microgpt.core.tokenizer import Tokenizer


class LanguageModel:
    def __init__(self, model: GPT, tokenizer: Tokenizer) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.transformer.wte.weight.device

    def to(self, device) -> LanguageModel:
        self.model.to(device)
        return self

    def __await__(self):
        """`await load_model(...)` in async code: the model is ready, so awaiting gives it back."""
        yield from ()
        return self

    def count_params(self, non_embedding: bool = False) -> int:
        return self.model.count_params(non_embedding)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text) or [self.tokenizer.eot]

    def _generator(self, seed: int | None) -> torch.Generator | None:
        return torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None

    def stream_text(self, text: str, max_new_tokens: int | None = None, *,
                    options: SamplingOptions | None = None, **settings) -> Iterator[str]:
        """The continuation of `text`, piece by piece as tokens are sampled.

        Settings: `options=SamplingOptions(...)` and/or its fields as keywords (temperature, top_k,
        top_p, seed, stop_at_eot); keywords win. Bad values raise ConfigError (a ValueError) here,
        before the first token."""
        options = sampling_options(options, max_new_tokens, settings)
        return self._stream(self._encode(text), options, stops=(self.tokenizer.eot,))

    def _stream(self, prompt: list[int], options: SamplingOptions, stops: tuple[int, ...]) -> Iterator[str]:
        """The text of the tokens sampled after `prompt`, up to the first of `stops` (which is not
        part of it) when `options.stop_at_eot`."""
        stop = options.stop_at_eot
        emitted, new_ids = "", []
        for token in self.model.generate_stream(
            torch.tensor([prompt], dtype=torch.long, device=self.device), options.max_new_tokens,
            temperature=options.temperature, top_k=options.top_k, top_p=options.top_p,
            eot=stops[0] if stop else None, generator=self._generator(options.seed),
        ):
            if stop and int(token[0]) in stops:
                break
            new_ids.append(int(token[0]))
            # Decode the whole continuation so characters split across tokens come out whole.
            text_so_far = self.tokenizer.decode(new_ids)
            if not text_so_far.endswith("\ufffd"):
                yield text_so_far[len(emitted):]
                emitted = text_so_far
        rest = self.tokenizer.decode(new_ids)[len(emitted):]
        if rest:
            yield rest

    def generate_text(self, text: str, max_new_tokens: int | None = None, *,
                      options: SamplingOptions | None = None, **settings) -> str:
        """`text` followed by its sampled continuation (settings as for `stream_text`)."""
        return text + "".join(self.stream_text(text, max_new_tokens, options=options, **settings))

    def generate_texts(self, texts: list[str], max_new_tokens: int | None = None, *,
                       options: SamplingOptions | None = None, **settings) -> list[str]:
        """Each text followed by its continuation, all sampled as one batch (prompts of different
        lengths are left-padded; each row decodes as it would alone). Settings as for `stream_text`."""
        options = sampling_options(options, max_new_tokens, settings)
        if isinstance(texts, str) or not texts:
            raise ConfigError("generate_texts needs a non-empty list of prompts (one string: generate_text)")
        prompts = [self._encode(t) for t in texts]
        width = max(len(p) for p in prompts)
        eot = self.tokenizer.eot
        idx = torch.tensor([[eot] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=self.device)
        pad = torch.tensor([width - len(p) for p in prompts], device=self.device)
        out = self.model.generate(
            idx, options.max_new_tokens, temperature=options.temperature, top_k=options.top_k,
            top_p=options.top_p, eot=eot if options.stop_at_eot else None,
            generator=self._generator(options.seed), pad=pad,
        )
        results = []
        for text, row in zip(texts, out[:, width:].tolist()):
            if options.stop_at_eot and eot in row:
                row = row[: row.index(eot)]
            results.append(text + self.tokenizer.decode(row))
        return results

    @property
    def chat_tokenizer(self) -> ChatTokenizer:
        """The tokenizer, which must carry the chat template's tokens for `chat` / `stream_chat`."""
        if not isinstance(self.tokenizer, ChatTokenizer):
            raise ConfigError("this model has no chat tokens, so it cannot take messages; fine-tune it with "
                              "stage=sft first (python -m microgpt.train stage=sft init_from=<its .ckpt>)")
        return self.tokenizer

    def chat_prompt(self, messages: list[dict], max_new_tokens: int = 0) -> list[int]:
        """The ids a reply to `messages` continues: the chat template's rendering, ending with the
        assistant's role token. A conversation that would leave less than `max_new_tokens` of the
        context for the reply (and never less than half of it) loses its oldest turns after the
        system prompt, so that the kept history starts with a user turn; the latest turn always stays."""
        tokenizer = self.chat_tokenizer
        turns = check_messages(messages, "messages", need_assistant=False)
        block = self.model.config.block_size
        room = max(block - max_new_tokens, block // 2)
        return render(tokenizer, latest_turns(tokenizer, turns, room), generation_prompt=True).ids

    def stream_chat(self, messages: list[dict], max_new_tokens: int | None = None, *,
                    options: SamplingOptions | None = None, **settings) -> Iterator[str]:
        """The assistant's reply to `messages` ([{"role": "system" | "user" | "assistant",
        "content": "..."}, ...]), piece by piece, up to its end-of-turn (not part of the reply;
        stop_at_eot=False samples all max_new_tokens). Settings as for `stream_text`; the
        conversation is fitted to the context as `chat_prompt` says."""
        options = sampling_options(options, max_new_tokens, settings)
        tokenizer = self.chat_tokenizer
        # The base end-of-text ends a reply too: a model that has not learned to end its turns.
        stops = (tokenizer.end_of_turn, tokenizer.eot)
        return self._stream(self.chat_prompt(messages, options.max_new_tokens), options, stops)

    def chat(self, messages: list[dict], max_new_tokens: int | None = None, *,
             options: SamplingOptions | None = None, **settings) -> str:
        """The assistant's whole reply to `messages` (see `stream_chat`)."""
        return "".join(self.stream_chat(messages, max_new_tokens, options=options, **settings))


def sampling_options(options: SamplingOptions | None, max_new_tokens: int | None, settings: dict) -> SamplingOptions:
    """`options` (default: SamplingOptions()) with the keyword settings applied, checked."""
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(SamplingOptions)})
    if unknown:
        raise TypeError(f"unknown sampling setting(s) {unknown}; the settings are the fields of SamplingOptions")
    if max_new_tokens is not None:
        settings = {**settings, "max_new_tokens": max_new_tokens}
    base = options if options is not None else SamplingOptions()
    return base.replace(**settings) if settings else base


def latest_turns(tokenizer: ChatTokenizer, turns: list[dict], room: int) -> list[dict]:
    """`turns` without their oldest turns after a leading system prompt, as few as it takes for the
    rendered prompt to fit `room` tokens (and, once any are dropped, without an assistant turn left
    at the front: the kept history starts with a question). The latest turn always stays."""
    sizes = [len(render(tokenizer, [turn])) - 1 for turn in turns]  # less the end-of-text each render starts with
    length = 2 + sum(sizes)  # + that end-of-text, once, and the generation prompt
    first = 1 if turns[0]["role"] == "system" else 0
    keep = first
    while keep < len(turns) - 1 and (length > room or (keep > first and turns[keep]["role"] == "assistant")):
        length -= sizes[keep]
        keep += 1
    return turns[:first] + turns[keep:]
