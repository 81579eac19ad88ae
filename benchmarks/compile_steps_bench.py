"""W4's GAN steps as two compiled functions against one program (dlc.compile_steps), in one process.

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python3 benchmarks/compile_steps_bench.py [--rounds 4] [--calls 30]

Both variants start from the same weights (stores of their own) and run the
same data; their losses are printed for three calls first (they must be
equal). Then rounds alternate the order of the two variants; each round shows
the median process time per D+G step of each and their ratio, every round
printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads  # noqa: E402
from frameworks import dlc_impl as D  # noqa: E402

import dlc  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    s = workloads.spec("W4")
    dlc.reset_default_store()
    gp, dp = D._params(s["g_params"], "g"), D._params(s["d_params"], "d")
    z, real = dlc.input("z", ("B", 64)), dlc.input("real", ("B", 784))

    def gen():
        return D._mlp(gp, z, dlc.relu, dlc.tanh)

    def disc(v):
        return D._mlp(dp, v, lambda a: dlc.leaky_relu(a, 0.2))

    d_loss = D._bce_logits(disc(real), 1.0) + D._bce_logits(disc(dlc.stop_gradient(gen())), 0.0)
    g_loss = D._bce_logits(disc(gen()), 1.0)
    d_up = D._adam(d_loss, dp, s["lr"], s["betas"], s["eps"], "adam_d.")
    g_up = D._adam(g_loss, gp, s["lr"], s["betas"], s["eps"], "adam_g.")
    store = dlc.default_store()

    def copy():
        out = dlc.Store()
        for k, v in store.items():
            out.add(k, v.copy(), store.is_trainable(k))
        return out

    apart_store, one_store = copy(), copy()
    d_step = dlc.compile(d_loss, inputs=[z, real], updates=d_up, target="cpu", store=apart_store)
    g_step = dlc.compile(g_loss, inputs=[z], updates=g_up, target="cpu", store=apart_store)
    both = dlc.compile_steps([(d_loss, d_up), (g_loss, g_up)], inputs=[z, real], target="cpu", store=one_store)
    zv, rv = s["z"], s["real"]
    variants = {"two functions": lambda: (d_step(zv, rv), g_step(zv)), "one program": lambda: both(zv, rv)}
    for _ in range(3):
        print("losses:", {name: [round(float(v), 7) for v in run()] for name, run in variants.items()})
    print("kernels: two functions", d_step.backend.stats["kernels"] + g_step.backend.stats["kernels"],
          "one program", both.backend.stats["kernels"])
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        med = {}
        for name in order:
            times = []
            for _ in range(args.calls):
                t0 = time.process_time()
                variants[name]()
                times.append(time.process_time() - t0)
            med[name] = float(np.median(times)) * 1e3
        print(f"round {r + 1}: two functions {med['two functions']:.2f} ms, one program {med['one program']:.2f} ms, "
              f"ratio {med['one program'] / med['two functions']:.2f}")


if __name__ == "__main__":
    main()
