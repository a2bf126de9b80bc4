"""The layering rules of docs/architecture.md, checked on the source: imports go one way, the core has no Qt."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_alnet"
#: Bottom up; a module may import its own layer or a lower one.
LAYERS = ("model", "io", "engine", "training", "top")
TOP_MODULES = ("api", "cli", "launch", "terminal", "widgets", "__init__")
GUI_PACKAGES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "vispy")
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 250


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _dotted(path: Path) -> list[str]:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _layer(parts: list[str]) -> str:
    if not parts or parts[0] in TOP_MODULES:
        return "top"
    if parts[0] not in LAYERS:
        raise AssertionError(f"napari_alnet.{'.'.join(parts)} sits outside the layers {LAYERS[:-1]}: move it into one")
    return parts[0]


def _imported(path: Path, node: ast.ImportFrom | ast.Import) -> list[list[str]]:
    """The napari_alnet modules an import statement names, as dotted parts below the package."""
    if isinstance(node, ast.Import):
        return [n.name.split(".")[1:] for n in node.names if n.name.split(".")[0] == "napari_alnet"]
    if node.level == 0:
        if not (node.module or "").startswith("napari_alnet"):
            return []
        base = node.module.split(".")[1:]
    else:
        package = list(path.relative_to(PACKAGE).parts[:-1])
        base = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
    return [[*base, alias.name] if not node.module else base for alias in node.names]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_the_layers_only(path):
    here = _layer(_dotted(path) if path.name != "__init__.py" else list(path.relative_to(PACKAGE).parts[:-1]))
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        for target in _imported(path, node):
            there = _layer(target)
            assert LAYERS.index(there) <= LAYERS.index(here), (
                f"{path.relative_to(PACKAGE)}:{node.lineno} ({here}) imports napari_alnet.{'.'.join(target)} "
                f"({there}), a higher layer")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_project_import_inside_a_function(path):
    """Imports inside functions hide cycles; project modules are imported at the top of the module."""
    for func in ast.walk(ast.parse(path.read_text())):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    assert not _imported(path, node) and not (isinstance(node, ast.ImportFrom) and node.level), (
                        f"{path.relative_to(PACKAGE)}:{node.lineno}: import inside {func.name}()")


@pytest.mark.parametrize("path", [p for p in _modules() if _dotted(p)[:1] != ["widgets"]],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_core_imports_no_gui(path):
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([n.name for n in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        for name in names:
            assert name.split(".")[0] not in GUI_PACKAGES, f"{path.relative_to(PACKAGE)}:{node.lineno} imports {name}"


def test_public_entry_points_only_re_export():
    for name in ("api.py", "__init__.py"):
        tree = ast.parse((PACKAGE / name).read_text())
        defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                   and n.name != "__getattr__"]  # PEP 562: the package re-exports the API lazily (engine/threads.py)
        assert not defined, f"{name} defines {defined}; define them in their layer and re-export"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_functions_are_short(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, (
                f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}() has {length} lines "
                f"(at most {MAX_FUNCTION_LINES}: split it)")


def _relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


@pytest.mark.parametrize("path", _modules(), ids=_relative)
def test_classes_are_short(path):
    """Count each class's lines (decorators excluded); a class past the limit holds several jobs: split it."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_CLASS_LINES, (
                f"{_relative(path)}:{node.lineno} class {node.name} has {length} lines (at most {MAX_CLASS_LINES}: "
                "split it into classes with one job each)")


@pytest.mark.parametrize("path", _modules(), ids=_relative)
def test_no_global_statement(path):
    """Session state lives on objects (a registry instance, a dock's own folder), never in rebound module names."""
    found = [node.lineno for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Global)]
    assert not found, f"{_relative(path)}:{found[0]}: a global statement; keep the state on an object instead"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_is_described_in_the_architecture_page(path):
    page = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    name = path.relative_to(PACKAGE).as_posix()
    assert f"| `{name}` |" in page, (
        f"{name} is not in docs/architecture.md's module table: add a row '| `{name}` | what it holds |'")
