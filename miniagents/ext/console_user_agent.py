"""`console_user_agent`: the person at the console, as an agent (prints what it gets, reads what they type)."""

from __future__ import annotations

import os
import sys
import weakref
from collections.abc import Callable
from typing import Optional

from miniagents.chat_history import ChatHistory, InMemoryChatHistory
from miniagents.ext._optional import optional_dependency
from miniagents.ext.llm.llm_common import UserMessage
from miniagents.messages import MessagePromise
from miniagents.miniagents import InteractionContext, miniagent

with optional_dependency("prompt_toolkit", extra="console", needed_by=__name__):
    from prompt_toolkit import HTML, PromptSession
    from prompt_toolkit.application.current import AppSession, get_app_session
    from prompt_toolkit.document import Document
    from prompt_toolkit.formatted_text import StyleAndTextTuples
    from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
    from prompt_toolkit.keys import Keys
    from prompt_toolkit.lexers import Lexer
    from prompt_toolkit.styles import Style

GLOBAL_CHAT_HISTORY = InMemoryChatHistory()
"""Where `console_user_agent` logs the conversation when it is given no `chat_history`."""

_AGENT_STYLE = "\033[92;1m"
_RESET_STYLE = "\033[0m"
_PROMPT_STYLE = Style.from_dict({"user_utterance": "fg:ansibrightyellow bold"})


@miniagent(
    description="The user at the console: shows the messages it receives and replies with what the user types.",
    talks_to_outside_world=True,
)
async def console_user_agent(
    ctx: InteractionContext,
    chat_history: Optional[ChatHistory] = None,
    prompt_session: Optional[PromptSession[str]] = None,
    prompt: str = "USER: ",
) -> None:
    """Print the incoming messages token by token, read the user's answer, and reply with the whole chat history.

    Incoming messages are logged to `chat_history` and printed as they stream, each after the alias of the agent
    that wrote it (or its role). Then the user types an answer: Enter sends it, Ctrl+Space starts a new line;
    Ctrl+D on an empty input (or the end of piped input) raises `EOFError` in the reply stream, which ends a dialog
    loop, and Ctrl+C raises `KeyboardInterrupt`, which stops the program. The answer is logged as a `UserMessage`,
    and the agent replies with the chat history as loaded back from `chat_history` (so an LLM agent that gets the
    reply sees the whole conversation).

    :param chat_history: where the conversation is logged and loaded from (default: `GLOBAL_CHAT_HISTORY`).
    :param prompt_session: the `prompt_toolkit.PromptSession` to read with (bind it with `fork()`); by default
        one is created on first use, per prompt_toolkit app session.
    :param prompt: the prompt shown before the user's input.
    """
    if chat_history is None:
        chat_history = GLOBAL_CHAT_HISTORY
    if prompt_session is None:
        prompt_session = default_prompt_session()

    # print the messages as the logging agent passes them on: once they are all printed, they are all logged too
    colored = sys.stdout.isatty() and not os.environ.get("NO_COLOR")  # as no-color.org asks
    async for message_promise in chat_history.logging_agent.inquire(ctx.messages):
        await _aprint_message(message_promise, colored)

    user_input = await prompt_session.prompt_async(
        HTML("<user_utterance>{}</user_utterance>").format(prompt),
        multiline=True,
        key_bindings=_KEY_BINDINGS,
        lexer=_UserUtteranceLexer(),
        style=_PROMPT_STYLE,
    )
    # awaiting the logging agent's replies means the user's message is logged before the history is read back
    await chat_history.logging_agent.inquire(UserMessage(text=user_input))
    ctx.reply(await chat_history.aload_chat_history())


async def _aprint_message(message_promise: MessagePromise, colored: bool) -> None:
    metadata = message_promise.preliminary_metadata
    label = getattr(metadata, "agent_alias", None) or str(getattr(metadata, "role", None) or "").upper()
    start, end = (_AGENT_STYLE, _RESET_STYLE) if colored else ("", "")
    print(f"\n{start}{label}: {end}" if label else "\n", end="", flush=True)
    async for token in message_promise:
        print(f"{start}{token}{end}", end="", flush=True)
    print("\n", flush=True)  # a blank line after each message


_prompt_sessions: weakref.WeakKeyDictionary[AppSession, PromptSession[str]] = weakref.WeakKeyDictionary()


def default_prompt_session() -> PromptSession[str]:
    """The prompt session `console_user_agent` uses by default: created on first use, one per app session (so
    its input history lasts as long as the console, and `create_app_session()` in tests gets its own)."""
    app_session = get_app_session()
    session = _prompt_sessions.get(app_session)
    if session is None:
        session = PromptSession()
        _prompt_sessions[app_session] = session
    return session


def _key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add(Keys.Enter)
    def _submit(event: KeyPressEvent) -> None:
        event.current_buffer.validate_and_handle()

    @bindings.add(Keys.ControlSpace)
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return bindings


_KEY_BINDINGS = _key_bindings()


class _UserUtteranceLexer(Lexer):
    """Paints everything the user types in the `user_utterance` style."""

    def lex_document(self, document: Document) -> Callable[[int], StyleAndTextTuples]:
        lines = document.lines

        def line_fragments(line_number: int) -> StyleAndTextTuples:
            return [("class:user_utterance", lines[line_number])] if line_number < len(lines) else []

        return line_fragments
