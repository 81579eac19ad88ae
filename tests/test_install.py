"""The installed package works on its own: build the wheel, install it in a fresh virtual environment, and from a
folder outside the repository train on target cpu, export, and run the artifact with the `dlc` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TRAIN_AND_EXPORT = textwrap.dedent("""
    import sys
    import numpy as np
    import dlc
    from dlc import nn

    print("dlc from", dlc.__file__)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = dlc.input("x", ("B", 4)), dlc.input("y", ("B",), "int64")
    opt = dlc.optim.Adam(model.parameters(), lr=0.05)
    step = nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), [x, y], opt, modules=model, target="cpu")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((96, 4)).astype(np.float32)
    Y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    history = nn.fit(step, X, Y, epochs=15, batch_size=32, verbose=0)
    first, last = history[0]["loss"], history[-1]["loss"]
    print(f"loss {first:.3f} -> {last:.3f}")
    assert last < 0.7 * first, (first, last)
    predict = nn.compile_eval(lambda x: model(x), [x], modules=model, target="cpu")
    dlc.export(predict, "model.dlc")
    np.save("x.npy", X[:5])
    np.save("expected.npy", predict(X[:5]))
""")


def _run(cmd, cwd, env, timeout=240):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_installed_wheel_trains_exports_and_runs_outside_the_repository(tmp_path):
    pytest.importorskip("numba")
    # build from a copy of the sources: the build leaves nothing in the repository
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "dlc", src / "dlc", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DLC_TARGET")}
    env["DLC_CACHE_DIR"] = str(tmp_path / "cache")
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
          str(src)], cwd=tmp_path, env=env)
    (wheel,) = wheels.glob("dlc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "dlc/kernels/cpu/fastmath.py" in names and "dlc/kernels/cuda/prelude.cu" in names
    assert not any(n.startswith(("benchmarks/", "tests/", "kernels/")) for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path, env=env)
    python, dlc_cmd = venv / "bin" / "python", venv / "bin" / "dlc"
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=tmp_path, env=env)

    work = tmp_path / "work"  # outside the repository: only the installed package can be imported
    work.mkdir()
    (work / "train.py").write_text(TRAIN_AND_EXPORT)
    out = _run([str(python), "train.py"], cwd=work, env=env)
    assert f"dlc from {venv}" in out, out

    _run([str(dlc_cmd), "run", "model.dlc", "--input", "x=x.npy", "--output", "out.npz"], cwd=work, env=env)
    check = ("import numpy as np; got = np.load('out.npz'); (name,) = got.files; "
             "np.testing.assert_allclose(got[name], np.load('expected.npy'), rtol=1e-5, atol=1e-6); print('same')")
    assert "same" in _run([str(python), "-c", check], cwd=work, env=env)

    # the benchmark suite is not in the wheel, and the command says where it is
    proc = subprocess.run([str(dlc_cmd), "bench", "--quick"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "not part of the installed package" in proc.stderr, proc.stderr
