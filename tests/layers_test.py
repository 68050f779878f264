"""The layers point one way, with no cycle, and an import inside a function only keeps a fast path fast.

    pneumonia.cli -> pneumonia.analysis / pneumonia.site / pneumonia.monitoring -> pneumonia.runs / pneumonia.data
                  -> pipeline -> components -> trainer;   serving/ imports none of them.

Read from the source (every import statement, inside functions too), so a lazy import cannot hide a cycle.
"""

import ast
import pathlib
import sys
from typing import Dict, Iterator, List, Set, Tuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("pneumonia", "pipeline", "components", "trainer", "serving", "kubeflow")
CLI_LAYERS = (
    "pneumonia.cli",
    "pneumonia.analysis",
    "pneumonia.site",
    "pneumonia.monitoring",
    "pneumonia.runs",
    "pneumonia.data",
)
# What each layer may not import (by module prefix). Peers stay apart too: analysis and site, runs and data.
FORBIDDEN = {
    "trainer": {"pneumonia", "pipeline", "components", "kubeflow"},
    "components": {"pneumonia", "pipeline", "kubeflow"},
    "pipeline": {"pneumonia", "kubeflow"},
    "serving": {"pneumonia", "pipeline", "components", "trainer", "kubeflow"},
    "kubeflow": {"pneumonia"},
    "pneumonia.data": {
        "pneumonia.cli",
        "pneumonia.analysis",
        "pneumonia.site",
        "pneumonia.monitoring",
        "pneumonia.runs",
    },
    "pneumonia.runs": {
        "pneumonia.cli",
        "pneumonia.analysis",
        "pneumonia.site",
        "pneumonia.monitoring",
        "pneumonia.data",
    },
    "pneumonia.analysis": {"pneumonia.cli", "pneumonia.site", "pneumonia.monitoring"},
    "pneumonia.site": {"pneumonia.cli", "pneumonia.analysis", "pneumonia.monitoring"},
    "pneumonia.monitoring": {"pneumonia.cli", "pneumonia.analysis", "pneumonia.site"},
}
MAX_CLI_MODULE_LINES = 400


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> Dict[str, pathlib.Path]:
    return {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def imports(path: pathlib.Path) -> Iterator[Tuple[str, ast.stmt, bool]]:
    """(imported module, statement, whether it sits inside a function) for every absolute import."""
    tree = ast.parse(path.read_text(), str(path))
    inside = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(function)
        if node is not function
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node, id(node) in inside
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:  # `from pkg import module` imports pkg.module when it is one
                yield f"{node.module}.{alias.name}", node, id(node) in inside


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> str:
    return next((layer for layer in CLI_LAYERS if under(module, layer)), module.split(".")[0])


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    offending = sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for module, path in project_modules().items()
        if layer_of(module) == layer
        for name, _, _ in imports(path)
        if any(under(name, banned) for banned in FORBIDDEN[layer])
    )
    assert not offending, "; ".join(offending)


def test_nothing_imports_the_cli_but_the_cli():
    offending = sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for module, path in project_modules().items()
        if not under(module, "pneumonia.cli")
        for name, _, _ in imports(path)
        if under(name, "pneumonia.cli")
    )
    assert not offending, "; ".join(offending)


def import_graph() -> Dict[str, Set[str]]:
    """module -> the project modules it imports (a `from package import name` edge goes to package.name when
    that is a module, else to the package)."""
    modules = project_modules()
    graph: Dict[str, Set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name, _, _ in imports(path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_anywhere():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_sees_a_cycle_through_a_lazy_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def import_block(lines: List[str], lineno: int) -> List[str]:
    """The lines of the run of import statements that line `lineno` (1-based) ends."""
    start = lineno - 1
    while start > 0 and lines[start - 1].strip().startswith(("from ", "import ")):
        start -= 1
    return lines[start:lineno]


def test_an_import_inside_a_function_says_which_fast_path_it_keeps():
    offending = []
    for path in project_modules().values():
        lines = path.read_text().splitlines()
        for name, node, inside in imports(path):
            if inside and not any("#" in line for line in import_block(lines, node.lineno)):
                offending.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not offending, "; ".join(sorted(set(offending)))


def test_the_checker_sees_a_lazy_import(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from pneumonia.runs import store\n")
    assert [(name, inside) for name, _, inside in imports(module)] == [("pneumonia.runs.store", True)]


def test_each_cli_sub_package_names_its_job_and_no_module_is_over_the_limit():
    for layer in CLI_LAYERS:
        package = ROOT / layer.replace(".", "/") / "__init__.py"
        assert ast.get_docstring(ast.parse(package.read_text())), f"{layer} has no docstring naming its job"
    too_long = sorted(
        f"{path.relative_to(ROOT)} ({len(path.read_text().splitlines())} lines)"
        for path in (ROOT / "pneumonia").rglob("*.py")
        if len(path.read_text().splitlines()) > MAX_CLI_MODULE_LINES
    )
    assert not too_long, ", ".join(too_long)
