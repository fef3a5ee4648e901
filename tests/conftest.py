"""Fixtures shared by the tests: real throwaway git repositories and a private data folder."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

GIT_ID = ["-c", "user.name=Test User", "-c", "user.email=test@example.invalid"]


def git(cwd: Path | str, *args: str) -> str:
    """Run git in ``cwd`` with a test identity (this machine has no global one); returns stdout.
    Raises AssertionError with git's own message when it fails."""
    result = subprocess.run(["git", *GIT_ID, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout


def processes_named(marker: str) -> list:
    """The live processes whose command line contains ``marker`` (tests name theirs with
    ``exec -a``), to check that none outlived what should have ended it."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shared_database_env() -> dict[str, str]:
    """The environment that points another process at this test run's database: its SQLite file
    (BOARD_DB_PATH), or, when the suite runs on PostgreSQL (DATABASE_URL set), DATABASE_URL naming
    pytest-django's test database instead of the configured one."""
    from django.conf import settings
    from django.db import connection

    name = str(connection.settings_dict["NAME"])
    if connection.vendor == "sqlite":
        return {"BOARD_DB_PATH": name}
    url = settings.DATABASE_URL
    path_start = url.index("/", url.index("://") + 3)
    query = url.find("?", path_start)
    return {"DATABASE_URL": url[:path_start] + "/" + name + (url[query:] if query >= 0 else "")}


def execute_in_thread(run_id: int):
    """Run ``agents.runner.execute(run_id)`` in a new thread, as a worker would, with its own
    database connection (closed at the end); returns the started thread. Needs a transactional
    test (``django_db(transaction=True)``) to see the run."""
    import threading

    from django.db import connection

    from agents import runner

    def work():
        try:
            runner.execute(run_id)
        finally:
            connection.close()

    thread = threading.Thread(target=work)
    thread.start()
    return thread


@pytest.fixture
def make_repo(tmp_path):
    """Factory: a new git repository with one commit on ``main`` (README.md), at tmp_path/name."""

    def make(name: str = "repo") -> Path:
        path = tmp_path / name
        path.mkdir()
        git(path, "init", "-q", "-b", "main")
        (path / "README.md").write_text("# Demo\n")
        git(path, "add", "README.md")
        git(path, "commit", "-q", "-m", "Initial commit")
        return path

    return make


@pytest.fixture
def board_dirs(settings, tmp_path):
    """Point the board's worktrees and run files at this test's own folder."""
    settings.WORKTREES_DIR = tmp_path / "worktrees"
    settings.RUNS_DIR = tmp_path / "runs"
    return tmp_path


@pytest.fixture
def project(db, make_repo, board_dirs):
    """A project on a fresh repository, base branch main."""
    from board.models import Project

    repo = make_repo("user-repo")
    return Project.objects.create(name="demo", repo_path=str(repo), base_branch="main", branch_prefix="agent")


@pytest.fixture
def make_card(project):
    """Factory: a Backlog card on ``project`` for a new command agent running ``command``."""
    from board.models import Agent, Card

    def make(command: str = "echo hello", title: str = "Do the thing", prompt: str = "Please do it", **agent_fields):
        fields = {"kind": Agent.Kind.COMMAND, "command": command, **agent_fields}
        agent = Agent.objects.create(name=f"agent-{Agent.objects.count() + 1}", **fields)
        return Card.create(project, title, prompt, agent)

    return make


FAKE_KEY = "sk-fake-llm-test"  # the key FakeLLM servers of the fake_llm fixture require


@pytest.fixture
def model_key(monkeypatch) -> str:
    """Sets FAKE_LLM_KEY to FAKE_KEY in the environment, as a lead sets their provider's key;
    returns the variable's name, for a model's "API key environment variable"."""
    monkeypatch.setenv("FAKE_LLM_KEY", FAKE_KEY)
    return "FAKE_LLM_KEY"


@pytest.fixture
def fake_llm():
    """Factory: ``start(script) -> FakeLLM``, a scripted model server (tests/fake_llm.py) that
    requires FAKE_KEY, already listening; every server started is stopped at teardown."""
    from tests.fake_llm import FakeLLM

    servers = []

    def start(script: list):
        server = FakeLLM(script, api_key=FAKE_KEY)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
