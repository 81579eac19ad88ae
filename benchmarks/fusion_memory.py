"""Fusion and memory planning on four training steps: ops before, kernels after, arena against its bounds.

For an MLP, a CNN, an LSTM and a GAN (discriminator and generator steps),
built with dlc.nn and Adam, prints a markdown table: the computing ops of the
traced step, the kernels of the unfused baseline and of the optimized program,
and the arena of the memory plan against the sum of the program's buffers (no
planning), the unfused baseline's sum, and the peak of live bytes in the
chosen order (the lower bound).

    python3 benchmarks/fusion_memory.py
    python3 benchmarks/fusion_memory.py --runtime   # also: the MLP step on the cpu target, fused or not (minutes)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import dlc
from dlc import nn
from dlc.graph import Graph
from dlc.ops import OPS, SOURCE
from dlc.passes import optimize, plan_memory, unfused_program, unplanned_memory


def mlp_step():
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    x, y = dlc.input("x", ("B", 784)), dlc.input("labels", ("B",), "int64")
    opt = dlc.optim.Adam(model.parameters(), lr=1e-3)
    step = nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), [x, y], opt, modules=model,
                           target="reference")
    return step.function, {"B": 128}


def cnn_step():
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    x, y = dlc.input("x", ("B", 1, 28, 28)), dlc.input("labels", ("B",), "int64")
    opt = dlc.optim.Adam(model.parameters(), lr=1e-3)
    step = nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), [x, y], opt, modules=model,
                           target="reference")
    return step.function, {"B": 64}


def lstm_step():
    class Reader(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(64, 128)
            self.head = nn.Linear(128, 10)

        def forward(self, x):
            _, (h, _) = self.lstm(x)
            return self.head(h[0])

    model = Reader()
    x, y = dlc.input("x", (32, "B", 64)), dlc.input("labels", ("B",), "int64")
    opt = dlc.optim.Adam(model.parameters(), lr=1e-3)
    step = nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), [x, y], opt, modules=model,
                           target="reference")
    return step.function, {"B": 32}


def gan_steps():
    def mlp(n_in, n_out, hidden=128):
        return nn.Sequential(nn.Linear(n_in, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden),
                             nn.LeakyReLU(0.2), nn.Linear(hidden, n_out))

    G, D = mlp(16, 2), mlp(2, 1)
    real, z = dlc.input("real", ("B", 2)), dlc.input("z", ("B", 16))
    opt_d = dlc.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = dlc.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    d = nn.compile_step(lambda r, z: dlc.mean(dlc.softplus(-D(r))) + dlc.mean(dlc.softplus(D(G(z)))),
                        [real, z], opt_d, modules=[D, G], target="reference")
    g = nn.compile_step(lambda z: dlc.mean(dlc.softplus(-D(G(z)))), [z], opt_g, modules=[D, G], target="reference")
    return [("GAN D step", d.function, {"B": 64}), ("GAN G step", g.function, {"B": 64})]


def computing_ops(fn) -> int:
    return sum(1 for n in Graph(fn.outputs + [v for _, v in fn.updates]).nodes if OPS[n.op].kind != SOURCE)


def measure(name, fn, env) -> dict:
    t0 = time.perf_counter()
    program = optimize(fn.outputs, fn.updates, fn.inputs)
    t1 = time.perf_counter()
    plan = plan_memory(program, env)
    t2 = time.perf_counter()
    base = unfused_program(fn.outputs, fn.updates, fn.inputs)
    topo = plan_memory(optimize(fn.outputs, fn.updates, fn.inputs, schedule=False), env)
    return {"name": name, "ops": computing_ops(fn), "unfused": len(base.kernels), "kernels": len(program.kernels),
            "topo_arena": topo.arena_bytes,
            "arena": plan.arena_bytes, "unplanned": plan.unplanned_bytes, "lower": plan.lower_bound_bytes,
            "baseline": unplanned_memory(base, env).arena_bytes, "inplace": len(plan.inplace),
            "optimize_ms": 1e3 * (t1 - t0), "plan_ms": 1e3 * (t2 - t1), "env": env}


def main() -> None:
    rows = []
    for name, build in [("MLP 784-512-512-10", mlp_step), ("LeNet-5 CNN", cnn_step), ("LSTM T=32 H=128", lstm_step)]:
        dlc.reset_default_store()
        fn, env = build()
        rows.append(measure(name, fn, env))
    dlc.reset_default_store()
    rows += [measure(name, fn, env) for name, fn, env in gan_steps()]
    print("| training step | binding | ops | kernels (unfused) | kernels (fused) | arena KiB | unplanned KiB "
          "| arena/unplanned | unfused unplanned KiB | arena/unfused | lower bound KiB | arena/lower bound "
          "| arena KiB, topological order | in-place | optimize ms | plan ms |")
    print("|" + "---|" * 16)
    for r in rows:
        env = ", ".join(f"{k}={v}" for k, v in r["env"].items())
        print(f"| {r['name']} | {env} | {r['ops']} | {r['unfused']} | {r['kernels']} | {r['arena'] / 1024:.1f} "
              f"| {r['unplanned'] / 1024:.1f} | {r['arena'] / r['unplanned']:.0%} | {r['baseline'] / 1024:.1f} "
              f"| {r['arena'] / r['baseline']:.0%} | {r['lower'] / 1024:.1f} | {r['arena'] / r['lower']:.3f} "
              f"| {r['topo_arena'] / 1024:.1f} | {r['inplace']} "
              f"| {r['optimize_ms']:.0f} | {r['plan_ms']:.1f} |")


def runtime(steps: int = 30) -> None:
    """Median time of the MLP's training step on the cpu target with and without fusion, and its compile time."""
    print("\n| MLP step, cpu target, B=128 | kernels | compile + first step s | median step ms |")
    print("|---|---|---|---|")
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((128, 784)).astype(np.float32), rng.integers(0, 10, 128)
    for fuse in (True, False):
        dlc.reset_default_store()
        nn.manual_seed(0)
        model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        x, y = dlc.input("x", ("B", 784)), dlc.input("labels", ("B",), "int64")
        opt = dlc.optim.Adam(model.parameters(), lr=1e-3)
        t0 = time.perf_counter()
        step = nn.compile_step(lambda x, y, model=model: nn.cross_entropy(model(x), y), [x, y], opt,
                               modules=model, target="cpu", fuse=fuse)
        step(X, Y)
        cold = time.perf_counter() - t0
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            step(X, Y)
            times.append(time.perf_counter() - t)
        kernels = len(step.function.backend.program.kernels)
        print(f"| {'fused' if fuse else 'unfused (fuse=False)'} | {kernels} | {cold:.1f} | "
              f"{1e3 * float(np.median(times)):.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runtime", action="store_true", help="also time the MLP step on the cpu target")
    args = parser.parse_args()
    main()
    if args.runtime:
        runtime()
