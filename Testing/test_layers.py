"""The package's layers stay layered: every module imports on its own, no module-level import cycles, and the
allowed-import rule between layers holds (lazy imports inside functions included)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("medsam3_core", "training")

#: layer -> layers it must never import. Layers: io (files in and out), model (weights), engine (inference),
#: segmenters/cli/server/viewer (front-ends); the core's top-level modules (errors, segmenter, plan, windows, …) are
#: the shared vocabulary every layer may use.
FRONT_ENDS = ("medsam3_core.segmenters", "medsam3_core.cli", "medsam3_core.server", "medsam3_core.viewer")
FORBIDDEN = {
    "medsam3_core.io": ("medsam3_core.engine", "medsam3_core.model", *FRONT_ENDS),
    "medsam3_core.model": ("medsam3_core.engine", *FRONT_ENDS),
    "medsam3_core.engine": FRONT_ENDS,
    "medsam3_core.errors": ("medsam3_core.io", "medsam3_core.engine", "medsam3_core.model", *FRONT_ENDS),
    "medsam3_core.progress": ("medsam3_core.io", "medsam3_core.engine", "medsam3_core.model", *FRONT_ENDS),
    "medsam3_core.segmenter": ("medsam3_core.engine", "medsam3_core.model", *FRONT_ENDS),
    "medsam3_core.plan": ("medsam3_core.engine", "medsam3_core.model", *FRONT_ENDS),
    "medsam3_core.windows": ("medsam3_core.engine", "medsam3_core.model", *FRONT_ENDS),
    "medsam3_core.prompts": ("medsam3_core.engine", "medsam3_core.model", *FRONT_ENDS),
    "medsam3_core": ("training",),
}
#: Only these may import the viewer (it needs Qt): the viewer itself and the console script that starts it.
VIEWER_IMPORTERS = ("medsam3_core.viewer", "medsam3_core.cli.main")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Project modules imported by ``path`` (not under ``if TYPE_CHECKING``; functions' bodies unless
    ``top_level_only``)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if top_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(child, ast.Import):
                names.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names.add(child.module)
                names.update(f"{child.module}.{a.name}" for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {n for n in names if n.split(".")[0] in PACKAGES}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_every_module_imports_in_a_fresh_interpreter():
    modules = [m for m in _modules() if not m.endswith("__main__")]
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def test_no_module_level_import_cycles():
    modules = _modules()
    graph = {m: {n for n in _imports(p, top_level_only=True) if n in modules and n != m} for m, p in modules.items()}
    for module in graph:  # "import a.b" also runs a/__init__, but a package importing its own modules is no cycle
        graph[module] = {n for n in graph[module] if not _within(module, n)}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)


def test_layers_import_only_downwards():
    wrong = []
    for module, path in _modules().items():
        imported = _imports(path, top_level_only=False)
        for layer, forbidden in FORBIDDEN.items():
            if not _within(module, layer):
                continue
            wrong += [f"{module} imports {name}" for name in imported for f in forbidden if _within(name, f)]
        if not any(_within(module, v) for v in VIEWER_IMPORTERS):
            wrong += [f"{module} imports {n}" for n in imported if _within(n, "medsam3_core.viewer")]
    assert not wrong, "\n".join(sorted(set(wrong)))
