"""The command agent: any command line run in the card's worktree, its output streamed.

Knows no Django: the runner passes the command, the worktree, the environment and callbacks.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

FLUSH_INTERVAL = 0.25  # seconds between output pushes: a few updates a second per card, not one per line
FLUSH_LINES = 1000  # or sooner, when this many lines are waiting
FLUSH_CHARS = 32_000  # or this many characters: one stored chunk of output stays small
LINE_LIMIT = 4000  # characters kept of one output line
KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL of the process group
EXIT_GRACE = 1.0  # seconds after the command ended before what it left running is killed
EXIT_DRAIN = 60.0  # seconds at most to read output still waiting after the command ended
QUEUE_LINES = 10_000  # output lines read ahead of the card's log at most


@dataclass
class CommandResult:
    """How the command ended: ``state`` is "succeeded", "failed" or "stopped"; ``summary`` its last
    output line; ``error`` the reason when it did not succeed."""

    state: str
    summary: str
    error: str
    exit_code: int | None


def spawn(command: str, cwd: str | Path, env: dict[str, str], sandbox: Sequence[str] = ()) -> subprocess.Popen:
    """Start ``command`` with ``bash -c`` in ``cwd``: stdin closed, stdout and stderr merged into
    one pipe (bytes), and a process group of its own so that it can be killed whole. ``sandbox``
    is an argv prefix that wraps bash (agents.sandbox.bwrap_prefix; empty: none). Raises
    OSError when it cannot start (a missing folder or program, say)."""
    return subprocess.Popen(
        [*sandbox, "bash", "-c", command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen, grace: float = KILL_GRACE) -> None:
    """End ``proc``'s whole process group: SIGTERM, then SIGKILL after ``grace`` seconds if the
    leader is still there, then SIGKILL again for children that ignored SIGTERM. ``grace`` 0 sends
    SIGKILL at once. Never raises for a group that is already gone."""
    signals = (signal.SIGTERM, signal.SIGKILL) if grace > 0 else (signal.SIGKILL,)
    for sig in signals:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=grace or None)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_command(
    command: str,
    cwd: str,
    env: dict[str, str],
    emit: Callable[[str, str], None],
    timeout: float,
    should_stop: Callable[[], bool] = lambda: False,
    sandbox: Sequence[str] = (),
) -> CommandResult:
    """Run ``command`` with bash in ``cwd`` and stream its output.

    stdout and stderr are merged and sent to ``emit("log", text)`` line by line, several lines per
    call at most every FLUSH_INTERVAL seconds, and at most FLUSH_LINES lines or about FLUSH_CHARS
    characters per call. stdin is closed. The command runs in its own process
    group (``start_new_session``), which is killed whole when ``timeout`` seconds pass or
    ``should_stop()`` turns true. The command is over when its own process ends: what it left
    running in its group is killed EXIT_GRACE seconds later, output still waiting is read to its
    end (EXIT_DRAIN seconds at most), and output of anything that escaped the group is left
    once it pauses for EXIT_GRACE seconds. ``sandbox`` wraps the command as :func:`spawn` says.
    Never raises for the command's own failures: a missing
    program or a non-zero exit status is a failed result with the reason.
    """
    try:
        proc = spawn(command, cwd, env, sandbox)
    except OSError as exc:
        return CommandResult("failed", "", f"could not start the command: {exc}", None)

    # Bounded, so a command that floods its output is slowed by the pipe instead of filling the
    # worker's memory.
    lines: queue.Queue[str | None] = queue.Queue(maxsize=QUEUE_LINES)

    def read() -> None:
        for raw in proc.stdout:
            lines.put(raw.decode("utf-8", "replace").rstrip("\r\n")[:LINE_LIMIT])
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    pending: list[str] = []
    pending_chars = 0
    last_line = ""
    last_flush = time.monotonic()
    reason = ""
    eof = False
    killed = False
    group_killed = False
    last_data = time.monotonic()
    exited_at: float | None = None
    while True:
        # Read until a chunk is full or nothing is waiting (a tenth of a second at most).
        try:
            line = lines.get(timeout=0.1)
            last_data = time.monotonic()
            while True:
                if line is None:
                    eof = True
                    break
                pending.append(line)
                pending_chars += len(line) + 1
                if line.strip():
                    last_line = line.strip()
                if len(pending) >= FLUSH_LINES or pending_chars >= FLUSH_CHARS:
                    break
                line = lines.get_nowait()
        except queue.Empty:
            pass
        now = time.monotonic()
        if pending and (eof or len(pending) >= FLUSH_LINES or pending_chars >= FLUSH_CHARS
                        or now - last_flush >= FLUSH_INTERVAL):
            emit("log", "\n".join(pending))
            pending, pending_chars = [], 0
            last_flush = now
        if eof:
            break
        if proc.poll() is not None:
            # The command has ended (on its own, or killed). Whatever still holds its output open
            # is something it left running: after a moment, its group is killed. Output it wrote
            # before it ended may still wait in the pipe and the queue (a fast flood outruns the
            # database): that is read to the end, while it keeps coming, for EXIT_DRAIN seconds
            # at most, so that an escaped process printing forever cannot hold the run.
            exited_at = exited_at or now
            if not group_killed and (killed or now - exited_at > EXIT_GRACE):
                kill_group(proc, grace=0)
                group_killed = True
            if killed or (group_killed and (now - last_data > EXIT_GRACE or now - exited_at > EXIT_DRAIN)):
                if pending:
                    emit("log", "\n".join(pending))
                break
        if not killed and now > deadline:
            reason = f"the command did not end within {timeout:g} s and was killed"
            kill_group(proc)
            killed = True
        elif not killed and should_stop():
            reason = "stopped"
            kill_group(proc)
            killed = True
    code = proc.wait()
    # Whatever the command left running in its group goes with it.
    kill_group(proc, grace=0)
    if reason == "stopped":
        return CommandResult("stopped", last_line, "stopped by the lead", code)
    if reason:
        return CommandResult("failed", last_line, reason, code)
    if code != 0:
        detail = f": {last_line}" if last_line else ""
        return CommandResult("failed", last_line, f"the command exited with status {code}{detail}", code)
    return CommandResult("succeeded", last_line, "", code)


MARK_VARIABLE = "BOARD_RUN_MARK"


def kill_marked(mark: str, grace: float = KILL_GRACE) -> int:
    """End every process of this user whose environment has ``BOARD_RUN_MARK=<mark>``: the
    agent's processes, including those that left its process group (``setsid``, daemons) or were
    orphaned when their worker died, since children inherit the environment. SIGTERM, then
    SIGKILL after ``grace`` seconds. Returns how many were found."""
    import psutil

    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != me and proc.environ().get(MARK_VARIABLE) == mark:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    terminate_all(found, grace)
    return len(found)


def terminate_all(procs: list, grace: float = KILL_GRACE) -> None:
    """SIGTERM every psutil process in ``procs``, then SIGKILL those still there after ``grace``
    seconds, and wait for them; processes already gone are skipped."""
    import psutil

    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
