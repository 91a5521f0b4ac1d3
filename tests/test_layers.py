"""The layers import only downwards: `miniagents/` knows nothing of `store/` or `replay/`, `store/` nothing of
`replay/` (examples and tests may use them all)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS_ABOVE = {"miniagents": {"store", "replay"}, "store": {"replay"}}


def imported_top_level_names(path: Path) -> set[str]:
    """The top-level package of every absolute import in the module, wherever it stands (functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(LAYERS_ABOVE))
def test_a_layer_never_imports_the_layers_above_it(package: str) -> None:
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules
    upward = {
        str(module.relative_to(ROOT)): sorted(imported_top_level_names(module) & LAYERS_ABOVE[package])
        for module in modules
    }
    assert {module: names for module, names in upward.items() if names} == {}


def test_the_import_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text("def f():\n    from replay import Replay\n    import store.sqlite\n", encoding="utf-8")
    assert imported_top_level_names(module) == {"replay", "store"}
