"""GPU benchmarks of the CUDA backend: training steps, SGEMM GFLOP/s and fused elementwise GB/s.

Run on a machine with an NVIDIA GPU and pycuda (benchmarks/gpu_check.sh does):

    python3 benchmarks/gpu_bench.py [--quick] [--json results.json]

- W1 MLP train step (B=128, 784-512-512-10) and a LeNet-5-like CNN step (B=64,
  1x28x28): ms per step, inputs uploaded and the loss downloaded every step;
- SGEMM 4096^3 (dlc's tiled kernel, each tile configuration) against
  torch.matmul with TF32 off when torch with CUDA is installed;
- gelu_tanh(x*a+b) over 64M floats: the fused generated kernel's GB/s
  against a device-to-device copy of the same bytes (the roofline here).
Kernel-only timings use CUDA events around launches on data already on the
device; each number is the median of several repetitions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dlc  # noqa: E402
from dlc.codegen.cuda import GEMM_CONFIGS, gemm_grid, library_source  # noqa: E402


def _events():
    import pycuda.driver as drv

    return drv.Event(), drv.Event()


def time_device(fn, reps: int) -> float:
    """Median milliseconds of fn() measured with CUDA events (after one warm-up call)."""
    fn()
    times = []
    for _ in range(reps):
        start, end = _events()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(end.time_since(start))
    return statistics.median(times)


def time_host(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ----------------------------------------------------------------------------
# training steps


def mlp_step(batch=128, sizes=(784, 512, 512, 10)):
    rng = np.random.default_rng(0)
    store = dlc.Store()
    x = dlc.input("x", ("B", sizes[0]))
    labels = dlc.input("labels", ("B",), "int64")
    h, params = x, []
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = dlc.param((rng.standard_normal((m, n)) * np.sqrt(2 / m)).astype(np.float32), f"w{i}", store)
        b = dlc.param(np.zeros(n, np.float32), f"b{i}", store)
        params += [w, b]
        h = h @ w + b
        if i < len(sizes) - 2:
            h = dlc.relu(h)
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(h) * dlc.one_hot(labels, sizes[-1]), axis=1))
    grads = dlc.grad(loss, params)
    fn = dlc.compile(loss, updates={p: p - 0.01 * g for p, g in zip(params, grads)}, target="cuda", store=store)
    args = (rng.standard_normal((batch, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], batch))
    return fn, args


def cnn_step(batch=64):
    rng = np.random.default_rng(1)
    store = dlc.Store()
    x = dlc.input("x", ("B", 1, 28, 28))
    labels = dlc.input("labels", ("B",), "int64")

    def p(name, shape, fan_in):
        return dlc.param((rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32), name, store)

    w1, b1 = p("w1", (6, 1, 5, 5), 25), p("b1", (6,), 1)
    w2, b2 = p("w2", (16, 6, 5, 5), 150), p("b2", (16,), 1)
    w3, b3 = p("w3", (256, 120), 256), p("b3", (120,), 1)
    w4, b4 = p("w4", (120, 10), 120), p("b4", (10,), 1)
    h = dlc.max_pool2d(dlc.relu(dlc.conv2d(x, w1, b1)), 2)          # (B, 6, 12, 12)
    h = dlc.max_pool2d(dlc.relu(dlc.conv2d(h, w2, b2)), 2)          # (B, 16, 4, 4)
    h = dlc.relu(dlc.reshape(h, ("B", 256)) @ w3 + b3)
    logits = h @ w4 + b4
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(logits) * dlc.one_hot(labels, 10), axis=1))
    params = [w1, b1, w2, b2, w3, b3, w4, b4]
    grads = dlc.grad(loss, params)
    fn = dlc.compile(loss, updates={q: q - 0.01 * g for q, g in zip(params, grads)}, target="cuda", store=store)
    args = (rng.standard_normal((batch, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, batch))
    return fn, args


def bench_steps(reps: int) -> dict:
    out = {}
    for name, make in (("mlp_train_step_ms", mlp_step), ("cnn_train_step_ms", cnn_step)):
        t0 = time.perf_counter()
        fn, args = make()
        fn(*args)
        out[name.replace("_ms", "_first_call_s")] = round(time.perf_counter() - t0, 2)
        out[name] = round(time_host(lambda fn=fn, args=args: fn(*args), reps), 3)
    return out


# ----------------------------------------------------------------------------
# SGEMM


def bench_sgemm(n: int, reps: int) -> dict:
    import pycuda.driver as drv
    from pycuda.compiler import SourceModule

    mod = SourceModule("#define DLC_SGEMM_STANDALONE\n" + library_source(("prelude", "gemm")), no_extern_c=True,
                       options=["-std=c++17", "-O3"])
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    da, db, dc = drv.to_device(a), drv.to_device(b), drv.mem_alloc(a.nbytes)
    flops = 2.0 * n ** 3
    out = {}
    for tag, (bm, bn, _, tm, tn) in GEMM_CONFIGS.items():
        fn = mod.get_function(f"dlc_sgemm_{tag}_nn")
        fn.prepare("PPPqqqff")
        grid, block = gemm_grid(tag, n, n), ((bm // tm) * (bn // tn), 1, 1)
        ms = time_device(lambda fn=fn, grid=grid, block=block: fn.prepared_call(grid, block, da, db, dc, n, n, n,
                                                                                 1.0, 0.0), reps)
        out[f"sgemm_{n}_{tag}_gflops"] = round(flops / ms / 1e6, 1)
    c = np.empty_like(a)
    drv.memcpy_dtoh(c, dc)
    sample = rng.integers(0, n, (16, 2))
    ref = np.array([a[i].astype(np.float64) @ b[:, j].astype(np.float64) for i, j in sample])
    out["sgemm_max_rel_err"] = float(np.max(np.abs(c[sample[:, 0], sample[:, 1]] - ref) / (np.abs(ref) + 1)))
    try:
        import torch

        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = False
            ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
            ms = time_device(lambda: torch.matmul(ta, tb), reps)
            out[f"torch_sgemm_{n}_gflops"] = round(flops / ms / 1e6, 1)
    except ImportError:
        out["torch_sgemm"] = "torch not installed"
    return out


# ----------------------------------------------------------------------------
# fused elementwise


def bench_elementwise(n: int, reps: int) -> dict:
    import pycuda.driver as drv

    x = dlc.input("x", ("N",))
    a = dlc.input("a", ("N",))
    b = dlc.input("b", ("N",))
    fn = dlc.compile(dlc.gelu(x * a + b, approximate="tanh"), target="cuda")
    rng = np.random.default_rng(3)
    args = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    got = fn(*args)
    ref = dlc.compile(dlc.gelu(x * a + b, approximate="tanh"))(*args)
    backend = fn.backend
    feeds, env, _ = fn.signature.bind(args, {})
    ptrs = backend.upload_inputs(feeds)
    kernels = len(backend.module.kernels)  # one fused kernel when fusion works

    def run_kernels():
        backend.runner.run(env, ptrs)

    ms = time_device(run_kernels, reps)
    moved = 4 * n * 4  # three reads and one write
    src, dst = drv.mem_alloc(moved // 2), drv.mem_alloc(moved // 2)
    copy_ms = time_device(lambda: drv.memcpy_dtod(dst, src, moved // 2), reps)
    return {"fused_gelu_kernels": kernels, "fused_gelu_gbs": round(moved / ms / 1e6, 1),
            "d2d_copy_gbs": round(moved / copy_ms / 1e6, 1),
            "fused_gelu_max_abs_err": float(np.max(np.abs(got - ref)))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (the GPU check uses it)")
    parser.add_argument("--json", help="also write the results to this file")
    opts = parser.parse_args(argv)
    reps = 5 if opts.quick else 20
    import pycuda.autoinit  # noqa: F401

    results = {"device": pycuda.autoinit.device.name()}
    results.update(bench_steps(reps * 4))
    results.update(bench_sgemm(4096, reps))
    results.update(bench_elementwise(1 << 26, reps))
    width = max(len(k) for k in results)
    for k, v in results.items():
        print(f"{k:{width}s}  {v}")
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
