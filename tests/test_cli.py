"""The `dlc` command: run, inspect, export, bench, --version, and one-line errors for user mistakes."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dlc
from dlc.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL_SCRIPT = textwrap.dedent('''
    import numpy as np
    import dlc

    def dlc_model():
        x = dlc.input("x", ("B", 3))
        w = dlc.param(np.arange(6, dtype=np.float32).reshape(3, 2) / 10, name="w")
        return dlc.compile({"y": dlc.tanh(x @ w)})

    if __name__ == "__main__":
        raise SystemExit("the __main__ block must not run on export")
''')


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of main(argv)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *fragments):
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlc: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture
def model(tmp_path):
    """An exported two-input training step, its inputs as .npy files, and its in-process outputs."""
    rng = np.random.default_rng(0)
    x, labels = dlc.input("x", ("B", 4)), dlc.input("labels", ("B",), "int64")
    w = dlc.param(rng.standard_normal((4, 3)), name="w")
    logits = x @ w
    loss = -dlc.mean(dlc.sum(dlc.log_softmax(logits) * dlc.one_hot(labels, 3), axis=1))
    fn = dlc.compile({"loss": loss, "logits": logits}, updates={w: w - 0.1 * dlc.grad(loss, w)})
    path = tmp_path / "model.dlc"
    dlc.export(fn, path)
    X, Y = rng.standard_normal((5, 4)), np.array([0, 1, 2, 1, 0])  # float64 on disk, as numpy saves by default
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "labels.npy", Y)
    want = fn(X.astype(np.float32), Y)
    return path, tmp_path, want


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip().startswith(f"dlc {dlc.__version__} (artifact format ")


def test_no_command_prints_help(capsys):
    rc, out, _ = run_cli(capsys)
    assert rc == 2 and "run" in out and "inspect" in out and "export" in out


@pytest.mark.parametrize("command", ["run", "inspect", "export", "bench"])
def test_every_subcommand_has_help(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: dlc {command}" in capsys.readouterr().out


def test_run_writes_outputs_bit_identical_to_the_in_process_function(capsys, model):
    path, d, want = model
    rc, out, _ = run_cli(capsys, "run", path, "--input", f"x={d / 'x.npy'}", "-i", f"labels={d / 'labels.npy'}",
                         "--output", d / "out.npz")
    assert rc == 0 and "wrote 2 output(s)" in out
    with np.load(d / "out.npz") as got:
        assert sorted(got.files) == ["logits", "loss"]
        for k in got.files:
            assert np.array_equal(got[k], want[k])


def test_run_prints_a_summary(capsys, model):
    path, d, want = model
    rc, out, _ = run_cli(capsys, "run", path, "--verify", "-i", f"x={d / 'x.npy'}", "-i", f"labels={d / 'labels.npy'}")
    assert rc == 0
    assert f"loss: float32() = {float(want['loss']):.6g}" in out
    assert "logits: float32(5, 3)  min" in out
    assert "training step; the updated weights were not saved" in out


def test_run_in_a_fresh_process(model):
    """No model script, no tracing in the process that runs the artifact; same bits as in-process."""
    path, d, want = model
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "dlc", "run", str(path), "-i", f"x={d / 'x.npy'}",
                           "-i", f"labels={d / 'labels.npy'}", "-o", str(d / "fresh.npz")],
                          capture_output=True, text=True, env=env, cwd=d, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with np.load(d / "fresh.npz") as got:
        for k in got.files:
            assert np.array_equal(got[k], want[k])


def test_run_errors_are_one_line(capsys, model, tmp_path):
    path, d, _ = model
    xs = ["-i", f"x={d / 'x.npy'}"]
    assert_one_line_error(*run_cli(capsys, "run", tmp_path / "missing.dlc")[::2], "missing.dlc", "no such")
    assert_one_line_error(*run_cli(capsys, "run", path, "-i", "x.npy")[::2], "expected NAME=FILE.npy")
    assert_one_line_error(*run_cli(capsys, "run", path, *xs)[::2], "missing --input for labels")
    assert_one_line_error(*run_cli(capsys, "run", path, *xs, "-i", "y=a.npy")[::2], "no input 'y'")
    assert_one_line_error(*run_cli(capsys, "run", path, *xs, "-i", "labels=nope.npy")[::2], "nope.npy: no such file")
    np.save(tmp_path / "wide.npy", np.zeros((5, 7)))
    assert_one_line_error(*run_cli(capsys, "run", path, "-i", f"x={tmp_path / 'wide.npy'}",
                                   "-i", f"labels={d / 'labels.npy'}")[::2], "input 'x': expected shape (B, 4)")
    assert_one_line_error(*run_cli(capsys, "run", path, "-i", f"x={d / 'labels.npy'}",
                                   "-i", f"labels={d / 'labels.npy'}")[::2], "holds int64 values")
    (tmp_path / "junk.dlc").write_bytes(b"not an artifact")
    assert_one_line_error(*run_cli(capsys, "run", tmp_path / "junk.dlc")[::2], "not a zip archive")
    assert_one_line_error(*run_cli(capsys, "run")[::2], "required: ARTIFACT")


def test_inspect_artifact_and_dot(capsys, model):
    path, d, _ = model
    rc, out, _ = run_cli(capsys, "inspect", path, "--dot", d / "g.dot")
    assert rc == 0
    assert "training function, target reference" in out
    assert "x: float32(B, 4), labels: int64(B,)" in out
    assert (d / "g.dot").read_text().startswith("digraph")


def test_export_and_inspect_a_script(capsys, tmp_path):
    script = tmp_path / "model.py"
    script.write_text(MODEL_SCRIPT)
    rc, out, err = run_cli(capsys, "export", script, "-o", tmp_path / "m.dlc")
    assert rc == 0, err
    assert "inference function" in out
    fn = dlc.load(tmp_path / "m.dlc", verify=True)
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(fn(x)["y"], np.tanh(x @ (np.arange(6, dtype=np.float32).reshape(3, 2) / 10)))
    rc, out, _ = run_cli(capsys, "inspect", script)
    assert rc == 0 and "tanh" in out


def test_export_with_golden_inputs(capsys, tmp_path):
    script = tmp_path / "model.py"
    script.write_text(MODEL_SCRIPT)
    np.savez(tmp_path / "golden.npz", x=np.full((3, 3), 0.5, np.float32))
    assert run_cli(capsys, "export", script, "-o", tmp_path / "m.dlc", "--golden", tmp_path / "golden.npz")[0] == 0
    from dlc.export import open_artifact

    assert open_artifact(tmp_path / "m.dlc").array("golden/inputs/x.npy").shape == (3, 3)


def test_export_errors_are_one_line(capsys, tmp_path):
    (tmp_path / "none.py").write_text("x = 1\n")
    assert_one_line_error(*run_cli(capsys, "export", tmp_path / "none.py", "-o", tmp_path / "a.dlc")[::2],
                          "defines no dlc_model() function")
    (tmp_path / "bad.py").write_text("def dlc_model():\n    return 42\n")
    assert_one_line_error(*run_cli(capsys, "export", tmp_path / "bad.py", "-o", tmp_path / "a.dlc")[::2],
                          "returned int, not a compiled dlc.Function")
    (tmp_path / "boom.py").write_text("def dlc_model():\n    raise RuntimeError('no data')\n")
    assert_one_line_error(*run_cli(capsys, "export", tmp_path / "boom.py", "-o", tmp_path / "a.dlc")[::2],
                          "boom.py failed: RuntimeError: no data")
    (tmp_path / "shape.py").write_text("import dlc\ndef dlc_model():\n    x = dlc.input('x', (2, 3))\n"
                                       "    return dlc.compile(x @ x)\n")
    assert_one_line_error(*run_cli(capsys, "export", tmp_path / "shape.py", "-o", tmp_path / "a.dlc")[::2],
                          "matmul at", "shape.py:4")
    assert_one_line_error(*run_cli(capsys, "export", tmp_path / "missing.py", "-o", tmp_path / "a.dlc")[::2],
                          "no such file")
    assert not (tmp_path / "a.dlc").exists()


@pytest.mark.skipif(not os.path.isfile(os.path.join(REPO, "benchmarks", "run.py")), reason="no benchmark suite")
def test_bench_forwards_to_the_benchmark_runner(capfd):
    rc = main(["bench", "--", "--help"])
    assert rc == 0
    assert "usage:" in capfd.readouterr().out


def test_export_a_training_step_script(capsys, tmp_path):
    (tmp_path / "train.py").write_text(textwrap.dedent('''
        import dlc
        from dlc import nn

        def dlc_model():
            model = nn.Linear(3, 2)
            x, y = dlc.input("x", ("B", 3)), dlc.input("y", ("B",), "int64")
            opt = dlc.optim.SGD(model.parameters(), lr=0.1)
            return nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), [x, y], opt, modules=model)
    '''))
    rc, out, err = run_cli(capsys, "export", tmp_path / "train.py", "-o", tmp_path / "t.dlc")
    assert rc == 0, err
    assert "training function" in out
    step = dlc.load(tmp_path / "t.dlc", verify=True)
    x, y = np.ones((4, 3), np.float32), np.array([0, 1, 1, 0])
    assert step(x, y)["loss"] > step(x, y)["loss"]  # it keeps training
