"""docs/ARCHITECTURE.md against the code: its import graph is the package's real one, its module index names
every module with its docstring's first sentence, and no two modules import each other at import time.

On a mismatch the test prints the block the page should hold (`python -m tests.test_architecture` prints both)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "nanochat"
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def modules() -> dict[str, Path]:
    """{'gpt': path, 'tasks.arc': path, ...}: every module of the package but its __init__ files."""
    return {".".join(p.relative_to(PKG).with_suffix("").parts): p
            for p in sorted(PKG.rglob("*.py")) if p.name != "__init__.py"}


def _imported(node: ast.AST, names: set[str]) -> set[str]:
    out = set()
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.name.startswith("nanochat."):
                out.add(a.name.removeprefix("nanochat."))
    elif isinstance(node, ast.ImportFrom) and node.module and (node.module == "nanochat" or node.module.startswith("nanochat.")):
        base = node.module.removeprefix("nanochat").lstrip(".")
        for a in node.names:
            full = f"{base}.{a.name}" if base else a.name
            out.add(full if full in names else base)
    return {m for m in out if m in names or m == "tasks"}


def edges(top_level_only: bool = False) -> set[tuple[str, str]]:
    """(importer, imported) between package modules; `tasks` stands for the tasks package's modules."""
    names = set(modules())
    group = lambda m: "tasks" if m.startswith("tasks.") else m  # noqa: E731
    out = set()
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else ast.walk(tree)
        for node in nodes:
            for dep in _imported(node, names):
                if dep != "common" and group(dep) != group(name):
                    out.add((group(name), group(dep)))
    return out


def summary(path: Path) -> str:
    """The first sentence of the module's docstring (of its first paragraph), on one line."""
    doc = (ast.get_docstring(ast.parse(path.read_text())) or "").strip()
    para = " ".join(doc.split("\n\n")[0].split())
    m = re.match(r"(.+?\.)(\s|$)", para)
    return (m.group(1) if m else para).replace("|", "\\|")


def graph_block() -> str:
    return "```mermaid\ngraph LR\n" + "".join(f"  {a} --> {b}\n" for a, b in sorted(edges())) + "```"


def index_block() -> str:
    rows = [f"| `{name}` | {summary(path)} |" for name, path in modules().items()]
    return "| module | what it does |\n|---|---|\n" + "\n".join(rows)


def _section(text: str, start: str, end: str) -> str:
    i = text.index(start)
    return text[i:text.index(end, i + len(start)) + len(end)]


def test_the_import_graph_on_the_page_is_the_real_one():
    doc = DOC.read_text()
    block = _section(doc, "```mermaid\ngraph LR\n", "```")
    drawn = set(re.findall(r"^  (\S+) --> (\S+)$", block, re.M))
    real = edges()
    assert drawn == real, (f"missing: {sorted(real - drawn)}\nnot imported: {sorted(drawn - real)}\n"
                           f"the page should hold:\n{graph_block()}")


def test_the_module_index_names_every_module_with_its_docstring():
    doc = DOC.read_text()
    assert index_block() in doc, f"the page should hold:\n{index_block()}"


def test_every_module_says_its_job_in_a_docstring():
    assert not [name for name, path in modules().items() if not summary(path)]


def test_no_import_circle_at_import_time():
    graph: dict[str, set[str]] = {}
    for a, b in edges(top_level_only=True):
        graph.setdefault(a, set()).add(b)
    seen, on_path = set(), []

    def visit(node):
        if node in on_path:
            raise AssertionError("import circle: " + " -> ".join(on_path[on_path.index(node):] + [node]))
        if node in seen:
            return
        seen.add(node)
        on_path.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        on_path.pop()

    for start in sorted(graph):
        visit(start)


if __name__ == "__main__":
    print(graph_block())
    print()
    print(index_block())
