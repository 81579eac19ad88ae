"""The inspector behind `dlc inspect`: what each pass did, the fused kernels, refused fusions, the memory plan.

    print(dlc.inspect.report(step))                 # a dlc.Function, a TrainStep or a Program
    dlc.inspect.report(step, env={"B": 128}, dot="step.dot")
    print(dlc.inspect.profile(step, x, y))          # time of each kernel on these arguments (cpu target)
"""

from __future__ import annotations

import statistics

from .graph import Node, shape_str, symbols_of
from .ops import OPS, SOURCE
from .program import Program

DEFAULT_DIM = 32  # what an unbound symbolic dim is taken to be when no env is given


def program_of(obj) -> Program:
    """The optimized Program of a Program, a compiled dlc.Function (the one its backend runs), or a TrainStep;
    a function on the reference target, which runs no Program, is optimized here with the default options."""
    from .passes import optimize

    if isinstance(obj, Program):
        return obj
    fn = getattr(obj, "function", obj)  # a TrainStep wraps its Function
    if not all(hasattr(fn, a) for a in ("outputs", "updates", "inputs")):
        raise TypeError(f"cannot inspect a {type(obj).__name__}: give a dlc.Function, a TrainStep or a Program")
    program = getattr(fn, "program", None)
    return program if program is not None else optimize(fn.outputs, fn.updates, fn.inputs)


def default_env(program: Program, env: dict | None) -> tuple[dict, list[str]]:
    """env with every unbound symbol set to DEFAULT_DIM, and the names of those symbols."""
    env = dict(env or {})
    missing = sorted({s for n in program.graph.nodes for s in symbols_of(n.shape)} - env.keys())
    env.update({s: DEFAULT_DIM for s in missing})
    return env, missing


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def name_of(node: Node) -> str:
    label = node.attr("name") if node.op in ("input", "param") else None
    return f"%{node.serial}" + (f"({label})" if label else "")


def passes_section(program: Program) -> list[str]:
    log = program.stats.get("passes", [])
    lines = ["## Passes (nodes; ops that changed)"]
    prev = None
    for entry in log:
        counts = entry["ops"]
        if prev is None:
            top = ", ".join(f"{op} {c}" for op, c in list(counts.items())[:12])
            lines.append(f"  {entry['pass']:<15} {entry['nodes']:5d} nodes: {top}")
        else:
            changed = [f"{op} {prev.get(op, 0)}->{counts.get(op, 0)}" for op in sorted(set(prev) | set(counts))
                       if prev.get(op, 0) != counts.get(op, 0)]
            lines.append(f"  {entry['pass']:<15} {entry['nodes']:5d} nodes, {entry['rewrites']} rewrites: "
                         + (", ".join(changed) or "no op count changed"))
        prev = counts
    lines.append(f"  {'fusion':<15} {len(program.kernels):5d} kernels")
    return lines


def layers_of(kernel) -> list[str]:
    """The distinct module paths (dlc.nn layers, "features.0.conv") that the kernel's nodes came from."""
    scopes = [n.loc.scope for n in kernel.nodes if n.loc is not None and n.loc.scope]
    return list(dict.fromkeys(scopes))


def kernels_section(program: Program) -> list[str]:
    lines = [f"## Kernels ({len(program.kernels)}, in execution order)"]
    for k in program.kernels:
        anchor = f" around {k.anchor.op}" if k.anchor is not None else ""
        layers = layers_of(k)
        lines.append(f"  {k.name} [{k.kind}{anchor}] " + " -> ".join(n.op for n in k.nodes)
                     + (f"  (layer {', '.join(layers)})" if layers else ""))
        lines.append("      reads  " + (", ".join(f"{name_of(i)} {shape_str(i.shape)}" for i in k.inputs) or "-"))
        lines.append("      writes " + ", ".join(f"{name_of(o)} {o.dtype}{shape_str(o.shape)}" for o in k.outputs))
        for src in k.source_lines():
            lines.append(f"      from {src}")
    return lines


def profile(fn, *args, repeat: int = 5, top: int | None = 15, in_step: bool = False) -> str:
    """The time of each kernel of a cpu-target function with these arguments: the median of `repeat` runs, its
    share, its ops and the layers it came from, slowest first (`top` of them; None: all).

    By default each kernel runs on its own (the module's kernels that it
    inlines are compiled as functions of their own first, slow once). With
    `in_step=True`, inside the function's real step: a copy of its module
    with a clock read at each kernel, compiled once (about as long as the
    function's first call), where each kernel finds its inputs where the
    kernels before it left them (memory-bound kernels take longer there).
    Either way the parameters are copies: nothing is written back to them.
    """
    fn = getattr(fn, "function", fn)  # a TrainStep wraps its Function
    backend = getattr(fn, "backend", None)
    if not hasattr(backend, "kernel_times"):
        raise TypeError(f"profile times kernels of the cpu target; this function runs on "
                        f"{getattr(backend, 'name', type(backend).__name__)!r}")
    feeds, env, _ = fn.signature.bind(args, {})
    if in_step:
        times = backend.step_times(feeds, env, repeat)
        rows = times.kernels
        total = sum(t for _, t in rows) or 1.0
        updates = f", copying the updates into the store {times.updates * 1e3:.2f} ms" if times.updates else ""
        lines = [f"## Kernels by time inside the step ({len(rows)} kernels; the step "
                 f"{statistics.median(times.steps) * 1e3:.2f} ms, median of {repeat}; the kernels' medians add up "
                 f"to {total * 1e3:.2f} ms{updates})"]
    else:
        rows = backend.kernel_times(feeds, env, repeat)
        total = sum(t for _, t in rows) or 1.0
        lines = [f"## Kernels by time ({len(rows)} kernels, {total * 1e3:.2f} ms run one by one)"]
    for kernel, t in sorted(rows, key=lambda r: -r[1])[:top]:
        anchor = f" around {kernel.anchor.op}" if kernel.anchor is not None else ""
        layers = layers_of(kernel)
        ops = " -> ".join(n.op for n in kernel.nodes)
        lines.append(f"  {t * 1e3:9.3f} ms {100 * t / total:5.1f}%  {kernel.name} [{kernel.kind}{anchor}] "
                     + (ops if len(ops) <= 70 else ops[:67] + "...")
                     + (f"  (layer {', '.join(layers)})" if layers else ""))
    return "\n".join(lines)


def refusals_section(program: Program) -> list[str]:
    lines = [f"## Refused fusions ({len(program.refusals)})"]
    lines += [f"  {r}" for r in program.refusals] or ["  none"]
    return lines


def memory_section(program: Program, env: dict | None) -> list[str]:
    from .passes import plan_memory
    from .passes.memory import lifetimes

    env, guessed = default_env(program, env)
    plan = plan_memory(program, env)
    life = lifetimes(program)
    binding = ", ".join(f"{k}={v}" for k, v in sorted(env.items())) or "static shapes"
    note = f" ({', '.join(guessed)} not given: taken as {DEFAULT_DIM})" if guessed else ""
    ratio = (lambda a, b: f"{a / b:.0%}" if b else "-")
    lines = [f"## Memory plan for {binding}{note}",
             f"  arena        {fmt_bytes(plan.arena_bytes):>12}",
             f"  no planning  {fmt_bytes(plan.unplanned_bytes):>12}  (sum of all buffers; arena is "
             f"{ratio(plan.arena_bytes, plan.unplanned_bytes)} of it)",
             f"  lower bound  {fmt_bytes(plan.lower_bound_bytes):>12}  (peak of live bytes in this order; arena is "
             f"{ratio(plan.arena_bytes, plan.lower_bound_bytes)} of it)",
             f"  in place     {len(plan.inplace)} buffer(s) written over a dying input",
             "  buffers (offset, bytes, live kernels, value):"]
    for b in sorted(life.buffers, key=lambda n: (plan.offsets[id(n)], life.first[id(n)])):
        end = "end" if id(b) in life.pinned else f"k{life.last[id(b)]}"
        lines.append(f"    {plan.offsets[id(b)]:>10}  {plan.sizes[id(b)]:>10}  k{life.first[id(b)]}..{end:<5} "
                     f"{name_of(b)} = {b.op} {b.dtype}{shape_str(b.shape)}")
    return lines


def report(fn_or_program, env: dict | None = None, dot: str | None = None) -> str:
    """A readable account of how a compiled function was optimized (optionally writing a Graphviz file)."""
    program = program_of(fn_or_program)
    stats = program.stats
    head = [f"# dlc program: {stats.get('nodes_before', len(program.graph))} nodes traced, "
            f"{len(program.graph)} after simplification, {len(program.kernels)} kernels, "
            f"{len(program.outputs)} output(s), {len(program.updates)} update(s)"]
    sections = [head, passes_section(program), kernels_section(program), refusals_section(program),
                memory_section(program, env)]
    if dot is not None:
        with open(dot, "w") as f:
            f.write(to_dot(program))
        sections.append([f"Graphviz file written to {dot}"])
    return "\n\n".join("\n".join(s) for s in sections) + "\n"


def to_dot(program: Program) -> str:
    """The fused graph in Graphviz: one cluster per kernel, sources and views outside any."""
    lines = ["digraph dlc {", "  rankdir=TB;", "  node [shape=box, fontname=monospace, fontsize=10];"]
    in_kernel = set()
    for k in program.kernels:
        anchor = f" ({k.anchor.op})" if k.anchor is not None else ""
        lines += [f"  subgraph cluster_{k.name} {{", f'    label="{k.name} [{k.kind}]{anchor}";',
                  "    style=rounded; color=steelblue;"]
        for n in k.nodes:
            if id(n) in in_kernel:  # recomputed in several kernels: drawn in the first
                continue
            in_kernel.add(id(n))
            bold = ", penwidth=2" if any(n is o for o in k.outputs) else ""
            lines.append(f'    n{n.serial} [label="{n.op}\\n{n.dtype}{shape_str(n.shape)}"{bold}];')
        lines.append("  }")
    for n in program.graph.nodes:
        if id(n) in in_kernel:
            continue
        style = "ellipse" if OPS[n.op].kind == SOURCE else "box, style=dashed"
        label = n.attr("name") or n.op
        lines.append(f'  n{n.serial} [shape={style}, label="{label}\\n{shape_str(n.shape)}"];')
    for n in program.graph.nodes:
        for i in n.inputs:
            lines.append(f"  n{i.serial} -> n{n.serial};")
    lines.append("}")
    return "\n".join(lines) + "\n"
