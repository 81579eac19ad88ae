"""Every op's CUDA lowering against the numpy reference, run in the C emulator (the CPU backend's op cases)."""

from __future__ import annotations

import shutil

import pytest
from test_cpu_backend import CASES, assert_close, fresh_store_like

import dlc
from dlc.graph import Graph
from dlc.ops import OPS, SOURCE

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the CUDA emulator needs g++")

# The emulator compiles the CUDA text with the host compiler: float32 math may differ from numpy by a few ulp
# (CUDA's own expf/tanhf differ from glibc's on a GPU; see docs/cuda.md), float64 by rounding only.
TOL = {"float32": dict(rtol=1e-4, atol=1e-5), "float64": dict(rtol=1e-10, atol=1e-12)}

# Cases the CUDA backend cannot run yet, and why (their ops are left out of the coverage check).
NOT_ON_CUDA: dict[str, str] = {}   # case name -> why the CUDA backend does not run it
# Ops no CUDA program contains, and why (left out of the coverage check).
CPU_ONLY_OPS = {"conv2d_nhwc": "made by the cpu target's layout pass (dlc/passes/layout.py) alone"}


@pytest.mark.parametrize("name", list(CASES))
def test_ops_match_reference_on_the_emulator(name, rng):
    if name in NOT_ON_CUDA:
        pytest.skip(NOT_ON_CUDA[name])
    dlc.reset_default_store()
    outputs, feeds, tol = CASES[name](rng)
    tol = {k: dict(rtol=max(v["rtol"], TOL[k]["rtol"]), atol=max(v["atol"], TOL[k]["atol"])) for k, v in tol.items()}
    names = list(outputs)
    store = dlc.default_store()
    ref = dlc.compile([outputs[k] for k in names], target="reference", store=fresh_store_like(store))
    emu = dlc.compile([outputs[k] for k in names], target="cuda", emulate=True, gemm_tiles=("s",))
    for key, got, want in zip(names, emu(**feeds), ref(**feeds)):
        assert_close(got, want, tol, key)


def test_every_op_is_covered_on_the_emulator(rng):
    """A new op fails here until a case runs it through the CUDA lowering."""
    seen, exempt = set(), set()
    for name, build in CASES.items():
        dlc.reset_default_store()
        outputs, _, _ = build(rng)
        for n in Graph([t.node for t in outputs.values()]).nodes:
            (exempt if name in NOT_ON_CUDA else seen).add(n.op)
            body = n.attr("body")
            if body is not None and hasattr(body, "outputs"):
                seen.update(m.op for m in Graph(list(body.outputs)).nodes)
    missing = sorted(op for op, d in OPS.items() if d.kind != SOURCE and op not in seen | exempt | set(CPU_ONLY_OPS))
    assert not missing, f"ops without a CUDA lowering test: {missing}"
