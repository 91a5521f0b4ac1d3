"""Messages: `Message`, `MessagePromise` (a message streamed token by token) and `MessageSequencePromise`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Union

from miniagents.miniagent_typing import MessageTokenStreamer
from miniagents.promising.errors import PromisingError
from miniagents.promising.ext.frozen import (
    _FIELD_NAME_KINDS,
    _PLAIN_NAME,
    _RECURSION_BUDGET,
    FIELD_NAMES_BY_KEYS,
    PLAIN_VALUE_TYPES,
    REDACTION,
    FieldNames,
    Frozen,
    FrozenDict,
    declared_field_names,
    reserve_field_name_suffixes,
    share_field_names,
)
from miniagents.promising.promising import StreamedPromise
from miniagents.promising.sentinels import DEFAULT, NO_VALUE, Sentinel

if TYPE_CHECKING:
    from miniagents.miniagents import AgentCall

REFERENCE_SUFFIX = "__hash_key"
"""Ends the name under which a canonical form holds a nested message's hash key (`<field>__hash_key`)."""
REFERENCES_SUFFIX = "__hash_keys"
"""Ends the name under which a canonical form holds the hash keys of a tuple of messages (`<field>__hash_keys`)."""
_REFERENCE_MARKER = REFERENCE_SUFFIX.encode()

_CURRENT_CALL: ContextVar[Optional[AgentCall]] = ContextVar("miniagents.current_agent_call", default=None)
"""The agent call whose function is running in the current task (None outside agents). It belongs to the agent
layer (`miniagents.miniagents`, which reads and sets it), but lives here: every message promise records the call
that made it, and importing it from the agent layer when each one is made would cost more than making it."""

# a field named like a reference would make the canonical form ambiguous: `Message(x=inner)` and
# `Message(x__hash_key=inner.hash_key)` would share one hash key, so such names are refused, at any depth
reserve_field_name_suffixes(REFERENCE_SUFFIX, REFERENCES_SUFFIX)


def may_reference_messages(canonical_bytes: bytes) -> bool:
    """Whether a canonical form may hold hash references to nested messages (if not, it holds none for sure)."""
    return _REFERENCE_MARKER in canonical_bytes


class Message(Frozen):
    """A message agents exchange: optional `text` (or `text_template`) plus any metadata fields.

    Messages nested in a message, at any depth, are serialized as hash references (`<field>__hash_key`,
    `<field>__hash_keys`), so each one is stored once however often it is referenced.
    """

    _is_message: ClassVar[bool] = True

    text: Optional[str] = None
    text_template: Optional[str] = None

    def __init__(self, text: Optional[str] = None, **metadata: Any) -> None:
        # what `BaseModel.__init__` does, without its frame and a second copy of the fields (every message is built
        # here); the model validator freezes the values (see `Frozen`)
        self.__pydantic_validator__.validate_python({"text": text, **metadata}, self_instance=self)
        # one shared set of field names for every message built with the same keys, rather than a set of its own the
        # collector walks for as long as it lives (for classes whose field names follow from the keys alone: see
        # `share_field_names`, which also makes the entries)
        keys = (type(self), *metadata)
        try:
            names = FIELD_NAMES_BY_KEYS[keys]
        except KeyError:
            share_field_names(self, keys)
        else:
            _set_slot(self, "__pydantic_fields_set__", names)

    @property
    def as_promise(self) -> MessagePromise:
        """This message as an already resolved `MessagePromise` (needs an active context)."""
        return MessagePromise(prefill_message=self)

    @classmethod
    def promise(
        cls,
        start_asap: Union[bool, Sentinel] = DEFAULT,
        message_token_streamer: Optional[MessageTokenStreamer] = None,
        **preliminary_metadata: Any,
    ) -> MessagePromise:
        """A promise of a message of this class: streamed by `message_token_streamer`, or built right away."""
        if message_token_streamer is not None:
            return MessagePromise(
                start_asap=start_asap,
                message_token_streamer=message_token_streamer,
                message_class=cls,
                **preliminary_metadata,
            )
        return cls(**preliminary_metadata).as_promise

    def serialize(self) -> dict[str, Any]:
        return _dump_with_references(self)

    def sub_messages(self) -> Iterator[Message]:
        """Every message nested in this one, depth first, each after its own sub-messages."""
        return iter(_collect_sub_messages(self, []))

    def _as_string(self) -> str:
        if self.text is not None:
            return self.text
        if self.text_template is not None:
            return self.text_template.format(**self.frozen_fields_and_values())
        return super()._as_string()


_new_object = object.__new__
_set_slot = object.__setattr__
_TEXT_FIELD_NAMES = FIELD_NAMES_BY_KEYS.setdefault((Message,), FieldNames(("class_", "text")))
_TEXT_MESSAGES_NEED_VALIDATION = Message.__pydantic_post_init__ is not None or bool(Message.__private_attributes__)


def _text_message(text: str) -> Message:
    """`Message(text=text)`. A `Message` of an ASCII `str` (what agents mostly send and reply: every string sent
    or replied becomes one) is built the way pydantic builds it, but without pydantic's validation of what is
    valid by construction (a `str` text, redacted as `Frozen` would, the `class_`, no `text_template`); anything
    else goes through `Message(text=...)`. A test checks that both build the same object."""
    if (
        type(text) is not str
        or not text.isascii()  # (`Frozen` refuses invalid unicode)
        or _FIELD_NAME_KINDS.get("text") != _PLAIN_NAME  # not known yet to be a plain name (and no secret's)
        or _TEXT_MESSAGES_NEED_VALIDATION
    ):
        return Message(text=text)
    message = _new_object(Message)
    _set_slot(message, "__dict__", {"class_": "Message", "text": REDACTION.redact_text(text), "text_template": None})
    _set_slot(message, "__pydantic_fields_set__", _TEXT_FIELD_NAMES)
    _set_slot(message, "__pydantic_extra__", {})
    _set_slot(message, "__pydantic_private__", None)
    return message


def _dump_with_references(frozen: Frozen, depth: int = 0) -> dict[str, Any]:
    # runs for every recorded message: two plain loops over the fields are ~0.3 us faster than `field_items()`
    dump: dict[str, Any] = {}
    values = frozen.__dict__
    for field in declared_field_names(type(frozen)):
        value = values[field]
        if type(value) in PLAIN_VALUE_TYPES:
            dump[field] = value
        else:
            _dump_nested_with_references(dump, field, value, depth)
    if frozen.__pydantic_extra__:
        for field, value in frozen.__pydantic_extra__.items():
            if type(value) in PLAIN_VALUE_TYPES:
                dump[field] = value
            else:
                _dump_nested_with_references(dump, field, value, depth)
    return dump


def _dump_nested_with_references(dump: dict[str, Any], field: str, value: Any, depth: int) -> None:
    """Put a field whose value is not a plain one into `dump`: a message (or a tuple of messages) as its hash
    reference, anything else spelled out, recursing `_RECURSION_BUDGET` levels deep at most (then in a loop)."""
    if isinstance(value, Message):
        dump[field + REFERENCE_SUFFIX] = _known_hash_key(value)
    elif type(value) is tuple and value and isinstance(value[0], Message):  # only messages, or none at all
        dump[field + REFERENCES_SUFFIX] = tuple(map(_known_hash_key, value))
    elif depth >= _RECURSION_BUDGET:
        dump[field] = value  # (its place, to keep the order of the keys)
        _dump_in_a_loop([(dump, field, value)])
    elif isinstance(value, Frozen):
        dump[field] = _dump_with_references(value, depth + 1)
    elif type(value) is tuple:
        dump[field] = _dump_sequence_with_references(value, depth + 1)
    elif type(value) is FrozenDict:  # a declared mapping field: spelled out as the same dict undeclared would be
        nested = dump[field] = {"class_": Frozen.__name__}
        for key, item in value.items():
            if type(item) in PLAIN_VALUE_TYPES:
                nested[key] = item
            else:
                _dump_nested_with_references(nested, key, item, depth + 1)
    else:
        dump[field] = value


def _dump_sequence_with_references(values: tuple[Any, ...], depth: int) -> tuple[Any, ...]:
    # (a tuple holding messages is a field's; one nested in a tuple holds none)
    if depth >= _RECURSION_BUDGET:
        holder: list[Any] = [values]
        _dump_in_a_loop([(holder, 0, values)])
        return holder[0]
    return tuple(
        value
        if type(value) in PLAIN_VALUE_TYPES
        else _dump_with_references(value, depth + 1)
        if isinstance(value, Frozen)
        else _dump_sequence_with_references(value, depth + 1)
        if type(value) is tuple
        else _dump_value_with_references(value, depth + 1)
        for value in values
    )


def _dump_value_with_references(value: Any, depth: int) -> Any:
    holder: dict[str, Any] = {}
    _dump_nested_with_references(holder, "value", value, depth)
    return holder["value"]


def _dump_in_a_loop(pending: list[tuple[Any, Any, Any]]) -> None:
    """Spell out the values in `pending` ((container, key, value to spell out at container[key])) with hash
    references, in a loop over an explicit stack (no recursion, however deep they are)."""
    sequences: list[tuple[Any, Any, list[Any]]] = []  # tuples are built as lists, turned into tuples at the end
    while pending:
        target, slot, value = pending.pop()
        spelled_out: Any
        if type(value) is tuple:
            spelled_out = list(value)
            target[slot] = spelled_out
            sequences.append((target, slot, spelled_out))
            pending.extend(
                (spelled_out, index, item) for index, item in enumerate(value) if type(item) not in PLAIN_VALUE_TYPES
            )
            continue
        if isinstance(value, Frozen):
            items: Any = value.field_items()
            spelled_out = {}
        elif type(value) is FrozenDict:
            items, spelled_out = value.items(), {"class_": Frozen.__name__}
        else:
            continue
        target[slot] = spelled_out
        for field, item in items:
            if type(item) in PLAIN_VALUE_TYPES:
                spelled_out[field] = item
            elif isinstance(item, Message):
                spelled_out[field + REFERENCE_SUFFIX] = _known_hash_key(item)
            elif type(item) is tuple and item and isinstance(item[0], Message):
                spelled_out[field + REFERENCES_SUFFIX] = tuple(map(_known_hash_key, item))
            else:
                spelled_out[field] = item  # (its place, to keep the order of the keys)
                pending.append((spelled_out, field, item))
    for target, slot, sequence in reversed(sequences):  # inner tuples first
        target[slot] = tuple(sequence)


def _known_hash_key(message: Message) -> str:
    """The hash key of a message nested in the one being serialized."""
    known: Optional[str] = message.__dict__.get("hash_key")
    if known is not None:
        return known
    # hash the messages nested in it first, innermost first: hashing a chain of nested messages costs no recursion
    for nested in _unhashed_messages_innermost_first(message):
        nested.hash_key  # noqa: B018 (computed once, and kept)
    return message.hash_key


def _unhashed_messages_innermost_first(message: Message) -> list[Message]:
    """`message` and the messages nested in it whose hash keys are not known yet, each after those it holds."""
    order: list[Message] = []
    seen: set[int] = set()
    stack: list[tuple[Message, bool]] = [(message, False)]
    while stack:
        current, expanded = stack.pop()
        if expanded:
            order.append(current)
        elif id(current) not in seen:
            seen.add(id(current))
            stack.append((current, True))
            stack.extend(
                (nested, False)
                for nested in _messages_held_by(current)
                if "hash_key" not in nested.__dict__ and id(nested) not in seen
            )
    return order


def _messages_held_by(frozen: Frozen) -> Iterator[Message]:
    """The messages in the values of `frozen` that are not inside another message (those it refers to by hash)."""
    stack: list[Any] = list(frozen.frozen_fields_and_values().values())
    while stack:
        value = stack.pop()
        if type(value) in PLAIN_VALUE_TYPES:
            continue
        if isinstance(value, Message):
            yield value
        elif isinstance(value, Frozen):
            stack.extend(value.frozen_fields_and_values().values())
        elif type(value) is FrozenDict:
            stack.extend(value.values())
        elif type(value) is tuple:
            stack.extend(value)


def _collect_sub_messages(frozen: Frozen, found: list[Message], depth: int = 0) -> list[Message]:
    """Append every message nested in `frozen` to `found`, depth first, each after its own sub-messages."""
    values = frozen.__dict__
    for field in declared_field_names(type(frozen)):
        value = values[field]
        if type(value) not in PLAIN_VALUE_TYPES:
            _collect_sub_messages_in_value(value, found, depth)
    if frozen.__pydantic_extra__:
        for value in frozen.__pydantic_extra__.values():
            if type(value) not in PLAIN_VALUE_TYPES:
                _collect_sub_messages_in_value(value, found, depth)
    return found


def _collect_sub_messages_in_value(value: Any, found: list[Message], depth: int) -> None:
    if depth >= _RECURSION_BUDGET:
        _collect_sub_messages_in_a_loop(value, found)
    elif isinstance(value, Message):
        _collect_sub_messages(value, found, depth + 1)
        found.append(value)
    elif isinstance(value, Frozen):
        _collect_sub_messages(value, found, depth + 1)
    elif type(value) is tuple or type(value) is FrozenDict:
        for item in _items_of(value):
            if type(item) not in PLAIN_VALUE_TYPES:
                _collect_sub_messages_in_value(item, found, depth + 1)


def _collect_sub_messages_in_a_loop(value: Any, found: list[Message]) -> None:
    """`_collect_sub_messages_in_value` of a value too deep to recurse into: a loop over a stack of iterators."""
    iterators: list[Iterator[Any]] = [iter((value,))]
    owners: list[Optional[Message]] = [None]  # the message whose values each iterator goes through, if any
    while iterators:
        for item in iterators[-1]:
            if type(item) in PLAIN_VALUE_TYPES:
                continue
            if isinstance(item, Frozen):
                iterators.append(iter(_values_of(item)))
                owners.append(item if isinstance(item, Message) else None)
                break
            if type(item) is tuple or type(item) is FrozenDict:
                iterators.append(iter(_items_of(item)))
                owners.append(None)
                break
        else:
            iterators.pop()
            owner = owners.pop()
            if owner is not None:
                found.append(owner)


def _items_of(sequence_or_mapping: Union[tuple[Any, ...], FrozenDict]) -> Iterable[Any]:
    if isinstance(sequence_or_mapping, FrozenDict):
        return sequence_or_mapping.values()
    return sequence_or_mapping


def _values_of(frozen: Frozen) -> list[Any]:
    values = frozen.__dict__
    declared = [values[field] for field in declared_field_names(type(frozen))]
    extra = frozen.__pydantic_extra__
    return [*declared, *extra.values()] if extra else declared


class MessagePromise(StreamedPromise[str, Message]):
    """A promise of a message whose text can be consumed token by token while it is being produced.

    :param start_asap: start streaming in the background now.
    :param message_token_streamer: an async generator function `(metadata_so_far) -> tokens`; it may add
        metadata to the dict it receives, and the final message is built from the tokens and that dict.
    :param prefill_message: the message, known already (then there is nothing to stream).
    :param message_class: the class of the final message.
    :param preliminary_metadata: metadata known before streaming starts (`preliminary_metadata` attribute).
    """

    preliminary_metadata: Frozen

    def __init__(
        self,
        start_asap: Union[bool, Sentinel] = DEFAULT,
        message_token_streamer: Optional[MessageTokenStreamer] = None,
        prefill_message: Optional[Message] = None,
        message_class: type[Message] = Message,
        **preliminary_metadata: Any,
    ) -> None:
        if prefill_message is not None:
            if message_token_streamer is not None or preliminary_metadata:
                raise PromisingError(
                    "MessagePromise takes either `prefill_message` or a `message_token_streamer` with preliminary "
                    "metadata, not both."
                )
            self.preliminary_metadata = prefill_message
            self._chunk_times: Optional[list[float]] = None
            self.producer_call: Optional[AgentCall] = _CURRENT_CALL.get()
            """The agent call that made this message (None outside agents); its `message` event names it."""
            super().__init__(prefill_pieces=[str(prefill_message)], prefill_result=prefill_message)
            return
        if message_token_streamer is None:
            raise PromisingError("MessagePromise needs a `message_token_streamer` or a `prefill_message`.")
        self.preliminary_metadata = Frozen(**preliminary_metadata)
        self._metadata_so_far = self.preliminary_metadata.frozen_fields_and_values()
        self._message_token_streamer = message_token_streamer
        self._message_class = message_class
        self._chunk_times = []
        self._stream_started_at = 0.0
        self.producer_call = _CURRENT_CALL.get()
        super().__init__(start_asap=start_asap)

    @property
    def is_streamed(self) -> bool:
        """Whether this message is produced token by token (as opposed to known from the start)."""
        return self._chunk_times is not None

    def chunk_record(self) -> tuple[list[str], list[float]]:
        """The text chunks received so far and each one's arrival, in seconds since streaming started."""
        if self._chunk_times is None:
            return [piece for piece in self._pieces if isinstance(piece, str)], [0.0]
        started_at = self._stream_started_at
        chunks = [piece for piece in self._pieces if not isinstance(piece, BaseException)]
        return chunks, [round(moment - started_at, 6) for moment in self._chunk_times[: len(chunks)]]

    def _streamer(self) -> AsyncIterator[str]:
        self._stream_started_at = time.perf_counter()
        return self._message_token_streamer(self._metadata_so_far)

    def _append_piece(self, piece: Any) -> None:
        if type(piece) is not str and not isinstance(piece, BaseException):
            piece = TypeError(
                f"The token streamer of a {self._message_class.__name__} yielded a {type(piece).__name__}; "
                "tokens must be strings."
            )
        elif self._chunk_times is not None and type(piece) is str:
            self._chunk_times.append(time.perf_counter())
        self._pieces.append(piece)

    async def _resolver(self) -> Message:
        text = "".join([token async for token in self])
        return self._message_class(text=text, **self._metadata_so_far)


class MessageSequencePromise(StreamedPromise[MessagePromise, tuple[MessagePromise, ...]]):
    """A promise of a sequence of messages, consumed message promise by message promise."""

    async def aresolve_messages(self) -> tuple[Message, ...]:
        """Every message of the sequence, fully received."""
        # what `async for message_promise in self` gives, written out: no iterator, a coroutine less per message and
        # no StopAsyncIteration at the end (the replies of every agent call are read here)
        messages = []
        pieces = self._pieces
        index = 0
        while True:
            if index >= len(pieces):
                if self._stream_done:
                    break
                await self._aproduce_piece(index)
                if index >= len(pieces):
                    break
            message_promise = pieces[index]
            index += 1
            if isinstance(message_promise, BaseException):
                raise message_promise
            # a message known already is taken as it is: awaiting it would give the same without yielding to the
            # event loop, through a coroutine more
            message = message_promise._result
            if message is NO_VALUE or isinstance(message, BaseException):
                message = await message_promise  # (raises the error of a promise that failed)
            messages.append(message)
        return tuple(messages)

    def as_single_promise(self, **kwargs: Any) -> MessagePromise:
        """All messages of the sequence joined into one (see `join_messages` for the options)."""
        from miniagents.utils import join_messages

        return join_messages(self, start_asap=False, **kwargs)
