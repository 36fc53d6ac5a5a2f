"""The package layers import only downwards, with no cycles (README "Project layout").

    utils < datasets < models < training | preprocess < interpretability < inference < root CLIs, benchmarks, scripts

``training`` and ``preprocess`` sit side by side and never import each other. ``inference`` (a run's
models applied to slides) stands beside ``interpretability`` (explanations of one model on one bag) one
step above it: prediction draws its heatmaps with interpretability, which never reads a run folder. Every
import counts, including the ones inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.paths import PROJECT as ROOT

LAYERS = {
    "utils": 0,
    "datasets": 1,
    "models": 2,
    "training": 3,
    "preprocess": 3,
    "interpretability": 4,
    "inference": 5,
}
TOP_LAYER = 6  # root CLIs, benchmarks/, scripts/
SIDE_BY_SIDE = {frozenset({"training", "preprocess"})}


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every project source file outside tests/."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in {"tests", ".git"} or any(p.startswith(".") for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_modules(path: Path, modules: dict[str, Path], own: str) -> set[str]:
    """Project modules that ``path`` imports (resolved to the longest known dotted prefix)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            candidate = ".".join(parts[:i])
            if candidate in modules:
                if candidate != own:
                    found.add(candidate)
                break
    return found


def layer_of(module: str) -> tuple[str, int]:
    top = module.split(".")[0]
    return top, LAYERS.get(top, TOP_LAYER)


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(path, modules, name) for name, path in modules.items()}


def test_imports_point_downwards():
    bad = []
    for module, targets in import_graph().items():
        top, layer = layer_of(module)
        for target in targets:
            target_top, target_layer = layer_of(target)
            if target_top == top and top in LAYERS:
                continue  # within one package (cycles are checked separately)
            if frozenset({top, target_top}) in SIDE_BY_SIDE or target_layer > layer:
                bad.append(f"{module} -> {target}")
            elif target_layer == layer and layer == TOP_LAYER and module.split(".")[0] != target_top:
                bad.append(f"{module} -> {target} (one entry point imports another)")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_utils_is_a_leaf():
    leaked = [
        f"{m} -> {t}"
        for m, ts in import_graph().items()
        if m.startswith("utils")
        for t in ts
        if not t.startswith("utils")
    ]
    assert not leaked, "utils/ imports project code:\n" + "\n".join(leaked)


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_every_package_is_found(package):
    assert any(name == package or name.startswith(package + ".") for name in project_modules())


# What prediction and explanation may read of training: the run config and the run folder's file names.
RUN_READERS = {"training.config", "training.results"}
TRAINS = {"inference.demo_run"}  # trains a demo run through training.experiment.run_experiment


def test_prediction_and_explain_import_no_training_internals():
    graph = import_graph()
    users = [m for m in graph if m.split(".")[0] == "inference" or m in {"predict", "explain"}]
    bad = [
        f"{m} -> {t}"
        for m in users
        if m not in TRAINS
        for t in graph[m]
        if t.split(".")[0] == "training" and t not in RUN_READERS
    ]
    assert users and not bad, "beyond training.config / training.results:\n" + "\n".join(sorted(bad))
