"""FlatSequence and MessageSequence: flattening nested message types, errors at the right position."""

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Union

import pytest
from pydantic import BaseModel

from miniagents.messages import Message, MessagePromise
from miniagents.miniagents import InteractionContext, MessageSequence, MiniAgents, miniagent
from miniagents.promising.promising import PromisingContext, StreamAppender
from miniagents.promising.sentinels import DEFAULT, Sentinel
from miniagents.promising.sequence import FlatSequence

START_ASAP_MODES = [False, True, DEFAULT]


@pytest.mark.parametrize("start_asap", START_ASAP_MODES)
async def test_flat_sequence_flattens_through_the_flattener(start_asap: Union[bool, Sentinel]) -> None:
    async def flattener(_: Any, number: int) -> AsyncIterator[int]:
        for _ in range(number):
            yield number

    async with PromisingContext():
        appender: StreamAppender[int] = StreamAppender(capture_errors=True)
        flat_sequence = FlatSequence[int, int](incoming_streamer=appender, flattener=flattener, start_asap=start_asap)
        with appender:
            for number in range(4):
                appender.append(number)
        assert await flat_sequence.sequence_promise == (1, 2, 2, 3, 3, 3)
        assert [item async for item in flat_sequence.sequence_promise] == [1, 2, 2, 3, 3, 3]


class Note(BaseModel):
    text: str
    priority: int


@pytest.mark.parametrize("start_asap", START_ASAP_MODES)
async def test_message_sequence_flattens_every_message_type(start_asap: Union[bool, Sentinel]) -> None:
    async def async_items() -> AsyncIterator[Any]:
        yield "msg11"
        yield ["msg12"]

    async with PromisingContext():
        outer = MessageSequence(appender_capture_errors=True, start_asap=start_asap)
        with outer.message_appender:  # type: ignore[union-attr]
            outer.message_appender.append("msg1")  # type: ignore[union-attr]
            outer.message_appender.append({"text": "msg2", "some_attr": 2})  # type: ignore[union-attr]
            outer.message_appender.append(Message(text="msg3", another_attr=3))  # type: ignore[union-attr]
            middle = MessageSequence(appender_capture_errors=True, start_asap=start_asap)
            with middle.message_appender:  # type: ignore[union-attr]
                middle.message_appender.append("msg4")  # type: ignore[union-attr]
                inner = MessageSequence(appender_capture_errors=True, start_asap=start_asap)
                with inner.message_appender:  # type: ignore[union-attr]
                    inner.message_appender.append("msg5")  # type: ignore[union-attr]
                    inner.message_appender.append(["msg6", "msg7"])  # type: ignore[union-attr]
                    inner.message_appender.append([[Message(text="msg8", another_attr=8)]])  # type: ignore[union-attr]
                middle.message_appender.append(inner.sequence_promise)  # type: ignore[union-attr]
                middle.message_appender.append("msg9")  # type: ignore[union-attr]
            outer.message_appender.append(middle.sequence_promise)  # type: ignore[union-attr]
            outer.message_appender.append(Message.promise(text="msg10", yet_another_attr=10))  # type: ignore[union-attr]
            outer.message_appender.append(async_items())  # type: ignore[union-attr]
            outer.message_appender.append(Note(text="msg13", priority=1))  # type: ignore[union-attr]
            outer.message_appender.append(iter(["msg14"]))  # type: ignore[union-attr]

        messages = [await promise async for promise in outer.sequence_promise]
        assert messages == [
            Message(text="msg1"),
            Message(text="msg2", some_attr=2),
            Message(text="msg3", another_attr=3),
            Message(text="msg4"),
            Message(text="msg5"),
            Message(text="msg6"),
            Message(text="msg7"),
            Message(text="msg8", another_attr=8),
            Message(text="msg9"),
            Message(text="msg10", yet_another_attr=10),
            Message(text="msg11"),
            Message(text="msg12"),
            Message(text="msg13", priority=1),
            Message(text="msg14"),
        ]
        tokens = [token async for promise in outer.sequence_promise async for token in promise]
        assert tokens == [f"msg{number}" for number in range(1, 15)]


@pytest.mark.parametrize("start_asap", START_ASAP_MODES)
async def test_an_error_deep_in_a_nested_sequence_is_raised_at_its_position(start_asap: Union[bool, Sentinel]) -> None:
    async with PromisingContext(appenders_capture_errors_by_default=True):
        outer = MessageSequence(start_asap=start_asap)
        with outer.message_appender:  # type: ignore[union-attr]
            outer.message_appender.append("msg1")  # type: ignore[union-attr]
            middle = MessageSequence(start_asap=start_asap)
            with middle.message_appender:  # type: ignore[union-attr]
                middle.message_appender.append("msg2")  # type: ignore[union-attr]
                inner = MessageSequence(start_asap=start_asap)
                with inner.message_appender:  # type: ignore[union-attr]
                    inner.message_appender.append("msg3")  # type: ignore[union-attr]
                    raise ValueError("msg5")
                middle.message_appender.append(inner.sequence_promise)  # type: ignore[union-attr]
                middle.message_appender.append("msg6")  # type: ignore[union-attr]
            outer.message_appender.append(middle.sequence_promise)  # type: ignore[union-attr]
            outer.message_appender.append("msg7")  # type: ignore[union-attr]

        received = []
        with pytest.raises(ValueError, match="msg5"):
            async for promise in outer.sequence_promise:
                received.append(await promise)
    assert received == [Message(text="msg1"), Message(text="msg2"), Message(text="msg3")]


async def test_an_exception_sent_as_a_message_is_raised_at_its_position() -> None:
    async with PromisingContext():
        sequence = MessageSequence.turn_into_sequence_promise(["a", ValueError("in the middle"), "b"])
        iterator = sequence.__aiter__()
        assert await (await iterator.__anext__()) == Message(text="a")
        with pytest.raises(ValueError, match="in the middle"):
            await iterator.__anext__()


async def test_an_unsupported_item_type_says_what_can_be_sent() -> None:
    async with PromisingContext():
        with pytest.raises(TypeError, match="A int cannot be sent as a message: send a str, dict, Message"):
            await MessageSequence.aresolve_messages(["fine", 42])


async def test_aresolve_messages_and_an_external_streamer() -> None:
    async with PromisingContext():
        assert await MessageSequence.aresolve_messages([["a"], "b"]) == (Message(text="a"), Message(text="b"))
        source: StreamAppender[Any] = StreamAppender(capture_errors=False)
        with source:
            source.append("x")
        sequence = MessageSequence(incoming_streamer=source)
        assert sequence.message_appender is None
        assert await sequence.sequence_promise.aresolve_messages() == (Message(text="x"),)
        joined = await sequence.sequence_promise.as_single_promise()
        assert joined == Message(text="x", original_messages=[Message(text="x")])


class _IntsAsMessages(MessageSequence):
    async def _flattener(self, zero_or_more_items: Any) -> AsyncIterator[MessagePromise]:  # type: ignore[override]
        if isinstance(zero_or_more_items, int):
            yield Message(text=f"int {zero_or_more_items}").as_promise
        else:
            async for message_promise in super()._flattener(zero_or_more_items):
                yield message_promise


async def test_a_subclass_flattener_sees_every_item_nested_ones_included() -> None:
    async with MiniAgents():
        assert [str(m) for m in await _IntsAsMessages.aresolve_messages(7)] == ["int 7"]
        assert [str(m) for m in await _IntsAsMessages.aresolve_messages(["a", (7, [8])])] == ["a", "int 7", "int 8"]
        sequence = _IntsAsMessages(appender_capture_errors=True)
        assert sequence.message_appender is not None
        with sequence.message_appender:
            sequence.message_appender.append(["b", 9])
        assert [str(m) for m in await sequence.sequence_promise.aresolve_messages()] == ["b", "int 9"]


async def test_a_sequence_ends_with_its_last_piece_once_its_sources_have_ended() -> None:
    """The replies of an agent call end as soon as their last piece is there when everything they come from has
    ended (the agent's replies, the input it forwarded), without one more pull; while the agent may still reply,
    they go on."""
    release = asyncio.Event()

    @miniagent
    async def echo(ctx: InteractionContext) -> None:
        ctx.reply(ctx.messages)

    @miniagent
    async def slow(ctx: InteractionContext) -> None:
        ctx.reply("x")
        await release.wait()

    async def next_text(iterator: AsyncIterator[MessagePromise]) -> str:
        return str(await (await anext(iterator)))

    async with MiniAgents():
        call = echo.initiate_inquiry()
        call.send_message("a")
        call.send_message("b")
        replies = call.reply_sequence()
        iterator = aiter(replies)
        assert await next_text(iterator) == "a"
        assert not call.input_sequence_promise._stream_done
        assert not replies._stream_done
        assert await next_text(iterator) == "b"
        assert call.input_sequence_promise._stream_done
        assert replies._stream_done
        assert [str(message) for message in await replies.aresolve_messages()] == ["a", "b"]

        replies = slow.inquire()
        iterator = aiter(replies)
        assert await next_text(iterator) == "x"
        assert not replies._stream_done
        release.set()
        with pytest.raises(StopAsyncIteration):
            await anext(iterator)
        assert replies._stream_done
