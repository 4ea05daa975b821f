"""The packages' layers point one way and no modules import each other: read from the source, so nothing runs.

`pipelines/` (model code) <- `domain/` (records, the wire view, errors) <- `deployments/` (Ray) <- `serve_app/`
(HTTP). `wan_client/` talks HTTP only. Every import counts, also those inside functions and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"pipelines": 0, "domain": 1, "deployments": 2, "serve_app": 3}
PACKAGES = [*LAYERS, "wan_client"]
FORBIDDEN = {"pipelines": {"ray", "fastapi", "starlette"}, "domain": {"ray", "torch", "fastapi", "starlette"},
             "deployments": {"fastapi", "starlette"}, "serve_app": {"torch", "diffusers"},
             "wan_client": {"ray", "torch", *LAYERS}}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    return {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
            for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _imports(path: Path, name: str) -> set[str]:
    """Every module `path` imports, absolute, as written (a from-import of a name gives its module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                package = name.split(".")[: -node.level if path.name != "__init__.py" else len(name.split("."))]
                base = ".".join([*package, base] if base else package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = _modules()
GRAPH = {name: {i for i in _imports(path, name) if i in MODULES and i != name} for name, path in MODULES.items()}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name: str) -> None:
    package = name.split(".")[0]
    tops = {i.split(".")[0] for i in _imports(MODULES[name], name)}
    assert not tops & FORBIDDEN[package], f"{name} imports {sorted(tops & FORBIDDEN[package])}"
    if package in LAYERS:
        upward = sorted(i for i in GRAPH[name] if LAYERS.get(i.split(".")[0], -1) > LAYERS[package])
        assert not upward, f"{name} ({package}) imports a layer above it: {upward}"


def test_no_import_cycle() -> None:
    """Depth-first over the module graph (a package's __init__ included); a back edge is a cycle."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_the_cycle_check_finds_a_cycle() -> None:
    """The check itself can fail: a made-up loop of three modules is found."""
    saved = dict(GRAPH)
    try:
        GRAPH.update({"a": {"b"}, "b": {"c"}, "c": {"a"}})
        with pytest.raises(AssertionError, match="a -> b -> c -> a"):
            test_no_import_cycle()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def test_no_test_module_imports_another() -> None:
    """Shared test code lives in `tests/support/` and `conftest.py`, never in a test module."""
    modules = {".".join(path.relative_to(ROOT).with_suffix("").parts): path
               for path in sorted((ROOT / "tests").rglob("test_*.py"))}
    offenders = {name: sorted(i for i in _imports(path, name) if i in modules) for name, path in modules.items()}
    assert not {k: v for k, v in offenders.items() if v}


@pytest.mark.parametrize("package", [*PACKAGES, "tests", "benchmarks"])
def test_modules_are_short(package: str) -> None:
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
