"""API keys never end up in messages, interaction nodes, events or log records."""

import json
import logging

import anthropic
import openai
import pytest

from miniagents import AgentCallNode, EventKind, ListEventSink, MiniAgents
from miniagents.ext.llm.anthropic import anthropic_agent
from miniagents.ext.llm.openai import openai_agent
from miniagents.testing.fake_llm_server import FakeLLMServer, ScriptedReply

OPENAI_KEY = "sk-proj-DISTINCTIVE-openai-3f9a1c"
ANTHROPIC_KEY = "sk-ant-DISTINCTIVE-anthropic-7d2e4b"
SECRET_FRAGMENT = "DISTINCTIVE"


async def test_api_keys_appear_nowhere(server: FakeLLMServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server.script("Streamed answer", "Whole answer", ScriptedReply(status=429))
    sink = ListEventSink()

    async with (
        openai.AsyncOpenAI(base_url=server.openai_base_url, api_key=OPENAI_KEY, max_retries=0) as openai_client,
        anthropic.AsyncAnthropic(
            base_url=server.anthropic_base_url, api_key=ANTHROPIC_KEY, max_retries=0
        ) as anthropic_client,
    ):
        gpt = openai_agent.fork(model="gpt-test", async_client=openai_client)
        claude = anthropic_agent.fork(model="claude-test", async_client=anthropic_client, max_tokens=10)
        async with MiniAgents(store=sink):
            messages = [
                *await gpt.inquire("Hello", stream=True).aresolve_messages(),
                *await claude.inquire("Hello", stream=False, system="Be brief.").aresolve_messages(),
            ]
            with pytest.raises(openai.RateLimitError):
                await gpt.inquire(
                    "Fail", stream=True, extra_headers={"Authorization": f"Bearer {OPENAI_KEY}"}
                ).aresolve_messages()

    # the keys did travel: to the server, and nowhere else
    assert [request.headers.get("authorization") for request in server.requests[::2]] == [
        f"Bearer {OPENAI_KEY}",
        f"Bearer {OPENAI_KEY}",
    ]
    assert ANTHROPIC_KEY in json.dumps(server.requests[1].headers)
    assert [message.text for message in messages] == ["Streamed answer", "Whole answer"]

    recorded = [message.full_json for message in messages]
    for event in sink.events:
        recorded.append(repr(event))
        recorded.append(json.dumps(event.data, default=repr))
        if event.obj is not None:
            recorded.append(event.obj.full_json)
    recorded.extend(record.getMessage() for record in caplog.records)
    recorded.append(caplog.text)  # with the formatted tracebacks of logged errors
    assert not [text for text in recorded if SECRET_FRAGMENT in text]

    # what was recorded instead: the client's type, and a marker for a secret-looking keyword argument
    call_nodes = [event.obj for event in sink.of_kind(EventKind.MESSAGE) if isinstance(event.obj, AgentCallNode)]
    assert [node.async_client for node in call_nodes] == ["<AsyncOpenAI>", "<AsyncAnthropic>", "<AsyncOpenAI>"]
    assert call_nodes[2].extra_headers.Authorization == "[REDACTED]"
    # and the logs that were searched are there: the agents' own debug records and the SDKs' ones (whatever
    # module of the SDK logs them)
    loggers = {record.name for record in caplog.records}
    assert {"miniagents.ext.llm.openai", "miniagents.ext.llm.anthropic"} <= loggers
    assert any(name == "openai" or name.startswith("openai.") for name in loggers)
