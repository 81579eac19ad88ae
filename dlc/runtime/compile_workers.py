"""A cold compile shared with helper processes: numba compiles one function at a time per process.

numba's compiler holds one lock per process, so the functions of a newly
generated module (its outer functions, their parts, the kernels they share,
a scan's loop) compile one after another on one core: ResNet-18's training
step spent 50 s there on a machine with cores to spare. When a module was
just written (nothing of it in numba's cache), the backend hands this module
the module's functions with the argument types of the first call; it starts
a few helper processes (`python -m dlc.runtime.compile_workers`), each
compiling its share into numba's on-disk cache, while this process compiles
its own share. The calls that follow load the helpers' share from the cache
as a warm start does.

Functions are compiled by level (generated code calls the kernels shared by
several layers, and the parts of a long outer function, by symbol): every
process finishes a level before any starts the next, so a caller finds its
callees in the cache instead of compiling them again. Within a level, each
process takes the next function nobody has taken, the longest (in source
lines) first.

Nothing here changes what runs: a helper that fails, dies or is never
started leaves its share to be compiled by the call that needs it, as
without helpers. DLC_COMPILE_WORKERS sets the number of helpers (0: none);
by default, one per core beyond the first (per MPI rank on the machine), at
most MAX_WORKERS.
"""

from __future__ import annotations

import inspect
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("dlc")

ENV = "DLC_COMPILE_WORKERS"
MAX_WORKERS = 8     # each helper holds numba and LLVM (about 200 MB)
MIN_LINES = 300     # below this a module compiles in a few seconds (0.3 s a function, 10 ms a line): a
                    # helper's start (python, numpy, numba, the kernel modules: about 0.7 s) would not pay


@dataclass(frozen=True)
class Job:
    """One function to compile: module.func for argtypes (numba types)."""

    module: str               # a generated module's name, dlc_gen_<digest> (its digest checked on import)
    path: str                 # its file
    func: str
    argtypes: tuple
    level: int
    lines: int
    requires: tuple = ()      # (name, path) of generated modules it imports (a scan loop's body), loaded first


def worker_count() -> int:
    """Helpers to start for a cold compile: $DLC_COMPILE_WORKERS, else one per core beyond the first, the cores
    shared out among the MPI ranks on this machine (each compiles the same module at the same time)."""
    value = os.environ.get(ENV)
    if value is None or value.strip() == "":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(0, min(cores // _local_ranks() - 1, MAX_WORKERS))
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise ValueError(f"{ENV} must be a whole number of helper processes (0 for none), not {value!r}")
    return count


def _local_ranks() -> int:
    """How many MPI ranks run on this machine, as Open MPI or MPICH tell them (1 outside MPI)."""
    for name in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        try:
            return max(1, int(os.environ[name]))
        except (KeyError, ValueError):
            continue
    return 1


def helper_command() -> list[str]:
    """How a helper process is started: this Python running this module."""
    return [sys.executable, "-m", "dlc.runtime.compile_workers"]


def source_lines(func) -> int:
    """The length of a numba function's source: what its compile time grows with."""
    try:
        return len(inspect.getsourcelines(getattr(func, "py_func", func))[0])
    except (OSError, TypeError):
        return 1


def by_level(jobs: list[Job]) -> list[tuple[int, list[Job]]]:
    """The jobs of each level, lowest first, the longest of a level first (the last to start should be short)."""
    levels = sorted({j.level for j in jobs})
    return [(level, sorted((j for j in jobs if j.level == level), key=lambda j: -j.lines)) for level in levels]


def compile_all(jobs: list[Job], workers: int | None = None) -> dict:
    """Compile jobs into numba's cache, sharing them with helper processes where that pays.

    Every process takes the next job nobody has taken (a claim is a file made with O_EXCL in a folder of this
    compile), so a helper that starts late or draws long jobs simply takes fewer. Returns what was done:
    helpers started, jobs compiled here, seconds. Never raises for a job: a function that fails to compile
    here is left to its first call, which reports the error."""
    workers = worker_count() if workers is None else workers
    # one job per function and signature (a kernel shared by layers is called with arrays of the same types)
    jobs = list({(j.module, j.func, j.argtypes): j for j in reversed(jobs)}.values())[::-1]
    if sum(j.lines for j in jobs) < MIN_LINES:
        workers = 0
    workers = min(workers, len(jobs) - 1)
    levels = by_level(jobs)
    t0 = time.perf_counter()
    here = 0
    try:
        folder = tempfile.TemporaryDirectory(prefix="dlc-compile-")   # private (0700): the claims
    except OSError as e:
        log.info("dlc cpu: no folder for compile claims (%s); each function compiles at its first call", e)
        return dict(compile_workers=0, compile_jobs=len(jobs), compile_jobs_here=0, precompile_s=0.0)
    with folder as claims:
        helpers = [_Helper(levels, claims) for _ in range(max(workers, 0))]
        try:
            for n, (level, level_jobs) in enumerate(levels):
                for i, job in enumerate(level_jobs):
                    if claim(claims, level, i):
                        _compile_here(job)
                        here += 1
                for h in helpers:
                    h.finish_level(level)
                if n + 1 < len(levels):
                    for h in helpers:
                        h.go_on()
        finally:
            for h in helpers:
                h.close()
    return dict(compile_workers=sum(h.started for h in helpers), compile_jobs=len(jobs),
                compile_jobs_here=here, precompile_s=time.perf_counter() - t0)


def claim(folder: str, level: int, index: int) -> bool:
    """Take job `index` of `level` for this process: True for exactly one of the processes asking."""
    try:
        os.close(os.open(os.path.join(folder, f"{level}.{index}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def _compile_here(job: Job) -> None:
    module = sys.modules.get(job.module)
    func = getattr(module, job.func, None)
    if func is None:
        return
    try:
        func.compile(job.argtypes)
    except Exception as e:  # noqa: BLE001  (the first call compiles it again and raises where the user sees it)
        log.debug("dlc cpu: compiling %s.%s ahead of its call failed: %s", job.module, job.func, e)


class _Helper:
    """One helper process, level by level."""

    def __init__(self, levels: list[tuple[int, list[Job]]], claims: str):
        self.alive = self.started = True
        self.errors = tempfile.TemporaryFile()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])   # the folder holding the dlc package, however it runs
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
        env[ENV] = "0"
        try:
            self.proc = subprocess.Popen(helper_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self.errors, env=env)
            payload = pickle.dumps((levels, claims), protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.write(b"%d\n" % len(payload) + payload)
            self.proc.stdin.flush()
        except (OSError, ValueError, pickle.PicklingError) as e:
            log.info("dlc cpu: no compile helper (%s); compiling in this process", e)
            self.alive = self.started = False
            self.proc = getattr(self, "proc", None)

    def finish_level(self, level: int) -> None:
        """Wait until the helper has compiled its share of this level."""
        if not self.alive:
            return
        line = self.proc.stdout.readline()
        if line.strip() != b"done %d" % level:
            self._lost()

    def go_on(self) -> None:
        if not self.alive:
            return
        try:
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.flush()
        except OSError:
            self._lost()

    def _lost(self) -> None:
        self.alive = False
        log.info("dlc cpu: a compile helper stopped early; its functions compile at their first call")

    def close(self) -> None:
        proc = self.proc
        if proc is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode and log.isEnabledFor(logging.DEBUG):
                self.errors.seek(0)
                log.debug("dlc cpu: compile helper exited with %s:\n%s", proc.returncode,
                          self.errors.read()[-4000:].decode(errors="replace"))
        self.errors.close()


# ---------------------------------------------------------------------------
# the helper's side


def _load(name: str, path: str) -> None:
    """Import a generated module from its file under its name, once; its name must be its source's digest."""
    if name in sys.modules:
        return
    from ..cache import read_checked
    from .cpu import import_file

    prefix = "dlc_gen_"
    if not name.startswith(prefix) or read_checked(Path(path), name[len(prefix):]) is None:
        raise ValueError(f"{path} is not the generated module {name}")
    import_file(name, path)


def serve(stdin, stdout) -> None:
    """Compile the jobs read from stdin that nobody else has claimed, level by level, writing `done <level>`
    after each and waiting for `go` before the next (the other processes' callees are then in the cache)."""
    from .cpu import load_kernel_modules

    load_kernel_modules()
    size = int(stdin.readline())
    levels, claims = pickle.loads(stdin.read(size))
    for n, (level, jobs) in enumerate(levels):
        for i, job in enumerate(jobs):
            if not claim(claims, level, i):
                continue
            try:
                for name, path in job.requires:
                    _load(name, path)
                _load(job.module, job.path)
                _compile_here(job)
            except Exception as e:  # noqa: BLE001  (left to the first call, in the process that needs it)
                print(f"dlc compile helper: {job.module}.{job.func}: {e}", file=sys.stderr)
        stdout.write(b"done %d\n" % level)
        stdout.flush()
        if n + 1 < len(levels) and stdin.readline().strip() != b"go":
            return


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
