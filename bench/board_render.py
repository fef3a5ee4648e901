"""Benchmark: a board of 1,000 cards, on the server, over the websocket and in a real browser.

What it does: starts a board the way the README does (`manage.py board`, bench/_board.py) on a
free port with a data folder and repository of its own, then seeds one project with BENCH_CARDS
cards straight through the ORM, in this process (the board's settings and SQLite file): a mix of
every column and state, most with a run (steps, tokens, cost, a budget, a stored conversation of
BENCH_STATE_KB kilobytes, as the built-in agent keeps), labels on some. Of them, BENCH_RUNNING
runs are running, claimed by this process (so the board's reconciler sees a live worker).

It measures:

- **Server render**: BENCH_REQUESTS GETs of the board page (after a few to warm up), one after
  another; p50 and p95 in ms. Also the number of SQL queries one render makes, in this process
  (the same view, CaptureQueriesContext), which must not grow with the number of cards.
- **Update size**: what BoardConsumer sends for one card (its own render function, run here for
  every card, in place and moved) and, in the browser phase below, the largest websocket frame
  the page received other than the whole board sent on (re)connect; the larger of the two.
- **Page load** in the system Chromium (Playwright): BENCH_LOADS fresh loads of the board; per
  load, ``performance.now()`` at the load event (every card is server-rendered, so the last card
  is in the DOM and shown by then; the script checks that it is and that all cards are there).
  Cards far from the screen are not laid out until scrolled to (``content-visibility: auto``), so
  after the timed load the script also scrolls to the last card and checks that its title is laid
  out on screen. The figure is the median; all loads are printed.
- **Responsiveness while updates arrive**: with the page open and live, this process acts as the
  workers of the running cards for BENCH_UPDATE_SECONDS: every BENCH_UPDATE_GAP seconds the next
  running card takes a step (steps, tokens and cost grow, a "step" event). A PerformanceObserver
  for "longtask" records long tasks; printed are their number and the longest during the updates
  (target: none over 200 ms).

Targets (issue 7): p95 <= 150 ms; one card's update <= 4 KB; page load <= 500 ms; no long task
over 200 ms while 50 cards push. The machine's cores may be shared: figures are noisy.

Knobs (environment): BENCH_CARDS (1000), BENCH_RUNNING (50), BENCH_REQUESTS (50), BENCH_LOADS (5),
BENCH_UPDATE_SECONDS (10), BENCH_UPDATE_GAP (0.02), BENCH_STATE_KB (20).

Run from the repository root after the README's setup: .venv/bin/python bench/board_render.py
Progress goes to stderr; stdout ends with p95_ms_1000_cards, update_bytes_max and
page_load_ms_1000_cards.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._board import (  # noqa: E402
    LONG_TASK_OBSERVER, chromium, knob, make_repo, percentile, running_board, say, stop_on_sigterm,
    use_board_database,
)

CARDS = int(knob("BENCH_CARDS", 1000))
RUNNING = int(knob("BENCH_RUNNING", 50))
REQUESTS = int(knob("BENCH_REQUESTS", 50))
LOADS = int(knob("BENCH_LOADS", 5))
UPDATE_SECONDS = float(knob("BENCH_UPDATE_SECONDS", 10))
UPDATE_GAP = float(knob("BENCH_UPDATE_GAP", 0.02))
STATE_KB = int(knob("BENCH_STATE_KB", 20))
WARM_UP = 3  # requests before the timed ones (templates compiled, caches filled)

# Records the load event: its time and whether every card is in the DOM and the last one shown.
LOAD_PROBE = r"""
window.addEventListener("load", function () {
  var cards = document.querySelectorAll("article.card");
  var last = cards[cards.length - 1];
  var nav = performance.getEntriesByType("navigation")[0] || {};
  window.__loaded = {ms: performance.now(), cards: cards.length, ttfb: nav.responseStart, body: nav.responseEnd,
                     dcl: nav.domContentLoadedEventStart,
                     lastShown: !!last && (last.checkVisibility ? last.checkVisibility() : last.offsetParent !== null)};
});
"""

# After the timed load: scroll to the last card and wait two frames; true when its title is laid
# out, non-empty, within the screen.
SCROLLED_TO_LAST = r"""
() => new Promise((done) => {
  var cards = document.querySelectorAll("article.card"), last = cards[cards.length - 1];
  last.scrollIntoView({block: "center"});
  requestAnimationFrame(() => requestAnimationFrame(() => {
    var title = last.querySelector(".card-title"), box = title && title.getBoundingClientRect();
    done(!!box && box.height > 0 && box.bottom > 0 && box.top < innerHeight && title.textContent.trim() !== ""
         && (!last.checkVisibility || last.checkVisibility({contentVisibilityAuto: true})));
  }));
})
"""

WORDS = ("parser", "login page", "flaky test", "cache", "migrations", "docs", "API client", "search",
         "settings page", "CSV export", "dark mode", "retry logic", "rate limiter", "webhooks")
LABELS = (["bug"], ["frontend"], ["backend", "bug"], ["docs"], [], [], ["perf"], ["frontend", "a11y"])


def seed(repo: Path) -> tuple[int, list[int]]:
    """One project with CARDS cards in every column and state, made through the ORM. Returns the
    project's id and the ids of the RUNNING runs left running (claimed by this process)."""
    from django.db import transaction
    from django.utils import timezone

    from board.models import Agent, Card, Column, Project, Run, RunState

    agent = Agent.objects.filter(kind=Agent.Kind.BUILTIN).first() or Agent.objects.create(
        name="built-in", kind=Agent.Kind.BUILTIN, model="openai/gpt-4o-mini")
    project = Project.objects.create(name="Bench", repo_path=str(repo), base_branch="main")
    conversation = {"messages": [{"role": "user", "content": "x" * 1000}] * max(1, STATE_KB), "budget_base": {}}
    now = timezone.now()
    budget = {"steps": 40, "cost": 2.0, "minutes": 60}
    # (column, run state or None, how many per 20 cards): the rest are idle Backlog cards.
    mix = [(Column.IN_PROGRESS, RunState.RUNNING, RUNNING), (Column.IN_PROGRESS, RunState.QUEUED, 20),
           (Column.IN_PROGRESS, RunState.AWAITING_APPROVAL, 20), (Column.REVIEW, RunState.SUCCEEDED, 200),
           (Column.REVIEW, RunState.FAILED, 60), (Column.BACKLOG, RunState.INTERRUPTED, 30),
           (Column.DONE, RunState.SUCCEEDED, 200)]
    plan = [item for column, state, n in mix for item in [(column, state)] * n]
    plan += [(Column.BACKLOG, None)] * max(0, CARDS - len(plan))
    plan = plan[:CARDS]
    running = []
    with transaction.atomic():
        cards = Card.objects.bulk_create([
            Card(project=project, agent=agent, column=column, position=i,
                 title=f"Fix the {WORDS[i % len(WORDS)]} ({i})", labels=LABELS[i % len(LABELS)],
                 prompt="Make it so, and add a test that shows it. " * 5,
                 landed_commit="0123456789abcdef0123456789abcdef01234567" if column == Column.DONE else "")
            for i, (column, state) in enumerate(plan)
        ])
        runs = []
        for i, (card, (column, state)) in enumerate(zip(cards, plan)):
            if state is None:
                continue
            ended = state not in (RunState.RUNNING, RunState.QUEUED, RunState.AWAITING_APPROVAL)
            runs.append(Run(
                card=card, agent=agent, state=state, budget=budget, steps=i % 37, tokens=1234 * (i % 37),
                cost=0.0042 * (i % 37), agent_state=conversation, queued_at=now,
                started_at=None if state == RunState.QUEUED else now, ended_at=now if ended else None,
                last_line=f"Step {i % 37}: run_command pytest tests/test_{WORDS[i % len(WORDS)].replace(' ', '_')}.py",
                summary="Fixed it and added a test; everything passes." if state == RunState.SUCCEEDED else "",
                error="The check command failed: 3 tests failed." if state == RunState.FAILED else "",
                pending={"kind": "question", "detail": "Which of the two APIs should I keep?"}
                if state == RunState.AWAITING_APPROVAL else None,
                worker_host=socket.gethostname() if state == RunState.RUNNING else "",
                worker_pid=os.getpid() if state == RunState.RUNNING else None,
            ))
        Run.objects.bulk_create(runs)
        for run in runs:
            Card.objects.filter(pk=run.card_id).update(current_run=run)
            if run.state == RunState.RUNNING:
                running.append(run.pk)
    return project.pk, running


def server_times(url: str) -> list[float]:
    """REQUESTS timed GETs of ``url`` (ms), after WARM_UP untimed ones."""
    times = []
    for i in range(WARM_UP + REQUESTS):
        began = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as response:
            body = response.read()
        if i >= WARM_UP:
            times.append((time.perf_counter() - began) * 1000)
    say(f"board page: {len(body):,} bytes")
    return times


def queries_per_render(project_id: int) -> int:
    """SQL queries of one render of the board page, in this process."""
    from django.contrib.auth.models import AnonymousUser
    from django.db import connection
    from django.test.client import RequestFactory
    from django.test.utils import CaptureQueriesContext

    from board.views import board

    request = RequestFactory().get(f"/projects/{project_id}/")
    request.user = AnonymousUser()  # as the login middleware leaves it for the local user
    with CaptureQueriesContext(connection) as queries:
        board(request, project_id)
    return len(queries)


def rendered_update_max() -> int:
    """The largest message BoardConsumer's card render makes for any card (in place or moved),
    in bytes."""
    from board.consumers import BoardConsumer
    from board.models import Card

    render = BoardConsumer.__dict__["_render_card"].func  # the function under database_sync_to_async
    largest = 0
    for card_id, project_id in Card.objects.values_list("pk", "project_id"):
        holder = type("Consumer", (), {"project_id": project_id})()
        for moved in (False, True):
            largest = max(largest, len(render(holder, card_id, moved=moved).encode()))
    return largest


def work(run_ids: list[int], seconds: float, done: threading.Event) -> int:
    """Act as the running cards' workers for ``seconds``: the next card takes a step every
    UPDATE_GAP seconds. Returns how many steps were written."""
    from django.db import connection
    from django.db.models import F

    from board.models import Run

    runs = list(Run.objects.filter(pk__in=run_ids))
    steps = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and not done.is_set():
            run = runs[steps % len(runs)]
            Run.objects.filter(pk=run.pk).update(steps=F("steps") + 1, tokens=F("tokens") + 1500, cost=F("cost") + 0.003)
            run.emit("step", f"Step {steps}: read_file board/views.py")
            steps += 1
            time.sleep(UPDATE_GAP)
    finally:
        connection.close()
    return steps


def main() -> None:
    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="bench-board-render-") as tmp:
        root = Path(tmp)
        repo = make_repo(root)
        with running_board(root, workers=1) as board:
            use_board_database(board.data_dir)
            began = time.monotonic()
            project_id, running = seed(repo)
            say(f"seeded {CARDS} cards ({len(running)} running) in {time.monotonic() - began:.1f} s")
            url = f"{board.url}/projects/{project_id}/"

            times = server_times(url)
            say(f"server render: p50 {statistics.median(times):.1f} ms, max {max(times):.1f} ms over {len(times)} requests")
            queries = queries_per_render(project_id)
            rendered = rendered_update_max()
            say(f"one render of the board: {queries} SQL queries; largest card update rendered: {rendered:,} bytes")

            with chromium() as browser:
                loads = []
                for _ in range(LOADS):
                    context = browser.new_context(viewport={"width": 1400, "height": 900})
                    page = context.new_page()
                    page.add_init_script(LOAD_PROBE)
                    page.goto(url, wait_until="load", timeout=60_000)
                    page.wait_for_function("window.__loaded", timeout=60_000)
                    probe = page.evaluate("window.__loaded")
                    if probe["cards"] != CARDS or not probe["lastShown"]:
                        say(f"PROBLEM: at the load event {probe['cards']} cards, last shown: {probe['lastShown']}")
                    if not page.evaluate(SCROLLED_TO_LAST):
                        say("PROBLEM: the last card's title is not laid out on screen once scrolled to")
                    loads.append(probe["ms"])
                    say(f"load: first byte {probe['ttfb']:.0f} ms, last byte {probe['body']:.0f} ms, "
                        f"DOMContentLoaded {probe['dcl']:.0f} ms, load {probe['ms']:.0f} ms")
                    context.close()
                say("page loads (ms): " + ", ".join(f"{ms:.0f}" for ms in loads))

                context = browser.new_context(viewport={"width": 1400, "height": 900})
                page = context.new_page()
                page.add_init_script(LONG_TASK_OBSERVER)
                frames: list[int] = []

                def on_socket(ws):
                    ws.on("framereceived", lambda payload: frames.append(
                        len(payload.encode() if isinstance(payload, str) else payload)
                        if 'id="columns"' not in (payload if isinstance(payload, str) else "") else -1))

                page.on("websocket", on_socket)
                page.on("console", lambda msg: say(f"console: {msg.text[:200]}") if msg.type == "error" else None)
                page.goto(url, timeout=60_000)
                page.wait_for_selector("#ws-status.ok", timeout=60_000)
                page.wait_for_timeout(2000)  # the whole board sent on connect is swapped in
                window_start = page.evaluate("performance.now()")
                done = threading.Event()
                result: dict = {}
                worker = threading.Thread(target=lambda: result.update(steps=work(running, UPDATE_SECONDS, done)))
                worker.start()
                try:
                    while worker.is_alive():
                        page.wait_for_timeout(200)  # lets Playwright deliver the frames meanwhile
                finally:
                    done.set()
                    worker.join()
                page.wait_for_timeout(1000)
                window_end = page.evaluate("performance.now()")
                tasks = page.evaluate("window.__longTasks")
                context.close()

            card_frames = [n for n in frames if n >= 0]
            say(f"frames: {len(frames)} in all, {frames.count(-1)} of the whole board")
            say(f"updates: {result.get('steps', 0)} steps written, {len(card_frames)} card frames received, "
                f"largest {max(card_frames, default=0):,} bytes")
            if tasks is None:
                print("long_tasks_during_updates: unavailable (no longtask observer)")
            else:
                during = [d for start, d in tasks if window_start <= start <= window_end]
                print(f"long_tasks_during_updates: {len(during)}")
                print(f"long_task_max_ms_during_updates: {max(during, default=0):.0f}")
                print(f"long_tasks_over_200ms_during_updates: {sum(1 for d in during if d > 200)}")
                print(f"long_task_max_ms_whole_visit: {max((d for _, d in tasks), default=0):.0f}")
            print(f"queries_per_board_render: {queries}")
            print(f"p50_ms_1000_cards: {statistics.median(times):.0f}")
            print(f"p95_ms_1000_cards: {percentile(times, 95):.0f}")
            print(f"update_bytes_max: {max(rendered, max(card_frames, default=0))}")
            print(f"page_load_ms_1000_cards: {statistics.median(loads):.0f}")


if __name__ == "__main__":
    main()
