"""Replayed answers complete in the recorded order: a logical clock over the recorded completion sequence.

Each recorded call finished at a place in its run's event log (the `seq` of its `call_finished` event). When a
replay answers a call with the recorded call at the same position in the call tree (the flow is shaped as it was
when recorded), the answer streams as recorded, but it completes (its last chunk, a last message that was complete
from the start, the end of its reply sequence) only after the answered calls of the same recorded run that
finished before it have completed in the replay too. Whatever the speed and however the event loop schedules the
agents, a flow that acts on whichever call finishes first sees the recorded winner.

An earlier call the flow has not made yet is waited for while the run is active (any event, any answer); once
nothing has happened for `timeout` seconds the flow is taken to wait on this very call first (it would wait
forever): the answer completes, out of the recorded order, and a warning says so. Calls that will not be made are
not waited for: calls nested in a call answered from the recording, calls at a position where another agent was
called, calls of agents the replay does not answer, calls matched by occurrence only (the flow's shape changed).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from miniagents.events import CallFinishedPayload, CallStartedPayload, Event, EventKind
from replay.recording import RecordedCall
from store.base import EventStore

logger = logging.getLogger(__name__)

_SETTLE_TURNS = 3
"""Event loop turns an answer gives calls created just before it to start."""

_CallId = tuple[str, int]
"""A recorded call: its run id and the seq of its `call_finished` event."""


def _call_id(call: RecordedCall) -> _CallId:
    return call.run_id, call.seq


class _RecordedRun:
    """The calls of one recorded run in the order they finished, and how far they are all settled."""

    def __init__(self, calls: list[RecordedCall]) -> None:
        self.calls = sorted((call for call in calls if call.position is not None), key=lambda call: call.seq)
        self.first_open = 0
        """Every call before this index is settled (completed here, or never to be waited for)."""


class CompletionClock:
    """The recorded completion order of the calls a replay answers, and which of them completed in the replay.

    It is an event sink of the replayed run too: it sees which calls start where, and whether the run is active.
    """

    def __init__(self, store: EventStore, timeout: float) -> None:
        self.store = store
        self.timeout = timeout
        self._runs: dict[str, _RecordedRun] = {}
        self._in_flight: dict[_CallId, RecordedCall] = {}
        """Ordered answers given and not complete yet."""
        self._settled: set[_CallId] = set()
        """Recorded calls completed here, or never to be waited for."""
        self._started: dict[str, str] = {}
        """Positions of the calls started in the replayed run, and their agents."""
        self._looking_up: set[str] = set()
        """Positions of started calls of answered agents whose answer is not decided yet."""
        self._answered_positions: set[str] = set()
        self._answered_agents: dict[str, bool] = {}
        """Per agent alias, whether the replay answers its calls."""
        self._last_activity = 0.0
        self._changed: Optional[asyncio.Event] = None

    # an event sink of the replayed run

    async def astart_run(self, run_id: str) -> None:
        return None

    def append(self, event: Event) -> None:
        self._last_activity = asyncio.get_running_loop().time()
        if event.kind is EventKind.CALL_STARTED:
            payload = event.payload
            if isinstance(payload, CallStartedPayload) and payload.position is not None:
                self._started[payload.position] = payload.agent_alias
                self._tick()
        elif event.kind is EventKind.CALL_FINISHED:
            payload = event.payload
            if isinstance(payload, CallFinishedPayload):
                self.decided(payload.position)  # a call whose input failed is never answered

    async def afinish_run(self, run_id: str) -> None:
        return None

    # what the replay tells it

    def agent_answered(self, agent_alias: str, answered: bool, position: Optional[str]) -> None:
        """A call of this agent started at `position`; the replay answers it (its answer is being looked up) or
        lets it run live."""
        self._answered_agents[agent_alias] = answered
        if position is not None:
            self._started[position] = agent_alias
            if answered:
                self._looking_up.add(position)
        self._tick()

    def decided(self, position: Optional[str]) -> None:
        """The call at `position` is answered live or not at all (a divergence)."""
        if position is not None and position in self._looking_up:
            self._looking_up.discard(position)
            self._tick()

    async def aasked(self, call: RecordedCall, position: Optional[str]) -> Optional[CallPacing]:
        """The call at `position` is answered with this recorded call; the pacing of its answer, or None when it
        is not ordered (matched by occurrence only)."""
        if position is not None:
            self._looking_up.discard(position)
            self._answered_positions.add(position)
        if call.run_id not in self._runs:
            events = self.store.aiter_events(call.run_id, kinds=[EventKind.CALL_FINISHED])
            self._runs[call.run_id] = _RecordedRun([RecordedCall.from_event(event) async for event in events])
        self._tick()
        if position is None or call.position != position:
            self._settled.add(_call_id(call))
            return None
        if _call_id(call) in self._settled:
            logger.warning(
                "Replayed out of the recorded order: %s (position %s) is made after answers the recording "
                "completed after it (the flow waited on them first).",
                call.agent_alias,
                call.position,
            )
        self._in_flight[_call_id(call)] = call
        return CallPacing(self, call)

    def completed(self, call: RecordedCall) -> None:
        """The answer to `call` was replayed whole."""
        if self._in_flight.pop(_call_id(call), None) is not None:
            self._settled.add(_call_id(call))
            self._tick()

    def progress(self) -> None:
        """A replayed answer moved on (a chunk was streamed)."""
        self._last_activity = asyncio.get_running_loop().time()

    # waiting

    def _will_not_be_made(self, earlier: RecordedCall) -> bool:
        position = str(earlier.position)
        if self._answered_agents.get(earlier.agent_alias) is False:
            return True  # a live agent: not ordered
        started_by = self._started.get(position)
        if started_by is not None and started_by != earlier.agent_alias:
            return True  # another agent was called there
        if started_by is not None and position not in self._looking_up and _call_id(earlier) not in self._in_flight:
            return True  # made, and answered by another recorded call, live, or not at all
        parent = position.rpartition(".")[0]
        while parent:
            if parent in self._answered_positions:
                return True  # nested in a call answered from the recording
            parent = parent.rpartition(".")[0]
        return False

    def _waited_for(self, call: RecordedCall) -> tuple[list[RecordedCall], list[RecordedCall]]:
        """The calls `call` waits for: made (answered or being looked up) and not yet made."""
        run = self._runs.get(call.run_id)
        if run is None:
            return [], []
        made: list[RecordedCall] = []
        not_made: list[RecordedCall] = []
        index = run.first_open
        while index < len(run.calls) and run.calls[index].seq < call.seq:
            earlier = run.calls[index]
            earlier_id = _call_id(earlier)
            if earlier_id in self._settled:
                pass
            elif earlier_id in self._in_flight or earlier.position in self._looking_up:
                made.append(earlier)
            elif self._will_not_be_made(earlier):
                self._settled.add(earlier_id)
            else:
                not_made.append(earlier)
            if index == run.first_open and earlier_id in self._settled:
                run.first_open += 1
            index += 1
        return made, not_made

    async def await_turn(self, call: RecordedCall) -> None:
        """Return once `call` may complete (see the module)."""
        for _ in range(_SETTLE_TURNS):  # calls made just before this one get to start
            await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        while True:
            made, not_made = self._waited_for(call)
            if not made and not not_made:
                return
            wait = None
            if not made:
                quiet_for = loop.time() - self._last_activity
                if quiet_for >= self.timeout:
                    for earlier in not_made:
                        self._settled.add(_call_id(earlier))
                    logger.warning(
                        "Replayed out of the recorded order: the answer of %s (position %s) completes before %s, "
                        "which the recording completed earlier but the flow has not made after %g s without "
                        "activity (it waits on this answer first).",
                        call.agent_alias,
                        call.position,
                        ", ".join(f"{item.agent_alias} (position {item.position})" for item in not_made[:3]),
                        self.timeout,
                    )
                    return
                wait = self.timeout - quiet_for
            if self._changed is None:
                self._changed = asyncio.Event()
            try:
                await asyncio.wait_for(self._changed.wait(), wait)
            except asyncio.TimeoutError:
                pass

    def _tick(self) -> None:
        self._last_activity = asyncio.get_running_loop().time()
        if self._changed is not None:
            self._changed.set()
            self._changed = None


class CallPacing:
    """The pacing of one replayed answer (see `replay.streams.Pacing`)."""

    def __init__(self, clock: CompletionClock, call: RecordedCall) -> None:
        self._clock = clock
        self._call = call
        self._turn: Optional[asyncio.Future[None]] = None

    def progress(self) -> None:
        self._clock.progress()

    def turn(self) -> asyncio.Future[None]:
        if self._turn is None:
            self._turn = asyncio.ensure_future(self._clock.await_turn(self._call))
        return self._turn

    def completed(self) -> None:
        self._clock.completed(self._call)
