"""ONNX inference: nets written in PyTorch, exported with torch.onnx.export, run by dlc (cpu target), onnxruntime
(CPU, 2 intra-op threads) and PyTorch eager (2 threads) in the same process.

    python benchmarks/onnx_bench.py                 # batch 1 and 16, 50 timed rounds
    python benchmarks/onnx_bench.py --rounds 5      # a quick look
    python benchmarks/onnx_bench.py --profile resnet18 --batches 1   # dlc's slowest kernels for one net

Every dlc output is checked against onnxruntime's before anything is timed. Reports the median latency per
call and the ratio dlc / onnxruntime (the issue's targets: ResNet-18-style <= 1.0 at batch 1 and 16,
MobileNet-style <= 1.2 at batch 1).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import dlc.onnx  # noqa: E402


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


def median_ms(fn, rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def bench(name: str, batch: int, rounds: int, folder: str) -> dict:
    make, shape_of = NETS[name]
    torch.manual_seed(0)
    net = make().eval()
    x = np.random.default_rng(0).normal(size=shape_of(batch)).astype(np.float32)
    path = os.path.join(folder, f"{name}_b{batch}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x),), path, input_names=["x"], output_names=["y"], dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    t0 = time.perf_counter()
    fn = dlc.onnx.load_model(path, target="cpu")
    fn(x)
    compile_s = time.perf_counter() - t0
    want = sess.run(None, {"x": x})[0]
    err = float(np.abs(fn(x) - want).max())
    if not np.allclose(fn(x), want, rtol=1e-3, atol=1e-4):
        raise SystemExit(f"{name} batch {batch}: dlc differs from onnxruntime by {err:.2e}; not timing it")
    tx = torch.from_numpy(x)
    with torch.no_grad():
        row = {"net": name, "batch": batch, "max_err": err, "compile_s": compile_s,
               "dlc_ms": median_ms(lambda: fn(x), rounds),
               "ort_ms": median_ms(lambda: sess.run(None, {"x": x}), rounds),
               "torch_ms": median_ms(lambda: net(tx), rounds)}
    row["ratio"] = row["dlc_ms"] / row["ort_ms"]
    return row


def _describe_anchor(kernel) -> str:
    """The shape and attributes of a kernel's first conv/matmul/pool node (which layer it is)."""
    for n in kernel.nodes:
        if n.op in ("conv2d", "matmul", "max_pool2d", "avg_pool2d"):
            x, w = n.inputs[0].shape, n.inputs[1].shape if len(n.inputs) > 1 else ()
            extra = f" groups={n.attr('groups')} stride={n.attr('stride')}" if n.op == "conv2d" else ""
            return f"  [{n.op} {tuple(x)} x {tuple(w)} -> {tuple(n.shape)}{extra}]"
    return ""


def profile(name: str, batch: int, folder: str, top: int = 12) -> None:
    """Per-kernel times of dlc's cpu program for one net: each kernel run on its own (inlined ones compiled
    separately for this, so it takes a while), numpy fallbacks marked."""
    from dlc.codegen.numba import RenderedKernel
    from dlc.runtime.cpu import FIXED

    make, shape_of = NETS[name]
    torch.manual_seed(0)
    net = make().eval()
    x = np.random.default_rng(0).normal(size=shape_of(batch)).astype(np.float32)
    path = os.path.join(folder, f"{name}_profile.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.from_numpy(x),), path, input_names=["x"], output_names=["y"], dynamo=False)
    fn = dlc.onnx.load_model(path, target="cpu")
    be = fn.backend
    feeds, env, _ = fn.signature.bind((x,), {})
    plan = be._make_plan(env)
    X = [a.copy() if kind == FIXED else a for a, (kind, _) in zip(be._arguments(feeds, plan), be._externals)]
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
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--nets", default=",".join(NETS))
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--profile", metavar="NET", help="instead of the comparison, profile dlc's kernels for NET")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        if args.profile:
            for b in (int(v) for v in args.batches.split(",")):
                profile(args.profile, b, folder)
            return 0
        for name in args.nets.split(","):
            for b in (int(v) for v in args.batches.split(",")):
                rows.append(bench(name, b, args.rounds, folder))
                r = rows[-1]
                print(f"{r['net']:<10} batch {r['batch']:>2}: dlc {r['dlc_ms']:8.2f} ms  onnxruntime "
                      f"{r['ort_ms']:8.2f} ms  torch {r['torch_ms']:8.2f} ms  dlc/ort {r['ratio']:5.2f}  "
                      f"(max |dlc-ort| {r['max_err']:.1e}, import+compile {r['compile_s']:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
