"""The CUDA kernels' semantics, checked on the CPU: every kernel runs in the emulator against numpy."""

import shutil

import cuda_samples
import numpy as np
import pytest

import dlc
from dlc.codegen.c_emulator import EmulatedModule, EmulatorError, KernelSignature, sanitized
from dlc.codegen.cuda import GEMM_CONFIGS, gemm_grid, library_source
from dlc.ops.random import philox4x32

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the CUDA emulator needs g++")

TILES = ("s", "m")  # generated programs; the large tile is covered by the stand-alone SGEMM test


def close(ref, got, rtol=2e-5, atol=2e-5):
    ref, got = np.asarray(ref), np.asarray(got)
    assert ref.shape == got.shape and ref.dtype == got.dtype
    if ref.dtype.kind in "biu":
        np.testing.assert_array_equal(got, ref)
    else:
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------
# the emulator itself: barriers, shuffles, deadlocks


BARRIER_KERNELS = r"""
extern "C" __global__ void reverse_block(float* out, const float* x) {
  __shared__ float tile[256];
  tile[threadIdx.x] = x[blockIdx.x * blockDim.x + threadIdx.x];
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}
extern "C" __global__ void block_sum(float* out, const float* x, long long n) {
  float acc = 0;
  for (long long i = threadIdx.x; i < n; i += blockDim.x) acc += x[i];
  acc = dlc_block_reduce<DlcSum>(acc);
  float v = threadIdx.x < n ? x[threadIdx.x] : -INFINITY;
  i64 at = threadIdx.x < n ? (i64)threadIdx.x : -1;
  dlc_block_arg_reduce<true>(v, at);
  if (threadIdx.x == 0) { out[0] = acc; out[1] = (float)at; }
}
extern "C" __global__ void shuffle_down(float* out, const float* x) {
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, x[threadIdx.x], 3);
}
extern "C" __global__ void divergent_barrier(float* out) {
  if (threadIdx.x == 0) __syncthreads();
  out[threadIdx.x] = 1.0f;
}
extern "C" __global__ void philox(unsigned* out, unsigned c0, unsigned c1, unsigned c2, unsigned c3,
                                  unsigned k0, unsigned k1) {
  DlcPhilox r = dlc_philox4x32_10(c0, c1, c2, c3, k0, k1);
  for (int i = 0; i < 4; ++i) out[i] = r.v[i];
}
"""


@pytest.fixture(scope="module")
def barrier_module():
    p, i64 = ("float*", "ptr"), ("long long", "i64")
    u32 = ("unsigned", "u32")
    sigs = [KernelSignature("reverse_block", (p, p)), KernelSignature("block_sum", (p, p, i64)),
            KernelSignature("shuffle_down", (p, p)), KernelSignature("divergent_barrier", (p,)),
            KernelSignature("philox", (("unsigned*", "ptr"),) + (u32,) * 6)]
    return EmulatedModule(library_source(("prelude",)) + BARRIER_KERNELS, sigs)


def test_shared_memory_and_barrier(barrier_module, rng):
    x = rng.standard_normal(3 * 64).astype(np.float32)
    out = np.zeros_like(x)
    barrier_module.launch("reverse_block", (3,), (64,), [out, x])
    np.testing.assert_array_equal(out, x.reshape(3, 64)[:, ::-1].ravel())


@pytest.mark.parametrize("n,threads", [(1000, 256), (5, 32), (77, 96)])
def test_block_reduction_and_argmax(barrier_module, rng, n, threads):
    x = rng.standard_normal(n).astype(np.float32)
    x[min(n, threads) - 1] = x[0] = 9.0  # a tie: the first index wins, as in numpy
    out = np.zeros(2, np.float32)
    barrier_module.launch("block_sum", (1,), (threads,), [out, x, n])
    np.testing.assert_allclose(out[0], x.sum(dtype=np.float64), rtol=1e-5)
    assert out[1] == np.argmax(x[:threads])


def test_warp_shuffle_down(barrier_module, rng):
    x = rng.standard_normal(64).astype(np.float32)
    out = np.zeros_like(x)
    barrier_module.launch("shuffle_down", (1,), (64,), [out, x])
    lane = np.arange(64) % 32
    expect = np.where(lane + 3 < 32, np.roll(x, -3), x)
    np.testing.assert_array_equal(out, expect)


def test_barrier_not_reached_by_all_threads_is_a_deadlock(barrier_module):
    with pytest.raises(EmulatorError, match="deadlock"):
        barrier_module.launch("divergent_barrier", (1,), (64,), [np.zeros(64, np.float32)])


@pytest.mark.parametrize("counter,key", [((0, 0, 0, 0), (0, 0)),
                                         ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2),
                                         ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0))])
def test_philox_matches_the_numpy_generator(barrier_module, counter, key):
    out = np.zeros(4, np.uint32)
    barrier_module.launch("philox", (1,), (1,), [out, *counter, *key])
    expect = philox4x32(*(np.uint64(c) for c in counter), *(np.uint64(k) for k in key))
    np.testing.assert_array_equal(out, np.array([int(v) for v in expect], np.uint32))


# ----------------------------------------------------------------------------
# the emulator is stricter than a GPU where it can be: bad memory accesses, launches and masks are errors

STRICT_KERNELS = r"""
extern "C" __global__ void write_at(float* out, long long i) { out[i] = 1.0f; }
__device__ int deep(int n) { volatile char pad[1024]; pad[0] = (char)n; return n ? deep(n - 1) + pad[0] : 0; }
extern "C" __global__ void recurse(int* out, int depth) { __syncthreads(); out[threadIdx.x] = deep(depth); }
extern "C" __global__ void half_mask(float* out) { out[threadIdx.x] = __shfl_xor_sync(0xffffu, out[threadIdx.x], 1); }
extern "C" __global__ void block_order(unsigned* out, unsigned* count) {
  if (threadIdx.x == 0) out[atomicAdd(count, 1u)] = blockIdx.x + gridDim.x * blockIdx.y;
}
"""


@pytest.fixture(scope="module")
def strict_module():
    p = ("float*", "ptr")
    sigs = [KernelSignature("write_at", (p, ("long long", "i64"))), KernelSignature("recurse", (("int*", "ptr"),
            ("int", "i32"))), KernelSignature("half_mask", (p,)),
            KernelSignature("block_order", (("unsigned*", "ptr"), ("unsigned*", "ptr")))]
    return EmulatedModule(library_source(("prelude",)) + STRICT_KERNELS, sigs)


def _device_launch(device, module, name, grid, block, args):
    """A launch the way the runtime makes it: then the guards of each buffer passed are checked."""
    module.launch(name, grid, block, args)
    device.check_guards(name, args)


def test_fresh_device_memory_is_poison_not_zeros():
    from dlc.runtime.cuda import EmulatedDevice

    buf = EmulatedDevice().alloc(12)
    out = np.zeros(3, np.float32)
    EmulatedDevice().download(buf.ptr, out)
    assert np.isnan(out).all() and buf.ptr % 256 == 0


@pytest.mark.parametrize("index", [-1, 10, 13])
def test_write_just_outside_a_buffer_is_an_error_naming_the_kernel(strict_module, index):
    from dlc.runtime.cuda import EmulatedDevice

    device = EmulatedDevice()
    buf = device.alloc(40)  # 10 floats
    with pytest.raises(EmulatorError, match="write_at wrote outside its buffer"):
        _device_launch(device, strict_module, "write_at", (1,), (1,), [buf.ptr, index])
    _device_launch(device, strict_module, "write_at", (1,), (1,), [buf.ptr, 9])  # the last element is fine


@pytest.mark.skipif(sanitized(), reason="under AddressSanitizer, ASan reports faults itself")
@pytest.mark.parametrize("index", [300, -1100, 1 << 40])  # the guard pages, and nowhere near any buffer
def test_write_far_outside_every_buffer_is_a_memory_fault_not_a_crash(strict_module, index):
    from dlc.runtime.cuda import EmulatedDevice

    buf = EmulatedDevice().alloc(40)
    with pytest.raises(EmulatorError, match="memory fault"):
        strict_module.launch("write_at", (1,), (1,), [buf.ptr, index])


@pytest.mark.skipif(sanitized(), reason="under AddressSanitizer, ASan reports faults itself")
def test_stack_overflow_is_an_error(strict_module):
    out = np.zeros(32, np.int32)
    strict_module.launch("recurse", (1,), (32,), [out, 20])
    with pytest.raises(EmulatorError, match="overflowed its stack"):
        strict_module.launch("recurse", (1,), (32,), [out, 100_000])
    strict_module.launch("recurse", (1,), (32,), [out, 20])  # and the emulator still works


@pytest.mark.parametrize("grid,block", [((1,), (1025,)), ((1,), (1, 1, 65)), ((1, 65536), (32,)), ((0,), (32,)),
                                        ((1, 1, 70000), (32,)), ((2**31,), (32,))])
def test_cuda_launch_limits_are_enforced(strict_module, grid, block):
    with pytest.raises(EmulatorError, match="grid|block"):
        strict_module.launch("write_at", grid, block, [np.zeros(1, np.float32), 0])


def test_shuffle_mask_must_name_the_lanes_that_reach_it(strict_module):
    with pytest.raises(EmulatorError, match="lane mask"):
        strict_module.launch("half_mask", (1,), (32,), [np.zeros(32, np.float32)])


def test_blocks_run_in_a_scrambled_order(strict_module):
    out, count = np.zeros(40, np.uint32), np.zeros(1, np.uint32)
    strict_module.launch("block_order", (8, 5), (32,), [out, count])
    assert sorted(out) == list(range(40)) and list(out) != sorted(out)
    count[:] = 0
    strict_module.launch("block_order", (8, 5), (32,), [out, count], scrambled=False)
    assert list(out) == list(range(40))


# ----------------------------------------------------------------------------
# the hand-written SGEMM: every tile configuration and transpose pair


@pytest.fixture(scope="module")
def sgemm_module():
    p, i64, f32 = ("float*", "ptr"), ("long long", "i64"), ("float", "f32")
    names = [f"dlc_sgemm_{tag}_{t}" for tag in GEMM_CONFIGS for t in ("nn", "tn", "nt", "tt")]
    source = "#define DLC_SGEMM_STANDALONE\n" + library_source(("prelude", "gemm"))
    return EmulatedModule(source, [KernelSignature(n, (p, p, p, i64, i64, i64, f32, f32)) for n in names])


@pytest.mark.parametrize("tag", list(GEMM_CONFIGS))
@pytest.mark.parametrize("trans", ["nn", "tn", "nt", "tt"])
def test_sgemm_tiles_and_transposes(sgemm_module, rng, tag, trans):
    m, n, k = 37, 45, 19  # no dim a multiple of any tile: every edge path runs
    bm, bn, _, tm, tn = GEMM_CONFIGS[tag]
    a = rng.standard_normal((k, m) if trans[0] == "t" else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans[1] == "t" else (k, n)).astype(np.float32)
    c = rng.standard_normal((m, n)).astype(np.float32)
    expect = 1.5 * ((a.T if trans[0] == "t" else a) @ (b.T if trans[1] == "t" else b)) + 0.5 * c
    sgemm_module.launch(f"dlc_sgemm_{tag}_{trans}", gemm_grid(tag, m, n), ((bm // tm) * (bn // tn),),
                        [a, b, c, m, n, k, 1.5, 0.5])
    np.testing.assert_allclose(c, expect, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# generated kernels: each representative program against the reference executor


@pytest.mark.parametrize("build", cuda_samples.SAMPLES, ids=lambda b: b.__name__)
def test_sample_program_matches_reference(build):
    ref_sample, emu_sample = build(), build()
    expect = ref_sample.compile("reference")(*ref_sample.args)
    got = emu_sample.compile("cuda", emulate=True, gemm_tiles=TILES)(*emu_sample.args)
    for r, g in zip(expect, got):
        close(r, g, rtol=1e-4, atol=1e-5)
    for key in ref_sample.updates and [p.node.attr("name") for p in ref_sample.updates]:
        close(ref_sample.store[key], emu_sample.store[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("build", [cuda_samples.reductions, cuda_samples.matmul_epilogue,
                                   cuda_samples.softmax_cross_entropy], ids=lambda b: b.__name__)
def test_unfused_kernels_match_reference(build):
    """fuse=False: one kernel per op, so every op's own CUDA lowering is checked on its own."""
    ref_sample, emu_sample = build(), build()
    expect = ref_sample.compile("reference")(*ref_sample.args)
    got = emu_sample.compile("cuda", emulate=True, gemm_tiles=("s",), fuse=False)(*emu_sample.args)
    for r, g in zip(expect, got):
        close(r, g, rtol=1e-4, atol=1e-5)


def test_kernel_values_match_the_reference_node_by_node():
    values, ref = cuda_samples.softmax_cross_entropy().kernel_values_and_reference(emulate=True, gemm_tiles=TILES)
    assert values and set(values) == set(ref)
    for key, got in values.items():
        close(ref[key], got, rtol=1e-4, atol=1e-6)


def test_new_batch_size_is_a_new_launch_not_a_new_compile():
    s = cuda_samples.matmul_epilogue()
    fn = s.compile("cuda", emulate=True, gemm_tiles=TILES)
    launchers = fn.backend.runner.launchers
    ref = s.compile("reference")
    for batch in (5, 1, 64):
        b = cuda_samples.matmul_epilogue(batch)
        for r, g in zip(ref(*b.args), fn(*b.args)):
            close(r, g, rtol=1e-4, atol=1e-5)
    assert fn.backend.runner.launchers is launchers
    assert all("i64 s_B" in k.source for k in fn.backend.module.kernels)  # the batch is an argument


def test_vectorized_path_and_its_scalar_tail(rng):
    x = dlc.input("x", ("N",))
    y = dlc.input("y", ("N",))
    fn = dlc.compile(dlc.gelu(x * 2.0 + y) - y, target="cuda", emulate=True)
    assert "float4" in fn.backend.source()
    ref = dlc.compile(dlc.gelu(x * 2.0 + y) - y)
    for n in (4096, 4099, 3):
        a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
        close(ref(a, b), fn(a, b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("config", ["small", "h100"])
def test_long_reductions_split_into_two_passes(rng, config):
    x = dlc.input("x", ("N",))
    y = dlc.input("y", (3, "N"))
    outs = [dlc.sum(dlc.exp(x * 0.01)) * 2.0, dlc.argmax(x), dlc.max(y, axis=1), dlc.argmin(y, axis=1),
            dlc.mean(y, axis=1)]
    fn = dlc.compile(outs, target="cuda", emulate=config)
    ref = dlc.compile(outs)
    a, b = rng.standard_normal(50_000).astype(np.float32), rng.standard_normal((3, 50_000)).astype(np.float32)
    a[100] = a[40_000] = 10.0           # a tie across two chunks: the first index wins
    b[1, 7] = b[1, 45_000] = -10.0
    for r, g in zip(ref(a, b), fn(a, b)):
        close(r, g, rtol=1e-5, atol=1e-5)
    phases = [[ln.scalars["phase"] for ln in launches] for launches in fn.backend.runner.launches.values()]
    assert [1, 2] in phases  # the split path ran


@pytest.mark.parametrize("dtype", ["float32", "int32", "float64"])
@pytest.mark.parametrize("config", ["small", "h100"])
def test_split_argmax_workspace_fits_every_dtype(rng, dtype, config):
    """The split pass's index region once started at 8 * n_out * chunks bytes: past a float32 workspace's end."""
    x = dlc.input("x", ("N",), dtype)
    fn = dlc.compile([dlc.argmax(x), dlc.argmin(x)], target="cuda", emulate=config)
    a = (rng.standard_normal(40_000) * 1000).astype(dtype)
    assert [int(v) for v in fn(a)] == [int(np.argmax(a)), int(np.argmin(a))]
    launches = fn.backend.runner.launches.values()
    assert any(ln.scalars["phase"] == 1 and ln.grid[1] > 2 for ls in launches for ln in ls)  # split, many chunks


def test_take_index_out_of_range_is_an_index_error():
    table = dlc.param(np.ones((4, 3), np.float32), name="table")
    ids = dlc.input("ids", (2,), "int64")
    fn = dlc.compile(dlc.take(table, ids), target="cuda", emulate=True)
    np.testing.assert_array_equal(fn(np.array([-1, 3])), np.ones((2, 3), np.float32))
    with pytest.raises(IndexError, match="out of range"):
        fn(np.array([0, 4]))
    fn(np.array([1, 2]))  # the error flag is cleared after being reported


# ----------------------------------------------------------------------------
# training on the device: several steps, parameters kept on the device


def _train(sample, target, steps, **options):
    fn = sample.compile(target, **options)
    losses = [float(fn(*sample.args)[0]) for _ in range(steps)]
    return losses, {k: sample.store[k].copy() for k in sample.store.keys()}


@pytest.mark.parametrize("build", [cuda_samples.mlp_training_step, cuda_samples.cnn_training_step,
                                   cuda_samples.rnn_training_step], ids=lambda b: b.__name__)
def test_training_steps_match_reference_and_cpu(build):
    ref_losses, ref_params = _train(build(), "reference", 4)
    emu_losses, emu_params = _train(build(), "cuda", 4, emulate=True, gemm_tiles=TILES)
    np.testing.assert_allclose(emu_losses, ref_losses, rtol=1e-4)
    assert ref_losses[-1] < ref_losses[0]
    for key in ref_params:
        close(ref_params[key], emu_params[key], rtol=1e-3, atol=1e-5)
    if build is not cuda_samples.mlp_training_step:
        return  # the CPU backend's own tests cover its convolutions; its compile time is spent once here
    try:
        import dlc.runtime.cpu  # noqa: F401
    except ImportError:
        return
    cpu_losses, _ = _train(build(), "cpu", 4)
    np.testing.assert_allclose(emu_losses, cpu_losses, rtol=1e-4)


def test_h100_configuration_matches_reference():
    """1056 resident blocks: other GEMM tiles and reduction paths than the small default device takes."""
    ref = cuda_samples.mlp_training_step(batch=512)
    expect = [ref.compile("reference")(*ref.args)[0] for _ in range(2)]
    entries = {}
    for config in ("small", "h100"):
        emu = cuda_samples.mlp_training_step(batch=512)
        fn = emu.compile("cuda", emulate=config, gemm_tiles=tuple(GEMM_CONFIGS))
        for e in expect:
            close(e, fn(*emu.args)[0], rtol=1e-4, atol=1e-5)
        entries[config] = {ln.entry for ls in fn.backend.runner.launches.values() for ln in ls}
    assert entries["small"] != entries["h100"]


def test_store_reads_see_device_updates_and_host_writes_reach_the_device():
    s = cuda_samples.mlp_training_step()
    fn = s.compile("cuda", emulate=True, gemm_tiles=TILES)
    before = s.store["w0"].copy()
    fn(*s.args)
    after = s.store["w0"].copy()  # read through the Store: synced from the device
    assert not np.array_equal(before, after)
    ref = cuda_samples.mlp_training_step()
    for key in s.store.keys():    # host writes: uploaded again before the next step
        s.store[key] = ref.store[key]
    np.testing.assert_allclose(fn(*s.args), ref.compile("reference")(*ref.args), rtol=1e-5)


def test_two_functions_share_device_parameters():
    """A GAN's two steps: the second must see the first one's updates without a host round trip."""
    store = dlc.Store()
    w = dlc.param(np.full((3,), 2.0, np.float32), name="w", store=store)
    x = dlc.input("x", (3,))
    step_a = dlc.compile(dlc.sum(w * x), updates={w: w * 0.5}, target="cuda", emulate=True, store=store)
    step_b = dlc.compile(dlc.sum(w * x), updates={w: w + 1.0}, target="cuda", emulate=True, store=store)
    ones = np.ones(3, np.float32)
    assert float(step_a(ones)) == 6.0   # w: 2 -> 1
    assert float(step_b(ones)) == 3.0   # w: 1 -> 2
    assert float(step_a(ones)) == 6.0
    np.testing.assert_array_equal(store["w"], np.full(3, 1.0, np.float32))


def test_cpu_and_cuda_functions_share_a_store_through_sync_and_invalidate():
    pytest.importorskip("dlc.runtime.cpu")
    from dlc.runtime.cuda import invalidate, sync

    store = dlc.Store()
    w = dlc.param(np.ones(3, np.float32), name="w", store=store)
    x = dlc.input("x", (3,))
    on_gpu = dlc.compile(dlc.sum(w * x), updates={w: w * 2.0}, target="cuda", emulate=True, store=store)
    on_cpu = dlc.compile(dlc.sum(w * x), updates={w: w + 1.0}, target="cpu", store=store)
    ones = np.ones(3, np.float32)
    assert float(on_gpu(ones)) == 3.0   # w: 1 -> 2 on the device
    sync(store)                         # the CPU function holds the Store's arrays: copy the device values back
    assert float(on_cpu(ones)) == 6.0   # w: 2 -> 3 on the host, in place
    invalidate(store)                   # the device copy is stale now
    assert float(on_gpu(ones)) == 9.0   # w: 3 -> 6
    np.testing.assert_array_equal(store["w"], np.full(3, 6.0, np.float32))


def test_generated_cuda_is_dumped_on_request(tmp_path):
    s = cuda_samples.rnn_training_step()
    fn = s.compile("cuda", emulate=True, gemm_tiles=TILES, dump=str(tmp_path))
    files = sorted(tmp_path.glob("dlc_gen_*.cu"))
    assert len(files) == 3  # the step, the forward scan's body, the backward scan's body
    assert fn.backend.source() in [f.read_text() for f in files]


def test_concurrent_calls_of_one_function_are_correct():
    """Calls from several threads share one arena and one emulator: the device serializes them."""
    from concurrent.futures import ThreadPoolExecutor

    x = dlc.input("x", ("N", 64))
    w = dlc.param(np.linspace(-1, 1, 64 * 32).astype(np.float32).reshape(64, 32), name="w")
    out = dlc.sum(dlc.tanh(x @ w), axis=1)
    fn, ref = dlc.compile(out, target="cuda", emulate=True), dlc.compile(out)
    batches = [np.random.default_rng(i).standard_normal((40, 64)).astype(np.float32) for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda b: fn(b), batches * 3))
    for b, g in zip(batches * 3, got):
        close(ref(b), g, rtol=1e-4, atol=1e-4)


def _one_channel_discriminator_step(target, **options):
    rng = np.random.default_rng(5)
    store = dlc.Store()
    x = dlc.input("x", ("B", 1, 6, 6))
    w = dlc.param(rng.standard_normal((3, 1, 3, 3)).astype(np.float32), name="w", store=store)
    v = dlc.param(rng.standard_normal((48, 1)).astype(np.float32), name="v", store=store)
    score = dlc.sigmoid(dlc.reshape(dlc.relu(dlc.conv2d(x, w)), ("B", 48)) @ v + 0.5)
    loss = dlc.mean(score)
    gw, gv = dlc.grad(loss, [w, v])
    fn = dlc.compile([score, loss], updates={w: w - 0.1 * gw, v: v - 0.1 * gv}, target=target, store=store,
                     **options)
    a = rng.standard_normal((2, 1, 6, 6)).astype(np.float32)
    return [fn(a) for _ in range(2)], store


def test_epilogues_of_anchors_with_size_one_dims():
    """An operand read indexes a size-1 dim with "0": a one-column matmul (a discriminator's head) and the SGD
    update fused into a one-input-channel conv's weight gradient once found no value there and did not compile."""
    expect, ref_store = _one_channel_discriminator_step("reference")
    got, emu_store = _one_channel_discriminator_step("cuda", emulate=True)
    for e, g in zip(expect, got):
        for r, o in zip(e, g):
            close(r, o, rtol=1e-5, atol=1e-6)
    for key in ("w", "v"):
        close(ref_store[key], emu_store[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("config", ["small", "h100"])
def test_weight_gradient_split_over_k_matches_reference(rng, config):
    """A 4 -> 6 channel 3x3 weight gradient over 16 x 32 x 32 positions has 1 output tile: on an H100's 1056
    blocks its K is split over blocks (partial tiles in a workspace, summed in order, then the epilogue)."""
    x = dlc.input("x", ("B", 4, 32, 32))
    gy = dlc.input("gy", ("B", 6, 32, 32))
    w = dlc.param(rng.standard_normal((6, 4, 3, 3)).astype(np.float32) * 0.1, name="w_split")
    y = dlc.conv2d(x, w, padding=1)
    (dw,) = dlc.grad(dlc.sum(y * gy), [w])
    out = dlc.relu(dw) * 2.0 + w  # an epilogue after the sum over K
    feeds = (rng.standard_normal((16, 4, 32, 32)).astype(np.float32),
             rng.standard_normal((16, 6, 32, 32)).astype(np.float32))
    want = dlc.compile(out, target="reference")(*feeds)
    fn = dlc.compile(out, target="cuda", emulate=config, gemm_tiles=("s",))
    np.testing.assert_allclose(fn(*feeds), want, rtol=1e-4, atol=1e-4)
    phases = [ln.scalars.get("phase") for ls in fn.backend.runner.launches.values() for ln in ls
              if ln.entry.startswith(next(k.name for k in fn.program.kernels
                                          if k.anchor is not None and k.anchor.op == "conv2d_grad_weight"))]
    assert phases == ([1, 2] if config == "h100" else [0])
