"""Benchmark: one run printing a million lines, and the web process's memory meanwhile.

What it measures: the growth of the web process's memory (RSS of the daphne child of `manage.py
board`) while one command agent prints BENCH_LINES lines as fast as it can, with the project's
board page and the card's page open in a real browser, so every push really reaches them; and
whether that run still ends `succeeded`.

How: a temporary git repository and data folder, a board started with `manage.py board --workers
1`, a project, a command agent (`seq -f 'line %.0f of the big output' 1 N`) and a card, all added
with `manage.py`. The board page and the card page are opened in the system Chromium (websockets
connected); then the web process's RSS is sampled every 0.5 s with psutil, the card is started
with `manage.py card start`, and sampling goes on until BENCH_TAIL seconds after the run ended
(BENCH_TIMEOUT seconds at most). Growth = largest sample - first sample.

Target (issue 5): memory flat, within 20 MB of its start (web_rss_growth_mb <= 20).

Knobs (environment): BENCH_LINES (lines printed, default 1000000), BENCH_TAIL (seconds sampled
after the run ended, default 5), BENCH_TIMEOUT (seconds to wait for the run, default 900).

Run from the repository root after the README's setup: .venv/bin/python bench/big_output.py
Progress goes to stderr; stdout ends with web_rss_mb_start, web_rss_mb_max, run_state and
web_rss_growth_mb lines (MB = 2**20 bytes).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._board import (  # noqa: E402
    CpuWatch, RssSampler, chromium, knob, make_repo, open_live_page, running_board, say, stop_on_sigterm,
)

LINES = int(knob("BENCH_LINES", 1_000_000))
TAIL = float(knob("BENCH_TAIL", 5))
TIMEOUT = float(knob("BENCH_TIMEOUT", 900))


def main() -> None:
    stop_on_sigterm()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-big-") as tmp:
        root = Path(tmp)
        repo = make_repo(root)
        with running_board(root, workers=1) as board:
            project = board.manage_id("project", "add", str(repo))
            board.manage("agent", "add", "bench-seq", "--command", f"seq -f 'line %.0f of the big output' 1 {LINES}")
            card = board.manage_id("card", "add", "--project", str(project), "--title", "Big output", "--agent", "bench-seq")
            with chromium() as browser:
                open_live_page(browser, f"{board.url}/projects/{project}/")
                card_page = open_live_page(browser, f"{board.url}/cards/{card}/")
                say("board page and card page open in Chromium, websockets connected")
                sampler = RssSampler(board.web_process()).start()
                cpu = CpuWatch(board.web_process())
                try:
                    started = time.monotonic()
                    board.manage("card", "start", str(card))
                    say(f"card started; its agent prints {LINES} lines")
                    if board.wait_runs_ended(1, TIMEOUT, every=0.5):
                        say(f"the run ended {time.monotonic() - started:.1f} s after the start")
                    else:
                        say(f"BOARD PROBLEM: the run had not ended after {TIMEOUT:.0f} s")
                    time.sleep(TAIL)
                    say(f"CPU from the start to now: {cpu.report()}")
                finally:
                    sampler.stop()
                shown = card_page.locator("#log .line").count()
                say(f"the card page shows {shown} log element(s); its header says "
                    f"{card_page.locator('#card-header').get_attribute('data-state')!r}")
            final = board.card(card)
    peak_at = max(sampler.samples, key=lambda s: s[1])[0] - sampler.samples[0][0]
    say(f"final card: state={final['state']} column={final['column']} summary={final['summary']!r} error={final['error']!r}")
    say(f"{len(sampler.samples)} RSS samples; the largest {peak_at:.1f} s after the first; done in {time.monotonic() - began:.0f} s")
    print(f"web_rss_mb_start: {sampler.first_mb:.1f}")
    print(f"web_rss_mb_max: {sampler.max_mb:.1f}")
    print(f"run_state: {final['state']}")
    print(f"web_rss_growth_mb: {sampler.max_mb - sampler.first_mb:.1f}")


if __name__ == "__main__":
    main()
