"""The one settings module. Every value is read from the environment with a safe default for the
embedded mode (SQLite, django-q2's ORM broker, in-memory channel layer: no Redis, no PostgreSQL).

Every variable is listed in README.md under "Configuration"; keep the two in step.
"""

import os
import secrets
import socket
from pathlib import Path

import environ

# litellm fetches a price list from the internet at import unless told not to; the board must not
# reach anything but the model endpoint the user configured.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DATA_DIR = Path(env.str("BOARD_DATA_DIR", default=str(BASE_DIR / ".data"))).expanduser().resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)
WORKTREES_DIR = DATA_DIR / "worktrees"
RUNS_DIR = DATA_DIR / "runs"


def _secret_key() -> str:
    """The key from DJANGO_SECRET_KEY, else one made once and kept in the data folder, so sessions
    survive restarts without a key ever being committed."""
    if env.str("DJANGO_SECRET_KEY", default=""):
        return env.str("DJANGO_SECRET_KEY")
    key_file = DATA_DIR / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
# Behind a proxy that terminates TLS (nginx, docs/team-server.md): trust its X-Forwarded-Proto, so
# that Django knows a request came over https. Off by default: without such a proxy, any client
# could send the header.
BOARD_BEHIND_PROXY = env.bool("BOARD_BEHIND_PROXY", default=False)
if BOARD_BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_htmx",
    "template_partials",
    "django_q",
    "board",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "board.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "board.access.role_context",
            ],
            "builtins": ["template_partials.templatetags.partials"],
        },
    },
]

# SQLite is the embedded default. WAL lets the web process read while workers write; IMMEDIATE
# transactions plus a busy timeout make concurrent writers queue instead of failing with
# "database is locked" (Django 5.1+ "transaction_mode"/"init_command" options).
SQLITE_PATH = Path(env.str("BOARD_DB_PATH", default=str(DATA_DIR / "board.sqlite3")))
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": SQLITE_PATH,
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
        # A file, not :memory:, so that tests can share the database with worker and
        # relay processes the way the board does.
        "TEST": {"NAME": str(DATA_DIR / "test.sqlite3")},
    }
}
# Team-server mode: DATABASE_URL (such as postgres://board@127.0.0.1:5432/board) replaces SQLite
# with PostgreSQL (psycopg 3), which several worker processes and hosts can share.
DATABASE_URL = env.str("DATABASE_URL", default="")
if DATABASE_URL:
    DATABASES = {"default": env.db_url_config(DATABASE_URL)}
    # Connections are reused by the long-lived workers and the web process, and checked first,
    # since PostgreSQL may have been restarted under them.
    DATABASES["default"].setdefault("CONN_MAX_AGE", 60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# django-q2 keeps cluster statistics in the cache; a file cache is shared by every process on the
# machine, which lets `card start` tell whether any worker is running.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(DATA_DIR / "cache"),
    }
}

# The in-memory layer does not cross processes: in the embedded mode the web process relays new
# event rows from the database (board/relay.py), so workers need no channel layer at all.
# The relay sends one message per card per look; the capacity (messages a channel holds before
# new ones are dropped) leaves room for hundreds of busy cards on one open board.
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 2000}}}
# Redis mode: REDIS_URL (such as redis://127.0.0.1:6379/0) makes Redis the channel layer, so that
# whoever writes an event publishes it and no relay polls the table, and django-q2's broker.
# BOARD_REDIS_PREFIX keeps boards that share one Redis apart.
REDIS_URL = env.str("REDIS_URL", default="")
BOARD_REDIS_PREFIX = env.str("BOARD_REDIS_PREFIX", default="board")


def redis_channel_layer(url: str, prefix: str) -> dict:
    """CHANNEL_LAYERS["default"] on the Redis at ``url``, keys under ``<prefix>:asgi``.

    channels_redis waits for a websocket's next message with BZPOPMIN for up to 5 s
    (RedisChannelLayer.brpop_timeout), and redis-py 8 gives up reading a socket after 5 s by default
    (redis/_defaults.py DEFAULT_SOCKET_TIMEOUT): the two raced, so an idle socket was closed with
    1011 every few seconds. Reads may take 30 s here; a Redis that died is still noticed."""
    return {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [{"address": url, "socket_timeout": 30}], "prefix": f"{prefix}:asgi", "capacity": 2000},
    }


if REDIS_URL:
    CHANNEL_LAYERS = {"default": redis_channel_layer(REDIS_URL, BOARD_REDIS_PREFIX)}

BOARD_HOST = env.str("BOARD_HOST", default="127.0.0.1")
BOARD_PORT = env.int("BOARD_PORT", default=8300)
BOARD_WORKERS = env.int("BOARD_WORKERS", default=4)
# This node's name: what runs record as their worker host and cards as their worktree host, and
# what start-up compares to decide which running runs are its own to mark interrupted. Give each
# worker host (or each worker process sharing one machine with its own BOARD_DATA_DIR) its own.
BOARD_NODE_NAME = env.str("BOARD_NODE_NAME", default="") or socket.gethostname()
# The board's address as people outside reach it, for links in webhooks (board/webhooks.py), such
# as https://board.example.com; default: http://BOARD_HOST:BOARD_PORT.
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _public_host() -> str:
    """The host of BOARD_PUBLIC_URL's default: BOARD_HOST, or for a wildcard bind (0.0.0.0, ::),
    which no browser can open, the first name people use from DJANGO_ALLOWED_HOSTS, else loopback."""
    if BOARD_HOST not in ("0.0.0.0", "::", ""):
        return f"[{BOARD_HOST}]" if ":" in BOARD_HOST else BOARD_HOST
    names = [h for h in ALLOWED_HOSTS if h not in _LOOPBACK and h != "*" and not h.startswith(".")]
    return names[0] if names else "127.0.0.1"


BOARD_PUBLIC_URL = env.str("BOARD_PUBLIC_URL", default="") or f"http://{_public_host()}:{BOARD_PORT}"
BOARD_WEBHOOK_TIMEOUT = env.float("BOARD_WEBHOOK_TIMEOUT", default=5.0)  # seconds a receiver has to answer
# The longest a run may take, in seconds; a command agent is killed after it.
BOARD_RUN_TIMEOUT = env.int("BOARD_RUN_TIMEOUT", default=2 * 60 * 60)
BOARD_MODEL_TIMEOUT = env.float("BOARD_MODEL_TIMEOUT", default=120.0)
BOARD_MODEL_RETRIES = env.int("BOARD_MODEL_RETRIES", default=2)  # on 429, 5xx and refused connections
BOARD_MAX_STEPS = env.int("BOARD_MAX_STEPS", default=40)
BOARD_BRANCH_PREFIX = env.str("BOARD_BRANCH_PREFIX", default="agent")
BOARD_GIT_NAME = env.str("BOARD_GIT_NAME", default="Agent Board")
BOARD_GIT_EMAIL = env.str("BOARD_GIT_EMAIL", default="agent-board@localhost")
# How often, in seconds, the web process looks for new event rows to push (embedded mode).
BOARD_RELAY_INTERVAL = env.float("BOARD_RELAY_INTERVAL", default=0.1)
# Output stored per run, in characters. Past it the oldest output is dropped (the first lines and
# the newest stay, and the log says how much went), so a run that prints for days cannot fill the disk.
BOARD_RUN_LOG_MAX_CHARS = env.int("BOARD_RUN_LOG_MAX_CHARS", default=50_000_000)

# django-q2: `timeout` longer than the longest run and `retry` longer than `timeout`, or the broker
# hands a task out again while it still runs (django-q2 docs, "Configure: retry"); one attempt only,
# since a run is never repeated behind the lead's back.
Q_CLUSTER = {
    "name": "board",
    "workers": BOARD_WORKERS,
    "orm": "default",
    "timeout": BOARD_RUN_TIMEOUT + 300,
    "retry": BOARD_RUN_TIMEOUT + 600,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    "poll": 0.5,
    "save_limit": 200,
    "label": "Tasks",
}
if REDIS_URL:
    del Q_CLUSTER["orm"]
    Q_CLUSTER["redis"] = REDIS_URL
    Q_CLUSTER["name"] = f"{BOARD_REDIS_PREFIX}-runs"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("BOARD_TIME_ZONE", default="UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# Serve straight from the app and project static folders, so no collectstatic step is needed.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("BOARD_LOG_LEVEL", default="WARNING")},
    "loggers": {
        "board": {"level": "INFO"},
        "agents": {"level": "INFO"},
        # A refused form or action (4xx) is the lead's answer on the page, not a server problem;
        # 5xx still show.
        "django.request": {"level": "ERROR"},
        # litellm logs whole tracebacks for provider errors the card already explains.
        "LiteLLM": {"level": "CRITICAL"},
        # A request for a host name not in DJANGO_ALLOWED_HOSTS gets its 400; its traceback in the
        # terminal only let anyone on the network fill it (Django docs, "Error reporting").
        "django.security.DisallowedHost": {"handlers": [], "propagate": False},
    },
}

# Team-server mode (issue 8). Bound to loopback, the board is one local user's and needs no login;
# bound to any other address it must know who is who (README, "Sharing it").
BOARD_LOGIN_REQUIRED = env.bool("BOARD_LOGIN_REQUIRED", default=BOARD_HOST not in _LOOPBACK)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

# Whether agents' commands run in a bubblewrap sandbox (README, "Secrets and the sandbox"): auto
# (in team-server mode, when bwrap works here), on (always; a run fails when bwrap cannot be
# used) or off.
BOARD_SANDBOX = env.str("BOARD_SANDBOX", default="auto").strip().lower()
if BOARD_SANDBOX not in ("auto", "on", "off"):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"BOARD_SANDBOX must be auto, on or off, not {BOARD_SANDBOX!r}")
