"""Tools of the built-in agent, each confined to one worktree folder.

Every tool is a plain function ``tool(root: Path, **arguments) -> str``: ``root`` is the
worktree, the keyword arguments are what the model sent, and the string goes back to the
model as the tool's result. A tool that cannot do what was asked raises :class:`ToolError`,
whose message also goes back to the model (so it can correct itself).
:func:`execute_tool` is the one entry point the agent loop uses: it never raises.

This module knows nothing of Django, of the board or of the model provider.
"""

from __future__ import annotations

import collections
import difflib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from agents.command import kill_group, spawn
from agents.secrets import command_environment

__all__ = [
    "ToolError",
    "resolve_inside",
    "scrubbed_env",
    "list_files",
    "read_file",
    "search_files",
    "write_file",
    "edit_file",
    "run_command",
    "run_shell",
    "show_diff",
    "ask_lead",
    "finish",
    "temp_index_git",
    "cap_middle",
    "changed_paths",
    "syntax_errors",
    "preview_change",
    "needs_approval",
    "TOOLS",
    "TOOL_SCHEMAS",
    "READ_ONLY_TOOLS",
    "READ_ONLY_TOOL_SCHEMAS",
    "execute_tool",
    "describe_call",
]

LIST_LIMIT = 500
READ_MAX_LINES = 2000
READ_MAX_BYTES = 200_000
SEARCH_LIMIT = 200
OUTPUT_HEAD = 8_000
OUTPUT_TAIL = 8_000
DEFAULT_COMMAND_TIMEOUT = 120
# A model asking for an hour would hold a worker that long; longer jobs belong elsewhere.
MAX_COMMAND_TIMEOUT = 1800
# Once the command's shell has exited, how long to wait for the rest of its output.
DRAIN_GRACE = 2.0



class ToolError(Exception):
    """A tool refused or failed; ``str(e)`` is written for the model and sent back to it."""


# --------------------------------------------------------------------------- paths


def resolve_inside(root: Path, rel: str) -> Path:
    """Return the absolute, symlink-free path of ``rel`` inside the worktree ``root``.

    ``rel`` must be relative to ``root``. Raises :class:`ToolError` for an absolute path, a
    path that leaves ``root`` (through ``..`` or through a symbolic link pointing outside,
    at any depth), a path into the ``.git`` folder (or a worktree's ``.git`` file), or a
    path the operating system cannot represent. The path need not exist.
    """
    if not isinstance(rel, str):
        raise ToolError(f"path must be a string, got {type(rel).__name__}")
    if "\x00" in rel:
        raise ToolError("path contains a NUL byte")
    text = rel.strip() or "."
    if text.startswith("~"):
        # A model writing ~/x means its home folder, which is outside the worktree.
        raise ToolError(f"{rel!r}: paths must be relative to the worktree root, not to a home folder")
    candidate = Path(text)
    if candidate.is_absolute():
        raise ToolError(f"{rel!r} is an absolute path; give a path relative to the worktree root")
    root_resolved = Path(root).resolve()
    try:
        # resolve() follows every link on the way, so a link inside the worktree pointing
        # outside is caught by the containment check below.
        target = (root_resolved / candidate).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop on older Pythons
        raise ToolError(f"{rel!r}: cannot resolve path ({exc})") from None
    if not target.is_relative_to(root_resolved):
        raise ToolError(f"{rel!r} resolves outside the worktree; only files inside it can be used")
    inner = target.relative_to(root_resolved).parts
    if ".git" in inner or ".git" in candidate.parts:
        raise ToolError(f"{rel!r} is inside .git; the repository's internals are off limits")
    return target


def _display(root: Path, path: Path) -> str:
    rel = path.relative_to(Path(root).resolve()).as_posix()
    return rel or "."


# --------------------------------------------------------------------------- env


def scrubbed_env(extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment for commands the agent runs: :func:`agents.secrets.command_environment`
    (the one rule: no board settings, no secret-looking variable, no git redirection) with no
    model key, plus settings that keep tools from waiting on a terminal that is not there, plus
    ``extra_env`` (applied last, so what the runner deliberately gives survives).
    """
    return command_environment(None, {"GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "PAGER": "cat", **(extra_env or {})})


# --------------------------------------------------------------------------- helpers


def _git(root: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", *args],
        cwd=root,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        env=scrubbed_env(),
    )


def cap_middle(text: str, head: int = OUTPUT_HEAD, tail: int = OUTPUT_TAIL) -> str:
    """``text`` with only its first ``head`` and last ``tail`` characters kept, and a line saying
    how many were cut between them (``text`` itself when it is short enough)."""
    if len(text) <= head + tail:
        return text
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} characters cut ...]\n{text[-tail:]}"


def _read_text(path: Path, rel: str) -> str:
    if not path.exists():
        raise ToolError(f"{rel}: no such file")
    if path.is_dir():
        raise ToolError(f"{rel} is a directory; use list_files to see what it contains")
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise ToolError(f"{rel} looks like a binary file ({len(data)} bytes); it cannot be shown as text")
    return data.decode("utf-8", errors="replace")


def _numbered(lines: list[str], first: int) -> str:
    return "\n".join(f"{n:>6}\t{line}" for n, line in enumerate(lines, start=first))


# --------------------------------------------------------------------------- tools


def list_files(root: Path, path: str = ".") -> str:
    """List files under ``path`` (default the whole worktree), one relative path a line.

    Tracked and untracked files are listed, ignored ones (``.gitignore``) are not; the list is
    capped at :data:`LIST_LIMIT` entries followed by a count of the rest. Raises
    :class:`ToolError` for a path outside the worktree or a git failure.
    """
    target = resolve_inside(root, path)
    if not target.exists():
        raise ToolError(f"{path}: no such file or directory")
    rel = _display(root, target)
    proc = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", rel)
    if proc.returncode != 0:
        raise ToolError(f"git ls-files failed: {proc.stderr.decode(errors='replace').strip()[:500]}")
    # --cached still lists files deleted from the working tree; the model cannot read those.
    names = sorted({n for n in proc.stdout.decode(errors="replace").split("\0") if n and (Path(root) / n).exists()})
    if not names:
        return f"no files under {rel}"
    shown = names[:LIST_LIMIT]
    out = "\n".join(shown)
    if len(names) > LIST_LIMIT:
        out += f"\n[... and {len(names) - LIST_LIMIT} more files; list a subfolder to see them]"
    return out


def read_file(root: Path, path: str, start_line: int | None = None, end_line: int | None = None) -> str:
    """Return the lines of a text file, numbered from 1, as ``"<n>\\t<line>"`` rows.

    ``start_line`` and ``end_line`` are 1-based and inclusive (both optional). At most
    :data:`READ_MAX_LINES` lines and about :data:`READ_MAX_BYTES` bytes are returned; when more
    was asked for, a last line says what was cut and how to read on. Raises :class:`ToolError`
    for a missing, binary or out-of-bounds file, or a bad range.
    """
    target = resolve_inside(root, path)
    text = _read_text(target, path)
    lines = text.splitlines()
    total = len(lines)
    if total == 0:
        return f"{path} is empty"
    try:
        start = 1 if start_line is None else int(start_line)
        end = total if end_line is None else int(end_line)
    except (TypeError, ValueError):
        raise ToolError("start_line and end_line must be integers") from None
    start = max(start, 1)
    end = min(end, total)
    if start > total:
        raise ToolError(f"{path} has only {total} lines; start_line {start} is past the end")
    if end < start:
        raise ToolError(f"end_line {end} is before start_line {start}")
    chosen = lines[start - 1 : end]
    kept: list[str] = []
    size = 0
    for line in chosen[:READ_MAX_LINES]:
        size += len(line) + 1
        if size > READ_MAX_BYTES and kept:
            break
        kept.append(line if len(line) <= READ_MAX_BYTES else line[:READ_MAX_BYTES] + " [line cut]")
    out = _numbered(kept, start)
    last = start + len(kept) - 1
    if last < end:
        out += (
            f"\n[cut: showed lines {start}-{last} of {total} (limit {READ_MAX_LINES} lines / "
            f"{READ_MAX_BYTES // 1000} KB); read on with start_line={last + 1}]"
        )
    return out


def search_files(root: Path, pattern: str, path: str = ".") -> str:
    """Search tracked and untracked (not ignored) text files for a regular expression.

    ``pattern`` is a POSIX extended regular expression (``git grep -E``); the answer is
    ``path:line:text`` rows, capped at :data:`SEARCH_LIMIT` with a count of the rest, or
    ``"no matches"``. Raises :class:`ToolError` for a bad pattern or path.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ToolError("pattern must be a non-empty string")
    target = resolve_inside(root, path)
    rel = _display(root, target)
    proc = _git(root, "grep", "--untracked", "-n", "-I", "-E", "--no-color", "-e", pattern, "--", rel)
    if proc.returncode == 1:
        return "no matches"
    if proc.returncode != 0:
        raise ToolError(f"search failed: {proc.stderr.decode(errors='replace').strip()[:500]}")
    rows = proc.stdout.decode(errors="replace").splitlines()
    rows = [r if len(r) <= 500 else r[:500] + " [cut]" for r in rows]
    out = "\n".join(rows[:SEARCH_LIMIT])
    if len(rows) > SEARCH_LIMIT:
        out += f"\n[... and {len(rows) - SEARCH_LIMIT} more matches; narrow the pattern or the path]"
    return out


def write_file(root: Path, path: str, content: str) -> str:
    """Write ``content`` (UTF-8 text) to ``path``, replacing the file and creating parent folders.

    Returns a one-line confirmation. Raises :class:`ToolError` for a bad path or a directory.
    """
    if not isinstance(content, str):
        raise ToolError("content must be a string")
    target = resolve_inside(root, path)
    if target.is_dir():
        raise ToolError(f"{path} is a directory")
    existed = target.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content.encode("utf-8"))
    verb = "overwrote" if existed else "created"
    return f"{verb} {_display(root, target)} ({len(content.encode('utf-8'))} bytes)"


def _no_match_hint(text: str, old: str) -> str:
    """Show the lines that best resemble the start of ``old``, so the model can copy them exactly."""
    lines = text.splitlines()
    probe = next((ln.strip() for ln in old.splitlines() if ln.strip()), "")
    if not probe or not lines:
        return ""
    stripped = [ln.strip() for ln in lines]
    best = difflib.get_close_matches(probe, stripped, n=1, cutoff=0.5)
    if not best:
        return " No line of the file resembles the first line of `old`; read the file again."
    i = stripped.index(best[0])
    lo, hi = max(0, i - 3), min(len(lines), i + 4 + old.count("\n"))
    return (
        " The closest text in the file (check whitespace and indentation, copy it exactly):\n"
        + _numbered(lines[lo:hi], lo + 1)
    )


def edit_file(root: Path, path: str, old: str, new: str) -> str:
    """Replace the one exact occurrence of ``old`` in the file with ``new``.

    Returns a confirmation with the line number of the change. Raises :class:`ToolError` when
    ``old`` is empty, occurs nowhere (the message shows the most similar lines) or occurs
    several times (the message gives the count and the line of each match), and for the
    errors of :func:`read_file`.
    """
    if not isinstance(old, str) or not isinstance(new, str):
        raise ToolError("old and new must be strings")
    if old == "":
        raise ToolError("old must not be empty; use write_file to create or replace a whole file")
    target = resolve_inside(root, path)
    text = _read_text(target, path)
    count = text.count(old)
    if count == 0 and "\r\n" in text and "\r\n" not in old:
        # Models send LF; a CRLF file would otherwise never match.
        old, new = old.replace("\n", "\r\n"), new.replace("\n", "\r\n")
        count = text.count(old)
    if count == 0:
        raise ToolError(f"`old` was not found in {path} (0 matches).{_no_match_hint(text, old)}")
    if count > 1:
        starts, pos = [], text.find(old)
        while pos != -1 and len(starts) < 10:
            starts.append(pos)
            pos = text.find(old, pos + 1)
        lines = text.splitlines()
        where = "\n".join(
            f"  line {text.count(chr(10), 0, s) + 1}: {lines[text.count(chr(10), 0, s)].strip()[:200]}"
            for s in starts
        )
        raise ToolError(
            f"`old` occurs {count} times in {path}; it must occur exactly once. "
            f"Include more surrounding lines to make it unique. Matches start at:\n{where}"
        )
    at = text.index(old)
    target.write_bytes((text[:at] + new + text[at + len(old) :]).encode("utf-8"))
    return f"edited {_display(root, target)} at line {text.count(chr(10), 0, at) + 1}"


def run_command(
    root: Path,
    command: str,
    timeout: float = DEFAULT_COMMAND_TIMEOUT,
    *,
    extra_env: dict[str, str] | None = None,
    should_stop: Callable[[], bool] | None = None,
    sandbox: Sequence[str] = (),
) -> str:
    """Run ``command`` with ``bash -c`` in the worktree; return ``"exit status N"`` (or why it was
    killed) and its output, as :func:`run_shell` describes. Raises :class:`ToolError` only for an
    empty command or a bad timeout."""
    return run_shell(root, command, timeout, extra_env=extra_env, should_stop=should_stop, sandbox=sandbox)[1]


def run_shell(
    root: Path,
    command: str,
    timeout: float = DEFAULT_COMMAND_TIMEOUT,
    *,
    extra_env: dict[str, str] | None = None,
    should_stop: Callable[[], bool] | None = None,
    sandbox: Sequence[str] = (),
) -> tuple[int | None, str]:
    """Run ``command`` with ``bash -c`` in the worktree; return ``(exit_code, text)``.

    ``exit_code`` is None when the command was killed (timeout or stop). ``text`` starts with a
    status line (``"exit status N"`` or the reason it was killed) followed by its output.

    The command has no stdin, a scrubbed environment (:func:`scrubbed_env` with ``extra_env``)
    and its own process group. ``timeout`` is in seconds (clamped to 1..:data:`MAX_COMMAND_TIMEOUT`);
    on timeout, or when ``should_stop()`` turns true (polled about 5 times a second), the whole
    group is killed. When the shell exits, what it left running in its group is killed too, so
    nothing outlives the step. stdout and stderr are merged; output longer than
    :data:`OUTPUT_HEAD` + :data:`OUTPUT_TAIL` characters keeps its head and tail and says how
    many characters were cut. ``sandbox`` is an argv prefix that wraps bash
    (:func:`agents.sandbox.bwrap_prefix`; empty: none). Raises :class:`ToolError` only for an
    empty command.
    """
    if not isinstance(command, str) or not command.strip():
        raise ToolError("command must be a non-empty string")
    try:
        limit = float(timeout)
    except (TypeError, ValueError):
        raise ToolError("timeout must be a number of seconds") from None
    limit = min(max(limit, 1.0), float(MAX_COMMAND_TIMEOUT))

    try:
        proc = spawn(command, root, scrubbed_env(extra_env), sandbox)
    except OSError as exc:  # the sandbox's program gone since the run began, say
        return None, f"could not start the command: {exc}"
    head = bytearray()
    tail: collections.deque[bytes] = collections.deque()
    sizes = {"tail": 0, "total": 0}
    lock = threading.Lock()
    head_bytes, tail_bytes = OUTPUT_HEAD * 4, OUTPUT_TAIL * 4  # UTF-8: at most 4 bytes a character

    def drain() -> None:
        # Read in a thread so a chatty command can neither fill the pipe and block nor
        # fill our memory: only the head and the tail are kept.
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(65536):
            with lock:
                sizes["total"] += len(chunk)
                room = head_bytes - len(head)
                if room > 0:
                    head.extend(chunk[:room])
                    chunk = chunk[room:]
                if chunk:
                    tail.append(chunk)
                    sizes["tail"] += len(chunk)
                    while sizes["tail"] - len(tail[0]) >= tail_bytes:
                        sizes["tail"] -= len(tail.popleft())

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    deadline = time.monotonic() + limit
    reason = ""
    while True:
        try:
            proc.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() >= deadline:
            reason = f"timed out after {limit:g} s; the command's process group was killed"
            break
        if should_stop is not None and should_stop():
            reason = "stopped on request; the command's process group was killed"
            break
    if reason:
        kill_group(proc, grace=0)
    else:
        # Background children may still hold the pipe open; give them a moment to finish
        # writing, then make sure nothing of the group outlives the step.
        reader.join(DRAIN_GRACE)
        kill_group(proc, grace=0)
    reader.join(DRAIN_GRACE)
    if proc.stdout is not None and not reader.is_alive():
        proc.stdout.close()

    with lock:  # a process that escaped the group may still be writing
        head_data, tail_data = bytes(head), b"".join(tail)
        dropped = sizes["total"] - len(head_data) - len(tail_data)
    if dropped == 0:
        output = cap_middle((head_data + tail_data).decode("utf-8", errors="replace"))
    else:
        # Part of the middle was never kept; the cut count mixes characters and bytes, which
        # is close enough for the model to know the scale.
        raw_head = head_data.decode("utf-8", errors="replace")
        raw_tail = tail_data.decode("utf-8", errors="replace")
        kept_head, kept_tail = raw_head[:OUTPUT_HEAD], raw_tail[-OUTPUT_TAIL:]
        cut = (len(raw_head) - len(kept_head)) + (len(raw_tail) - len(kept_tail)) + dropped
        output = f"{kept_head}\n[... {cut} characters cut ...]\n{kept_tail}"

    status = reason or f"exit status {proc.returncode}"
    code = None if reason else proc.returncode
    if not output.strip():
        return code, f"{status}\n(no output)"
    return code, f"{status}\n{output}"


def temp_index_git(root: Path, *args: str, timeout: float = 120) -> str | None:
    """Run ``git <args>`` in ``root`` against a copy of its index that holds every file of the
    working tree (``git add -A``: tracked and untracked, ignored files excluded); return stdout,
    or None when git fails. The real index is neither changed nor locked, so this is safe while
    an agent or the board uses the worktree. Used for fingerprints, diffs and changed-file lists
    that include files the agent has not committed."""
    env = {k: v for k, v in scrubbed_env().items() if not k.startswith("GIT_") or k in ("GIT_TERMINAL_PROMPT", "GIT_PAGER")}
    try:
        index = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-path", "index"],
            cwd=root, capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL,
        )
        if index.returncode != 0:
            return None
        with tempfile.TemporaryDirectory(prefix="agent-index-") as tmp:
            temp_index = Path(tmp) / "index"
            real_index = Path(index.stdout.strip())
            if real_index.exists():
                # Starting from the real index lets git reuse its cached file hashes.
                shutil.copyfile(real_index, temp_index)
            env["GIT_INDEX_FILE"] = str(temp_index)
            for command in (["add", "-A", "--", "."], list(args)):
                proc = subprocess.run(
                    ["git", *command], cwd=root, capture_output=True, timeout=timeout, env=env,
                    stdin=subprocess.DEVNULL,
                )
                if proc.returncode != 0:
                    return None
            return proc.stdout.decode("utf-8", errors="replace")
    except (OSError, subprocess.SubprocessError):
        return None


def show_diff(root: Path, path: str = ".", *, base: str | None = None) -> str:
    """The diff of the worktree (committed checkpoints and uncommitted files alike) against
    ``base`` (the commit the run started from; ``HEAD`` when not given), limited to ``path``.

    Capped like command output (head and tail kept). Raises :class:`ToolError` for a path
    outside the worktree or a git failure."""
    target = resolve_inside(root, path)
    rel = _display(root, target)
    out = temp_index_git(root, "diff", "--cached", "--no-color", "--stat", "--patch", base or "HEAD", "--", rel)
    if out is None:
        raise ToolError("git could not compute the diff")
    return cap_middle(out) if out.strip() else "no changes yet"


def changed_paths(root: Path, base: str | None = None) -> list[str]:
    """Paths (relative, POSIX) added, copied, modified or renamed in the worktree since ``base``
    (default ``HEAD``), uncommitted files included; deleted files are not listed."""
    out = temp_index_git(root, "diff", "--cached", "--name-only", "-z", "--diff-filter=ACMR", base or "HEAD")
    return [name for name in (out or "").split("\0") if name]


def syntax_errors(root: Path, paths: list[str]) -> list[str]:
    """Python syntax errors in ``paths`` (relative to ``root``; files not ending in ``.py`` are
    skipped), as ``"path:line: message"`` rows. Only compiles, never runs, the code."""
    errors = []
    for rel in paths:
        if not rel.endswith(".py"):
            continue
        file = Path(root) / rel
        try:
            source = file.read_bytes()
        except OSError:
            continue
        try:
            compile(source, rel, "exec", dont_inherit=True)
        except SyntaxError as exc:
            errors.append(f"{rel}:{exc.lineno or '?'}: {exc.msg}")
        except ValueError as exc:  # NUL bytes
            errors.append(f"{rel}: {exc}")
    return errors


def preview_change(root: Path, name: str, arguments: dict) -> str:
    """What ``write_file`` or ``edit_file`` with ``arguments`` would do, as a unified diff, without
    doing it (shown to the lead when a change waits for approval). Raises :class:`ToolError` when
    the call would fail anyway (bad path, no unique match), so it is not put to the lead."""
    path = arguments.get("path")
    target = resolve_inside(root, path)
    rel = _display(root, target)
    if name == "write_file":
        content = arguments.get("content")
        if not isinstance(content, str):
            raise ToolError("content must be a string")
        if target.is_dir():
            raise ToolError(f"{path} is a directory")
        old = _read_text(target, path) if target.exists() else ""
        new = content
    elif name == "edit_file":
        old_text, new_text = arguments.get("old"), arguments.get("new")
        if not isinstance(old_text, str) or not isinstance(new_text, str) or not old_text:
            raise ToolError("old and new must be strings, and old must not be empty")
        old = _read_text(target, path)
        if old.count(old_text) != 1:
            edit_file(root, path, old_text, new_text)  # raises the error the model should see
        new = old.replace(old_text, new_text, 1)
    else:
        raise ToolError(f"{name} changes no file")
    diff = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True),
        fromfile=f"a/{rel}" if old else "/dev/null", tofile=f"b/{rel}",
    )
    return cap_middle("".join(diff)) or f"{rel}: no change"


def ask_lead(root: Path, question: str) -> str:
    """Ask the lead a question; the loop waits for the answer, which becomes the tool's result.
    Here it only validates: raises :class:`ToolError` for an empty question."""
    if not isinstance(question, str) or not question.strip():
        raise ToolError("question must be a non-empty string")
    return question.strip()



def finish(root: Path, summary: str) -> str:
    """End the run. ``summary`` is one or two sentences saying what was done; it is returned as is.

    The agent loop treats this tool specially; calling it here only validates the summary.
    Raises :class:`ToolError` for an empty summary.
    """
    if not isinstance(summary, str) or not summary.strip():
        raise ToolError("summary must be a non-empty string saying what you changed")
    return summary.strip()


# --------------------------------------------------------------------------- registry

TOOLS: dict[str, Callable[..., str]] = {
    "list_files": list_files,
    "read_file": read_file,
    "search_files": search_files,
    "write_file": write_file,
    "edit_file": edit_file,
    "run_command": run_command,
    "show_diff": show_diff,
    "ask_lead": ask_lead,
    "finish": finish,
}

# Plan mode: the model may look but not touch.
READ_ONLY_TOOLS = frozenset({"list_files", "read_file", "search_files", "show_diff", "ask_lead", "finish"})
# What an approval policy asks about (see needs_approval).
COMMAND_TOOLS = frozenset({"run_command"})
CHANGE_TOOLS = frozenset({"write_file", "edit_file"})


def needs_approval(name: str, policy: str, *, external: bool = False) -> bool:
    """Whether a call of tool ``name`` waits for the lead under ``policy``: ``"auto"`` never;
    ``"commands"`` before run_command and tools of MCP servers (``external``), which can do
    anything; ``"changes"`` also before write_file and edit_file."""
    if policy == "commands":
        return name in COMMAND_TOOLS or external
    if policy == "changes":
        return name in COMMAND_TOOLS or name in CHANGE_TOOLS or external
    return False


def _schema(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


_PATH = {"type": "string", "description": "Path relative to the worktree root, e.g. 'src/app.py'."}

TOOL_SCHEMAS: list[dict] = [
    _schema(
        "list_files",
        "List the files of the project (tracked and untracked, .gitignore respected), one path a line.",
        {"path": {"type": "string", "description": "Folder to list, relative to the root. Default '.'."}},
        [],
    ),
    _schema(
        "read_file",
        f"Read a text file; lines come numbered. At most {READ_MAX_LINES} lines per call.",
        {
            "path": _PATH,
            "start_line": {"type": "integer", "description": "First line to show, 1-based. Optional."},
            "end_line": {"type": "integer", "description": "Last line to show, inclusive. Optional."},
        },
        ["path"],
    ),
    _schema(
        "search_files",
        "Search the project's text files for an extended regular expression (git grep -E). "
        "Answers path:line:text rows.",
        {
            "pattern": {"type": "string", "description": "Extended regular expression."},
            "path": {"type": "string", "description": "Folder or file to search in. Default '.'."},
        },
        ["pattern"],
    ),
    _schema(
        "write_file",
        "Create or overwrite a file with the given content; parent folders are created.",
        {"path": _PATH, "content": {"type": "string", "description": "The whole new content of the file."}},
        ["path", "content"],
    ),
    _schema(
        "edit_file",
        "Replace one exact occurrence of `old` with `new` in a file. `old` must match the file "
        "exactly (whitespace included) and occur exactly once; include surrounding lines to make it unique.",
        {
            "path": _PATH,
            "old": {"type": "string", "description": "Exact text to replace."},
            "new": {"type": "string", "description": "Replacement text."},
        },
        ["path", "old", "new"],
    ),
    _schema(
        "run_command",
        "Run a shell command (bash -c) in the project root, e.g. tests or a linter. No stdin; "
        "stdout and stderr are merged; long output keeps its head and tail. Background processes "
        "are killed when the command ends.",
        {
            "command": {"type": "string", "description": "The command line."},
            "timeout": {
                "type": "integer",
                "description": f"Seconds before the command is killed. Default {DEFAULT_COMMAND_TIMEOUT}.",
            },
        },
        ["command"],
    ),
    _schema(
        "show_diff",
        "Show the diff of everything you changed so far in this run (committed or not).",
        {"path": {"type": "string", "description": "Limit to this folder or file. Default '.'."}},
        [],
    ),
    _schema(
        "ask_lead",
        "Ask the lead (the human who gave you the task) a question and wait for the answer. Use it "
        "only when the task is ambiguous and guessing would waste work.",
        {"question": {"type": "string", "description": "One clear question."}},
        ["question"],
    ),
    _schema(
        "finish",
        "Call once the task is done (or cannot be done), with a short summary of what you changed.",
        {"summary": {"type": "string", "description": "One or two sentences."}},
        ["summary"],
    ),
]

READ_ONLY_TOOL_SCHEMAS: list[dict] = [s for s in TOOL_SCHEMAS if s["function"]["name"] in READ_ONLY_TOOLS]


def describe_call(name: str, arguments: dict | None) -> str:
    """Return a one-line readable description of a tool call, e.g. ``"edit_file src/app.py"``.

    ``arguments`` is the decoded argument object (anything else is ignored). At most about
    200 characters.
    """
    args = arguments if isinstance(arguments, dict) else {}
    if name == "run_command":
        command = str(args.get("command", "")).strip()
        first = command.splitlines()[0] if command else ""
        more = " …" if "\n" in command or len(first) > 200 else ""
        return f"run_command: {first[:200]}{more}"
    if name == "search_files":
        return f"search_files {str(args.get('pattern', ''))[:100]!r} in {str(args.get('path', '.'))[:100]}"
    if name == "finish":
        return f"finish: {str(args.get('summary', '')).strip()[:200]}"
    if name == "ask_lead":
        return f"ask_lead: {str(args.get('question', '')).strip()[:200]}"
    if name in ("list_files", "read_file", "write_file", "edit_file"):
        default = "." if name == "list_files" else ""
        path = str(args.get("path") or default)[:200]
        if not path:
            return name  # arguments missing or unreadable; the tool's error will say so
        if name == "read_file" and (args.get("start_line") or args.get("end_line")):
            return f"read_file {path}:{args.get('start_line') or 1}-{args.get('end_line') or ''}"
        return f"{name} {path}"
    return f"{name}"[:200]


def execute_tool(
    root: Path,
    name: str,
    arguments_json: str,
    *,
    extra_env: dict[str, str] | None = None,
    should_stop: Callable[[], bool] | None = None,
    allowed: frozenset[str] | set[str] | None = None,
    base: str | None = None,
    max_timeout: float | None = None,
    sandbox: Sequence[str] = (),
) -> tuple[str, bool]:
    """Run the tool ``name`` with the JSON-encoded ``arguments_json`` in the worktree ``root``.

    Returns ``(output, is_error)``; never raises for anything the model can cause: malformed
    JSON, an unknown or not ``allowed`` tool (``None`` allows all), missing or unexpected
    arguments and :class:`ToolError` all come back as ``("error: …", True)``, so the model can
    retry. ``extra_env``, ``should_stop`` and ``sandbox`` are passed to :func:`run_command`
    (always, so the model cannot set them), whose timeout
    ``max_timeout`` (seconds, None for no cap) caps whatever the model asked for; ``base`` (the
    run's start commit) goes to :func:`show_diff`. An unexpected
    exception inside a tool (a bug, a full disk) is reported the same way, with its type.
    """
    if name not in TOOLS or (allowed is not None and name not in allowed):
        names = ", ".join(sorted(allowed if allowed is not None else TOOLS))
        return f"error: unknown tool {name!r}; the tools are: {names}", True
    try:
        arguments = json.loads(arguments_json) if arguments_json and arguments_json.strip() else {}
    except (json.JSONDecodeError, TypeError) as exc:
        return f"error: the arguments of {name} are not valid JSON ({exc}); send a JSON object", True
    if not isinstance(arguments, dict):
        return f"error: the arguments of {name} must be a JSON object, got {type(arguments).__name__}", True
    func = TOOLS[name]
    kwargs = dict(arguments)
    if name == "run_command":
        kwargs.update(extra_env=extra_env, should_stop=should_stop, sandbox=tuple(sandbox))
        if max_timeout is not None:
            try:
                asked = float(kwargs.get("timeout", DEFAULT_COMMAND_TIMEOUT))
            except (TypeError, ValueError):
                asked = DEFAULT_COMMAND_TIMEOUT
            kwargs["timeout"] = max(1.0, min(asked, max_timeout))
    elif name == "show_diff":
        kwargs.update(base=base)
    try:
        return func(Path(root), **kwargs), False
    except ToolError as exc:
        return f"error: {exc}", True
    except TypeError as exc:
        # Almost always missing or unexpected keyword arguments from the model.
        message = str(exc).replace(f"{func.__name__}()", name)
        return f"error: wrong arguments for {name}: {message}", True
    except OSError as exc:
        return f"error: {name} failed: {exc.strerror or exc}", True
    except Exception as exc:  # noqa: BLE001 - the model's mistake must never end the run
        return f"error: {name} failed unexpectedly: {type(exc).__name__}: {exc}", True
