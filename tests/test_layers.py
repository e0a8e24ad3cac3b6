"""One-way layers: no import cycle between the parts of worldbagel, and every function-local import says why.

A *part* is a top-level subpackage (worldbagel.model, inference, data, train, eval, commands, envs, policies,
...) or a top-level module (worldbagel.rollout, worldbagel.cli, ...). Every import statement of every module
counts, function-local ones included: a cycle hidden inside a function is still a cycle. A function-local
import stays only for an optional dependency or a real import cost, and says which with a `# lazy: <reason>`
comment on its own line or on a comment line directly above its block of imports.

`python tests/test_layers.py` prints the part graph, the cycles and the function-local imports.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

PACKAGES = ("worldbagel", "worldbagel.envs", "worldbagel.policies")
"""Package roots: envs/ and policies/ live at the top of the repo and install inside worldbagel."""

LAZY = re.compile(r"#\s*lazy:\s*\S")


@dataclass(frozen=True)
class Import:
    module: str
    """The importing module (dotted name)."""
    path: Path
    line: int
    targets: tuple[str, ...]
    """Dotted names the statement may load (a `from m import x` lists m and m.x)."""
    local: bool
    """Inside a function (runs when the function is called, not when the module is imported)."""
    explained: bool
    """Carries a `# lazy: <reason>` comment (on its lines or directly above its import block)."""

    def where(self) -> str:
        path = self.path.relative_to(Path.cwd()) if self.path.is_relative_to(Path.cwd()) else self.path
        return f"{path}:{self.line}"


def package_folders(packages=PACKAGES) -> dict[str, Path]:
    """Folder of each package root, as installed (an editable install maps envs/ and policies/ in)."""
    return {name: Path(find_spec(name).origin).parent for name in packages}


def modules(folders: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package folders."""
    out: dict[str, Path] = {}
    for package, folder in folders.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def imports(name: str, path: Path) -> list[Import]:
    """Every import statement of one module."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    is_package = path.name == "__init__.py"
    statements: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def walk(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                statements.append((child, local))
            walk(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    import_lines = {i for s, _ in statements for i in range(s.lineno, s.end_lineno + 1)}
    out = []
    for stmt, local in statements:
        if isinstance(stmt, ast.Import):
            targets = tuple(a.name for a in stmt.names)
        else:
            base = stmt.module or ""
            if stmt.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - stmt.level + 1]
                base = ".".join([*package, *([stmt.module] if stmt.module else [])])
            targets = (base, *(f"{base}.{a.name}" for a in stmt.names))
        own = any(LAZY.search(lines[i - 1]) for i in range(stmt.lineno, stmt.end_lineno + 1))
        above = stmt.lineno - 1
        while above in import_lines:  # the comment above a block of imports covers the block
            above -= 1
        explained = own or (
            above >= 1 and lines[above - 1].strip().startswith("#") and bool(LAZY.search(lines[above - 1]))
        )
        out.append(Import(name, path, stmt.lineno, targets, local, explained))
    return out


def part_of(module: str, top: str, parts: set[str]) -> str | None:
    """The part a dotted name belongs to (`worldbagel.eval.report` -> `eval`), None outside the package."""
    pieces = module.split(".")
    if pieces[0] != top or len(pieces) < 2 or pieces[1] not in parts:
        return None
    return pieces[1]


def part_graph(found: dict[str, Path], top: str = "worldbagel") -> dict[str, dict[str, list[Import]]]:
    """part -> {imported part: the statements that import it}."""
    parts = {name.split(".")[1] for name in found if name.count(".") >= 1}
    graph: dict[str, dict[str, list[Import]]] = {p: {} for p in parts}
    for name, path in found.items():
        source = part_of(name, top, parts)
        if source is None:
            continue
        for imp in imports(name, path):
            for target in {part_of(t, top, parts) for t in imp.targets} - {None, source}:
                graph[source].setdefault(target, []).append(imp)
    return graph


def cycles(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """The strongly connected groups of more than one part (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def describe_cycle(group: list[str], graph: dict[str, dict[str, list[Import]]]) -> str:
    edges = [
        f"  {a} -> {b}: "
        + ", ".join(f"{i.where()}{' (in a function)' if i.local else ''}" for i in graph[a][b])
        for a in group
        for b in sorted(graph[a])
        if b in group
    ]
    return "cycle between " + ", ".join(group) + ":\n" + "\n".join(edges)


def unexplained_local_imports(found: dict[str, Path]) -> list[Import]:
    return [i for name, path in found.items() for i in imports(name, path) if i.local and not i.explained]


# ------------------------------------------------------------------------------------------------ tests
def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return modules({"pkg": root / "pkg"})


def test_the_checks_find_a_hidden_cycle_and_an_unexplained_local_import(tmp_path):
    """The checks on a small package: a cycle closed by a function-local import is found, and so is a
    function-local import without a reason; a reason above the import block covers the whole block."""
    found = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low/__init__.py": "",
            "pkg/low/a.py": "def f():\n    from pkg.high import b  # hidden back edge\n    return b\n",
            "pkg/high/__init__.py": "",
            "pkg/high/b.py": "from pkg.low import a\n",
            "pkg/top.py": (
                "import json\n\n\ndef g():\n    # lazy: optional dependency (demo extra)\n"
                "    import sqlite3\n    import csv\n\n    import zlib  # lazy: real import cost\n"
                "    return json, sqlite3, csv, zlib\n"
            ),
            "pkg/side.py": "from . import top\n",
        },
    )
    graph = part_graph(found, top="pkg")
    assert cycles(graph) == [["high", "low"]]
    assert graph["side"] == {"top": graph["side"]["top"]}  # a relative import resolves to its part
    assert [i.local for i in graph["low"]["high"]] == [True]
    assert "pkg/low/a.py:2 (in a function)" in describe_cycle(["high", "low"], graph)
    flagged = sorted((i.path.name, i.line) for i in unexplained_local_imports(found))
    assert flagged == [("a.py", 2)]  # sqlite3 and csv: the comment above their block; zlib: its own


def test_no_cycle_between_the_parts_of_worldbagel():
    graph = part_graph(modules(package_folders()))
    assert {"model", "inference", "data", "train", "eval", "commands", "envs", "policies"} <= set(graph)
    found = cycles(graph)
    assert not found, "\n".join(describe_cycle(group, graph) for group in found)


def test_every_function_local_import_says_why_it_is_local():
    """Function-local imports are kept for optional dependencies and real import costs only, each with
    `# lazy: <reason>`; anything else belongs at the top of the module."""
    bad = unexplained_local_imports(modules(package_folders()))
    assert not bad, "function-local imports without a `# lazy: <reason>` comment:\n" + "\n".join(
        f"  {i.where()}: {', '.join(i.targets[:1])}" for i in bad
    )


if __name__ == "__main__":
    found = modules(package_folders())
    graph = part_graph(found)
    for part in sorted(graph):
        print(f"{part} -> {', '.join(sorted(graph[part])) or '-'}")
    for group in cycles(graph):
        print(describe_cycle(group, graph))
    local = [i for name, path in found.items() for i in imports(name, path) if i.local]
    print(f"{len(local)} function-local imports, {sum(not i.explained for i in local)} without a reason")
    if "-v" in sys.argv:
        for i in local:
            print(f"  {i.where()}  {'ok ' if i.explained else 'BAD'} {i.targets[0]}")
