"""The error tree of the whole project, rooted in `MiniAgentsError`.

```
MiniAgentsError
├── PromisingError                      miniagents.promising.errors
│   ├── FunctionNotProvidedError
│   ├── AppenderNotOpenError
│   ├── AppenderClosedError
│   └── NoActiveContextError            (also a RuntimeError)
├── FrozenValueError                    a value without one canonical JSON form (also a TypeError)
├── AgentDefinitionError                a misused @miniagent or MiniAgent (also a TypeError)
├── UsageError                          a utility called with arguments that cannot work (also a ValueError)
├── EventSinkError                      an event sink failed; raised when the MiniAgents context exits
├── EventDataError                      event data that is not its kind's payload (also a ValueError)
├── StoreError                          store.errors
└── ReplayError                         replay.errors
```
"""


class MiniAgentsError(Exception):
    """Base class of every error raised by miniagents, store and replay."""


class FrozenValueError(MiniAgentsError, TypeError):
    """A value that cannot live in a `Frozen` (no single canonical JSON form)."""


class AgentDefinitionError(MiniAgentsError, TypeError):
    """An agent was defined or called in a way that cannot work."""


class UsageError(MiniAgentsError, ValueError):
    """A utility was called with arguments that cannot work."""


class EventSinkError(MiniAgentsError):
    """An event sink (a store) failed while a `MiniAgents` context was recording into it."""


class EventDataError(MiniAgentsError, ValueError):
    """An event's data does not have the shape of its kind's payload (see `miniagents.events`)."""
