"""The package's import graph has no cycles: every module of spine_app is parsed (not imported) and
each import of another spine_app module, at module level or inside a function, is an edge."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "spine_app"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the spine_app modules it imports (``from pkg import name`` counts pkg.name when that
    is a module, else pkg); resources/ (data a wheel carries) holds no modules of its own."""
    files = {
        module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "resources" not in p.relative_to(PACKAGE).parts
    }
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the containing package, up level - 1
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    targets.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in files else source)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_graph_sees_the_package() -> None:
    graph = import_graph()
    assert "spine_app.bundle" in graph and "spine_app.inference.run" in graph
    assert "spine_app.bundle" in graph["spine_app.inference.view_guess"]  # function-level imports count
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_library_modules_leave_the_matplotlib_backend_alone(tmp_path: Path) -> None:
    """Importing the report modules must not switch a user's backend (e.g. in a notebook); their
    figures still render to PNG."""
    import subprocess
    import sys

    code = (
        "import matplotlib; matplotlib.use('pdf')\n"
        "import spine_app.engines.report, spine_app.robustness.report, spine_app.robustness.experiments\n"
        "import spine_app.bench.compare_report, spine_app.explain.embedding\n"
        "from spine_app.viz.figures import save_figure, subplots\n"
        "assert matplotlib.get_backend() == 'pdf', matplotlib.get_backend()\n"
        "fig, axes = subplots(1, 2, figsize=(4, 2)); axes[0].plot([0, 1], [1, 0])\n"
        f"save_figure(fig, {str(tmp_path / 'f.png')!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
