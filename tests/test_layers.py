"""The layers of DESIGN.md, checked: imports point down only."""

from __future__ import annotations

import ast

import pytest

from tests_paths import ROOT

FORBIDDEN = {
    "engine": {"app", "jobs", "gradio", "huey", "sqlite_utils"},
    "jobs": {"app", "gradio"},
    "app": {"torch", "peft", "accelerate", "bitsandbytes", "huey", "sqlite_utils"},
}


def _imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_down_only(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in _imports(path):
            if name in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def _modules() -> dict[str, object]:
    """Every module of engine/, jobs/ and app/ by dotted name (a package by its own name)."""
    found = {}
    for package in FORBIDDEN:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            found[".".join(parts)] = path
    return found


def _targets(name: str, path, modules: dict) -> set[str]:
    """The project modules `name` imports anywhere in it (inside functions too): `from a.b
    import c` names a.b.c when that is a module, else a.b. A submodule's implicit import of its
    own package does not count; an explicit one does."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in modules else base)
    return {t for t in out if t in modules and t != name}


def test_no_import_cycles_anywhere_not_even_inside_functions():
    modules = _modules()
    graph = {name: _targets(name, path, modules) for name, path in modules.items()}
    cycles, done = [], set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            cycles.append(" -> ".join(trail[trail.index(node):] + [node]))
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, trail + [node])
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


def test_engine_packages_name_their_public_api():
    import importlib

    for package in ("engine.data", "engine.export"):
        module = importlib.import_module(package)
        assert module.__all__ and all(hasattr(module, n) for n in module.__all__), package


def test_the_engine_is_grouped_by_purpose():
    """engine/ holds a handful of packages named for what they do, each mapped by its
    __init__'s docstring (every module of the package named there), and few loose modules."""
    top = sorted(p.name for p in (ROOT / "engine").iterdir() if p.name != "__pycache__")
    assert top == ["__init__.py", "config.py", "data", "evaluation", "export", "models",
                   "settings.py", "training"], top
    for package in ("data", "evaluation", "export", "models", "training"):
        folder = ROOT / "engine" / package
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8")))
        assert doc, f"engine/{package}/__init__.py has no map"
        unnamed = [p.stem for p in folder.glob("*.py") if p.stem != "__init__"
                   and f"engine.{package}.{p.stem}" not in doc and f"{p.stem}.py" not in doc]
        assert not unnamed, f"engine/{package}/__init__.py does not name {unnamed}"
