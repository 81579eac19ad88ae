"""The kernel cache: one directory ($DLC_CACHE_DIR), files used only when intact, unusable folders replaced.

A cached generated module runs only if it is the source its name hashes; an
edited or truncated file is rewritten, never imported; a cache directory that
cannot be used falls back to a private temporary one with a warning. The
emulator's compiled libraries are checked against the hash recorded after
their compilation.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings

import numpy as np
import pytest

import dlc
from dlc import cache


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    """$DLC_CACHE_DIR set to a fresh folder (and the cache's memory of checked folders cleared)."""
    root = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV, str(root))
    cache.reset()
    yield root
    cache.reset()


def small_function(rng, scale=1.0):
    x = dlc.input("x", ("B", 3))
    w = dlc.param(rng.standard_normal((3, 2)).astype(np.float32), name="w")
    return dlc.compile(dlc.tanh(x @ w) * scale, inputs=[x], target="cpu"), w


def expected(x, store):
    return np.tanh(x @ store["w"])


def forget_module(fn):
    """Make the next compile of fn's program import its module from the cache file again."""
    sys.modules.pop(f"dlc_gen_{fn.backend.generated.digest}", None)


def module_file(fn, root):
    (path,) = root.rglob(f"dlc_gen_{fn.backend.generated.digest}.py")
    return path


@pytest.mark.parametrize("damage", ["edited", "truncated", "emptied"])
def test_a_damaged_cached_module_is_rewritten_and_never_imported(rng, cache_root, damage):
    scale = {"edited": 1.5, "truncated": 2.5, "emptied": 3.5}[damage]   # a module of its own per case
    fn, _ = small_function(rng, scale)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_allclose(fn(x), scale * expected(x, fn.store), rtol=1e-5)
    path = module_file(fn, cache_root)
    source = path.read_text()
    if damage == "edited":   # code that would run at import, and a changed result
        path.write_text(source.replace("import math", "import math\nraise RuntimeError('the edited file ran')"))
    elif damage == "truncated":
        path.write_text(source[: len(source) // 2])
    else:
        path.write_text("")
    forget_module(fn)
    dlc.reset_default_store()   # the same parameter names: the same generated module
    again, _ = small_function(np.random.default_rng(0), scale)
    assert again.backend.generated.digest == fn.backend.generated.digest
    np.testing.assert_allclose(again(x), scale * expected(x, again.store), rtol=1e-5)
    assert path.read_text() == source


def test_the_cpu_modules_live_in_the_one_cache_directory(rng, cache_root):
    fn, _ = small_function(rng, 4.5)
    assert module_file(fn, cache_root).parent == cache_root / "cpu"
    assert cache.cache_dir("cpu") == cache_root / "cpu"


def unusable_dirs(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    return {"a file in its place": a_file, "under a file": a_file / "cache", "a name too long": tmp_path / ("x" * 300),
            "writable by everyone": tmp_path / "open"}


@pytest.mark.parametrize("case", ["a file in its place", "under a file", "a name too long", "writable by everyone",
                                  "read-only", "owned by another user"])
def test_an_unusable_cache_directory_falls_back_to_a_private_one_with_a_warning(rng, tmp_path, monkeypatch, case):
    if case == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        bad = tmp_path / "ro"
        bad.mkdir(mode=0o500)
    elif case == "owned by another user":
        if os.geteuid() != 0:
            pytest.skip("only root can give a folder to another user")
        bad = tmp_path / "theirs"
        bad.mkdir()
        os.chown(bad, 65534, 65534)
    else:
        bad = unusable_dirs(tmp_path)[case]
        if case == "writable by everyone":
            bad.mkdir()
            bad.chmod(0o777)
    monkeypatch.setenv(cache.ENV, str(bad))
    cache.reset()
    try:
        with pytest.warns(RuntimeWarning, match="cache directory .* is unusable") as caught:
            fn, _ = small_function(rng)
            x = rng.standard_normal((2, 3)).astype(np.float32)
            np.testing.assert_allclose(fn(x), expected(x, fn.store), rtol=1e-5)
        assert len([w for w in caught if "unusable" in str(w.message)]) == 1
        used = cache.cache_dir("cpu")
        assert str(bad) not in str(used) and used.is_dir()
        assert oct(used.stat().st_mode & 0o077) == "0o0"   # private
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # one warning per process and folder, not one per compile
            small_function(rng, scale=2.0)
    finally:
        cache.reset()
        if case == "read-only":
            bad.chmod(0o700)


@pytest.mark.parametrize("folder", ["a file", "bad\0name"])
def test_a_cache_option_folder_is_checked_too(rng, tmp_path, folder):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    x = dlc.input("x", ("B", 3))
    with pytest.warns(RuntimeWarning, match="unusable"):
        fn = dlc.compile(dlc.tanh(x) * 3.0, inputs=[x], target="cpu",
                         cache=str(a_file) if folder == "a file" else folder)
    np.testing.assert_allclose(fn(np.ones((1, 3), np.float32)), 3 * np.tanh(np.ones((1, 3))), rtol=1e-6)
    cache.reset()


# ----------------------------------------------------------------------------
# the CUDA emulator's compiled libraries


KERNEL = r"""
extern "C" __global__ void twice(float* out, const float* x) {
  out[threadIdx.x] = 2.0f * x[threadIdx.x];
}
"""


def twice_module():
    from dlc.codegen.c_emulator import EmulatedModule, KernelSignature

    return EmulatedModule(KERNEL, [KernelSignature("twice", (("float*", "ptr"), ("const float*", "ptr")))])


def run_twice(module):
    x = np.arange(8, dtype=np.float32)
    out = np.zeros(8, np.float32)
    module.launch("twice", (1,), (8,), [out, x])
    return out


@pytest.mark.skipif(shutil.which("g++") is None, reason="the CUDA emulator needs g++")
def test_a_damaged_emulator_library_is_compiled_again_not_loaded(cache_root):
    np.testing.assert_array_equal(run_twice(twice_module()), 2 * np.arange(8))
    (lib,) = (cache_root / "cuda-emulator").glob("emu_*.so")
    sidecar = lib.with_name(lib.name + ".sha256")
    assert sidecar.read_text() == cache.digest(lib.read_bytes(), 64)
    for damage in ("truncated", "edited", "no sidecar"):
        data = bytearray(lib.read_bytes())
        if damage != "no sidecar":
            lib.unlink()   # a new file: this process has the library mapped, rewriting it in place would crash it
        if damage == "truncated":
            lib.write_bytes(data[:100])
        elif damage == "edited":
            data[-10] ^= 0xFF
            lib.write_bytes(bytes(data))
        else:
            sidecar.unlink()
        damaged = lib.read_bytes()
        np.testing.assert_array_equal(run_twice(twice_module()), 2 * np.arange(8))
        assert sidecar.read_text() == cache.digest(lib.read_bytes(), 64)
        assert damage == "no sidecar" or lib.read_bytes() != damaged


def test_hand_written_kernels_cache_is_stamped_with_every_kernel_file(tmp_path, monkeypatch):
    """numba's cache of a hand-written kernel is valid for one set of kernel files (kernels_digest), not for its
    own file's time and size: conv.py's conv2d calls conv_tiles.py's kernels, compiled into it, and kept running
    the old ones after an edit of conv_tiles.py alone. Functions outside dlc/kernels/cpu keep numba's stamp."""
    from numba import njit
    from numba.core import caching

    from dlc.runtime.cpu import kernels_digest, load_kernel_modules

    load_kernel_modules()
    import dlc_cpu_conv
    import dlc_cpu_conv_tiles

    for kernel in (dlc_cpu_conv.conv2d, dlc_cpu_conv_tiles.tiled_conv2d):
        assert kernel._cache._impl._locator.get_source_stamp() == kernels_digest()
    # the stamp changes with any kernel file: it hashes them all (a copy of the folder, one file edited)
    import dlc.runtime.cpu as cpu

    copy = tmp_path / "kernels"
    shutil.copytree(cpu._KERNELS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "conv_tiles.py").write_text((copy / "conv_tiles.py").read_text() + "\n# edited\n")
    before = kernels_digest()
    kernels_digest.cache_clear()
    monkeypatch.setattr(cpu, "_KERNELS_DIR", copy)
    try:
        assert kernels_digest() != before
    finally:
        monkeypatch.undo()
        kernels_digest.cache_clear()
    assert kernels_digest() == before
    assert sum(getattr(c, "_dlc_kernels", False) for c in caching.CacheImpl._locator_classes) == 3
    load_kernel_modules()   # installs its locators once
    assert sum(getattr(c, "_dlc_kernels", False) for c in caching.CacheImpl._locator_classes) == 3

    module = tmp_path / "elsewhere.py"
    module.write_text("def f(x):\n    return x + 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import elsewhere

        other = njit(cache=True)(elsewhere.f)
        assert other(1) == 2
        assert not getattr(type(other._cache._impl._locator), "_dlc_kernels", False)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("elsewhere", None)
