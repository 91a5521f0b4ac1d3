"""A missing optional dependency is reported with the exact `pip install` command."""

import importlib
import sys

import pytest

from miniagents.ext._optional import install_hint, optional_dependency


@pytest.mark.parametrize(
    ("module_name", "dependency", "extra"),
    [
        ("miniagents.ext.llm.openai", "openai", "openai"),
        ("miniagents.ext.llm.anthropic", "anthropic", "anthropic"),
        ("miniagents.ext.chat_history_md", "markdown_it", "markdown"),
        ("miniagents.ext.console_user_agent", "prompt_toolkit", "console"),
    ],
)
def test_importing_an_extension_without_its_dependency(
    monkeypatch: pytest.MonkeyPatch, module_name: str, dependency: str, extra: str
) -> None:
    original = importlib.import_module(module_name)
    monkeypatch.setitem(sys.modules, dependency, None)  # `import dependency` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, module_name)  # restored after the test, like the dependency

    with pytest.raises(ImportError) as raised:
        importlib.import_module(module_name)

    assert str(raised.value) == (
        f"{module_name} needs the optional dependency '{dependency}', which is not installed: "
        f"pip install 'miniagents[{extra}]'"
    )
    assert raised.value.name == dependency
    assert isinstance(raised.value.__cause__, ModuleNotFoundError)
    assert module_name not in sys.modules  # the failed import left nothing behind
    monkeypatch.undo()
    assert importlib.import_module(module_name) is original


def test_a_submodule_that_is_missing_gets_the_hint_too() -> None:
    with pytest.raises(ImportError) as raised, optional_dependency("openai", extra="openai", needed_by="my_module"):
        raise ModuleNotFoundError("No module named 'openai.types'", name="openai.types")

    assert str(raised.value) == "my_module needs the optional dependency 'openai', which is not installed: " + (
        install_hint("openai")
    )


@pytest.mark.parametrize("name", ["openai_helpers", None])
def test_other_import_errors_pass_through_unchanged(name: str) -> None:
    error = ImportError("cannot import name 'Thing' from 'somewhere'", name=name)

    with pytest.raises(ImportError) as raised, optional_dependency("openai", extra="openai", needed_by="my_module"):
        raise error

    assert raised.value is error


def test_install_hint() -> None:
    assert install_hint("console") == "pip install 'miniagents[console]'"
