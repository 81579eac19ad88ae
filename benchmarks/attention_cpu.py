"""Fused attention on the CPU backend against the same attention written with matmul and softmax.

    python benchmarks/attention_cpu.py                       # L = S in 128, 512, 1024
    python benchmarks/attention_cpu.py --lengths 256 --repeat 5

For each length it compiles forward + backward (the gradients of sum(y * y)
with respect to q, k and v) of causal self-attention over (1, heads, L, E)
float32 inputs twice: with dlc.scaled_dot_product_attention (one fused op, the
online-softmax kernels of dlc/kernels/cpu/attention.py) and with
softmax(q k^T / sqrt(E) + causal mask) v in plain DSL ops. It prints the
median time of a call, the arena of the memory plan, and the largest
difference between the two results.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import dlc
from dlc import passes
from dlc.inspect import program_of


def build(length: int, heads: int, features: int, fused: bool):
    q, k, v = (dlc.input(n, (1, heads, length, features)) for n in "qkv")
    if fused:
        y = dlc.scaled_dot_product_attention(q, k, v, causal=True)
    else:
        keep = dlc.constant(np.tri(length, length, dtype=bool))
        scores = dlc.where(keep, dlc.matmul(q, dlc.swapaxes(k, -1, -2)) * (1 / math.sqrt(features)), -np.inf)
        y = dlc.matmul(dlc.softmax(scores, axis=-1), v)
    return dlc.compile([y, *dlc.grad(dlc.sum(y * y), [q, k, v])], target="cpu")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"causal self-attention, forward + backward, float32, 1 x {args.heads} heads, E = {args.features}")
    print(f"{'L = S':>6} {'fused ms':>9} {'unfused ms':>11} {'fused arena':>12} {'unfused arena':>14} {'max diff':>9}")
    for length in args.lengths:
        feeds = {n: rng.standard_normal((1, args.heads, length, args.features)).astype(np.float32) for n in "qkv"}
        row = {}
        for fused in (True, False):
            fn = build(length, args.heads, args.features, fused)
            out = fn(**feeds)
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fn(**feeds)
                times.append(time.perf_counter() - t0)
            arena = passes.plan_memory(program_of(fn), {}).arena_bytes
            row[fused] = (1e3 * float(np.median(times)), arena, out)
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(row[True][2], row[False][2]))
        print(f"{length:>6} {row[True][0]:>9.1f} {row[False][0]:>11.1f} {row[True][1] / 2**20:>10.1f} M "
              f"{row[False][1] / 2**20:>12.1f} M {diff:>9.1e}")


if __name__ == "__main__":
    main()
