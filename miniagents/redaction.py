"""Secrets kept out of everything that is hashed, recorded or stored: `SecretRedaction` and its instance `REDACTION`.

Three rules, applied before anything is hashed (message fields, agent kwargs) and again to what is stored beside
the objects (run metadata, event data, error texts):

- **By name.** Values under a name that looks like a secret's become the marker. Names are compared after
  splitting camelCase, kebab-case and snake_case into words (`openaiApiKey`, `x-api-key`, `DB_PASSWORD`,
  `clientSecret`, `accessToken`, `bearer`, `auth` are secret); look-alikes are not (`max_tokens`, `prompt_tokens`,
  `tokenizer`, `author`, `authority`, `keyword`, `monkey`, `passage`). In lists, the item after a secret-named
  command-line flag (`["--api-key", "sk-..."]`) and the second item of a secret-named pair
  (`("Authorization", "Bearer ...")`) are values under that name too.
- **By value.** Every value seen under a secret name, the values of secret-named environment variables present
  when a run starts (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, ...) and the values registered with
  `REDACTION.register_values()` are replaced by the marker wherever they appear later, inside any text (values
  shorter than `MIN_VALUE_LENGTH` characters are not tracked: they would mask ordinary words).
- **By shape.** Well-known credential shapes are masked in any text: `Bearer <token>`, `sk-...`/`sk-ant-...` API
  keys, the password in `scheme://user:password@host`. In error texts and metadata, `name: value` / `name=value`
  pairs with a secret name are masked too.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Optional

MIN_VALUE_LENGTH = 8
_MAX_VALUES = 10_000

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")

_BEARER = re.compile(r"\b(Bearer)(\s+)[A-Za-z0-9._~+/=-]{16,}", re.IGNORECASE)
_API_KEY_SHAPE = re.compile(r"\bsk-[A-Za-z0-9_-]{16,}")
_URL_PASSWORD = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)([^@\s/]+)(@)")
_NAMED_VALUE = re.compile(r"""([A-Za-z_][\w.-]*)(['"]?\s*[:=]\s*)('[^']*'|"[^"]*"|[^\s,;'"}\])]+)""")
_FLAG_VALUE = re.compile(r"""(?<!\S)(--?[A-Za-z][\w-]*)(=|\s+)('[^']*'|"[^"]*"|[^\s'"]+)""")
_FLAG = re.compile(r"^--?([A-Za-z][\w-]*)$")
_NAME_HINTS = ("key", "token", "secret", "pass", "pwd", "auth", "cookie", "bearer", "credential")
"""Words one of which every secret name holds (lower-case): a text without any needs no look at its pairs."""


def name_words(name: str) -> tuple[str, ...]:
    """The lower-case words of a name written in camelCase, kebab-case, snake_case or SCREAMING_CASE."""
    return tuple(word for word in _SEPARATORS.split(_CAMEL_BOUNDARY.sub("_", name).lower()) if word)


class SecretRedaction:
    """Which names and values are secrets, and what replaces them (see the module).

    A name is secret when its words, joined by `_`, equal one of `names` or end with `_<name>`
    (`api_key`, `openai_api_key`, `x_api_key`, `db_password`, `client_secret` are secret), or when its last word
    is `key` after the name of an API provider (`openaiKey`, `anthropic-key`).
    """

    DEFAULT_NAMES: ClassVar[frozenset[str]] = frozenset(
        {
            "api_key",
            "apikey",
            "token",
            "secret",
            "secret_key",
            "password",
            "passwd",
            "pwd",
            "passphrase",
            "authorization",
            "auth",
            "bearer",
            "credential",
            "credentials",
            "private_key",
            "access_key",
            "session_key",
            "signing_key",
            "encryption_key",
            "cookie",
            "cookies",
        }
    )
    KEY_OWNERS: ClassVar[frozenset[str]] = frozenset(
        {
            "openai",
            "anthropic",
            "azure",
            "aws",
            "gcp",
            "google",
            "gemini",
            "mistral",
            "cohere",
            "groq",
            "together",
            "fireworks",
            "deepseek",
            "xai",
            "perplexity",
            "huggingface",
            "hf",
            "replicate",
            "github",
            "gitlab",
            "stripe",
            "slack",
            "twilio",
            "sendgrid",
            "license",
            "master",
            "service",
            "client",
        }
    )
    """Words that, before a last word `key`, make a name secret (`openaiKey`; `sort_key`, `hash_key` are not)."""

    def __init__(self) -> None:
        self.marker = "[REDACTED]"
        self._names: frozenset[str] = self.DEFAULT_NAMES
        self._verdicts: dict[str, bool] = {}
        self._values: dict[str, None] = {}  # insertion-ordered set
        self._lookup: tuple[tuple[str, ...], Optional[re.Pattern[str]]] = ((), None)
        """The values and one pattern of them all, replaced together (never changed in place): what the scans
        read, on any thread (a store's writer thread redacts too) while another registers values."""
        self._lock = threading.Lock()
        """Held to change the values (from any thread)."""
        self._listeners: list[Callable[[], None]] = []

    @property
    def names(self) -> frozenset[str]:
        """The secret names in force (snake_case; see the class)."""
        return self._names

    @property
    def values(self) -> tuple[str, ...]:
        """The secret values replaced wherever they appear."""
        return self._lookup[0]

    def configure(
        self,
        names: Optional[Iterable[str]] = None,
        marker: Optional[str] = None,
        values: Optional[Iterable[str]] = None,
    ) -> None:
        """Replace the secret names, the marker and/or the secret values (process-wide)."""
        if names is not None:
            self._names = frozenset("_".join(name_words(name)) for name in names)
        if marker is not None:
            self.marker = marker
        if values is not None:
            with self._lock:  # the new values are published at once: a scan never sees none in between
                self._values = {}
                self._publish(_trackable(values))
        self._verdicts = {}
        for listener in self._listeners:
            listener()

    def on_configure(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever `configure()` changes the rules (caches of verdicts forget them)."""
        self._listeners.append(listener)

    def is_secret(self, name: str) -> bool:
        """Whether values under this name are redacted."""
        verdict = self._verdicts.get(name)
        if verdict is None:
            words = name_words(name)
            snake = "_".join(words)
            verdict = bool(words) and (
                snake in self._names
                or any(snake.endswith("_" + secret) for secret in self._names)
                or (len(words) >= 2 and words[-1] == "key" and words[-2] in self.KEY_OWNERS)
            )
            if len(self._verdicts) < _MAX_VALUES:
                self._verdicts[name] = verdict
        return verdict

    def register_values(self, *values: Any) -> None:
        """Treat these values as secrets: replaced by the marker wherever they appear (strings of at least
        `MIN_VALUE_LENGTH` characters; others are ignored)."""
        new = [value for value in _trackable(values) if value not in self._values]
        if new:
            with self._lock:
                self._publish(new)

    def _publish(self, new: list[str]) -> None:
        """Add values (holding `_lock`) and publish the lookup of them all in one assignment."""
        for value in new:
            if value in self._values:
                continue
            if len(self._values) >= _MAX_VALUES:
                self._values.pop(next(iter(self._values)))
            self._values[value] = None
        longest_first = sorted(self._values, key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(value) for value in longest_first)) if longest_first else None
        self._lookup = (tuple(self._values), pattern)

    def register_environment(self, environ: Optional[Mapping[str, str]] = None) -> None:
        """Register the values of the secret-named environment variables (`OPENAI_API_KEY`, ...)."""
        environ = os.environ if environ is None else environ
        self.register_values(*(value for name, value in environ.items() if self.is_secret(name)))

    def might_hold_secrets(self, text: str) -> bool:
        """Whether `text` (JSON, a repr, any text) could hold a secret by name, value or shape: a cheap scan that
        decides whether the exact, slower walk is needed."""
        lowered = text.lower()
        return (
            any(word in lowered for word in _NAME_HINTS)
            or "sk-" in text
            or "://" in text
            or any(value in text for value in self._lookup[0])
        )

    def redact_text(self, text: str) -> str:
        """`text` with secret values and credential shapes (see the module) replaced by the marker.

        On the path of every message built, so the look is cheap: one-character scans (memchr) before substring
        searches, and one search per registered value."""
        values, pattern = self._lookup
        if pattern is not None:
            for value in values:  # (a loop rather than `any()` of a generator: no generator per message)
                if value in text:
                    text = pattern.sub(self.marker, text)
                    break
        if "-" in text and "sk-" in text:
            text = _API_KEY_SHAPE.sub(self.marker, text)
        if "@" in text and "://" in text:
            text = _URL_PASSWORD.sub(rf"\g<1>{self.marker}\g<3>", text)
        if "earer" in text:  # Bearer, bearer
            text = _BEARER.sub(rf"\g<1>\g<2>{self.marker}", text)
        return text

    def redact_description(self, text: str) -> str:
        """`redact_text`, and the values of `name: value` / `name=value` pairs with a secret name masked: for
        error texts and metadata, where such pairs come from reprs, JSON and command lines."""
        text = self.redact_text(text)
        lowered = text.lower()
        if any(word in lowered for word in _NAME_HINTS):
            text = _FLAG_VALUE.sub(self._redacted_pair, text)
            text = _NAMED_VALUE.sub(self._redacted_pair, text)
        return text

    def _redacted_pair(self, match: re.Match[str]) -> str:
        name, separator, value = match.groups()
        bare = value.strip("'\"")
        if not self.is_secret(name.lstrip("-")) or bare in ("None", "null") or self.marker.startswith(bare):
            return match.group(0)  # nothing, or masked already
        if value.lower() == "bearer":  # `Authorization: Bearer <token>`: the token is masked by its shape
            return match.group(0)
        quote = value[0] if value[0] in "'\"" else ""
        return f"{name}{separator}{quote}{self.marker}{quote}"

    def redact(self, value: Any, name: Optional[str] = None) -> Any:
        """Plain data (dicts, lists, tuples, strings, numbers) with every rule applied: values under secret names
        (keys, flags, pairs) become the marker, texts are redacted (`redact_description`)."""
        if name is not None and value is not None and self.is_secret(name):
            self.register_values(value)
            return self.marker
        if isinstance(value, str):
            return self.redact_description(value)
        if isinstance(value, Mapping):
            return {key: self.redact(item, key if isinstance(key, str) else None) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            items = self.redact_sequence(value)
            return items if isinstance(value, list) else tuple(items)
        return value

    def mask_secret_items(self, items: Sequence[Any]) -> Sequence[Any]:
        """`items` with the second item of a secret-named pair and the item after a secret-named flag replaced by
        the marker (their values registered); the same object when there is none."""
        if len(items) == 2 and type(items[0]) is str and items[1] is not None and self.is_secret(items[0]):
            self.register_values(items[1])
            return (items[0], self.marker)
        masked: Optional[list[Any]] = None
        for index in range(len(items) - 1):
            item = items[index]
            if type(item) is str and item.startswith("-") and type(items[index + 1]) is str:
                flag = _FLAG.match(item)
                if flag is not None and self.is_secret(flag.group(1)):
                    masked = list(items) if masked is None else masked
                    self.register_values(items[index + 1])
                    masked[index + 1] = self.marker
        return items if masked is None else masked

    def redact_sequence(self, items: Iterable[Any]) -> list[Any]:
        """The items of a list redacted one by one, after `mask_secret_items`."""
        return [self.redact(item) for item in self.mask_secret_items(list(items))]


def _trackable(values: Iterable[Any]) -> list[str]:
    """The values that are tracked as secrets: strings of at least `MIN_VALUE_LENGTH` characters."""
    return [value for value in values if isinstance(value, str) and len(value.strip()) >= MIN_VALUE_LENGTH]


REDACTION = SecretRedaction()
