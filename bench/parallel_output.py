"""Benchmark: twenty command agents printing 1,000 lines a second each for a minute, at once.

What it measures: while BENCH_RUNS command agents run in parallel, each printing BENCH_RATE lines
a second for BENCH_SECONDS seconds, (1) the web process's memory (RSS of the daphne child of
`manage.py board`, sampled every 0.5 s with psutil), (2) the latency of the project's board page
(GET /projects/ID/ with a plain HTTP client, about 5 times a second, a new connection each time),
and (3) whether every run ended right: state `succeeded` and its card in the Review column.

How: a temporary git repository and data folder, a board started with `manage.py board --workers
BENCH_RUNS`, a project, one command agent (a small Python loop writing its lines in batches every
10 ms, flushed) and BENCH_RUNS cards, all added with `manage.py`. The board page and the first
card's page are opened in the system Chromium (their websockets connected), so pushes really flow
to browsers. Memory sampling and page requests start then; the cards are started together with the board
page's "Start all" button (one request); once every run has ended (BENCH_TIMEOUT seconds at
most) and a few seconds more, each card is read with `manage.py card show --json`.

Targets (issue 5): web process memory under 300 MB throughout, board page p95 under 200 ms,
every final status right (0 wrong).

Knobs (environment): BENCH_RUNS (parallel agents and workers, default 20), BENCH_SECONDS (seconds
each agent prints, default 60), BENCH_RATE (lines a second per agent, default 1000),
BENCH_TIMEOUT (seconds to wait for all runs to end, default 3 x BENCH_SECONDS + 180).

Run from the repository root after the README's setup: .venv/bin/python bench/parallel_output.py
Progress goes to stderr; stdout ends with board_p95_ms, web_rss_mb_start, web_rss_mb_max and
final_status_wrong lines (milliseconds, MB = 2**20 bytes).
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._board import (  # noqa: E402
    PYTHON, CpuWatch, RssSampler, chromium, knob, make_repo, open_live_page, percentile, running_board, say,
    stop_on_sigterm,
)

RUNS = int(knob("BENCH_RUNS", 20))
SECONDS = float(knob("BENCH_SECONDS", 60))
RATE = int(knob("BENCH_RATE", 1000))
TIMEOUT = float(knob("BENCH_TIMEOUT", 3 * SECONDS + 180))
REQUEST_EVERY = 0.2  # seconds between board page requests
TAIL = 3.0  # seconds of sampling after the last run ended

# The agent: RATE lines a second for SECONDS seconds, written 10 ms at a time and flushed, each
# line numbered and about 70 characters long.
AGENT = f"""
import os, sys, time
rate, seconds = {RATE}, {SECONDS}
card = os.environ.get("CARD_ID", "?")
total = int(rate * seconds)
start = time.monotonic()
n = 0
while n < total:
    due = min(total, int((time.monotonic() - start) * rate) + rate // 100)
    sys.stdout.write("".join(f"card {{card}} line {{i:07d}} of {{total}}: the quick brown fox jumps over\\n" for i in range(n, due)))
    sys.stdout.flush()
    n = due
    time.sleep(max(0.0, start + n / rate - time.monotonic()))
print(f"card {{card}}: {{total}} lines written")
"""


class PageProbe:
    """Requests ``url`` every ``every`` seconds on a thread of its own, from ``start()`` to
    ``stop()``; ``latencies_ms`` holds each successful request's time (whole body read, in ms),
    ``failures`` the errors."""

    def __init__(self, url: str, every: float = REQUEST_EVERY):
        self.url = url
        self.every = every
        self.latencies_ms: list[float] = []
        self.failures: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="page-probe", daemon=True)

    def _loop(self) -> None:
        while not self._done.is_set():
            began = time.perf_counter()
            try:
                with urllib.request.urlopen(self.url, timeout=30) as response:
                    response.read()
                    if response.status != 200:
                        raise OSError(f"status {response.status}")
                self.latencies_ms.append((time.perf_counter() - began) * 1000)
            except OSError as exc:
                self.failures.append(str(exc))
            self._done.wait(max(0.0, self.every - (time.perf_counter() - began)))

    def start(self) -> PageProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()
        self._thread.join(35)


def start_all(page, board, count: int) -> None:
    """Press the board page's "Start all" (every Backlog card started in one request, as the lead
    does), wait until the page is back with its websocket connected and ``count`` runs exist."""
    with page.expect_navigation():  # the form posts, and the board page comes back
        page.get_by_role("button", name="Start all").click()
    page.wait_for_selector("#ws-status.ok", timeout=30_000)
    runs = len(board.run_states())
    if runs != count:
        raise RuntimeError(f"Start all made {runs} run(s), not {count}")


def main() -> None:
    stop_on_sigterm()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        root = Path(tmp)
        repo = make_repo(root)
        with running_board(root, workers=RUNS) as board:
            project = board.manage_id("project", "add", str(repo))
            board.manage("agent", "add", "bench-lines", "--command", f"{shlex.quote(PYTHON)} -c {shlex.quote(AGENT)}")
            with ThreadPoolExecutor(4) as pool:
                cards = sorted(pool.map(
                    lambda i: board.manage_id("card", "add", "--project", str(project), "--title", f"Lines {i}", "--agent", "bench-lines"),
                    range(1, RUNS + 1),
                ))
            say(f"{RUNS} cards added; each agent prints {RATE} lines/s for {SECONDS:g} s")
            board_url = f"{board.url}/projects/{project}/"
            with chromium() as browser:
                board_page = open_live_page(browser, board_url)
                open_live_page(browser, f"{board.url}/cards/{cards[0]}/")
                say("board page and a card page open in Chromium, websockets connected")
                sampler = RssSampler(board.web_process()).start()
                cpu = CpuWatch(board.web_process())
                probe = PageProbe(board_url).start()
                try:
                    started = time.monotonic()
                    start_all(board_page, board, len(cards))
                    say(f"all cards started in {time.monotonic() - started:.1f} s; waiting for the runs to end")
                    ended = board.wait_runs_ended(len(cards), TIMEOUT)
                    if not ended:
                        say(f"BOARD PROBLEM: runs still not ended after {TIMEOUT:.0f} s: {sorted(board.run_states())}")
                    else:
                        say(f"all runs ended {time.monotonic() - started:.1f} s after the start; "
                            f"at most {board.peak_running} seen running at once")
                    time.sleep(TAIL)
                    say(f"CPU from the start to now: {cpu.report()}")
                finally:
                    probe.stop()
                    sampler.stop()
            with ThreadPoolExecutor(8) as pool:
                finals = list(pool.map(board.card, cards))
            say(f"first card at the end: {finals[0]}")
    wrong = [c for c in finals if c["state"] != "succeeded" or c["column"] != "review"]
    for c in wrong:
        say(f"wrong final status: card {c['id']} state={c['state']} column={c['column']} error={c.get('error', '')!r}")
    if probe.failures:
        say(f"{len(probe.failures)} board page request(s) failed, e.g. {probe.failures[0]}")
    say(f"done in {time.monotonic() - began:.0f} s")
    print(f"board_requests: {len(probe.latencies_ms)} ok, {len(probe.failures)} failed")
    print(f"board_p50_ms: {percentile(probe.latencies_ms, 50):.0f}" if probe.latencies_ms else "board_p50_ms: none")
    print(f"board_p95_ms: {percentile(probe.latencies_ms, 95):.0f}" if probe.latencies_ms else "board_p95_ms: none")
    print(f"web_rss_mb_start: {sampler.first_mb:.1f}")
    print(f"web_rss_mb_max: {sampler.max_mb:.1f}")
    print(f"final_status_wrong: {len(wrong)}")


if __name__ == "__main__":
    main()
