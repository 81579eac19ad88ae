"""benchmarks/run.py's reporting: per-round ratios against the best peer, their median and spread, every round."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import run  # noqa: E402


def _r(rnd, fw, ms, wl="W1", **extra):
    return dict(workload=wl, framework=fw, round=rnd, median_ms=ms, numerics_ok=True, compile_s=1.0, **extra)


RESULTS = [
    _r(1, "dlc", 4.0), _r(1, "torch", 5.0), _r(1, "jax", 2.0), _r(1, "numpy", 8.0),
    _r(2, "dlc", 3.0), _r(2, "torch", 3.0), _r(2, "jax", 6.0), _r(2, "numpy", 6.0),
    _r(3, "dlc", 9.0), _r(3, "torch", 10.0), _r(3, "jax", 9.0), _r(3, "numpy", 9.0),
]


def test_each_round_is_divided_by_that_rounds_best_peer():
    assert run.round_ratios(RESULTS, "W1") == [(2.0, "jax"), (1.0, "torch"), (1.0, "jax")]


def test_summary_shows_the_median_ratio_with_its_spread_and_rounds_table_every_round():
    summary = run.summary_table(RESULTS, ["numpy", "dlc", "torch", "jax"])
    row = next(ln for ln in summary.splitlines() if ln.startswith("| W1 "))
    assert "| 1.00 [1.00–2.00] |" in row  # median of 2.0, 1.0, 1.0
    assert "of 3 rounds" in summary
    rounds = run.rounds_table(RESULTS, ["numpy", "dlc", "torch", "jax"])
    assert [ln.split(" | ")[1] for ln in rounds.splitlines() if ln.startswith("| W1 ")] == ["1", "2", "3"]


def test_numpy_and_the_cell_loop_are_never_the_best_peer():
    results = [_r(1, "dlc", 4.0, "W3"), _r(1, "torch", 8.0, "W3"), _r(1, "torch_loop", 1.0, "W3"),
               _r(1, "numpy", 1.0, "W3")]
    assert run.round_ratios(results, "W3") == [(0.5, "torch")]


def test_a_numerics_mismatch_is_shown_and_not_used_as_a_time():
    bad = dict(workload="W1", framework="dlc", round=1, numerics_ok=False)
    results = [bad, _r(1, "torch", 5.0)]
    assert run.round_ratios(results, "W1") == [None]
    assert "✗ numerics mismatch" in run.rounds_table(results, ["dlc", "torch"])
