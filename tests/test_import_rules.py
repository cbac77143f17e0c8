"""The import rules of docs/architecture.md, checked on the source (every import, also those inside
functions; `if TYPE_CHECKING:` blocks are left out because they never run).

- No import circles among our modules.
- Layers: serving <- training <- export <- retraining, each importing only itself and the layers
  to its left; `sceneparse.cli` and `sceneparse.demo` sit on top, the other `sceneparse` modules
  (version, cpu, atomic) at the bottom and import none of ours.
- serving, training.config and training.datasets import no torch.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sceneparse", "training", "export", "serving", "retraining")
TOP = {"sceneparse.cli", "sceneparse.demo"}  # command dispatch and the demo: may import anything
# Which of our packages each layer may import (besides itself and the sceneparse leaves).
MAY_IMPORT = {
    "serving": set(),
    "training": {"serving"},
    "export": {"serving", "training"},
    "retraining": {"serving", "training", "export"},
    "sceneparse": set(),  # the leaves; TOP is exempt
}
# Lazy imports that cross a layer on purpose, each with its reason.
ALLOWED_CROSSINGS = {
    # `sceneparse predict --config CFG --checkpoint CKPT` runs a checkpoint in eager PyTorch; only
    # that path imports it (inside a function, with a clear error when torch is missing).
    ("serving.predict", "training.checkpoint_model"),
    ("serving.batch.job", "training.checkpoint_model"),
}
TORCH_FREE = ("serving", "training.config", "training.datasets")
TORCH = {"torch", "torchvision"}


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name `module` imports (and, for `from X import y`, also `X.y`)."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return names


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module -> our modules it imports, module -> every top-level package it imports)."""
    modules = _modules()
    ours: dict[str, set[str]] = defaultdict(set)
    tops: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for name in _imported_names(module, path):
            tops[module].add(name.split(".")[0])
            if name in modules and name != module:
                ours[module].add(name)
    return ours, tops


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_checker_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles(graph):
    ours, _ = graph
    assert _cycles(ours) == []


def test_layers(graph):
    ours, _ = graph
    wrong = []
    for module, imported in sorted(ours.items()):
        if module in TOP:
            continue
        layer = module.split(".")[0]
        for target in sorted(imported):
            other = target.split(".")[0]
            if other == layer or (module, target) in ALLOWED_CROSSINGS:
                continue
            if other == "sceneparse" and target not in TOP:
                continue  # the leaves: version, cpu, atomic
            if other not in MAY_IMPORT[layer]:
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_torch_free_packages(graph):
    _, tops = graph
    wrong = [f"{module} imports {sorted(tops[module] & TORCH)}" for module in sorted(tops)
             if module.startswith(TORCH_FREE) and tops[module] & TORCH]
    assert wrong == []


def test_every_package_is_seen(graph):
    ours, _ = graph
    assert {module.split(".")[0] for module in ours} == set(PACKAGES)
    assert "serving.pipeline" in ours["training.evaluate"]  # imports inside functions count too
    assert "training.evaluate" in ours["training.evaluate_deployed"]
