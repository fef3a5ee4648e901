"""Benchmark: a team server on PostgreSQL and Redis with 20 websocket clients and 10 parallel runs.

What it measures, while BENCH_RUNS command agents run at once and BENCH_CLIENTS websocket clients
watch them:
- ``p95_ms``: the 95th percentile of the project's board page (GET /projects/ID/ with a plain HTTP
  client, about 5 times a second, a new connection each time, the whole body read), from the
  start of the runs until every run has ended.
- ``events_lost``: the events that some client should have received but did not, summed over
  the clients. Half the clients (rounded up) are card-page clients, one per card in turn; the
  others are board clients. A card-page client (/ws/cards/ID/) should receive every numbered line
  its card's agent printed: each of the BENCH_LINES lines ``card <id> line <n>`` missing from
  everything it received counts one. A board client (/ws/projects/ID/) should see every card
  reach its final state, pushed as the card succeeded in Review with its Land button: each
  (client, card) pair it never saw counts one. A client that connected late, or a flood cut,
  would show up here too: the clients connect before the runs start, and a run prints too little
  for the consumers to cut its output. What arrives late is not lost: once every run has ended,
  the clients have up to BENCH_SETTLE seconds to receive the rest (``settle_s`` says how long they
  took); only what is still missing then counts.

How: a fresh PostgreSQL database (board_load_<pid>, created and dropped here through psycopg,
BENCH_POSTGRES_URL) and a Redis prefix of its own (BENCH_REDIS_URL, default
redis://127.0.0.1:6379/5). ``manage.py migrate``, then the team server as docs/team-server.md runs
it: the web (daphne on a free port) and the workers (`manage.py board --no-web --workers
BENCH_RUNS`), separate processes. A temporary git repository, a project, a command agent (a Python
loop printing BENCH_LINES numbered lines over BENCH_SECONDS seconds, flushed each time) and
BENCH_RUNS cards are added with `manage.py`. Then the clients connect (aiohttp, one asyncio loop on a
thread of its own, with the board's origin). The cards are started together with the board's
"Start all" (one POST), and the board page is probed until every run has ended and the clients
have what they should (or BENCH_SETTLE seconds have passed).

Target (issue 8): p95_ms under 200, events_lost 0.

Knobs (environment): BENCH_RUNS (parallel runs and workers, default 10), BENCH_CLIENTS (websocket
clients, default 20), BENCH_LINES (numbered lines per run, default 300), BENCH_SECONDS (seconds each
agent prints, default 20), BENCH_TIMEOUT (seconds to wait for the runs, default 4 x BENCH_SECONDS +
180), BENCH_SETTLE (default 30), BENCH_POSTGRES_URL (a database the benchmark can create databases from, default
postgres://postgres@127.0.0.1:5432/postgres), BENCH_REDIS_URL.

Run from the repository root after the README's setup, with PostgreSQL and Redis running:
.venv/bin/python bench/team_load.py. Progress goes to stderr. stdout ends with the lines
``p95_ms: <n>`` and ``events_lost: <n>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._board import (  # noqa: E402
    NOT_INHERITED, PYTHON, REPO_ROOT, CpuWatch, free_port, knob, make_repo, percentile, say, stop_on_sigterm,
)
from bench.parallel_output import PageProbe  # noqa: E402

RUNS = int(knob("BENCH_RUNS", 10))
CLIENTS = int(knob("BENCH_CLIENTS", 20))
LINES = int(knob("BENCH_LINES", 300))
SECONDS = float(knob("BENCH_SECONDS", 20))
TIMEOUT = float(knob("BENCH_TIMEOUT", 4 * SECONDS + 180))
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
START_TIMEOUT = 120.0  # seconds for the web to answer and the workers to say they run
SETTLE = float(knob("BENCH_SETTLE", 30))  # seconds the clients may take to get the last pushes

# The agent: LINES numbered lines spread over SECONDS seconds, each flushed.
AGENT = f"""
import os, sys, time
card = os.environ.get("CARD_ID", "?")
lines, seconds = {LINES}, {SECONDS}
for n in range(lines):
    print(f"card {{card}} line {{n:05d}} of {{lines}}", flush=True)
    time.sleep(seconds / lines)
"""


@contextlib.contextmanager
def fresh_database():
    """A new PostgreSQL database for this run; yields its URL and drops it at the end."""
    import psycopg

    name = f"board_load_{os.getpid()}"
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield re.sub(r"/[^/]*$", f"/{name}", POSTGRES_URL)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def redis_prefix():
    """A key prefix of this run's own in BENCH_REDIS_URL; yields it and deletes its keys at the end."""
    import redis

    prefix = f"bench-load-{os.getpid()}"
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    client.ping()
    try:
        yield prefix
    finally:
        for key in client.scan_iter(f"*{prefix}*"):
            client.delete(key)
        client.close()


class TeamServer:
    """The web and worker processes of a team server, their output in ``root``."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}

    def manage(self, *args: str, timeout: float = 180) -> str:
        """``manage.py ARGS`` with the team server's settings; returns stdout, raises RuntimeError
        with the output when it fails."""
        result = subprocess.run([PYTHON, "manage.py", *args], cwd=REPO_ROOT, env=self.env, capture_output=True,
                                text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return result.stdout

    def manage_id(self, *args: str) -> int:
        return int(self.manage(*args).strip().splitlines()[-1])

    def start(self, workers: int) -> None:
        """Start web and workers and wait until the web answers and the workers say they run."""
        commands = {
            "web": [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "config.asgi:application"],
            "worker": [PYTHON, "manage.py", "board", "--no-web", "--workers", str(workers)],
        }
        for name, args in commands.items():
            with open(self.root / f"{name}.log", "wb") as log:
                self.procs[name] = subprocess.Popen(args, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not (self._answers() and "Board workers running" in self.log("worker")):
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"the team server did not start ({dead or 'timeout'}):\n{self.logs()}")
            time.sleep(0.3)
        say(f"team server running at {self.url}/: web and {workers} worker(s), separate processes")

    def _answers(self) -> bool:
        import urllib.request

        with contextlib.suppress(OSError):
            with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                return response.status == 200
        return False

    def log(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.root / f"{name}.log").read_text(errors="replace")
        return ""

    def logs(self) -> str:
        return "\n".join(f"--- {name}:\n{self.log(name)[-3000:]}" for name in self.procs)

    def stop(self) -> None:
        """SIGTERM to each (workers first, as systemd stops a service), SIGKILL of its group after 30 s."""
        for name in ("worker", "web"):
            proc = self.procs.get(name)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        problems = [line for name in self.procs for line in self.log(name).splitlines() if "Traceback" in line or "Error" in line]
        if problems:
            say(f"the team server's logs have {len(problems)} line(s) that look like trouble; the first ones:")
            for line in problems[:15]:
                print(f"    {line}", file=sys.stderr)

    def run_states(self) -> list[str]:
        import psycopg

        with psycopg.connect(self.env["DATABASE_URL"]) as db:
            return [row[0] for row in db.execute("SELECT state FROM board_run")]


class Clients:
    """``urls`` websocket clients on one asyncio loop on a thread of its own; each keeps every
    text message it receives, in ``received[i]``. ``start()`` returns once all are connected."""

    def __init__(self, urls: list[str], origin: str):
        self.urls, self.origin = urls, origin
        self.received: list[list[str]] = [[] for _ in urls]
        self._read = [0] * len(urls)  # how many of each client's messages ``seen`` has gone through
        self._seen: list[set] = [set() for _ in urls]
        self.closed: list[str] = []  # clients the server closed, with why
        self._connected = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="ws-clients", daemon=True)

    def start(self) -> Clients:
        self._thread.start()
        if not self._connected.wait(60) or self._failed:
            raise RuntimeError(f"the websocket clients did not connect: {self._failed!r}")
        return self

    async def _main(self) -> None:
        import aiohttp

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            async with aiohttp.ClientSession() as session:
                sockets = [await session.ws_connect(url, origin=self.origin, max_msg_size=0) for url in self.urls]
                self._connected.set()
                await asyncio.gather(*(self._listen(i, ws) for i, ws in enumerate(sockets)))
        except BaseException as exc:
            self._failed = exc
            self._connected.set()

    async def _listen(self, index: int, ws) -> None:
        import aiohttp

        stop = asyncio.ensure_future(self._stop.wait())
        while True:
            receive = asyncio.ensure_future(ws.receive())
            await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():
                receive.cancel()
                await ws.close()
                return
            message = receive.result()
            if message.type != aiohttp.WSMsgType.TEXT:
                self.closed.append(f"{self.urls[index]}: {message.type!r} {message.data!r}")
                return
            self.received[index].append(message.data)

    def seen(self, index: int, pattern: re.Pattern) -> set[str]:
        """Everything ``pattern`` (one group) matched in client ``index``'s messages so far, read
        once each (the same pattern on every call)."""
        messages = self.received[index]
        end = len(messages)
        for message in messages[self._read[index]:end]:
            self._seen[index].update(pattern.findall(message))
        self._read[index] = end
        return self._seen[index]

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


LINE = re.compile(r"card (\d+ line \d+) of")  # a numbered line: "<card> line <n>"
# A card pushed as succeeded, in Review (its Land button), in one <article>: the card's id.
FINAL = re.compile(r'<article id="card-(\d+)"[^>]*data-state="succeeded"(?:(?!</article>).)*?/cards/\1/land', re.S)


def lost(clients: Clients, watched: list[int], cards: list[int]) -> tuple[int, int]:
    """(numbered lines missing on the card-page clients, (board client, card) final states not
    seen), as the module's docstring defines them."""
    lines = sum(sum(1 for n in range(LINES) if f"{card} line {n:05d}" not in clients.seen(i, LINE))
                for i, card in enumerate(watched))
    finals = sum(sum(1 for card in cards if str(card) not in clients.seen(i, FINAL))
                 for i in range(len(watched), len(clients.urls)))
    return lines, finals


def start_all(server: TeamServer, project: int) -> None:
    """POST the board's "Start all" as the browser does (CSRF cookie and header, same origin)."""
    import requests

    session = requests.Session()
    session.get(f"{server.url}/projects/{project}/", timeout=30).raise_for_status()
    response = session.post(f"{server.url}/projects/{project}/start-all", allow_redirects=False, timeout=60,
                            headers={"X-CSRFToken": session.cookies["csrftoken"], "Origin": server.url})
    if response.status_code != 302:
        raise RuntimeError(f"Start all answered {response.status_code}: {response.text[:1000]}")


def main() -> None:
    stop_on_sigterm()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-team-") as tmp, fresh_database() as database, redis_prefix() as prefix:
        root = Path(tmp)
        (root / "data").mkdir()
        env = {k: v for k, v in os.environ.items() if k not in (*NOT_INHERITED, "BOARD_REDIS_PREFIX", "DJANGO_SETTINGS_MODULE")}
        env.update(DATABASE_URL=database, REDIS_URL=REDIS_URL, BOARD_REDIS_PREFIX=prefix, BOARD_DATA_DIR=str(root / "data"),
                   BOARD_LOGIN_REQUIRED="false", PYTHONUNBUFFERED="1")
        server = TeamServer(root, env)
        server.manage("migrate", "--noinput", "-v", "0")
        say(f"database {database.rsplit('/', 1)[-1]} migrated; Redis prefix {prefix}")
        repo = make_repo(root)
        try:
            server.start(workers=RUNS)
            project = server.manage_id("project", "add", str(repo))
            server.manage("agent", "add", "bench-numbered", "--command", f"{shlex.quote(PYTHON)} -c {shlex.quote(AGENT)}")
            with ThreadPoolExecutor(4) as pool:
                cards = sorted(pool.map(
                    lambda i: server.manage_id("card", "add", "--project", str(project), "--title", f"Numbered {i}",
                                               "--agent", "bench-numbered"),
                    range(1, RUNS + 1),
                ))
            ws = server.url.replace("http://", "ws://")
            card_clients = (CLIENTS + 1) // 2
            watched = [cards[i % len(cards)] for i in range(card_clients)]
            urls = [f"{ws}/ws/cards/{card}/" for card in watched] + [f"{ws}/ws/projects/{project}/"] * (CLIENTS - card_clients)
            clients = Clients(urls, server.url).start()
            say(f"{len(urls)} websocket clients connected ({card_clients} on card pages, {CLIENTS - card_clients} on the board); "
                f"{RUNS} cards, each printing {LINES} lines over {SECONDS:g} s")
            time.sleep(3)  # the consumers' first render (2 s without a resume point) is in
            cpu = CpuWatch(__import__("psutil").Process(server.procs["web"].pid))
            probe = PageProbe(f"{server.url}/projects/{project}/").start()
            try:
                started = time.monotonic()
                start_all(server, project)
                deadline = started + TIMEOUT
                while time.monotonic() < deadline:
                    states = server.run_states()
                    if len(states) >= RUNS and not any(s in ("queued", "running") for s in states):
                        break
                    time.sleep(1)
                else:
                    say(f"BOARD PROBLEM: runs not ended after {TIMEOUT:.0f} s: {sorted(server.run_states())}")
                ended = time.monotonic()
                say(f"runs ended {ended - started:.1f} s after Start all: {sorted(server.run_states())}")
                while sum(lost(clients, watched, cards)) and time.monotonic() < ended + SETTLE:
                    time.sleep(0.5)
                settle = time.monotonic() - ended
                say(f"CPU from the start to now: {cpu.report()}")
            finally:
                probe.stop()
                clients.stop()
        finally:
            server.stop()
    if os.environ.get("BENCH_DUMP"):  # each client's messages, for a look at what went missing
        dump = Path(os.environ["BENCH_DUMP"])
        dump.mkdir(parents=True, exist_ok=True)
        for i, messages in enumerate(clients.received):
            (dump / f"client-{i:02d}.txt").write_text("\n=====\n".join(messages))
    lost_lines, lost_finals = lost(clients, watched, cards)
    board_clients = CLIENTS - card_clients
    if clients.closed:
        say(f"{len(clients.closed)} client(s) closed by the server, e.g. {clients.closed[0]}")
    if probe.failures:
        say(f"{len(probe.failures)} board page request(s) failed, e.g. {probe.failures[0]}")
    say(f"done in {time.monotonic() - began:.0f} s")
    print(f"board_requests: {len(probe.latencies_ms)} ok, {len(probe.failures)} failed")
    print(f"board_p50_ms: {percentile(probe.latencies_ms, 50):.0f}" if probe.latencies_ms else "board_p50_ms: none")
    print(f"lines_lost: {lost_lines} of {LINES * card_clients} (card-page clients)")
    print(f"final_states_lost: {lost_finals} of {len(cards) * board_clients} (board clients)")
    print(f"settle_s: {settle:.1f} (from the last run's end to the clients having all they got)")
    print(f"p95_ms: {percentile(probe.latencies_ms, 95):.0f}" if probe.latencies_ms else "p95_ms: none")
    print(f"events_lost: {lost_lines + lost_finals}")


if __name__ == "__main__":
    main()
