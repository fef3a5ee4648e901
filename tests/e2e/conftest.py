"""Fixtures for the real-browser tests: the board started the way the README does (``./run``) on a
free port with a data folder of its own, a scripted fake model server, a fresh clone of this
repository to use as the project, and Playwright driving the system Chromium.

No pytest-playwright plugin: the browser fixtures are written here, and Playwright never downloads
a browser (there is no internet; Chromium is at /usr/bin/chromium).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.conftest import free_port
from tests.conftest import git as run_git
from tests.fake_llm import EDIT_THEN_FINISH, FakeLLM

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTPUT_DIR = REPO_ROOT / "test-output" / "e2e"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
START_TIMEOUT = 180.0  # seconds for ./run to set up and print "Board running at"; the first run may pip install
STOP_TIMEOUT = 20.0  # seconds for the board to stop its children after SIGINT
FAKE_LLM_KEY = "e2e-fake-llm-key"  # the fake model refuses requests without it: proves the key reaches the agent

# Settings that would take the board out of its embedded default (SQLite, no Redis, real workers).
NOT_INHERITED = ("DATABASE_URL", "REDIS_URL", "BOARD_DB_PATH", "BOARD_Q_SYNC", "BOARD_PORT", "BOARD_HOST")


def git(cwd: Path | str, *args: str) -> str:
    """Run git in ``cwd``; returns stdout stripped."""
    return run_git(cwd, *args).strip()


@dataclass
class Board:
    """A running board: its URL, its process, its data folder and its log."""

    url: str
    port: int
    proc: subprocess.Popen
    data_dir: Path
    log_path: Path
    env: dict[str, str]
    tree: list[psutil.Process] = field(default_factory=list)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no board log)"

    def manage(self, *args: str) -> str:
        """``.venv/bin/python manage.py ARGS`` against the board's data folder; returns stdout."""
        result = subprocess.run(
            [str(REPO_ROOT / ".venv" / "bin" / "python"), "manage.py", *args],
            cwd=REPO_ROOT, env=self.env, capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, (
            f"manage.py {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
        return result.stdout


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.NoSuchProcess:
            pass
    return left


def _in_group(pgid: int) -> list[psutil.Process]:
    left = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                left.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return left


def _describe(procs: list[psutil.Process]) -> str:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline())}")
        except psutil.Error:
            out.append(str(p.pid))
    return "; ".join(out)


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


# This session's name in the names of the logs it writes, so that two e2e sessions at once (two
# checkouts, or two people on one machine) never write or delete each other's board log.
SESSION = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def session_log(output_dir: Path, name: str = "board") -> Path:
    """Where this session's log ``name`` goes: ``<output_dir>/<name>-<started>-<pid>.log``."""
    return output_dir / f"{name}-{SESSION}.log"


def _written_by_a_live_session(path: Path) -> bool:
    """Whether ``path`` is a session_log of a pytest process still running (not this one)."""
    pid = path.stem.rpartition("-")[2]
    if not (pid.isascii() and pid.isdigit()) or int(pid) == os.getpid():
        return False
    try:
        return psutil.Process(int(pid)).is_running()
    except psutil.Error:
        return False


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """test-output/e2e at the repository root (gitignored): screenshots and the board's log,
    emptied at the start so that no artifact of an earlier session is mistaken for this one's;
    the logs of sessions still running are left to them."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    for old in OUTPUT_DIR.iterdir():
        if old.is_file() and old.suffix in (".png", ".log") and not _written_by_a_live_session(old):
            old.unlink()
    return OUTPUT_DIR


@pytest.fixture(scope="session")
def fake_llm():
    """The scripted OpenAI-compatible server, in this process; the board's workers reach it over
    loopback. It answers only requests carrying FAKE_LLM_KEY."""
    llm = FakeLLM(EDIT_THEN_FINISH, api_key=FAKE_LLM_KEY)
    llm.start()
    yield llm
    llm.stop()


@contextmanager
def running_board(data_dir: Path, log_path: Path, **extra_env: str):
    """``./run --port N`` on a free port with ``data_dir`` (made here) as its data folder, its
    output in ``log_path`` and ``extra_env`` added to the environment; yields the Board once it
    answers. Stopped with SIGINT (Ctrl-C) at the end; every process it started must be gone."""
    port = free_port()
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update(BOARD_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", **extra_env)
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            ["./run", "--port", str(port)],
            cwd=REPO_ROOT, env=env, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
        )
    board = Board(url=f"http://127.0.0.1:{port}", port=port, proc=proc, data_dir=data_dir, log_path=log_path, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "Board running at http://" not in board.log():
            if proc.poll() is not None:
                pytest.fail(f"./run exited with status {proc.returncode} before the board ran:\n{board.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"The board did not start within {START_TIMEOUT:.0f} s:\n{board.log()}")
            time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), 5):
            pass
        board.tree = _tree(proc.pid)  # daphne, qcluster and its workers: all must be gone at the end
        yield board
    finally:
        _stop(board)


@pytest.fixture(scope="session")
def board(e2e_dir, output_dir):
    """``./run --port N``, as the README starts the board, with its own data folder and two workers
    (running_board)."""
    with running_board(e2e_dir / "data", session_log(output_dir), BOARD_WORKERS="2", FAKE_LLM_KEY=FAKE_LLM_KEY) as board:
        yield board


def _stop(board: Board) -> None:
    proc = board.proc
    # The board's children (daphne, qcluster and its workers, agents) run in sessions of their
    # own, so look at the whole tree as well as at the process group.
    tree = list({p.pid: p for p in [*board.tree, *_tree(proc.pid)]}.values())
    pgid = proc.pid
    forced = False
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            forced = True
    left_tree = _alive(tree)
    if forced or left_tree:
        # Fallback so nothing outlives the test run, then fail: the board did not stop cleanly.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in _alive(tree):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait(10)
        pytest.fail(
            f"The board did not stop within {STOP_TIMEOUT:.0f} s of SIGINT (forced={forced}); "
            f"still running: {_describe(left_tree) or 'the ./run process'}\n{board.log()}"
        )
    left_group = _in_group(pgid)
    assert not left_group, f"Processes of the board's group outlived it: {_describe(left_group)}\n{board.log()}"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", board.port), 1).close()
    assert "Board stopped." in board.log(), f"The board did not say it stopped:\n{board.log()}"


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, output_dir, request):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        try:
            page.screenshot(path=str(output_dir / f"{request.node.name}-failure.png"), full_page=True)
        except Exception:  # the page may be gone; the screenshot is only a help
            pass
    context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep the call report on the item (for the failure screenshot) and attach the board's log to
    a failed test's report."""
    report = yield
    if report.when == "call":
        item.rep_call = report
        board = item.funcargs.get("board") if hasattr(item, "funcargs") else None
        if report.failed and isinstance(board, Board):
            report.sections.append(("board log", board.log()[-20000:]))
    return report


@dataclass
class Clone:
    """A fresh clone of this product's repository, and what its own checkout looked like before."""

    path: Path
    branch: str
    head: str
    status: str


@pytest.fixture(scope="session")
def project_clone(e2e_dir) -> Clone:
    path = e2e_dir / "clone"
    git(e2e_dir, "clone", "--quiet", str(REPO_ROOT), str(path))
    try:
        branch = git(path, "symbolic-ref", "--short", "HEAD")
    except AssertionError:  # a CI checkout on a detached HEAD: give the commit a branch to work from
        branch = "e2e-base"
        git(path, "checkout", "--quiet", "-b", branch)
    return Clone(
        path=path,
        branch=branch,
        head=git(path, "rev-parse", "HEAD"),
        status=git(path, "status", "--porcelain"),
    )


def add_card(page, title: str, prompt: str, agent: str, mode: str | None = None) -> int:
    """Create a card with the board page's form (``mode`` is the label of a mode choice, left as
    it is when None); waits until the card shows, idle, in the Backlog and the form is empty
    again. Returns the card's id."""
    from playwright.sync_api import expect

    form = page.locator("#card-form")
    form.get_by_label("Title").fill(title)
    form.locator("[name=prompt]").fill(prompt)
    form.locator("[name=agent]").select_option(agent)
    if mode is not None:
        form.locator("[name=mode]").select_option(label=mode)
    form.get_by_role("button", name="Add card").click()
    card = page.locator("#list-backlog article.card", has_text=title)
    expect(card).to_be_visible()
    expect(card).to_have_attribute("data-state", "idle")
    # The htmx response swaps in a fresh, empty form.
    expect(page.locator("#card-form [name=title]")).to_have_value("")
    return int(card.get_attribute("id").removeprefix("card-"))
