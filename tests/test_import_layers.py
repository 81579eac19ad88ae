"""The package's import graph: no cycles, and no arrow from a lower layer to a higher one (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "dlc"

# Lowest first; a module may import from its own layer and the layers below it. The first prefix that
# matches a module's name places it, so a longer prefix is listed before a shorter one it starts with.
# Ops and the DSL share a layer: an op's gradient rule is written with DSL functions, beside the op (and the
# collectives' gradients with dlc.distributed's, which builds collective nodes and holds the MPI world).
LAYERS = [
    ("core", ["dlc.errors", "dlc.graph", "dlc.program", "dlc.store"]),
    ("dsl", ["dlc.ops", "dlc.tensor", "dlc.functional", "dlc.autodiff", "dlc.distributed"]),
    ("compiler", ["dlc.passes", "dlc.codegen", "dlc.kernels", "dlc.cache"]),
    ("backends", ["dlc.runtime", "dlc.compiler"]),
    ("libraries", ["dlc.optim", "dlc.nn", "dlc.train", "dlc.serialize", "dlc.export", "dlc.inspect", "dlc.bisect",
                   "dlc.onnx"]),
    ("interface", ["dlc.cli", "dlc.__main__", "dlc"]),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def layer_of(name: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if name == p or name.startswith(p + "."):
                return rank
    raise AssertionError(f"{name} is in no layer of tests/test_import_layers.py: add it to LAYERS and the docs")


def imports(path: Path, name: str, modules: set[str], module_level: bool):
    """The package modules `name` imports (only its top-level statements when module_level)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level else list(ast.walk(tree))
    is_pkg = path.name == "__init__.py"
    for node in nodes:
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = name if is_pkg else name.rsplit(".", 1)[0]
            if node.level:
                parts = base.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules]
            # at module level `from pkg import sub` also counts as importing pkg (its __init__ may still be
            # running): modules import each other by their own names. Inside a function it is just sub.
            targets = subs if subs and len(subs) == len(node.names) and not module_level else [mod] + subs
        for t in targets:
            if t in modules and t != name:
                yield t


def graph(module_level: bool) -> nx.DiGraph:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    g = nx.DiGraph()
    for name, path in paths.items():
        g.add_node(name)
        for t in imports(path, name, set(paths), module_level):
            g.add_edge(name, t)
    return g


def test_no_import_cycles():
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph(module_level=True)) if len(c) > 1]
    assert not cycles, f"module-level import cycles: {cycles}"


def test_no_import_from_a_higher_layer():
    """Imports inside functions count too: late binding hides a cycle, it does not remove the dependency."""
    upward = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
              for a, b in graph(module_level=False).edges if layer_of(b) > layer_of(a)]
    assert not upward, "imports from a higher layer:\n" + "\n".join(sorted(upward))


def test_every_module_has_a_layer():
    for name in graph(module_level=True).nodes:
        layer_of(name)


# The pipeline runs one way: the compiler (dlc/compiler.py) optimizes, and what renders and runs the result
# receives a finished Program. Renderers and backends never call back into the optimizer.
DOWNSTREAM_OF_THE_OPTIMIZER = ("dlc.codegen", "dlc.runtime", "dlc.kernels")


def test_renderers_and_backends_do_not_import_the_optimizer():
    back = [f"{a} imports {b}" for a, b in graph(module_level=False).edges
            if a.startswith(DOWNSTREAM_OF_THE_OPTIMIZER) and (b == "dlc.passes" or b.startswith("dlc.passes."))]
    assert not back, "the pipeline runs backwards:\n" + "\n".join(sorted(back))
