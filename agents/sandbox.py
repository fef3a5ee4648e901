"""The bubblewrap (``bwrap``) sandbox around every command an agent runs.

Inside it the whole file system is read-only except the card's worktree and the parts of the
repository's git folder a commit writes; /tmp is private and empty; there is no network unless
the project allows it; and the sandbox dies with the process that started it.

Knows no Django: the runner passes the setting, whether the board is a team server, the
worktree and the project's network switch.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass

MODES = ("auto", "on", "off")
PROBE_TIMEOUT = 10  # seconds; bwrap starts in milliseconds when it works at all
# Flags of every sandbox, before the binds (the probe runs with these too, so that "usable"
# means usable for real: --unshare-all needs user, network and pid namespaces).
NAMESPACE_FLAGS = ("--unshare-all", "--die-with-parent", "--new-session")
# Inside a repository's common git folder, what a commit, a branch or a stash writes: objects,
# refs and their logs. Hooks and config stay read-only, so an agent cannot plant a hook that the
# lead's own git would run outside the sandbox.
WRITABLE_GIT_PARTS = ("objects", "refs", "logs")


class SandboxError(Exception):
    """The sandbox was required (BOARD_SANDBOX=on) and cannot be used; the message says why."""


@dataclass(frozen=True)
class Decision:
    """Whether a run's commands are sandboxed: ``prefix`` is the argv that wraps each of them
    (empty: not sandboxed), ``network`` whether the sandbox shares the host's network, ``note``
    one sentence for the run's log saying which and why."""

    prefix: tuple[str, ...]
    network: bool
    note: str

    @property
    def sandboxed(self) -> bool:
        return bool(self.prefix)


def find_bwrap() -> str | None:
    """The path of ``bwrap`` on the board's PATH, or None."""
    return shutil.which("bwrap")


@functools.lru_cache(maxsize=8)
def probe(bwrap: str) -> str:
    """Why ``bwrap`` cannot make a sandbox here ("" when it can), found once per process and
    program path by running ``bwrap --ro-bind / / <namespace flags> true``. Containers often
    refuse the user namespaces it needs; its own message says so."""
    try:
        result = subprocess.run(
            [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", *NAMESPACE_FLAGS, "true"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=PROBE_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{bwrap} could not be run ({exc})"
    if result.returncode != 0:
        said = (result.stderr or result.stdout).strip().splitlines()
        return f"{bwrap} does not work here ({said[-1] if said else f'exit status {result.returncode}'})"
    return ""


def git_paths(worktree: str) -> tuple[str | None, list[str]]:
    """For the worktree at ``worktree``: its repository's common git folder when that lies
    outside the worktree (a linked worktree's ``.git`` file points into the main repository's
    ``.git/worktrees/<name>``), else None; and the folders a commit writes outside the worktree
    (that worktree's own git folder and the common folder's objects, refs and logs; a missing
    ``logs`` is made, as git would). Returns ``(None, [])`` for a plain clone or when git cannot
    tell. Paths are absolute and free of links."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-dir", "--git-common-dir"],
            cwd=worktree, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None, []
    lines = result.stdout.split("\n")
    if result.returncode != 0 or len(lines) < 2:
        return None, []
    root = os.path.realpath(worktree)
    git_dir, common = os.path.realpath(lines[0]), os.path.realpath(lines[1])
    if common == root or common.startswith(root + os.sep):
        return None, []
    writable = [git_dir] if not git_dir.startswith(root + os.sep) else []
    for part in WRITABLE_GIT_PARTS:
        path = os.path.join(common, part)
        os.makedirs(path, exist_ok=True)
        writable.append(path)
    return common, writable


def bwrap_prefix(
    bwrap: str, worktree: str, network: bool = False, readable: tuple[str, ...] = (), writable: tuple[str, ...] = (),
    hidden: tuple[str, ...] = (),
) -> tuple[str, ...]:
    """The argv prefix that runs a command in the sandbox: ``(*prefix, "bash", "-c", cmd)``.

    The whole file system read-only (``--ro-bind / /``), a fresh /dev and /proc, a private empty
    /tmp; the folders in ``hidden`` replaced by empty ones and the files in it by an empty file
    (the board's data folder: its database, its secret key, other cards' worktrees); then the
    folders in ``readable`` read-only again (needed when they lie under /tmp or a hidden folder,
    such as the run's prompt file or the repository's git folder) and ``worktree`` and the
    folders in ``writable`` writable; every namespace unshared (``--share-net`` only when
    ``network``); the sandbox dies with its parent and runs in a new session; the command starts
    in the worktree. Paths are used as given (pass real paths).
    """
    args = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for path in hidden:
        if os.path.isdir(path):
            args += ["--tmpfs", path]
        elif os.path.exists(path):
            args += ["--ro-bind", "/dev/null", path]
    for path in readable:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    for path in (worktree, *writable):
        args += ["--bind", path, path]
    args += list(NAMESPACE_FLAGS)
    if network:
        args.append("--share-net")
    args += ["--chdir", worktree]
    return tuple(args)


def decide(
    mode: str, team_server: bool, worktree: str, network: bool, readable: tuple[str, ...] = (), hidden: tuple[str, ...] = ()
) -> Decision:
    """Whether and how to sandbox a run's commands under the BOARD_SANDBOX setting ``mode``:
    "off" never; "on" always, raising :class:`SandboxError` when bwrap is missing or unusable;
    "auto" when ``team_server`` is true and bwrap works (otherwise unsandboxed, and the note
    says why). ``network`` is the project's switch; ``readable`` folders outside the worktree
    the commands must read even under /tmp or a ``hidden`` one (the run's prompt file's
    folder); ``hidden`` folders and files the commands must not read (see :func:`bwrap_prefix`).
    Raises ValueError for an unknown mode."""
    if mode not in MODES:
        raise ValueError(f"BOARD_SANDBOX must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "off":
        return Decision((), False, "Not sandboxed: BOARD_SANDBOX is off.")
    if mode == "auto" and not team_server:
        return Decision((), False, "Not sandboxed: BOARD_SANDBOX is auto and the board is not a team server.")
    bwrap = find_bwrap()
    reason = probe(bwrap) if bwrap else "bwrap (bubblewrap) is not installed or not on the PATH"
    if reason:
        if mode == "on":
            raise SandboxError(f"BOARD_SANDBOX is on but the sandbox cannot be used: {reason}.")
        return Decision((), False, f"Not sandboxed: {reason}.")
    root = os.path.realpath(worktree)
    common, writable = git_paths(root)
    readable = tuple(os.path.realpath(p) for p in readable) + ((common,) if common else ())
    hidden = tuple(os.path.realpath(p) for p in hidden)
    prefix = bwrap_prefix(bwrap, root, network, readable, tuple(writable), hidden)
    note = "Sandboxed with bubblewrap: the worktree is writable, the rest read-only; " + (
        "network allowed by the project." if network else "no network.")
    return Decision(prefix, network, note)
