"""The layout docs/development.md draws, checked on the source: which package may import which,
no import cycle, one job per module (none much over 400 lines), shortener_project/ holding only
the project's configuration, and the benchmarks built on testkit/, not on the test suite.

Read from the files with `ast` (nothing is imported), so it needs no service: an import inside
a function counts like one at the top, since it ties the two modules together just the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from testkit import ROOT

PACKAGES = ("links", "redirects", "topics", "runtime", "shortener_project", "testkit")
# Which of the project's packages each one may import (its own always). topics/ is the contract
# between the roles: it knows neither. runtime/ is what every process runs on.
MAY_IMPORT = {
    "topics": {"runtime"},
    "runtime": {"topics"},
    "links": {"topics", "runtime"},
    "redirects": {"topics", "runtime"},
    # The project's configuration names the apps' entry points (URLconfs, the ASGI app).
    "shortener_project": {"links", "redirects", "topics", "runtime"},
    "testkit": {"links", "redirects", "topics", "runtime"},
}
SIZE_LIMIT = 420  # lines: "about 400", with room for a docstring that grows by a paragraph
CONFIGURATION = {"__init__.py", "settings.py", "roles.py", "urls_master.py", "urls_replica.py",
                 "asgi.py", "wsgi.py"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                found[_module_name(path)] = path
    return found


SOURCES = _sources()


def _imports(path: Path) -> set[str]:
    """The project's modules that `path` imports, wherever the import statement is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from topics import links` imports the module topics.links
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name in SOURCES}


GRAPH = {module: _imports(path) - {module} for module, path in SOURCES.items()}


def test_each_package_imports_only_what_the_layout_allows():
    wrong = []
    for module, imported in GRAPH.items():
        package = module.split(".")[0]
        for name in imported:
            other = name.split(".")[0]
            if other != package and other not in MAY_IMPORT[package]:
                wrong.append(f"{module} imports {name}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    # Depth-first search for a back edge; a package's __init__ importing its own submodules
    # (re-exports) is not a cycle of modules that depend on each other.
    def edges(module: str) -> set[str]:
        return {name for name in GRAPH[module]
                if not (SOURCES[module].name == "__init__.py" and name.startswith(module + "."))}

    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for name in sorted(edges(module)):
            if state.get(name) == 1:
                cycles.append(" -> ".join(path[path.index(name):] + [name]))
            elif name not in state:
                visit(name, path + [name])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("package", ["links", "redirects", "topics", "runtime",
                                     "shortener_project"])
def test_no_module_is_much_over_400_lines(package):
    long = {str(path.relative_to(ROOT)): n for module, path in SOURCES.items()
            if module.split(".")[0] == package
            and (n := len(path.read_text().splitlines())) > SIZE_LIMIT}
    assert not long, long


def test_shortener_project_holds_only_configuration():
    files = {path.name for path in (ROOT / "shortener_project").glob("*.py")}
    assert files <= CONFIGURATION, files - CONFIGURATION


def test_benchmarks_build_on_testkit_not_on_the_test_suite():
    users = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "bench").glob("*.py"))
             if any(name == "tests" or name.startswith("tests.")
                    for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, (ast.Import, ast.ImportFrom))
                    for name in ([a.name for a in node.names] if isinstance(node, ast.Import)
                                 else [node.module or ""]))]
    assert not users, users
