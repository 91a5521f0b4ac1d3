"""`open_store`: which store a path or URL names, and clear errors for what it cannot open."""

from pathlib import Path

import pytest

from miniagents import MiniAgents
from miniagents.ext.llm.stand_in import stand_in_llm_agent
from store import JSONLStore, MemoryStore, SQLiteStore, StoreUsageError, open_store, register_suffix


def test_a_plain_path_is_a_sqlite_store(tmp_path: Path) -> None:
    opened = open_store(tmp_path / "runs.db")
    assert isinstance(opened, SQLiteStore)
    assert opened.path == tmp_path / "runs.db"
    assert isinstance(open_store(str(tmp_path / "runs")), SQLiteStore)  # no suffix needed


def test_sqlite_urls_name_relative_and_absolute_paths(tmp_path: Path) -> None:
    absolute = open_store(f"sqlite:///{tmp_path}/runs.db")
    assert isinstance(absolute, SQLiteStore)
    assert absolute.path == tmp_path / "runs.db"
    relative = open_store("sqlite:///recordings/runs%20one.db")
    assert isinstance(relative, SQLiteStore)
    assert relative.path == Path("recordings/runs one.db")


def test_memory_url_is_a_new_memory_store_each_time() -> None:
    first, second = open_store("memory://"), open_store("memory://")
    assert isinstance(first, MemoryStore)
    assert first is not second


def test_options_reach_the_store(tmp_path: Path) -> None:
    opened = open_store(tmp_path / "runs.db", batch_size=7)
    assert opened._pending._batch_size == 7


def test_a_store_object_is_returned_as_it_is() -> None:
    memory = MemoryStore()
    assert open_store(memory) is memory
    with pytest.raises(StoreUsageError, match="store object and options"):
        open_store(memory, batch_size=3)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("postgresq://db/x", "does not know the URL scheme 'postgresq'"),
        ("memory://somewhere", "just memory://"),
        ("sqlite://host/runs.db", "sqlite:///relative/path.db"),
        ("sqlite:///", "sqlite:///relative/path.db"),
        ("sqlite:////", "names no file"),
        ("sqlite:///recordings/", "names no file"),
        ("sqlite:///runs.db?mode=ro", r"query strings such as \?mode=ro are not supported"),
        ("", "empty path"),
    ],
)
def test_what_it_cannot_open_is_named(target: str, expected: str) -> None:
    with pytest.raises(StoreUsageError, match=expected):
        open_store(target)


def test_what_is_not_a_path_url_or_store_is_named() -> None:
    with pytest.raises(StoreUsageError, match=r"needs a path, URL or store, got 123 \(int\)"):
        open_store(123)  # type: ignore[arg-type]


@pytest.mark.parametrize("target", ["x.db", "sqlite:///x.db", "x.jsonl", "memory://"])
def test_an_unknown_option_names_the_backend_and_what_it_takes(target: str) -> None:
    with pytest.raises(StoreUsageError, match=r"cannot pass the options \['bogus'\] to \w+Store.*takes .*batch_size"):
        open_store(target, bogus=1)


def test_a_home_directory_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    plain = open_store("~/runs.db")
    assert isinstance(plain, SQLiteStore) and plain.path == tmp_path / "runs.db"
    url = open_store("sqlite:///~/runs.db")
    assert isinstance(url, SQLiteStore) and url.path == tmp_path / "runs.db"
    text = open_store("~/recording.jsonl")
    assert isinstance(text, JSONLStore) and text.path == tmp_path / "recording.jsonl"


def test_the_longest_registered_suffix_wins(tmp_path: Path) -> None:
    made: list[str] = []

    def factory(path: str, **options: object) -> MemoryStore:
        made.append(path)
        return MemoryStore()

    register_suffix(".tar.jsonl", factory)  # after .jsonl
    try:
        assert type(open_store(tmp_path / "x.tar.jsonl")) is MemoryStore
        assert made == [str(tmp_path / "x.tar.jsonl")]
        assert isinstance(open_store(tmp_path / "x.jsonl"), JSONLStore)
    finally:
        from store import opening

        opening._SUFFIXES.pop(".tar.jsonl")


def test_a_registered_suffix_picks_its_backend(tmp_path: Path) -> None:
    made: list[str] = []

    def factory(path: str, **options: object) -> MemoryStore:
        made.append(path)
        return MemoryStore()

    register_suffix(".testrec", factory)
    try:
        assert type(open_store(tmp_path / "run.TESTREC")) is MemoryStore
        assert made == [str(tmp_path / "run.TESTREC")]
    finally:
        from store import opening

        opening._SUFFIXES.pop(".testrec")


async def test_an_opened_url_records_a_run(tmp_path: Path) -> None:
    async with MiniAgents(store=open_store(f"sqlite:///{tmp_path}/runs.db")):
        await stand_in_llm_agent.inquire("Hello").aresolve_messages()
    async with open_store(tmp_path / "runs.db") as reopened:
        runs = await reopened.alist_runs()
    assert [run.status for run in runs] == ["ok"]
