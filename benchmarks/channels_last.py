"""MobileNet's convolutions in both layouts: the cpu target's conv2d kernel (NCHW) against conv2d_nhwc.

    python benchmarks/channels_last.py                 # batch 1, one thread, 5 interleaved rounds
    python benchmarks/channels_last.py --batch 16 --threads 2

The layout pass (dlc/passes/layout.py) runs an inference program's chains of
depthwise and pointwise convs channels last; this is the kernel-level
evidence for that choice. Each layer of onnx_bench.py's MobileNet-style net
(32x32 inputs) is called alone through the hand-written kernels, the two
layouts alternating within each round; the table shows each layout's median
time over rounds (each round a median of --calls calls) and the ratio
NHWC / NCHW as median [min-max] over rounds. The outputs are checked against
each other first. The NCHW time of a depthwise conv includes the transposes
its channels-last path makes inside the kernel; the NHWC time has none (the
pass leaves one transpose where a region starts and one where it ends).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from onnx_bench import median_ms

# (in channels, plane, out channels, kernel, stride) of the MobileNet-style net after its stem
LAYERS = [(32, 32, 32, 3, 1), (32, 32, 64, 1, 1), (64, 32, 64, 3, 2), (64, 16, 128, 1, 1), (128, 16, 128, 3, 1),
          (128, 16, 128, 1, 1), (128, 16, 128, 3, 2), (128, 8, 256, 1, 1), (256, 8, 256, 3, 1), (256, 8, 256, 1, 1),
          (256, 8, 256, 3, 2), (256, 4, 512, 1, 1), (512, 4, 512, 3, 1), (512, 4, 512, 1, 1), (512, 4, 512, 3, 2),
          (512, 2, 1024, 1, 1)]


def median_us(fn, calls: int) -> float:
    return 1e3 * median_ms(fn, calls)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=50)
    args = ap.parse_args(argv)

    import numba

    from dlc.runtime.cpu import load_kernel_modules

    load_kernel_modules()
    nchw, nhwc = sys.modules["dlc_cpu_conv"], sys.modules["dlc_cpu_conv_nhwc"]
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    rng = np.random.default_rng(0)
    rows = []
    for c, hw, co, k, s in LAYERS:
        groups, pad = (c, 1) if k == 3 else (1, 0)
        ho = (hw + 2 * pad - k) // s + 1
        x = rng.standard_normal((args.batch, c, hw, hw)).astype(np.float32)
        w = rng.standard_normal((co, c // groups, k, k)).astype(np.float32)
        xt = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        y, yt = np.empty((args.batch, co, ho, ho), np.float32), np.empty((args.batch, ho, ho, co), np.float32)
        attrs = [np.int64(v) for v in (s, s, pad, pad, 1, 1, groups)]

        def run_nchw(x=x, w=w, y=y, attrs=attrs):
            nchw.conv2d(x, w, y, *attrs)

        def run_nhwc(xt=xt, w=w, yt=yt, attrs=attrs):
            nhwc.conv2d_nhwc(xt, w, yt, *attrs)

        run_nchw()
        run_nhwc()
        np.testing.assert_allclose(yt.transpose(0, 3, 1, 2), y, rtol=1e-4, atol=1e-4 * float(np.abs(y).max()))
        times = {"nchw": [], "nhwc": []}
        for r in range(args.rounds):
            for name, fn in (("nchw", run_nchw), ("nhwc", run_nhwc))[::1 if r % 2 == 0 else -1]:
                times[name].append(median_us(fn, args.calls))
        ratios = [b / a for a, b in zip(times["nchw"], times["nhwc"])]
        kind = f"depthwise 3x3 s{s}" if k == 3 else "pointwise"
        rows.append((f"{c} -> {co}, {hw}x{hw}, {kind}", np.median(times["nchw"]), np.median(times["nhwc"]),
                     np.median(ratios), min(ratios), max(ratios)))
    print(f"batch {args.batch}, {numba.get_num_threads()} thread(s), {args.rounds} rounds; times in us\n")
    print("| layer | NCHW conv2d | NHWC conv2d_nhwc | NHWC / NCHW |")
    print("|---|---|---|---|")
    for name, a, b, med, lo, hi in rows:
        print(f"| {name} | {a:.1f} | {b:.1f} | {med:.2f} [{lo:.2f}-{hi:.2f}] |")
    total_a, total_b = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"| all layers | {total_a:.1f} | {total_b:.1f} | {total_b / total_a:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
