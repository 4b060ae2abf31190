"""Imports run one way: apps (``cli``, ``demo``, ``integrations``) -> stages -> shared modules, and from one
stage only to the stages after it (planning -> training -> inference -> postprocessing -> evaluation), so
that the stage packages form no import cycle. Lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medseg"
STAGES = ("planning", "training", "inference", "postprocessing", "evaluation")
APPS = ("__main__", "cli", "demo", "integrations")


def _layer(module: str) -> tuple[int, str]:
    """(rank, name); a module may import the modules of its own rank and below: shared 0 (``medseg``
    itself too), evaluation 1 up to planning 5, apps 6."""
    part = module.split(".")[1] if "." in module else ""
    if part in APPS:
        return len(STAGES) + 1, "app"
    if part in STAGES:
        return len(STAGES) - STAGES.index(part), part
    return 0, "shared"


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _medseg_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "medseg":
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "medseg"]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_run_from_apps_to_stages_to_shared(path: Path) -> None:
    rank, layer = _layer(_module_name(path))
    wrong = []
    for line, target in _medseg_imports(path):
        target_rank, target_layer = _layer(target)
        if target_rank > rank:
            wrong.append(f"line {line}: {layer} imports {target} ({target_layer})")
    assert wrong == []


def test_every_stage_is_a_package() -> None:
    assert [s for s in STAGES if not (PACKAGE / s / "__init__.py").is_file()] == []
