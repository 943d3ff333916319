"""A trained GPT paired with its tokenizer: text in, text out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from microgpt.core.model import GPT
from microgpt.core.tokenizer import Tokenizer

if TYPE_CHECKING:
    pass


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

    def stream_text(
        self,
        text: str,
        max_new_tokens: int = 50,
        temperature: float = 0.8,
        top_k: int | None = 200,
        top_p: float | None = None,
        seed: int | None = None,
        stop_at_eot: bool = True,
    ) -> Iterator[str]:
        """The continuation of `text`, piece by piece as tokens are sampled."""
        generator = self._generator(seed)
        idx = self._prompt_ids(text)
        emitted, new_ids = "", []
        for token in self.model.generate_stream(
            idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            eot=self.tokenizer.eot if stop_at_eot else None, generator=generator,
        ):
            if stop_at_eot and int(token[0]) == self.tokenizer.eot:
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

    def generate_text(self, text: str, max_new_tokens: int = 50, **kwargs) -> str:
        """`text` followed by its sampled continuation."""
        return text + "".join(self.stream_text(text, max_new_tokens, **kwargs))

    def generate_texts(
        self,
        texts: list[str],
        max_new_tokens: int = 50,
        temperature: float = 0.8,
        top_k: int | None = 200,
        top_p: float | None = None,
        seed: int | None = None,
        stop_at_eot: bool = True,
    ) -> list[str]:
        """Each text followed by its continuation, all sampled as one batch (prompts of different
        lengths are left-padded; each row decodes as it would alone)."""
        prompts = [self._encode(t) for t in texts]
        width = max(len(p) for p in prompts)
        eot = self.tokenizer.eot
        idx = torch.tensor([[eot] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=self.device)
        pad = torch.tensor([width - len(p) for p in prompts], device=self.device)
        out = self.model.generate(
            idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            eot=eot if stop_at_eot else None, generator=self._generator(seed), pad=pad,
        )
        results = []
        for text, row in zip(texts, out[:, width:].tolist()):
            if stop_at_eot and eot in row:
                row = row[: row.index(eot)]
            results.append(text + self.tokenizer.decode(row))
        return results


