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

from tests.conftest import free_port, git, processes_named


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


def start_board(env, port, log_path):
    board = subprocess.Popen(
        [sys.executable, "manage.py", "board", "--port", str(port)], cwd=settings.BASE_DIR, env=env,
        stdout=open(log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    wait_for(
        lambda: f"Board running at http://127.0.0.1:{port}/" in log_path.read_text() or board.poll() is not None,
        90, "the board",
    )
    assert board.poll() is None, log_path.read_text()
    return board


def stop_board(board, log_path) -> list:
    """Ctrl-C the board; returns its process tree as it was, for checking that none is left."""
    tree = [psutil.Process(board.pid), *psutil.Process(board.pid).children(recursive=True)]
    board.send_signal(signal.SIGINT)
    try:
        board.wait(timeout=30)
    finally:
        if board.poll() is None:
            os.killpg(board.pid, signal.SIGKILL)
    assert board.returncode == 0, log_path.read_text()
    return tree


def test_the_board_caps_parallel_runs_and_ctrl_c_leaves_no_process(make_repo, tmp_path):
    repo = make_repo()
    port = free_port()
    marker = f"board-test-{os.getpid()}-{time.monotonic_ns()}"
    data = tmp_path / "data"
    env = {**os.environ, "BOARD_DATA_DIR": str(data), "BOARD_WORKERS": "2", "BOARD_RELAY_INTERVAL": "0.1"}
    log_path = tmp_path / "board.log"
    board = start_board(env, port, log_path)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as response:
            assert response.status == 200
        # A second board on the same data folder, or on a port in use, is refused clearly.
        second = subprocess.run(
            [sys.executable, "manage.py", "board", "--port", str(free_port())], cwd=settings.BASE_DIR, env=env,
            capture_output=True, text=True, timeout=60,
        )
        assert second.returncode != 0 and "already running on the data folder" in second.stderr
        same_port = subprocess.run(
            [sys.executable, "manage.py", "board", "--port", str(port)], cwd=settings.BASE_DIR,
            env={**env, "BOARD_DATA_DIR": str(tmp_path / "other")}, capture_output=True, text=True, timeout=60,
        )
        assert same_port.returncode != 0 and f"Cannot listen on 127.0.0.1:{port}" in same_port.stderr
        project = manage(env, "project", "add", str(repo)).strip().splitlines()[-1]
        # exec -a names the sleeping process, so that it can be found after the board stops.
        manage(env, "agent", "add", "sleeper", "--command", f"echo started > wip.txt; exec -a {marker} sleep 300")
        cards = [
            manage(env, "card", "add", "--project", project, "--title", f"Task {i}", "--agent", "sleeper").strip().splitlines()[-1]
            for i in range(3)
        ]
        for card in cards:
            manage(env, "card", "start", card)
        wait_for(lambda: run_states(data).count("running") == 2, 60, "two running cards")
        time.sleep(2)  # the third stays queued while both workers are busy
        assert run_states(data) == ["queued", "running", "running"]
        wait_for(lambda: len(processes_named(marker)) == 2, 30, "two agents")
    finally:
        tree = stop_board(board, log_path)
    output = log_path.read_text()
    assert "Board stopped. 2 run(s) interrupted." in output
    left = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], output
    assert not processes_named(marker)
    states = {c: card_state(env, c) for c in cards}
    assert sorted(s["state"] for s in states.values()) == ["interrupted", "interrupted", "queued"]
    interrupted = [s for s in states.values() if s["state"] == "interrupted"]
    assert all("board was stopped" in s["error"] for s in interrupted)
    # Their work so far is committed on their branches as a recovery checkpoint.
    assert all(git(repo, "show", f"{s['branch']}:wip.txt") == "started\n" for s in interrupted)

    # Started again, the board hands the queued card to its workers at once.
    board = start_board(env, port, log_path)
    try:
        queued = next(c for c, s in states.items() if s["state"] == "queued")
        wait_for(lambda: card_state(env, queued)["state"] == "running", 60, "the queued card to run")
    finally:
        stop_board(board, log_path)
    assert not processes_named(marker)


def test_after_a_kill_9_of_the_board_nothing_of_it_runs_on_and_the_next_board_makes_it_right(make_repo, tmp_path):
    repo = make_repo()
    port = free_port()
    marker = f"kill9-test-{os.getpid()}-{time.monotonic_ns()}"
    data = tmp_path / "data"
    env = {**os.environ, "BOARD_DATA_DIR": str(data), "BOARD_WORKERS": "1", "BOARD_RELAY_INTERVAL": "0.1"}
    log_path = tmp_path / "board.log"
    board = start_board(env, port, log_path)

    def agents():
        return processes_named(marker)

    try:
        project = manage(env, "project", "add", str(repo)).strip().splitlines()[-1]
        manage(env, "agent", "add", "sleeper", "--command", f"echo started > wip.txt; exec -a {marker} sleep 300")
        card = manage(env, "card", "add", "--project", project, "--title", "Long", "--agent", "sleeper").strip().splitlines()[-1]
        manage(env, "card", "start", card)
        wait_for(lambda: len(agents()) == 1, 60, "the agent")
        children = psutil.Process(board.pid).children(recursive=True)
        board_processes = [p for p in children if marker not in " ".join(p.cmdline())]
        os.kill(board.pid, signal.SIGKILL)
        board.wait(10)
        # The web server and every worker process follow the board; only the agent, in a
        # session of its own, is left for the next board.
        wait_for(
            lambda: not [p for p in board_processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
            15, "the board's processes to end",
        )
        assert len(agents()) == 1
    finally:
        if board.poll() is None:
            os.killpg(board.pid, signal.SIGKILL)
    board = start_board(env, port, log_path)
    try:
        assert "Marked 1 run(s) left running by a previous board as interrupted." in log_path.read_text()
        assert agents() == []
        state = card_state(env, card)
        assert state["state"] == "interrupted"
        assert git(repo, "show", f"{state['branch']}:wip.txt") == "started\n"
    finally:
        # Closing the terminal stops the board as Ctrl-C does.
        board.send_signal(signal.SIGHUP)
        board.wait(30)
    assert board.returncode == 0, log_path.read_text()


def test_eight_parallel_runs_flooding_output_never_meet_a_locked_database(make_repo, tmp_path):
    repo = make_repo()
    port = free_port()
    data = tmp_path / "data"
    env = {**os.environ, "BOARD_DATA_DIR": str(data), "BOARD_WORKERS": "8", "BOARD_RELAY_INTERVAL": "0.1",
           "BOARD_LOG_LEVEL": "WARNING"}
    log_path = tmp_path / "board.log"
    board = start_board(env, port, log_path)
    try:
        project = manage(env, "project", "add", str(repo)).strip().splitlines()[-1]
        # 30,000 lines of 300 characters each: about 300 stored chunks per run, written as fast as
        # eight workers can, while the web process's relay reads them.
        go = tmp_path / "go"  # the floods start together once all eight run
        flood = (f"while [ ! -e '{go}' ]; do sleep 0.1; done; "
                 "python3 -c \"import sys\nfor i in range(30000): sys.stdout.write('%05d ' % i + 'v' * 294 + '\\n')\"")
        manage(env, "agent", "add", "flood", "--command", flood)
        cards = [
            manage(env, "card", "add", "--project", project, "--title", f"Flood {i}", "--agent", "flood").strip().splitlines()[-1]
            for i in range(8)
        ]
        for card in cards:
            manage(env, "card", "start", card)
        wait_for(lambda: run_states(data).count("running") == 8, 60, "the eight runs to run in parallel")
        go.touch()
        wait_for(lambda: "queued" not in run_states(data) and "running" not in run_states(data), 240, "every run to end")
    finally:
        stop_board(board, log_path)
    states = [card_state(env, c) for c in cards]
    assert [s["state"] for s in states] == ["succeeded"] * 8, [s["error"] for s in states]
    output = log_path.read_text()
    assert "database is locked" not in output.lower(), output[-3000:]
    with sqlite3.connect(data / "board.sqlite3") as db:
        lines = db.execute("SELECT SUM(LENGTH(text) - LENGTH(REPLACE(text, char(10), '')) + 1) FROM board_event WHERE kind = 'log'").fetchone()[0]
    assert lines == 8 * 30000, "every line of every run stored"
