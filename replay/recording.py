"""Reading recorded agent calls out of a store, one call key at a time."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional

from miniagents.errors import EventDataError
from miniagents.events import CallFinishedPayload, ErrorDescription, Event, EventKind, ReplyRecord, WholeReply
from miniagents.messages import Message, MessagePromise
from miniagents.miniagents import AgentCallNode
from replay.matching import CallMatcher
from replay.streams import Pacing, rebuild_error, replayed_failure, replayed_message, replayed_sequence
from store.base import EventStore
from store.errors import StoreIntegrityError
from store.results import RunInfo, RunStatus


@dataclass(frozen=True)
class RecordedCall:
    """One finished agent call as a store has it (read from its `call_finished` event's `CallFinishedPayload`)."""

    run_id: str
    seq: int
    call_id: Optional[int]
    parent_call_id: Optional[int]
    agent_alias: str
    call_key: str
    """The hash key of the call's `AgentCallNode`."""
    occurrence: int
    position: Optional[str]
    """Where the call was in the run's call tree ("2.0"); None in recordings made before positions were kept."""
    replies: tuple[ReplyRecord, ...]
    error: Optional[ErrorDescription]
    """The error its reply sequence raised after the replies."""
    reply_node: Optional[str]
    replayed: bool
    partial_call_node: Optional[str] = None
    """When the input failed (no call key): the hash key of the node of what the call received."""
    input_error: Optional[ErrorDescription] = None

    @classmethod
    def from_event(cls, event: Event) -> RecordedCall:
        payload = call_finished_payload(event)
        return cls(
            run_id=event.run_id,
            seq=event.seq or 0,
            call_id=event.call_id,
            parent_call_id=event.parent_call_id,
            agent_alias=payload.agent_alias,
            call_key=event.hash_key or "",
            occurrence=payload.occurrence or 0,
            position=payload.position,
            replies=payload.replies,
            error=payload.error,
            reply_node=payload.reply_node,
            replayed=payload.replayed,
            partial_call_node=payload.partial_call_node,
            input_error=payload.input_error,
        )


def call_finished_payload(event: Event) -> CallFinishedPayload:
    """The payload of a `call_finished` event; `EventDataError` if the event is not one."""
    payload = event.payload
    if not isinstance(payload, CallFinishedPayload):
        raise EventDataError(f"Event {event.seq} of run {event.run_id} is a {event.kind} event, not call_finished.")
    return payload


_STATUS_RANK = {RunStatus.OK: 0, RunStatus.FAILED: 1, RunStatus.RUNNING: 2}
"""Which runs answer first: those that finished ok, then failed ones, then unfinished ones (killed mid-run)."""


class Recording:
    """The recorded calls in a store, looked up by call key (an index lookup per call, whatever the store's size).

    The recording is made of the runs the store held when `aload_runs()` was called (runs started later, such as
    the one being recorded, never answer). A call is answered from the runs that finished ok if any of them has
    it; only if none has it, from the runs that failed, and only then from runs that never finished.
    """

    def __init__(self, store: EventStore, matcher: Optional[CallMatcher] = None) -> None:
        self.store = store
        self.matcher = matcher if matcher is not None else CallMatcher()
        self.runs: dict[str, RunInfo] = {}
        """The runs of the recording, by id, oldest first."""
        self._by_match_key: Optional[dict[str, list[Event]]] = None
        self._checked_runs: set[str] = set()
        """Runs whose events were found as they were written (checked before the first answer from each)."""

    async def aload_runs(self) -> list[RunInfo]:
        """Read which runs make up the recording (call before looking calls up)."""
        runs = await self.store.alist_runs()
        self.runs = {run.run_id: run for run in runs}
        self._by_match_key = None  # runs recorded since are part of the recording now
        return runs

    def _rank(self, run_id: str) -> Optional[int]:
        run = self.runs.get(run_id)
        if run is None:
            return None
        return _STATUS_RANK.get(run.status, len(_STATUS_RANK))

    async def afind_call(
        self, match_key: str, occurrence: int, position: Optional[str] = None
    ) -> Optional[RecordedCall]:
        """The recorded answer to a call: the newest recorded call with this match key (see `CallMatcher`) at this
        `position` in the call tree, or, when no recorded call with this key has that position (recordings made
        before positions were recorded have none), the newest one with this `occurrence`; from the best runs that
        have either (see the class), or None."""
        best: dict[tuple[int, bool], Event] = {}  # (run rank, matched by occurrence only) -> newest such event
        for event in await self._acalls_with_match_key(match_key):
            rank = self._rank(event.run_id)
            if rank is None:
                continue
            payload = call_finished_payload(event)
            if position is not None and payload.position == position:
                match = (rank, False)
            elif payload.occurrence == occurrence:
                match = (rank, True)
            else:
                continue
            if match not in best or event.seq > best[match].seq:  # type: ignore[operator]
                best[match] = event
        if not best:
            return None
        chosen = best[min(best)]  # better runs first; then a position over an occurrence
        await self._acheck_run(chosen.run_id)
        return RecordedCall.from_event(chosen)

    async def _acheck_run(self, run_id: str) -> None:
        """Raise `StoreIntegrityError` naming the run and event if the run's events are not as they were written
        (see `store.chain`): a changed recording must not answer."""
        if run_id in self._checked_runs:
            return
        report = await self.store.averify_run(run_id, payloads=False)  # the links cover the data; reads parse it
        if not report.ok:
            first = report.problems[0]
            more = f" ({len(report.problems) - 1} more problems)" if len(report.problems) > 1 else ""
            raise StoreIntegrityError(
                f"The recording in {self.store.location} was changed after it was written, so replay does not answer "
                f"from it: {first}{more} Record it again, or restore it from version control.",
                run_id=run_id,
                seq=first.seq,
            )
        self._checked_runs.add(run_id)

    async def _acalls_with_match_key(self, match_key: str) -> list[Event]:
        """The `call_finished` events of the recorded calls with this match key: an index lookup in the store, or,
        with a `normalize` function, in an index of every recorded call built on first use."""
        if self.matcher.normalize is None:
            kinds = [EventKind.CALL_FINISHED]
            return [event async for event in self.store.aiter_events(kinds=kinds, hash_keys=[match_key])]
        if self._by_match_key is None:
            events = [
                event
                async for event in self.store.aiter_events(kinds=[EventKind.CALL_FINISHED])
                if event.run_id in self.runs and event.hash_key
            ]
            nodes = await self.store.aget_many(sorted({str(event.hash_key) for event in events}))
            index: dict[str, list[Event]] = {}
            for event in events:
                node = nodes[str(event.hash_key)]
                if getattr(node, "class_", None) == AgentCallNode.__name__:  # (or an older shape's stand-in)
                    index.setdefault(self.matcher.key(node), []).append(event)
            self._by_match_key = index
        return self._by_match_key.get(match_key, [])

    async def acalls_of(self, agent_alias: str) -> list[RecordedCall]:
        """Every recorded call of an agent (a scan of the store: only for explaining a divergence)."""
        return [
            RecordedCall.from_event(event)
            async for event in self.store.aiter_events(kinds=[EventKind.CALL_FINISHED])
            if event.run_id in self.runs and event.hash_key and call_finished_payload(event).agent_alias == agent_alias
        ]

    async def areply_promises(
        self, call: RecordedCall, speed: Optional[float], pacing: Optional[Pacing] = None
    ) -> tuple[list[MessagePromise], Optional[BaseException]]:
        """The call's replies as promises that stream as recorded, and the error its reply sequence raised;
        `pacing` holds back the last chunk of the last streamed reply until the call's turn to complete."""
        hashes = [reply.hash_key for reply in call.replies if isinstance(reply, WholeReply)]
        messages = await self.store.aget_many(hashes)
        promises: list[MessagePromise] = []
        for index, reply in enumerate(call.replies):
            last = pacing if index == len(call.replies) - 1 else None
            if isinstance(reply, WholeReply):
                message = messages[reply.hash_key]
                assert isinstance(message, Message)
                # a streamed reply carries its own chunking; one that was complete from the start has none
                promises.append(replayed_message(message, reply.chunks, reply.offsets, speed, last))
            else:
                promises.append(replayed_failure(reply.to_data(), speed, last))
        return promises, rebuild_error(call.error.to_data()) if call.error is not None else None

    async def aanswer(self, call: RecordedCall, speed: Optional[float]) -> Any:
        """What `CallInterceptor.aanswer` returns for a recorded call."""
        promises, error = await self.areply_promises(call, speed)
        return replayed_sequence(promises, error)


def unique_calls(calls: Iterable[RecordedCall]) -> list[RecordedCall]:
    """One recorded call per call key (the newest)."""
    newest: dict[str, RecordedCall] = {}
    for call in calls:
        if call.call_key not in newest or call.seq > newest[call.call_key].seq:
            newest[call.call_key] = call
    return list(newest.values())
