"""miniagents: LLM multi-agent systems with immutable, content-addressed messages and token streaming."""

__version__ = "0.1.0"

from miniagents.chat_history import ChatHistory, InMemoryChatHistory
from miniagents.errors import (
    AgentDefinitionError,
    EventSinkError,
    FrozenValueError,
    MiniAgentsError,
    UsageError,
)
from miniagents.events import CallInterceptor, Event, EventKind, EventSink, InterceptedCall, ListEventSink
from miniagents.messages import Message, MessagePromise, MessageSequencePromise
from miniagents.miniagent_typing import AgentFunction, MessageTokenStreamer, MessageType, PersistMessageEventHandler
from miniagents.miniagents import (
    AgentCall,
    AgentCallNode,
    AgentInteractionNode,
    AgentReplyNode,
    InteractionContext,
    MessageSequence,
    MiniAgent,
    MiniAgents,
    current_agent_call,
    miniagent,
)
from miniagents.promising.errors import (
    AppenderClosedError,
    AppenderNotOpenError,
    FunctionNotProvidedError,
    NoActiveContextError,
    PromisingError,
)
from miniagents.promising.ext.frozen import Frozen
from miniagents.promising.promising import Promise, PromisingContext, StreamAppender, StreamedPromise
from miniagents.promising.sentinels import AWAIT, CLEAR, DEFAULT, NO_VALUE, Sentinel
from miniagents.promising.sequence import FlatSequence
from miniagents.redaction import REDACTION
from miniagents.utils import Singleton, SingletonMeta, achain_loop, adialog_loop, join_messages, split_messages

__all__ = [
    "AWAIT",
    "CLEAR",
    "DEFAULT",
    "NO_VALUE",
    "REDACTION",
    "AgentCall",
    "AgentCallNode",
    "AgentDefinitionError",
    "AgentFunction",
    "AgentInteractionNode",
    "AgentReplyNode",
    "AppenderClosedError",
    "AppenderNotOpenError",
    "CallInterceptor",
    "ChatHistory",
    "Event",
    "EventKind",
    "EventSink",
    "EventSinkError",
    "FlatSequence",
    "Frozen",
    "FrozenValueError",
    "FunctionNotProvidedError",
    "InMemoryChatHistory",
    "InteractionContext",
    "InterceptedCall",
    "ListEventSink",
    "Message",
    "MessagePromise",
    "MessageSequence",
    "MessageSequencePromise",
    "MessageTokenStreamer",
    "MessageType",
    "MiniAgent",
    "MiniAgents",
    "MiniAgentsError",
    "NoActiveContextError",
    "PersistMessageEventHandler",
    "Promise",
    "PromisingContext",
    "PromisingError",
    "Sentinel",
    "Singleton",
    "SingletonMeta",
    "StreamAppender",
    "StreamedPromise",
    "UsageError",
    "__version__",
    "achain_loop",
    "adialog_loop",
    "current_agent_call",
    "join_messages",
    "miniagent",
    "split_messages",
]
