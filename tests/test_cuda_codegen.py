"""The CUDA renderer: what it emits, the errors it gives, and nvcc compiling all of it for sm_80 and sm_90."""

import cuda_samples
import numpy as np
import pytest

import dlc
from dlc.codegen.cuda import (
    GEMM_CONFIGS,
    CudaUnsupportedError,
    choose_gemm_tile,
    library_source,
    literal,
    nvcc_compile,
    nvcc_path,
    parse_resource_usage,
    render_program,
    render_scalar,
    resource_table,
)
from dlc.inspect import program_of
from dlc.runtime.cuda import CudaUnavailableError

# ----------------------------------------------------------------------------
# rendering


def test_scalar_templates_become_typed_c():
    x = dlc.input("x", (3,))
    d = dlc.input("d", (3,), "float64")
    n = dlc.input("n", (3,), "int64")
    assert render_scalar(dlc.relu(x).node, ["a"]) == "dlc_max((a), 0.0f)"
    assert render_scalar(dlc.relu(d).node, ["a"]) == "dlc_max((a), 0.0)"
    assert render_scalar(dlc.leaky_relu(x, 0.2).node, ["a"]) == "dlc_select((a) > 0.0f, (a), 0.2f * (a))"
    assert render_scalar((n / n).node, ["a", "b"]) == "dlc_floordiv((a), (b))"
    assert render_scalar(dlc.cast(x, "int32").node, ["a"]) == "(int)((a))"
    assert render_scalar(dlc.logical_not(x > 0).node, ["a"]) == "dlc_not((a))"


@pytest.mark.parametrize("value,dtype,text", [(0.1, "float32", "0.1f"), (2, "float64", "2.0"),
                                              (-np.inf, "float32", "((float)-INFINITY)"), (7, "int64", "7LL"),
                                              (True, "bool", "true"), (np.nan, "float64", "((double)NAN)")])
def test_literals(value, dtype, text):
    assert literal(value, dtype) == text


def test_generated_source_is_shape_generic_and_commented():
    s = cuda_samples.mlp_training_step()
    fn = s.compile("reference")
    module = render_program(program_of(fn))
    assert len(module.kernels) >= 5
    for k in module.kernels:
        assert "i64 s_B" in k.source                  # the batch size is an argument, never a literal
        assert k.source.startswith(f"// {k.kernel.name} [{k.kernel.kind}]")
        assert "//   from " in k.source                 # the user's line of every fused node
    matmuls = [k for k in module.kernels if k.kernel.kind == "complex"]
    assert matmuls and all(len(k.entries) == len(GEMM_CONFIGS) for k in matmuls)
    assert any("dlc_gemm_mainloop<128, 128, 8, 8, 8, float>" in k.source for k in matmuls)


def test_tile_choice_follows_problem_size():
    assert choose_gemm_tile(4096, 4096, 1, 132 * 8) == "l"
    assert choose_gemm_tile(2048, 2048, 1, 132 * 8) == "m"
    assert choose_gemm_tile(16, 10, 1, 132 * 8) == "s"
    assert choose_gemm_tile(4096, 4096, 1, 132 * 8, ("s",)) == "s"
    assert choose_gemm_tile(6, 64 * 24 * 24, 1, 132 * 8) == "s"  # LeNet's first conv: 6 rows, not a 128-row tile
    assert choose_gemm_tile(65536, 40, 1, 132 * 8) == "m"         # 40 columns: 64 wide, not 128


def test_scan_runs_on_the_host_and_its_body_is_rendered():
    s = cuda_samples.rnn_training_step()
    program = program_of(s.compile("reference"))
    module = render_program(program)
    host = [k for k in program.kernels if k.anchor is not None and k.anchor.op in ("scan", "scan_output")]
    assert host and not {k.name for k in host} & {rk.kernel.name for rk in module.kernels}
    bodies = list(program.with_bodies())[1:]
    assert len(bodies) == 2  # the forward scan and its gradient, a reverse scan
    assert all(render_program(b).kernels for b in bodies)


def test_op_without_a_cuda_lowering_is_named():
    from dlc.passes import unfused_program
    from dlc.program import Kernel

    x = dlc.input("x", (2, 3))
    node = dlc.cast(x, "float64").node
    program = unfused_program([node], [], [x.node])
    program.kernels = [Kernel("k0", "opaque", (node,), (x.node,), (node,), node)]  # no opaque lowering of cast
    with pytest.raises(CudaUnsupportedError, match="op 'cast' .*test_cuda_codegen.py.*no CUDA lowering"):
        render_program(program)


def test_op_in_the_wrong_kind_of_kernel_is_named():
    from dlc.passes import unfused_program
    from dlc.program import Kernel

    table = dlc.input("table", (4, 3))
    ids = dlc.input("ids", (2,), "int64")
    node = dlc.take(table, ids).node
    program = unfused_program([node], [], [table.node, ids.node])
    program.kernels = [Kernel("k0", "elementwise", (node,), (table.node, ids.node), (node,), None)]
    with pytest.raises(CudaUnsupportedError, match="op 'take'.*cannot be part of an elementwise kernel"):
        render_program(program)


def test_compiling_for_cuda_without_pycuda_says_what_is_missing():
    pytest.importorskip("numpy")
    try:
        import pycuda.driver  # noqa: F401
        pytest.skip("pycuda is installed here")
    except ImportError:
        pass
    x = dlc.input("x", (3,))
    with pytest.raises(CudaUnavailableError, match=r'pycuda.*pip install "dlc\[cuda\]"'):
        dlc.compile(dlc.exp(x), target="cuda")


def test_parse_resource_usage():
    log = """ptxas info    : Compiling entry function 'k3_s' for 'sm_80'
ptxas info    : Function properties for k3_s
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 58 registers, used 1 barriers, 4224 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function 'k1' for 'sm_90'
ptxas info    : Function properties for k1
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers"""
    r = parse_resource_usage(log)
    k3 = r["sm_80"]["k3_s"]
    assert (k3.registers, k3.smem_bytes, k3.spill_stores, k3.stack_bytes) == (58, 4224, 4, 8)
    assert (r["sm_90"]["k1"].registers, r["sm_90"]["k1"].smem_bytes) == (32, 0)


# ----------------------------------------------------------------------------
# nvcc: every generated and hand-written kernel, sm_80 and sm_90


def _all_kernels_module() -> tuple[str, list[str]]:
    """One translation unit: the stand-alone SGEMM entries and every sample program's kernels (renamed apart)."""
    parts, entries = [], [f"dlc_sgemm_{t}_{tr}" for t in GEMM_CONFIGS for tr in ("nn", "tn", "nt", "tt")]
    for build in cuda_samples.SAMPLES:
        s = build()
        for n, program in enumerate(program_of(s.compile("reference")).with_bodies()):
            for k in program.kernels:
                k.name = f"{s.name}{n}_{k.name}"
            # every tile for the CNN (convolutions and matmuls), the small one elsewhere
            tiles = tuple(GEMM_CONFIGS) if build is cuda_samples.cnn_training_step else ("s",)
            module = render_program(program, tiles)
            parts.append(module.source.split("// ---- generated kernels ----")[1])
            entries += [e for k in module.kernels for e in k.entries]
    return "#define DLC_SGEMM_STANDALONE\n" + library_source() + "\n".join(parts), entries


@pytest.mark.skipif(nvcc_path() is None, reason="nvcc is not installed")
def test_every_kernel_compiles_for_sm80_and_sm90_without_warnings_or_spills():
    source, entries = _all_kernels_module()
    report = nvcc_compile(source, archs=("sm_80", "sm_90"))
    print("\n" + resource_table(report))
    for arch in ("sm_80", "sm_90"):
        missing = set(entries) - set(report[arch])
        assert not missing, f"{arch}: no ptxas report for {sorted(missing)[:5]}"
        for entry in entries:
            r = report[arch][entry]
            assert r.spill_stores == 0 and r.spill_loads == 0, f"{entry} spills on {arch}: {r}"
            assert r.registers <= 255 and r.smem_bytes <= 48 * 1024, f"{entry} on {arch}: {r}"
    big = report["sm_80"]["dlc_sgemm_l_nn"]
    assert big.smem_bytes == 2 * 8 * 132 * 4  # the two staged 8 x (128 + 4) tiles
    for arch in ("sm_80", "sm_90"):  # __launch_bounds__(256, 2): two blocks of tile l fit an SM's registers
        large = [r for entry, r in report[arch].items() if entry.endswith("_l") or entry.startswith("dlc_sgemm_l")]
        assert large and all(r.registers <= 128 for r in large), [(r.registers) for r in large]


@pytest.mark.skipif(nvcc_path() is None, reason="nvcc is not installed")
def test_nvcc_rejects_a_warning():
    from dlc.codegen.cuda import NvccError

    with pytest.raises(NvccError, match="declared but never referenced"):
        nvcc_compile('extern "C" __global__ void k(float* x) { int unused = 3; x[0] = 1.0f; }\n', archs=("sm_80",))


def test_matmul_launch_stays_within_cuda_grid_limits_for_a_tall_matrix():
    """ceil(M / BM) tiles once went on gridDim.y (at most 65535): a 3M-row matmul could not launch."""
    from dlc.codegen.c_emulator import launch_problem

    a, b = dlc.input("a", ("M", 8)), dlc.input("b", (8, 8))
    module = render_program(program_of(dlc.compile(dlc.relu(a @ b), target="reference")), ("s",))
    (launch,) = [k.plan_launch({"M": 3_000_000}, 1056) for k in module.kernels]
    assert launch_problem(launch.grid, launch.block) is None, launch


def _staging_conflicts(rows: int, bk: int, pad: int) -> int:
    """Bank conflicts of one warp's first staging store of a row-major A (or transposed B) tile in gemm.cu.

    Thread e stores element (kk = e % BK, i = e / BK) at word kk * (rows + pad) + i of the BK x (rows + pad)
    tile: the ways of the worst bank (1: conflict-free).
    """
    words = {e: (e % bk) * (rows + pad) + e // bk for e in range(32)}
    banks: dict[int, set[int]] = {}
    for w in words.values():
        banks.setdefault(w % 32, set()).add(w)
    return max(len(ws) for ws in banks.values())


def test_gemm_staging_stores_are_free_of_bank_conflicts():
    import re

    pad = int(re.search(r"#define DLC_GEMM_PAD (\d+)", library_source(("gemm",))).group(1))
    for tag, (bm, bn, bk, _, _) in GEMM_CONFIGS.items():
        worst = max(_staging_conflicts(bm, bk, pad), _staging_conflicts(bn, bk, pad))
        assert worst <= (1 if bk == 8 else 2), (tag, pad, worst)  # s (BK = 16, small problems): 2-way with pad 4
    assert _staging_conflicts(128, 8, 1) == 4  # the padding of one word this replaced
