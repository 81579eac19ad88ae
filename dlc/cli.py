"""The `dlc` command: run, inspect and export compiled artifacts, import ONNX models, and run the benchmarks."""

from __future__ import annotations

import argparse
import os
import runpy
import subprocess
import sys
import zipfile

import numpy as np

ENTRY_POINT = "dlc_model"  # a script exports the Function its dlc_model() returns (docs/artifact.md)


class UsageError(Exception):
    """A mistake on the command line: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line instead of a usage block."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def main(argv=None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = _build_parser()
    argv, bench_args = _split_bench(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"dlc: error: {e}", file=sys.stderr)
        return 2
    if bench_args is not None:
        args.args = bench_args
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except UsageError as e:
        print(f"dlc: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  (a user mistake gets one line; --debug shows the traceback)
        if args.debug:
            raise
        print(f"dlc: error: {_one_line(e)}", file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    from .errors import DlcError

    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    msg = " ".join(str(msg).split())
    if isinstance(e, (DlcError, OSError, ValueError, TypeError, KeyError, UsageError)):
        return msg
    return f"{type(e).__name__}: {msg} (rerun with --debug for the traceback)"


def _build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .export import FORMAT_VERSION

    p = _Parser(prog="dlc", description="dlc, a deep learning compiler: run, inspect and export compiled models.")
    p.add_argument("--version", action="version", version=f"dlc {__version__} (artifact format {FORMAT_VERSION})")
    p.add_argument("--debug", action="store_true", help="show the full traceback when a command fails")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser("run", help="run an exported artifact on inputs from .npy files",
                         description="Load ARTIFACT (every member's hash is checked) and call it once. Without "
                                     "--output, print each output's shape and a short summary.")
    run.add_argument("artifact", metavar="ARTIFACT", help="a file written by dlc.export or 'dlc export'")
    run.add_argument("--input", "-i", action="append", default=[], metavar="NAME=FILE.npy",
                     help="the value of input NAME (repeat for each input); a float file is cast to the input's "
                          "float type, an integer file to its integer type")
    run.add_argument("--inputs", metavar="FILE.npz", help="an .npz holding inputs by name (--input wins)")
    run.add_argument("--output", "-o", metavar="OUT.npz", help="save the outputs here instead of printing them")
    run.add_argument("--target", choices=_targets(), help="run on this backend instead of the artifact's own")
    run.add_argument("--verify", action="store_true", help="run the artifact's golden self-test first")
    run.add_argument("--key-file", metavar="FILE", help="refuse the artifact unless it is signed with the key in "
                                                        "FILE (its bytes; one trailing newline is ignored)")
    run.set_defaults(handler=cmd_run)

    ins = sub.add_parser("inspect", help="describe an artifact, a model script or an ONNX model",
                         description="Describe ARTIFACT (manifest, signature, weights, kernels), the function a "
                                     f"SCRIPT's {ENTRY_POINT}() returns, or an ONNX model (a .onnx file, imported "
                                     "with dlc.onnx): graph, fused kernels and memory plan.")
    ins.add_argument("path", metavar="ARTIFACT|SCRIPT|MODEL.onnx",
                     help=f"an artifact file, a Python script defining {ENTRY_POINT}(), or an ONNX model")
    ins.add_argument("--dot", metavar="FILE", help="also write the graph in Graphviz DOT format to FILE")
    ins.add_argument("--key-file", metavar="FILE", help="refuse the artifact unless it is signed with the key in FILE")
    ins.set_defaults(handler=cmd_inspect)

    exp = sub.add_parser("export", help="export the model a script defines to an artifact",
                         description=f"Run SCRIPT (with __name__ set to '__dlc__', so its __main__ block is "
                                     f"skipped), call its {ENTRY_POINT}(), which must return a compiled "
                                     "dlc.Function, and write it to ARTIFACT.")
    exp.add_argument("script", metavar="SCRIPT", help=f"a Python file defining {ENTRY_POINT}()")
    exp.add_argument("-o", "--output", required=True, metavar="ARTIFACT", help="the artifact file to write")
    exp.add_argument("--golden", metavar="FILE.npz", help="inputs (by name) of the golden self-test pair; by "
                                                           "default generated from the signature with batch 2")
    exp.add_argument("--key-file", metavar="FILE", help="sign the artifact with the key in FILE (HMAC-SHA256)")
    exp.set_defaults(handler=cmd_export)

    imp = sub.add_parser("import", help="import an ONNX model and write it as a dlc artifact",
                         description="Import MODEL.onnx with dlc.onnx (needs the onnx package), compile it for "
                                     "--target and write the artifact (then 'dlc run' and 'dlc inspect' take it).")
    imp.add_argument("model", metavar="MODEL.onnx", help="an ONNX model file")
    imp.add_argument("-o", "--output", required=True, metavar="ARTIFACT", help="the artifact file to write")
    imp.add_argument("--target", choices=_targets(), default="cpu", help="the backend to compile for (cpu)")
    imp.set_defaults(handler=cmd_import)

    bench = sub.add_parser("bench", help="run the benchmark suite (benchmarks/run.py)",
                           description="Forward every argument to benchmarks/run.py (try 'dlc bench --quick' or "
                                       "'dlc bench -- --help'). The suite is in the source repository, not in "
                                       "the installed package: run it inside a checkout.", add_help=True)
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for benchmarks/run.py")
    bench.set_defaults(handler=cmd_bench)
    return p


def _targets():
    from .compiler import TARGETS

    return TARGETS


# ----------------------------------------------------------------------------
# dlc run


def cmd_run(args) -> int:
    from .export import load

    fn = load(args.artifact, verify=args.verify, target=args.target, key=read_key_file(args.key_file))
    given = _read_inputs(args, fn)
    _, _, arrays = fn.signature.bind((), given)
    outputs = _named_outputs(fn, fn(*arrays))
    if args.output:
        np.savez(args.output, **outputs)
        print(f"wrote {len(outputs)} output(s) to {args.output}")
    else:
        for name, arr in outputs.items():
            print(_summary(name, arr))
    if fn.updates:
        print(f"note: {os.path.basename(args.artifact)} is a training step; the updated weights were not saved")
    return 0


def read_key_file(file: str | None) -> bytes | None:
    """The signing key in a file: its bytes, less one trailing newline (as editors add); None without a file."""
    if file is None:
        return None
    with open(_existing(file), "rb") as f:
        key = f.read()
    key = key[:-2] if key.endswith(b"\r\n") else key[:-1] if key.endswith(b"\n") else key
    if not key:
        raise UsageError(f"--key-file {file}: the file is empty")
    return key


def _read_inputs(args, fn) -> dict[str, np.ndarray]:
    wanted = {n.attr("name"): n for n in fn.inputs}
    given: dict[str, np.ndarray] = {}
    if args.inputs:
        with np.load(_existing(args.inputs), allow_pickle=False) as z:
            given.update({k: z[k] for k in z.files if k in wanted})
    for item in args.input:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise UsageError(f"--input {item!r}: expected NAME=FILE.npy")
        if name not in wanted:
            raise UsageError(f"--input {name}: the artifact has no input {name!r}; its inputs are "
                             f"{fn.signature.describe()}")
        given[name] = np.load(_existing(file), allow_pickle=False)
    missing = [n for n in wanted if n not in given]
    if missing:
        raise UsageError(f"missing --input for {', '.join(missing)}; the artifact takes {fn.signature.describe()}")
    return {name: _cast_like(name, arr, wanted[name].dtype) for name, arr in given.items()}


def _existing(file: str) -> str:
    if not os.path.isfile(file):
        raise UsageError(f"{file}: no such file")
    return file


def _cast_like(name: str, arr: np.ndarray, dtype: str) -> np.ndarray:
    """Files from numpy default to float64/int64: cast within the same kind, refuse across kinds."""
    target = np.dtype(dtype)
    if arr.dtype == target:
        return arr
    if arr.dtype.kind == target.kind or (arr.dtype.kind in "iu" and target.kind in "iu"):
        return arr.astype(target)
    raise UsageError(f"input {name!r}: the file holds {arr.dtype.name} values, the artifact expects {dtype}")


def _named_outputs(fn, result) -> dict[str, np.ndarray]:
    if isinstance(result, dict):
        return {str(k): np.asarray(v) for k, v in result.items()}
    if isinstance(result, (list, tuple)):
        return {f"output_{i}": np.asarray(v) for i, v in enumerate(result)}
    return {"output_0": np.asarray(result)}


def _summary(name: str, arr: np.ndarray) -> str:
    head = f"{name}: {arr.dtype.name}{tuple(arr.shape)}"
    if arr.size == 0 or arr.dtype.kind not in "fiub":
        return head
    a = arr.astype(np.float64)
    stats = f"min {a.min():.6g}  mean {a.mean():.6g}  max {a.max():.6g}"
    if arr.ndim == 0:
        return f"{head} = {arr.item():.6g}" if arr.dtype.kind == "f" else f"{head} = {arr.item()}"
    extra = ""
    if arr.ndim == 2 and arr.dtype.kind == "f":
        extra = f"  argmax(axis=1)[:8] {np.argmax(arr, axis=1)[:8].tolist()}"
    return f"{head}  {stats}{extra}"


# ----------------------------------------------------------------------------
# dlc inspect


def cmd_inspect(args) -> int:
    path = _existing(args.path)
    if _is_script(path):
        fn = load_script_model(path)
    elif path.lower().endswith(".onnx"):
        from .onnx import describe_import, load_model

        fn = load_model(path)   # the reference target: the fused program is the same on every target
        print(describe_import(fn) + "\n")
    else:
        from .export import describe, load, open_artifact

        key = read_key_file(args.key_file)
        print(describe(open_artifact(path, key=key)))
        fn = load(path, key=key)
        match = fn.artifact.kernels_match
        if match is not None:
            print("  stored kernels: " + ("identical to the ones this dlc generates" if match else
                                          "differ from the ones this dlc generates (it runs its own)"))
    print(_report(fn, args.dot))
    return 0


def _is_script(path: str) -> bool:
    return path.endswith(".py") and not zipfile.is_zipfile(path)


def _report(fn, dot: str | None) -> str:
    """The optimizer's report when dlc.inspect provides one; else the signature, op counts and DOT graph."""
    try:
        from .inspect import report
    except ImportError:
        report = None
    stamp = _mtime(dot)
    if report is not None:
        text = report(fn, env=None, dot=dot)
    else:
        lines = [repr(fn), f"graph: {len(fn.graph)} nodes"]
        lines += [f"  {op:<16} {count}" for op, count in fn.graph.op_counts().items()]
        text = "\n".join(lines)
    if dot and _mtime(dot) == stamp:  # the report did not draw it: the graph itself then
        with open(dot, "w") as f:
            f.write(fn.graph.to_dot())
        text += f"\nwrote the graph to {dot}"
    return text


def _mtime(path: str | None) -> float | None:
    return os.path.getmtime(path) if path and os.path.exists(path) else None


# ----------------------------------------------------------------------------
# dlc export


def cmd_export(args) -> int:
    from .export import describe, export, open_artifact

    fn = load_script_model(_existing(args.script))
    golden = None
    if args.golden:
        with np.load(_existing(args.golden), allow_pickle=False) as z:
            golden = {k: z[k] for k in z.files}
    export(fn, args.output, golden_inputs=golden, key=read_key_file(args.key_file))
    print(describe(open_artifact(args.output)))
    return 0


def load_script_model(script: str):
    """Run a model script and return the compiled dlc.Function its dlc_model() returns."""
    from .compiler import Function

    folder = os.path.dirname(os.path.abspath(script))
    sys.path.insert(0, folder)  # the script's own imports (a models.py beside it) resolve as when run directly
    try:
        namespace = runpy.run_path(script, run_name="__dlc__")
        entry = namespace.get(ENTRY_POINT)
        if not callable(entry):
            raise UsageError(f"{script} defines no {ENTRY_POINT}() function; a script to export or inspect must "
                             f"define def {ENTRY_POINT}(): return dlc.compile(...)")
        fn = entry()
    except (UsageError, SystemExit):
        raise
    except Exception as e:
        from .errors import DlcError

        if isinstance(e, DlcError):
            raise
        raise RuntimeError(f"{script} failed: {type(e).__name__}: {e}") from e
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    fn = getattr(fn, "function", fn)  # a dlc.nn training step holds its Function
    if not isinstance(fn, Function):
        raise UsageError(f"{script}: {ENTRY_POINT}() returned {type(fn).__name__}, not a compiled dlc.Function "
                         f"(return dlc.compile(...))")
    return fn


# ----------------------------------------------------------------------------
# dlc import


def cmd_import(args) -> int:
    from . import onnx as dlc_onnx
    from .export import describe, export, open_artifact

    fn = dlc_onnx.load_model(_existing(args.model), target=args.target)
    export(fn, args.output)
    print(describe(open_artifact(args.output)))
    return 0


# ----------------------------------------------------------------------------
# dlc bench


def _split_bench(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """`dlc [--debug] bench ARGS...`: ARGS go to benchmarks/run.py untouched (`dlc bench --quick`), except a
    lone --help/-h, which shows this command's help; a leading `--` is dropped."""
    if "bench" not in argv:
        return argv, None
    i = argv.index("bench")
    if not all(a == "--debug" for a in argv[:i]):
        return argv, None
    rest = argv[i + 1:]
    if rest in (["--help"], ["-h"]):
        return argv, None
    return argv[:i + 1], rest[1:] if rest[:1] == ["--"] else rest


def cmd_bench(args) -> int:
    script = _bench_script()
    if script is None:
        raise UsageError("the benchmark suite is not part of the installed package: it lives in benchmarks/ of the "
                         "dlc source repository; run 'dlc bench' (or 'python benchmarks/run.py') inside a checkout "
                         "of it")
    rest = args.args[1:] if args.args[:1] == ["--"] else args.args
    return subprocess.call([sys.executable, script, *rest])


def _bench_script() -> str | None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root in (os.getcwd(), here):
        path = os.path.join(root, "benchmarks", "run.py")
        if os.path.isfile(path):
            return path
    return None


if __name__ == "__main__":
    sys.exit(main())
