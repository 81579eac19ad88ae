"""Quick measurements of the numba CPU backend against peers in one run: W1, W5 (MLP), W6, W7 and compile times.

    NUMBA_NUM_THREADS=2 OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 python3 benchmarks/cpu_quick.py [W1 W5 W6 W7 compile]

Timings are medians of interleaved rounds (dlc, then each peer, repeated), so
ratios hold even when the shared machine's speed drifts. JAX runs in a
subprocess when it is installed. Compile times use a fresh cache directory
(cold) and then a new process on the same directory (warm).
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import workloads  # noqa: E402

import dlc  # noqa: E402


def median_times(fns: dict, rounds: int = 7, inner: int = 20) -> dict:
    """Median seconds per call of each function, measured in interleaved rounds.

    The fastest round of each is kept too (key + "_min"): on a busy shared
    machine the minimum is the better estimate of what the code can do.
    """
    for f in fns.values():
        f()
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            samples[k].append((time.perf_counter() - t0) / inner)
    out = {k: float(np.median(v)) for k, v in samples.items()}
    out.update({k + "_min": float(np.min(v)) for k, v in samples.items()})
    return out


# ----------------------------------------------------------------------------
# the MLP of W1/W5 in dlc, built from raw functions


def dlc_mlp(spec, train: bool, store=None):
    store = store if store is not None else dlc.Store()
    params = [dlc.param(p, name=f"p{i}", store=store) for i, p in enumerate(spec["params"])]
    x = dlc.input("x", ("B", 784))
    h = x
    for i in range(0, len(params) - 2, 2):
        h = dlc.relu(h @ params[i] + params[i + 1])
    logits = h @ params[-2] + params[-1]
    if not train:
        return dlc.compile(logits, target="cpu", store=store)
    labels = dlc.input("labels", ("B",), "int64")
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(logits) * dlc.one_hot(labels, 10), axis=1))
    grads = dlc.grad(loss, params)
    updates = {}
    for i, (p, g) in enumerate(zip(params, grads)):
        v = dlc.param(np.zeros(p.shape, np.float32), name=f"v{i}", store=store)
        v_new = 0.9 * v + g
        updates[v] = v_new
        updates[p] = p - spec["lr"] * v_new
    return dlc.compile(loss, updates=updates, target="cpu", store=store)


JAX_W1 = r"""
import os, json, time, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import workloads, jax, jax.numpy as jnp
s = workloads.spec("W1")
params = [jnp.asarray(p) for p in s["params"]]
vel = [jnp.zeros_like(p) for p in params]
x, y = jnp.asarray(s["x"]), jnp.asarray(s["y"])
def loss_fn(ps):
    h = x
    for i in range(0, len(ps) - 2, 2):
        h = jax.nn.relu(h @ ps[i] + ps[i + 1])
    logits = h @ ps[-2] + ps[-1]
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(x.shape[0]), y])
@jax.jit
def step(ps, vs):
    l, gs = jax.value_and_grad(loss_fn)(ps)
    vs = [0.9 * v + g for v, g in zip(vs, gs)]
    return l, [p - 0.01 * v for p, v in zip(ps, vs)], vs
l, params, vel = step(params, vel); l.block_until_ready()
ts = []
for r in range(7):
    t0 = time.perf_counter()
    for _ in range(20):
        l, params, vel = step(params, vel)
    l.block_until_ready()
    ts.append((time.perf_counter() - t0) / 20)
print(json.dumps([float(np.median(ts)), float(np.min(ts))]))
"""


W1_IN_PROCESS = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, __import__("os").path.dirname(sys.argv[1]))
import cpu_quick, workloads
s = workloads.spec("W1")
if sys.argv[2] == "dlc":
    step = cpu_quick.dlc_mlp(s, train=True)
    run = lambda: step(s["x"], s["y"])
else:
    run = workloads.numpy_mlp_step(s)
t = cpu_quick.median_times({"w1": run})
print(json.dumps([t["w1"], t["w1_min"]]))
"""


def _w1_in_subprocess(code: str, *args: str, env=None) -> tuple[float, float]:
    res = subprocess.run([sys.executable, "-c", code, str(HERE), *args], capture_output=True, text=True,
                         timeout=300, env=env)
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    return tuple(json.loads(res.stdout.strip().splitlines()[-1]))


def bench_w1() -> dict:
    """Each framework in its own process, the processes interleaved (two rounds each).

    numba's np.dot calls scipy's bundled OpenBLAS and numpy calls its own: in one
    process, the idle pool's spinning threads take the cores from the busy one
    (measured: both steps ~2x slower when interleaved in one process).
    """
    jax_env = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=true")
    runs = {"dlc": [], "numpy": [], "jax": []}
    for _ in range(2):
        runs["dlc"].append(_w1_in_subprocess(W1_IN_PROCESS, "dlc"))
        runs["numpy"].append(_w1_in_subprocess(W1_IN_PROCESS, "numpy"))
        try:
            runs["jax"].append(_w1_in_subprocess(JAX_W1, env=jax_env))
        except Exception:  # noqa: BLE001  (JAX is optional)
            pass
    out = {}
    for name, values in runs.items():
        if values:
            out[f"{name}_ms"] = float(np.median([v[0] for v in values])) * 1e3
            out[f"{name}_min_ms"] = float(np.min([v[1] for v in values])) * 1e3
    out["dlc/numpy"] = out["dlc_ms"] / out["numpy_ms"]
    if "jax_ms" in out:
        out["dlc/jax"] = out["dlc_ms"] / out["jax_ms"]
        out["dlc/jax_min"] = out["dlc_min_ms"] / out["jax_min_ms"]
    return out


def bench_w5() -> dict:
    import torch

    torch.set_num_threads(2)
    s = workloads.spec("W5_mlp")
    infer = dlc_mlp(s, train=False)
    x = s["x"]
    tp = [torch.from_numpy(p) for p in s["params"]]
    tx = torch.from_numpy(x)

    def torch_infer():
        with torch.no_grad():
            h = tx
            for i in range(0, len(tp) - 2, 2):
                h = torch.relu(h @ tp[i] + tp[i + 1])
            return h @ tp[-2] + tp[-1]

    np.testing.assert_allclose(infer(x), torch_infer().numpy(), rtol=1e-4, atol=1e-5)
    t = median_times({"dlc": lambda: infer(x), "torch": torch_infer, "numpy":
                      lambda: workloads.mlp_forward(s["params"], x)}, inner=200)
    return {"dlc_us": t["dlc"] * 1e6, "torch_eager_us": t["torch"] * 1e6, "numpy_us": t["numpy"] * 1e6,
            "dlc/torch": t["dlc"] / t["torch"], "dlc_min_us": t["dlc_min"] * 1e6,
            "torch_min_us": t["torch_min"] * 1e6, "dlc/torch_min": t["dlc_min"] / t["torch_min"]}


def bench_w6() -> dict:
    s = workloads.spec("W6")
    x = dlc.input("x", ("N",))
    y = dlc.gelu(x * float(s["a"]) + float(s["b"]), approximate="tanh")
    out = {}
    for parallel in (False, True):
        fn = dlc.compile(y, target="cpu", parallel=parallel, store=dlc.Store())
        np.testing.assert_allclose(fn(s["x"]), workloads.numpy_w6(s)(), rtol=1e-5, atol=1e-6)
        t = median_times({"dlc": lambda fn=fn: fn(s["x"])}, inner=10)
        key = "parallel" if parallel else "serial"
        out[f"{key}_ms"] = t["dlc"] * 1e3
        out[f"{key}_GB/s"] = 2 * s["x"].nbytes / t["dlc"] / 1e9  # read x, write y
        out[f"{key}_min_GB/s"] = 2 * s["x"].nbytes / t["dlc_min"] / 1e9
    return out


def bench_w7() -> dict:
    s = workloads.spec("W7")
    a = dlc.input("a", (1024, 1024))
    b = dlc.input("b", (1024, 1024))
    fn = dlc.compile(a @ b, target="cpu", store=dlc.Store())
    t = median_times({"dlc": lambda: fn(s["a"], s["b"]), "numpy": workloads.numpy_w7(s)}, inner=5)
    flop = 2 * 1024 ** 3
    return {"dlc_GFLOP/s": flop / t["dlc"] / 1e9, "numpy_GFLOP/s": flop / t["numpy"] / 1e9,
            "dlc/numpy": t["numpy"] / t["dlc"], "dlc/numpy_min": t["numpy_min"] / t["dlc_min"]}


COMPILE = r"""
import os, sys, time, json
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, os.path.dirname(sys.argv[1]))
import cpu_quick, workloads
s = workloads.spec("W1")
t1, c1 = time.perf_counter(), time.process_time()
step = cpu_quick.dlc_mlp(s, train=True)
step(s["x"], s["y"])
t2, c2 = time.perf_counter(), time.process_time()
# cpu time too: compilation is single-threaded, and wall time on a busy machine overstates it
print(json.dumps({"imports_s": t1 - t0, "compile_s": t2 - t1, "compile_cpu_s": c2 - c1,
                  "stats": {k: v for k, v in step.backend.stats.items() if k.endswith("_s") or k.endswith("kernels")}}))
"""


def bench_compile() -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, DLC_CACHE_DIR=cache)
        runs = {}
        for name in ("cold", "warm"):
            res = subprocess.run([sys.executable, "-c", COMPILE, str(HERE)], capture_output=True, text=True, env=env,
                                 timeout=600)
            if res.returncode:
                raise RuntimeError(res.stderr[-2000:])
            runs[name] = json.loads(res.stdout.strip().splitlines()[-1])
    return runs


BENCHES = {"W1": bench_w1, "W5": bench_w5, "W6": bench_w6, "W7": bench_w7, "compile": bench_compile}


def main(argv: list[str]) -> None:
    names = argv or list(BENCHES)
    for name in names:
        result = BENCHES[name]()
        print(name, json.dumps(result, indent=None, default=lambda v: round(v, 4) if isinstance(v, float) else v))


if __name__ == "__main__":
    main(sys.argv[1:])
