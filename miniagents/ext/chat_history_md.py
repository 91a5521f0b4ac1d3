"""`ChatHistoryMD`: a chat history kept in a markdown file, one top-level heading per message."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from miniagents.chat_history import ChatHistory
from miniagents.ext._optional import optional_dependency
from miniagents.ext.llm.llm_common import AssistantMessage, UserMessage
from miniagents.messages import Message
from miniagents.miniagents import InteractionContext

with optional_dependency("markdown_it", extra="markdown", needed_by=__name__):
    from markdown_it import MarkdownIt

ROLES = ("user", "assistant")
"""The roles whose headings start a message."""
HEADING_UNDERLINE = "=" * 40


class ChatHistoryMD(ChatHistory):
    """A chat history in a markdown file: messages are appended as they stream, and loaded back by heading.

    Each message is written as a setext heading with its role (and ` / model`, if the message has a model)
    followed by its text:

        user
        ========================================
        Hi! Can you help me?

        assistant / gpt-4o-mini
        ========================================
        Of course.

    Loading reads the file with a markdown parser. A message starts at every top-level h1 heading (setext
    `===` or ATX `# `) whose text is `user` or `assistant` (any case), optionally followed by ` / model` where the
    model has no spaces; it runs until the next such heading, with blank lines around it removed. So:

    - headings inside fenced code blocks, block quotes or lists, and h2+ headings, are text, not message starts;
    - a heading with another role (`# system`, `# notes`) does not start a message: it and its text stay in the
      message before it (and text before the first message is ignored);
    - a message with nothing under its heading loads as a message with empty text `""`;
    - a missing file loads as an empty history (and is created when the first message is logged);
    - a message that ends inside a fenced code block or an HTML block (an answer cut off by `max_tokens`, a broken
      stream) is logged with the line that closes it, so later headings stay headings.

    Sections load as `UserMessage` / `AssistantMessage` (with `model`, None when the heading has none).

    :param chat_md_file: the markdown file.
    :param default_role: the role written for a message that has no `role` field.
    """

    def __init__(self, chat_md_file: Union[str, Path], default_role: str = "assistant") -> None:
        self.chat_md_file = Path(chat_md_file)
        self.default_role = default_role

    async def _logging_agent(self, ctx: InteractionContext) -> None:
        with self.chat_md_file.open("a", buffering=1, encoding="utf-8") as chat_md_file:
            async for message_promise in ctx.messages:
                metadata = message_promise.preliminary_metadata
                role = getattr(metadata, "role", None) or self.default_role
                model = getattr(metadata, "model", None)
                chat_md_file.write(f"\n{role}{'' if model is None else f' / {model}'}\n{HEADING_UNDERLINE}\n")
                written: list[str] = []
                try:
                    async for token in message_promise:
                        chat_md_file.write(token)
                        written.append(token)
                finally:
                    # a broken stream, or an answer cut off inside a code block, still leaves the file ready for
                    # the next message: what the text left open is closed, or the next headings would be its text
                    closing = closing_markup("".join(written))
                    chat_md_file.write("\n" if closing is None else f"\n{closing}\n")

    async def aload_chat_history(self) -> tuple[Message, ...]:
        try:
            content = self.chat_md_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ()
        return parse_chat_markdown(content)


_markdown_parser: Optional[MarkdownIt] = None


def parse_chat_markdown(content: str) -> tuple[Message, ...]:
    """The messages of a chat history in markdown (see `ChatHistoryMD` for the format)."""
    lines = content.split("\n")
    tokens = _parser().parse(content)

    sections: list[tuple[str, Optional[str], int, int]] = []  # role, model, first line, end line
    for index, token in enumerate(tokens):
        if token.type != "heading_open" or token.tag != "h1" or token.level != 0 or token.map is None:
            continue
        role_and_model = _role_and_model(tokens[index + 1].content)
        if role_and_model is None:
            continue
        if sections:
            role, model, start, _ = sections[-1]
            sections[-1] = (role, model, start, token.map[0])
        sections.append((*role_and_model, token.map[1], len(lines)))

    messages: list[Message] = []
    for role, model, start, end in sections:
        text = _strip_blank_lines(lines[start:end])
        if role == "user":
            messages.append(UserMessage(text=text) if model is None else UserMessage(text=text, model=model))
        else:
            messages.append(AssistantMessage(text=text, model=model))
    return tuple(messages)


_CLOSERS = ("-->", "?>", "]]>", ">", "</pre>", "</script>", "</style>", "</textarea>")
"""What ends the markdown blocks that only end at a marker: HTML comments, processing instructions, CDATA,
declarations, and `pre` / `script` / `style` / `textarea` HTML blocks."""


def closing_markup(text: str) -> Optional[str]:
    """What to write after `text` so that a message heading after it is a heading again (None if it already is):
    the closing fence of a fenced code block it leaves open, or what ends an HTML block it leaves open."""
    if _heading_follows(text):
        return None
    tokens = _parser().parse(text)
    candidates = [tokens[-1].markup] if tokens and tokens[-1].type == "fence" and tokens[-1].markup else []
    for closing in [*candidates, *_CLOSERS]:
        if _heading_follows(f"{text}\n{closing}"):
            return closing
    return None


def _heading_follows(text: str) -> bool:
    probe = f"{text}\n\nuser\n{HEADING_UNDERLINE}\n"
    tokens = _parser().parse(probe)
    return any(
        token.type == "heading_open"
        and token.level == 0
        and token.map is not None
        and token.map[0] == probe.count("\n") - 2
        for token in tokens
    )


def _parser() -> MarkdownIt:
    global _markdown_parser
    if _markdown_parser is None:
        _markdown_parser = MarkdownIt("commonmark")
    return _markdown_parser


def _role_and_model(heading: str) -> Optional[tuple[str, Optional[str]]]:
    """`(role, model)` if the heading text starts a message, else None."""
    role, slash, model = heading.partition("/")
    role = role.strip().lower()
    if role not in ROLES:
        return None
    if not slash:
        return role, None
    model = model.strip()
    if not model or any(character.isspace() for character in model):
        return None  # `user / some words` is a heading that happens to start with a role, not a role heading
    return role, model


def _strip_blank_lines(lines: list[str]) -> str:
    """The lines joined, without the blank lines at the start and the end (other whitespace is kept)."""
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return "\n".join(lines[start:end])
