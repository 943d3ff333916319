"""What the post-training tests share: a tiny model, the synthetic task (the assistant repeats
three letters), and a briefly pretrained starting checkpoint."""

from __future__ import annotations

import json
import random
from pathlib import Path

TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64", "data.batch_size=16",
        "callbacks.progress_bar=null", "callbacks.text_samples=null", "trainer.enable_model_summary=false"]
LETTERS = "abcdefgh"


def word(r: random.Random) -> str:
    return "".join(r.choice(LETTERS) for _ in range(3))


def copy_task(path: Path | None, n: int, seed: int) -> list[tuple[list[dict], str]]:
    """(prompt turns, the right reply) pairs; written to `path` as SFT records when given."""
    r = random.Random(seed)
    examples = [([{"role": "user", "content": w}], w) for w in (word(r) for _ in range(n))]
    if path is not None:
        path.write_text("".join(json.dumps({"messages": turns + [{"role": "assistant", "content": reply}]}) + "\n"
                                for turns, reply in examples))
    return examples


def preference_pairs(path: Path, n: int, seed: int) -> list[tuple[list[dict], str, str]]:
    """(prompt, chosen = the copy, rejected = the letters reversed) pairs, written as dpo records."""
    pairs = [(turns, reply, reply[::-1]) for turns, reply in copy_task(None, n, seed) if reply != reply[::-1]]
    path.write_text("".join(json.dumps({"prompt": turns, "chosen": c, "rejected": r}) + "\n" for turns, c, r in pairs))
    return pairs


def pretrain_letters(root: Path, run_cli) -> Path:
    """A tiny char model pretrained briefly on lines of the task's letters (no chat turns)."""
    r = random.Random(0)
    (root / "letters.txt").write_text("".join(f"{w} {w}\n" for w in (word(r) for _ in range(2000))))
    result = run_cli("train", "data=files", f"data.paths=[{root / 'letters.txt'}]", *TINY, "max_steps=60",
                     "eval_every=60", f"hydra.run.dir={root / 'run'}", cwd=root)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "run" / "checkpoints" / "last.ckpt"
