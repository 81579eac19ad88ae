"""The CUDA backend on a real GPU (pycuda): the same programs as the emulator tests, and the device-only rules.

Every test here is marked gpu and skipped unless pycuda imports and a GPU is
visible; benchmarks/gpu_check.sh runs them on a GPU machine.
"""

import cuda_samples
import numpy as np
import pytest

import dlc
from dlc.codegen.cuda import GEMM_CONFIGS


def _gpu_available() -> bool:
    try:
        import pycuda.driver as drv

        drv.init()
        return drv.Device.count() > 0
    except Exception:  # noqa: BLE001  (no pycuda, no driver, no device: all mean skip)
        return False


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _gpu_available(), reason="needs pycuda and an NVIDIA GPU")]


def close(ref, got, rtol=1e-4, atol=1e-5):
    ref, got = np.asarray(ref), np.asarray(got)
    assert ref.shape == got.shape and ref.dtype == got.dtype
    if ref.dtype.kind in "biu":
        np.testing.assert_array_equal(got, ref)
    else:
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("build", cuda_samples.SAMPLES, ids=lambda b: b.__name__)
def test_sample_program_matches_reference_on_gpu(build):
    ref_sample, gpu_sample = build(), build()
    expect = ref_sample.compile("reference")(*ref_sample.args)
    got = gpu_sample.compile("cuda", gemm_tiles=("m",))(*gpu_sample.args)  # one tile: a faster nvcc
    for r, g in zip(expect, got):
        close(r, g)


@pytest.mark.parametrize("build", [cuda_samples.mlp_training_step, cuda_samples.cnn_training_step,
                                   cuda_samples.rnn_training_step], ids=lambda b: b.__name__)
def test_training_steps_match_reference_on_gpu(build):
    ref, gpu = build(), build()
    f_ref, f_gpu = ref.compile("reference"), gpu.compile("cuda", gemm_tiles=("s", "m"))
    for _ in range(5):
        close(f_ref(*ref.args)[0], f_gpu(*gpu.args)[0], rtol=1e-4)
    for key in ref.store.keys():
        close(ref.store[key], gpu.store[key], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("tag", list(GEMM_CONFIGS))
def test_every_gemm_tile_on_gpu(tag, rng):
    a = dlc.input("a", ("M", 300))
    b = dlc.input("b", (300, 257))
    fn = dlc.compile(dlc.relu(a @ b), target="cuda", gemm_tiles=(tag,))
    x, y = rng.standard_normal((513, 300)).astype(np.float32), rng.standard_normal((300, 257)).astype(np.float32)
    close(np.maximum(x @ y, 0), fn(x, y), rtol=1e-4, atol=1e-3)


def test_random_streams_match_the_reference_on_gpu():
    """Philox's bits are exact, so dropout keeps the very same elements; the transforms round differently.

    Uniforms are low + (high - low) * u (nvcc contracts it to one FMA: 1 ulp); normals are computed in
    float64 through CUDA's log1p and cos (within 2 ulp of glibc's), then scaled.
    """
    ref, gpu = cuda_samples.random_numbers(), cuda_samples.random_numbers()
    expect, got = ref.compile("reference")(*ref.args), gpu.compile("cuda")(*gpu.args)
    for r, g in zip(expect, got):
        close(r, g, rtol=1e-6, atol=1e-6 if r.dtype == np.float32 else 1e-12)
    np.testing.assert_array_equal(got[-1] == 0, expect[-1] == 0)  # dropout: the same mask


def test_kernel_values_on_gpu_match_the_reference_and_the_emulator():
    """Node by node against the reference; outputs against the emulator (each function bound to its own nodes)."""
    values, ref = cuda_samples.softmax_cross_entropy().kernel_values_and_reference()
    assert values and set(values) == set(ref)
    for key, got in values.items():
        close(ref[key], got, rtol=1e-5, atol=1e-6)
    s1, s2 = cuda_samples.softmax_cross_entropy(), cuda_samples.softmax_cross_entropy()
    for g, e in zip(s1.compile("cuda")(*s1.args), s2.compile("cuda", emulate=True)(*s2.args)):
        close(e, g, rtol=1e-5, atol=1e-6)


def test_take_index_error_on_gpu():
    table = dlc.param(np.ones((4, 3), np.float32), name="table")
    ids = dlc.input("ids", (2,), "int64")
    fn = dlc.compile(dlc.take(table, ids), target="cuda")
    with pytest.raises(IndexError):
        fn(np.array([0, 9]))
