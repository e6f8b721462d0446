"""The layering rules of docs/architecture.md, checked on the source (no imports executed).

`make test` also runs `lint-imports` (the layers contract in pyproject.toml); these checks add
what import-linter does not: no import statement inside a function of the build, no import
cycle at all (imports inside functions counted), and no module over ~400 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build" / "trtserve_build"
MAX_LINES = 400
#: Every Python source tree the line limit applies to.
LINE_LIMITED = [BUILD, REPO / "serve", REPO / "client", REPO / "contract", REPO / "bench", REPO / "loadtest"]


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(root: Path, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(package module imported, line, inside a function) for each import of ``path``."""
    package = module_name(root, path)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                out.append((target, child.lineno, in_function))
                for alias in child.names:  # `from . import x` imports the module x
                    if f"{target}.{alias.name}" in known:
                        out.append((f"{target}.{alias.name}", child.lineno, in_function))
            visit(child, inner)

    visit(tree, False)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's own modules it imports (anywhere in the file)."""
    files = {module_name(root, p): p for p in root.rglob("*.py")}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = set()
        for target, _, _ in imported_modules(root, path, known):
            while target and target not in known:  # `from pkg.mod import Class`
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_build_package_has_no_import_cycle():
    cycle = find_cycle(import_graph(BUILD))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_build_modules_import_nothing_inside_functions():
    """Heavy third-party modules load through core/lazy.py's lazy_import at module top."""
    found = []
    known = {module_name(BUILD, p) for p in BUILD.rglob("*.py")}
    for path in sorted(BUILD.rglob("*.py")):
        for target, line, in_function in imported_modules(BUILD, path, known):
            if in_function:
                found.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not found, "imports inside functions:\n" + "\n".join(found)


def test_no_module_over_the_line_limit():
    too_long = []
    for root in LINE_LIMITED:
        for path in sorted(root.rglob("*.py")):
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES:
                too_long.append(f"{path.relative_to(REPO)}: {lines} lines")
    assert not too_long, f"modules over {MAX_LINES} lines:\n" + "\n".join(too_long)


def test_layers_listed_in_the_contract_cover_every_subpackage():
    """A new subpackage must be placed in the layers contract, or it escapes the rule."""
    import tomllib

    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    subpackages = {f"trtserve_build.{p.parent.name}" for p in BUILD.glob("*/__init__.py")}
    assert subpackages | {"trtserve_build.cli"} == set(layers)
    stages = next(c for c in contracts if c["type"] == "independence")["modules"]
    assert {f"trtserve_build.stages.{p.stem}" for p in (BUILD / "stages").glob("*.py") if p.stem != "__init__"} == set(stages)


# ---- the checks themselves catch what they are for ---------------------------------------------

@pytest.fixture
def toy_package(tmp_path):
    root = tmp_path / "toy"
    (root / "low").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "low" / "__init__.py").write_text("")
    (root / "low" / "base.py").write_text("import json\n")
    (root / "high.py").write_text("from .low import base\n")
    return root


def test_cycle_check_sees_an_import_hidden_in_a_function(toy_package):
    assert find_cycle(import_graph(toy_package)) is None
    (toy_package / "low" / "base.py").write_text("def f():\n    from .. import high\n    return high\n")
    assert find_cycle(import_graph(toy_package)) == ["toy.high", "toy.low.base", "toy.high"]
    inside = [(t, f) for t, _, f in imported_modules(toy_package, toy_package / "low" / "base.py",
                                                    {"toy", "toy.high", "toy.low", "toy.low.base"})]
    assert ("toy.high", True) in inside


def test_functional_marker_selects_the_functional_tier():
    """`-m "not functional"` must not collect (and so never start Triton for) functional tests."""
    import subprocess
    import sys

    def collected(*args: str) -> list[str]:
        proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                               *args], cwd=REPO, capture_output=True, text=True, timeout=300)
        return [line for line in proc.stdout.splitlines() if "::" in line]

    functional = collected("-m", "functional", "tests/functional/test_contract.py", "tests/unit/test_spec.py")
    assert functional and all(line.startswith("tests/functional/") for line in functional)
    fast = collected("-m", "not functional", "tests/functional/test_contract.py", "tests/unit/test_spec.py")
    assert fast and all(line.startswith("tests/unit/") for line in fast)
