"""HellaSwag, completion style (as build-nanogpt and the GPT-3 paper's small-model numbers do it).

Each example is a context and 4 candidate endings. Every ending becomes one row: the context's
tokens followed by the tokens of `" " + ending`; the model scores an ending by its cross-entropy
over the ending's tokens only. `acc` counts examples where the true ending has the lowest summed
loss, `acc_norm` where it has the lowest mean loss per ending token (fairer to long endings).

Rows longer than the model's context window are truncated from the left: the window keeps the
end of the context and the whole ending (the ending itself is cut only if it alone fills the
window, in which case only its tokens inside the window that have a predecessor are scored).
A context that encodes to no tokens is replaced by the end-of-text token, so the first ending
token always has something to be predicted from.

Batches are consecutive groups of the examples ordered by length (little padding). Under
torch.distributed each rank scores every world_size-th batch and the counts are summed, so every
example is scored in exactly the same padded batch whatever the number of processes, and the
result equals the single-process one. The LM head runs on the ending positions only.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from microgpt.core.errors import ConfigError, DataError
from microgpt.core.model import GPT
from microgpt.core.tokenizer import Tokenizer
from microgpt.io.download import fetch

log = logging.getLogger(__name__)

# The HellaSwag authors' validation split (10,042 examples).
HELLASWAG_VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
NUM_ENDINGS = 4
DOWNLOAD_TIMEOUT_S = 60.0
DOWNLOAD_RETRIES = 3


@dataclass(frozen=True)
class Example:
    context: str
    endings: tuple[str, ...]
    label: int
    line: int  # 1-based line of the jsonl file it came from, for error messages


@dataclass(frozen=True)
class EncodedExample:
    context: list[int]
    endings: list[list[int]]
    label: int


@dataclass(frozen=True)
class HellaSwagResult:
    correct: int       # true ending had the lowest summed loss
    correct_norm: int  # true ending had the lowest mean loss per token
    count: int         # examples scored
    skipped: int = 0   # examples the tokenizer cannot encode (a character tokenizer missing characters)

    @property
    def acc(self) -> float:
        return self.correct / self.count if self.count else float("nan")

    @property
    def acc_norm(self) -> float:
        return self.correct_norm / self.count if self.count else float("nan")

    def metrics(self) -> dict[str, float | int]:
        return {"acc": self.acc, "acc_norm": self.acc_norm, "count": self.count, "skipped": self.skipped}


# ----------------------------------------------------------------------------------------------
# Reading the data


def is_url(source: str | os.PathLike) -> bool:
    return isinstance(source, str) and "://" in source


def resolve_source(source: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                   timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """The local jsonl for `source`: a path as is; an http(s) URL downloaded once into the cache
    (None: the official validation split). Downloads are atomic (temporary file, then rename), so
    a truncated transfer never leaves a cache entry behind."""
    source = HELLASWAG_VAL_URL if source is None else source
    if not is_url(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise DataError(f"HellaSwag file {path} does not exist; pass the path of hellaswag_val.jsonl "
                            f"or leave the source empty to download the official file")
        return path
    try:
        return fetch(source, cache_dir=cache_dir, timeout=timeout, retries=DOWNLOAD_RETRIES)
    except DataError as e:
        raise DataError(f"HellaSwag: {e}; or pass a local copy of hellaswag_val.jsonl as the source") from e


def parse_example(line: str, where: str, line_no: int) -> Example:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where} line {line_no} is not valid JSON ({e}); fix or remove that line") from e
    if not isinstance(record, dict):
        raise DataError(f"{where} line {line_no} is not a JSON object with ctx, endings and label")
    context, endings, label = record.get("ctx"), record.get("endings"), record.get("label")
    if not isinstance(context, str):
        raise DataError(f"{where} line {line_no} has no string `ctx` field; is this a HellaSwag file?")
    if not isinstance(endings, list) or len(endings) != NUM_ENDINGS or not all(isinstance(e, str) for e in endings):
        found = len(endings) if isinstance(endings, list) else type(endings).__name__
        raise DataError(f"{where} line {line_no} needs exactly {NUM_ENDINGS} string endings, found {found}")
    if isinstance(label, str) and label.isdigit():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < NUM_ENDINGS:
        raise DataError(f"{where} line {line_no} has label {label!r}, outside 0..{NUM_ENDINGS - 1} "
                        f"(the test split has no labels: use the validation split)")
    return Example(context, tuple(endings), label, line_no)


def read_examples(path: str | os.PathLike, limit: int | None = None) -> list[Example]:
    """Examples of a HellaSwag jsonl file in file order; `limit` keeps the first K."""
    path = Path(path)
    examples = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if limit is not None and len(examples) >= limit:
                break
            if line.strip():
                examples.append(parse_example(line, str(path), line_no))
    if not examples:
        raise DataError(f"HellaSwag file {path} holds no examples")
    return examples


def load_examples(source: str | os.PathLike | None = None, limit: int | None = None,
                  cache_dir: str | os.PathLike | None = None) -> list[Example]:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ConfigError(f"hellaswag limit must be a positive integer or null (all examples), got {limit!r}")
    return read_examples(resolve_source(source, cache_dir), limit)


def encode_examples(examples: Sequence[Example], tokenizer: Tokenizer) -> tuple[list[EncodedExample], int]:
    """Token ids of every example; examples the tokenizer cannot encode (characters missing from a
    character vocabulary) are left out and counted."""
    encoded, skipped = [], 0
    for ex in examples:
        try:
            context = tokenizer.encode(ex.context) or [tokenizer.eot]
            endings = tokenizer.encode_batch([" " + e for e in ex.endings])
        except DataError:
            skipped += 1
            continue
        encoded.append(EncodedExample(context, endings, ex.label))
    if not encoded:
        raise DataError(f"the tokenizer cannot encode any of the {len(examples)} HellaSwag examples (characters "
                        f"outside its vocabulary); evaluate a model with a tokenizer that covers them (tokenizer=gpt2)")
    if skipped:
        log.warning("hellaswag: %d of %d examples use characters outside the tokenizer's vocabulary and are "
                    "not scored", skipped, len(examples))
    return encoded, skipped


# ----------------------------------------------------------------------------------------------
# Scoring


def ending_rows(example: EncodedExample, window: int) -> list[tuple[list[int], int]]:
    """(ids, scored) per ending: the last `window + 1` ids of context + ending (inputs and shifted
    targets in one row), and how many trailing targets belong to the ending."""
    rows = []
    for ending in example.endings:
        ids = (example.context + ending)[-(window + 1):]
        rows.append((ids, min(len(ending), len(ids) - 1)))
    return rows


def batch_tensors(examples: Sequence[EncodedExample], window: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded inputs and targets, shape (4 x examples, T), and the mask of ending targets."""
    rows = [row for ex in examples for row in ending_rows(ex, window)]
    width = max(len(ids) for ids, _ in rows) - 1
    inputs = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, (ids, scored) in enumerate(rows):
        n = len(ids) - 1
        inputs[r, :n] = torch.tensor(ids[:-1])
        targets[r, :n] = torch.tensor(ids[1:])
        mask[r, n - scored : n] = True
    return inputs.to(device), targets.to(device), mask.to(device)


@torch.no_grad()
def marked_logprobs(model: GPT, inputs: torch.Tensor, targets: torch.Tensor,
                    mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-probabilities over the real vocabulary at the `mask` positions (N, V), their targets (N,),
    the row each came from (N,)), from one forward pass. The LM head runs on those positions only:
    with a 50k vocabulary it dominates the cost, and logits for every padded position would be most
    of the batch's memory. Right padding cannot change the scores: attention is causal."""
    keep = model.transformer.ln_f.register_forward_hook(lambda module, args, hidden: hidden[mask])
    try:
        logits, _ = model(inputs)  # (marked positions, padded vocabulary)
    finally:
        keep.remove()
    # Only real vocabulary ids: the padded ids are never data.
    logprobs = F.log_softmax(logits[:, : model.vocab_limit].float(), dim=-1)
    row_of = torch.arange(mask.size(0), device=mask.device)[:, None].expand_as(mask)[mask]
    return logprobs, targets[mask], row_of


def ending_losses(model: GPT, examples: Sequence[EncodedExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss over each ending's tokens and their count, both shape (examples, 4), in one
    forward pass."""
    device = model.transformer.wte.weight.device
    inputs, targets, mask = batch_tensors(examples, model.config.block_size, device)
    logprobs, wanted, row_of = marked_logprobs(model, inputs, targets, mask)
    token_losses = -logprobs.gather(1, wanted[:, None])[:, 0]
    sums = torch.zeros(mask.size(0), device=device, dtype=torch.float32).index_add_(0, row_of, token_losses)
    return sums.view(-1, NUM_ENDINGS).cpu(), mask.sum(dim=1).view(-1, NUM_ENDINGS).cpu()


def predictions(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen ending per example: by summed loss, and by mean loss per token."""
    return sums.argmin(dim=1), (sums / counts.clamp(min=1)).argmin(dim=1)


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def by_length(examples: Sequence[EncodedExample], window: int) -> list[EncodedExample]:
    """Examples ordered by their longest row (ties in file order): batches of similar lengths
    waste little compute on padding, and every rank derives the same order."""
    def longest_row(ex: EncodedExample) -> int:
        return min(len(ex.context) + max(len(e) for e in ex.endings), window + 1)

    return sorted(examples, key=longest_row)  # stable


def score_shard(model: GPT, examples: Sequence[EncodedExample], batch_size: int,
                rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """[correct, correct_norm, count] over this rank's batches (every world_size-th, from `rank`)
    of the length-ordered examples."""
    examples = by_length(examples, model.config.block_size)
    totals = torch.zeros(3, dtype=torch.long)
    for start in range(rank * batch_size, len(examples), world_size * batch_size):
        batch = examples[start : start + batch_size]
        pred, pred_norm = predictions(*ending_losses(model, batch))
        labels = torch.tensor([ex.label for ex in batch])
        totals += torch.stack([(pred == labels).sum(), (pred_norm == labels).sum(), torch.tensor(len(batch))])
    return totals


def evaluate(model: GPT, examples: Sequence[EncodedExample], batch_size: int = 4, skipped: int = 0) -> HellaSwagResult:
    """acc / acc_norm of `model` (the plain GPT, never a compiled or DDP-wrapped one) on encoded
    examples. Under torch.distributed every rank must call this with the same examples."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"hellaswag batch_size must be a positive integer (examples per forward), got {batch_size!r}")
    was_training = model.training
    model.eval()
    try:
        rank, world = rank_and_world()
        totals = score_shard(model, examples, batch_size, rank, world)
        if world > 1:
            totals = totals.to(model.transformer.wte.weight.device)  # gloo: CPU, nccl: the GPU
            dist.all_reduce(totals)
    finally:
        model.train(was_training)
    correct, correct_norm, count = (int(v) for v in totals.cpu())
    return HellaSwagResult(correct, correct_norm, count, skipped)


def evaluate_hellaswag(model: GPT, tokenizer: Tokenizer, source: str | os.PathLike | None = None,
                       limit: int | None = None, batch_size: int = 4,
                       cache_dir: str | os.PathLike | None = None) -> HellaSwagResult:
    """Read (or download), encode and score in one call."""
    encoded, skipped = encode_examples(load_examples(source, limit, cache_dir), tokenizer)
    return evaluate(model, encoded, batch_size, skipped)
