"""The layers point one way: pneumonia/ -> pipeline/ -> components/ -> trainer/; serving/ imports none of them.

Read from the source (every import statement, inside functions too), so a lazy import cannot hide a cycle.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("pneumonia", "pipeline", "components", "trainer", "serving", "kubeflow")
FORBIDDEN = {
    "trainer": {"pneumonia", "pipeline", "components", "kubeflow"},
    "components": {"pneumonia", "pipeline", "kubeflow"},
    "pipeline": {"pneumonia", "kubeflow"},
    "serving": {"pneumonia", "pipeline", "components", "trainer", "kubeflow"},
}


def imported_packages(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(package):
    offending = sorted(f"{path.relative_to(ROOT)} imports {name}"
                       for path in (ROOT / package).rglob("*.py")
                       for name in set(imported_packages(path)) & FORBIDDEN[package])
    assert not offending, "; ".join(offending)


def test_the_checker_sees_a_lazy_import(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from pneumonia import results\n")
    assert "pneumonia" in set(imported_packages(module))
