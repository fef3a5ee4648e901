"""Benchmark: latency from an event written by a worker to the DOM updated in a real browser.

What it measures: the time from the moment a worker writes a run's "log" event (``Run.emit``) to
the moment the line shows in the card's page in Chromium, in the board's default (embedded) mode
and in Redis mode.

How: for each mode it starts a board of its own (`manage.py board`, one worker, a temporary data
folder and git repository; Redis mode adds REDIS_URL to the board's environment), adds a project,
a command agent and a card with `manage.py`, and opens the card's page (/cards/ID/) in the system
Chromium with a MutationObserver on the whole document that records ``Date.now()`` the first time
each marker text appears in an added node. Then this process acts as a worker: with
DJANGO_SETTINGS_MODULE=config.settings and the board's BOARD_DATA_DIR (and REDIS_URL), it creates
a Run in state running for the card, waits until a first event round-trips to the page, and emits
BENCH_EVENTS log events, one every BENCH_INTERVAL seconds, each with a unique marker, recording
``time.time()`` just before each emit. Latency = DOM time - write time (one machine, one clock).
Each mode runs in a child process of its own (`--mode default|redis`), since Django reads its
settings once per process. A marker that never shows within 10 s of the last emit is counted as
missing and left out of the percentiles.

Redis mode counts only when it is real: Redis must answer on BENCH_REDIS_URL and the settings must
make the channel layer channels_redis when REDIS_URL is set. Otherwise, or when no event reaches
the page, the last line is ``p95_ms_redis: unavailable (<reason>)``.

Targets (issue 5): p95 <= 300 ms in the default mode, <= 100 ms in Redis mode.

The events are spaced wider than the board's deliberate coalescing (consumers.CARD_PUSH_GAP: a
card is pushed at most five times a second, what comes sooner is folded into the next push), so
the figure is the pipeline's latency; at a faster BENCH_INTERVAL it includes that wait by design.

Knobs (environment): BENCH_EVENTS (events per mode, default 100), BENCH_INTERVAL (seconds between
events, default 0.5), BENCH_REDIS_URL (default redis://127.0.0.1:6379/5; that database is emptied
first).

Run from the repository root after the README's setup: .venv/bin/python bench/live_latency.py
Progress goes to stderr; stdout ends with p50_ms_default, p50_ms_redis, p95_ms_default and
p95_ms_redis lines (milliseconds).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._board import (  # noqa: E402
    open_live_page, chromium, knob, make_repo, percentile, running_board, say, stop_on_sigterm,
)

EVENTS = int(knob("BENCH_EVENTS", 100))
INTERVAL = float(knob("BENCH_INTERVAL", 0.5))
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
ROUND_TRIP_TIMEOUT = 30.0  # seconds for the first event to reach the page
STRAGGLER_WAIT = 10.0  # seconds after the last emit for markers still on their way

# Records when each marker "bench-mark-<name>-end" first appears in the document.
OBSERVER = r"""
window.__benchSeen = {};
new MutationObserver(function (mutations) {
  var now = Date.now();
  for (var i = 0; i < mutations.length; i++) {
    var added = mutations[i].addedNodes;
    for (var j = 0; j < added.length; j++) {
      var text = added[j].textContent;
      if (!text || text.indexOf("bench-mark-") < 0) continue;
      var found = text.matchAll(/bench-mark-(\w+)-end/g);
      for (var m of found) if (!(m[1] in window.__benchSeen)) window.__benchSeen[m[1]] = now;
    }
  }
}).observe(document, {childList: true, subtree: true});
"""


class Unavailable(Exception):
    """This mode cannot be measured here; the message says why, in a few words."""


def redis_answers(url: str) -> bool:
    """Whether a Redis server answers PING at ``url`` (redis://host:port/db), without a client
    library."""
    parts = urlparse(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def flush_redis_db(url: str) -> None:
    """Empty the Redis database ``url`` names (left from an earlier run, its channel groups would
    hold dead consumers)."""
    parts = urlparse(url)
    db = (parts.path or "/0").strip("/") or "0"
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 2) as s:
        s.sendall(f"SELECT {db}\r\nFLUSHDB\r\n".encode())
        time.sleep(0.1)
        s.recv(256)


def start_run(card_id: int):
    """As a worker would: a Run of the card in state running, claimed by this process (so the
    board's reconciler sees a live worker), made the card's current run, the card in In Progress.
    Returns the Run."""
    from django.db import transaction
    from django.utils import timezone

    from board.models import Card, Column, Run, RunState

    with transaction.atomic():
        card = Card.objects.select_related("agent").get(pk=card_id)
        run = Run.objects.create(
            card=card, agent=card.agent, state=RunState.RUNNING, started_at=timezone.now(),
            worker_host=socket.gethostname(), worker_pid=os.getpid(), budget=card.budget(),
        )
        card.current_run = run
        card.save(update_fields=["current_run", "updated_at"])
        card.move_to(Column.IN_PROGRESS)
        run.emit("state", "running")
    return run


def emit_timed(run, text: str) -> float:
    """Emit one log event; returns the wall-clock time just before the write, in ms since the epoch."""
    written = time.time() * 1000
    run.emit("log", text)
    return written


def finish(run) -> None:
    """End the benchmark's run as a worker would, and let go of this thread's database connection."""
    from django.db import connection

    run.finish("succeeded", summary="Latency benchmark done.")
    connection.close()


def measure(mode: str) -> dict:
    """One mode's figures: ``{"p50": ms, "p95": ms, "events": n, "missing": n}``. Raises
    Unavailable when the mode cannot be measured."""
    extra_env = {}
    if mode == "redis":
        if not redis_answers(REDIS_URL):
            raise Unavailable(f"no Redis answers at {REDIS_URL}")
        extra_env["REDIS_URL"] = REDIS_URL
    with tempfile.TemporaryDirectory(prefix=f"bench-latency-{mode}-") as tmp:
        root = Path(tmp)
        repo = make_repo(root)
        # This process writes events as a worker does: the same settings and database as the board.
        os.environ.pop("REDIS_URL", None)
        os.environ.update(DJANGO_SETTINGS_MODULE="config.settings", BOARD_DATA_DIR=str(root / "data"), **extra_env)
        import django

        django.setup()
        from django.conf import settings

        backend = settings.CHANNEL_LAYERS["default"]["BACKEND"]
        if mode == "redis":
            if "redis" not in backend.lower():
                raise Unavailable(f"settings ignore REDIS_URL: the channel layer is {backend.rsplit('.', 1)[-1]}")
            flush_redis_db(REDIS_URL)
        with running_board(root, workers=1, extra_env=extra_env) as board:
            project = board.manage_id("project", "add", str(repo))
            board.manage("agent", "add", "bench-idle", "--command", "true")
            card = board.manage_id("card", "add", "--project", str(project), "--title", "Latency", "--agent", "bench-idle")
            with chromium() as browser:
                page = open_live_page(browser, f"{board.url}/cards/{card}/", init_script=OBSERVER)
                say(f"card page open, websocket connected ({mode} mode, channel layer {backend.rsplit('.', 1)[-1]})")
                # Playwright's sync API keeps an event loop on this thread, where Django refuses
                # database calls (and Redis publishing its async_to_sync): the "worker" writes
                # from a thread of its own.
                worker = ThreadPoolExecutor(1, thread_name_prefix="bench-worker")
                run = worker.submit(start_run, card).result()
                # A first event must round-trip before anything is timed.
                worker.submit(run.emit, "log", "bench-mark-warmup-end").result()
                try:
                    page.wait_for_function("'warmup' in window.__benchSeen", timeout=ROUND_TRIP_TIMEOUT * 1000)
                except Exception as exc:  # Playwright's TimeoutError
                    raise Unavailable(f"no event reached the page within {ROUND_TRIP_TIMEOUT:.0f} s") from exc
                say(f"first event round-tripped; emitting {EVENTS} events, one every {INTERVAL * 1000:.0f} ms")
                written: dict[str, float] = {}
                next_at = time.monotonic()
                for i in range(EVENTS):
                    next_at += INTERVAL
                    written[str(i)] = worker.submit(emit_timed, run, f"bench-mark-{i}-end").result()
                    time.sleep(max(0.0, next_at - time.monotonic()))
                deadline = time.monotonic() + STRAGGLER_WAIT
                seen: dict[str, float] = {}
                while time.monotonic() < deadline:
                    seen = page.evaluate("window.__benchSeen")
                    if all(k in seen for k in written):
                        break
                    time.sleep(0.2)
                worker.submit(finish, run).result()
                worker.shutdown()
    latencies = [seen[k] - t for k, t in written.items() if k in seen]
    missing = len(written) - len(latencies)
    if not latencies:
        raise Unavailable(f"none of the {len(written)} events reached the page")
    result = {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95), "events": len(latencies),
              "missing": missing, "min": min(latencies), "max": max(latencies)}
    say(f"{mode}: {json.dumps({k: round(v, 1) for k, v in result.items()})}")
    return result


def child(mode: str) -> None:
    """``--mode``: measure one mode in this process; print its result as one JSON line on stdout."""
    stop_on_sigterm()
    try:
        result = measure(mode)
    except Unavailable as exc:
        result = {"unavailable": str(exc)}
    print(json.dumps(result), flush=True)


def run_mode(mode: str) -> dict:
    """Measure ``mode`` in a child process; its result, or ``{"unavailable": reason}`` when the
    child failed without one."""
    proc = subprocess.run([sys.executable, __file__, "--mode", mode], stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"unavailable": f"the {mode} measurement failed (exit status {proc.returncode}; see stderr)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["default", "redis"], help="measure one mode only (used internally)")
    args = parser.parse_args()
    if args.mode:
        child(args.mode)
        return
    stop_on_sigterm()
    results = {mode: run_mode(mode) for mode in ("default", "redis")}
    for mode, result in results.items():
        if "missing" in result:
            print(f"events_{mode}: {result['events']} shown, {result['missing']} missing")
    figures = {}
    for mode, result in results.items():
        if "unavailable" in result:
            figures[mode] = {"p50": f"unavailable ({result['unavailable']})", "p95": f"unavailable ({result['unavailable']})"}
        else:
            figures[mode] = {"p50": f"{result['p50']:.0f}", "p95": f"{result['p95']:.0f}"}
    print(f"p50_ms_default: {figures['default']['p50']}")
    print(f"p50_ms_redis: {figures['redis']['p50']}")
    print(f"p95_ms_default: {figures['default']['p95']}")
    print(f"p95_ms_redis: {figures['redis']['p95']}")


if __name__ == "__main__":
    main()
