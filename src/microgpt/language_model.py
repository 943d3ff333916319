"""A trained GPT paired with its tokenizer: text in, text out."""

from __future__ import annotations

import os
from typing import Iterator

import torch

from microgpt.checkpoint import model_from_checkpoint, read_checkpoint
from microgpt.model import GPT
from microgpt.tokenizer import Tokenizer


class LanguageModel:
    def __init__(self, model: GPT, tokenizer: Tokenizer) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.transformer.wte.weight.device

    def to(self, device) -> "LanguageModel":
        self.model.to(device)
        return self

    def count_params(self, non_embedding: bool = False) -> int:
        return self.model.count_params(non_embedding)

    def _prompt_ids(self, text: str) -> torch.Tensor:
        ids = self.tokenizer.encode(text) or [self.tokenizer.eot]
        return torch.tensor([ids], dtype=torch.long, device=self.device)

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
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
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


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> LanguageModel:
    """A microgpt checkpoint (.ckpt) with its tokenizer, ready to generate."""
    if path is None:
        raise TypeError("load_model needs the path of a checkpoint")
    model, tokenizer = model_from_checkpoint(read_checkpoint(path), source=str(path))
    return LanguageModel(model, tokenizer).to(device)
