"""Generation speed: a GPT-2 124M-shaped model (random weights) decoding 100 tokens from a 10-token
prompt on CPU, greedy.

Side by side in one process, on the same weights, in each dtype (float32, bfloat16): ours with the
KV cache (eager, and with `compile_decode_step()`), ours without a cache (float32: the whole window
recomputed every step), ours on a batch of 8 prompts, and `transformers` `generate(use_cache=True)`
on the same weights in the same dtype. The model is a random `GPT2LMHeadModel` saved with
`save_pretrained` and loaded by `microgpt.load_model(..., dtype=...)`, so the comparison also says
whether both produce the same tokens. Runs are interleaved; medians reported; the load average is
recorded before and after. The target (issue 18): >= 2x transformers' tokens/s at batch 1, each
dtype against transformers in the same dtype.

    python bench/bench_generate.py [--reps 5] [--new-tokens 100] [--batch 8] [--threads N] [--no-compile]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TARGET = 2.0  # x transformers' tokens/s, same weights, same dtype, batch 1


STREAM = ("float32", "one streaming read of the weights' bytes")


def weight_bytes(model) -> int:
    """What one decoding step reads at least: every matrix a token is multiplied by (the head included)."""
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules() if isinstance(m, torch.nn.Linear))


def bandwidth_row(weights: int, stream_seconds: float, transformers_rate: float):
    """The most tokens/s any float32 decoder can reach here at batch 1: each token reads all the weights,
    at best at the rate a plain sum streams the same number of bytes (timed in the same alternation)."""
    from common import Row

    bound = 1 / stream_seconds
    return Row("generate", f"float32 memory-bandwidth bound: {weights / 1e6:.0f} MB of weights per token at the "
               f"{weights / stream_seconds / 1e9:.1f} GB/s a sum streams them",
               f"{bound:.1f} tok/s = {bound / transformers_rate:.2f}x transformers float32 (2x needs "
               f"{2 * transformers_rate:.1f} tok/s, {2 * transformers_rate / bound:.0%} of the bound)")


def main(argv: list[str] | None = None) -> list:
    """Prints the detailed table; returns the summary rows for bench/run_all.py."""
    from common import Row, interleaved, load_average, machine, median, print_rows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--prompt-tokens", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8, help="prompts in the batched rows")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled decode step rows (~1 min of compiling)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = load_average()

    import transformers

    from microgpt.io.loading import load_model

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()  # 124M, random weights
    ours = {}
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory, safe_serialization=True)
        for name in DTYPES:
            ours[name] = load_model(directory, dtype=name).model
    theirs = {"float32": hf, "bfloat16": copy.deepcopy(hf).to(torch.bfloat16)}
    n, b = args.new_tokens, args.batch
    prompts = torch.randint(0, 50257, (b, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
    prompt = prompts[:1]

    def hf_generate(model):
        return lambda: model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                                      min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=50256)

    runners = {}  # (dtype, variant) -> run
    for name in DTYPES:
        model = ours[name]
        runners[name, "transformers generate(use_cache=True)"] = hf_generate(theirs[name])
        runners[name, "microgpt, KV cache"] = lambda m=model: m.generate(prompt, n, temperature=0)
        if not args.no_compile:
            compiled = copy.deepcopy(model).compile_decode_step()
            runners[name, "microgpt, KV cache, compiled decode step"] = lambda m=compiled: m.generate(prompt, n, temperature=0)
        if name == "float32":
            runners[name, "microgpt, no cache"] = lambda m=model: m.generate(prompt, n, temperature=0, use_cache=False)
        runners[name, f"microgpt, KV cache, batch of {b}"] = lambda m=model: m.generate(prompts, n, temperature=0)

    outputs, first_call = {}, {}
    with torch.inference_mode():
        for key, run in runners.items():  # the warm-up (and the compiling), and the tokens each produces
            start = time.perf_counter()
            outputs[key] = run()
            first_call[key] = time.perf_counter() - start
        weights = weight_bytes(ours["float32"])
        stream = torch.ones(weights // 4)
        times = interleaved({**runners, STREAM: lambda: [stream.sum() for _ in range(10)]}, args.reps, warmup=0)
    stream_seconds = median(times.pop(STREAM)) / 10

    print(f"GPT-2 124M shape, random weights, {machine()}, transformers {transformers.__version__}; "
          f"{args.prompt_tokens}-token prompt, {n} new tokens, greedy, median of {args.reps} interleaved runs; "
          f"load average {load_before} before, {load_average()} after")
    print(f"{'dtype':9s} {'':44s} {'median s':>9s} {'tok/s':>7s} {'per prompt':>11s} {'vs transformers':>16s} "
          f"{'vs batch 1':>11s} {'same tokens':>12s} {'first call s':>13s}")
    rows, best = [], {}
    for (name, variant), ts in times.items():
        seconds = median(ts)
        batch = outputs[name, variant].size(0)
        reference = outputs[name, "transformers generate(use_cache=True)"]
        baseline = median(times[name, "transformers generate(use_cache=True)"])
        alone = median(times[name, "microgpt, KV cache"])
        same = torch.equal(outputs[name, variant][:1], reference)  # a batch's first prompt is the batch-1 prompt
        versus = f"{baseline / seconds:15.2f}x" if batch == 1 else f"{'':16s}"
        per_batch_1 = f"{alone / seconds:10.2f}x" if batch > 1 else f"{'':11s}"
        print(f"{name:9s} {variant:44s} {seconds:9.3f} {batch * n / seconds:7.1f} {n / seconds:11.1f} {versus} "
              f"{per_batch_1} {str(same):>12s} {first_call[name, variant]:13.1f}")
        if batch > 1:
            result = (f"{batch * n / seconds:.1f} tok/s in all, {n / seconds:.1f} per prompt = {alone / seconds:.2f}x "
                      f"batch 1's {n / alone:.1f} (first prompt's tokens as alone: "
                      f"{torch.equal(outputs[name, variant][:1], outputs[name, 'microgpt, KV cache'])})")
        else:
            result = f"{n / seconds:.1f} tok/s ({baseline / seconds:.2f}x transformers {name}; same tokens: {same})"
            if variant.startswith("microgpt, KV cache"):
                best[name] = max(best.get(name, (0.0, "", 0.0)), (baseline / seconds, variant, n / seconds))
        rows.append(Row("generate", f"gpt2_124m shape, {name}, {n} new tokens: {variant}", result))
    for name, (ratio, variant, _) in best.items():
        rows.append(Row("generate", f"batch 1, {name}: fastest microgpt ({variant}) vs transformers {name}, same weights",
                        f"{ratio:.2f}x", f">= {TARGET:g}x", ratio >= TARGET))
    # Informative: each side in its fastest dtype on this machine (what a user would pick).
    ours_best = max((rate, f"{name}, {variant}") for name, (_, variant, rate) in best.items())
    theirs_best = max((n / median(times[name, "transformers generate(use_cache=True)"]), name) for name in DTYPES)
    rows.append(Row("generate", f"batch 1, fastest of each: microgpt {ours_best[1]} vs transformers {theirs_best[1]}",
                    f"{ours_best[0] / theirs_best[0]:.2f}x ({ours_best[0]:.1f} vs {theirs_best[0]:.1f} tok/s)",
                    f">= {TARGET:g}x", ours_best[0] / theirs_best[0] >= TARGET))
    rows.append(bandwidth_row(weights, stream_seconds, n / median(times["float32", "transformers generate(use_cache=True)"])))
    print_rows(f"Generation ({args.reps} interleaved reps, medians; load {load_before} -> {load_average()})", rows)
    return rows


if __name__ == "__main__":
    main()
