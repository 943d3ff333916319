"""A chat model's greedy replies to held-out prompts, and how many match the reference: the
before / after figure of SFT on any task (arithmetic has its own reward-checked pass@1)."""

from __future__ import annotations

from collections.abc import Sequence

from microgpt.core.chat import ChatTokenizer, check_messages, render
from microgpt.core.errors import ConfigError
from microgpt.core.model import GPT
from microgpt.data.prompts import PromptRow, collate_prompts
from microgpt.evals.completions import complete, completion_texts


def replies(model: GPT, tokenizer: ChatTokenizer, conversations: Sequence[Sequence[dict]], max_new_tokens: int = 32,
            batch_size: int = 32) -> list[str]:
    """The greedy reply to each conversation (it ends with the user's turn), up to its end of turn."""
    if not isinstance(tokenizer, ChatTokenizer):
        raise ConfigError("this model's tokenizer has no chat tokens; fine-tune it with stage=sft first")
    device = model.transformer.wte.weight.device
    rows = [PromptRow(tuple(render(tokenizer, check_messages(c, f"prompt {i}", need_assistant=False),
                                   generation_prompt=True).ids), "", f"prompt {i}") for i, c in enumerate(conversations)]
    out: list[str] = []
    for start in range(0, len(rows), batch_size):
        batch = collate_prompts(rows[start : start + batch_size], tokenizer.eot)
        tokens = complete(model, batch["ids"].to(device), batch["pad"].to(device), tokenizer.end_of_turn, max_new_tokens)
        out += completion_texts(tokenizer, tokens, tokenizer.end_of_turn)
    return out


def exact_match(model: GPT, tokenizer: ChatTokenizer, examples: Sequence[tuple[Sequence[dict], str]],
                max_new_tokens: int = 32) -> float:
    """The fraction of (conversation, reference reply) pairs whose greedy reply is the reference (stripped)."""
    got = replies(model, tokenizer, [c for c, _ in examples], max_new_tokens)
    return sum(g.strip() == ref.strip() for g, (_, ref) in zip(got, examples)) / max(1, len(examples))
