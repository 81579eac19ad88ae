"""ONNX inference: nets written in PyTorch, exported with torch.onnx.export, run by dlc (cpu target), onnxruntime
(CPU, 2 intra-op threads) and PyTorch eager (2 threads), each in a process of its own.

    python benchmarks/onnx_bench.py                 # batch 1 and 16, 10 interleaved rounds of 5 calls
    python benchmarks/onnx_bench.py --rounds 3      # a quick look
    python benchmarks/onnx_bench.py --profile resnet18 --batches 1   # dlc's slowest kernels for one net

Per net and batch, the three runtimes each load the model in a worker process of their own (no two thread pools
in one process) and then wait; a round asks each in turn (the order rotating from round to round) to time
--calls calls, with a pause between runtimes for the last one's threads to go idle, so the machine's drift hits
all three alike. Every dlc output is checked against onnxruntime's before anything is timed. Reports, per
runtime, the median over rounds of each round's median latency, and the ratio dlc / onnxruntime as the median
[min-max] over rounds (the issue's targets: ResNet-18-style <= 1.0 at batch 1 and 16, MobileNet-style <= 1.2
at batch 1).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")   # before numpy loads its BLAS (workers get them from thread_env anyway)

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import THREADS, thread_env  # noqa: E402  (2 threads per process, this checkout on PYTHONPATH)

RUNTIMES = ("dlc", "onnxruntime", "torch")
PAUSE_S = 0.1   # between two runtimes' turns: onnxruntime's and OpenMP's threads spin for a while after work


@functools.cache
def torch_nets() -> dict:
    """{name: (constructor, input shape of a batch)}; built on first use, so that the dlc and onnxruntime workers
    never import torch."""
    import torch
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.down = None
            if stride != 1 or c_in != c_out:
                self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))


    def resnet18(classes=10):
        """ResNet-18's layout (2-2-2-2 basic blocks, 64-512 channels) with a CIFAR-style 3x3 stem for 32x32 inputs."""
        layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
        c = 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(c, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
        return nn.Sequential(*layers)


    def mobilenet(classes=10):
        """MobileNet-v1-style: depthwise 3x3 + pointwise 1x1 blocks with batch norm and ReLU6, 32x32 inputs."""
        def dw(c_in, c_out, stride):
            return [nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in), nn.ReLU6(),
                    nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU6()]
        layers = [nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
        for c_in, c_out, stride in ((32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1),
                                    (256, 512, 2), (512, 512, 1), (512, 1024, 2)):
            layers += dw(c_in, c_out, stride)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, classes)]
        return nn.Sequential(*layers)


    def lenet5(classes=10):
        return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5), nn.Tanh(),
                             nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Tanh(), nn.Linear(120, 84),
                             nn.Tanh(), nn.Linear(84, classes))


    class LSTMClassifier(nn.Module):
        def __init__(self, features=32, hidden=64, classes=10):
            super().__init__()
            self.lstm = nn.LSTM(features, hidden)
            self.fc = nn.Linear(hidden, classes)

        def forward(self, x):             # x (T, B, F)
            _, (h, _) = self.lstm(x)
            return self.fc(h[-1])


    NETS = {
        "resnet18": (resnet18, lambda b: (b, 3, 32, 32)),
        "mobilenet": (mobilenet, lambda b: (b, 3, 32, 32)),
        "lenet5": (lenet5, lambda b: (b, 1, 28, 28)),
        "lstm": (LSTMClassifier, lambda b: (16, b, 32)),
    }
    return NETS


def median_ms(fn, calls: int) -> float:
    fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def export(name: str, batch: int, folder: str) -> None:
    """The net (seeded weights) as folder/model.onnx and its weights as folder/weights.pt; its input as x.npy."""
    import torch

    make, shape_of = torch_nets()[name]
    torch.manual_seed(0)
    net = make().eval()
    x = np.random.default_rng(0).normal(size=shape_of(batch)).astype(np.float32)
    np.save(os.path.join(folder, "x.npy"), x)
    torch.save(net.state_dict(), os.path.join(folder, "weights.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x),), os.path.join(folder, "model.onnx"), input_names=["x"],
                          output_names=["y"], dynamo=False)


# ---------------------------------------------------------------------------
# worker: one runtime, one model, answering the orchestrator's requests on stdin


def load_runtime(runtime: str, name: str, folder: str):
    """A function running the model once on the saved input, returning the output as a numpy array."""
    x = np.load(os.path.join(folder, "x.npy"))
    path = os.path.join(folder, "model.onnx")
    if runtime == "dlc":
        import dlc.onnx

        fn = dlc.onnx.load_model(path, target="cpu")
        return lambda: fn(x)
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = THREADS, 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        return lambda: sess.run(None, {"x": x})[0]
    import torch

    torch.set_num_threads(THREADS)
    net = torch_nets()[name][0]().eval()
    net.load_state_dict(torch.load(os.path.join(folder, "weights.pt")))
    tx = torch.from_numpy(x)

    def run():
        with torch.no_grad():
            return net(tx).numpy()
    return run


def worker(runtime: str, name: str, folder: str) -> int:
    """Requests, one a line: `out PATH` saves one output as PATH (.npy); `time N` answers the median ms of N calls;
    an empty line or end of input ends the worker. Each answer is one JSON line."""
    t0 = time.perf_counter()
    run = load_runtime(runtime, name, folder)
    run()
    print(json.dumps({"load_s": time.perf_counter() - t0}), flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "out":
            np.save(arg, run())
            print(json.dumps({"saved": arg}), flush=True)
        elif cmd == "time":
            print(json.dumps({"ms": median_ms(run, int(arg))}), flush=True)
        else:
            break
    return 0


class Worker:
    """A worker process of this file for one runtime, spoken to a line at a time."""

    def __init__(self, runtime: str, name: str, folder: str, cache: str):
        self.runtime = runtime
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", runtime, "--nets", name, "--folder", folder]
        self.proc = subprocess.Popen(cmd, env=thread_env({"DLC_CACHE_DIR": cache}), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.load_s = self._answer()["load_s"]

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            err = [ln for ln in self.proc.stderr.read().splitlines() if ln.strip()]
            raise RuntimeError(f"{self.runtime} worker ended: {err[-1] if err else self.proc.wait()}")
        return json.loads(line)

    def ask(self, request: str) -> dict:
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def bench(name: str, batch: int, rounds: int, calls: int, cache: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        export(name, batch, folder)
        workers = {}
        try:
            for rt in RUNTIMES:    # one after the other: a compile never overlaps another runtime's timing
                workers[rt] = Worker(rt, name, folder, cache)
            outs = {}
            for rt in ("dlc", "onnxruntime"):
                path = os.path.join(folder, f"out_{rt}.npy")
                workers[rt].ask(f"out {path}")
                outs[rt] = np.load(path)
            err = float(np.abs(outs["dlc"] - outs["onnxruntime"]).max())
            if outs["dlc"].shape != outs["onnxruntime"].shape or not np.allclose(outs["dlc"], outs["onnxruntime"],
                                                                                 rtol=1e-3, atol=1e-4):
                raise SystemExit(f"{name} batch {batch}: dlc differs from onnxruntime by {err:.2e}; not timing it")
            times = {rt: [] for rt in RUNTIMES}
            for r in range(rounds):
                for rt in RUNTIMES[r % 3:] + RUNTIMES[:r % 3]:
                    times[rt].append(workers[rt].ask(f"time {calls}")["ms"])
                    time.sleep(PAUSE_S)
        finally:
            for w in workers.values():
                w.close()
    ratios = [d / o for d, o in zip(times["dlc"], times["onnxruntime"])]
    row = {"net": name, "batch": batch, "max_err": err, "compile_s": workers["dlc"].load_s, "ratios": ratios}
    row.update({f"{rt}_ms": float(np.median(times[rt])) for rt in RUNTIMES})
    row["ratio"] = float(np.median(ratios))
    return row


def _describe_anchor(kernel) -> str:
    """The shape and attributes of a kernel's first conv/matmul/pool node (which layer it is)."""
    for n in kernel.nodes:
        if n.op in ("conv2d", "conv2d_nhwc", "matmul", "max_pool2d", "avg_pool2d"):
            x, w = n.inputs[0].shape, n.inputs[1].shape if len(n.inputs) > 1 else ()
            extra = f" groups={n.attr('groups')} stride={n.attr('stride')}" if n.op.startswith("conv2d") else ""
            return f"  [{n.op} {tuple(x)} x {tuple(w)} -> {tuple(n.shape)}{extra}]"
    return ""


def profile(name: str, batch: int, folder: str, top: int = 12) -> None:
    """Per-kernel times of dlc's cpu program for one net: each kernel run on its own (inlined ones compiled
    separately for this, so it takes a while), numpy fallbacks marked."""
    import dlc.onnx
    from dlc.codegen.numba import RenderedKernel

    export(name, batch, folder)
    x = np.load(os.path.join(folder, "x.npy"))
    fn = dlc.onnx.load_model(os.path.join(folder, "model.onnx"), target="cpu")
    be = fn.backend
    feeds, env, _ = fn.signature.bind((x,), {})
    plan, X = be._copied_arguments(feeds, env)
    rows = []
    for seg in be.generated.segments:
        for item in seg.kernels:
            kernel = item.kernel if isinstance(item, RenderedKernel) else item
            label = f"{kernel.kind}: {' '.join(n.op for n in kernel.nodes)}"[:60] + _describe_anchor(kernel)
            if isinstance(item, RenderedKernel):
                f, args = be._debug_function(item), be._kernel_args(item, plan, X, env)
                run = lambda f=f, args=args: f(*args)  # noqa: E731
            else:
                label = "numpy fallback " + label
                run = lambda item=item: be._fallback(item, plan, X, env)  # noqa: E731
            rows.append((median_ms(run, 5), label))
    total = sum(t for t, _ in rows)
    print(f"{name} batch {batch}: {len(rows)} kernels, {total:.1f} ms kernel by kernel; the slowest:")
    for t, label in sorted(rows, reverse=True)[:top]:
        print(f"  {t:8.2f} ms  {100 * t / total:5.1f}%  {label}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    ap.add_argument("--calls", type=int, default=5, help="timed calls per runtime and round")
    ap.add_argument("--nets", default="resnet18,mobilenet,lenet5,lstm")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--profile", metavar="NET", help="instead of the comparison, profile dlc's kernels for NET")
    ap.add_argument("--worker", choices=RUNTIMES, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.nets, args.folder)
    if args.profile:
        with tempfile.TemporaryDirectory() as folder:
            for b in (int(v) for v in args.batches.split(",")):
                profile(args.profile, b, folder)
        return 0
    with tempfile.TemporaryDirectory() as cache:
        for name in args.nets.split(","):
            for b in (int(v) for v in args.batches.split(",")):
                r = bench(name, b, args.rounds, args.calls, cache)
                spread = f"[{min(r['ratios']):.2f}-{max(r['ratios']):.2f}]"
                print(f"{r['net']:<10} batch {r['batch']:>2}: dlc {r['dlc_ms']:8.2f} ms  onnxruntime "
                      f"{r['onnxruntime_ms']:8.2f} ms  torch {r['torch_ms']:8.2f} ms  dlc/ort {r['ratio']:5.2f} "
                      f"{spread}  (max |dlc-ort| {r['max_err']:.1e}, dlc import+compile {r['compile_s']:.1f} s)",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
