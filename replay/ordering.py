"""Replayed answers complete in the recorded order: a logical clock over the recorded completion sequence.

Each recorded call finished at a place in its run's event log (the `seq` of its `call_finished` event). When a
replay answers a call with the recorded call at the same position in the call tree (the flow is shaped as it was
when recorded), the answer streams as recorded, but it completes (its last chunk, a last message that was complete
from the start, the end of its reply sequence) only after the calls of the same recorded run that finished before
it, among the agents the replay answers, have completed in the replay too. Whatever the speed and however the
event loop schedules the agents, a flow that acts on whichever call finishes first sees the recorded winner.

An earlier call is waited for when the replay answered it, or when no call has been made at its position yet (it
is still to come). If the flow then makes no progress for `timeout` seconds (no call asked, answered or streamed),
it waits on this call before it asks for the earlier one, an order the recording does not have: `ReplayOrderError`
says so instead of hanging. A call that waits only on answered calls whose replies nobody consumes is let through
after as long. Calls matched by occurrence only (the flow's shape changed, or a recording made before positions
were kept) are not ordered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Optional

from miniagents.events import EventKind
from replay.errors import ReplayOrderError
from replay.recording import RecordedCall
from store.base import EventStore

logger = logging.getLogger(__name__)

_CallId = tuple[str, int]
"""A recorded call: its run id and the seq of its `call_finished` event."""


def _call_id(call: RecordedCall) -> _CallId:
    return call.run_id, call.seq


class CompletionClock:
    """The recorded completion order of the calls a replay answers, and which of them completed in the replay."""

    def __init__(self, store: EventStore, timeout: float, on_order_error: Callable[[ReplayOrderError], None]) -> None:
        self.store = store
        self.timeout = timeout
        self._on_order_error = on_order_error
        self._runs: dict[str, list[RecordedCall]] = {}
        """The recorded calls of each run that answered a call, in the order they finished."""
        self._aliases: set[str] = set()
        """The agents answered from the recording so far: only their calls are waited for."""
        self._asked: set[_CallId] = set()
        self._completed: set[_CallId] = set()
        self._positions_seen: set[str] = set()
        """The positions in the call tree of the calls the replay was asked to answer (whatever the answer)."""
        self._version = 0
        self._changed: Optional[asyncio.Event] = None

    def note_position(self, position: Optional[str]) -> None:
        """Note that the flow made a call at this position that no recorded call answers."""
        if position is not None:
            self._positions_seen.add(position)
            self._tick()

    async def aasked(self, call: RecordedCall, position: Optional[str]) -> Optional[CallPacing]:
        """Note that the flow, at `position`, was answered with this recorded call; the pacing of the answer, or
        None when the call is not ordered (matched by occurrence only)."""
        self._aliases.add(call.agent_alias)
        self._asked.add(_call_id(call))
        if position is not None:
            self._positions_seen.add(position)
        self._tick()
        if position is None or call.position != position:
            return None
        if call.run_id not in self._runs:
            events = self.store.aiter_events(call.run_id, kinds=[EventKind.CALL_FINISHED])
            self._runs[call.run_id] = [RecordedCall.from_event(event) async for event in events if event.hash_key]
        return CallPacing(self, call)

    def _tick(self) -> None:
        self._version += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _waited_for(self, call: RecordedCall) -> list[RecordedCall]:
        """The calls answered by this replay's agents that finished before `call` in its run and have not
        completed here yet."""
        return [
            earlier
            for earlier in self._runs.get(call.run_id, ())
            if earlier.seq < call.seq
            and earlier.agent_alias in self._aliases
            and earlier.position is not None
            and _call_id(earlier) not in self._completed
            and (_call_id(earlier) in self._asked or earlier.position not in self._positions_seen)
        ]

    async def await_turn(self, call: RecordedCall) -> None:
        """Return once `call` may complete (see the module); raise `ReplayOrderError` if the flow waits on it
        before asking for a call the recording completed earlier."""
        loop = asyncio.get_running_loop()
        version, quiet_since = self._version, loop.time()
        while True:
            waited_for = self._waited_for(call)
            if not waited_for:
                return
            if self._version != version:
                version, quiet_since = self._version, loop.time()
            remaining = quiet_since + self.timeout - loop.time()
            if remaining <= 0:
                unasked = [earlier for earlier in waited_for if _call_id(earlier) not in self._asked]
                if unasked:
                    raise self._order_error(call, unasked[0])
                logger.debug(
                    "The answer of %s completes before %d earlier call(s) whose answers nobody consumes",
                    call.agent_alias,
                    len(waited_for),
                )
                return
            if self._changed is None:
                self._changed = asyncio.Event()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def completed(self, call: RecordedCall) -> None:
        """Note that the answer to `call` was replayed whole."""
        self._completed.add(_call_id(call))
        self._tick()

    def progress(self) -> None:
        """Note that a replayed answer moved on (a chunk was streamed)."""
        self._tick()

    def _order_error(self, call: RecordedCall, unasked: RecordedCall) -> ReplayOrderError:
        error = ReplayOrderError(
            f"The replayed flow waits on the answer of {call.agent_alias} (call key {call.call_key}, position "
            f"{call.position}), but the call of {unasked.agent_alias} at position {unasked.position} (call key "
            f"{unasked.call_key}) completed before this call in the recording, and the flow has not asked for it "
            f"after {self.timeout:g} s without progress: the flow now waits on this call before it makes that one, "
            "an order the recording does not have. If the change is intended, record again: Replay(store, "
            "mode='all') (with pytest: `pytest --record-mode=all`); `Replay(order_timeout=...)` waits longer for "
            "slow live agents.",
            call.agent_alias,
            call.call_key,
            call.occurrence,
            call.position,
        )
        self._on_order_error(error)
        return error


class CallPacing:
    """The pacing of one replayed answer (see `replay.streams.Pacing`)."""

    def __init__(self, clock: CompletionClock, call: RecordedCall) -> None:
        self._clock = clock
        self._call = call
        self._error: Optional[ReplayOrderError] = None

    def progress(self) -> None:
        self._clock.progress()

    async def await_turn(self) -> None:
        if self._error is not None:  # the last chunk and the end of the sequence wait for the same turn
            raise self._error
        try:
            await self._clock.await_turn(self._call)
        except ReplayOrderError as error:
            self._error = error
            raise

    def completed(self) -> None:
        self._clock.completed(self._call)
