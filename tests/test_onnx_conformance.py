"""The ONNX backend node tests through dlc.onnx: every test of the reference run passes or is skipped with a
reason (docs/onnx.md has the table), and a fixed subset passes on the cpu target."""

from __future__ import annotations

import pytest

pytest.importorskip("onnx", reason="the ONNX conformance tests need the onnx package (pip install 'dlc[onnx]')")

from dlc.onnx import conformance as C  # noqa: E402


@pytest.fixture(scope="module")
def node_report():
    return C.run_all(C.node_cases(), "reference")


def test_node_tests_pass_or_are_skipped_with_a_reason(node_report):
    failed = {r.case.name: r.reason for r in node_report.results if r.status == "failed"}
    unexpected = {k: v for k, v in failed.items() if k not in C.KNOWN_FAILURES}
    assert not unexpected, unexpected
    for r in node_report.results:
        if r.status == "skipped":
            assert r.reason, r.case.name


def test_listed_operators_share(node_report):
    passed, total = C.listed_share(node_report.results)
    assert total > 500   # the suite was found and attributed to the listed ops
    assert passed / total >= 0.95, (passed, total)   # the bar (docs/onnx.md has today's number)


@pytest.mark.parametrize("kind", ["pytorch-converted", "pytorch-operator"])
def test_pytorch_model_tests_on_reference(kind):
    report = C.run_all(C.model_cases(kind), "reference")
    not_passed = [(r.case.name, r.status, r.reason) for r in report.results if r.status != "passed"]
    assert not not_passed


@pytest.mark.parametrize("name", C.CPU_SUBSET)
def test_cpu_subset(name):
    (case,) = C.node_cases({name})
    result = C.run_case(case, "cpu")
    assert result.status == "passed", result.reason


@pytest.mark.parametrize("name", C.CPU_MODEL_SUBSET)
def test_cpu_model_subset(name):
    (case,) = [c for c in C.model_cases("pytorch-converted") if c.name == name]
    result = C.run_case(case, "cpu")   # in this process: a forked child of one that ran OpenMP code would abort
    assert result.status == "passed", result.reason


def test_a_cpu_test_past_its_timeout_fails_and_the_rest_run(monkeypatch):
    cases = C.node_cases({"test_relu", "test_abs", "test_neg"})
    slow = cases[1].name
    real = C.run_case

    def run_case(case, target="reference"):
        if case.name == slow:
            import time
            time.sleep(30)
        return real(case, target)

    monkeypatch.setattr(C, "run_case", run_case)   # the forked child runs the patched function
    report = C.run_isolated(cases, "reference", chunk=8, timeout=3)
    statuses = {r.case.name: (r.status, r.reason) for r in report.results}
    assert statuses[slow] == ("failed", "no result within 3 s")
    assert [statuses[c.name][0] for c in cases if c.name != slow] == ["passed", "passed"]
