"""requirements/lock.txt (written by `make lock`) pins, with hashes, a version of every requirement of
pyproject.toml (dependencies, every extra, dev tools) and of requirements/build.in, for Python 3.10 to 3.13."""

import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


def locked_pins() -> list[tuple[Requirement, list[str]]]:
    """Each pin of the lock (`name==version ; marker`) with its hashes."""
    pins: list[tuple[Requirement, list[str]]] = []
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip().removesuffix("\\").strip()
        if not text:
            continue
        if text.startswith("--hash="):
            pins[-1][1].append(text.removeprefix("--hash="))
        else:
            pins.append((Requirement(text), []))
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        requirements += [Requirement(text) for text in extra if not text.startswith(f"{project['name']}[")]
    build = (ROOT / "requirements" / "build.in").read_text(encoding="utf-8").splitlines()
    return requirements + [Requirement(line) for line in build if line.strip() and not line.startswith("#")]


def environment(python: str) -> dict[str, str]:
    return {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_python_implementation": "CPython", "implementation_name": "cpython",
            "os_name": "posix", "platform_machine": "x86_64"}  # fmt: skip


def test_every_pin_is_exact_and_hashed() -> None:
    pins = locked_pins()
    assert len(pins) > 20
    for requirement, hashes in pins:
        [specifier] = requirement.specifier
        assert specifier.operator == "==", requirement
        assert hashes and all(value.startswith("sha256:") for value in hashes), requirement


@pytest.mark.parametrize("python", PYTHONS)
def test_every_requirement_of_the_project_is_pinned_within_its_range(python: str) -> None:
    pinned: dict[str, str] = {}
    for requirement, _ in locked_pins():
        if requirement.marker is None or requirement.marker.evaluate(environment(python)):
            name = canonicalize_name(requirement.name)
            assert name not in pinned, f"{name} pinned twice for Python {python}"
            pinned[name] = next(iter(requirement.specifier)).version
    for requirement in project_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate(environment(python)):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not in {LOCK.name} for Python {python}: run `make lock`"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{name}=={pinned[name]} in {LOCK.name} is outside {requirement} of pyproject.toml: run `make lock`"
        )
