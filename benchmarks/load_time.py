"""Cold start of an exported CNN in a new process: load time and first call, with and without the kernel cache.

    python benchmarks/load_time.py [--repeats 3] [--targets reference,cpu]

Each measurement is a fresh Python process that imports dlc, loads the
artifact (hash checks, graph rebuild, code generation) and calls it twice on
a batch of 32 digits-sized images. "no cache" gives the process an empty
kernel cache folder (DLC_CACHE_DIR), so numba compiles the generated module;
"cache" reuses the folder a previous process filled, so numba loads the
compiled kernels from disk. Prints a table of medians in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import dlc
t1 = time.perf_counter()
fn = dlc.load(sys.argv[1])
t2 = time.perf_counter()
x = np.random.default_rng(0).standard_normal((32, 1, 8, 8)).astype(np.float32)
fn(x)
t3 = time.perf_counter()
fn(x)
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first_call": t3 - t2, "second_call": t4 - t3}))
"""


def build_cnn(target: str):
    import dlc
    from dlc import nn

    dlc.reset_default_store()
    nn.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 10),
    )
    x = dlc.input("x", ("B", 1, 8, 8))
    return nn.compile_eval(lambda x: {"logits": model(x)}, [x], modules=model, target=target)


def measure(artifact: str, cache_dir: str) -> dict:
    env = dict(os.environ, DLC_CACHE_DIR=cache_dir, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = "2"
    out = subprocess.run([sys.executable, "-c", CHILD, artifact], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--targets", default="reference,cpu")
    args = p.parse_args()
    sys.path.insert(0, ROOT)
    import dlc

    work = tempfile.mkdtemp(prefix="dlc-load-time-")
    rows = []
    for target in args.targets.split(","):
        os.environ["DLC_CACHE_DIR"] = os.path.join(work, f"export-cache-{target}")
        path = os.path.join(work, f"cnn-{target}.dlc")
        dlc.export(build_cnn(target), path)
        if target == "reference":
            rows.append((target, "-", median([measure(path, os.path.join(work, "unused"))
                                              for _ in range(args.repeats)])))
            continue
        cold, warm = [], []
        for i in range(args.repeats):
            cache = os.path.join(work, f"cache-{target}-{i}")
            cold.append(measure(path, cache))   # an empty cache folder: numba compiles
            warm.append(measure(path, cache))   # the same folder again: numba loads from disk
        rows.append((target, "no cache", median(cold)))
        rows.append((target, "cache", median(warm)))
    size = {t: os.path.getsize(os.path.join(work, f"cnn-{t}.dlc")) for t in args.targets.split(",")}
    print(f"CNN artifact (2 conv + 2 pool + linear, batch 32), medians of {args.repeats} fresh processes, seconds")
    print("artifact sizes: " + ", ".join(f"{t} {s / 1e3:.1f} kB" for t, s in size.items()))
    print()
    print("| target | kernel cache | import dlc | dlc.load | first call | second call | load + first call |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for target, cache, m in rows:
        print(f"| {target} | {cache} | {m['import']:.3f} | {m['load']:.3f} | {m['first_call']:.3f} | "
              f"{m['second_call']:.4f} | {m['load'] + m['first_call']:.3f} |")


if __name__ == "__main__":
    main()
