"""nst_core's layout: no import cycles at any depth, no stage importing a later one, no imports inside functions
(except the optional dependencies), each checked from the source with ``ast`` and shown to fail on planted faults."""
import ast
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "nst_core"
#: The stages of the data flow, top to bottom (nst_core/__init__.py's docstring): a module may import its own
#: stage and those before it, never a later one.
STAGES = ("errors", "process", "inputs", "spec", "network", "losses", "objective", "optim", "schedule", "outputs",
          "api", "compare", "hosts", "jobs", "video", "serve")
#: Imports allowed inside functions: optional dependencies, imported where they are needed.
OPTIONAL = ("matplotlib", "torch", "export")


def modules(root: Path) -> dict:
    """{dotted module name: file} of the package at ``root`` (``nst_core.x.y``)."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _target(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (its ``from`` part)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(root: Path) -> tuple[dict, list]:
    """({module: set of package modules it imports, each name resolved to a submodule where it is one},
    [(module, line, what) for imports inside functions that are not optional])."""
    mods = modules(root)
    graph, inner = {}, []
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        edges = set()
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nested = {id(n) for f in functions for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _target(name, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            if id(node) in nested and not all(t.split(".")[0] in OPTIONAL for t in targets):
                inner.append((name, node.lineno, ", ".join(targets)))
            edges |= {t for t in targets if t in mods and t != name}
        graph[name] = edges
    return graph, inner


def cycles(graph: dict) -> list:
    """Every module that reaches itself through imports, with one such path."""
    found = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    found.append(path + [start])
                    stack.clear()
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    return found


def upward(graph: dict) -> list:
    """(module, imported module) pairs where the import goes to a later stage of ``STAGES``."""
    def stage(module: str) -> int:
        parts = module.split(".")
        return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else -1

    return [(a, b) for a, targets in sorted(graph.items()) for b in sorted(targets)
            if stage(a) >= 0 and stage(b) > stage(a)]


def test_no_cycles_no_upward_imports_no_imports_in_functions():
    graph, inner = imports(PACKAGE)
    assert len(graph) > 30  # the whole package was read
    assert cycles(graph) == []
    assert upward(graph) == []
    assert inner == []


def test_every_module_is_in_a_stage():
    graph, _ = imports(PACKAGE)
    top = {m.split(".")[1] for m in graph if m.count(".") >= 1}
    assert top <= set(STAGES), top - set(STAGES)


def test_the_checks_fail_on_planted_faults(tmp_path):
    """A copy of nst_core with a planted cycle (spec.presets imports api, which imports spec), a planted upward
    import and a planted import inside a function: each check reports exactly the planted fault."""
    copy = tmp_path / "nst_core"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    presets = copy / "spec" / "presets.py"
    presets.write_text(presets.read_text() + "\nfrom ..api import run  # planted\n")
    graph, _ = imports(copy)
    found = cycles(graph)
    assert found and any("nst_core.spec.presets" in c and "nst_core.api" in c for c in found)
    assert ("nst_core.spec.presets", "nst_core.api") in upward(graph)

    shutil.rmtree(copy)
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    losses = copy / "losses" / "terms.py"
    losses.write_text(losses.read_text() + "\n\ndef planted():\n    from ..optim import lbfgs\n    return lbfgs\n")
    graph, inner = imports(copy)
    assert cycles(graph) == [] and upward(graph) == [("nst_core.losses.terms", "nst_core.optim")]
    assert [(m, what) for m, _, what in inner] == [("nst_core.losses.terms", "nst_core.optim")]


@pytest.mark.parametrize("name", ["stylize", "invert", "texture", "run", "prepare", "Spec", "resolve"])
def test_public_names_stay_importable(name):
    import nst_core

    assert callable(getattr(nst_core, name))
