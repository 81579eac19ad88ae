"""GPU benchmarks of the CUDA backend: training steps, SGEMM GFLOP/s and fused elementwise GB/s.

Run on a machine with an NVIDIA GPU and pycuda (benchmarks/gpu_check.sh does):

    python3 benchmarks/gpu_bench.py [--quick] [--json results.json]

- W1 MLP train step (B=128, 784-512-512-10) and a LeNet-5-like CNN step (B=64,
  1x28x28): ms per step, inputs uploaded and the loss downloaded every step,
  against the same steps in PyTorch eager on the same card when torch has CUDA;
- SGEMM 4096^3 (dlc's tiled kernel, each tile configuration) against
  torch.matmul with TF32 off when torch with CUDA is installed;
- gelu_tanh(x*a+b) over 64M floats: the fused generated kernel's GB/s
  against a device-to-device copy of the same bytes (the roofline here).
Kernel-only timings use CUDA events around launches whose arguments are built
beforehand, on data already on the device; each number is the median of
several repetitions of a batch of back-to-back launches (host overhead
between launches overlaps the device's work instead of being timed).
Results are written to --json after every section, so a timeout keeps what
was measured; a section that fails records its error and the next one runs.
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


def time_device(fn, reps: int, batch: int = 5) -> float:
    """Median milliseconds of one fn() measured with CUDA events over `batch` back-to-back calls (after a warm-up)."""
    fn()
    times = []
    for _ in range(reps):
        start, end = _events()
        start.record()
        for _ in range(batch):
            fn()
        end.record()
        end.synchronize()
        times.append(end.time_since(start) / batch)
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


def torch_step(kind: str, args):
    """The same step in PyTorch eager on the same card (fp32, TF32 off): inputs uploaded, the loss read back."""
    import torch
    from torch import nn

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if kind == "mlp":
        model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    else:
        model = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 120), nn.ReLU(), nn.Linear(120, 10))
    model = model.cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x_host, y_host = torch.from_numpy(args[0]), torch.from_numpy(args[1])

    def step():
        x, y = x_host.cuda(), y_host.cuda()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def bench_steps(reps: int) -> dict:
    out = {}
    for kind, make in (("mlp", mlp_step), ("cnn", cnn_step)):
        t0 = time.perf_counter()
        fn, args = make()
        fn(*args)
        out[f"{kind}_train_step_first_call_s"] = round(time.perf_counter() - t0, 2)
        out[f"{kind}_train_step_ms"] = round(time_host(lambda fn=fn, args=args: fn(*args), reps), 3)
        try:
            import torch

            if torch.cuda.is_available():
                out[f"torch_{kind}_train_step_ms"] = round(time_host(torch_step(kind, args), reps), 3)
        except ImportError:
            out[f"torch_{kind}_train_step"] = "torch not installed"
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
    runner = backend.runner
    runner.prepare(env)
    calls = [(runner.launchers[ln.entry], ln.grid, ln.block, runner._args(rk, ln, env, ptrs))
             for k, rk in runner.steps if rk is not None for ln in runner.launches[k.name]]

    def run_kernels():  # the arguments are built once, outside the timed region
        for launch, grid, block, call_args in calls:
            launch(grid, block, call_args)

    ms = time_device(run_kernels, reps)
    moved = 4 * n * 4  # three reads and one write
    src, dst = drv.mem_alloc(moved // 2), drv.mem_alloc(moved // 2)
    copy_ms = time_device(lambda: drv.memcpy_dtod(dst, src, moved // 2), reps)
    return {"fused_gelu_kernels": kernels, "fused_gelu_gbs": round(moved / ms / 1e6, 1),
            "d2d_copy_gbs": round(moved / copy_ms / 1e6, 1),
            "fused_gelu_max_abs_err": float(np.max(np.abs(got - ref)))}


def write_json(path: str | None, results: dict) -> None:
    """Replace the JSON file with the results so far (a rename: never a half-written file)."""
    if path:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (the GPU check uses it)")
    parser.add_argument("--json", help="also write the results to this file, after every section")
    opts = parser.parse_args(argv)
    reps = 5 if opts.quick else 20
    import pycuda.driver as drv

    from dlc.runtime.cuda import PyCudaDevice

    device = PyCudaDevice()  # dlc's context (the device's primary context, which torch shares)
    failed = 0
    with device.active():
        results = {"device": drv.Context.get_device().name(), "cuda_driver": drv.get_driver_version(),
                   "pycuda_cuda_version": ".".join(map(str, drv.get_version()))}
        write_json(opts.json, results)
        sections = [("steps", lambda: bench_steps(reps * 4)), ("sgemm", lambda: bench_sgemm(4096, reps)),
                    ("elementwise", lambda: bench_elementwise(1 << 26, reps))]
        for name, section in sections:
            t0 = time.perf_counter()
            try:
                got = section()
            except Exception as e:  # noqa: BLE001  (recorded; the next section still runs)
                got, failed = {f"{name}_error": f"{type(e).__name__}: {e}"}, failed + 1
            got[f"{name}_section_s"] = round(time.perf_counter() - t0, 1)
            for k, v in got.items():
                print(f"{k:32s}  {v}", flush=True)
            results.update(got)
            write_json(opts.json, results)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
