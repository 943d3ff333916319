"""What lm-eval asks of a language model, in token ids, over microgpt's own GPT and tokenizer.

- Log-likelihoods: each (context, continuation) row is the last `block_size + 1` ids of context +
  continuation (left truncation, as lm-eval's `hf` model does), scored in batches of rows sorted
  longest first and right-padded (attention is causal, so padding after a row changes nothing in
  it). The LM head runs on the continuation positions only, as HellaSwag's scorer does.
- Generation: prompts left-padded into one batch and continued by `GPT.generate_stream` (one
  preallocated KV cache, greedy at temperature 0), each row until one of its stop strings or the
  tokenizer's end-of-text; the batch stops once every row has.

Nothing here imports lm-eval: the adapter (adapter.py) unpacks its requests into these calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from microgpt.core.model import GPT
from microgpt.core.tokenizer import Tokenizer
from microgpt.evals.hellaswag import EncodedExample, batch_tensors, marked_logprobs


@dataclass(frozen=True)
class Score:
    logprob: float  # summed log-probability of the continuation's scored tokens (nats)
    greedy: bool    # every scored token is the model's argmax


def by_length_descending(lengths: Sequence[int]) -> list[int]:
    """Request indices, longest first (ties in request order): batches of similar lengths pad
    little, and the widest batch, the one that would run out of memory, comes first."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


@torch.no_grad()
def continuation_scores(model: GPT, pairs: Sequence[tuple[list[int], list[int]]]) -> list[Score]:
    """One forward over (context ids, continuation ids) rows; a continuation that alone fills the
    window is scored on its tokens inside it that have a predecessor."""
    device = model.transformer.wte.weight.device
    rows = [EncodedExample(context, [continuation], 0) for context, continuation in pairs]
    inputs, targets, mask = batch_tensors(rows, model.config.block_size, device)
    logprobs, wanted, row_of = marked_logprobs(model, inputs, targets, mask)
    token_logprobs = logprobs.gather(1, wanted[:, None])[:, 0]
    hits = (logprobs.argmax(dim=-1) == wanted).float()
    sums = torch.zeros(mask.size(0), device=device).index_add_(0, row_of, token_logprobs)
    misses = torch.zeros(mask.size(0), device=device).index_add_(0, row_of, 1.0 - hits)
    return [Score(float(s), bool(m == 0)) for s, m in zip(sums.cpu(), misses.cpu())]


def score_requests(model: GPT, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int) -> list[Score]:
    """`continuation_scores` of every pair, `batch_size` rows a forward, in request order."""
    window = model.config.block_size
    order = by_length_descending([min(len(c) + len(x), window + 1) for c, x in pairs])
    scores: list[Score | None] = [None] * len(pairs)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, score in zip(chunk, continuation_scores(model, [pairs[i] for i in chunk])):
            scores[i] = score
    return scores  # type: ignore[return-value]


def context_budget(window: int, max_new_tokens: int) -> int:
    """Prompt tokens kept (from the right) so the prompt and the reply fit in the window, as
    lm-eval's `hf` model keeps them; at least half the window stays prompt, and a longer reply
    slides the window as `GPT.generate_stream` does."""
    return max(window - max_new_tokens, window // 2, 1)


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first occurrence of any non-empty stop string."""
    ends = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return text[: min(ends)] if ends else text


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    stops: tuple[str, ...] = ()
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None
    top_p: float | None = None


@torch.no_grad()
def generate_until(model: GPT, tokenizer: Tokenizer, prompts: Sequence[list[int]],
                   settings: GenerationSettings) -> list[str]:
    """The continuation of each prompt (ids, at least one each), cut at its first stop string and
    never past end-of-text, all generated as one left-padded batch."""
    keep = context_budget(model.config.block_size, settings.max_new_tokens)
    prompts = [p[-keep:] for p in prompts]
    width, eot = max(len(p) for p in prompts), tokenizer.eot
    device = model.transformer.wte.weight.device
    idx = torch.tensor([[eot] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=device)
    pad = torch.tensor([width - len(p) for p in prompts], device=device)
    replies: list[list[int]] = [[] for _ in prompts]
    texts = [""] * len(prompts)
    done = [False] * len(prompts)
    stream = model.generate_stream(idx, settings.max_new_tokens, temperature=settings.temperature,
                                   top_k=settings.top_k, top_p=settings.top_p, eot=eot, pad=pad)
    for token in stream:
        for row, t in enumerate(token.tolist()):
            if done[row]:
                continue
            if t == eot:
                done[row] = True
                continue
            replies[row].append(t)
            # Decode the whole reply: a stop string may end inside a multi-byte character's tokens.
            texts[row] = tokenizer.decode(replies[row])
            done[row] = any(s and s in texts[row] for s in settings.stops)
        if all(done):
            break
    return [cut_at_stops(text, settings.stops) for text in texts]
