"""Generation speed: a GPT-2 124M-shaped model (random weights) decoding 100 tokens from a 10-token
prompt on CPU, greedy, batch 1.

Side by side in one process, on the same weights: ours with the KV cache, ours without it (the
whole window recomputed every step), and `transformers` `generate(use_cache=True)`. The model is a
random `GPT2LMHeadModel` saved with `save_pretrained` and loaded by `microgpt.load_model`, so the
comparison also checks that both produce the same tokens. Runs are interleaved; medians reported.

    python bench/bench_generate.py [--reps 5] [--new-tokens 100] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch


def main(argv: list[str] | None = None) -> list:
    """Prints the detailed table; returns the summary rows for bench/run_all.py."""
    from common import Row

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--prompt-tokens", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    from microgpt.io.loading import load_model

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()  # 124M, random weights
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory, safe_serialization=True)
        ours = load_model(directory).model
    prompt = torch.randint(0, 50257, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
    n = args.new_tokens

    runners = {
        "microgpt, KV cache": lambda: ours.generate(prompt, n, temperature=0, use_cache=True),
        "microgpt, no cache": lambda: ours.generate(prompt, n, temperature=0, use_cache=False),
        "transformers generate(use_cache=True)": lambda: hf.generate(
            prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=50256),
    }
    outputs = {}
    with torch.inference_mode():
        for name, run in runners.items():  # warm-up, and the tokens each produces
            outputs[name] = run()
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.reps):
            for name, run in runners.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)

    reference = outputs["transformers generate(use_cache=True)"]
    baseline = statistics.median(times["transformers generate(use_cache=True)"])
    print(f"GPT-2 124M shape, random weights, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; {args.prompt_tokens}-token prompt, {n} new tokens, greedy, "
          f"median of {args.reps}")
    rows = []
    print(f"{'':40s} {'median s':>9s} {'tokens/s':>9s} {'vs transformers':>16s} {'same tokens':>12s}")
    for name, ts in times.items():
        median = statistics.median(ts)
        same = torch.equal(outputs[name], reference)
        print(f"{name:40s} {median:9.3f} {n / median:9.1f} {baseline / median:15.2f}x {str(same):>12s}")
        rows.append(Row("generate", f"gpt2_124m shape, {n} new tokens, batch 1: {name}",
                        f"{n / median:.1f} tok/s ({baseline / median:.2f}x transformers; same tokens: {same})"))
    return rows


if __name__ == "__main__":
    main()
