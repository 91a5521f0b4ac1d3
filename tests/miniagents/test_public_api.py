"""The public API: what `from miniagents import ...` offers, and the seed's module paths."""

import importlib

import miniagents

EXPECTED_ALL = {
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
}

SEED_NAMES = {
    "miniagents.miniagents": [
        "MiniAgents",
        "miniagent",
        "MiniAgent",
        "InteractionContext",
        "AgentCall",
        "AgentCallNode",
        "AgentReplyNode",
        "AgentInteractionNode",
        "MessageSequence",
    ],
    "miniagents.messages": ["Message", "MessagePromise", "MessageSequencePromise"],
    "miniagents.miniagent_typing": ["AgentFunction", "MessageTokenStreamer", "MessageType", "SingleMessageType"],
    "miniagents.promising.promising": ["PromisingContext", "Promise", "StreamedPromise", "StreamAppender"],
    "miniagents.promising.sequence": ["FlatSequence"],
    "miniagents.promising.sentinels": ["Sentinel", "NO_VALUE", "DEFAULT", "FAILED", "END_OF_QUEUE", "AWAIT", "CLEAR"],
    "miniagents.promising.errors": [
        "PromisingError",
        "FunctionNotProvidedError",
        "AppenderNotOpenError",
        "AppenderClosedError",
    ],
    "miniagents.promising.promise_typing": [
        "PromiseResolver",
        "PromiseStreamer",
        "PromiseResolvedEventHandler",
        "SequenceFlattener",
    ],
    "miniagents.promising.ext.frozen": ["Frozen", "FrozenType"],
    "miniagents.utils": [
        "adialog_loop",
        "achain_loop",
        "join_messages",
        "split_messages",
        "Singleton",
        "SingletonMeta",
        "ModelSingleton",
        "ModelSingletonMeta",
    ],
    "miniagents.chat_history": ["ChatHistory", "InMemoryChatHistory"],
}


def test_all_is_pinned() -> None:
    assert set(miniagents.__all__) == EXPECTED_ALL


def test_everything_in_all_exists() -> None:
    for name in miniagents.__all__:
        assert hasattr(miniagents, name), name


def test_seed_module_paths_keep_working() -> None:
    for module_name, names in SEED_NAMES.items():
        module = importlib.import_module(module_name)
        for name in names:
            assert hasattr(module, name), f"{module_name}.{name}"


def test_every_error_is_rooted_in_miniagents_error() -> None:
    errors = [getattr(miniagents, name) for name in miniagents.__all__ if name.endswith("Error")]
    assert errors
    for error in errors:
        assert issubclass(error, miniagents.MiniAgentsError), error
