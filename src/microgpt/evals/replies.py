"""A chat model's replies to held-out prompts, and how many match the reference: the before/after
figure of every post-training stage."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from microgpt.core.chat import ChatTokenizer, check_messages, render
from microgpt.core.errors import ConfigError
from microgpt.core.model import GPT


@torch.no_grad()
def replies(model: GPT, tokenizer: ChatTokenizer, conversations: Sequence[Sequence[dict]], max_new_tokens: int = 32,
            batch_size: int = 32) -> list[str]:
    """The greedy reply to each conversation (it ends with the user's turn), decoded up to its end of turn."""
    if not isinstance(tokenizer, ChatTokenizer):
        raise ConfigError("this model's tokenizer has no chat tokens; fine-tune it with stage=sft first")
    was_training = model.training
    model.eval()
    device = model.transformer.wte.weight.device
    out: list[str] = []
    for start in range(0, len(conversations), batch_size):
        prompts = [render(tokenizer, check_messages(c, f"prompt {start + i}", need_assistant=False), generation_prompt=True).ids
                   for i, c in enumerate(conversations[start : start + batch_size])]
        width = max(len(p) for p in prompts)
        pad = torch.tensor([width - len(p) for p in prompts], device=device)
        idx = torch.tensor([[tokenizer.eot] * (width - len(p)) + p for p in prompts], device=device)
        new = model.generate(idx, max_new_tokens, temperature=0.0, eot=tokenizer.end_of_turn, pad=pad)[:, width:]
        for row in new.tolist():
            cut = row.index(tokenizer.end_of_turn) if tokenizer.end_of_turn in row else len(row)
            out.append(tokenizer.decode(row[:cut]))
    model.train(was_training)
    return out


def exact_match(model: GPT, tokenizer: ChatTokenizer, examples: Sequence[tuple[Sequence[dict], str]],
                max_new_tokens: int = 32) -> float:
    """The fraction of (conversation, reference reply) pairs whose greedy reply is the reference (stripped)."""
    got = replies(model, tokenizer, [c for c, _ in examples], max_new_tokens)
    return sum(g.strip() == ref.strip() for g, (_, ref) in zip(got, examples)) / max(1, len(examples))
