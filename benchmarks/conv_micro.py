"""Convolution microbenchmark: dlc's compiled conv2d (target cpu) against PyTorch per layer shape.

    python benchmarks/conv_micro.py --rounds 3     # every shape, 3 interleaved rounds (the recorded run)
    python benchmarks/conv_micro.py --quick        # LeNet-5's convs and two ResNet shapes, 1 round
    python benchmarks/conv_micro.py --set onnx     # the ONNX benchmark's shapes (ResNet-18 batch 1 and 16, MobileNet)
    python benchmarks/conv_micro.py --set imagenet # ResNet's layers on 224x224 inputs, batch 1

For each layer shape (LeNet-5's two convolutions and every distinct
convolution of the ResNet-18-style W8, batch 32, 3x32x32 input) it times the
forward, the data gradient (dgrad) and the weight gradient (wgrad). dlc
compiles each as a function of its own: conv2d(x, w), and dlc.grad of it
with respect to x or to w given dL/dy; PyTorch runs torch.nn.functional.conv2d
under no_grad, and torch.autograd.grad of a retained graph for the gradients
(so that its backward is timed without the forward). Each framework runs in
its own process with 2 threads; a round runs dlc then PyTorch (the order
alternates by round), and the table shows the median over rounds of each
round's median time, with the ratio dlc / PyTorch as median [min–max] over
rounds. dlc's results are checked against PyTorch's after timing; a mismatch
is shown instead of the time. The kernels dlc compiled for each function are
listed, so the table shows which conv method it chose.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import thread_env  # noqa: E402  (2 threads per process, this checkout on PYTHONPATH)

# name, batch, in channels, height = width, out channels, kernel, stride, padding
SHAPES = [
    ("LeNet-5 conv1", 32, 1, 28, 6, 5, 1, 2),
    ("LeNet-5 conv2", 32, 6, 14, 16, 5, 1, 0),
    ("ResNet stem 3x3", 32, 3, 32, 64, 3, 1, 1),
    ("layer1 3x3", 32, 64, 32, 64, 3, 1, 1),
    ("layer2.0 3x3 s2", 32, 64, 32, 128, 3, 2, 1),
    ("layer2.0 shortcut 1x1 s2", 32, 64, 32, 128, 1, 2, 0),
    ("layer2 3x3", 32, 128, 16, 128, 3, 1, 1),
    ("layer3.0 3x3 s2", 32, 128, 16, 256, 3, 2, 1),
    ("layer3.0 shortcut 1x1 s2", 32, 128, 16, 256, 1, 2, 0),
    ("layer3 3x3", 32, 256, 8, 256, 3, 1, 1),
    ("layer4.0 3x3 s2", 32, 256, 8, 512, 3, 2, 1),
    ("layer4.0 shortcut 1x1 s2", 32, 256, 8, 512, 1, 2, 0),
    ("layer4 3x3", 32, 512, 4, 512, 3, 1, 1),
]
# onnx_bench.py's nets (32x32 inputs): ResNet-18-style at batch 1 and 16, MobileNet-style's depthwise (a 9th field:
# groups) and pointwise convs at batch 1
ONNX_SHAPES = [
    ("b1 layer1 3x3", 1, 64, 32, 64, 3, 1, 1),
    ("b1 layer4 3x3", 1, 512, 4, 512, 3, 1, 1),
    ("b16 layer1 3x3", 16, 64, 32, 64, 3, 1, 1),
    ("b16 layer2 3x3", 16, 128, 16, 128, 3, 1, 1),
    ("b16 layer3 3x3", 16, 256, 8, 256, 3, 1, 1),
    ("b16 layer4 3x3", 16, 512, 4, 512, 3, 1, 1),
    ("b1 dw 64 s2", 1, 64, 32, 64, 3, 2, 1, 64),
    ("b1 dw 128", 1, 128, 16, 128, 3, 1, 1, 128),
    ("b1 pw 128->128", 1, 128, 16, 128, 1, 1, 0),
    ("b1 pw 512->1024", 1, 512, 2, 1024, 1, 1, 0),
    ("b16 dw 32", 16, 32, 32, 32, 3, 1, 1, 32),
    ("b16 pw 512->1024", 16, 512, 2, 1024, 1, 1, 0),
]
# ResNet's layers on 224x224 inputs at batch 1 (an imported ImageNet model's inference)
IMAGENET_SHAPES = [
    ("b1 stem 7x7 s2 on 224", 1, 3, 224, 64, 7, 2, 3),
    ("b1 3x3 on 56", 1, 64, 56, 64, 3, 1, 1),
    ("b1 3x3 on 28", 1, 128, 28, 128, 3, 1, 1),
    ("b1 3x3 on 14", 1, 256, 14, 256, 3, 1, 1),
    ("b1 3x3 on 7", 1, 512, 7, 512, 3, 1, 1),
    ("b1 1x1 64->256 on 56", 1, 64, 56, 256, 1, 1, 0),
]
QUICK = ["LeNet-5 conv1", "LeNet-5 conv2", "layer1 3x3", "layer4 3x3"]
KINDS = ("fwd", "dgrad", "wgrad")
FRAMEWORKS = ("dlc", "torch")
THREADS = 2
MIN_TIME_S, MIN_REPS, MAX_REPS = 0.3, 5, 200


def groups_of(shape):
    return shape[8] if len(shape) > 8 else 1


def out_size(shape):
    _, n, _, hw, _, k, stride, pad = shape[:8]
    return (hw + 2 * pad - k) // stride + 1


def data(shape):
    """Seeded x, w and dL/dy (float32) of one layer shape."""
    import numpy as np

    name, n, cin, hw, cout, k, stride, pad = shape[:8]
    cg = cin // groups_of(shape)
    rng = np.random.default_rng(0)
    ho = out_size(shape)
    x = rng.standard_normal((n, cin, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((cout, cg, k, k)) / np.sqrt(cg * k * k)).astype(np.float32)
    gy = rng.standard_normal((n, cout, ho, ho)).astype(np.float32)
    return x, w, gy


def gflop(shape):
    """Multiply-adds x 2 of one of the three convolutions (forward, dgrad and wgrad cost the same)."""
    _, n, cin, _, cout, k, _, _ = shape[:8]
    return 2 * n * cout * out_size(shape) ** 2 * cin // groups_of(shape) * k * k / 1e9


def time_call(fn):
    """Median seconds of fn() over at least MIN_REPS calls and MIN_TIME_S seconds (after two warm-up calls)."""
    import numpy as np

    fn()
    fn()
    times, total = [], 0.0
    while len(times) < MIN_REPS or (total < MIN_TIME_S and len(times) < MAX_REPS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        total += times[-1]
    return float(np.median(times))


# ---------------------------------------------------------------------------
# workers: one framework, every shape, in this process


def dlc_functions(shape):
    """{kind: (compiled dlc.Function, its argument arrays)} of one layer shape."""
    import dlc

    _, n, cin, hw, cout, k, stride, pad = shape[:8]
    xv, wv, gyv = data(shape)
    dlc.reset_default_store()
    x, w = dlc.input("x", xv.shape), dlc.input("w", wv.shape)
    gy = dlc.input("gy", gyv.shape)
    y = dlc.conv2d(x, w, stride=stride, padding=pad, groups=groups_of(shape))
    return {"fwd": (dlc.compile(y, inputs=[x, w], target="cpu"), (xv, wv)),
            "dgrad": (dlc.compile(dlc.grad(y, [x], seed=gy)[0], inputs=[w, gy], target="cpu"), (wv, gyv)),
            "wgrad": (dlc.compile(dlc.grad(y, [w], seed=gy)[0], inputs=[x, gy], target="cpu"), (xv, gyv))}


def _kernel_ops(fn):
    """The ops of each kernel dlc runs, e.g. 'conv2d_grad_input' (what it chose, as its program shows it)."""
    program = getattr(fn.backend, "program", None)
    if program is None:
        return []
    return ["+".join(node.op for node in kernel.nodes) for kernel in program.kernels]


def torch_reference(shape):
    """PyTorch's forward, dgrad and wgrad of one layer shape, as numpy arrays."""
    import torch
    import torch.nn.functional as F

    _, _, _, _, _, _, stride, pad = shape[:8]
    xv, wv, gyv = data(shape)
    x, w = torch.from_numpy(xv).requires_grad_(), torch.from_numpy(wv).requires_grad_()
    y = F.conv2d(x, w, stride=stride, padding=pad, groups=groups_of(shape))
    dx, dw = torch.autograd.grad(y, [x, w], torch.from_numpy(gyv))
    return {"fwd": y.detach().numpy(), "dgrad": dx.numpy(), "wgrad": dw.numpy()}


def dlc_worker(shapes):
    import numpy as np

    out, checks = {}, {}
    for shape in shapes:
        t0 = time.perf_counter()
        fns = dlc_functions(shape)
        results = {kind: np.array(fn(*args), copy=True) for kind, (fn, args) in fns.items()}
        row = {"compile_s": time.perf_counter() - t0, "kernels": {kind: _kernel_ops(fn) for kind, (fn, _) in
                                                                   fns.items()}}
        for kind, (fn, args) in fns.items():
            row[kind] = time_call(lambda fn=fn, args=args: fn(*args))
        out[shape[0]] = row
        checks[shape[0]] = results
    # checked after timing (torch's thread pool would otherwise share the process while dlc is timed)
    try:
        import torch  # noqa: F401
    except ImportError:
        return out
    for shape in shapes:
        ref = torch_reference(shape)
        for kind in KINDS:
            got, want = checks[shape[0]][kind], ref[kind]
            scale = float(np.abs(want).max()) or 1.0
            out[shape[0]][kind + "_ok"] = bool(got.shape == want.shape and
                                               np.allclose(got, want, rtol=1e-3, atol=1e-4 * scale))
    return out


def torch_times(shape):
    """Seconds of PyTorch's forward, dgrad and wgrad of one layer shape."""
    import torch
    import torch.nn.functional as F

    _, _, _, _, _, _, stride, pad = shape[:8]
    xv, wv, gyv = data(shape)
    x, w, gy = torch.from_numpy(xv), torch.from_numpy(wv), torch.from_numpy(gyv)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = F.conv2d(xg, wg, stride=stride, padding=pad, groups=groups_of(shape))

    def fwd():
        with torch.no_grad():
            return F.conv2d(x, w, stride=stride, padding=pad, groups=groups_of(shape))
    return {"fwd": time_call(fwd),
            "dgrad": time_call(lambda: torch.autograd.grad(y, xg, gy, retain_graph=True)),
            "wgrad": time_call(lambda: torch.autograd.grad(y, wg, gy, retain_graph=True))}


def torch_worker(shapes):
    import torch

    torch.set_num_threads(THREADS)
    return {shape[0]: torch_times(shape) for shape in shapes}


# ---------------------------------------------------------------------------
# orchestration


def run_worker(framework, names, cache):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, "--shapes", ",".join(names),
           "--json", path]
    try:
        proc = subprocess.run(cmd, env=thread_env({"DLC_CACHE_DIR": cache}), capture_output=True, text=True,
                              timeout=3600)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
        with open(path) as f:
            return json.load(f)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 3600 s"}
    finally:
        os.unlink(path)


def _median(values):
    import numpy as np

    return float(np.median(values)) if values else None


def _spread(values):
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{_median(values):.2f} [{min(values):.2f}–{max(values):.2f}]"


def table(rounds, shapes):
    """Markdown: per shape and kind, dlc and PyTorch ms (median over rounds) and the ratio's median and spread."""
    head = "| layer (N, C_in, H=W → C_out, k, stride) | GFLOP |"
    for kind in KINDS:
        head += f" {kind} dlc ms | {kind} torch ms | {kind} dlc / torch |"
    lines = [head, "|" + "---|" * (2 + 3 * len(KINDS))]
    for shape in shapes:
        name, n, cin, hw, cout, k, stride, _ = shape[:8]
        g = f", g{groups_of(shape)}" if groups_of(shape) > 1 else ""
        cells = [f"{name} ({n}, {cin}, {hw} → {cout}, {k}x{k}, s{stride}{g})", f"{gflop(shape):.3f}"]
        for kind in KINDS:
            d = [r["dlc"][name][kind] for r in rounds if name in r.get("dlc", {})]
            t = [r["torch"][name][kind] for r in rounds if name in r.get("torch", {})]
            bad = any(r.get("dlc", {}).get(name, {}).get(kind + "_ok") is False for r in rounds)
            ratios = [r["dlc"][name][kind] / r["torch"][name][kind] for r in rounds
                      if name in r.get("dlc", {}) and name in r.get("torch", {})]
            cells += ["✗ mismatch" if bad else (f"{_median(d) * 1e3:.3f}" if d else "—"),
                      f"{_median(t) * 1e3:.3f}" if t else "—", "—" if bad else _spread(ratios)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kernels_table(rounds, shapes):
    """Which kernels dlc compiled for each function (from the first round)."""
    first = next((r["dlc"] for r in rounds if "dlc" in r), {})
    lines = ["| layer | " + " | ".join(f"{k} kernels" for k in KINDS) + " |", "|---|" + "---|" * len(KINDS)]
    for shape in shapes:
        row = first.get(shape[0])
        if row:
            lines.append(f"| {shape[0]} | " + " | ".join("; ".join(row["kernels"][k]) for k in KINDS) + " |")
    return "\n".join(lines)


def machine():
    import platform

    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 3, or 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--set", choices=("workloads", "onnx", "imagenet"), default="workloads",
                    help="W8's and LeNet-5's shapes (batch 32), onnx_bench.py's, or ResNet's on 224x224 at batch 1")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for conv_micro.md/.json")
    ap.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    ap.add_argument("--shapes", help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        shapes = [s for s in SHAPES + ONNX_SHAPES + IMAGENET_SHAPES if s[0] in args.shapes.split(",")]
        out = dlc_worker(shapes) if args.worker == "dlc" else torch_worker(shapes)
        with open(args.json, "w") as f:
            json.dump(out, f)
        return 0

    rounds_n = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    every = {"onnx": ONNX_SHAPES, "imagenet": IMAGENET_SHAPES}.get(args.set, SHAPES)
    shapes = [s for s in every if s[0] in QUICK] if args.quick else every
    names = [s[0] for s in shapes]
    print(f"conv microbenchmark on {machine()}, {THREADS} threads, {rounds_n} round(s), {len(shapes)} shapes")
    rounds = []
    with tempfile.TemporaryDirectory() as cache:  # kept across rounds: round 1 compiles cold, later ones warm
        for rnd in range(rounds_n):
            got = {}
            for fw in (FRAMEWORKS if rnd % 2 == 0 else FRAMEWORKS[::-1]):
                t0 = time.perf_counter()
                res = run_worker(fw, names, cache)
                print(f"  round {rnd + 1} {fw}: " + (f"error: {res['error']}" if "error" in res else
                                                      f"{time.perf_counter() - t0:.0f} s"), flush=True)
                if "error" not in res:
                    got[fw] = res
            rounds.append(got)
    stamp = datetime.date.today().isoformat()
    md = (f"Measured {stamp} on {machine()}, {THREADS} threads, {rounds_n} interleaved round(s): median ms per "
          f"call over rounds; ratio dlc / PyTorch as median [min–max] of the rounds' ratios.\n\n"
          + table(rounds, shapes) + "\n\ndlc's kernels per function (op names of each kernel, fused ops joined "
          "by +):\n\n" + kernels_table(rounds, shapes) + "\n")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "conv_micro.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "conv_micro.json"), "w") as f:
        json.dump(dict(date=stamp, machine=machine(), threads=THREADS, shapes=shapes, rounds=rounds), f, indent=1)
    print()
    print(md)
    bad = sorted({f"{name} {k}" for r in rounds for name, row in r.get("dlc", {}).items() for k in KINDS
                  if row.get(k + "_ok") is False})
    if bad:
        print("dlc disagrees with PyTorch (times not reported): " + ", ".join(bad))
    return 0


if __name__ == "__main__":
    sys.exit(main())
