"""`manage.py board`: web and workers under one parent, a cap on parallel runs, and a Ctrl-C that
leaves no process behind."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request

import psutil
from django.conf import settings

from tests.conftest import free_port, git


def manage(env, *args) -> str:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=settings.BASE_DIR, env=env, check=True, capture_output=True, text=True
    ).stdout


def card_state(env, card_id) -> dict:
    return json.loads(manage(env, "card", "show", str(card_id), "--json").strip().splitlines()[-1])


def run_states(data_dir) -> list[str]:
    """The states of all runs, read straight from the board's SQLite file (no Django start-up)."""
    with sqlite3.connect(data_dir / "board.sqlite3", timeout=30) as db:
        return sorted(row[0] for row in db.execute("SELECT state FROM board_run"))


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_board_caps_parallel_runs_and_ctrl_c_leaves_no_process(make_repo, tmp_path):
    repo = make_repo()
    port = free_port()
    marker = f"board-test-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "BOARD_DATA_DIR": str(tmp_path / "data"), "BOARD_WORKERS": "2", "BOARD_RELAY_INTERVAL": "0.1"}
    log = open(tmp_path / "board.log", "w")
    board = subprocess.Popen(
        [sys.executable, "manage.py", "board", "--port", str(port)], cwd=settings.BASE_DIR, env=env,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for(lambda: f"Board running at http://127.0.0.1:{port}/" in (tmp_path / "board.log").read_text(), 90, "the board")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as response:
            assert response.status == 200
        project = manage(env, "project", "add", str(repo)).strip().splitlines()[-1]
        # exec -a names the sleeping process, so that it can be found after the board stops.
        manage(env, "agent", "add", "sleeper", "--command", f"echo started; exec -a {marker} sleep 300")
        cards = [
            manage(env, "card", "add", "--project", project, "--title", f"Task {i}", "--agent", "sleeper").strip().splitlines()[-1]
            for i in range(3)
        ]
        for card in cards:
            manage(env, "card", "start", card)
        data = tmp_path / "data"
        wait_for(lambda: run_states(data).count("running") == 2, 60, "two running cards")
        time.sleep(2)  # the third stays queued while both workers are busy
        assert run_states(data) == ["queued", "running", "running"]
        tree = [psutil.Process(board.pid), *psutil.Process(board.pid).children(recursive=True)]
        assert sum(marker in " ".join(p.cmdline()) for p in tree if p.is_running()) == 2
        board.send_signal(signal.SIGINT)
        board.wait(timeout=30)
    finally:
        if board.poll() is None:
            os.killpg(board.pid, signal.SIGKILL)
        log.close()
    output = (tmp_path / "board.log").read_text()
    assert board.returncode == 0, output
    assert "Board stopped. 2 run(s) interrupted." in output
    left = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], output
    assert not [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    states = sorted(card_state(env, c)["state"] for c in cards)
    assert states == ["interrupted", "interrupted", "queued"]
    interrupted = [card_state(env, c) for c in cards if card_state(env, c)["state"] == "interrupted"]
    assert all("board was stopped" in c["error"] for c in interrupted)
    assert all(git(repo, "rev-parse", "--verify", c["branch"]) for c in interrupted)
