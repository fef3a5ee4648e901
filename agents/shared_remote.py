"""Where a node keeps its clone of a project's shared remote, and when it fetches it.

A project with ``remote_url`` set runs in multi-host mode: every node (a worker host, the web)
works in its own clone under ``<BOARD_DATA_DIR>/clones/<project id>``, never in the project's
``repo_path`` (see :mod:`agents.clones` for the git side). A node is named by
``settings.BOARD_NODE_NAME`` (default: the host name); that name is what runs record as their
worker host and cards as their worktree host.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from django.conf import settings

from agents import clones

log = logging.getLogger(__name__)

# Seconds the web waits at least between two fetches of one project's clone: diff pages are read
# many times a second while a lead scrolls, and the remote is across the network.
FETCH_EVERY = 3.0
WEB_FETCH_TIMEOUT = 30.0  # seconds a page waits at most for a fetch before it shows the last one

_fetched_at: dict[int, float] = {}  # project id -> time.time() of this process's last fetch
_fetch_lock = threading.Lock()


def node_name() -> str:
    """This node's name, as runs and cards record it."""
    return settings.BOARD_NODE_NAME


def is_multi_host(project) -> bool:
    """Whether the project's cards are worked on in clones of a shared remote."""
    return bool((project.remote_url or "").strip())


def clone_path(project) -> str:
    """This node's clone of the project's shared remote (it may not exist yet)."""
    return str(settings.DATA_DIR / "clones" / str(project.pk))


def _lock_path(project) -> str:
    return str(settings.DATA_DIR / "locks" / f"clone-{project.pk}.lock")


def fresh_clone(project, timeout: float = clones.NETWORK_TIMEOUT) -> str:
    """This node's clone of the project's remote, cloned on first use and fetched now (within
    ``timeout`` seconds), under a lock so that two runs of this node do not clone or fetch at
    once. Returns its path. Raises clones.RemoteUnreachable and GitError."""
    path = clone_path(project)
    with clones.locked(_lock_path(project)):
        if not clones.ensure_clone(project.remote_url, path):
            clones.fetch(path, timeout=timeout)
    _fetched_at[project.pk] = time.time()
    return path


def web_clone(project, changed_at: float | None = None) -> str:
    """The clone the web reads cards' pushed branches from: fetched when the last fetch of this
    process is older than FETCH_EVERY seconds or older than ``changed_at`` (a Unix time, such as
    when the card's run ended), else used as it is. Returns its path. Raises
    clones.RemoteUnreachable and GitError (a missing clone that cannot be made)."""
    path = clone_path(project)
    have_clone = os.path.isdir(os.path.join(path, ".git"))
    with _fetch_lock:
        last = _fetched_at.get(project.pk, 0.0)
        stale = time.time() - last > FETCH_EVERY or (changed_at is not None and changed_at >= last)
        if not (stale or not have_clone):
            return path
        try:
            return fresh_clone(project, timeout=WEB_FETCH_TIMEOUT)
        except clones.RemoteUnreachable:
            if not have_clone:
                raise
            # Show what was fetched last rather than nothing, and do not make every request of the
            # next few seconds wait for the same unreachable remote.
            _fetched_at[project.pk] = time.time()
            log.warning("could not fetch the shared remote of project %s; showing its last fetched state", project.pk,
                        exc_info=True)
            return path


def worktree_here(project, card) -> str:
    """The card's worktree folder on this node: the same folder name as recorded on the card (so
    a renamed card keeps its folder), under this node's data folder."""
    name = os.path.basename(card.worktree_path.rstrip("/")) if card.worktree_path else ""
    if not name:
        from agents import worktrees

        name = worktrees.worktree_folder(card.pk, card.title)
    return str(settings.WORKTREES_DIR / str(project.pk) / name)
