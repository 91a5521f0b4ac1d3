"""Divergence reports show the change: the text around the first differing position (a unified diff for long
texts), class and field-set differences, the closest recorded calls first; and no keyword argument is lost or
confused with a field of the call node, whatever its name."""

from typing import Any

import pytest

from miniagents import InteractionContext, Message, MiniAgent, MiniAgents, miniagent
from miniagents.ext.llm.llm_common import UserMessage
from miniagents.ext.llm.stand_in import stand_in_llm_agent
from replay import Replay, ReplayDivergenceError, aload_tree
from store import MemoryStore

LLM = stand_in_llm_agent.fork(model="m")


async def divergence_of(record: Any, replay: Any, agent: MiniAgent = LLM, **kwargs: Any) -> str:
    """The report of a call `replay` made that the recording of a call `record` does not have."""
    store = MemoryStore()
    async with MiniAgents(replay=Replay(store, agents="all")):
        await agent.inquire(record, **kwargs.get("recorded_kwargs", {})).aresolve_messages()
    with pytest.raises(ReplayDivergenceError) as raised:
        async with MiniAgents(replay=Replay(store, mode="none", agents="all")):
            await agent.inquire(replay, **kwargs.get("kwargs", {})).aresolve_messages()
    return str(raised.value)


async def test_a_change_late_in_a_long_prompt_is_shown_with_its_context() -> None:
    preamble = "You are a careful analyst. Summarize the quarterly report below for the board, in plain words: "
    report = await divergence_of(
        preamble + "revenue grew 5% and costs fell.", preamble + "revenue grew 7% and costs fell."
    )

    assert f"input message 0 differs at character {len(preamble) + 13}:" in report
    assert "now      …' in plain words: revenue grew 7% and costs fell.'" in report
    assert "recorded …' in plain words: revenue grew 5% and costs fell.'" in report


async def test_a_change_in_a_multi_line_text_is_shown_as_a_unified_diff() -> None:
    lines = [f"Step {number}: do thing number {number}." for number in range(1, 30)]
    changed = [*lines[:20], "Step 21: do something else entirely.", *lines[21:]]
    report = await divergence_of("\n".join(lines), "\n".join(changed))

    assert "input message 0 differs (unified diff, recorded → now):" in report
    assert "    -Step 21: do thing number 21." in report
    assert "    +Step 21: do something else entirely." in report
    assert "Step 5:" not in report  # only the lines around the change


async def test_a_message_whose_only_change_is_its_class_says_so() -> None:
    report = await divergence_of("hello", UserMessage("hello"))

    assert "input message 0: class now UserMessage, recorded Message" in report
    assert "input message 0: fields only now: role" in report


async def test_kwargs_given_and_missing_are_named() -> None:
    report = await divergence_of(
        "q", "q", recorded_kwargs={"temperature": 0.5, "top_p": 1}, kwargs={"temperature": 0.7, "seed": 3}
    )

    assert "kwarg temperature: now 0.7, recorded 0.5" in report
    assert "kwarg seed: given now (3), not recorded" in report
    assert "kwarg top_p: not given now, recorded 1" in report


@miniagent
async def summarize(ctx: InteractionContext, **kwargs: Any) -> None:
    ctx.reply(f"summary of {sorted(kwargs.items())}")


async def test_a_kwarg_named_like_a_field_of_the_call_node_is_kept_apart_and_compared() -> None:
    report = await divergence_of(
        "doc", "doc", agent=summarize.fork(messages="bound"), recorded_kwargs={"text": "A"}, kwargs={"text": "B"}
    )

    assert "kwarg text: now 'B', recorded 'A'" in report
    assert "only the occurrence" not in report


async def test_every_kwarg_is_recorded_whatever_its_name_and_the_tree_shows_it() -> None:
    store = MemoryStore()
    given = {"text": "T", "role": "critic", "class_": "C", "agent_alias": "other", "text_template": "{x}"}
    async with MiniAgents(store=store):
        replies = await summarize.fork(messages=("bound",)).inquire("doc", **given).aresolve_messages()
    assert str(replies[0]) == f"summary of {sorted({**given, 'messages': ('bound',)}.items())}"

    async with store:
        [run] = await store.alist_runs()
        tree = await aload_tree(store, run.run_id)
    [node] = tree.roots
    assert node.kwargs == {**given, "messages": ("bound",)}
    assert node.input_messages == (Message("doc"),)
    assert str(tree).startswith(
        "SUMMARIZE#1(agent_alias='other', class_='C', messages=('bound',), role='critic', text='T', "
        "text_template='{x}')"
    )


async def test_the_closest_recorded_calls_come_first() -> None:
    store = MemoryStore()
    async with MiniAgents(replay=Replay(store)):
        for question in ("Where is Paris?", "Where is Rome, the capital of Italy?", "What is the tallest mountain?"):
            await LLM.inquire(question).aresolve_messages()

    with pytest.raises(ReplayDivergenceError) as raised:
        async with MiniAgents(replay=Replay(store, mode="none")):
            await LLM.inquire("Where is Rome, the capital city of Italy?").aresolve_messages()

    report = str(raised.value)
    order = [report.index(text) for text in ("the capital of Italy", "'Where is Paris?'", "tallest mountain")]
    assert order == sorted(order)


async def test_a_changed_openai_prompt_is_reported_with_what_changed_and_sends_nothing(tmp_path: Any) -> None:
    import openai

    from miniagents.ext.llm.openai import openai_agent
    from miniagents.testing.fake_llm_server import FakeLLMServer, ScriptedReply
    from store import SQLiteStore

    async def ask(mode: str, prompt: str, base_url: str) -> None:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0) as client:
            llm = openai_agent.fork(model="gpt-test", async_client=client, temperature=0)
            async with MiniAgents(replay=Replay(SQLiteStore(tmp_path / "chat.db"), mode=mode)):
                await llm.inquire(prompt).aresolve_messages()

    preamble = "You are a travel agent. Plan a quiet weekend for two people who like walking, in "
    async with FakeLLMServer() as server:
        server.script(ScriptedReply(tokens=["Go", " to", " the", " coast."]))
        await ask("once", preamble + "Lisbon, in spring.", server.openai_base_url)

    with pytest.raises(ReplayDivergenceError) as raised:
        await ask("none", preamble + "Porto, in spring.", "http://127.0.0.1:9/v1")  # nothing listens there

    report = str(raised.value)
    assert raised.value.agent_alias == "OPENAI_AGENT"
    assert f"input message 0 differs at character {len(preamble)}:" in report
    assert "Porto, in spring." in report and "Lisbon, in spring." in report
