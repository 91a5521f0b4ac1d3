"""Every Python example in README.md runs and prints what the README says it prints."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLE = re.compile(r"```python\n(?P<code>.*?)```\n(?:\n```text\n(?P<output>.*?)```)?", re.DOTALL)


def examples() -> list[tuple[str, str | None]]:
    return [(match["code"], match["output"]) for match in EXAMPLE.finditer(README.read_text(encoding="utf-8"))]


def test_the_readme_starts_with_one_sentence_and_the_two_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# miniagents"
    assert lines[2].endswith(".") and lines[2].count(". ") == 0
    commands = README.read_text(encoding="utf-8").split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [command.split("#")[0].strip() for command in commands] == ["make demo", "make test"]
    first_example = examples()[0][0]
    assert len([line for line in first_example.splitlines() if line.strip()]) <= 12


@pytest.mark.parametrize(("code", "output"), examples(), ids=lambda value: (value or "").strip().split("\n")[-1][:40])
def test_readme_example_runs(code: str, output: str | None, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr
    if output is not None:
        assert result.stdout == output
