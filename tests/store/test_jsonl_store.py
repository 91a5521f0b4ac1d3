"""`JSONLStore`: the conformance suite (stable and exact files), plus what only a text recording does."""

from __future__ import annotations

import asyncio
import difflib
import os
import re
from pathlib import Path
from typing import Any, Optional

import orjson
import pytest

from miniagents import InteractionContext, Message, MiniAgents, miniagent
from miniagents.events import Event, EventKind
from miniagents.ext.llm.stand_in import stand_in_llm_agent
from miniagents.promising.ext.frozen import Frozen
from replay import Replay
from replay.fingerprint import afingerprint
from store import (
    EventStore,
    ForeignDatabaseError,
    JSONLStore,
    SchemaVersionError,
    StoreCorruptedError,
    StoreIntegrityError,
    StoreWriteError,
)
from store.format import APPLICATION
from store.jsonl_format import FORMAT_NAME, parse, split_text
from store.testing import StoreConformance, arecord_events, message_event


def file_lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


class TestJSONLStore(StoreConformance):
    normalizes_runs = True
    numbers_events_by_place = True
    names_objects_by_hash_key = False

    def make_store(self, **options: Any) -> EventStore:
        return JSONLStore(self.tmp_path / "store.jsonl", **options)

    def reopened(self, store: EventStore) -> EventStore:
        assert isinstance(store, JSONLStore)
        return JSONLStore(store.path, stable=store.stable, timing=store.timing)

    async def acorrupt_object(self, store: EventStore, hash_key: str, body: Optional[bytes]) -> None:
        """Edit the object's lines by hand (the header's checks then name them)."""
        assert isinstance(store, JSONLStore)
        lines = file_lines(store.path)
        [obj] = [
            item
            for item in parse(store.path.read_bytes(), "", lambda header: None).objects
            if item.hash_key == hash_key
        ]
        label = "@" if len(hash_key) == 40 else "@64"
        replacement = [] if body is None else [orjson.dumps({label: obj.number, "@raw": body.decode()})]
        lines[obj.first_line - 1 : obj.last_line] = replacement
        write_lines(store.path, lines)

    async def aset_format_entry(self, store: EventStore, entry: str, value: str) -> None:
        """Edit the header line by hand (the store's format entries are named differently there)."""
        assert isinstance(store, JSONLStore)
        header, body = store.path.read_bytes().split(b"\n", 1)
        fields = orjson.loads(header)
        if entry == "application":
            fields["format"] = FORMAT_NAME if value == APPLICATION else value
        else:
            key = {"schema_version": "version", "canonical_form_version": "canonical_form", "hash_algorithm": "hash"}
            fields[key[entry]] = int(value) if value.isdigit() else value
        store.path.write_bytes(orjson.dumps(fields) + b"\n" + body)

    async def atamper_event(self, store: EventStore, seq: int, field: str, value: Any) -> None:
        """Edit the line of the `seq`-th event of the file by hand."""
        assert isinstance(store, JSONLStore)
        lines = file_lines(store.path)
        event_lines = [index for index, line in enumerate(lines) if line.startswith(b'{"event":')]
        index = event_lines[seq - 1]
        if field == "delete":
            del lines[index]
        else:
            line = orjson.loads(lines[index])
            name = {"hash_key": "hash", "call_id": "call"}.get(field, field)
            line[name] = orjson.loads(value) if field == "data" else value
            lines[index] = orjson.dumps(line)
        write_lines(store.path, lines)


class TestExactJSONLStore(TestJSONLStore):
    """The suite against a file that keeps run ids, times and event order as they are (`stable=False`)."""

    normalizes_runs = False

    def make_store(self, **options: Any) -> EventStore:
        return JSONLStore(self.tmp_path / "store.jsonl", stable=False, **options)


# ------------------------------------------------------------------------------------------------- the file itself

llm = stand_in_llm_agent.fork(model="stand-in")
ANSWER = {"text": "The sea is wide.\nThe sea is grey.\nThe waves roll in."}
scripted_llm = stand_in_llm_agent.fork(model="stand-in", responder=lambda messages: ANSWER["text"])
DELAYS = {"slow": 0.05, "fast": 0.0}


@miniagent
async def poet(ctx: InteractionContext) -> None:
    ctx.reply(llm.inquire(["Write a line about the sea.", *await ctx.messages.aresolve_messages()]))


@miniagent
async def scripted_poet(ctx: InteractionContext) -> None:
    """Its LLM answers `ANSWER["text"]`, which is not part of the call (as a real LLM's answer is not)."""
    ctx.reply(scripted_llm.inquire(["Write about the sea.", *await ctx.messages.aresolve_messages()]))


@miniagent
async def panel(ctx: InteractionContext) -> None:
    """Asks two experts at once; which one finishes first depends on `DELAYS`."""
    inputs = await ctx.messages.aresolve_messages()
    ctx.reply([expert.inquire(inputs, name="slow"), expert.inquire(inputs, name="fast")])


@miniagent
async def expert(ctx: InteractionContext, name: str) -> None:
    await ctx.messages.aresolve_messages()
    await asyncio.sleep(DELAYS[name])
    ctx.reply(f"{name} says hello")


async def arecord(path: Path, agent: Any = poet, mode: str = "all") -> str:
    replay = Replay(JSONLStore(path), mode=mode)
    async with MiniAgents(replay=replay):
        await agent.inquire("in five words").aresolve_messages()
    return replay.fingerprint


async def test_re_recording_an_unchanged_flow_writes_the_same_bytes(tmp_path: Path) -> None:
    path = tmp_path / "poet.jsonl"
    await arecord(path)
    first = path.read_bytes()
    await arecord(path)
    assert path.read_bytes() == first
    assert b"run-1" in first and first.count(b'{"run":') == 1  # mode all leaves one run


async def test_parallel_calls_finishing_in_another_order_write_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "panel.jsonl"
    await arecord(path, panel)
    first = path.read_bytes()
    monkeypatch.setitem(DELAYS, "slow", 0.0)
    monkeypatch.setitem(DELAYS, "fast", 0.05)  # now the other expert finishes first
    await arecord(path, panel)
    assert path.read_bytes() == first


async def test_a_changed_answer_changes_only_its_lines_and_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "poet.jsonl"
    await arecord(path, scripted_poet)
    before = file_lines(path)
    monkeypatch.setitem(ANSWER, "text", "The sea is wide.\nThe sea is blue.\nThe waves roll in.")
    await arecord(path, scripted_poet)
    after = file_lines(path)
    assert len(before) == len(after)
    changed = [index for index, (old, new) in enumerate(zip(before, after, strict=True)) if old != new]
    assert changed == [0, after.index(b'"The sea is blue.\\n"')]


async def test_a_text_recording_holds_no_random_ids_times_or_timing(tmp_path: Path) -> None:
    path = tmp_path / "poet.jsonl"
    store = JSONLStore(path)
    async with MiniAgents(store=store) as context:
        await poet.inquire("in five words").aresolve_messages()
    content = path.read_bytes()
    assert str(context.run_id).encode() not in content
    assert b'"t":' not in content and b'"started_at":null' in content
    assert content.count(b'"offsets":[]') == content.count(b'"offsets":')
    async with JSONLStore(path) as reader:
        [run] = await reader.alist_runs()
    assert run.run_id == "run-1" and run.started_at is None


async def test_timing_is_kept_rounded_to_milliseconds_when_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "timed.jsonl"
    async with MiniAgents(store=JSONLStore(path, timing=True)):
        await llm.inquire("hello", token_delay=0.002).aresolve_messages()
    async with JSONLStore(path) as reader:
        [stream] = await reader.aget_events(kinds=[EventKind.STREAM])
        events = await reader.aget_events()
    assert stream.data is not None and len(stream.data["offsets"]) == len(stream.data["chunks"])
    assert all(round(offset, 3) == offset for offset in stream.data["offsets"]) and stream.data["offsets"][-1] > 0
    assert any(event.t > 0 for event in events)


async def test_one_llm_call_is_a_small_file_and_any_file_stays_near_its_objects_size(tmp_path: Path) -> None:
    path = tmp_path / "one_call.jsonl"
    async with MiniAgents(store=JSONLStore(path)):
        await llm.inquire("What is the sea like?").aresolve_messages()
    assert path.stat().st_size <= 4096

    path = tmp_path / "many_calls.jsonl"
    async with MiniAgents(store=JSONLStore(path)):
        for index in range(30):
            await poet.inquire(f"question {index} " + "and a longer text. " * index).aresolve_messages()
    async with JSONLStore(path) as reader:
        canonical = sum([len(body) async for chunk in reader._aiter_object_chunks() for _, body in chunk])
        events = len(await reader.aget_events())
    size = path.stat().st_size
    assert size <= 1.3 * canonical + 64 * events, (size, canonical, events)


async def test_sqlite_to_text_to_sqlite_keeps_every_hash_key_call_key_and_fingerprint(tmp_path: Path) -> None:
    from store import SQLiteStore, acopy

    source = SQLiteStore(tmp_path / "source.db")
    replay = Replay(source, mode="all")
    async with MiniAgents(replay=replay):
        await panel.inquire("in five words").aresolve_messages()
        await poet.inquire("and again").aresolve_messages()
    text, back = JSONLStore(tmp_path / "copy.jsonl"), SQLiteStore(tmp_path / "back.db")
    await acopy(source, text)
    await acopy(JSONLStore(tmp_path / "copy.jsonl"), back)

    async def asummary(store: EventStore) -> tuple[Any, ...]:
        async with store:
            [run] = await store.alist_runs()
            events = await store.aget_events(run.run_id)
            objects = sorted([key async for chunk in store._aiter_object_chunks() for key, _ in chunk])
            report = await store.averify()
            fingerprint = await afingerprint(store, run.run_id)
        assert report.ok, report.problems
        calls = sorted(str(event.hash_key) for event in events if event.kind is EventKind.CALL_FINISHED)
        return objects, calls, fingerprint

    original = await asummary(SQLiteStore(tmp_path / "source.db"))
    assert original[2] == replay.fingerprint
    assert await asummary(JSONLStore(tmp_path / "copy.jsonl")) == original
    assert await asummary(SQLiteStore(tmp_path / "back.db")) == original
    replayed = Replay(JSONLStore(tmp_path / "copy.jsonl"), mode="none")
    async with MiniAgents(replay=replayed):
        await panel.inquire("in five words").aresolve_messages()
        await poet.inquire("and again").aresolve_messages()
    assert replayed.fingerprint == replay.fingerprint


async def test_objects_of_any_shape_and_both_key_lengths_come_back_with_their_keys(tmp_path: Path) -> None:
    deep: Any = "bottom"
    for _ in range(300):  # deeper than JSON parsers take: kept whole
        deep = {"a": deep}
    async with MiniAgents(longer_hash_keys=True):
        long = Message(text="long keys")
    messages = [
        Message(text="@starts with an at sign", note="@@two", items=["@1", "@+2", "@stream"]),
        Message(text="line one\nline two\n\nafter a blank line\n", empty=""),
        Message(text="x" * 500 + ". " + "y" * 10),
        Message(text="deep", payload=deep),
        Frozen(unicode="snow ☃ and emoji 🌊", numbers=[1, -2.5, 1e100, 0.1]),
        Message(text="quotes", refers=Message(text="child")),
    ]
    path = tmp_path / "shapes.jsonl"
    async with JSONLStore(path) as store:
        await store.astart_run("run")
        for message in messages:
            store.append(message_event("run", message))
        store.append(Event(EventKind.MESSAGE, "run", 0.0, hash_key=long.hash_key, obj=long))
        await store.afinish_run("run")
    async with JSONLStore(path) as reader:
        rebuilt = await reader.aget_many([message.hash_key for message in messages] + [long.hash_key])
        report = await reader.averify()
    assert report.ok, report.problems
    assert [obj.hash_key for obj in rebuilt.values()] == [message.hash_key for message in messages] + [long.hash_key]
    assert list(rebuilt.values())[:-1] == messages
    assert split_text("One. Two!\nThree") == ["One. Two!\n", "Three"]


async def test_a_hand_edited_answer_is_refused_by_replay_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "poet.jsonl"
    await arecord(path, scripted_poet)
    lines = file_lines(path)
    [number] = [index + 1 for index, line in enumerate(lines) if b"The sea is grey." in line]
    lines[number - 1] = lines[number - 1].replace(b"grey", b"blue")
    write_lines(path, lines)
    replay = Replay(JSONLStore(path), mode="none")
    with pytest.raises(StoreIntegrityError, match=rf"was changed at line {number}\b"):
        async with MiniAgents(replay=replay):
            await scripted_poet.inquire("in five words").aresolve_messages()
    async with JSONLStore(path) as reader:
        report = await reader.averify()
        with pytest.raises(StoreCorruptedError, match=f"line {number}.*not written again"):
            await reader.astart_run("another")
    assert {problem.kind for problem in report.problems} == {"hash_mismatch", "changed_event"}
    assert all(re.search(rf"\bline {number}\b", str(problem)) for problem in report.problems), report.problems


async def test_a_bad_merge_is_refused_when_opening_naming_the_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "poet.jsonl"
    await arecord(path)
    lines = file_lines(path)
    lines[5:5] = [b"<<<<<<< HEAD", *lines[5:7], b"=======", b">>>>>>> branch"]
    write_lines(path, lines)
    with pytest.raises(StoreCorruptedError, match=f"{path}, line 6: it is not JSON.*conflict markers"):
        async with JSONLStore(path):
            pass


async def test_a_removed_line_names_the_event_after_it(tmp_path: Path) -> None:
    path = tmp_path / "poet.jsonl"
    await arecord(path)
    lines = file_lines(path)
    index = next(index for index, line in enumerate(lines) if line.startswith(b'{"event":"stream"'))
    del lines[index]
    write_lines(path, lines)
    async with JSONLStore(path) as reader:
        report = await reader.averify()
    [problem] = report.problems
    assert problem.kind == "changed_event" and problem.seq is not None
    assert f"lines before line {index + 1} of {path} were removed" in str(problem)


async def test_files_that_are_no_recording_or_too_new_are_refused_untouched(tmp_path: Path) -> None:
    foreign = tmp_path / "notes.jsonl"
    foreign.write_bytes(b'{"some": "data"}\n')
    with pytest.raises(ForeignDatabaseError, match="not a miniagents text recording"):
        await JSONLStore(foreign).aopen()
    newer = tmp_path / "newer.jsonl"
    newer.write_bytes(b'{"format":"miniagents-recording","version":99}\n')
    with pytest.raises(SchemaVersionError, match="format version 99"):
        await JSONLStore(newer).aopen()
    assert foreign.read_bytes() == b'{"some": "data"}\n'


async def test_a_second_writer_is_refused_instead_of_losing_runs(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    first, second = await JSONLStore(path).aopen(), await JSONLStore(path).aopen()
    try:
        await arecord_events(first, "a", [message_event("a", Message(text="from the first"))])
        await second.astart_run("b")
        second.append(message_event("b", Message(text="from the second")))
        with pytest.raises(StoreWriteError, match="changed by another writer"):
            await second.aflush()
    finally:
        await first.aclose()
        with pytest.raises(StoreWriteError, match="could not be written"):
            await second.aclose()
    async with JSONLStore(path) as reader:
        assert [run.run_id for run in await reader.alist_runs()] == ["run-1"]


async def test_a_failed_write_leaves_the_previous_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "poet.jsonl"
    await arecord(path)
    before = path.read_bytes()

    def interrupted(source: Any, target: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(Exception, match="No space left on device"):
        await arecord(path, scripted_poet)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["poet.jsonl"]  # no temporary file left behind


async def test_secrets_are_no_more_in_a_text_recording_than_in_sqlite(tmp_path: Path) -> None:
    secret = "sk-proj-abcdefghijklmnopqrstuvwxyz123456"

    @miniagent
    async def leaky(ctx: InteractionContext, api_key: str) -> None:
        await ctx.messages.aresolve_messages()
        ctx.reply(Message(text=f"the key is {secret}", password=secret))
        raise ValueError(f"failed with api_key={secret}")

    from store import SQLiteStore

    for store in (JSONLStore(tmp_path / "leak.jsonl"), SQLiteStore(tmp_path / "leak.db")):
        with pytest.raises(ValueError):
            async with MiniAgents(store=store, run_metadata={"token": secret}):
                await leaky.inquire(f"my key {secret}", api_key=secret).aresolve_messages()
    text = (tmp_path / "leak.jsonl").read_bytes()
    assert secret.encode() not in text
    assert b"[REDACTED]" in text


HAIKU = {"text": "Grey waves fold and break\nsalt wind carries gull voices\nthe tide keeps its time"}
haiku_llm = stand_in_llm_agent.fork(model="stand-in", responder=lambda messages: HAIKU["text"])


async def test_the_readme_diff_is_what_re_recording_a_changed_answer_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Text recordings that diff like code", 1)[1].split("```diff\n", 1)[1].split("```", 1)[0]
    shown = [line for line in block.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    path = tmp_path / "test_haiku.jsonl"

    async def arecord_haiku() -> list[str]:
        async with MiniAgents(replay=Replay(JSONLStore(path), mode="all")):
            await haiku_llm.inquire("Write a haiku about the sea.").aresolve_messages()
        return path.read_text(encoding="utf-8").splitlines()

    before = await arecord_haiku()
    monkeypatch.setitem(HAIKU, "text", HAIKU["text"].replace("gull voices", "distant bells"))
    after = await arecord_haiku()
    changed = [line for line in difflib.unified_diff(before, after, lineterm="") if line[:1] in "+-"][2:]
    header = ('"format":"miniagents-recording"', '"library":')  # its library version and hashes move on
    assert [line for line in changed if header[0] not in line] == [line for line in shown if header[0] not in line]
    assert len(changed) == len(shown) and all(header[1] in line for line in changed if header[0] in line)


@pytest.mark.parametrize(
    ("entry", "value", "named"),
    [("canonical_form", 2, "canonical form version 2"), ("hash", "sha256", "hashes objects with 'sha256'")],
)
async def test_a_recording_of_another_canonical_form_or_hash_is_refused_untouched(
    tmp_path: Path, entry: str, value: object, named: str
) -> None:
    path = tmp_path / "recording.jsonl"
    async with JSONLStore(path) as store:
        await arecord_events(store, "run", [message_event("run", Message(text="x"))])
    header, body = path.read_bytes().split(b"\n", 1)
    changed = orjson.dumps({**orjson.loads(header), entry: value}) + b"\n" + body
    path.write_bytes(changed)
    with pytest.raises(SchemaVersionError, match=named):
        await JSONLStore(path).aopen()
    assert path.read_bytes() == changed


async def test_a_recording_whose_header_names_no_canonical_form_or_hash_reads_as_form_1_and_blake3(
    tmp_path: Path,
) -> None:
    path = tmp_path / "recording.jsonl"
    async with JSONLStore(path) as store:
        await arecord_events(store, "run", [message_event("run", Message(text="x"))])
    header, body = path.read_bytes().split(b"\n", 1)
    older = {key: value for key, value in orjson.loads(header).items() if key not in ("canonical_form", "hash")}
    path.write_bytes(orjson.dumps(older) + b"\n" + body)  # as recordings were written before the header held them
    async with JSONLStore(path) as store:
        assert (await store.averify()).ok
