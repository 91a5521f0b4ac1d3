"""LLM and console agents talk to the outside world, forks keep the mark, and an interceptor answers them."""

from typing import Any, Optional

import openai

from miniagents import InteractionContext, MiniAgent, MiniAgents, miniagent
from miniagents.events import InterceptedCall
from miniagents.ext.console_user_agent import console_user_agent
from miniagents.ext.llm.anthropic import anthropic_agent
from miniagents.ext.llm.openai import OpenAIMessage, openai_agent
from miniagents.miniagent_typing import MessageType
from miniagents.testing.fake_llm_server import FakeLLMServer


def test_agents_and_their_forks_talk_to_the_outside_world() -> None:
    for agent in (openai_agent, anthropic_agent, console_user_agent):
        assert agent.talks_to_outside_world is True
        fork = agent.fork(alias="VARIANT", model="some-model")
        assert (fork.alias, fork.talks_to_outside_world) == ("VARIANT", True)
        assert fork.fork(temperature=0).talks_to_outside_world is True

    @miniagent
    async def local_agent(ctx: InteractionContext) -> None:
        ctx.reply("local")

    assert local_agent.talks_to_outside_world is False


class AnswerOutsideWorldAgents:
    """A minimal call interceptor: answers every outside-world agent with a canned message, like a replay."""

    def __init__(self) -> None:
        self.calls: list[InterceptedCall] = []

    async def astart(self, mini_agents: MiniAgents) -> None:
        pass

    def intercepts(self, agent: MiniAgent) -> bool:
        return agent.talks_to_outside_world

    async def aanswer(self, call: InterceptedCall) -> Optional[MessageType]:
        self.calls.append(call)
        return OpenAIMessage(text="recorded answer", model=call.call_node.model, agent_alias=call.agent.alias)

    async def afinish(self, mini_agents: MiniAgents, error: Optional[BaseException]) -> None:
        pass


async def test_an_interceptor_answers_the_llm_agent_instead_of_the_api(
    server: FakeLLMServer, openai_client: openai.AsyncOpenAI
) -> None:
    interceptor = AnswerOutsideWorldAgents()
    gpt = openai_agent.fork(alias="GPT", model="gpt-test", async_client=openai_client)

    @miniagent
    async def orchestrator(ctx: InteractionContext) -> None:
        ctx.reply(gpt.inquire(ctx.messages, temperature=0.0))

    async with MiniAgents(replay=interceptor):
        [answer] = await orchestrator.inquire("What is up?").aresolve_messages()

    assert answer == OpenAIMessage(text="recorded answer", model="gpt-test", agent_alias="GPT")
    assert server.requests == []
    [call] = interceptor.calls  # the orchestrator ran live: only the LLM agent was offered to the interceptor
    node: Any = call.call_node
    assert (node.agent_alias, node.model, node.temperature, node.async_client) == (
        "GPT",
        "gpt-test",
        0.0,
        "<AsyncOpenAI>",
    )
    assert [message.text for message in node.messages] == ["What is up?"]
