"""The command agent on its own: streaming, exit status, timeouts and the process group."""

import os
import time


from agents.command import run_command
from tests.conftest import processes_named


def collect():
    calls = []
    return calls, lambda kind, text: calls.append((kind, text))


def test_output_is_streamed_in_order_and_batched(tmp_path):
    calls, emit = collect()
    result = run_command("for i in $(seq 1 300); do echo line $i; done; echo oops >&2", str(tmp_path), dict(os.environ), emit, 30)
    assert result.state == "succeeded"
    lines = [line for kind, text in calls for line in text.split("\n")]
    assert lines == [f"line {i}" for i in range(1, 301)] + ["oops"]
    assert len(calls) < 300, "lines are sent several at a time, not one call per line"
    assert result.summary == "oops"


def test_a_nonzero_exit_fails_with_the_status_and_last_line(tmp_path):
    calls, emit = collect()
    result = run_command("echo working; echo 'no such thing' >&2; exit 3", str(tmp_path), dict(os.environ), emit, 30)
    assert result.state == "failed"
    assert result.exit_code == 3
    assert "status 3" in result.error and "no such thing" in result.error


def test_a_missing_program_fails_clearly(tmp_path):
    _, emit = collect()
    result = run_command("definitely-not-a-program-xyz --go", str(tmp_path), dict(os.environ), emit, 30)
    assert result.state == "failed"
    assert "127" in result.error and "not found" in result.error


def test_stdin_is_closed_so_a_reading_command_does_not_hang(tmp_path):
    _, emit = collect()
    started = time.monotonic()
    result = run_command("cat; echo done", str(tmp_path), dict(os.environ), emit, 20)
    assert result.state == "succeeded"
    assert time.monotonic() - started < 5


def test_a_command_that_never_ends_is_killed_with_its_whole_group(tmp_path):
    _, emit = collect()
    marker = f"sleep-{os.getpid()}-{time.monotonic_ns()}"
    # Children in the background keep running after their parent unless the group is killed.
    command = f"bash -c 'exec -a {marker} sleep 300' & bash -c 'exec -a {marker} sleep 300' & wait"
    started = time.monotonic()
    result = run_command(command, str(tmp_path), dict(os.environ), emit, timeout=1.5)
    assert result.state == "failed"
    assert "did not end within 1.5 s" in result.error
    assert time.monotonic() - started < 15
    time.sleep(0.3)
    left = processes_named(marker)
    assert left == []


def test_should_stop_ends_the_command_as_stopped(tmp_path):
    _, emit = collect()
    deadline = time.monotonic() + 1
    result = run_command("sleep 60", str(tmp_path), dict(os.environ), emit, 60, should_stop=lambda: time.monotonic() > deadline)
    assert result.state == "stopped"


def test_a_command_that_leaves_a_background_child_ends_when_it_ends(tmp_path):
    calls, emit = collect()
    marker = f"bg-{os.getpid()}-{time.monotonic_ns()}"
    started = time.monotonic()
    # The child keeps the output pipe open; the command itself is done at once.
    result = run_command(f"bash -c 'exec -a {marker} sleep 60' & echo bye", str(tmp_path), dict(os.environ), emit, timeout=30)
    assert result.state == "succeeded", result.error
    assert time.monotonic() - started < 5
    assert "bye" in "".join(text for _, text in calls)
    time.sleep(0.3)
    assert not processes_named(marker)


def test_a_child_that_escaped_the_group_does_not_hold_the_run(tmp_path):
    _, emit = collect()
    marker = f"escaped-{os.getpid()}-{time.monotonic_ns()}"
    started = time.monotonic()
    result = run_command(f"setsid bash -c 'exec -a {marker} sleep 60' & echo launched", str(tmp_path), dict(os.environ), emit, 30)
    try:
        assert result.state == "succeeded"
        assert time.monotonic() - started < 5
    finally:
        for p in processes_named(marker):
            p.kill()


def test_a_background_child_that_floods_output_is_ended_with_the_command(tmp_path):
    calls, emit = collect()
    started = time.monotonic()
    result = run_command("(while :; do echo spam; done) & echo main done", str(tmp_path), dict(os.environ), emit, timeout=30)
    assert result.state == "succeeded"
    assert time.monotonic() - started < 10


def test_stop_during_a_flood_ends_the_run_at_once(tmp_path):
    _, emit = collect()
    asked = time.monotonic() + 1
    started = time.monotonic()
    result = run_command("yes", str(tmp_path), dict(os.environ), emit, 60, should_stop=lambda: time.monotonic() > asked)
    assert result.state == "stopped"
    assert time.monotonic() - started < 8


def test_the_time_limit_holds_even_when_output_never_stops(tmp_path):
    _, emit = collect()
    started = time.monotonic()
    result = run_command("yes", str(tmp_path), dict(os.environ), emit, timeout=1.5)
    assert result.state == "failed" and "did not end within 1.5 s" in result.error
    assert time.monotonic() - started < 8
