"""A trained GPT paired with its tokenizer: text in, text out."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

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

    def _prompt_ids(self, text: str) -> torch.Tensor:
        return torch.tensor([self._encode(text)], dtype=torch.long, device=self.device)

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
        return self._stream(text, sampling_options(options, max_new_tokens, settings))

    def _stream(self, text: str, options: SamplingOptions) -> Iterator[str]:
        eot, stop = self.tokenizer.eot, options.stop_at_eot
        emitted, new_ids = "", []
        for token in self.model.generate_stream(
            self._prompt_ids(text), options.max_new_tokens, temperature=options.temperature,
            top_k=options.top_k, top_p=options.top_p, eot=eot if stop else None,
            generator=self._generator(options.seed),
        ):
            if stop and int(token[0]) == eot:
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


def sampling_options(options: SamplingOptions | None, max_new_tokens: int | None, settings: dict) -> SamplingOptions:
    """`options` (default: SamplingOptions()) with the keyword settings applied, checked."""
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(SamplingOptions)})
    if unknown:
        raise TypeError(f"unknown sampling setting(s) {unknown}; the settings are the fields of SamplingOptions")
    if max_new_tokens is not None:
        settings = {**settings, "max_new_tokens": max_new_tokens}
    base = options if options is not None else SamplingOptions()
    return base.replace(**settings) if settings else base
