"""No secret reaches a store: secrets planted in more than 30 places (names in every case style, values seen
before, environment variables, credential shapes, argv lists, header pairs, error texts) are absent from every
byte of the SQLite files; names that only look like secrets keep their values."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import orjson
import pytest

from miniagents import InteractionContext, Message, MiniAgents, miniagent
from miniagents.ext.llm.stand_in import stand_in_llm_agent
from miniagents.redaction import REDACTION, SecretRedaction, name_words
from replay import aload_tree
from store import open_store
from store.encoding import encode_data


class Planted:
    """Unique secret values, one per place, to grep for afterwards."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def __call__(self, place: str, prefix: str = "") -> str:
        value = f"{prefix}{secrets.token_hex(12)}"
        self.values[place] = value
        return value


class Credentials(Message):
    password: str
    note: str = ""


class SearchFailed(Exception):
    def __init__(self, text: str, body: Any) -> None:
        super().__init__(text)
        self.body = body
        self.status_code = 401


def store_bytes(path: Path) -> bytes:
    return b"".join(file.read_bytes() for file in sorted(path.parent.glob(path.name + "*")))


@pytest.mark.parametrize("file_name", ["secrets.db", "secrets.jsonl"])  # a SQLite store, a text recording
async def test_secrets_planted_in_more_than_30_places_never_reach_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_name: str
) -> None:
    plant = Planted()
    monkeypatch.setenv("OPENAI_API_KEY", plant("environment: OPENAI_API_KEY", "sk-proj-"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", plant("environment: ANTHROPIC_API_KEY", "sk-ant-api03-"))
    monkeypatch.setenv("MY_SERVICE_TOKEN", plant("environment: MY_SERVICE_TOKEN"))
    registered = plant("registered value")
    REDACTION.register_values(registered)
    kwarg_key = plant("kwarg api_key")

    @miniagent
    async def tool(ctx: InteractionContext, **kwargs: Any) -> None:
        ctx.reply(f"tool saw {len(kwargs)} kwargs")

    @miniagent
    async def failing(ctx: InteractionContext, mode: str) -> None:
        if mode == "bearer":
            raise RuntimeError(f"401 from upstream; request had Authorization: Bearer {plant('error: bearer')}")
        if mode == "repr":
            raise ValueError(f"bad config {{'api_key': '{plant('error: repr of a dict')}', 'model': 'm'}}")
        if mode == "env":
            raise ConnectionError(f"could not use key {plant.values['environment: ANTHROPIC_API_KEY']}")
        raise SearchFailed("search failed", {"error": {"apiKey": plant("error attribute: body.apiKey")}})

    llm = stand_in_llm_agent.fork(model="m", openaiApiKey=plant("bound kwarg: openaiApiKey"))
    metadata = {
        "DB_PASSWORD": plant("metadata: DB_PASSWORD"),
        "clientSecret": plant("metadata: clientSecret"),
        "argv": ["prog", "--api-key", plant("metadata: argv --api-key VALUE"), "--model", "m"],
        "argv_equals": ["prog", f"--api-key={plant('metadata: argv --api-key=VALUE')}"],
        "database_url": f"postgresql://agent:{plant('metadata: password in URL')}@db.internal:5432/runs",
        "headers": {"x-api-key": plant("metadata: x-api-key header")},
        "auth": plant("metadata: auth"),
    }
    path = tmp_path / file_name
    async with MiniAgents(store=open_store(path), run_metadata=metadata):
        messages = [
            Message("plain", api_key=plant("field: api_key")),
            Message("camel", openaiApiKey=plant("field: openaiApiKey")),
            Message("provider", openaiKey=plant("field: openaiKey")),
            Message("oauth", accessToken=plant("field: accessToken")),
            Message("client", clientSecret=plant("field: clientSecret")),
            Message("kebab", **{"x-api-key": plant("field: x-api-key")}),
            Message("nested", auth={"bearer": plant("field: auth.bearer"), "scheme": "custom"}),
            Message("pairs", headers=[["Authorization", plant("field: header pair")], ["Accept", "json"]]),
            Credentials("declared", password=plant("declared field: password")),
            Message("outer", inner=Message("inner", token=plant("sub-message field: token"))),
            Message(f"a key in the text: {plant('text: sk- key', 'sk-')}"),
            Message(f"curl -H 'Authorization: Bearer {plant('text: bearer token')}' https://api.example.com"),
            Message(f"the environment key {plant.values['environment: OPENAI_API_KEY']} in a text"),
            Message(f"a registered value {registered} in a text"),
            Message(f"connect to mysql://root:{plant('text: password in URL')}@localhost/app"),
        ]
        await tool.inquire(
            messages,
            api_key=kwarg_key,
            **{"x-api-key": plant("kwarg: x-api-key")},
            clientSecret=plant("kwarg: clientSecret"),
            extra_headers=[("Authorization", f"Bearer {plant('kwarg: header tuple')}")],
            headers={"Authorization": f"Bearer {plant('kwarg: header dict')}"},
            cookie=plant("kwarg: cookie"),
            argv=["--token", plant("kwarg: argv --token")],
        ).aresolve_messages()
        # an LLM that echoes a secret it was given under a secret name earlier
        await llm.inquire(f"repeat after me: {kwarg_key}", reply=f"You said {kwarg_key}").aresolve_messages()
        for mode in ("bearer", "repr", "env", "attribute"):
            with pytest.raises((RuntimeError, ValueError, ConnectionError, SearchFailed)):
                await failing.inquire(mode=mode).aresolve_messages()

    assert len(plant.values) >= 30
    stored = store_bytes(path)
    found = [place for place, value in plant.values.items() if value.encode() in stored]
    assert found == [], found

    # what is not secret is kept, and the store still verifies
    async with open_store(path) as store:
        assert (await store.averify()).ok
        [run] = await store.alist_runs()
        assert run.metadata["argv"][3:] == ["--model", "m"]
        assert (
            run.metadata["database_url"].startswith("postgresql://agent:")
            and "db.internal" in run.metadata["database_url"]
        )
        tree = await aload_tree(store, run.run_id)
    tool_call = next(node for node in tree.walk() if node.agent_alias == "TOOL")
    assert tool_call.kwargs["api_key"] == REDACTION.marker
    assert tool_call.kwargs["argv"] == ("--token", REDACTION.marker)
    assert str(tool_call.input_messages[0]) == "plain"


LOOK_ALIKES = {
    "max_tokens": 512,
    "prompt_tokens": 12,
    "completion_tokens": 30,
    "input_tokens": 7,
    "output_tokens": 9,
    "total_tokens": 49,
    "token_count": 3,
    "tokenizer": "cl100k_base",
    "author": "Ada",
    "authority": "editor",
    "keyword": "sea",
    "monkey": "curious",
    "passage": "Call me Ishmael.",
    "sort_key": "date",
    "hash_key_of_input": "abc",
    "keyboard": "qwerty",
    "turkey": "roast",
    "bypass": "none",
}


@pytest.mark.parametrize(("name", "value"), LOOK_ALIKES.items())
def test_names_that_only_look_like_secrets_keep_their_values(name: str, value: Any) -> None:
    assert not REDACTION.is_secret(name)
    assert getattr(Message("m", **{name: value}), name) == value


@pytest.mark.parametrize(
    "name",
    ["api_key", "openaiApiKey", "openaiKey", "x-api-key", "X-Api-Key", "DB_PASSWORD", "clientSecret", "accessToken",
     "bearer", "auth", "Authorization", "refresh_token", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "passphrase",
     "set-cookie", "APIKey", "privateKey"],
)  # fmt: skip
def test_secret_names_in_every_case_style_are_secret(name: str) -> None:
    assert REDACTION.is_secret(name), name_words(name)


def test_credential_shapes_are_masked_in_texts() -> None:
    marker = REDACTION.marker
    assert (
        REDACTION.redact_text("Authorization: Bearer abcdefghijklmnopqrstuvwxyz") == f"Authorization: Bearer {marker}"
    )
    assert REDACTION.redact_text("key sk-ant-api03-abcdefghijklmnopqrstu ok") == f"key {marker} ok"
    assert REDACTION.redact_text("redis://:p4ssw0rd@cache:6379/0") == f"redis://:{marker}@cache:6379/0"
    assert REDACTION.redact_description("run --api-key abcdefgh123 --model m") == f"run --api-key {marker} --model m"
    assert (
        REDACTION.redact_description('{"password": "hunter2", "user": "bob"}')
        == f'{{"password": "{marker}", "user": "bob"}}'
    )
    assert (
        REDACTION.redact_text("We have 20 tokens left; the bearer of news.")
        == "We have 20 tokens left; the bearer of news."
    )


API_KEY = "sk-proj-" + "A1b2C3d4" * 5  # an API key's shape: masked wherever it turns up


@pytest.mark.parametrize("replies", [10, 300])
@pytest.mark.parametrize(
    "record",
    [
        {"hash": API_KEY},
        {"hash": "0" * 40, "chunks": [f"my key is {API_KEY}"], "offsets": [0.0]},
        {"hash": "0" * 40, "note": API_KEY},
        {"failed": {"error": {"message": f"with {API_KEY}"}}},
    ],
)
def test_every_reply_record_of_a_call_s_end_is_scanned_unless_it_is_a_hash_key(
    replies: int, record: dict[str, Any]
) -> None:
    # the records of many whole replies are skipped by the scan only once found to hold hex digits only
    whole = [{"hash": f"{index:040x}"} for index in range(replies)]
    encoded = encode_data({"agent_alias": "a", "replies": [*whole, record]})
    assert encoded is not None and API_KEY.encode() not in encoded


def test_a_registered_secret_made_of_hex_digits_is_found_among_many_whole_replies() -> None:
    hex_secret = secrets.token_hex(20)
    REDACTION.register_values(hex_secret)
    whole = [{"hash": f"{index:040x}"} for index in range(300)]
    encoded = encode_data({"agent_alias": "a", "replies": [*whole, {"hash": hex_secret}]})
    assert encoded is not None and hex_secret.encode() not in encoded


def test_many_whole_replies_are_stored_as_they_are() -> None:
    whole = [{"hash": f"{index:040x}"} for index in range(1_000)]
    data = {"agent_alias": "a", "replies": whole, "error": None}
    assert encode_data(data) == orjson.dumps(data)


def test_new_secret_values_replace_the_old_ones_at_once_for_every_thread() -> None:
    # another thread scanning while the values are replaced sees the old set or the new one, never none
    seen: list[str] = []

    class Watched(SecretRedaction):
        def __setattr__(self, name: str, value: Any) -> None:
            super().__setattr__(name, value)
            if name == "_lookup" and getattr(self, "armed", False):
                seen.append(self.redact_text("login with hunter2-is-my-password"))

    watched = Watched()
    watched.register_values("hunter2-is-my-password")
    watched.armed = True  # type: ignore[attr-defined]
    watched.configure(values=["hunter2-is-my-password", "another-secret-value"])
    assert seen and all(text == f"login with {watched.marker}" for text in seen)
    assert set(watched.values) == {"hunter2-is-my-password", "another-secret-value"}
