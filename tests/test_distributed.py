"""Data-parallel training on MPI: collectives, gradient averaging, cross-rank checks, launched with mpirun -n 2."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import dlc
from dlc import distributed

ROOT = Path(__file__).resolve().parents[1]
TIME_LIMIT = 240  # seconds for one mpirun (compiling on a loaded 2-core machine included)


def _mpi_missing() -> str | None:
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install 'dlc[mpi]')"
    if shutil.which("mpirun") is None:
        return "mpirun is not on PATH (pip install 'dlc[mpi]' installs Open MPI)"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))
if _mpi_missing():
    print(f"test_distributed: mpirun tests skipped: {_mpi_missing()}", file=sys.stderr)


def mpirun(script: str, ranks: int, tmp_path: Path, *args: str):
    """Run `script` (Python source) on `ranks` ranks (0: one plain process); returns (returncode, output, seconds)."""
    path = tmp_path / f"worker_{ranks}.py"
    path.write_text(textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    launcher = ["mpirun", "-n", str(ranks), "--oversubscribe"] if ranks else []
    cmd = [*launcher, sys.executable, str(path), *args]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIME_LIMIT, cwd=tmp_path)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mpirun -n {ranks} did not end within {TIME_LIMIT} s (a hang); output:\n{e.stdout}\n{e.stderr}")
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0


# ----------------------------------------------------------------------------
# one process: the world of one rank


def test_collectives_are_the_identity_in_a_world_of_one_rank():
    x = dlc.input("x", (3, 2))
    f = dlc.compile([distributed.all_reduce(x), distributed.all_reduce(x, "mean"), distributed.broadcast(x, 0),
                     distributed.all_gather(x), distributed.reduce(x, 0), distributed.reduce_scatter(x)],
                    inputs=[x], target="reference")
    v = np.arange(6, dtype=np.float32).reshape(3, 2)
    for out in f(v):
        np.testing.assert_array_equal(out, v)
    assert distributed.rank() == 0 and distributed.world_size() == 1


def test_collective_errors_name_the_problem():
    x = dlc.input("x", (3,), "int64")
    with pytest.raises(dlc.DTypeError, match="collectives take float32, float64"):
        distributed.all_reduce(x, "mean")
    with pytest.raises(ValueError, match="'sum' or 'mean'"):
        distributed.all_reduce(dlc.input("y", (3,)), "max")
    with pytest.raises(ValueError, match=r"root must be a rank in \[0, 1\)"):
        distributed.broadcast(dlc.input("z", (3,)), root=1)


def test_gradient_buckets_keep_values_and_order():
    grads = [dlc.constant(np.full(s, i, np.float32)) for i, s in enumerate([(3, 2), (5,), (2, 2)])]
    assert distributed._buckets(grads, bucket_bytes=40) == [[2, 1], [0]]  # last gradient first, <= 40 bytes


# ----------------------------------------------------------------------------
# two ranks

COLLECTIVES = """
    import numpy as np
    import dlc
    from dlc import distributed as D

    rank, world = D.rank(), D.world_size()
    x = dlc.input("x", (4, 3))
    w = dlc.param(np.full((4, 3), 1.0 + rank, np.float32), name="w")
    c = np.arange(24, dtype=np.float32).reshape(8, 3)
    loss = dlc.sum(D.all_gather(x * w) * dlc.constant(c))  # rank r's x * w lands in rows 4r..4r+3
    f = dlc.compile({"sum": D.all_reduce(x), "mean": D.all_reduce(x, "mean"), "bcast": D.broadcast(x, 1),
                     "gather": D.all_gather(x), "reduce": D.reduce(x, 0), "scatter": D.reduce_scatter(x),
                     "gw": dlc.grad(loss, [w])[0], "gx": dlc.grad(dlc.sum(D.broadcast(x, 1) * x), [x])[0]},
                    inputs=[x], target="reference")
    xs = [np.arange(12, dtype=np.float32).reshape(4, 3) + 100 * r for r in range(world)]
    got = f(xs[rank])
    total = sum(xs)
    want = {"sum": total, "mean": total / world, "bcast": xs[1], "gather": np.concatenate(xs),
            "reduce": total if rank == 0 else 0 * total, "scatter": total[2 * rank:2 * rank + 2],
            # every rank's loss depends on every rank's w: the gradient sums over the ranks' losses
            "gw": world * c[4 * rank:4 * rank + 4] * xs[rank],
            # d/dx_r of sum_s sum(x_1 * x_s): x_1 from the own term, plus sum_s x_s on the root
            "gx": xs[1] + (total if rank == 1 else 0)}
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6, err_msg=k)
    print(f"rank {rank}: every collective matches numpy", flush=True)
"""


@needs_mpi
def test_collectives_and_their_gradients_on_two_ranks_match_numpy(tmp_path):
    rc, log, _ = mpirun(COLLECTIVES, 2, tmp_path)
    assert rc == 0, log
    assert "rank 0: every collective matches numpy" in log and "rank 1: every collective matches numpy" in log


TRAIN = """
    import sys
    import numpy as np
    import dlc
    from dlc import distributed, nn

    target, batch, out, tag, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    target, options = ("cuda", {"emulate": True}) if target == "cuda-emulated" else (target, {})
    resume = sys.argv[6] if len(sys.argv) > 6 else None
    rank, world = distributed.rank(), distributed.world_size()
    rng = np.random.default_rng(42)
    X, Y = rng.normal(size=(20 * 64, 8)).astype(np.float32), rng.integers(0, 4, 20 * 64)
    if resume:  # a step exported after 10 steps, trained on for 10 more
        step, first = dlc.load(resume), 10
        distributed.synchronize(step)
        store = step.store
    else:
        nn.manual_seed(rank)  # ranks start from different weights: compiling the step copies rank 0's
        if kind == "mlp-small-buckets":  # three gradient buckets, each reduction overlapping the backward pass
            distributed.BUCKET_BYTES, kind = 300, "mlp"
        if kind == "mlp":
            model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
        else:  # batch statistics over every rank's rows (no bias before it: its gradient is rounding noise)
            model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16, sync=True), nn.Tanh(),
                                  nn.Linear(16, 4))
        x, y = dlc.input("x", ("B", 8)), dlc.input("y", ("B",), "int64")
        opt = dlc.optim.Adam(model.parameters(), lr=1e-2)
        step = nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), [x, y], opt, modules=model,
                               target=target, data_parallel=True, **options)
        store, first = model.store, 0
    losses = []
    for s in range(first, 20):
        if s == 10 and rank == 0 and not resume:
            dlc.export(step, f"{out}/{tag}_at10.dlc")
        rows = slice(s * 64 + rank * batch, s * 64 + (rank + 1) * batch)
        loss = step(X[rows], Y[rows])
        losses.append(float(loss["loss"] if isinstance(loss, dict) else loss))
    np.savez(f"{out}/{tag}_rank{rank}.npz", losses=np.array(losses), **{k: store[k] for k in store.keys()})
    print(f"rank {rank} of {world} done", flush=True)
"""


def saved(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return dict(f)


def check_same_training(ranks: list[dict], reference: dict):
    """Every array of every rank close to the reference run's; the ranks' bit-identical to each other."""
    assert sorted(ranks[0]) == sorted(reference) and len(reference) > 4
    for k in reference:
        for r in ranks[1:]:
            np.testing.assert_array_equal(ranks[0][k], r[k], err_msg=f"ranks hold different {k}")
        np.testing.assert_allclose(ranks[0][k], reference[k], rtol=2e-4, atol=2e-5, err_msg=k)


@needs_mpi
@pytest.mark.parametrize("target", ["reference", "cpu", "cuda-emulated"])
def test_two_ranks_match_one_process_with_the_whole_batch(tmp_path, target):
    """cuda-emulated: the CUDA backend's kernels on the C emulator, its collectives host calls between them."""
    # the program does not depend on the number of ranks: the 2-rank run finds the 1-process run's
    # compiled module in the (shared, usually warm) cache
    for ranks, batch in [(1, 64), (2, 32)]:
        rc, log, _ = mpirun(TRAIN, ranks, tmp_path, target, str(batch), str(tmp_path), f"world{ranks}", "mlp")
        assert rc == 0, log
    one, r0, r1 = (saved(tmp_path / f) for f in ("world1_rank0.npz", "world2_rank0.npz", "world2_rank1.npz"))
    # weights, Adam's moments and step, and the reported loss (the mean over ranks, so the whole batch's)
    check_same_training([r0, r1], one)
    assert not np.allclose(one["losses"][0], one["losses"][-1])  # it trained


@needs_mpi
@pytest.mark.parametrize("target", ["cpu", "cuda-emulated"])
def test_overlapping_bucket_reductions_on_two_ranks_match_one_process(tmp_path, target):
    for ranks, batch in [(1, 64), (2, 32)]:
        rc, log, _ = mpirun(TRAIN, ranks, tmp_path, target, str(batch), str(tmp_path), f"world{ranks}",
                            "mlp-small-buckets")
        assert rc == 0, log
    one, r0, r1 = (saved(tmp_path / f) for f in ("world1_rank0.npz", "world2_rank0.npz", "world2_rank1.npz"))
    check_same_training([r0, r1], one)


PROGRESS = """
    import time
    import numpy as np
    from dlc import distributed
    from dlc.ops import OPS, collective

    rank = distributed.rank()
    x = np.full(2_000_000, rank + 1.0, np.float32)  # 8 MB: more than MPI sends eagerly
    ticket = OPS["all_reduce_start"].ref([x], {}, ())
    result = collective._PENDING[int(ticket)][1]
    deadline = time.monotonic() + 60
    while not (result == 3.0).all() and time.monotonic() < deadline:
        time.sleep(0.01)  # this thread makes no MPI call
    print(f"rank {rank} reduced in the background: {bool((result == 3.0).all())}", flush=True)
    total = OPS["all_reduce_wait"].ref([x, ticket], {"reduce": "sum"}, x.shape)
    assert (total == 3.0).all()
"""


@needs_mpi
def test_a_started_reduction_progresses_while_the_rank_computes(tmp_path):
    """The progress thread: an Iallreduce completes while the rank's own thread makes no MPI call."""
    rc, log, _ = mpirun(PROGRESS, 2, tmp_path)
    assert rc == 0, log
    assert "rank 0 reduced in the background: True" in log and "rank 1 reduced in the background: True" in log


def test_bucket_reductions_start_early_and_end_late():
    """The scheduler starts each bucket's Allreduce once it is packed and waits for it only before the update."""
    from dlc import nn
    from dlc.passes import optimize

    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    x, y = dlc.input("x", ("B", 8)), dlc.input("y", ("B",), "int64")
    opt = dlc.optim.SGD(model.parameters(), lr=0.1)
    updates = opt.updates(nn.cross_entropy(model(x), y), lambda gs: distributed.average_gradients(gs, 300))
    program = optimize([], [(p.node.attr("name"), v.node) for p, v in updates.items()], [x, y])
    kernels = program.kernels
    ops = [k.anchor.op if k.anchor is not None else "" for k in kernels]
    writer = {id(program.storage_of(o)): i for i, k in enumerate(kernels) for o in k.outputs}
    deps = [{writer[id(program.storage_of(n))] for n in k.inputs if id(program.storage_of(n)) in writer} - {i}
            for i, k in enumerate(kernels)]
    starts = [i for i, op in enumerate(ops) if op == "all_reduce_start"]
    waits = [i for i, op in enumerate(ops) if op == "all_reduce_wait"]
    matmuls = [i for i, k in enumerate(kernels) if any(n.op == "matmul" for n in k.nodes)]
    assert len(starts) == len(waits) == 5  # buckets of 300 bytes: [b3, W3], b2, W2, b1, W1
    assert starts[0] < max(matmuls) < max(starts) < min(waits)  # reductions in flight during the backward pass
    for i in starts:  # each start right after what it needs (another start or a packing made ready with it)
        assert i - max(deps[i]) <= 2, (i, deps[i], program)
    for i in range(min(waits), len(kernels)):  # after the first wait, only what needs a reduced gradient
        assert ops[i] == "all_reduce_wait" or deps[i] & set(range(min(waits), i)), (i, program)


@needs_mpi
def test_synchronised_batch_norm_on_two_ranks_matches_one_process(tmp_path):
    for ranks, batch in [(1, 64), (2, 32)]:
        rc, log, _ = mpirun(TRAIN, ranks, tmp_path, "reference", str(batch), str(tmp_path), f"bn{ranks}", "syncbn")
        assert rc == 0, log
    one, r0, r1 = (saved(tmp_path / f) for f in ("bn1_rank0.npz", "bn2_rank0.npz", "bn2_rank1.npz"))
    assert any("running_var" in k for k in one)
    check_same_training([r0, r1], one)  # the running statistics too: they are the whole batch's


@needs_mpi
def test_artifacts_move_between_one_process_and_two_ranks(tmp_path):
    for ranks, batch in [(1, 64), (2, 32)]:
        rc, log, _ = mpirun(TRAIN, ranks, tmp_path, "reference", str(batch), str(tmp_path), f"world{ranks}", "mlp")
        assert rc == 0, log
    one = saved(tmp_path / "world1_rank0.npz")
    last_ten = dict(one, losses=one["losses"][10:])
    # rank 0's export of the 2-rank run trains on in a plain process (no mpirun)
    rc, log, _ = mpirun(TRAIN, 0, tmp_path, "reference", "64", str(tmp_path), "alone", "mlp",
                        str(tmp_path / "world2_at10.dlc"))
    assert rc == 0, log
    check_same_training([saved(tmp_path / "alone_rank0.npz")], last_ten)
    # the single-process export resumes on 2 ranks
    rc, log, _ = mpirun(TRAIN, 2, tmp_path, "reference", "32", str(tmp_path), "resumed", "mlp",
                        str(tmp_path / "world1_at10.dlc"))
    assert rc == 0, log
    check_same_training([saved(tmp_path / f"resumed_rank{r}.npz") for r in (0, 1)], last_ten)


FIT = """
    import numpy as np
    import dlc
    from dlc import distributed, nn

    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = dlc.input("x", ("B", 4)), dlc.input("y", ("B",), "int64")
    opt = dlc.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    def loss_fn(x, y):
        return {"loss": nn.cross_entropy(model(x), y), "acc": nn.accuracy(model(x), y)}

    step = nn.compile_step(loss_fn, [x, y], opt, modules=model, target="reference", data_parallel=True)

    def recording(x, ids):  # the step, noting which rows this rank trained on
        seen.extend(ids.tolist())
        return step(x, ids % 3)

    recording.data_parallel = True  # fit shards the batches of steps that say they are data-parallel

    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 4)).astype(np.float32)
    history = nn.fit(recording, X, np.arange(50), epochs=1, batch_size=8, progress=False,
                     log=lambda *a: print(*a, flush=True))
    seen = np.array(seen)
    everyone = np.empty(100, np.int64)
    distributed.communicator().Allgather(np.pad(seen, (0, 50 - len(seen)), constant_values=-1), everyone)
    rows = sorted(r for r in everyone.tolist() if r >= 0)
    print(f"rank {distributed.rank()} trained on {len(seen)} rows; history {history[0]} rows {rows}", flush=True)

    def diverging(x, ids):
        return float("nan")

    diverging.data_parallel = True
    stopped = nn.fit(diverging, X, np.arange(50), batch_size=8, progress=False,
                     log=lambda *a: print(f"rank {distributed.rank()} logged:", *a, flush=True))
    print(f"rank {distributed.rank()} stopped: {stopped.stopped}", flush=True)
"""


@needs_mpi
def test_fit_shards_batches_and_agrees_on_records(tmp_path):
    rc, log, _ = mpirun(FIT, 2, tmp_path)
    assert rc == 0, log
    rows = [line for line in log.splitlines() if " history " in line]
    assert len(rows) == 2, log
    r0, r1 = (line.split(" history ", 1)[1] for line in sorted(rows))
    assert r0 == r1  # the same averaged record on both ranks
    assert r0.endswith(f"rows {list(range(50))}")  # every row once: the shares are disjoint and cover the data
    assert "rank 0 trained on 26 rows" in log and "rank 1 trained on 24 rows" in log  # 4 batches of 13,13,12,12
    # only rank 0 logs (and shows progress bars); both ranks stop
    assert "rank 0 logged: fit: loss is nan at epoch 1, step 1" in log and "rank 1 logged" not in log, log
    assert "rank 1 stopped: loss is nan at epoch 1, step 1" in log


MISMATCH = """
    import dlc
    from dlc import distributed, nn

    hidden = 16 if distributed.rank() == 0 else 12
    model = nn.Sequential(nn.Linear(8, hidden), nn.Tanh(), nn.Linear(hidden, 4))
    x, y = dlc.input("x", ("B", 8)), dlc.input("y", ("B",), "int64")
    opt = dlc.optim.SGD(model.parameters(), lr=0.1)
    try:
        nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), [x, y], opt, modules=model,
                        target="reference", data_parallel=True)
    except distributed.DistributedError as e:
        print(f"rank {distributed.rank()} caught: {e}", flush=True)
    else:
        print(f"rank {distributed.rank()} went on without an error", flush=True)
"""


@needs_mpi
def test_a_program_mismatch_is_an_error_on_every_rank(tmp_path):
    rc, log, seconds = mpirun(MISMATCH, 2, tmp_path)
    assert rc == 0, log
    for r in (0, 1):
        assert f"rank {r} caught: rank {r}: the training step differs across ranks: rank(s) [1]" in log, log
    assert "went on without an error" not in log


FAILURE = """
    import time
    import numpy as np
    import dlc
    from dlc import distributed, nn

    model = nn.Sequential(nn.Linear(8, 4))
    x, y = dlc.input("x", ("B", 8)), dlc.input("y", ("B",), "int64")
    opt = dlc.optim.SGD(model.parameters(), lr=0.1)
    step = nn.compile_step(lambda x, y: nn.cross_entropy(model(x), y), [x, y], opt, modules=model,
                           target="reference", data_parallel=True)
    X, Y = np.ones((4, 8), np.float32), np.zeros(4, np.int64)
    for s in range(1000):
        if s == 3 and distributed.rank() == 1:
            raise RuntimeError("bad batch on purpose")
        step(X, Y)
    print("rank", distributed.rank(), "finished: it should have been stopped", flush=True)
"""


@needs_mpi
def test_a_failing_rank_stops_every_rank_with_an_error_naming_it(tmp_path):
    rc, log, seconds = mpirun(FAILURE, 2, tmp_path)
    assert rc != 0, log
    assert "RuntimeError: bad batch on purpose" in log
    assert "dlc.distributed: rank 1 of 2 raised RuntimeError: bad batch on purpose; aborting every rank" in log
    assert "finished" not in log  # rank 0, waiting in the Allreduce of step 4, was stopped


HANG = """
    import sys
    import time
    import numpy as np
    import dlc
    from dlc import distributed, nn

    distributed.init(timeout=float(sys.argv[2]))
    model = nn.Sequential(nn.Linear(8, 4))
    x, y = dlc.input("x", ("B", 8)), dlc.input("y", ("B",), "int64")
    opt = dlc.optim.SGD(model.parameters(), lr=0.1)

    def loss(x, y):
        return nn.cross_entropy(model(x), y)

    step = nn.compile_step(loss, [x, y], opt, modules=model, target=sys.argv[1], data_parallel=True)
    X, Y = np.ones((4, 8), np.float32), np.zeros(4, np.int64)
    for s in range(5):
        if s == 2 and distributed.rank() == distributed.world_size() - 1:
            print(f"rank {distributed.rank()} stops answering", flush=True)
            time.sleep(3600)  # neither raises nor reaches the collective
        step(X, Y)
    print("rank", distributed.rank(), "finished: it should have been stopped", flush=True)
"""


@needs_mpi
@pytest.mark.parametrize("target, ranks", [("reference", 2), ("cpu", 2), ("reference", 3)])
def test_a_hanging_rank_times_the_others_out_with_an_error_naming_it(tmp_path, target, ranks):
    """The last rank sleeps in step 2; the others' Allreduce times out after 3 s and the job ends."""
    rc, log, seconds = mpirun(HANG, ranks, tmp_path, target, "3")  # (mpirun fails the test if the job hangs)
    assert rc != 0, log
    assert f"rank {ranks - 1} stops answering" in log and "finished" not in log, log
    line = textwrap.dedent(HANG).splitlines().index("step = nn.compile_step(loss, [x, y], opt, modules=model, "
                                                    "target=sys.argv[1], data_parallel=True)") + 1
    # rank 0 names the collective, the user's line that built it (the step's), and the rank that never came
    assert (f"CollectiveTimeoutError: all_reduce at {tmp_path / f'worker_{ranks}.py'}:{line}: rank 0 of {ranks} "
            f"waited 3 s in its collective #" in log), log
    assert f"rank(s) [{ranks - 1}] had not arrived: they did not answer within 2 s" in log, log
    if ranks == 3:  # the rank that came waits in the same collective, and said so when asked
        number = log.split("rank 0 of 3 waited 3 s in its collective #")[1].split()[0]
        assert f"rank 1 waits in its collective #{number} (all_reduce)" in log, log
    assert "raised CollectiveTimeoutError" in log and "aborting every rank" in log, log


CAUGHT = """
    import time
    import numpy as np
    import dlc
    from dlc import distributed

    distributed.init(timeout=2.0)
    x = dlc.input("x", (3,))
    total = dlc.compile(distributed.all_reduce(x), inputs=[x], target="reference")
    total(np.ones(3, np.float32))
    if distributed.rank() == 1:
        time.sleep(3600)
    try:
        total(np.ones(3, np.float32))
    except distributed.CollectiveTimeoutError as e:
        print("rank 0 caught:", e, flush=True)
    try:
        total(np.ones(3, np.float32))
    except distributed.DistributedError as e:
        print("rank 0 again:", e, flush=True)
    print("rank 0 exits normally", flush=True)
"""


@needs_mpi
def test_a_caught_timeout_still_ends_the_job(tmp_path):
    """Caught, the error leaves a collective that cannot be cancelled: later ones refuse, and exiting aborts."""
    rc, log, _ = mpirun(CAUGHT, 2, tmp_path)  # (mpirun fails the test if the job hangs)
    assert "rank 0 caught: all_reduce at " in log and "rank(s) [1] had not arrived" in log, log
    assert "rank 0 again: all_reduce: no collective can run any more: an earlier one timed out" in log, log
    assert "rank 0 exits normally" in log and rc != 0, log  # MPI_Abort at exit ended rank 1's sleep


def test_the_collective_timeout_is_checked(monkeypatch):
    monkeypatch.setitem(distributed._STATE, "timeout", None)
    monkeypatch.setenv("DLC_COLLECTIVE_TIMEOUT", "2.5")
    assert distributed.collective_timeout() == 2.5
    monkeypatch.delenv("DLC_COLLECTIVE_TIMEOUT")
    assert distributed.collective_timeout() == distributed.DEFAULT_TIMEOUT
    monkeypatch.setenv("DLC_COLLECTIVE_TIMEOUT", "soon")
    with pytest.raises(distributed.DistributedError, match="DLC_COLLECTIVE_TIMEOUT must be a number of seconds"):
        distributed.collective_timeout()
    for bad in (0, -1, float("nan"), "5", True):
        with pytest.raises(ValueError, match="init's timeout must be a positive number of seconds"):
            distributed.init(timeout=bad)
    distributed.init(timeout=float("inf"))  # no limit
    assert distributed.collective_timeout() == float("inf")


@needs_mpi
def test_mlp_digits_example_trains_on_two_ranks(tmp_path):
    pytest.importorskip("sklearn")
    example = (ROOT / "examples" / "mlp_digits.py").read_text()
    rc, log, _ = mpirun(example, 2, tmp_path, "--data-parallel", "--epochs", "3", "--target", "reference",
                        "--batch-size", "32", "--no-progress")
    assert rc == 0, log
    assert log.count("test accuracy") == 1, log  # rank 0 reports
    accuracy = float(log.split("test accuracy")[1].split()[0])
    assert accuracy > 0.6, log  # 3 short epochs (chance: 0.1)
