"""Fuzzing the loader: every string, number, list and map of graph.json and manifest.json mutated, re-hashed, loaded.

Each attempt must end in an ArtifactError or in a function that computes what
the reference backend computes for the same file, on dlc.load, on
dlc.load(verify=True) (where a function that loads has passed its golden
self-test) and on `dlc inspect`; and no payload may ever run (the canary file
stays absent). Every place in both documents gets one mutation, and a
deterministic sample of the other hostile strings follows (about 1500 of some
11000 in all; DLC_FUZZ_ALL=1 runs every one, and lets the native targets
take in-range numbers too, which compile new modules); the kernel cache is the
usual one, so a rerun compiles nothing.
"""

import json
import os
import random
import zipfile

import numpy as np
import pytest
from artifact_edit import reseal

import dlc
from dlc.cli import main as cli_main
from dlc.errors import ArtifactError, DlcError
from dlc.export import example_inputs
from dlc.runtime.cuda import CudaUnavailableError

CANARY = "dlc_fuzz_canary"
PY = f"import os; os.system('touch {CANARY}')"
C = f'__attribute__((constructor)) static void f(void) {{ system("touch {CANARY}"); }}'
HOSTILE_STRINGS = [f"a\n{PY}\n", f'a"""\n{PY}\n"""', f"a*/ {C} /*", f"a\\\n{C}\n", f"a\u2028{PY}", f"a'){PY}#",
                   "", "x" * 5000]
BAD_NUMBERS = [10**30, -(2**63) - 1, -1, 1e308, -0.5, 2**31]
WRONG_TYPES = ["1", None, True, [1], {"$": "node", "v": 0}, {"k": 1}]


def leaves(doc, path=()):
    """(path, value) of every value in a JSON document, containers included, depth first."""
    yield path, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from leaves(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from leaves(v, path + (i,))


def replacements(value, cheap_only: bool):
    """What a value at some place is replaced by: hostile text for strings, bad numbers, wrong types, edited lists
    and maps. cheap_only leaves out in-range numbers, which may load and compile a new native module."""
    if isinstance(value, str):
        return HOSTILE_STRINGS + [1, None, [value]]
    if isinstance(value, bool):
        return [not value, 1, "True", None]
    if isinstance(value, (int, float)):
        numbers = BAD_NUMBERS if not cheap_only else [n for n in BAD_NUMBERS if abs(n) > 2**40]
        return numbers + ["1", None, True, [value]]
    if isinstance(value, list):
        return [[], value + value[:1], [value], value[:-1], "[]", {"0": 0}] + WRONG_TYPES[:2]
    if isinstance(value, dict):
        dropped = [{k: v for k, v in value.items() if k != drop} for drop in value]
        return dropped + [dict(value, junk=HOSTILE_STRINGS[0]), [], "{}"]
    return WRONG_TYPES


def set_at(doc, path, value):
    if not path:
        return value
    target = doc
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return doc


def mutations(artifact, extra: int, cheap_only: bool, everything: bool = False):
    """(member, path, value) triples: every place gets one replacement (taken in turn from its list), then
    `extra` more of the other replacements of strings, sampled deterministically; everything=True: all of them."""
    with zipfile.ZipFile(artifact) as z:
        docs = {"graph.json": json.loads(z.read("graph.json")), "manifest.json": json.loads(z.read("manifest.json"))}
    once, more = [], []
    for member, doc in docs.items():
        for k, (path, value) in enumerate(leaves(doc)):
            if not path or (member == "manifest.json" and path[:1] == ("members",)):
                continue  # re-hashing rewrites the members' entries
            options = replacements(value, cheap_only)
            pick = k % len(options)
            once.append((member, path, options[pick]))
            if everything or isinstance(value, str):
                more += [(member, path, v) for i, v in enumerate(options) if i != pick]
    if not everything:
        random.Random(0).shuffle(more)
        more = more[:extra]
    return once + more


def apply(src, dst, member, path, value):
    if member == "graph.json":
        reseal(src, dst, graph=lambda d: set_at(d, path, value))
    else:
        reseal(src, dst, manifest=lambda m: set_at(m, path, value))


def outputs(fn, inputs):
    result = fn(**inputs)
    if isinstance(result, dict):
        return list(result.values())
    return list(result) if isinstance(result, (list, tuple)) else [result]


def check_attempt(path, inspect: bool) -> str:
    """'refused' or 'loaded'; fails the test on any other ending."""
    try:
        fn = dlc.load(path)
    except ArtifactError:
        ended = "refused"
    except CudaUnavailableError:
        return "needs a GPU"  # options edited to leave out emulate=True: a real GPU is asked for, none is here
    else:
        ended = "loaded"
        inputs = example_inputs(fn, seed=1)
        oracle = dlc.load(path, target="reference")
        try:
            want = outputs(oracle, inputs)
        except DlcError:  # the (mutated) graph cannot run these inputs: neither may the target
            with pytest.raises(DlcError):
                outputs(fn, inputs)
        else:
            for g, w in zip(outputs(fn, inputs), want):
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    try:
        dlc.load(path, verify=True)
    except ArtifactError:
        pass
    if inspect:
        try:
            assert cli_main(["--debug", "inspect", str(path)]) == 0
        except ArtifactError:
            pass
    return ended


# ----------------------------------------------------------------------------
# the artifacts


def mlp_reference():
    rng = np.random.default_rng(0)
    x = dlc.input("x", ("B", 4))
    w = dlc.param(rng.standard_normal((4, 3)).astype(np.float32), name="w")
    return dlc.compile({"probs": dlc.softmax(dlc.leaky_relu(x @ w, 0.1))}, target="reference")


def training_step():
    rng = np.random.default_rng(1)
    x, t = dlc.input("x", ("B", 3)), dlc.input("t", ("B", 2))
    w = dlc.param(rng.standard_normal((3, 2)).astype(np.float32), name="w")
    loss = dlc.mean((dlc.tanh(x @ w) - t) ** 2)
    return dlc.compile(loss, updates={w: w - 0.1 * dlc.grad(loss, w)}, target="reference")


def scan_model():
    rng = np.random.default_rng(2)
    xs = dlc.input("xs", ("T", "B", 2))
    w = dlc.param(rng.standard_normal((2, 2)).astype(np.float32), name="w")
    h0 = dlc.broadcast_to(dlc.constant(np.zeros((1, 2), np.float32)), ("B", 2))
    (h,), ys = dlc.scan(lambda carry, x: ((dlc.tanh(x @ w + carry[0]),), carry[0]), (h0,), xs)
    return dlc.compile([h, ys], target="reference")


def pool_cpu():
    x = dlc.input("x", ("B", 1, 4, 4))
    return dlc.compile(dlc.avg_pool2d(x, 2, count_include_pad=False) * 2.0 + 1.0, target="cpu")


def pool_cuda_emulated():
    x = dlc.input("x", ("B", 1, 4, 4))
    return dlc.compile(dlc.max_pool2d(x, 2) * 2.0, target="cuda", emulate=True)


def has_emulator():
    try:
        from dlc.runtime.cuda import EmulatedDevice

        EmulatedDevice.shared()
    except (ImportError, OSError, RuntimeError):
        return False
    return True


# (model, extra hostile strings sampled, only mutations that cannot yield a new native module)
CASES = {
    "reference": (mlp_reference, 60, False),
    "training": (training_step, 40, False),
    "scan": (scan_model, 40, False),
    "cpu": (pool_cpu, 60, True),
    "cuda-emulated": (pool_cuda_emulated, 60, True),
}
EVERYTHING = os.environ.get("DLC_FUZZ_ALL") == "1"


@pytest.mark.parametrize("case", list(CASES))
def test_mutated_artifacts_are_refused_or_compute_correctly(case, tmp_path, monkeypatch):
    model, extra, cheap_only = CASES[case]
    if case == "cuda-emulated" and not has_emulator():
        pytest.skip("no CUDA emulator (g++)")
    monkeypatch.chdir(tmp_path)  # where a payload's canary would appear
    base = tmp_path / "base.dlc"
    dlc.export(model(), base)
    ends = {"refused": 0, "loaded": 0, "needs a GPU": 0}
    tried = mutations(base, extra, cheap_only and not EVERYTHING, everything=EVERYTHING)
    for i, (member, path, value) in enumerate(tried):
        mutated = tmp_path / "m.dlc"
        apply(base, mutated, member, path, value)
        try:
            ends[check_attempt(mutated, inspect=i % 10 == 0)] += 1
        except BaseException as e:
            raise AssertionError(f"{member} at {path} set to {value!r:.120}: {type(e).__name__}: {e}") from e
        assert not list(tmp_path.glob(f"**/{CANARY}*")), f"a payload ran: {member} {path} = {value!r:.80}"
    assert ends["refused"] > 0 and ends["loaded"] > 0, ends  # both endings are exercised
