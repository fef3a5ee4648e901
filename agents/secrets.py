"""Which environment variables are secrets, the environment an agent's commands get, and the
redaction of secret values from what the board stores.

Knows no Django: callers pass what they know (the run's model key variable, the board's own
secret values from settings).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping
from urllib.parse import unquote, urlsplit

# A name looks secret when one of its parts (split at anything but letters and digits) ends in
# one of these words, plural or not, case-insensitive: OPENAI_API_KEY, GITHUB_TOKEN, PGPASSWORD,
# aws_secret_access_key, GOOGLE_APPLICATION_CREDENTIALS. KEYBOARD_LAYOUT does not.
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
_SECRET_NAME = re.compile(r"(?:^|[^A-Z0-9])[A-Z0-9]*(?:" + "|".join(SECRET_WORDS) + r")S?(?=$|[^A-Z0-9])", re.I)
# The board's own settings: the Django key, where its database and broker are, and BOARD_*.
BOARD_ONLY_NAMES = ("DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL")
BOARD_ONLY_PREFIXES = ("DJANGO_", "BOARD_")
# These would point git commands in the worktree at some other repository.
GIT_REDIRECT_NAMES = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY")
# Values shorter than this are not redacted: "true" or "1" in a log is not a leak worth mangling
# every line that happens to contain it.
MIN_SECRET_CHARS = 8


@functools.lru_cache(maxsize=4096)  # asked for every variable at every stored event
def looks_secret(name: str) -> bool:
    """Whether the environment variable ``name`` looks like it holds a secret (see SECRET_WORDS)."""
    return bool(_SECRET_NAME.search(name))


def command_environment(
    own_key_env: str | None = None,
    extra: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of every command an agent runs: command agents, the built-in agent's
    run_command, a project's setup command and its check command. The one rule:

    - ``base`` (default ``os.environ``), without
    - the board's own settings: DJANGO_SECRET_KEY, DATABASE_URL, REDIS_URL, every ``DJANGO_*``
      and every ``BOARD_*`` variable;
    - every variable whose name looks secret (:func:`looks_secret`: a name part ending in KEY,
      TOKEN, SECRET, PASSWORD, PASSWD or CREDENTIAL, plural or not, case-insensitive), except
      ``own_key_env``, the variable holding the run's own model key (its card's, project's or
      agent's ``api_key_env``; None for the built-in agent's commands, which never need it: the
      board calls the model itself);
    - GIT_DIR, GIT_WORK_TREE, GIT_INDEX_FILE and GIT_OBJECT_DIRECTORY, which would point git in
      the worktree at another repository;
    - then ``extra`` on top (the card's variables, the run's mark, the board's git identity),
      which the caller chose and which is kept as given.

    Returns a new dict of str to str.
    """
    source = os.environ if base is None else base
    env = {}
    for name, value in source.items():
        upper = name.upper()
        if name == own_key_env:
            env[name] = value
        elif upper in BOARD_ONLY_NAMES or upper.startswith(BOARD_ONLY_PREFIXES) or upper in GIT_REDIRECT_NAMES:
            continue
        elif looks_secret(name):
            continue
        else:
            env[name] = value
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    return env


@functools.lru_cache(maxsize=64)
def url_password(url: str) -> str:
    """The password in a URL such as ``postgres://board:pw@host/db`` or ``redis://:pw@host:6379/0``
    (percent-decoded); "" when it has none or does not parse."""
    try:
        return unquote(urlsplit(url).password or "")
    except ValueError:
        return ""


class Redactor:
    """Replaces secret values in text by ``[redacted: NAME]``.

    Built from ``{value: name}``; values shorter than MIN_SECRET_CHARS are ignored, longer ones
    win where one contains another. One compiled regex, so a call costs one scan of the text
    (a text without any secret is returned as it is).
    """

    def __init__(self, secrets: Mapping[str, str]):
        self.names = {value: name for value, name in secrets.items() if len(value) >= MIN_SECRET_CHARS}
        values = sorted(self.names, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, values))) if values else None

    def __bool__(self) -> bool:
        return self.pattern is not None

    def text(self, text: str) -> str:
        """``text`` with every secret value replaced by ``[redacted: NAME]``."""
        if self.pattern is None or not text:
            return text
        return self.pattern.sub(lambda m: f"[redacted: {self.names[m.group(0)]}]", text)

    def data(self, data):
        """A copy of JSON-shaped ``data`` (dicts, lists, strings, numbers) with every string
        redacted as :meth:`text` does; ``data`` itself when there is nothing to redact."""
        if self.pattern is None:
            return data
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, dict):
            return {k: self.data(v) for k, v in data.items()}
        if isinstance(data, list):
            return [self.data(v) for v in data]
        return data


def secret_values(
    environ: Mapping[str, str],
    own_key_env: str | None = None,
    board_secrets: Iterable[tuple[str, str]] = (),
) -> dict[str, str]:
    """``{value: name}`` of what must never be stored: the values of ``environ``'s variables
    that look secret, of ``own_key_env``, the passwords in its DATABASE_URL and REDIS_URL, and
    ``board_secrets`` (pairs of name and value, such as the settings' SECRET_KEY)."""
    found: dict[str, str] = {}
    for name, value in board_secrets:
        if value:
            found.setdefault(value, name)
    if own_key_env and environ.get(own_key_env):
        found.setdefault(environ[own_key_env], own_key_env)
    for name in ("DATABASE_URL", "REDIS_URL"):
        password = url_password(environ.get(name, ""))
        if password:
            found.setdefault(password, f"{name} password")
    for name, value in environ.items():
        if value and looks_secret(name):
            found.setdefault(value, name)
    return found


@functools.lru_cache(maxsize=64)
def _cached_redactor(environ: frozenset, own_key_env: str | None, board_secrets: tuple) -> Redactor:
    return Redactor(secret_values(os.environ, own_key_env, board_secrets))


def redactor(own_key_env: str | None = None, board_secrets: Iterable[tuple[str, str]] = ()) -> Redactor:
    """The :class:`Redactor` for the current environment, the run's model key variable
    ``own_key_env`` and ``board_secrets`` (see :func:`secret_values`). Built and compiled once
    per process for each distinct environment: asking again costs a look at the environment's
    raw entries (some microseconds), since every stored event of a run asks."""
    # os.environ keeps its entries as bytes in _data; a set of those is a cheap exact key.
    raw = getattr(os.environ, "_data", None)
    key = frozenset(raw.items()) if isinstance(raw, dict) else frozenset(os.environ.items())
    return _cached_redactor(key, own_key_env, tuple(board_secrets))
