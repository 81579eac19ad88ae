"""`dlc bench` forwards its arguments as its help prints them, and the suite names a peer it could not find."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlc import cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def calls(monkeypatch):
    seen = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: seen.append(cmd) or 0)
    return seen


@pytest.mark.parametrize("argv, forwarded", [
    (["bench", "--quick"], ["--quick"]),
    (["bench", "--", "--quick"], ["--quick"]),
    (["--debug", "bench", "--workloads", "W6", "--quick"], ["--workloads", "W6", "--quick"]),
    (["bench", "--", "--help"], ["--help"]),
    (["bench"], []),
])
def test_bench_forwards_arguments_as_printed_in_its_help(calls, argv, forwarded):
    assert cli.main(argv) == 0
    (cmd,) = calls
    assert cmd[0] == sys.executable and cmd[1].endswith(os.path.join("benchmarks", "run.py"))
    assert cmd[2:] == forwarded


def test_bench_help_is_the_commands_own_and_names_its_examples(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "'dlc bench --quick'" in text and "'dlc bench -- --help'" in text and "source repository" in text


def test_bench_quick_reaches_the_suite_end_to_end():
    """`dlc bench --quick --help`: --quick is accepted and everything reaches benchmarks/run.py."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "dlc", "bench", "--quick", "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: run.py" in proc.stdout and "--quick" in proc.stdout


def test_bench_without_the_suite_says_where_it_is(calls, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "_bench_script", lambda: None)
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "not part of the installed package" in err and "benchmarks/" in err and not calls


def test_a_peer_that_is_not_installed_is_named_in_the_table(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    monkeypatch.setattr(run, "available", lambda fw: not fw.startswith("torch"))
    monkeypatch.setattr(run, "measure", lambda *args: [])  # nothing to time here
    assert run.main(["--workloads", "W6", "--frameworks", "numpy,torch", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "results.md").read_text()
    assert "Not measured: torch (torch was not found" in md
