"""What the live-update benchmarks share: a throwaway git repository, a board started the way the
README does (`manage.py board`) on a free port with a data folder of its own, the board's web
process (daphne) and a sampler of its memory, and the system Chromium driven by Playwright.

Not a benchmark itself (the leading underscore). Progress goes to stderr through ``say``, so that
a script's stdout holds only its figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(REPO_ROOT / ".venv" / "bin" / "python")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
START_TIMEOUT = 120.0  # seconds for `manage.py board` to migrate and say "Board running at"
STOP_TIMEOUT = 30.0  # seconds for the board to stop its children after SIGINT
GIT = ["git", "-c", "user.name=Bench", "-c", "user.email=bench@example.invalid"]
# Settings that would take the board out of its embedded default; a benchmark sets them itself.
NOT_INHERITED = ("DATABASE_URL", "REDIS_URL", "BOARD_DB_PATH", "BOARD_Q_SYNC", "BOARD_PORT", "BOARD_HOST",
                 "BOARD_WORKERS", "BOARD_DATA_DIR")
ACTIVE_STATES = ("queued", "running", "awaiting_approval")

_started = time.monotonic()


def say(message: str) -> None:
    """One progress line on stderr, with the seconds since the script started."""
    print(f"[{time.monotonic() - _started:7.1f} s] {message}", file=sys.stderr, flush=True)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so a benchmark killed politely still runs its
    ``finally`` blocks and stops its board, as it does on Ctrl-C."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def knob(name: str, default: float) -> float:
    """The environment variable ``name`` as a number (int when it has no dot), else ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    return float(raw) if "." in raw else int(raw)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_repo(root: Path) -> Path:
    """A git repository at ``root/repo`` on branch ``main`` with one commit (a README)."""
    repo = root / "repo"
    repo.mkdir()
    subprocess.run([*GIT, "init", "-q", "-b", "main"], cwd=repo, check=True)
    (repo / "README.md").write_text("A repository for the board's benchmarks.\n")
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "Start"], cwd=repo, check=True)
    return repo


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of ``values``, linearly interpolated between the two
    nearest ranks (numpy's default); raises ValueError when ``values`` is empty."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Board:
    """A running board: ``url`` (no trailing slash), its `manage.py board` process, its data
    folder, the environment its commands run with, and the file its output goes to."""

    url: str
    port: int
    proc: subprocess.Popen
    data_dir: Path
    env: dict[str, str]
    log_path: Path
    tree: list[psutil.Process] = field(default_factory=list)
    peak_running: int = 0  # the most runs seen running at once by wait_runs_ended

    def log(self) -> str:
        """Everything the board printed so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def manage(self, *args: str, timeout: float = 120) -> str:
        """``.venv/bin/python manage.py ARGS`` against this board's data folder; returns stdout.
        Raises RuntimeError with the command's output when it fails."""
        result = subprocess.run(
            [PYTHON, "manage.py", *args], cwd=REPO_ROOT, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return result.stdout

    def manage_id(self, *args: str) -> int:
        """A `manage.py` command that prints a new object's id on its last line; returns the id."""
        return int(self.manage(*args).strip().splitlines()[-1])

    def card(self, card_id: int) -> dict:
        """`manage.py card show ID --json`: the card's JSON object (``state``, ``column``, …)."""
        return json.loads(self.manage("card", "show", str(card_id), "--json").strip().splitlines()[-1])

    def run_states(self) -> list[str]:
        """The states of all runs, read straight from the board's SQLite file (no Django start-up,
        so it is cheap enough to poll)."""
        with contextlib.closing(sqlite3.connect(self.data_dir / "board.sqlite3", timeout=30)) as db:
            return [row[0] for row in db.execute("SELECT state FROM board_run")]

    def wait_runs_ended(self, count: int, timeout: float, every: float = 1.0) -> bool:
        """Wait until ``count`` runs exist and none is queued, running or awaiting approval;
        False when ``timeout`` seconds pass first or the board exits. Meanwhile it keeps
        ``peak_running``, the most runs it saw in state running at one look."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                say(f"the board exited (status {self.proc.returncode}) while runs were going")
                return False
            try:
                states = self.run_states()
            except sqlite3.Error as exc:  # busy for longer than the timeout: look again
                say(f"could not read the run states: {exc}")
                states = []
            self.peak_running = max(self.peak_running, states.count("running"))
            if len(states) >= count and not any(s in ACTIVE_STATES for s in states):
                return True
            time.sleep(every)
        return False

    def web_process(self) -> psutil.Process:
        """The web server (daphne), a child of the `manage.py board` process."""
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if any("daphne" in part for part in child.cmdline()):
                    return child
            except psutil.Error:
                continue
        raise RuntimeError("the board has no daphne process")

    def problems(self) -> list[str]:
        """Lines of the board's output that look like trouble (tracebacks, locked database,
        errors), for the benchmark to show; empty when the log is clean."""
        words = ("Traceback", "database is locked", "Error", "error:", "exited (status")
        return [line for line in self.log().splitlines() if any(w in line for w in words)]


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.NoSuchProcess:
            pass
    return left


@contextlib.contextmanager
def running_board(root: Path, workers: int, extra_env: dict[str, str] | None = None):
    """Start `manage.py board --port P --workers N` with ``BOARD_DATA_DIR=root/data``, wait until
    it says it runs, yield the Board, and always stop it with SIGINT (Ctrl-C) at the end, waiting
    for it; whatever is left after STOP_TIMEOUT seconds is killed and reported on stderr.
    ``extra_env`` adds environment variables (such as REDIS_URL)."""
    data_dir = root / "data"
    data_dir.mkdir(exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update(BOARD_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", **(extra_env or {}))
    log_path = root / "board.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [PYTHON, "manage.py", "board", "--port", str(port), "--workers", str(workers)],
            cwd=REPO_ROOT, env=env, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
        )
    board = Board(url=f"http://127.0.0.1:{port}", port=port, proc=proc, data_dir=data_dir, env=env, log_path=log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while f"Board running at http://127.0.0.1:{port}/" not in board.log():
            if proc.poll() is not None:
                raise RuntimeError(f"the board exited with status {proc.returncode} before it ran:\n{board.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the board did not start within {START_TIMEOUT:.0f} s:\n{board.log()[-3000:]}")
            time.sleep(0.2)
        board.tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        say(f"board running at {board.url}/ with {workers} worker(s), data in {data_dir}")
        yield board
    finally:
        _stop(board)


def _stop(board: Board) -> None:
    proc = board.proc
    tree = list({p.pid: p for p in [*board.tree, *_tree(proc.pid)]}.values())
    if proc.poll() is None:
        say("stopping the board (SIGINT)")
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            say(f"BOARD PROBLEM: the board did not stop within {STOP_TIMEOUT:.0f} s of SIGINT; killing it")
    left = _alive(tree)
    if left:
        say(f"BOARD PROBLEM: processes outlived the board: {[p.pid for p in left]}; killing them")
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    say(f"board stopped (status {proc.returncode})")
    problems = board.problems()
    if problems:
        say(f"the board's log has {len(problems)} line(s) that look like trouble; the first ones:")
        for line in problems[:15]:
            print(f"    {line}", file=sys.stderr)


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class RssSampler:
    """Samples one process's resident memory every ``interval`` seconds on a thread of its own,
    from ``start()`` to ``stop()``. ``samples`` holds (time.monotonic(), RSS in MB) pairs."""

    def __init__(self, process: psutil.Process, interval: float = 0.5):
        self.process = process
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._done.is_set():
            try:
                rss = self.process.memory_info().rss / 2**20
            except psutil.Error:  # the web process is gone: nothing more to sample
                return
            self.samples.append((time.monotonic(), rss))
            self._done.wait(self.interval)

    def start(self) -> RssSampler:
        self._thread.start()
        while not self.samples and self._thread.is_alive():  # the first sample is the start
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5)

    @property
    def first_mb(self) -> float:
        """The first sample, in MB (the process's memory when sampling began)."""
        return self.samples[0][1]

    @property
    def max_mb(self) -> float:
        """The largest sample so far, in MB."""
        return max(rss for _, rss in self.samples)


class CpuWatch:
    """CPU use over a window: of one process (its user + system time) and of the whole machine,
    each as a percentage of one core (so 200 means two cores busy), from creation to ``report()``."""

    def __init__(self, process: psutil.Process):
        self.process = process
        self.began = time.monotonic()
        self.process_began = sum(process.cpu_times()[:2])
        self.machine_began = psutil.cpu_times()

    def report(self) -> str:
        """"web process X% of a core, machine Y% of N cores" over the window so far."""
        elapsed = max(time.monotonic() - self.began, 1e-6)
        try:
            web = (sum(self.process.cpu_times()[:2]) - self.process_began) / elapsed * 100
        except psutil.Error:
            web = float("nan")
        busy = _busy(psutil.cpu_times()) - _busy(self.machine_began)
        cores = psutil.cpu_count() or 1
        return f"web process {web:.0f}% of a core, machine {busy / elapsed * 100:.0f}% of {cores} core(s)"


def _busy(times) -> float:
    """Seconds the machine's cores spent busy (guest time is already inside user time on Linux)."""
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))


@contextlib.contextmanager
def chromium():
    """The system Chromium, headless, through Playwright (never a downloaded browser); yields a
    Playwright Browser and closes it at the end."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def open_live_page(browser, url: str, init_script: str | None = None, timeout_ms: float = 30_000):
    """A new page at ``url`` (with ``init_script`` run before the page's own scripts), returned
    once its websocket is open: the page marks ``#ws-status`` with class ``ok`` on htmx's
    ``wsOpen`` event."""
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    if init_script:
        page.add_init_script(init_script)
    page.goto(url)
    page.wait_for_selector("#ws-status.ok", timeout=timeout_ms)
    return page


def use_board_database(data_dir: Path) -> None:
    """Set Django up in this process on the board's data folder (``config.settings``, embedded
    mode), so that a benchmark can write rows as a worker does, or seed a board through the ORM."""
    os.environ.pop("REDIS_URL", None)
    os.environ.update(DJANGO_SETTINGS_MODULE="config.settings", BOARD_DATA_DIR=str(data_dir))
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import django

    django.setup()


# An init script for Chromium pages: records every long task (over 50 ms, the browser's own
# threshold) in window.__longTasks as [startTime, duration] pairs (ms, performance.now() clock).
LONG_TASK_OBSERVER = r"""
window.__longTasks = [];
try {
  new PerformanceObserver(function (list) {
    list.getEntries().forEach(function (e) { window.__longTasks.push([e.startTime, e.duration]); });
  }).observe({type: "longtask", buffered: true});
} catch (e) { window.__longTasks = null; }
"""
