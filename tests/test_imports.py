"""The import structure: no cycles, every analysis module importable on its own, the analysis
importing nothing of burnlab but the run store's layout and file primitives and the W&B mirror's
keys, and the config schemas importing nothing of burnlab but errors and the store's layout."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"burnlab": ROOT / "src" / "burnlab"}


def module_name(package: str, path: Path) -> str:
    parts = (package, *path.relative_to(PACKAGES[package]).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(package, path): path for package, folder in PACKAGES.items() for path in folder.rglob("*.py")}


def imports(path: Path, known: set, top_level_only: bool) -> set:
    """The project modules `path` imports (`from a import b` counts a.b when that is a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # module level, including `if TYPE_CHECKING:` blocks
        nodes = [n for node in nodes for n in ([node] + (list(ast.walk(node)) if isinstance(node, ast.If) else []))]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known}


def test_imports_have_no_cycles_counting_those_inside_functions():
    """An import inside a function closes a cycle as surely as one at the top, only later."""
    known = modules()
    graph = {name: imports(path, set(known), top_level_only=False) - {name} for name, path in known.items()}
    for name in graph:  # a package imports its own __init__ on the way: not an edge back
        graph[name] = {other for other in graph[name] if not name.startswith(other + ".")}
    visiting, done, cycles = [], set(), []

    def visit(name):
        if name in visiting:
            cycles.append(visiting[visiting.index(name) :] + [name])
            return
        if name in done:
            return
        visiting.append(name)
        for other in sorted(graph[name]):
            visit(other)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    assert not cycles, " ; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_analysis_imports_no_training_code():
    known = modules()
    # the package folders themselves (their __init__ is empty), the run store's layout and file
    # primitives, and the W&B mirror's key map and key rule
    allowed = {
        "burnlab",
        "burnlab.store",
        "burnlab.store.files",
        "burnlab.store.layout",
        "burnlab.dashboards",
        "burnlab.dashboards.keys",
        "burnlab.dashboards.wandb_key",
    }
    for name, path in known.items():
        if name.startswith("burnlab.analysis"):
            used = {m for m in imports(path, set(known), top_level_only=False) if not m.startswith("burnlab.analysis")}
            assert used <= allowed, (name, used - allowed)


@pytest.mark.parametrize("module", sorted(m for m in modules() if m.startswith("burnlab.analysis")))
def test_each_analysis_module_imports_alone_in_a_fresh_interpreter(module):
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_schemas_reach_neither_the_analysis_nor_the_toy_world():
    known = modules()
    used = imports(known["burnlab.config.schema"], set(known), top_level_only=False)
    assert used <= {"burnlab", "burnlab.errors", "burnlab.store", "burnlab.store.layout", "burnlab.store.files"}, used
