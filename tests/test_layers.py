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
