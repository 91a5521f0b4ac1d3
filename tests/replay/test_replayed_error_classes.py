"""Replayed errors keep their class: the application's own `except` catches a replayed SDK error as it caught the
live one, with the same attributes and fingerprint; secrets in error bodies never reach the store; a class that
cannot be imported falls back to a plain `RecordedError`."""

from __future__ import annotations

import copy
import pickle
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from miniagents import REDACTION, InteractionContext, MiniAgent, MiniAgents, miniagent
from miniagents.events import describe_error
from miniagents.ext.llm.anthropic import anthropic_agent
from miniagents.ext.llm.openai import openai_agent
from miniagents.testing.fake_llm_server import FakeLLMServer, ScriptedReply
from replay import RecordedError, Replay
from replay.streams import rebuild_error
from store import MemoryStore, SQLiteStore
from store.base import EventStore

SDK_ATTRIBUTES = ("status_code", "message", "body", "code", "type", "param", "request_id")
MISSING = object()


class VendorQuotaError(Exception):
    """A vendor SDK's error whose `__init__` wants a live object that a replay does not have."""

    def __init__(self, client: object, status_code: int) -> None:
        super().__init__(f"quota exceeded (HTTP {status_code})")
        self.client = client
        self.status_code = status_code


class SealedVendorError(Exception):
    """An importable error class that refuses subclasses, so it cannot be combined with `RecordedError`."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("SealedVendorError is final")


@pytest.fixture
async def server() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as fake_server:
        yield fake_server


@pytest.fixture
async def openai_client(server: FakeLLMServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0) as client:
        yield client


@pytest.fixture
async def anthropic_client(server: FakeLLMServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, api_key="test", max_retries=0) as client:
        yield client


def llm_agent(provider: str, client: Any) -> MiniAgent:
    if provider == "openai":
        return openai_agent.fork(model="test-model", async_client=client)
    return anthropic_agent.fork(model="test-model", async_client=client, max_tokens=10)


def application(llm: MiniAgent, handled: type[BaseException], caught: list[BaseException]) -> MiniAgent:
    """The user's own orchestration (run live in a replay): asks the LLM and handles its failure itself."""

    @miniagent
    async def app(ctx: InteractionContext) -> None:
        tokens: list[str] = []
        try:
            async for reply in llm.inquire("Tell me more", stream=True):
                async for token in reply:
                    tokens.append(token)
        except handled as error:
            caught.append(error)
            ctx.reply(f"fallback after {tokens}: {type(error).__name__} {getattr(error, 'status_code', None)}")
        else:
            ctx.reply("".join(tokens))

    return app


async def run(app: MiniAgent, replay: Replay) -> list[str]:
    async with MiniAgents(replay=replay):
        return [str(message) for message in await app.inquire("go").aresolve_messages()]


async def record_then_replay(app: MiniAgent, store_factory: Any) -> tuple[Replay, list[str], Replay, list[str]]:
    live = Replay(store_factory(), mode="once")
    live_replies = await run(app, live)
    assert live.recording
    replayed = Replay(store_factory(), mode="none")
    replayed_replies = await run(app, replayed)
    assert replayed.replaying and replayed.replayed_calls >= 1
    return live, live_replies, replayed, replayed_replies


def memory_store_factory() -> Any:
    store = MemoryStore()
    return lambda: store


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("failure", ["status 429", "connection dropped mid-stream"])
async def test_an_sdk_error_is_caught_by_the_same_except_live_and_replayed_with_the_same_fingerprint(
    server: FakeLLMServer,
    openai_client: openai.AsyncOpenAI,
    anthropic_client: anthropic.AsyncAnthropic,
    provider: str,
    failure: str,
) -> None:
    sdk: Any = openai if provider == "openai" else anthropic
    if failure == "status 429":
        server.script(ScriptedReply(tokens=["never"], status=429, error_message="Slow down"))
    else:
        server.script(ScriptedReply(tokens=["a", "b", "c", "d"], drop_after=2))
    caught: list[BaseException] = []
    client = openai_client if provider == "openai" else anthropic_client
    app = application(llm_agent(provider, client), sdk.APIError, caught)

    live, live_replies, replayed, replayed_replies = await record_then_replay(app, memory_store_factory())

    assert len(server.requests) == 1  # the replay never reached the server
    assert replayed_replies == live_replies  # the same `except` branch, with the same tokens before the error
    assert live_replies[0].startswith("fallback after")
    assert replayed.fingerprint == live.fingerprint
    live_error, replayed_error = caught
    expected_class = sdk.RateLimitError if failure == "status 429" else sdk.APIConnectionError
    assert type(live_error) is expected_class and not isinstance(live_error, RecordedError)
    assert isinstance(replayed_error, expected_class) and isinstance(replayed_error, RecordedError)
    assert type(replayed_error).__qualname__ == expected_class.__qualname__
    assert type(replayed_error).__module__ == expected_class.__module__
    assert str(replayed_error) == str(live_error)
    for name in SDK_ATTRIBUTES:
        assert getattr(replayed_error, name, MISSING) == getattr(live_error, name, MISSING), name
    assert replayed_error.request is None  # type: ignore[attr-defined]
    if failure == "status 429":
        assert replayed_error.status_code == 429  # type: ignore[attr-defined]
        assert replayed_error.response is None  # type: ignore[attr-defined]
        assert replayed_error.request_id == "req_fake_1"  # type: ignore[attr-defined]
        expected_type = "rate_limit_exceeded" if provider == "openai" else "rate_limit_error"
        assert replayed_error.type == expected_type  # type: ignore[attr-defined]
    # a run that records the replayed error records it as the original was
    assert describe_error(replayed_error) == describe_error(live_error)


async def test_an_anthropic_rate_limit_is_handled_by_its_own_class_from_a_sqlite_recording(
    tmp_path: Path, server: FakeLLMServer, anthropic_client: anthropic.AsyncAnthropic
) -> None:
    server.script(ScriptedReply(status=429, error_message="Number of requests has exceeded your rate limit"))
    caught: list[BaseException] = []
    app = application(llm_agent("anthropic", anthropic_client), anthropic.RateLimitError, caught)

    live, live_replies, replayed, replayed_replies = await record_then_replay(
        app, lambda: SQLiteStore(tmp_path / "recording.db")
    )

    assert replayed_replies == live_replies == ["fallback after []: RateLimitError 429"]
    assert replayed.fingerprint == live.fingerprint
    live_error, replayed_error = caught
    assert isinstance(replayed_error, anthropic.RateLimitError) and isinstance(replayed_error, RecordedError)
    assert replayed_error.body == live_error.body  # type: ignore[attr-defined]
    assert replayed_error.body["error"]["type"] == "rate_limit_error"  # type: ignore[attr-defined]
    assert replayed_error.message == live_error.message  # type: ignore[attr-defined]
    assert replayed_error.api_message == "Number of requests has exceeded your rate limit"  # type: ignore[attr-defined]


async def test_a_secret_in_an_sdk_error_body_never_reaches_the_store_and_is_redacted_when_replayed(
    tmp_path: Path, server: FakeLLMServer, openai_client: openai.AsyncOpenAI
) -> None:
    api_key, password = "sk-live-0123456789abcdefSECRET", "hunter2-very-secret-value"
    message = f'Quota exceeded for {api_key}; request was {{"api_key": "{password}", "model": "test-model"}}'
    server.script(ScriptedReply(status=429, error_message=message))
    caught: list[BaseException] = []
    app = application(llm_agent("openai", openai_client), openai.APIError, caught)

    live, _, replayed, _ = await record_then_replay(app, lambda: SQLiteStore(tmp_path / "recording.db"))

    live_error, replayed_error = caught
    assert api_key in str(live_error) and password in str(live_error)  # the live error itself is left alone
    stored = bytes_of_files_in(tmp_path)  # the database and any journal beside it
    assert b"Quota exceeded for" in stored and REDACTION.marker.encode() in stored
    assert api_key.encode() not in stored
    assert password.encode() not in stored
    marker = REDACTION.marker
    redacted = f'Quota exceeded for {marker}; request was {{"api_key": "{marker}", "model": "test-model"}}'
    assert isinstance(replayed_error, openai.RateLimitError)
    assert replayed_error.body["message"] == redacted  # type: ignore[index]
    assert replayed_error.message == str(replayed_error) == f"Error code: 429 - {redacted}"
    assert api_key not in str(replayed_error) and password not in repr(replayed_error)
    assert replayed.fingerprint == live.fingerprint


def bytes_of_files_in(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file())


def raising_agent(error: BaseException) -> MiniAgent:
    """An outside-world agent (answered from the recording in a replay) that replies, then raises `error`."""

    @miniagent(talks_to_outside_world=True)
    async def vendor_sdk(ctx: InteractionContext) -> None:
        ctx.reply("partial answer")
        raise error

    return vendor_sdk


async def record_and_replay_a_raised(error: BaseException) -> tuple[BaseException, BaseException, Replay, Replay]:
    caught: list[BaseException] = []

    @miniagent
    async def app(ctx: InteractionContext) -> None:
        try:
            await raising_agent(error).inquire("q").aresolve_messages()
        except Exception as exc:
            caught.append(exc)
            ctx.reply("handled")

    live, live_replies, replayed, replayed_replies = await record_then_replay(app, memory_store_factory())
    assert replayed_replies == live_replies
    live_error, replayed_error = caught
    assert live_error is error
    return live_error, replayed_error, live, replayed


async def test_a_builtin_error_comes_back_as_itself_with_the_recorded_fingerprint() -> None:
    for error in (ValueError("bad value"), ConnectionResetError("peer went away"), KeyError("missing")):
        live_error, replayed_error, live, replayed = await record_and_replay_a_raised(error)
        assert type(replayed_error) is type(live_error)
        assert not isinstance(replayed_error, RecordedError)
        if not isinstance(error, KeyError):  # a KeyError's str() quotes its argument, here the recorded text
            assert str(replayed_error) == str(live_error)
        assert replayed.fingerprint == live.fingerprint  # even a KeyError is re-recorded exactly as it was


async def test_an_error_class_of_a_test_module_comes_back_as_its_class_without_calling_its_init() -> None:
    live_error, replayed_error, live, replayed = await record_and_replay_a_raised(VendorQuotaError(object(), 503))

    assert type(replayed_error) is not VendorQuotaError
    assert isinstance(replayed_error, VendorQuotaError) and isinstance(replayed_error, RecordedError)
    assert type(replayed_error).__name__ == "VendorQuotaError"
    assert type(replayed_error).__qualname__ == VendorQuotaError.__qualname__
    assert type(replayed_error).__module__ == VendorQuotaError.__module__ == __name__
    assert str(replayed_error) == str(live_error) == "quota exceeded (HTTP 503)"
    assert replayed_error.status_code == 503  # type: ignore[attr-defined]
    assert not hasattr(replayed_error, "client")  # not plain JSON: not recorded
    assert (replayed_error.type_name, replayed_error.module, replayed_error.text) == (
        "VendorQuotaError",
        __name__,
        "quota exceeded (HTTP 503)",
    )
    assert replayed.fingerprint == live.fingerprint
    for copied in (copy.deepcopy(replayed_error), pickle.loads(pickle.dumps(replayed_error))):
        assert type(copied) is type(replayed_error) and copied.status_code == 503  # type: ignore[attr-defined]


def _local_error_class() -> type[Exception]:
    class LocalError(Exception):  # qualname `_local_error_class.<locals>.LocalError`: not importable
        pass

    return LocalError


def _renamed_error_class(module: str, qualname: str) -> type[Exception]:
    error_class = _local_error_class()
    error_class.__module__, error_class.__qualname__ = module, qualname
    return error_class


@pytest.mark.parametrize(
    "error_class",
    [
        pytest.param(_local_error_class(), id="defined in a function"),
        pytest.param(_renamed_error_class("no_such_module_for_replay", "VendorError"), id="module missing"),
        pytest.param(_renamed_error_class(__name__, "NoSuchError"), id="attribute missing"),
        pytest.param(_renamed_error_class("json", "dumps"), id="not an exception class"),
        pytest.param(SealedVendorError, id="cannot be combined with RecordedError"),
    ],
)
async def test_an_error_whose_class_cannot_be_rebuilt_comes_back_as_a_plain_recorded_error(
    error_class: type[Exception],
) -> None:
    error = error_class("upstream unavailable")
    error.status_code = 503  # type: ignore[attr-defined]

    _, replayed_error, live, replayed = await record_and_replay_a_raised(error)

    assert type(replayed_error) is RecordedError
    assert (replayed_error.type_name, replayed_error.module, replayed_error.text) == (
        error_class.__qualname__,
        error_class.__module__,
        "upstream unavailable",
    )
    assert str(replayed_error) == f"{error_class.__module__}.{error_class.__qualname__}: upstream unavailable"
    assert replayed_error.status_code == 503  # type: ignore[attr-defined]
    assert replayed.fingerprint == live.fingerprint


def test_descriptions_without_attributes_from_older_recordings_still_replay() -> None:
    description = {"type": "RateLimitError", "module": "openai", "text": "Error code: 429 - {'message': 'Slow'}"}

    error = rebuild_error(description)

    assert isinstance(error, openai.RateLimitError) and isinstance(error, RecordedError)
    assert str(error) == description["text"]
    assert (error.request, error.response, error.message) == (None, None, None)
    assert error.status_code == 429  # the class's own value
    assert describe_error(error) == description  # re-recorded exactly as it was: no "attributes" added
    connection_error = rebuild_error(
        {"type": "APIConnectionError", "module": "anthropic", "text": "Connection error."}
    )
    assert isinstance(connection_error, anthropic.APIConnectionError) and connection_error.request is None
    assert not hasattr(connection_error, "response")  # as live: a connection error has no response


@pytest.mark.parametrize(
    "description",
    [
        {"type": "KeyboardInterrupt", "module": "builtins", "text": ""},
        {"type": "SystemExit", "module": "builtins", "text": "1"},
        {"type": "GeneratorExit", "module": "builtins", "text": ""},
        {"type": "CancelledError", "module": "asyncio.exceptions", "text": ""},
        {"type": "VendorError", "module": "..relative", "text": "t"},
        {"type": "VendorError", "module": "", "text": "t"},
        {"type": 5, "module": ["not", "a", "name"], "text": None},
        {},
    ],
)
def test_rebuilding_never_raises_nor_rebuilds_what_must_not_be_raised(description: dict[str, Any]) -> None:
    error = rebuild_error({**description, "attributes": {"status_code": 500, "request": "not restored"}})

    assert type(error) is RecordedError
    assert error.type_name == str(description.get("type", "Exception"))
    assert error.status_code == 500  # type: ignore[attr-defined]
    assert not hasattr(error, "request")  # only the well-known attributes are restored


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_secret_named_in_an_error_text_is_redacted_alike_in_every_store(
    tmp_path: Path, server: FakeLLMServer, openai_client: openai.AsyncOpenAI, kind: str
) -> None:
    store: EventStore = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "recording.db")
    server.script(ScriptedReply(status=429, error_message="token=abc123 expired"))
    caught: list[BaseException] = []
    app = application(llm_agent("openai", openai_client), openai.APIError, caught)

    live, _, replayed, _ = await record_then_replay(app, lambda: store)

    live_error, replayed_error = caught
    assert replayed_error.body == {**live_error.body, "message": f"token={REDACTION.marker} expired"}  # type: ignore[attr-defined]
    assert replayed_error.code == "rate_limit_exceeded"  # type: ignore[attr-defined]
    assert replayed.fingerprint == live.fingerprint


@miniagent(talks_to_outside_world=True)
async def builtin_failure(ctx: InteractionContext, kind: str) -> None:
    if kind == "key":
        raise KeyError("user_id")
    if kind == "os":
        raise FileNotFoundError(2, "No such file or directory", "/tmp/missing.txt")
    raise ValueError("a", 1)


@miniagent
async def describes_the_failure(ctx: InteractionContext, kind: str) -> None:
    try:
        await builtin_failure.inquire(kind=kind).aresolve_messages()
    except Exception as error:  # what an application may read of a built-in exception
        attributes = (getattr(error, "errno", None), getattr(error, "filename", None))
        ctx.reply(f"{type(error).__name__}|{error}|{error.args!r}|{attributes}")


@pytest.mark.parametrize("kind", ["key", "os", "args"])
async def test_a_built_in_exception_comes_back_with_its_args_and_fields(kind: str) -> None:
    store = MemoryStore()

    async def run(mode: str) -> tuple[str, str]:
        replay = Replay(store, mode=mode)
        async with MiniAgents(replay=replay):
            [message] = await describes_the_failure.inquire(kind=kind).aresolve_messages()
        return str(message), replay.fingerprint

    live = await run("once")
    assert await run("none") == live
