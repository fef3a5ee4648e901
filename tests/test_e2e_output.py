"""The browser tests' output folder: each session's board log has a name of its own, and a
session cleaning the folder at its start leaves the logs of sessions still running alone."""

import os
import subprocess
import sys

from tests.e2e import conftest as e2e


def test_a_sessions_board_log_is_named_for_that_session_under_the_output_folder(tmp_path):
    path = e2e.session_log(tmp_path)
    assert path.parent == tmp_path and path.suffix == ".log"
    assert path.name.startswith("board-") and path.stem.endswith(f"-{os.getpid()}")
    assert e2e.session_log(tmp_path, "login-board").name == f"login-board-{e2e.SESSION}.log"
    assert e2e.OUTPUT_DIR.parts[-2:] == ("test-output", "e2e")  # where CI collects artifacts


def test_two_sessions_at_once_get_two_board_logs():
    code = "from tests.e2e import conftest as c; from pathlib import Path; print(c.session_log(Path('.')).name)"
    names = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
             for _ in range(2)}
    assert len(names) == 2, names


def test_cleaning_the_output_folder_spares_the_logs_of_sessions_still_running(tmp_path, monkeypatch):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f"board-20260101-000000-{other.pid}.log"
        dead = tmp_path / "board-20260101-000000-999999999.log"
        old_fixed = tmp_path / "board.log"
        shot = tmp_path / "board.png"
        for path in (live, dead, old_fixed, shot):
            path.write_text("x")
        monkeypatch.setattr(e2e, "OUTPUT_DIR", tmp_path)
        e2e.output_dir.__wrapped__()
        assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]
    finally:
        other.kill()
        other.wait()
