"""A local fake LLM HTTP server (standard library only) that the official OpenAI and Anthropic SDKs can talk to.

    async with FakeLLMServer() as server:
        server.script("Hello there", ScriptedReply(tokens=["Hi"], status=429))
        client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)
        anthropic_client = anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, api_key="test", max_retries=0)

Both SDKs retry 408/409/429/5xx responses and timeouts by default (``max_retries=2``, with backoff): create clients
with ``max_retries=0`` in tests, unless the retries are what is tested, and close them (``await client.close()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, NoReturn

logger = logging.getLogger(__name__)

__all__ = [
    "DefaultReply",
    "FakeLLMServer",
    "RecordedRequest",
    "ScriptedReply",
    "TokenUsage",
    "dropped_connection_errors",
    "echo_last_user_message",
    "tokenize",
]

ApiName = Literal["openai", "anthropic"]

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
FIXED_CREATED = 1_700_000_000
_MAX_BODY_BYTES = 64 * 1024 * 1024
_TOKEN_RE = re.compile(r"\s*\S+")
_MALFORMED_DATA = '{"this is": not valid json'

_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_denied",
    404: "not_found_error",
    429: "rate_limit_exceeded",
}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def tokenize(text: str) -> list[str]:
    """Split text into word-ish tokens (each word with its leading whitespace) that join back to the text."""
    tokens = _TOKEN_RE.findall(text)
    rest = text[sum(len(token) for token in tokens) :]
    if rest:
        if tokens:
            tokens[-1] += rest
        else:
            tokens.append(rest)
    return tokens


@dataclass(frozen=True)
class TokenUsage:
    """Token counts reported for a reply (mapped to each API's usage fields)."""

    input_tokens: int
    output_tokens: int


@dataclass
class ScriptedReply:
    """One scripted answer to one request, including its failure mode, if any.

    Attributes:
        tokens: the reply's text, streamed as one delta per token.
        finish_reason: the OpenAI ``finish_reason``.
        stop_reason: the Anthropic ``stop_reason``.
        model: the model reported; None reports the request's ``model``.
        usage: the token counts reported; None counts the word-ish tokens of the request's messages and system
            prompt as input and ``len(tokens)`` as output.
        token_delay: seconds between streamed tokens (a reply that is not streamed waits as long in all).
        status: if not 200, answer with this status and the API's JSON error body (the SDKs raise typed errors).
        error_message: the message of that error body.
        malformed_after: after this many tokens, send an event whose data is invalid JSON, then end the stream
            (a reply that is not streamed sends an invalid JSON body).
        drop_after: after this many tokens, close the connection in the middle of the body (a reply that is not
            streamed closes it right after the headers). The earlier of ``drop_after`` and ``malformed_after`` wins.
        hang: never answer: wait until the client gives up or the server stops.
        headers: extra response headers, such as ``retry-after`` or ``x-should-retry``.
    """

    tokens: list[str] = field(default_factory=list)
    finish_reason: str = "stop"
    stop_reason: str = "end_turn"
    model: str | None = None
    usage: TokenUsage | None = None
    token_delay: float = 0.0
    status: int = 200
    error_message: str | None = None
    malformed_after: int | None = None
    drop_after: int | None = None
    hang: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_text(cls, text: str, **kwargs: Any) -> ScriptedReply:
        """Build a reply whose tokens are the word-ish tokens of ``text``."""
        return cls(tokens=tokenize(text), **kwargs)

    @property
    def text(self) -> str:
        """The full reply text."""
        return "".join(self.tokens)


@dataclass
class RecordedRequest:
    """A request received by the server, recorded before it was answered."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    raw_body: bytes
    api: ApiName | None
    connection_id: int

    @property
    def stream(self) -> bool:
        """Whether the request asked for a streamed reply."""
        return isinstance(self.body, dict) and self.body.get("stream") is True


DefaultReply = ScriptedReply | str | Callable[[RecordedRequest], "ScriptedReply | str"]


def dropped_connection_errors(sdk: Any) -> tuple[type[BaseException], ...]:
    """What a connection dropped by ``drop_after`` surfaces as with this SDK module (``openai`` or ``anthropic``).

    Either the SDK's ``APIConnectionError`` or its HTTP transport's ``TransportError``: SDK releases differ in
    wrapping the transport's error, and in which transport (``httpx`` or its successor) they use. The transport is
    found through the SDK's public ``DefaultAsyncHttpxClient``, a subclass of the transport's client.
    """
    client_base = sdk.DefaultAsyncHttpxClient.__mro__[1]
    transport = importlib.import_module(client_base.__module__.partition(".")[0])
    return (sdk.APIConnectionError, transport.TransportError)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def _messages(request: RecordedRequest) -> list[dict[str, Any]]:
    messages = request.body.get("messages") if isinstance(request.body, dict) else None
    return [message for message in messages if isinstance(message, dict)] if isinstance(messages, list) else []


def echo_last_user_message(request: RecordedRequest) -> ScriptedReply:
    """The default reply: the text of the request's last user message, tokenized."""
    for message in reversed(_messages(request)):
        if message.get("role") == "user":
            return ScriptedReply.from_text(_content_text(message.get("content")))
    return ScriptedReply()


def _input_token_count(request: RecordedRequest) -> int:
    texts = [_content_text(message.get("content")) for message in _messages(request)]
    if isinstance(request.body, dict):
        texts.append(_content_text(request.body.get("system")))
    return sum(len(tokenize(text)) for text in texts)


def _first_failure(reply: ScriptedReply) -> tuple[int, Literal["drop", "malformed"] | None]:
    """After how many tokens the reply fails, and how; the earlier failure wins (a drop, on a tie)."""
    failures: list[tuple[int, Literal["drop", "malformed"]]] = []
    if reply.drop_after is not None:
        failures.append((reply.drop_after, "drop"))
    if reply.malformed_after is not None:
        failures.append((reply.malformed_after, "malformed"))
    return min(failures) if failures else (len(reply.tokens), None)


def _as_reply(reply: ScriptedReply | str) -> ScriptedReply:
    return ScriptedReply.from_text(reply) if isinstance(reply, str) else reply


class _Closed(Exception):
    """The connection must be closed (client went away, bad request, or a scripted drop)."""


class _Connection:
    """One accepted HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection_id: int) -> None:
        self.reader = reader
        self.writer = writer
        self.connection_id = connection_id
        self.keep_alive = True

    async def read_request(self) -> RecordedRequest | None:
        """Read one request; None on a clean end of the connection."""
        try:
            line = await self.reader.readline()
            while line in (b"\r\n", b"\n"):
                line = await self.reader.readline()
            if not line:
                return None
            method, target, version = line.decode("latin-1").split()
            headers: dict[str, str] = {}
            while (line := await self.reader.readline()) not in (b"\r\n", b"\n"):
                if not line:
                    raise _Closed
                name, _, value = line.decode("latin-1").partition(":")
                key, value = name.strip().lower(), value.strip()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            raw_body = await self._read_body(headers)
            connection_header = headers.get("connection", "").lower()
            self.keep_alive = connection_header == "keep-alive" or (
                version != "HTTP/1.0" and connection_header != "close"
            )
        except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as error:
            raise _Closed from error
        path, _, query = target.partition("?")
        try:
            body: Any = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = None
        api: ApiName | None = None
        if method == "POST" and path.rstrip("/") == OPENAI_PATH:
            api = "openai"
        elif method == "POST" and path.rstrip("/") == ANTHROPIC_PATH:
            api = "anthropic"
        return RecordedRequest(method, path, query, headers, body, raw_body, api, self.connection_id)

    async def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while size := int((await self.reader.readline()).split(b";")[0], 16):
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        length = int(headers.get("content-length", "0"))
        if not 0 <= length <= _MAX_BODY_BYTES:
            raise ValueError(f"bad content-length {length}")
        return await self.reader.readexactly(length)

    def head(self, status: int, headers: dict[str, str]) -> bytes:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}", *(f"{name}: {value}" for name, value in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send_json(self, status: int, payload: Any, headers: dict[str, str], keep_alive: bool) -> None:
        await self.send_bytes(status, json.dumps(payload).encode(), headers, keep_alive)

    async def send_bytes(self, status: int, body: bytes, headers: dict[str, str], keep_alive: bool) -> None:
        head = {
            "content-type": "application/json",
            "content-length": str(len(body)),
            "connection": "keep-alive" if keep_alive else "close",
            **headers,
        }
        self.writer.write(self.head(status, head) + body)
        await self._drain()

    async def start_chunked(self, headers: dict[str, str]) -> None:
        head = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "transfer-encoding": "chunked",
            **headers,
        }
        self.writer.write(self.head(200, head))
        await self._drain()

    async def send_chunk(self, data: str) -> None:
        encoded = data.encode()
        self.writer.write(b"%x\r\n%s\r\n" % (len(encoded), encoded))
        await self._drain()

    async def end_chunked(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self._drain()

    async def _drain(self) -> None:
        try:
            await self.writer.drain()
        except ConnectionError as error:
            raise _Closed from error

    async def drop(self) -> NoReturn:
        """Close the connection abruptly, after flushing what was written so far."""
        await self._drain()
        raise _Closed

    async def wait_for_client_to_leave(self) -> NoReturn:
        """Never answer: wait until the client closes the connection (or the server stops)."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        raise _Closed


class _Answer:
    """Renders one scripted reply for one request in the request's API format."""

    def __init__(self, request: RecordedRequest, reply: ScriptedReply, response_id: str) -> None:
        self.request = request
        self.reply = reply
        self.response_id = response_id
        body = request.body if isinstance(request.body, dict) else {}
        self.model = reply.model if reply.model is not None else str(body.get("model", "fake-model"))
        self.usage = reply.usage or TokenUsage(_input_token_count(request), len(reply.tokens))
        stream_options = body.get("stream_options")
        self.include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True

    # OpenAI Chat Completions

    def openai_usage(self) -> dict[str, int]:
        usage = self.usage
        return {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        }

    def openai_completion(self) -> dict[str, Any]:
        return {
            "id": self.response_id,
            "object": "chat.completion",
            "created": FIXED_CREATED,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.reply.text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": self.reply.finish_reason,
                }
            ],
            "usage": self.openai_usage(),
        }

    def openai_chunk(self, delta: dict[str, Any] | None, finish_reason: str | None = None) -> str:
        chunk: dict[str, Any] = {
            "id": self.response_id,
            "object": "chat.completion.chunk",
            "created": FIXED_CREATED,
            "model": self.model,
            "system_fingerprint": None,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            chunk["usage"] = self.openai_usage() if delta is None else None
        return f"data: {json.dumps(chunk)}\n\n"

    def openai_error(self, status: int) -> dict[str, Any]:
        error_type = _OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        message = self.reply.error_message or f"Fake error {status}"
        return {"error": {"message": message, "type": error_type, "param": None, "code": error_type}}

    # Anthropic Messages

    def anthropic_message(self, text: str | None, stop_reason: str | None, output_tokens: int) -> dict[str, Any]:
        return {
            "id": self.response_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [] if text is None else [{"type": "text", "text": text}],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": self.usage.input_tokens, "output_tokens": output_tokens},
        }

    @staticmethod
    def anthropic_event(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"

    def anthropic_error(self, status: int) -> dict[str, Any]:
        error_type = _ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        message = self.reply.error_message or f"Fake error {status}"
        return {"type": "error", "error": {"type": error_type, "message": message}}

    # Rendering

    def error_body(self, status: int) -> dict[str, Any]:
        return self.openai_error(status) if self.request.api == "openai" else self.anthropic_error(status)

    def complete_body(self) -> dict[str, Any]:
        if self.request.api == "openai":
            return self.openai_completion()
        return self.anthropic_message(self.reply.text, self.reply.stop_reason, self.usage.output_tokens)

    def stream_prologue(self) -> list[str]:
        if self.request.api == "openai":
            return [self.openai_chunk({"role": "assistant", "content": "", "refusal": None})]
        return [
            self.anthropic_event("message_start", {"message": self.anthropic_message(None, None, 0)}),
            self.anthropic_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            self.anthropic_event("ping", {}),
        ]

    def stream_token(self, token: str) -> str:
        if self.request.api == "openai":
            return self.openai_chunk({"content": token})
        return self.anthropic_event(
            "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": token}}
        )

    def stream_malformed(self) -> str:
        if self.request.api == "openai":
            return f"data: {_MALFORMED_DATA}\n\n"
        return f"event: content_block_delta\ndata: {_MALFORMED_DATA}\n\n"

    def stream_epilogue(self) -> list[str]:
        if self.request.api == "openai":
            events = [self.openai_chunk({}, self.reply.finish_reason)]
            if self.include_usage:
                events.append(self.openai_chunk(None))
            return [*events, "data: [DONE]\n\n"]
        stop = {"stop_reason": self.reply.stop_reason, "stop_sequence": None}
        return [
            self.anthropic_event("content_block_stop", {"index": 0}),
            self.anthropic_event(
                "message_delta", {"delta": stop, "usage": {"output_tokens": self.usage.output_tokens}}
            ),
            self.anthropic_event("message_stop", {}),
        ]


class FakeLLMServer:
    """A real HTTP/1.1 server on 127.0.0.1 that answers OpenAI and Anthropic SDK requests with scripted replies.

    It serves ``POST /v1/chat/completions`` and ``POST /v1/messages``, streamed (server-sent events, chunked) or
    not, and answers anything else with a 404. Each request takes the next scripted reply, or else the default
    reply, and is recorded in ``requests`` before it is answered. Response ids are numbered per server and
    ``created`` is fixed, so that replies are deterministic.
    """

    def __init__(self, *, port: int = 0, default_reply: DefaultReply = echo_last_user_message) -> None:
        """Create a stopped server.

        Args:
            port: TCP port on 127.0.0.1; 0 (the default) picks a free ephemeral port.
            default_reply: answers requests when no scripted reply is queued: a ``ScriptedReply``, a text (split
                into word-ish tokens), or a function of the ``RecordedRequest`` returning either. The default
                echoes the last user message.
        """
        self.default_reply: DefaultReply = default_reply
        self.requests: list[RecordedRequest] = []
        self.script_errors: list[Exception] = []
        """What the reply script (a ``default_reply`` function) raised; each such request got a 500 whose error
        body names the exception, as a real API's server error would."""
        self._requested_port = port
        self._queue: deque[ScriptedReply] = deque()
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._connection_count = 0
        self._response_count = 0
        self._stopping = False
        self._request_received = asyncio.Event()

    # Lifecycle

    async def start(self) -> FakeLLMServer:
        """Start listening."""
        if self._server is not None:
            raise RuntimeError("FakeLLMServer is already started")
        self._stopping = False
        self._request_received = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self._requested_port)
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and close every connection, cancelling requests in progress."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        connections = dict(self._connections)
        for handler in connections:
            handler.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        for writer in connections.values():
            writer.close()
        await asyncio.gather(*(writer.wait_closed() for writer in connections.values()), return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> FakeLLMServer:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # Addresses

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        if self._port is None:
            raise RuntimeError("FakeLLMServer is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """The ``base_url`` for ``openai.AsyncOpenAI`` (ends in ``/v1``)."""
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The ``base_url`` for ``anthropic.AsyncAnthropic``."""
        return self.base_url

    # Scripting

    def script(self, *replies: ScriptedReply | str) -> None:
        """Queue replies; each request takes the next one (a text is split into word-ish tokens)."""
        self._queue.extend(_as_reply(reply) for reply in replies)

    @property
    def pending_replies(self) -> int:
        """How many scripted replies are still queued."""
        return len(self._queue)

    async def wait_for_requests(self, count: int = 1) -> list[RecordedRequest]:
        """Wait until at least ``count`` requests have been received; the first ``count`` of them."""
        while len(self.requests) < count:
            await self._request_received.wait()
        return self.requests[:count]

    def _next_reply(self, request: RecordedRequest) -> ScriptedReply:
        if self._queue:
            return self._queue.popleft()
        default = self.default_reply
        return _as_reply(default(request) if callable(default) else default)

    # Serving

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        self._connection_count += 1
        connection = _Connection(reader, writer, self._connection_count)
        try:
            with contextlib.suppress(_Closed):
                while not self._stopping and await self._serve_one(connection):
                    pass
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        except asyncio.CancelledError:
            # Cancelled by stop(), which closes the connection: end normally, as Python 3.11 logs an error for a
            # connection handler task that ends cancelled.
            if not self._stopping:
                raise
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def _serve_one(self, connection: _Connection) -> bool:
        """Answer one request; whether the connection stays open for the next one."""
        request = await connection.read_request()
        if request is None:
            return False
        self.requests.append(request)
        self._request_received.set()
        self._request_received = asyncio.Event()
        keep_alive = connection.keep_alive
        if request.api is None:
            payload = {"error": {"message": f"Not found: {request.method} {request.path}", "type": "not_found_error"}}
            await connection.send_json(404, payload, {}, keep_alive)
            return keep_alive
        if not isinstance(request.body, dict):
            payload = {"error": {"message": "Request body must be a JSON object", "type": "invalid_request_error"}}
            await connection.send_json(400, payload, {}, keep_alive)
            return keep_alive
        try:
            reply = self._next_reply(request)
        except Exception as error:  # a bug in the test's reply script: answer as a real API's failure would
            logger.error("The reply script of %r failed on %s %s", self, request.method, request.path, exc_info=True)
            self.script_errors.append(error)
            message = f"The fake LLM server's reply script failed: {type(error).__name__}: {error}"
            reply = ScriptedReply(status=500, error_message=message)
        self._response_count += 1
        prefix = "chatcmpl-fake-" if request.api == "openai" else "msg_fake_"
        answer = _Answer(request, reply, f"{prefix}{self._response_count}")
        id_header = "x-request-id" if request.api == "openai" else "request-id"
        headers = {id_header: f"req_fake_{self._response_count}", **reply.headers}
        if reply.hang:
            await connection.wait_for_client_to_leave()
        if reply.status != 200:
            await connection.send_json(reply.status, answer.error_body(reply.status), headers, keep_alive)
        elif request.stream:
            await self._stream(connection, answer, headers)
        else:
            await self._complete(connection, answer, headers, keep_alive)
        return keep_alive

    async def _complete(
        self, connection: _Connection, answer: _Answer, headers: dict[str, str], keep_alive: bool
    ) -> None:
        reply = answer.reply
        if reply.token_delay and len(reply.tokens) > 1:
            await asyncio.sleep(reply.token_delay * (len(reply.tokens) - 1))
        _, failure = _first_failure(reply)
        if failure == "drop":
            body = json.dumps(answer.complete_body()).encode()
            connection.writer.write(
                connection.head(200, {"content-type": "application/json", "content-length": str(len(body)), **headers})
            )
            await connection.drop()
        if failure == "malformed":
            await connection.send_bytes(200, _MALFORMED_DATA.encode(), headers, keep_alive)
            return
        await connection.send_json(200, answer.complete_body(), headers, keep_alive)

    async def _stream(self, connection: _Connection, answer: _Answer, headers: dict[str, str]) -> None:
        reply = answer.reply
        await connection.start_chunked(headers)
        for event in answer.stream_prologue():
            await connection.send_chunk(event)
        after, failure = _first_failure(reply)
        for index, token in enumerate(reply.tokens[:after]):
            if index and reply.token_delay:
                await asyncio.sleep(reply.token_delay)
            await connection.send_chunk(answer.stream_token(token))
        if failure == "drop":
            await connection.drop()
        if failure == "malformed":
            await connection.send_chunk(answer.stream_malformed())
            await connection.end_chunked()
            return
        for event in answer.stream_epilogue():
            await connection.send_chunk(event)
        await connection.end_chunked()
