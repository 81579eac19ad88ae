"""The ONNX backend test suite run through dlc.onnx; `python3 -m dlc.onnx.conformance` regenerates docs/onnx.md.

Node tests are generated in memory by onnx's own case generator
(onnx.backend.test.case.node); the pytorch-converted, pytorch-operator and
simple model tests are read from the data the onnx wheel ships. Each test
imports the model, runs every data set and compares with the expected
outputs at the test's own tolerances (rtol=1e-3, atol=1e-7 by default), as
onnx's runner does. Results: passed, failed (a wrong answer or an import
error on a supported op), skipped (an UnsupportedError: its message is the
reason).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import DlcError
from .errors import UnsupportedError
from .reader import onnx_module

# The operators issue 17 lists: the conformance share is computed over tests that use only these.
LISTED_OPS = sorted("""
Conv ConvTranspose Gemm MatMul BatchNormalization InstanceNormalization LayerNormalization LRN MaxPool AveragePool
GlobalAveragePool GlobalMaxPool Relu LeakyRelu PRelu Elu Selu Sigmoid HardSigmoid Tanh Softplus Gelu Erf Softmax
LogSoftmax Add Sub Mul Div Pow Sqrt Exp Log Abs Neg Reciprocal Min Max Sum Mean Clip Where Equal Greater Less Not
And Or Cast Reshape Flatten Transpose Squeeze Unsqueeze Expand Concat Split Slice Gather GatherElements Pad Tile
ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL2 ReduceLogSumExp ArgMax ArgMin Identity Dropout Constant
ConstantOfShape Shape Range Einsum LSTM GRU RNN
""".split())

# Run on the cpu target in CI: a fixed subset that covers each kernel kind the importer produces (the model tests
# run on cpu by the script: `python3 -m dlc.onnx.conformance`).
CPU_SUBSET = [
    "test_conv_with_strides_padding", "test_maxpool_2d_ceil", "test_averagepool_2d_pads", "test_gemm_all_attributes",
    "test_softmax_axis_1", "test_gather_0", "test_layer_normalization_4d_axis1", "test_cast_FLOAT_to_FLOAT8E4M3FN",
]
# model tests run on cpu in CI: inputs read from .pb files (read-only arrays), and a 200-tap dilated pool
CPU_MODEL_SUBSET = ["test_Conv1d", "test_MaxPool1d_stride_padding_dilation"]

# Node tests that fail on the reference target, each with why; the CI test fails on any other failure.
_NARROW_ATTENTION = ("the expanded Attention function (not a listed op) in {0}: onnx's reference rounds every op's "
                     "result to {0} (steps of {1} relative) and the test keeps rtol=1e-3; dlc computes the ops in "
                     "float32 and rounds only at the Casts and the output, so elements differ by one or two {0} "
                     "steps (with every op rounded to {0} as well, sums taken in another order still differ)")
KNOWN_FAILURES: dict[str, str] = {
    **{f"test_attention_{name}_bf16_expanded": _NARROW_ATTENTION.format("bfloat16", "2**-8 to 2**-7")
       for name in ("4d_causal", "4d_padded_kv", "4d_causal_padded_kv", "4d_attn_mask_causal", "3d_causal")},
    "test_attention_4d_causal_fp16_expanded": _NARROW_ATTENTION.format("float16", "2**-11 to 2**-10"),
}


@dataclass
class Case:
    name: str
    kind: str           # node, pytorch-converted, pytorch-operator, simple
    model: object       # a ModelProto
    data_sets: list     # [(inputs, expected outputs)]
    rtol: float = 1e-3
    atol: float = 1e-7
    ops: tuple = ()
    op: str = ""


@dataclass
class Result:
    case: Case
    target: str
    status: str         # passed / failed / skipped
    reason: str = ""
    seconds: float = 0.0


@dataclass
class Report:
    results: list = field(default_factory=list)

    def by_op(self, kind="node") -> dict:
        table = collections.defaultdict(list)
        for r in self.results:
            if r.case.kind == kind:
                table[r.case.op].append(r)
        return dict(sorted(table.items()))


# ----------------------------------------------------------------------------
# collecting the tests


def _primary_op(name: str, ops: list[str]) -> str:
    """The op a node test is about: the op its name starts with (an expanded function's op included), else its
    only op, else its first."""
    import onnx

    key = name[len("test_"):].replace("_", "").lower()
    names = {s.name for s in onnx.defs.get_all_schemas() if s.domain in ("", "ai.onnx")} | set(ops)
    candidates = [op for op in names if key.startswith(op.lower())]
    if candidates:
        return max(candidates, key=len)
    return ops[0]


def node_cases(only: set[str] | None = None) -> list[Case]:
    from onnx.backend.test.case import node

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        raw = node.collect_testcases(None)
    cases = []
    for c in raw:
        if only is not None and c.name not in only:
            continue
        ops = [n.op_type for n in c.model.graph.node]
        data = [(list(ins), list(outs)) for ins, outs in c.data_sets]
        cases.append(Case(c.name, "node", c.model, data, c.rtol, c.atol, tuple(sorted(set(ops))),
                          _primary_op(c.name, ops) if ops else "(none)"))
    return cases


def _data_dir() -> str:
    onnx = onnx_module()
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")


def _read_pb(path):
    onnx = onnx_module()
    from onnx import numpy_helper

    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def model_cases(kind: str) -> list[Case]:
    onnx = onnx_module()
    cases = []
    for d in sorted(glob.glob(os.path.join(_data_dir(), kind, "test_*"))):
        model = onnx.load(os.path.join(d, "model.onnx"))
        data = []
        for ds in sorted(glob.glob(os.path.join(d, "test_data_set_*"))):
            ins = [_read_pb(p) for p in sorted(glob.glob(os.path.join(ds, "input_*.pb")), key=_index)]
            outs = [_read_pb(p) for p in sorted(glob.glob(os.path.join(ds, "output_*.pb")), key=_index)]
            data.append((ins, outs))
        ops = tuple(sorted({n.op_type for n in model.graph.node}))
        cases.append(Case(os.path.basename(d), kind, model, data, ops=ops, op=",".join(ops)))
    return cases


def _index(path):
    return int(re.findall(r"(\d+)\.pb$", path)[0])


# ----------------------------------------------------------------------------
# running one test


def _short(msg: str, limit: int = 160) -> str:
    msg = " ".join(str(msg).split())
    msg = re.sub(r"; supported ops: .*", "", msg)
    return msg if len(msg) <= limit else msg[:limit - 3] + "..."


def run_case(case: Case, target: str = "reference") -> Result:
    from .importer import load_model

    t0 = time.perf_counter()

    def done(status, reason=""):
        return Result(case, target, status, _short(reason), time.perf_counter() - t0)

    note = ""
    for ins, expected in case.data_sets:
        try:
            ins = [_as_array(x) for x in ins]
        except ValueError:
            return done("skipped", "a sequence or map input (dlc takes tensors)")
        try:
            fn = load_model(case.model, target=target)
        except UnsupportedError as e:
            if "computed at run time" not in str(e):
                return done("skipped", e)
            # shape-controlling values fed as graph inputs: bind the integer/bool inputs at import, per data set
            names = [vi.name for vi in case.model.graph.input
                     if vi.name not in {t.name for t in case.model.graph.initializer}]
            static = {nm: x for nm, x in zip(names, ins) if x.dtype.kind in "iub" or x.ndim == 0}
            try:
                fn = load_model(case.model, target=target, static_inputs=static)
            except UnsupportedError as e2:
                return done("skipped", e2)
            except DlcError as e2:
                return done("failed", f"import: {e2}")
            ins = [x for nm, x in zip(names, ins) if nm not in static]
            note = "integer and scalar inputs bound at import"
        except DlcError as e:
            return done("failed", f"import: {e}")
        except Exception as e:  # noqa: BLE001  (a bug in the importer is a failure to report, not a crash)
            return done("failed", f"import crashed: {type(e).__name__}: {e}")
        try:
            with np.errstate(all="ignore"):
                got = fn(*ins)
        except Exception as e:  # noqa: BLE001
            return done("failed", f"run: {type(e).__name__}: {e}")
        got = list(got) if isinstance(got, tuple) else [got]
        if len(got) != len(expected):
            return done("failed", f"{len(got)} outputs, expected {len(expected)}")
        for k, (g, e) in enumerate(zip(got, expected)):
            e = _as_array(e)
            if g.shape != e.shape:
                return done("failed", f"output {k}: shape {g.shape}, expected {e.shape}")
            kinds_differ = e.dtype.kind != g.dtype.kind and not (e.dtype.kind in "iu" and g.dtype.kind in "iu")
            if kinds_differ or e.dtype.kind == "V" and g.dtype != e.dtype:   # "V": bfloat16, float8, int4...
                return done("failed", f"output {k}: dtype {g.dtype}, expected {e.dtype}")
            try:
                np.testing.assert_allclose(np.asarray(g, dtype=e.dtype), e, rtol=case.rtol, atol=case.atol)
            except AssertionError as err:
                lines = [ln for ln in str(err).splitlines() if "Max" in ln or "Mismatched" in ln]
                return done("failed", f"output {k}: " + "; ".join(ln.strip() for ln in lines))
    return done("passed", note)


def _as_array(x):
    if isinstance(x, np.ndarray):
        return x
    from onnx import numpy_helper

    return numpy_helper.to_array(x) if hasattr(x, "data_type") else np.asarray(x)


def _run_streaming(cases, target, results):
    for i, c in enumerate(cases):
        r = run_case(c, target)
        results.put((i, r.status, r.reason, r.seconds))


def run_isolated(cases, target="cpu", chunk=8, progress=False, timeout=300.0) -> Report:
    """run_all in child processes, a fresh one every `chunk` tests: each compiled cpu program keeps its
    machine code loaded, so one process running hundreds of them grows by gigabytes. A test that gives no result
    within `timeout` seconds (a compile that never ends, a crash) fails with that reason, and the rest of its
    chunk goes on in a new process. The children are forked: call this before running any cpu program in this
    process (a fork of a process that used GNU OpenMP aborts when it uses OpenMP again)."""
    import multiprocessing
    import queue

    ctx = multiprocessing.get_context("fork")
    report = Report()
    pending, finished = list(cases), 0
    while pending:
        part, pending = pending[:chunk], pending[chunk:]
        results = ctx.Queue()
        child = ctx.Process(target=_run_streaming, args=(part, target, results), daemon=True)
        child.start()
        done, waited = 0, 0.0
        while done < len(part):
            try:
                i, status, reason, seconds = results.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
                if waited < timeout and child.is_alive():
                    continue
                why = f"no result within {timeout:.0f} s" if child.is_alive() else \
                    f"the test process died (exit code {child.exitcode})"
                child.kill()
                report.results.append(Result(part[done], target, "failed", why, waited))
                pending = part[done + 1:] + pending
                break
            report.results.append(Result(part[i], target, status, reason, seconds))
            done, waited = done + 1, 0.0
        child.join()
        finished += done + (done < len(part))
        if progress:
            print(f"  {target}: {finished}/{len(cases)}", file=sys.stderr)
    return report


def run_all(cases, target="reference", progress=False) -> Report:
    report = Report()
    for i, c in enumerate(cases):
        report.results.append(run_case(c, target))
        if progress and i % 100 == 0:
            print(f"  {target}: {i}/{len(cases)}", file=sys.stderr)
    return report


# ----------------------------------------------------------------------------
# the table


def listed_share(results) -> tuple[int, int]:
    """(passed, total) over node tests whose every op is one of LISTED_OPS."""
    mine = [r for r in results if r.case.kind == "node" and r.case.ops and set(r.case.ops) <= set(LISTED_OPS)]
    return sum(r.status == "passed" for r in mine), len(mine)


IMPORTER_NOTES = """
`dlc.onnx.load_model(path_or_ModelProto, target=...)` returns a compiled dlc Function; `dlc.onnx.to_module(...)`
returns the same graph as a dlc Module whose float initializers are parameters (batch-norm statistics are
non-trainable state), so `dlc.optim` can fine-tune it; `dlc import model.onnx -o model.dlc` writes an artifact.

- Each ONNX op is one small function in `dlc/onnx/ops/<family>.py` (math, nn, tensor, reduce, linalg, rnn),
  registered with the attributes it understands. Any other attribute, op, domain, element type or opset raises
  `dlc.onnx.UnsupportedError` naming the op, opset, node and what is supported; no node is dropped.
- Opsets 7 to 28 of the default domain are accepted (each mapping follows the op's semantics across those
  versions: attributes that became inputs, Softmax's axis change at 13...); a newer opset is refused.
- Symbolic input dims (`batch`, unnamed ones) become dlc symbols. Anything computed from constants only (Shape,
  Gather/Concat/Unsqueeze/Cast/arithmetic on shapes, ConstantOfShape, Range, Constant) is folded at import,
  with symbolic dims carried through shape arithmetic; the compiled graph is static.
- Element types dlc lacks but that widen exactly (uint8, int8, int16, uint16, uint32, int4, uint4, int2, uint2 ->
  int64; float16, bfloat16, the float8 types, float4e2m1 -> float32) are computed widened and converted at the
  call's boundary (integer overflow wraps only there). A Cast to a narrow float type rounds in the graph, bit for
  bit as onnx's reference does: to nearest, ties to even, saturating where `saturate` says (float8) or always
  (float4e2m1); float8e8m0 follows `round_mode`. uint64 (no dlc dtype holds all its values), string, sequence
  and optional values are refused.
- Inputs that decide shapes (a Reshape's shape, Slice bounds, reduction axes fed as graph inputs) must be known:
  pass `static_inputs={name: array}`. The node tests that feed such values as graph inputs are run that way
  ("integer and scalar inputs bound at import").
- LSTM, GRU and RNN run on `dlc.scan` (the input projection is one matmul before the loop), both directions,
  sequence_lens, clip and all ONNX activations. Conv/ConvTranspose are 1-d, 2-d and 3-d (3-d as a sum over the
  depth taps of 2-d ones); pools 1-d, 2-d and 3-d (window
  shapes dlc's pool ops do not take — ceil_mode, dilations, wide padding, 3-d — run tap by tap over strided
  slices, averages divided by a divisor map computed at import; a window of more than 32 taps is gathered and
  reduced one axis at a time instead, since one fused kernel reading thousands of taps compiles for minutes
  on cpu). MaxPool's Indices output gathers each window whole and maps its first max to x's flat index.
- Einsum: explicit subscripts, an ellipsis, diagonals (a repeated subscript in an operand); one operand is a
  sum and a transpose, two are one batched matmul.
- `dlc inspect model.onnx` prints what was imported (producer, opset, op counts, inputs and outputs as dlc
  sees them) and the fused program; each kernel names the ONNX nodes it came from.
- BatchNormalization uses the running statistics; with training_mode=1 (opset 14 on) the batch's, and it returns
  the running statistics moved by momentum. Dropout is the identity; a training-mode Dropout with a nonzero
  ratio (random) is refused.
- A node whose result would hold more than 2**31 elements (Expand, Tile, Range to 10**12) is refused at import.
- The file is data: tensor byte counts are checked against dims before decoding, dims above 2**31-1 are refused,
  external data is read only from regular files inside the model's directory (no absolute paths, no `..`, no
  symlinks out), and a graph cycle or an undefined value is an error.
"""

DTYPE_SKIP = re.compile(r"element type|dtype")


def render(report: Report, cpu: Report | None, seconds: float) -> str:
    res = report.results
    counts = collections.Counter((r.case.kind, r.status) for r in res)
    p, total = listed_share(res)
    mine = [r for r in res if r.case.kind == "node" and r.case.ops and set(r.case.ops) <= set(LISTED_OPS)]
    dtype_skips = sum(r.status == "skipped" and bool(DTYPE_SKIP.search(r.reason)) for r in mine)
    lines = [
        "# ONNX conformance",
        "",
        "Generated by `python3 -m dlc.onnx.conformance` (do not edit by hand). The ONNX backend test suite of the "
        "installed onnx package, run through `dlc.onnx.load_model` on the reference target, and the model tests "
        "(with a fixed subset of node tests) again on the cpu target; outputs compared at each "
        "test's tolerances (rtol=1e-3, atol=1e-7 unless the test says otherwise; bfloat16, float8 and 4-bit "
        "outputs must have the declared type).",
        "",
        f"- onnx {onnx_module().__version__}, {len(res)} tests, {seconds:.0f} s",
        f"- **node tests of the listed operators** (every op in the test is one the issue lists): {p}/{total} passed "
        f"({100 * p / max(total, 1):.1f}%); {dtype_skips} of the others are skipped only for an element type dlc "
        f"cannot compute in (uint64, string), so {p}/{total - dtype_skips} "
        f"({100 * p / max(total - dtype_skips, 1):.1f}%) of those in dlc's dtypes pass",
    ]
    for kind in ("node", "pytorch-converted", "pytorch-operator", "simple"):
        n = sum(v for (k, _), v in counts.items() if k == kind)
        if n:
            lines.append(f"- {kind}: {counts[(kind, 'passed')]} passed, {counts[(kind, 'failed')]} failed, "
                         f"{counts[(kind, 'skipped')]} skipped of {n}")
            known = collections.defaultdict(list)
            for r in res:
                if r.case.kind == kind and r.status == "failed" and r.case.name in KNOWN_FAILURES:
                    known[KNOWN_FAILURES[r.case.name]].append(r.case.name)
            lines += [f"  - known failures ({', '.join(names)}): {why}" for why, names in known.items()]
    if cpu is not None:
        parts = []
        for kind in ("node", "pytorch-converted", "pytorch-operator", "simple"):
            rs = [r for r in cpu.results if r.case.kind == kind]
            if rs:
                listed = [r for r in rs if set(r.case.ops) <= set(LISTED_OPS)]
                parts.append(f"{kind} {sum(r.status == 'passed' for r in rs)}/{len(rs)}"
                             + (f" (of those using only listed ops: {sum(r.status == 'passed' for r in listed)}/"
                                f"{len(listed)})" if kind != "node" else " (the CI subset)"))
        lines.append("- **cpu target** (numba; the tests that pass on the reference target, run again on cpu): "
                     + "; ".join(parts))
        for r in cpu.results:
            if r.status != "passed":
                lines.append(f"  - {r.case.name}: {r.status}: {r.reason}")
    lines += ["", "## How the importer maps ONNX", "", IMPORTER_NOTES.strip(), "", "## Node tests by operator", "",
              "| op | listed | passed | failed | skipped | reasons (failures first) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for op, rs in report.by_op("node").items():
        c = collections.Counter(r.status for r in rs)
        reasons = []
        for r in sorted(rs, key=lambda r: r.status != "failed"):
            if r.status != "passed":
                why = f"{r.case.name}: {r.reason}".replace("|", "\\|")
                if len(reasons) < 3:
                    reasons.append(why)
        more = c["failed"] + c["skipped"] - len(reasons)
        text = "<br>".join(reasons) + (f"<br>(+{more} more)" if more > 0 else "")
        lines.append(f"| {op} | {'yes' if op in LISTED_OPS else ''} | {c['passed']} | {c['failed']} | "
                     f"{c['skipped']} | {text} |")
    for kind in ("pytorch-converted", "pytorch-operator", "simple"):
        rs = [r for r in res if r.case.kind == kind]
        if not rs:
            continue
        on_cpu = {c.case.name: c for c in (cpu.results if cpu is not None else []) if c.case.kind == kind}
        lines += ["", f"## {kind} model tests", "", "| test | ops | reference | cpu | reason |",
                  "| --- | --- | --- | --- | --- |"]
        for r in rs:
            c = on_cpu.get(r.case.name)
            reason = "; ".join(x for x in (r.reason, c and c.reason and f"cpu: {c.reason}") if x).replace("|", "\\|")
            cpu_text = f"{c.status} ({c.seconds:.0f} s)" if c is not None else "not run"
            lines.append(f"| {r.case.name} | {', '.join(r.case.ops)} | {r.status} | {cpu_text} | {reason} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m dlc.onnx.conformance", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "docs", "onnx.md"))
    ap.add_argument("--cpu", choices=("subset", "models", "all", "none"), default="models",
                    help="what runs on the cpu target too: the CI subset, the subset plus the model tests, "
                         "everything, or nothing")
    ap.add_argument("-k", default=None, help="only tests whose name contains this")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds a cpu test may take (compiling included) before it fails as timed out")
    args = ap.parse_args(argv)
    t0 = time.time()
    cases = node_cases()
    for kind in ("pytorch-converted", "pytorch-operator", "simple"):
        cases += model_cases(kind)
    if args.k:
        cases = [c for c in cases if args.k in c.name]
    report = run_all(cases, "reference", progress=True)
    cpu = None
    if args.cpu != "none":
        passed_ref = {r.case.name for r in report.results if r.status == "passed"}
        pick = {"subset": lambda c: c.name in CPU_SUBSET,
                "models": lambda c: c.name in CPU_SUBSET or (c.kind != "node" and c.name in passed_ref),
                "all": lambda c: c.name in passed_ref}[args.cpu]
        cpu = run_isolated([c for c in cases if pick(c)], "cpu", progress=True, timeout=args.timeout)
    text = render(report, cpu, time.time() - t0)
    if not args.k:
        with open(os.path.abspath(args.out), "w") as f:
            f.write(text)
    p, total = listed_share(report.results)
    print(f"listed-op node tests: {p}/{total} passed; wrote {os.path.abspath(args.out) if not args.k else '(nothing)'}")
    for r in report.results:
        if r.status == "failed":
            print(f"FAILED {r.case.name} [{r.case.op}]: {r.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
