"""The package's structure: no import circles between its modules, and the run options that
``sfr run`` copies into the configuration named explicitly (no slicing of a tuple)."""

from __future__ import annotations

import ast
import dataclasses

from conftest import REPO

PACKAGE = REPO / "SFRSegmenterLib"


def module_name(path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path) -> set:
    """Modules of the package that ``path`` imports (at any depth of the file, names resolved)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rsplit(".", 1)[0]
            base = (base + "." + node.module if node.module else base) if node.level else (node.module or "")
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def graph() -> dict:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py") if "sample_data" not in p.parts}
    # an edge to a package's face (__init__) is not an edge to its modules
    return {m: {i for i in imports(p) if i in files and i != m} for m, p in files.items()}


def circles(edges: dict) -> list:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_circle():
    edges = graph()
    assert "SFRSegmenterLib.io.guard" in edges and edges["SFRSegmenterLib.run.pipeline"]
    # faces (__init__ re-exporting their modules) are left out: a module importing its package's
    # face is the package's own business
    faces = {m for m in edges if (PACKAGE.parent / m.replace(".", "/") / "__init__.py").exists()}
    inner = {m: e - faces for m, e in edges.items() if m not in faces}
    assert circles(inner) == []


def test_every_run_option_reaches_the_configuration_by_name():
    from SFRSegmenterLib.commands import run as run_cmd
    from SFRSegmenterLib.run.config import RunConfig

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert set(run_cmd.COPIED_OPTIONS) | set(run_cmd.PARSED_OPTIONS) == set(run_cmd.CONFIG_OPTIONS)
    assert set(run_cmd.COPIED_OPTIONS) <= fields
    assert set(run_cmd.PARSED_OPTIONS.values()) <= fields
