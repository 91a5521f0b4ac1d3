"""Tests of the fake LLM HTTP server, driven by the real OpenAI and Anthropic SDKs and by raw HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest

from miniagents.testing.fake_llm_server import (
    FakeLLMServer,
    RecordedRequest,
    ScriptedReply,
    TokenUsage,
    dropped_connection_errors,
    tokenize,
)

USER_MESSAGES: list[Any] = [
    {"role": "user", "content": "Say hi"},
    {"role": "assistant", "content": "Hi!"},
    {"role": "user", "content": "Now say it twice"},
]


@pytest.fixture
async def server() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as server:
        yield server


@pytest.fixture
async def openai_client(server: FakeLLMServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def anthropic_client(server: FakeLLMServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, api_key="test", max_retries=0)
    yield client
    await client.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response (content-length or chunked body)."""
    status = int((await reader.readline()).split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        headers[name.lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int(await reader.readline(), 16):
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
        assert await reader.readline() == b"\r\n"
        return status, headers, body
    return status, headers, await reader.readexactly(int(headers["content-length"]))


def http_request(method: str, path: str, body: Any = None) -> bytes:
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(payload)}\r\n\r\n"
    return head.encode() + payload


def text_of(message: anthropic.types.Message) -> str:
    """The text of a message's only content block."""
    [block] = message.content
    assert block.type == "text"
    return block.text


# OpenAI Chat Completions


async def test_openai_non_streaming(server: FakeLLMServer, openai_client: openai.AsyncOpenAI) -> None:
    server.script(ScriptedReply(tokens=["Hel", "lo", " world"], model="gpt-served", usage=TokenUsage(11, 7)))

    completion = await openai_client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Greet"}],
        temperature=0.25,
        max_tokens=50,
    )

    assert completion.id == "chatcmpl-fake-1"
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-served"
    assert len(completion.choices) == 1
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Hello world"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        11,
        7,
        18,
    )
    [request] = server.requests
    assert (request.method, request.path, request.api) == ("POST", "/v1/chat/completions", "openai")
    assert request.body == {
        "model": "gpt-test",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Greet"}],
        "temperature": 0.25,
        "max_tokens": 50,
    }
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["content-type"] == "application/json"
    assert request.stream is False


async def test_openai_streaming(server: FakeLLMServer, openai_client: openai.AsyncOpenAI) -> None:
    server.script(ScriptedReply(tokens=["Hel", "lo", " world"], finish_reason="length"))

    stream = await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]

    assert [chunk.choices[0].delta.content for chunk in chunks] == ["", "Hel", "lo", " world", None]
    assert [chunk.choices[0].delta.role for chunk in chunks] == ["assistant", None, None, None, None]
    assert [chunk.choices[0].finish_reason for chunk in chunks] == [None, None, None, None, "length"]
    assert {(chunk.id, chunk.object, chunk.model) for chunk in chunks} == {
        ("chatcmpl-fake-1", "chat.completion.chunk", "gpt-test")
    }
    assert all(chunk.usage is None for chunk in chunks)
    assert server.requests[0].body == {"model": "gpt-test", "messages": USER_MESSAGES, "stream": True}
    assert server.requests[0].stream is True


async def test_openai_streaming_include_usage(server: FakeLLMServer, openai_client: openai.AsyncOpenAI) -> None:
    server.script(ScriptedReply(tokens=["A", " B"]))

    stream = await openai_client.chat.completions.create(
        model="gpt-test", messages=USER_MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    assert len(chunks) == 5
    assert [chunk.choices[0].delta.content for chunk in chunks[:-1]] == ["", "A", " B", None]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    # "Say hi" + "Hi!" + "Now say it twice" = 2 + 1 + 4 word-ish tokens in; 2 tokens out.
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 2, 9)
    assert server.requests[0].body["stream_options"] == {"include_usage": True}


# Anthropic Messages


async def test_anthropic_non_streaming(server: FakeLLMServer, anthropic_client: anthropic.AsyncAnthropic) -> None:
    server.script(ScriptedReply(tokens=["Hi", " hi"], stop_reason="max_tokens"))

    message = await anthropic_client.messages.create(
        model="claude-test",
        max_tokens=64,
        system="Be brief.",
        messages=USER_MESSAGES,
        stop_sequences=["END"],
        metadata={"user_id": "user-1"},
    )

    assert message.id == "msg_fake_1"
    assert (message.type, message.role, message.model) == ("message", "assistant", "claude-test")
    assert len(message.content) == 1
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hi hi"
    assert (message.stop_reason, message.stop_sequence) == ("max_tokens", None)
    # 7 word-ish tokens in the messages + 2 in the system prompt.
    assert (message.usage.input_tokens, message.usage.output_tokens) == (9, 2)
    [request] = server.requests
    assert (request.method, request.path, request.api) == ("POST", "/v1/messages", "anthropic")
    assert request.body == {
        "model": "claude-test",
        "max_tokens": 64,
        "system": "Be brief.",
        "messages": USER_MESSAGES,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-1"},
    }
    # The API key travels in x-api-key (older SDKs) or as a bearer token (newer ones).
    assert "test" in (
        request.headers.get("x-api-key"),
        request.headers.get("authorization", "").removeprefix("Bearer "),
    )
    assert "anthropic-version" in request.headers


async def test_anthropic_streaming_events(server: FakeLLMServer, anthropic_client: anthropic.AsyncAnthropic) -> None:
    server.script(ScriptedReply(tokens=["One", " two", " three"], model="claude-served", usage=TokenUsage(5, 3)))

    stream = await anthropic_client.messages.create(
        model="claude-test", max_tokens=64, messages=USER_MESSAGES, stream=True
    )
    events = [event async for event in stream]

    assert [event.type for event in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start, block_start, *deltas, block_stop, message_delta, _ = events
    assert start.type == "message_start"
    assert (start.message.id, start.message.model, start.message.content) == ("msg_fake_1", "claude-served", [])
    assert start.message.usage.input_tokens == 5
    assert block_start.type == "content_block_start"
    assert (block_start.index, block_start.content_block.type) == (0, "text")
    assert [(d.index, d.delta.model_dump(exclude_none=True)) for d in deltas if d.type == "content_block_delta"] == [
        (0, {"type": "text_delta", "text": "One"}),
        (0, {"type": "text_delta", "text": " two"}),
        (0, {"type": "text_delta", "text": " three"}),
    ]
    assert block_stop.type == "content_block_stop"
    assert message_delta.type == "message_delta"
    assert (message_delta.delta.stop_reason, message_delta.usage.output_tokens) == ("end_turn", 3)
    assert server.requests[0].body == {
        "model": "claude-test",
        "max_tokens": 64,
        "messages": USER_MESSAGES,
        "stream": True,
    }


async def test_anthropic_stream_helper(server: FakeLLMServer, anthropic_client: anthropic.AsyncAnthropic) -> None:
    server.script(ScriptedReply(tokens=["Hello", ",", " Claude"]))

    async with anthropic_client.messages.stream(
        model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "Hi there"}]
    ) as stream:
        tokens = [text async for text in stream.text_stream]
        final = await stream.get_final_message()

    assert tokens == ["Hello", ",", " Claude"]
    assert [(block.type, getattr(block, "text", None)) for block in final.content] == [("text", "Hello, Claude")]
    assert (final.stop_reason, final.model) == ("end_turn", "claude-test")
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 3)


# Failure modes


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [(429, openai.RateLimitError, "rate_limit_exceeded"), (500, openai.InternalServerError, "server_error")],
)
async def test_openai_error_status(
    server: FakeLLMServer,
    openai_client: openai.AsyncOpenAI,
    status: int,
    error_class: type[openai.APIStatusError],
    error_type: str,
    stream: bool,
) -> None:
    server.script(ScriptedReply(tokens=["unused"], status=status, error_message="Slow down"))

    with pytest.raises(error_class) as raised:
        await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES, stream=stream)

    assert raised.value.status_code == status
    assert raised.value.body == {"message": "Slow down", "type": error_type, "param": None, "code": error_type}
    assert len(server.requests) == 1


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [(429, anthropic.RateLimitError, "rate_limit_error"), (500, anthropic.InternalServerError, "api_error")],
)
async def test_anthropic_error_status(
    server: FakeLLMServer,
    anthropic_client: anthropic.AsyncAnthropic,
    status: int,
    error_class: type[anthropic.APIStatusError],
    error_type: str,
    stream: bool,
) -> None:
    server.script(ScriptedReply(tokens=["unused"], status=status))

    with pytest.raises(error_class) as raised:
        await anthropic_client.messages.create(
            model="claude-test", max_tokens=64, messages=USER_MESSAGES, stream=stream
        )

    assert raised.value.status_code == status
    assert raised.value.body == {"type": "error", "error": {"type": error_type, "message": f"Fake error {status}"}}
    assert len(server.requests) == 1


async def test_openai_malformed_sse(server: FakeLLMServer, openai_client: openai.AsyncOpenAI) -> None:
    server.script(ScriptedReply(tokens=["a", "b", "c", "d"], malformed_after=2))
    received: list[str | None] = []

    stream = await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES, stream=True)
    with pytest.raises(json.JSONDecodeError):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)

    assert received == ["", "a", "b"]


async def test_anthropic_malformed_sse(server: FakeLLMServer, anthropic_client: anthropic.AsyncAnthropic) -> None:
    server.script(ScriptedReply(tokens=["a", "b", "c", "d"], malformed_after=2))
    received: list[str] = []

    with pytest.raises(json.JSONDecodeError):
        async with anthropic_client.messages.stream(
            model="claude-test", max_tokens=64, messages=USER_MESSAGES
        ) as stream:
            async for text in stream.text_stream:
                received.append(text)

    assert received == ["a", "b"]


async def test_openai_drop_mid_stream(server: FakeLLMServer, openai_client: openai.AsyncOpenAI) -> None:
    server.script(ScriptedReply(tokens=["a", "b", "c", "d"], drop_after=2))
    received: list[str | None] = []

    stream = await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES, stream=True)
    with pytest.raises(dropped_connection_errors(openai)):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)

    assert received == ["", "a", "b"]


async def test_anthropic_drop_mid_stream(server: FakeLLMServer, anthropic_client: anthropic.AsyncAnthropic) -> None:
    server.script(ScriptedReply(tokens=["a", "b", "c", "d"], drop_after=2))
    received: list[str] = []

    with pytest.raises(dropped_connection_errors(anthropic)):
        async with anthropic_client.messages.stream(
            model="claude-test", max_tokens=64, messages=USER_MESSAGES
        ) as stream:
            async for text in stream.text_stream:
                received.append(text)

    assert received == ["a", "b"]


async def test_drop_and_malformed_without_streaming(
    server: FakeLLMServer, openai_client: openai.AsyncOpenAI, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    server.script(
        ScriptedReply(tokens=["a"], drop_after=0),
        ScriptedReply(tokens=["a"], malformed_after=0),
        ScriptedReply(tokens=["a"], drop_after=0),
        ScriptedReply(tokens=["a"], malformed_after=0),
    )

    with pytest.raises(openai.APIConnectionError):
        await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES)
    with pytest.raises(json.JSONDecodeError):
        await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES)
    with pytest.raises(anthropic.APIConnectionError):
        await anthropic_client.messages.create(model="claude-test", max_tokens=64, messages=USER_MESSAGES)
    with pytest.raises(json.JSONDecodeError):
        await anthropic_client.messages.create(model="claude-test", max_tokens=64, messages=USER_MESSAGES)

    assert [request.api for request in server.requests] == ["openai", "openai", "anthropic", "anthropic"]
    assert server.pending_replies == 0


async def test_hang_times_out_and_server_stops_promptly() -> None:
    async with FakeLLMServer() as server:
        server.script(ScriptedReply(tokens=["never"], hang=True), ScriptedReply(tokens=["never"], hang=True))
        openai_client = openai.AsyncOpenAI(
            base_url=server.openai_base_url, api_key="sk-test", max_retries=0, timeout=0.5
        )
        anthropic_client = anthropic.AsyncAnthropic(
            base_url=server.anthropic_base_url, api_key="test", max_retries=0, timeout=0.5
        )
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES)
        with pytest.raises(anthropic.APITimeoutError):
            await anthropic_client.messages.create(model="claude-test", max_tokens=64, messages=USER_MESSAGES)
        assert 1.0 <= time.monotonic() - started < 3.0
        assert [request.api for request in server.requests] == ["openai", "anthropic"]
        await openai_client.close()
        await anthropic_client.close()
        exiting = time.monotonic()
    assert time.monotonic() - exiting < 0.5


async def test_stop_cancels_a_request_in_progress() -> None:
    async with FakeLLMServer() as server:
        server.script(ScriptedReply(hang=True))
        client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0, timeout=30)
        call = asyncio.create_task(client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES))
        [request] = await asyncio.wait_for(server.wait_for_requests(1), timeout=5)  # recorded, never answered
        assert request.api == "openai"
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 0.5
    with pytest.raises(openai.APIConnectionError):
        await call
    await client.close()


async def test_token_delay_paces_the_stream(server: FakeLLMServer, openai_client: openai.AsyncOpenAI) -> None:
    server.script(ScriptedReply(tokens=["a", "b", "c"], token_delay=0.05))
    arrivals: list[float] = []

    stream = await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES, stream=True)
    async for chunk in stream:
        if chunk.choices[0].delta.content:
            arrivals.append(time.monotonic())

    assert len(arrivals) == 3
    assert arrivals[1] - arrivals[0] >= 0.04
    assert arrivals[2] - arrivals[1] >= 0.04


# Scripting and the default reply


async def test_default_reply_echoes_last_user_message_deterministically(
    server: FakeLLMServer, openai_client: openai.AsyncOpenAI, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    first = await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES)
    second = await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES)
    stream = await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES, stream=True)
    tokens = [chunk.choices[0].delta.content async for chunk in stream]
    message = await anthropic_client.messages.create(
        model="claude-test",
        max_tokens=64,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Block"}, {"type": "text", "text": " text"}]}],
    )

    assert first.choices[0].message.content == "Now say it twice"
    assert first.model_dump(exclude={"id"}) == second.model_dump(exclude={"id"})
    assert (first.id, second.id) == ("chatcmpl-fake-1", "chatcmpl-fake-2")
    assert tokens == ["", "Now", " say", " it", " twice", None]
    assert message.content[0].type == "text"
    assert message.content[0].text == "Block text"


async def test_replies_are_taken_in_order_then_default(
    server: FakeLLMServer, openai_client: openai.AsyncOpenAI, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    server.script("first reply", ScriptedReply(tokens=["second"]))
    server.script("third")
    assert server.pending_replies == 3
    server.default_reply = "fallback answer"

    answers = [
        (await openai_client.chat.completions.create(model="m", messages=USER_MESSAGES)).choices[0].message.content,
        text_of(await anthropic_client.messages.create(model="m", max_tokens=8, messages=USER_MESSAGES)),
        (await openai_client.chat.completions.create(model="m", messages=USER_MESSAGES)).choices[0].message.content,
        (await openai_client.chat.completions.create(model="m", messages=USER_MESSAGES)).choices[0].message.content,
    ]

    assert answers == ["first reply", "second", "third", "fallback answer"]
    assert server.pending_replies == 0
    assert [request.api for request in server.requests] == ["openai", "anthropic", "openai", "openai"]


async def test_default_reply_function(server: FakeLLMServer, openai_client: openai.AsyncOpenAI) -> None:
    def reply(request: RecordedRequest) -> ScriptedReply:
        return ScriptedReply(tokens=[f"{request.api}:{len(request.body['messages'])}"], finish_reason="length")

    server.default_reply = reply
    completion = await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES)

    assert completion.choices[0].message.content == "openai:3"
    assert completion.choices[0].finish_reason == "length"


async def test_concurrent_streams(server: FakeLLMServer, openai_client: openai.AsyncOpenAI) -> None:
    server.default_reply = lambda request: ScriptedReply.from_text(
        request.body["messages"][-1]["content"], token_delay=0.02
    )

    async def ask(text: str) -> list[str | None]:
        messages: list[Any] = [{"role": "user", "content": text}]
        stream = await openai_client.chat.completions.create(model="gpt-test", messages=messages, stream=True)
        return [chunk.choices[0].delta.content async for chunk in stream]

    answers = await asyncio.gather(ask("one two three"), ask("four five six"), ask("seven eight nine"))

    assert answers == [
        ["", "one", " two", " three", None],
        ["", "four", " five", " six", None],
        ["", "seven", " eight", " nine", None],
    ]
    assert sorted(request.connection_id for request in server.requests) == [1, 2, 3]


async def test_extra_response_headers(server: FakeLLMServer, openai_client: openai.AsyncOpenAI) -> None:
    server.script(ScriptedReply(status=429, headers={"retry-after": "7"}))

    with pytest.raises(openai.RateLimitError) as raised:
        await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES)

    assert raised.value.response.headers["retry-after"] == "7"
    assert raised.value.response.headers["x-request-id"] == "req_fake_1"


async def test_keep_alive_reuses_the_connection(server: FakeLLMServer, openai_client: openai.AsyncOpenAI) -> None:
    for _ in range(2):
        stream = await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES, stream=True)
        assert len([chunk async for chunk in stream]) == 6
    await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES)

    assert [request.connection_id for request in server.requests] == [1, 1, 1]


# Raw HTTP


async def test_raw_http_404_json_sse_on_one_connection(server: FakeLLMServer) -> None:
    server.script(ScriptedReply(tokens=["x", "y"]))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(http_request("GET", "/v1/models"))
        writer.write(http_request("POST", "/v1/chat/completions", {"model": "m", "messages": [], "stream": True}))
        writer.write(http_request("POST", "/v1/messages?beta=true", {"model": "m", "messages": []}))
        not_found = await read_response(reader)
        streamed = await read_response(reader)
        message = await read_response(reader)
    finally:
        writer.close()
        await writer.wait_closed()

    assert not_found[0] == 404
    assert not_found[1]["content-type"] == "application/json"
    assert json.loads(not_found[2]) == {"error": {"message": "Not found: GET /v1/models", "type": "not_found_error"}}
    assert streamed[0] == 200
    assert streamed[1]["content-type"] == "text/event-stream; charset=utf-8"
    events = streamed[2].decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    contents = [json.loads(event.removeprefix("data: "))["choices"][0]["delta"] for event in events[:-2]]
    assert contents == [{"role": "assistant", "content": "", "refusal": None}, {"content": "x"}, {"content": "y"}, {}]
    assert message[0] == 200
    assert json.loads(message[2])["content"] == [{"type": "text", "text": ""}]
    assert [(r.method, r.path, r.query, r.api) for r in server.requests] == [
        ("GET", "/v1/models", "", None),
        ("POST", "/v1/chat/completions", "", "openai"),
        ("POST", "/v1/messages", "beta=true", "anthropic"),
    ]
    assert {request.connection_id for request in server.requests} == {1}


async def test_raw_http_invalid_json_body_is_400(server: FakeLLMServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"POST /v1/messages HTTP/1.1\r\ncontent-length: 5\r\nconnection: close\r\n\r\n{nope")
        status, headers, body = await read_response(reader)
        assert await reader.read() == b""  # the server closed the connection as asked
    finally:
        writer.close()
        await writer.wait_closed()

    assert (status, headers["connection"]) == (400, "close")
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert server.requests[0].raw_body == b"{nope"
    assert server.requests[0].body is None
    assert server.pending_replies == 0


# Helpers


def test_tokenize_round_trips() -> None:
    assert tokenize("Hello there, world!") == ["Hello", " there,", " world!"]
    assert tokenize("  two  spaces \n") == ["  two", "  spaces \n"]
    assert tokenize("   ") == ["   "]
    assert tokenize("") == []
    assert ScriptedReply.from_text("a b", finish_reason="length") == ScriptedReply(
        tokens=["a", " b"], finish_reason="length"
    )
    assert ScriptedReply(tokens=["a", " b"]).text == "a b"


async def test_addresses_and_restart() -> None:
    server = FakeLLMServer()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    async with server:
        assert server.port > 0
        assert server.openai_base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.anthropic_base_url == f"http://127.0.0.1:{server.port}"
        with pytest.raises(RuntimeError, match="already started"):
            await server.start()
    await server.stop()  # stopping twice is harmless


async def test_a_reply_script_that_raises_is_answered_with_a_500_that_names_the_error(
    server: FakeLLMServer,
    openai_client: openai.AsyncOpenAI,
    anthropic_client: anthropic.AsyncAnthropic,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def buggy_script(request: RecordedRequest) -> str:
        return {"oops": 1}["missing"]

    server.default_reply = buggy_script
    expected = "The fake LLM server's reply script failed: KeyError: 'missing'"
    with pytest.raises(openai.InternalServerError) as from_openai:
        await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES)
    assert from_openai.value.body == {
        "message": expected,
        "type": "server_error",
        "param": None,
        "code": "server_error",
    }
    with pytest.raises(anthropic.InternalServerError) as from_anthropic:
        await anthropic_client.messages.create(model="claude-test", max_tokens=64, messages=USER_MESSAGES)
    assert from_anthropic.value.body == {"type": "error", "error": {"type": "api_error", "message": expected}}
    assert [type(error) for error in server.script_errors] == [KeyError, KeyError]
    assert "reply script" in caplog.text  # the traceback is logged too
    server.default_reply = "fine again"  # the server keeps serving
    completion = await openai_client.chat.completions.create(model="gpt-test", messages=USER_MESSAGES)
    assert completion.choices[0].message.content == "fine again"
