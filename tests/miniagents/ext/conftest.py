"""Fixtures of the extension tests: a fake LLM server and real SDK clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import openai
import pytest

from miniagents.testing.fake_llm_server import FakeLLMServer

OPENAI_TEST_KEY = "sk-test-openai"
ANTHROPIC_TEST_KEY = "test-anthropic"


@pytest.fixture
async def server() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer() as fake_server:
        yield fake_server


@pytest.fixture
async def openai_client(server: FakeLLMServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=server.openai_base_url, api_key=OPENAI_TEST_KEY, max_retries=0) as client:
        yield client


@pytest.fixture
async def anthropic_client(server: FakeLLMServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=server.anthropic_base_url, api_key=ANTHROPIC_TEST_KEY, max_retries=0
    ) as client:
        yield client
