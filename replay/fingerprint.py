"""Run fingerprints: one hash that is the same for a recorded run and every faithful replay of it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

import orjson
from blake3 import blake3

from miniagents.events import CallFinishedPayload, Event, EventKind, WholeReply
from store.base import EventStore


class RunFingerprint:
    """Accumulates what identifies a run's outcome: its message hashes and how each agent call ended.

    Timing, call ids, the occurrences of identical calls and event order (which vary with scheduling) are left
    out, so a replay that produces the same messages from the same calls has the same fingerprint as the
    recording.
    """

    def __init__(self) -> None:
        self._message_hashes: set[str] = set()
        self._calls: list[bytes] = []

    def add(self, event: Event) -> None:
        """Take one event of the run into account."""
        if event.kind is EventKind.MESSAGE and event.hash_key:
            self._message_hashes.add(event.hash_key)
        elif event.kind is EventKind.CALL_FINISHED and event.data is not None:
            payload = event.payload
            if isinstance(payload, CallFinishedPayload):
                self._calls.append(orjson.dumps(_call_outcome(event.hash_key, payload)))

    @property
    def value(self) -> str:
        """The fingerprint: 40 hex characters."""
        summary = orjson.dumps([sorted(self._message_hashes), [call.decode() for call in sorted(self._calls)]])
        return blake3(summary).hexdigest()[:40]


def _call_outcome(call_key: Optional[str], payload: CallFinishedPayload) -> list[Any]:
    replies: list[Any] = []
    for reply in payload.replies:
        if isinstance(reply, WholeReply):
            replies.append(reply.hash_key)
        else:
            replies.append([reply.message_class, list(reply.chunks), reply.error.to_data()])
    # neither the occurrence nor the position: identical calls are told apart by their answers, and which of
    # them got which answer shows in the messages made from them
    error = payload.error.to_data() if payload.error is not None else None
    outcome = [call_key, payload.reply_node, replies, error]
    if payload.input_error is not None:  # with the node of what it received (a message of the run)
        outcome.append(payload.input_error.to_data())
    return outcome


def run_fingerprint(events: Iterable[Event]) -> str:
    """The fingerprint of a run, from its events."""
    fingerprint = RunFingerprint()
    for event in events:
        fingerprint.add(event)
    return fingerprint.value


async def afingerprint(store: EventStore, run_id: str) -> str:
    """The fingerprint of a stored run."""
    fingerprint = RunFingerprint()
    async for event in store.aiter_events(run_id, kinds=[EventKind.MESSAGE, EventKind.CALL_FINISHED]):
        fingerprint.add(event)
    return fingerprint.value


class FingerprintSink:
    """An event sink that computes the fingerprint of the run it receives (keeps no events)."""

    def __init__(self) -> None:
        self._fingerprint = RunFingerprint()
        self.run_id: Optional[str] = None

    async def astart_run(self, run_id: str) -> None:
        self.run_id = run_id
        self._fingerprint = RunFingerprint()

    def append(self, event: Event) -> None:
        self._fingerprint.add(event)

    async def afinish_run(self, run_id: str) -> None:
        return None

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the run so far."""
        return self._fingerprint.value
