"""Memory of W10's training step against the sequence length, read from the memory plan (nothing is run or timed).

    python benchmarks/attention_memory.py                     # T in 256, 1024, 4096
    python benchmarks/attention_memory.py --lengths 256 512

W10 (benchmarks/workloads.py: one GPT-style block, batch 16, width 256, 4
heads, causal attention through dlc.scaled_dot_product_attention, trained with
SGD) is compiled at each sequence length T (the position table cut or grown to
T rows); for the optimized program the script prints:

- the step's arena: the memory plan's arena bytes (every intermediate of
  forward, backward and update, placed by the planner);
- the attention ops' buffers in that arena: the outputs of attention
  (B, H, T, Dh + 1) and of its gradient, attention_grad ([dq | dk | dv],
  (B, H, T, 3 Dh)), from the plan's sizes;
- the attention kernels' own scratch, outside the arena: the most one thread
  of the CPU kernels (dlc/kernels/cpu/attention.py) holds at once, from its
  block sizes and its allocations (the one-pass backward's is the largest:
  its batch's T rows of dL/dout and dq with each row's log-sum-exp and delta,
  two BLOCK_Q x BLOCK_K blocks, dk, dv and the block products), per thread;
- for scale, the L x S score matrix an unfused attention would store
  (B * H * T * T * 4 bytes), which none of the above holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import dlc
from dlc.inspect import program_of
from dlc.kernels.cpu.attention import BLOCK_K, BLOCK_Q

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads  # noqa: E402
from frameworks import dlc_impl  # noqa: E402

ATTENTION_OPS = ("attention", "attention_grad", "attention_grad_q", "attention_grad_kv")


def w10_at(length: int):
    """W10's workload at sequence length `length`: the same weights, the position table as long as the text."""
    s = workloads.spec("W10")
    batch = s["x"].shape[0]
    rng = np.random.default_rng(1)
    s["params"]["wpe"] = (0.02 * rng.standard_normal((length, s["params"]["wpe"].shape[1]))).astype(np.float32)
    vocab = workloads.GPT["vocab"]
    s["x"], s["y"] = (rng.integers(0, vocab, (batch, length)) for _ in range(2))
    return s


def kernel_scratch_bytes(head_dim: int, length: int, itemsize: int = 4) -> int:
    """The most one thread of the attention kernels holds at once (the one-pass backward's allocations)."""
    blocks = 2 * BLOCK_Q * BLOCK_K                      # the recomputed probabilities and ds
    key_rows = 4 * BLOCK_K * head_dim                   # dk, dv and the two block products added to them
    query_rows = BLOCK_Q * head_dim                     # dq's block product
    rows = length * (2 * head_dim + 2)                  # the batch's dL/dout and dq rows, log-sum-exp, delta
    return itemsize * (blocks + key_rows + query_rows + rows)


def measure(length: int) -> dict:
    s = w10_at(length)
    _, functions = dlc_impl.build_function("W10", s, target="reference")  # the same Program as on cpu, no JIT
    program = program_of(functions[0])
    plan = program.memory_plan({})
    attention = sum(plan.sizes.get(id(n), 0) for k in program.kernels for n in k.nodes if n.op in ATTENTION_OPS)
    heads, width, batch = s["heads"], workloads.GPT["width"], s["x"].shape[0]
    return dict(arena=plan.arena_bytes, attention=attention, scratch=kernel_scratch_bytes(width // heads, length),
                scores=batch * heads * length * length * 4)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    args = parser.parse_args()
    g = workloads.GPT
    print(f"W10 step (batch {g['batch']}, width {g['width']}, {g['heads']} heads, float32), in MiB; "
          f"'per 256': the column before divided by T / 256")
    print(f"{'T':>6} {'step arena':>11} {'per 256':>8} {'attention buffers':>18} {'per 256':>8} "
          f"{'kernel scratch':>15} {'T x T scores':>13}")
    for length in args.lengths:
        m = measure(length)
        per = 256 / length
        print(f"{length:>6} {m['arena'] / 2**20:>11.1f} {m['arena'] * per / 2**20:>8.2f} "
              f"{m['attention'] / 2**20:>18.2f} {m['attention'] * per / 2**20:>8.3f} "
              f"{m['scratch'] / 2**20:>15.3f} {m['scores'] / 2**20:>13.0f}", flush=True)


if __name__ == "__main__":
    dlc.reset_default_store()
    main()
