"""The library stands in layers: a module imports only from its own layer or those below, and no
imports go round in a circle, lazy ones (inside functions) included.

Read from the source with ast, nothing imported. ``python tests/test_layers.py [ROOT]`` prints the
layers with their modules and line counts, and any cycles, for the tree at ROOT (default: this
repository).
"""

from __future__ import annotations

import ast
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "workflow_lib"

# Bottom to top; a name is a module or a package of workflow_lib (all of its modules).
LAYERS: list[tuple[str, list[str]]] = [
    ("base: errors, values, files appearing whole", ["__init__", "errors", "domain", "atomic", "watchdog", "secrets"]),
    ("formats, geometry, the job's process", ["gtiff", "vrt", "coords", "statistics", "runtime"]),
    ("sources: what an input is, from its header", ["sources"]),
    ("config", ["config", "schema_docs"]),
    ("planning: grid, footprints, engine choice, settings, batches, plan", ["planning"]),
    ("engines: one tile, a batch of tiles", ["engines"]),
    ("outputs: mosaics, stack", ["mosaics"]),
    ("status: the database, its events and queries", ["status"]),
    ("views and controller", ["views", "controller"]),
    ("entry points: job adapters, command line, Snakemake patches, example", ["jobs", "__main__", "snakemake_fixes",
                                                                              "example"]),
]


def modules(root: str) -> dict[str, str]:
    """Every module of the package under ``root``: dotted name -> file."""
    out = {}
    base = os.path.join(root, PACKAGE)
    for folder, _, files in os.walk(base):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


def imports(path: str, module: str, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its file (lazy imports too)."""
    found = set()
    is_package = path.endswith("__init__.py")
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                parts = module.split(".")
                parts = parts if is_package else parts[:-1]
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # "from pkg import mod" imports the module pkg.mod; "from mod import name" imports mod.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found.update(n for n in names if n in known and n != module)
    return found


def graph(root: str) -> dict[str, set[str]]:
    mods = modules(root)
    known = set(mods)
    return {m: imports(p, m, known) for m, p in mods.items()}


def layer_of(module: str) -> int:
    name = module.removeprefix(PACKAGE).lstrip(".") or "__init__"
    for i, (_, members) in enumerate(LAYERS):
        for member in members:
            if name == member or name.startswith(member + "."):
                return i
    raise KeyError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def package_of(module: str) -> str:
    """The top-level part of the library a module belongs to: workflow_lib.engines, workflow_lib.errors."""
    return ".".join(module.split(".")[:2])


def package_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, targets in edges.items():
        out.setdefault(package_of(m), set()).update(package_of(t) for t in targets if package_of(t) != package_of(m))
    return out


def test_every_module_is_in_a_layer():
    for module in graph(REPO):
        layer_of(module)  # raises for a module that no layer names


def test_no_import_goes_up_a_layer():
    upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
              for m, targets in graph(REPO).items() for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_no_imports_go_round_in_a_circle():
    edges = graph(REPO)
    assert cycles(edges) == [], f"modules importing each other: {cycles(edges)}"
    assert cycles(package_graph(edges)) == [], f"packages importing each other: {cycles(package_graph(edges))}"


def test_the_library_never_imports_its_logger_plugin():
    # The plugin (snakemake_logger_plugin_tilestatus) sits above the library and imports from it.
    for path in modules(REPO).values():
        assert "snakemake_logger_plugin" not in open(path).read(), path


def report(root: str) -> str:
    edges = graph(root)
    lines = []
    for i, (title, _) in enumerate(LAYERS):
        members = sorted(m for m in edges if _safe_layer(m) == i)
        counts = {m: sum(1 for _ in open(p)) for m, p in modules(root).items() if m in members}
        lines.append(f"{i}. {title}: {sum(counts.values())} lines")
        lines += [f"     {m} ({counts[m]})" for m in members]
    unplaced = sorted(m for m in edges if _safe_layer(m) is None)
    if unplaced:
        lines.append(f"in no layer: {', '.join(unplaced)}")
    lines.append(f"module cycles: {cycles(edges) or 'none'}")
    lines.append(f"package cycles: {cycles(package_graph(edges)) or 'none'}")
    up = [f"{m} -> {t}" for m, ts in edges.items() for t in ts
          if _safe_layer(m) is not None and _safe_layer(t) is not None and _safe_layer(t) > _safe_layer(m)]
    lines.append(f"imports going up a layer: {sorted(up) or 'none'}")
    return "\n".join(lines)


def _safe_layer(module: str) -> int | None:
    try:
        return layer_of(module)
    except KeyError:
        return None


if __name__ == "__main__":
    print(report(sys.argv[1] if len(sys.argv) > 1 else REPO))
