"""`Replay`: answers agent calls from a recording, records new ones, as the record mode says."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterable
from typing import Any, Optional, Union

from miniagents.events import InterceptedCall
from miniagents.miniagents import AgentCallNode, MiniAgent, MiniAgents, current_agent_call
from replay.divergence import call_differences, describe_differences, distance, normalization_notes
from replay.errors import NoRecordingError, ReplayDivergenceError
from replay.fingerprint import FingerprintSink
from replay.matching import CallMatcher, CallToMatch, Normalizer, legacy_call_key
from replay.ordering import CompletionClock
from replay.recording import RecordedCall, Recording, unique_calls
from replay.streams import replayed_sequence
from store.base import EventStore
from store.errors import UnknownHashError
from store.results import RunInfo, RunStatus

logger = logging.getLogger(__name__)

_CLOSEST_SHOWN = 3
_FULL_REPORTS = 3
"""Divergences of a run explained in full (the closest recorded calls, what differs); later ones are named only."""

__all__ = ["RecordMode", "Replay", "describe_differences"]


class RecordMode(str, enum.Enum):
    """When a `Replay` records, as in vcrpy / pytest-recording."""

    NONE = "none"
    """Replay only: a call the recording does not have raises `ReplayDivergenceError`; nothing is written."""
    ONCE = "once"
    """Record if the store holds no finished run yet (none at all, or only runs whose process died before they
    finished); otherwise behave like `none`."""
    NEW_EPISODES = "new_episodes"
    """Replay what is recorded, run and record what is not."""
    ALL = "all"
    """Run everything live and record it: when the run succeeds it replaces the earlier recording; when it fails,
    it is deleted and the store keeps the earlier recording as it was."""

    def __str__(self) -> str:
        return self.value


class Replay:
    """Answers agent calls from the recording in `store`, and records into it, as `mode` says.

    :param store: where the recording is (a `store.SQLiteStore` or `store.MemoryStore`).
    :param mode: `none`, `once` (default), `new_episodes` or `all` (see `RecordMode`).
    :param agents: which agents are answered from the recording: agents or their aliases, or "all"; by default
        the agents marked `talks_to_outside_world` (LLMs, people), so your own orchestration runs live.
    :param speed: replay streams at `speed` times the recorded pace (1.0 = as recorded); None (default) = at once.
    :param normalize: a function from a call (a `CallToMatch`: `agent_alias`, `kwargs`, `messages`, `metadata`,
        `replace(**changes)`) to the call to match on, applied to recorded calls and to calls being replayed
        alike, so volatile values (dates, temporary paths, request ids) can be masked; the recording keeps the
        original values.
    """

    def __init__(
        self,
        store: EventStore,
        mode: Union[RecordMode, str] = RecordMode.ONCE,
        agents: Union[str, Iterable[Union[MiniAgent, str]], None] = None,
        speed: Optional[float] = None,
        normalize: Optional[Normalizer] = None,
        order_timeout: float = 1.0,
    ) -> None:
        if not isinstance(store, EventStore):
            raise TypeError(f"Replay needs a store (SQLiteStore or MemoryStore), got {type(store).__name__}.")
        try:
            self.mode = RecordMode(mode)
        except ValueError:
            choices = ", ".join(repr(str(item)) for item in RecordMode)
            raise ValueError(f"Unknown record mode {mode!r}; use one of {choices}.") from None
        if speed is not None and speed <= 0:
            raise ValueError(f"`speed` must be positive (1.0 = the recorded pace), got {speed}.")
        if not order_timeout > 0:
            raise ValueError(f"`order_timeout` must be a positive number of seconds, got {order_timeout}.")
        if normalize is not None and not callable(normalize):
            raise TypeError(f"`normalize` must be a function from a CallToMatch to a CallToMatch, got {normalize!r}.")
        self.store = store
        self.speed = speed
        self.order_timeout = order_timeout
        self._all_agents = agents == "all"
        self._aliases: Optional[frozenset[str]] = None
        if agents is not None and not self._all_agents:
            if isinstance(agents, str):
                agents = [agents]
            self._aliases = frozenset(agent.alias if isinstance(agent, MiniAgent) else str(agent) for agent in agents)
        self._matcher = CallMatcher(normalize)
        self._recording = Recording(store, self._matcher)
        self._opened_store = False
        self._fingerprint_sink = FingerprintSink()
        self.replaying = False
        """Whether calls are answered from the recording in the current run."""
        self.recording = False
        """Whether the current run is being recorded into the store."""
        self.divergences: list[ReplayDivergenceError] = []
        """The calls of the current run that the recording did not have (in modes that do not record)."""
        self._clock = CompletionClock(store, order_timeout)
        self.replayed_calls = 0
        self.run_id: Optional[str] = None
        """The id of the current (or last) run."""

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the current (or last) run; equal to the recording's when the replay was faithful."""
        return self._fingerprint_sink.fingerprint

    async def astart(self, mini_agents: MiniAgents) -> None:
        if self.mode is RecordMode.NONE and not self.store.is_open and not self.store.exists:
            raise self._no_recording_error()  # before opening: that would create the file
        if not self.store.is_open:
            await self.store.aopen()
            self._opened_store = True
        try:
            runs = await self._recording.aload_runs()
            if self.mode is RecordMode.NONE and not runs:
                raise self._no_recording_error()
            # a run whose process died is no recording for `once` (which records it again), but `none` and
            # `new_episodes` use the calls it has (a divergence then says that the recording is incomplete)
            has_recording = any(run.is_finished for run in runs)
            if self.mode is RecordMode.ONCE and runs and not has_recording:
                logger.warning(
                    "The recording in %s is incomplete (run %s never finished: its process was probably killed); "
                    "record mode 'once' records it again.",
                    self.store.location,
                    ", ".join(run.run_id for run in runs),
                )
            self.replaying = self.mode in (RecordMode.NONE, RecordMode.NEW_EPISODES) or (
                has_recording and self.mode is RecordMode.ONCE
            )
            self.recording = self.mode in (RecordMode.ALL, RecordMode.NEW_EPISODES) or (
                self.mode is RecordMode.ONCE and not has_recording
            )
            self.divergences = []
            self._clock = CompletionClock(self.store, self.order_timeout)
            self.replayed_calls = 0
            mini_agents.add_event_sink(self._fingerprint_sink)
            mini_agents.add_event_sink(self._clock)
            if self.recording:
                mini_agents.add_event_sink(self.store)
        except BaseException:
            await self._aclose_if_opened()
            raise

    def _no_recording_error(self) -> NoRecordingError:
        return NoRecordingError(
            f"The store {self.store.location} holds no recording, and record mode 'none' never records. "
            "Record it first: run once with Replay(store, mode='once') (with pytest: `pytest --record-mode=once`)."
        )

    def intercepts(self, agent: MiniAgent) -> bool:
        if self._all_agents:
            intercepted = True
        elif self._aliases is not None:
            intercepted = agent.alias in self._aliases
        else:
            intercepted = agent.talks_to_outside_world
        call = current_agent_call()  # called as the call starts, before its input is awaited
        if self.replaying and call is not None:
            self._clock.agent_answered(agent.alias, intercepted, call.position)
        return intercepted

    async def aanswer(self, call: InterceptedCall) -> Any:
        if not self.replaying:
            return None
        match_key = self._matcher.key(call.call_node)
        recorded = await self._recording.afind_call(match_key, call.occurrence, call.position)
        legacy_key = legacy_call_key(call.call_node) if recorded is None and self._matcher.normalize is None else None
        if legacy_key is not None:  # a recording made before kwargs were kept apart from the node's fields
            recorded = await self._recording.afind_call(legacy_key, call.occurrence, call.position)
        if recorded is None:
            self._clock.decided(call.position)  # no recorded call answers this position
            if self.recording:
                return None  # new_episodes: run it live, and it gets recorded
            divergence = await self._adivergence(call)
            self.divergences.append(divergence)
            raise divergence
        self.replayed_calls += 1
        pacing = await self._clock.aasked(recorded, call.position)
        promises, error = await self._recording.areply_promises(recorded, self.speed, pacing)
        return replayed_sequence(promises, error, pacing)

    async def afinish(self, mini_agents: MiniAgents, error: Optional[BaseException]) -> None:
        """Close what `astart` opened; then, when calls diverged and the context's body raised nothing, raise the
        first divergence, so that one the agents swallowed (or that nobody awaited) still fails the run."""
        self.run_id = mini_agents.run_id
        try:
            if self.mode is RecordMode.ALL and self.recording and mini_agents.run_id is not None:
                await self._areplace_recording(mini_agents.run_id, error)
        finally:
            await self._aclose_if_opened()
        if self.divergences and error is None:
            raise self._unhandled_divergence()

    def _unhandled_divergence(self) -> ReplayDivergenceError:
        """The first divergence of the run, saying how many more there were."""
        first, *more = self.divergences
        if not more:
            return first
        calls = "1 more call" if len(more) == 1 else f"{len(more)} more calls"
        listed = ", ".join(f"{item.agent_alias} (call key {item.call_key})" for item in more)
        return ReplayDivergenceError(
            f"{first}\n{calls} diverged in this run: {listed}; see `Replay.divergences`.",
            first.agent_alias,
            first.call_key,
            first.occurrence,
            first.position,
        )

    async def _areplace_recording(self, run_id: str, error: Optional[BaseException]) -> None:
        """Mode `all`: a run that finished ok (and was stored whole) replaces every other run; any other is
        deleted, so a failed re-recording leaves the earlier recording as it was."""
        runs = await self.store.alist_runs()
        new_run_ok = error is None and any(run.run_id == run_id and run.status == RunStatus.OK for run in runs)
        if new_run_ok:
            doomed = [run.run_id for run in runs if run.run_id != run_id]
        else:
            logger.warning(
                "Record mode 'all': run %s %s, so it is deleted and %s keeps its earlier recording.",
                run_id,
                "failed" if error is not None else "was not stored whole",
                self.store.location,
            )
            doomed = [run.run_id for run in runs if run.run_id == run_id]
        for doomed_run_id in doomed:
            await self.store.adelete_run(doomed_run_id, force=True)  # its own recording: even a killed run goes
        await self.store.agc()

    async def _aclose_if_opened(self) -> None:
        if self._opened_store:
            self._opened_store = False
            await self.store.aclose()

    async def _adivergence(self, call: InterceptedCall) -> ReplayDivergenceError:
        alias = call.agent.alias
        call_key = call.call_node.hash_key
        if len(self.divergences) >= _FULL_REPORTS:  # a changed flow diverges many times: explain the first ones
            return ReplayDivergenceError(
                f"Agent {alias} was called, but the recording in {self.store.location} has no answer for it (call "
                f"key {call_key}, occurrence {call.occurrence}, position {call.position}); see the first "
                "divergences of this run for what differs.",
                alias,
                call_key,
                call.occurrence,
                call.position,
            )
        recorded = await self._recording.acalls_of(alias)
        same_key = [item for item in recorded if item.call_key == call_key]
        lines = [
            f"Agent {alias} was called, but the recording in {self.store.location} has no answer for it "
            f"(call key {call_key}, occurrence {call.occurrence}, position {call.position}); record mode "
            f"'{self.mode}' does not record, so the agent was not run."
        ]
        if same_key:
            times = 1 + max(item.occurrence for item in same_key)
            lines.append(
                f"This exact call was recorded {times} time(s); this run makes it more often (occurrence "
                f"{call.occurrence} is the {call.occurrence + 1}th)."
            )
        elif not recorded:
            lines.append(f"The recording has no call of {alias} at all.")
        else:
            lines.append("The closest recorded calls of this agent, and what differs:")
            for difference in await self._aclosest(call.call_node, unique_calls(recorded)):
                lines.append(difference)
        runs = list(self._recording.runs.values())
        unfinished = [run for run in runs if not run.is_finished]
        if unfinished and len(unfinished) == len(runs):
            lines.append(
                f"The recording is incomplete: {_describe_runs(unfinished)} never finished (its process was "
                "probably killed), so it may well stop before this call. Record it again: Replay(store, "
                "mode='once') records over a recording that never finished (with pytest: "
                "`pytest --record-mode=once`), or mode='all'."
            )
        else:
            if unfinished:
                lines.append(
                    f"The store also holds {_describe_runs(unfinished)} that never finished (killed mid-run?): "
                    "its calls answer only what no finished run answers."
                )
            lines.append(
                "If the change is intended, record again: Replay(store, mode='all') or 'new_episodes' (with "
                "pytest: `pytest --record-mode=new_episodes`)."
            )
        return ReplayDivergenceError("\n".join(lines), alias, call_key, call.occurrence, call.position)

    async def _aclosest(self, call_node: AgentCallNode, recorded: list[RecordedCall]) -> list[str]:
        """The recorded calls closest to this one (fewest and smallest differences first), and what differs;
        with `normalize`, between the normalized calls, each value also shown as given where it differs."""
        current = self._matcher.normalized(call_node)
        scored: list[tuple[float, str, list[str]]] = []
        for item in recorded:
            try:
                recorded_node = await self.store.aget(item.call_key)
            except UnknownHashError:  # collected meanwhile: nothing to compare with
                continue
            if getattr(recorded_node, "class_", None) != AgentCallNode.__name__:
                continue  # (a node of an older shape is rebuilt as a stand-in class of the same name)
            differences = call_differences(current, self._matcher.normalized(recorded_node))
            described = [line for difference in differences for line in difference.lines]
            if self._matcher.normalize is not None:
                described += normalization_notes(CallToMatch.of(call_node), current, "now")
                described += normalization_notes(
                    CallToMatch.of(recorded_node), self._matcher.normalized(recorded_node), "recorded"
                )
            described = described or ["(identical; only the position differs)"]
            scored.append((distance(differences), item.call_key, described))
        scored.sort(key=lambda entry: entry[0])
        lines: list[str] = []
        for _, call_key, described in scored[:_CLOSEST_SHOWN]:
            lines.append(f"  - recorded call {call_key}:")
            lines.extend(f"      {line}" for line in described)
        if len(scored) > _CLOSEST_SHOWN:
            lines.append(f"  ({len(scored) - _CLOSEST_SHOWN} more recorded calls of this agent differ more)")
        return lines


def _describe_runs(runs: list[RunInfo]) -> str:
    described = [
        f"{run.run_id} (started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(run.started_at))})"
        if run.started_at is not None
        else run.run_id
        for run in runs
    ]
    return ("run " if len(runs) == 1 else f"{len(runs)} runs: ") + ", ".join(described)
