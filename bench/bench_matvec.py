"""The float32 matrix-vector products of one decoding step, side by side: the 49 weight matrices of a
GPT-2 124M-shaped model (12 blocks x qkv / proj / fc / fc-proj, and the 50257 x 768 head), each
multiplied by one token's activations, by three of torch's CPU kernels, beside a plain sum over the
same bytes (about the most any of them could stream).

What `bench_generate.py`'s float32 row is made of: a decoding step is these products plus a few ms
of small operations, so this says how far the products are from the machine's memory bandwidth.

    python bench/bench_matvec.py [--reps 7]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

GPT2_SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12 + [(50257, 768)]  # (out, in)


def main(argv: list[str] | None = None) -> list:
    from common import Row, interleaved, load_average, median, print_rows

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled row (~30 s of compiling)")
    args = parser.parse_args(argv)
    load_before = load_average()
    torch.manual_seed(0)
    weights = [torch.randn(shape) for shape in GPT2_SHAPES]
    biases = [torch.randn(shape[0]) for shape in GPT2_SHAPES[:-1]] + [None]  # the head has none
    tokens = [torch.randn(1, 1, shape[1]) for shape in GPT2_SHAPES]
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    onednn = torch.ops.mkldnn._linear_pointwise  # what microgpt.core.layers.Linear decodes with eagerly
    stream = torch.ones(nbytes // 4)
    variants = {
        "oneDNN _linear_pointwise (microgpt's eager decoding path)":
            lambda: [onednn(x, w, b, "none", [], "") for x, w, b in zip(tokens, weights, biases)],
        "F.linear (MKL; transformers' path)": lambda: [F.linear(x, w, b) for x, w, b in zip(tokens, weights, biases)],
        "torch.mv": lambda: [torch.mv(w, x.view(-1)) for x, w in zip(tokens, weights)],
        "a plain sum over as many bytes": lambda: stream.sum(),
    }
    if not args.no_compile:
        variants["inductor's fused multiply-and-sum (microgpt's compiled decode step)"] = compiled_products(weights, biases, tokens)
    with torch.inference_mode():
        times = interleaved(variants, args.reps, warmup=2)
    print(f"{len(weights)} products, {nbytes / 1e6:.0f} MB of float32 weights, {torch.get_num_threads()} threads, "
          f"{args.reps} interleaved reps; load average {load_before} before, {load_average()} after")
    rows = []
    for name, ts in times.items():
        seconds = median(ts)
        rows.append(Row("matvec", name, f"{seconds * 1e3:.1f} ms, {nbytes / seconds / 1e9:.1f} GB/s "
                                        f"(runs {min(ts) * 1e3:.1f}-{max(ts) * 1e3:.1f} ms)"))
    print_rows(f"Decoding's float32 products ({args.reps} reps, medians)", rows)
    return rows


def compiled_products(weights, biases, tokens):
    """All the products in one compiled graph of microgpt `Linear`s, as `compile_decode_step` compiles them."""
    from microgpt.core.layers import Linear
    from microgpt.core.model import decode_compile_options

    layers = torch.nn.ModuleList(Linear(w.size(1), w.size(0), bias=b is not None) for w, b in zip(weights, biases))
    with torch.no_grad():
        for layer, w, b in zip(layers, weights, biases):
            layer.weight.copy_(w)
            if b is not None:
                layer.bias.copy_(b)
    step = torch.compile(lambda: [layer(x) for layer, x in zip(layers, tokens)], **decode_compile_options({}))
    with torch.inference_mode():  # compiles, and checks that the fused products are the products
        for got, x, w, b in zip(step(), tokens, weights, biases):
            torch.testing.assert_close(got, F.linear(x, w, b), atol=1e-3, rtol=1e-4)
    return step


if __name__ == "__main__":
    main()
