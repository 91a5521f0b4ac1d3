"""Every Python example in docs/integrations.md runs, against the fake LLM server instead of the real APIs."""

import asyncio
import os
import re
import sys
from pathlib import Path

from miniagents.testing.fake_llm_server import FakeLLMServer

DOC = Path(__file__).resolve().parents[3] / "docs" / "integrations.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


async def run_block(number: int, code: str, server: FakeLLMServer, cwd: Path) -> tuple[int, int, str, str]:
    script = cwd / f"example_{number}.py"
    script.write_text(code, encoding="utf-8")
    environment = {key: value for key, value in os.environ.items() if not key.endswith(("_API_KEY", "_BASE_URL"))}
    environment.update(
        OPENAI_BASE_URL=server.openai_base_url,
        OPENAI_API_KEY="sk-docs",
        ANTHROPIC_BASE_URL=server.anthropic_base_url,
        ANTHROPIC_API_KEY="docs",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        cwd=cwd,
        env=environment,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # the console example reads one line (Enter is "\r"), then the end of the input ends its dialog loop
    stdout, stderr = await asyncio.wait_for(process.communicate(b"Hello\r"), timeout=60)
    assert process.returncode is not None
    return number, process.returncode, stdout.decode(), stderr.decode()


async def test_every_python_example_runs(tmp_path: Path) -> None:
    blocks = PYTHON_BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 7

    async with FakeLLMServer() as server:
        results = await asyncio.gather(
            *(run_block(number, code, server, _mkdir(tmp_path / str(number))) for number, code in enumerate(blocks))
        )

    failures = [(number, stderr) for number, returncode, _, stderr in results if returncode != 0]
    assert failures == []
    outputs = [stdout for _, _, stdout, _ in sorted(results)]
    # the fake server echoes the last user message; ids are numbered in the order the requests arrived
    assert re.fullmatch(r"Tell me a joke about cats\.\ngpt-4o-mini stop chatcmpl-fake-\d+\n", outputs[0])
    assert outputs[1] == ""  # a client bound with fork()
    assert outputs[2] == "How are you?\nend_turn 6 3\n"  # 6 words in, 3 out
    assert outputs[3] == "user: What is 2 + 2?\nassistant: 4\n"
    assert "\nOPENAI_AGENT: Hello\n\n" in outputs[4]  # the console dialog, and its end at the end of the input
    assert outputs[4].endswith("Bye!\n")
    line = "=" * 40
    assert (tmp_path / "4" / "CHAT.md").read_text(encoding="utf-8") == (
        f"\nuser\n{line}\nHello\n\nassistant / gpt-4o-mini\n{line}\nHello\n"
    )
    assert outputs[5] == ""  # the pipe-driven console agent asserts what it read
    assert outputs[6] == "Hello\nrate limited: 429\n"


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path
