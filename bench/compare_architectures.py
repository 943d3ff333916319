"""The architecture presets side by side: every `*_nano` preset (and `nano`, the GPT-2 block) trained
on the same data, tokens and seed, on CPU, through microgpt's real training path.

    python bench/compare_architectures.py [--steps 300] [--presets nano llama_nano ...] [--threads 1]
    make bench-arch

Each preset trains with `microgpt.lightning.training.train` on the composed `train` config, as
`python -m microgpt.train model=<preset>` would: Tiny Shakespeare, character tokenizer, the same
seed (so the same batches in the same order), the same batch, context, schedule and steps, fp32.
The table: parameters (an MoE model's total and, in brackets, those a token passes through),
training FLOPs per token at the trained context (`microgpt.core.flops`), tokens/s (steady state: the
mean batch-end to batch-end period after the first `--skip` steps; one run each, so it moves with the
machine's load, recorded with the table), KV-cache bytes per token of context in fp32, and the
validation loss at the end (cross-entropy only; `--eval-batches` batches of the held-out 10%).
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
from pathlib import Path

import torch
from common import REPO, Row, compose_train, load_average, machine, print_rows, today, with_step_clock

PRESETS = ("nano", "llama_nano", "qwen3_nano", "olmo2_nano", "moe_nano", "mla_nano")
SHARED_TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
FIXTURE_TEXT = REPO / "tests" / "fixtures" / "tinyshakespeare.txt.gz"


def corpus(folder: Path) -> Path:
    """Tiny Shakespeare: the shared copy beside the clone, else the one the tests ship (gzipped)."""
    if SHARED_TEXT.is_file():
        return SHARED_TEXT
    path = folder / "tinyshakespeare.txt"
    path.write_bytes(gzip.decompress(FIXTURE_TEXT.read_bytes()))
    return path


def train_preset(preset: str, text: Path, args) -> dict:
    """One run of the real training path; what the table shows of it."""
    from microgpt.core.flops import active_param_count, flops_per_token, kv_cache_bytes_per_token, param_count
    from microgpt.core.model import GPTConfig
    from microgpt.lightning.training import train

    steps = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_train(
            f"model={preset}", "tokenizer=char", "data=files", f"data.paths=[{text}]", f"seed={args.seed}",
            f"data.batch_size={args.batch}", f"data.block_size={args.block}", f"max_steps={steps}",
            f"eval_every={steps}", f"checkpoint_every={steps}", f"eval_batches={args.eval_batches}",
            f"optim.lr={args.lr}", f"schedule.warmup_steps={args.warmup}", "schedule.end_lr=1e-4",
            "callbacks.text_samples=null", "callbacks.progress_bar=null", "trainer.enable_model_summary=false",
            f"paths.output_dir={tmp}")
        clock = with_step_clock(cfg)
        load_before = load_average()
        train(cfg)
        run = clock.last
    config = GPTConfig.from_dict(dict(run.model_settings))
    seconds = run.steady_seconds_per_step(args.skip)
    return {
        "preset": preset, "params": param_count(config), "active": active_param_count(config),
        "flops": flops_per_token(config, args.block), "tokens_per_s": args.batch * args.block / seconds,
        "kv_bytes": kv_cache_bytes_per_token(config, torch.float32), "val_loss": run.validations[-1][2],
        "load": f"{load_before} / {load_average()}",
    }


def millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def table(results: list[dict]) -> str:
    lines = ["| preset | parameters | FLOPs/token (train) | tokens/s | KV cache bytes/token (fp32) | val loss |",
             "|---|---|---|---|---|---|"]
    for r in results:
        params = millions(r["params"]) + (f" ({millions(r['active'])} active)" if r["active"] != r["params"] else "")
        lines.append(f"| `{r['preset']}` | {params} | {r['flops'] / 1e6:.2f}M | {r['tokens_per_s']:,.0f} | "
                     f"{r['kv_bytes']:,} | {r['val_loss']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per preset")
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--block", type=int, default=128, help="trained context (the presets' own)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--eval-batches", type=int, default=40)
    parser.add_argument("--skip", type=int, default=5, help="steps left out of the rate (start-up)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    started, load_before = today(), load_average()
    with tempfile.TemporaryDirectory() as tmp:
        text = corpus(Path(tmp))
        results = [train_preset(p, text, args) for p in args.presets]
    print(f"\n### Architecture presets\n\n{started}; {machine()}\nLoad average (1, 5, 15 min) at the start: "
          f"{load_before}; at the end: {load_average()}; per run (before / after): "
          f"{'; '.join(r['preset'] + ' ' + r['load'] for r in results)}\n"
          f"Tiny Shakespeare ({text.name}), char tokenizer, {args.steps} steps x {args.batch} x {args.block} tokens, "
          f"AdamW lr {args.lr} (warmup {args.warmup}, cosine to 1e-4), seed {args.seed}, fp32\n\n{table(results)}\n")
    rows = [Row("architectures", r["preset"], f"val loss {r['val_loss']:.4f}, {r['tokens_per_s']:,.0f} tokens/s, "
                f"{millions(r['params'])} params") for r in results]
    print_rows("architectures (summary)", rows)
    return rows


if __name__ == "__main__":
    main()
