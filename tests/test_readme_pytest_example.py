"""The README's pytest example, copied into a fresh project with none of this repository's configuration, records
once and then replays offline."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
FILE_BLOCK = re.compile(r"```(?:toml|py)\n# (?P<path>\S+)\n(?P<content>.*?)```", re.DOTALL)


def readme_project_files() -> dict[str, str]:
    """The files of the README's pytest section, each a block whose first line is a comment naming its path."""
    section = README.read_text(encoding="utf-8").split("### In pytest", 1)[1].split("\n## ", 1)[0]
    return {match["path"]: match["content"] for match in FILE_BLOCK.finditer(section)}


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("PYTEST_", "PYTHON"))}
    return subprocess.run(
        # warnings are errors, so a deprecated or missing setting of the README's config fails this test
        [sys.executable, "-m", "pytest", "-W", "error", *args],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_readme_shows_a_whole_project() -> None:
    assert set(readme_project_files()) == {"pyproject.toml", "tests/test_poet.py"}


def test_the_readme_pytest_example_records_once_then_replays_offline(tmp_path: Path) -> None:
    project = tmp_path / "project"
    for relative_path, content in readme_project_files().items():
        (project / relative_path).parent.mkdir(parents=True, exist_ok=True)
        (project / relative_path).write_text(content, encoding="utf-8")

    missing = run_pytest(project)
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "Record it once with: pytest --record-mode=once tests/test_poet.py::test_poet" in missing.stdout
    assert f"rootdir: {project}" in missing.stdout  # the project's own configuration, none of this repository's

    recorded = run_pytest(project, "--record-mode=once")
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    recording = project / "tests" / "recordings" / "test_poet" / "test_poet.jsonl"
    assert recording.is_file()
    recorded_bytes = recording.read_bytes()

    replayed = run_pytest(project)  # --record-mode=none: any call missing from the recording fails the test
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "1 passed" in replayed.stdout
    assert recording.read_bytes() == recorded_bytes  # a replay adds nothing to the recording
