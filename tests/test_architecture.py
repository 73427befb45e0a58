"""The house rules of docs/ARCHITECTURE.md §2, checked on the code itself: the import
contract holds and a forbidden import breaks `make lint`, no import cycle among modules
(imports inside functions counted), and every import inside a function says why."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import grimp
import pytest

from tests.conftest import ROOT, VENV_BIN

PACKAGES = ("agent", "drivers", "collector", "simulator")
LINT_IMPORTS = VENV_BIN / "lint-imports"


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the packages and pyproject.toml, to break on purpose."""
    dst = tmp_path_factory.mktemp("house")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_the_import_contract_holds() -> None:
    """lint-imports keeps every contract of pyproject.toml on the repository as it is."""
    r = _lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("drivers/roots.py", "import agent.core.config", "drivers do no policy"),
        ("agent/spool/maildir.py", "import collector.app", "the agent's stages never import"),
        ("agent/faults/engine.py", "import agent.upload.uploader", "layers in the order"),
        ("collector/pages.py", "import agent.spool.maildir", "the collector imports only"),
    ],
)
def test_a_forbidden_import_fails_lint(
    tree_copy: Path, module: str, line: str, contract: str
) -> None:
    """Adding one import that crosses a layer makes lint-imports (so `make lint`) fail, naming the contract."""
    path = tree_copy / module
    original = path.read_text()
    try:
        path.write_text(original + f"\n{line}  # noqa: E402\n")
        r = _lint_imports(tree_copy)
    finally:
        path.write_text(original)
    assert r.returncode != 0, r.stdout
    assert f"{contract}" in r.stdout and "BROKEN" in r.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append(
                        (child, iter(sorted(graph.find_modules_directly_imported_by(child))))
                    )
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycle_among_modules() -> None:
    """No module imports itself through others, counting imports inside functions."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert _cycles(graph) == []


def _function_imports(path: Path) -> list[tuple[int, str, str]]:
    src = path.read_text()
    lines = src.splitlines()
    found = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    n = sub.lineno
                    context = lines[n - 1] + " " + (lines[n - 2] if n >= 2 else "")
                    found.append((n, lines[n - 1].strip(), context))
    return found


def test_every_import_inside_a_function_says_why() -> None:
    """An import inside a function stays only to keep a heavy library out of the daemon,
    with a `# lazy:` comment on its line or the line before."""
    bare = [
        f"{p.relative_to(ROOT)}:{n}: {stmt}"
        for pkg in PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        for n, stmt, context in _function_imports(p)
        if "# lazy:" not in context
    ]
    assert bare == []


def test_the_cycle_check_finds_a_cycle() -> None:
    """The cycle finder itself: a → b → c → a is reported, a tail d → a is not part of it."""
    graph = grimp.ImportGraph()
    for importer, imported in (("x.a", "x.b"), ("x.b", "x.c"), ("x.c", "x.a"), ("x.d", "x.a")):
        graph.add_import(importer=importer, imported=imported)
    assert _cycles(graph) == [["x.a", "x.b", "x.c"]]
