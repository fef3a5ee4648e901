"""The git layer of workers on other hosts: a node's own clone of a project's shared remote.

When a project has a shared remote (``Project.remote_url``), no process uses the user's checkout:
each node (a worker host, the web) keeps its own clone of the remote in its data folder, fetches
it before use, makes cards' worktrees from its remote-tracking refs, and pushes cards' branches
back. Like :mod:`agents.worktrees`, this module knows nothing of Django: it takes paths, URLs and
branch names, returns plain values and raises :class:`~agents.worktrees.GitError` subclasses whose
``str()`` is a sentence fit for a card or a form.

The clone's remote is always named ``origin``; a card's pushed branch ``b`` is read from
``refs/remotes/origin/b`` (see :func:`tracking_ref`).

A run's push never rewrites a branch: it is a plain fast-forward push, so a push the remote
rejects means another node pushed commits this one does not have, and it fails the run rather
than overwrite them (a landing only adds commits to the base, pushed the same way). The one
rewrites are the lead's roll-back and rebase (:func:`roll_back_remote`, :func:`rebase_on_remote`),
forced with a lease on the tip last fetched; a node that last had the card before one of them, or
before another node went on with it, moves its branch to the remote's and keeps its own tip as a
ref (:func:`sync_branch` with ``remote_is_truth``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re

from agents.worktrees import Commit, GitError, NotARepository, _check_commit, _commit_of, _git, _tail, commits_between

__all__ = [
    "RemoteUnreachable",
    "PushRejected",
    "BranchesDiverged",
    "REMOTE",
    "tracking_ref",
    "check_remote",
    "ensure_clone",
    "fetch",
    "locked",
    "sync_branch",
    "push_branch",
    "remote_tip",
    "pushed_commits",
    "land_on_remote",
    "trial_merge_on_remote",
    "delete_remote_branch",
    "push_from",
    "roll_back_remote",
    "rebase_on_remote",
]

REMOTE = "origin"
# Seconds a fetch, clone, push or ls-remote may take: a remote on another host may be slow, but a
# hung connection must fail the run rather than hold the worker.
NETWORK_TIMEOUT = 300.0
CHECK_TIMEOUT = 20.0  # seconds `git ls-remote` may take when a form checks a remote


class RemoteUnreachable(GitError):
    """The shared remote cannot be read (wrong URL or path, network, permissions)."""


class PushRejected(GitError):
    """The remote refused a push, or could not be reached for it; the commits stay local."""


class BranchesDiverged(GitError):
    """This node's branch and the remote's both have commits the other lacks."""


def tracking_ref(branch: str) -> str:
    """The full remote-tracking ref of ``branch`` in a clone: ``refs/remotes/origin/<branch>``."""
    return f"refs/remotes/{REMOTE}/{branch}"


_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_SCP_LIKE = re.compile(r"^[^/:@\s]+@[^/:\s]+:|^[a-zA-Z0-9.-]{2,}:(?!//)")


def normalise_url(url: str) -> str:
    """``url`` as a clone takes it: a URL (``ssh://``, ``https://``, ``file://``, ``git@host:path``)
    unchanged, a local path made absolute (``~`` expanded). Raises :class:`GitError` for an empty
    value, one with a line break or NUL, or one starting with ``-`` (git would read an option)."""
    value = (url or "").strip()
    if not value:
        raise GitError("Give the shared remote's URL or path.")
    if any(c in value for c in "\n\r\0") or value.startswith("-"):
        raise GitError(f"'{value[:200]}' is not a git URL or path.")
    if _SCHEME.match(value) or _SCP_LIKE.match(value):
        return value
    return os.path.abspath(os.path.expanduser(value))


def check_remote(url: str) -> list[str]:
    """Check that git can read the remote ``url`` (``git ls-remote --heads``, at most
    CHECK_TIMEOUT seconds, never prompting for a password). Returns its branch names, sorted.
    Raises :class:`RemoteUnreachable` with git's own words when it cannot."""
    value = normalise_url(url)
    result = _git(
        "/", "ls-remote", "--heads", "--", value, check=False, read_only=True, timeout=CHECK_TIMEOUT,
        env={"GIT_SSH_COMMAND": os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")},
    )
    if result.status != 0:
        raise RemoteUnreachable(f"git cannot read the remote {value}: {_tail(result.err or result.out, 600)}")
    return sorted(line.split("refs/heads/", 1)[1] for line in result.out.splitlines() if "refs/heads/" in line)


@contextlib.contextmanager
def locked(lock_path: str):
    """Hold an exclusive flock on the file ``lock_path`` (made with its folder when missing), so
    that two runs of one node do not clone or fetch into one clone at once."""
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_clone(url: str, path: str) -> bool:
    """Make ``path`` a clone of ``url`` (``git clone --no-checkout``: nothing reads its own
    checkout; the cards' worktrees hold files), or, when it is one already, point its ``origin``
    at ``url`` (the project's remote may have been changed). Returns True when it cloned.
    Raises :class:`RemoteUnreachable` with git's message, :class:`GitError` when ``path`` is
    something else (a file, a folder that is not a clone)."""
    value = normalise_url(url)
    target = os.path.abspath(path)
    if os.path.isdir(os.path.join(target, ".git")):
        current = _git(target, "remote", "get-url", REMOTE, check=False, read_only=True)
        if current.status != 0:
            _git(target, "remote", "add", REMOTE, value, doing="name the shared remote in the clone")
        elif current.out.strip() != value:
            _git(target, "remote", "set-url", REMOTE, value, doing="point the clone at the new shared remote")
        return False
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise GitError(f"Cannot clone the shared remote into {target}: something else is already there.")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    result = _git(
        os.path.dirname(target), "clone", "--quiet", "--no-checkout", "--origin", REMOTE, "--", value, target,
        check=False, timeout=NETWORK_TIMEOUT,
    )
    if result.status != 0:
        raise RemoteUnreachable(f"Could not clone the shared remote {value}: {_tail(result.err or result.out, 1500)}")
    return True


def fetch(path: str, timeout: float = NETWORK_TIMEOUT) -> None:
    """Bring every remote-tracking branch of the clone up to the remote (``git fetch --prune``),
    in at most ``timeout`` seconds. Raises :class:`RemoteUnreachable` with git's message."""
    result = _git(
        os.path.abspath(path), "fetch", "--quiet", "--prune", REMOTE,
        f"+refs/heads/*:refs/remotes/{REMOTE}/*", check=False, timeout=timeout,
    )
    if result.status != 0:
        url = _git(path, "remote", "get-url", REMOTE, check=False, read_only=True).out.strip()
        raise RemoteUnreachable(f"Could not fetch from the shared remote {url}: {_tail(result.err or result.out, 1500)}")


def remote_tip(path: str, branch: str) -> str | None:
    """The sha the remote's ``branch`` had at the clone's last fetch or push, or None."""
    return _commit_of(os.path.abspath(path), tracking_ref(branch))


def _is_ancestor(repo: str, a: str, b: str) -> bool:
    return _git(repo, "merge-base", "--is-ancestor", a, b, check=False, read_only=True).status == 0


def sync_branch(path: str, branch: str, worktree: str | None = None, remote_is_truth: bool = False) -> str:
    """Bring the clone's local ``branch`` up to what the remote has (as of the last fetch), since
    the remote is the truth and another node may have gone on with the card:

    * no remote branch: nothing to do (the card has not been pushed yet);
    * no local branch: made at the remote's commit;
    * local behind the remote: fast-forwarded (in ``worktree`` when it has the branch checked
      out, with ``git merge --ff-only``, else by moving the branch);
    * local ahead (commits a failed push left): kept, the next push sends them;
    * both have commits of their own: :class:`BranchesDiverged`, nothing changes;
    * but with ``remote_is_truth`` (another node has gone on with the card, or the lead rolled
      it back, since this node last had it), a local branch ahead or diverged is moved to the
      remote's (its clean worktree reset there) and its tip kept as
      ``refs/board/superseded/<branch>/<sha>``.

    Returns a sentence for the card ("" when nothing changed). Raises :class:`GitError`."""
    repo = os.path.abspath(path)
    remote = remote_tip(repo, branch)
    if remote is None:
        return ""
    local = _commit_of(repo, f"refs/heads/{branch}")
    if local is None:
        _git(repo, "branch", "--no-track", "--", branch, remote, doing=f"make the branch {branch} from the remote's")
        return f"Took {branch} from the shared remote at {remote[:10]}"
    if local == remote:
        return ""
    if _is_ancestor(repo, remote, local):
        if remote_is_truth:  # rolled back on the remote since this node had the card
            return _supersede(repo, branch, local, remote, worktree)
        return f"{branch} here is ahead of the shared remote; the next push sends it"
    if not _is_ancestor(repo, local, remote):
        if not remote_is_truth:
            raise BranchesDiverged(
                f"The branch {branch} here ({local[:10]}) and on the shared remote ({remote[:10]}) both have commits "
                "the other lacks, so the run did not start. Push or merge them by hand in this node's clone "
                f"({repo}), then start the card again."
            )
        return _supersede(repo, branch, local, remote, worktree)
    if worktree and os.path.isdir(worktree):
        head = _git(worktree, "symbolic-ref", "--quiet", "--short", "HEAD", check=False, read_only=True).out.strip()
        if head == branch:
            _git(worktree, "merge", "--ff-only", "--quiet", remote,
                 doing=f"bring the worktree {worktree} up to the shared remote's {branch}")
            return f"Brought {branch} up to the shared remote's {remote[:10]}"
    # Not checked out anywhere here (git refuses to move a checked-out branch, which is right).
    _git(repo, "branch", "-f", "--", branch, remote, doing=f"bring {branch} up to the shared remote's")
    return f"Brought {branch} up to the shared remote's {remote[:10]}"


def _supersede(repo: str, branch: str, local: str, remote: str, worktree: str | None) -> str:
    """Move ``branch`` from ``local`` to the remote's ``remote``, keeping ``local`` as a ref. Raises
    BranchesDiverged when the worktree holds uncommitted work, which a reset would lose."""
    checked_out = bool(worktree and os.path.isdir(worktree)) and _git(
        worktree, "symbolic-ref", "--quiet", "--short", "HEAD", check=False, read_only=True).out.strip() == branch
    if checked_out and _git(worktree, "status", "--porcelain", "--untracked-files=normal", read_only=True,
                            doing=f"read the status of {worktree}").out.strip():
        raise BranchesDiverged(
            f"The branch {branch} here ({local[:10]}) differs from the shared remote's ({remote[:10]}), which another "
            f"node or a roll-back made since this node had the card, and its worktree {worktree} holds uncommitted "
            "work, so the run did not start. Commit or remove that work by hand, then start the card again."
        )
    keep = f"refs/board/superseded/{branch}/{local[:12]}"
    _git(repo, "update-ref", keep, local, doing=f"keep {local[:12]} as {keep}")
    if checked_out:
        _git(worktree, "reset", "--hard", "--quiet", remote, doing=f"move the worktree {worktree} to the remote's {branch}")
    else:
        _git(repo, "branch", "-f", "--", branch, remote, doing=f"move {branch} to the shared remote's")
    return (f"This node's {branch} had commits the shared remote lacks ({local[:10]}), from before another node went "
            f"on with the card or the lead rolled it back; they are kept as {keep}, and the run goes on from the "
            f"remote's {remote[:10]}")


def push_branch(path: str, branch: str) -> str:
    """Push the clone's local ``branch`` to the remote branch of the same name, as a plain
    fast-forward push (never forced: see the module's docstring). Returns the pushed sha; the
    clone's remote-tracking ref follows. Raises :class:`PushRejected` with git's message (remote
    unreachable, not a fast-forward, a hook refused it); the commits stay on the local branch."""
    repo = os.path.abspath(path)
    sha = _commit_of(repo, f"refs/heads/{branch}")
    if sha is None:
        raise NotARepository(f"There is no branch {branch} in {repo} to push.")
    result = _git(
        repo, "push", "--quiet", "--porcelain", REMOTE, f"refs/heads/{branch}:refs/heads/{branch}",
        check=False, timeout=NETWORK_TIMEOUT,
    )
    if result.status != 0:
        raise PushRejected(f"Could not push {branch} to the shared remote: {_tail(result.err or result.out, 1500)}")
    # A push updates the tracking ref itself only with a matching fetch refspec; make sure.
    _git(repo, "update-ref", tracking_ref(branch), sha, doing="record the pushed commit")
    return sha


def pushed_commits(path: str, base_commit: str, branch: str) -> list[Commit]:
    """The commits of the remote's ``branch`` (as last fetched) since ``base_commit``, oldest
    first, like :func:`agents.worktrees.new_commits` reads them from a worktree; [] when the
    branch was not pushed. Raises :class:`GitError` when ``base_commit`` is not in the clone."""
    repo = os.path.abspath(path)
    tip = remote_tip(repo, branch)
    if tip is None:
        return []
    return commits_between(repo, _check_commit(repo, base_commit), tip, doing="list the pushed commits")


@contextlib.contextmanager
def _landing_refs(path: str, base_branch: str, branch: str):
    """Local refs for a landing in the clone, made from the remote-tracking ones: ``base_branch``
    (the landing moves it) and a private branch at the card's pushed tip; yields (repo, the
    private branch's name, the base's sha). Both are deleted afterwards, so no stale local copy
    of the remote's branches is ever read. The clone's own HEAD is detached first, so the base is
    checked out nowhere in it. Raises BranchNotFound when either is not on the remote."""
    from agents.worktrees import BranchNotFound

    repo = os.path.abspath(path)
    base_sha, tip = remote_tip(repo, base_branch), remote_tip(repo, branch)
    if base_sha is None:
        raise BranchNotFound(f"The shared remote has no branch {base_branch}.")
    if tip is None:
        raise BranchNotFound(f"The card's branch {branch} is not on the shared remote yet: run the card first.")
    head = _commit_of(repo, "HEAD")
    if head:
        _git(repo, "update-ref", "--no-deref", "HEAD", head, doing="detach the clone's HEAD")
    private = f"board-landing/{os.getpid()}-{branch.replace('/', '-')}"
    _git(repo, "update-ref", f"refs/heads/{base_branch}", base_sha, doing=f"take {base_branch} from the remote")
    _git(repo, "update-ref", f"refs/heads/{private}", tip, doing=f"take {branch} from the remote")
    try:
        yield repo, private, base_sha
    finally:
        for ref in (f"refs/heads/{private}", f"refs/heads/{base_branch}"):
            _git(repo, "update-ref", "-d", ref, check=False)


def land_on_remote(path: str, base_branch: str, branch: str, mode: str, identity, message: str,
                   work_dir: str | None = None) -> str:
    """Land the remote's ``branch`` on the remote's ``base_branch`` (as last fetched into the
    clone ``path``) by ``mode`` (``agents.landing_git.land``: merge, squash or rebase, built in
    the clone), then push the new base with a plain, fast-forward push: when another landing or
    person moved the base on the remote meanwhile, the remote refuses it and nothing changed
    there. Returns the base's new sha. Raises the errors of ``landing_git.land``
    (MergeConflict, NothingToLand, …), BranchNotFound, and landing_git.BaseMoved for a refused
    push (with git's message)."""
    from agents import landing_git

    with _landing_refs(path, base_branch, branch) as (repo, private, old):
        new = landing_git.land(repo, base_branch, private, mode, identity, message, work_dir=work_dir)
        result = _git(repo, "push", "--quiet", "--porcelain", REMOTE, f"{new}:refs/heads/{base_branch}",
                      check=False, timeout=NETWORK_TIMEOUT)
        if result.status != 0:
            raise landing_git.BaseMoved(
                f"Could not push the landing to {base_branch} on the shared remote, so nothing landed (has "
                f"{base_branch} moved there? try again): {_tail(result.err or result.out, 1500)}"
            )
        # (git's push records it itself when the clone's fetch refspec matches; this is for when not.)
        _git(repo, "update-ref", tracking_ref(base_branch), new, doing="record the landed base")
        return new


def trial_merge_on_remote(path: str, base_branch: str, branch: str) -> tuple[str, list[str]]:
    """``(base sha, conflicting paths)`` of merging the remote's ``branch`` into the remote's
    ``base_branch`` now, objects only (``agents.landing_git.trial_merge``). Raises
    BranchNotFound and GitError."""
    from agents import landing_git

    with _landing_refs(path, base_branch, branch) as (repo, private, base_sha):
        return base_sha, landing_git.trial_merge(repo, base_branch, private)


def delete_remote_branch(path: str, branch: str) -> None:
    """Delete ``branch`` on the remote (``git push origin --delete``). Raises PushRejected."""
    repo = os.path.abspath(path)
    result = _git(repo, "push", "--quiet", REMOTE, "--delete", f"refs/heads/{branch}", check=False,
                  timeout=NETWORK_TIMEOUT)
    if result.status != 0:
        raise PushRejected(f"Could not delete {branch} on the shared remote: {_tail(result.err or result.out, 1500)}")
    _git(repo, "update-ref", "-d", tracking_ref(branch), check=False)


def push_from(repo_path: str, url: str, branch: str) -> None:
    """Push the local ``branch`` of another repository (such as the project's own checkout) to the
    remote ``url``, fast-forward only; the repository itself is not changed. Raises PushRejected."""
    result = _git(os.path.abspath(repo_path), "push", "--quiet", "--", normalise_url(url),
                  f"refs/heads/{branch}:refs/heads/{branch}", check=False, timeout=NETWORK_TIMEOUT)
    if result.status != 0:
        raise PushRejected(f"Could not push {branch} to the shared remote: {_tail(result.err or result.out, 1500)}")


def roll_back_remote(path: str, branch: str, base_commit: str, target: str, keep_ref: str) -> tuple[str, str]:
    """Reset the remote's ``branch`` to ``target`` (a full or abbreviated sha: one of the branch's
    commits since ``base_commit``, or that base itself), keeping its tip recoverable as
    ``keep_ref`` (such as ``refs/board/rollbacks/card-7/1``) on the remote and in the clone
    ``path``. The one push here that rewrites a branch, so it is forced with a lease: it goes
    through only while the remote's branch is still at the tip fetched last, so commits another
    node pushed meanwhile are never thrown away. Returns ``(target's full sha, the old tip)``.
    Raises CommitNotOnBranch-like GitError for a target that is not a checkpoint, GitError when
    the branch is already there, and PushRejected (the lease failed, the remote refused)."""
    from agents.worktrees import CommitNotOnBranch

    repo = os.path.abspath(path)
    tip = remote_tip(repo, branch)
    if tip is None:
        raise NotARepository(f"The card's branch {branch} is not on the shared remote; there is nothing to roll back.")
    base = _check_commit(repo, base_commit)
    sha = _commit_of(repo, target) if target and not target.startswith("-") else None
    if sha is None or not (sha == base or any(c.sha == sha for c in pushed_commits(repo, base, branch))):
        raise CommitNotOnBranch(f"Commit {target[:12]} is not one of the card's checkpoints.")
    if sha == tip:
        raise GitError(f"The branch is at {sha[:12]} already; nothing to roll back.")
    kept = _git(repo, "push", "--quiet", REMOTE, f"{tip}:{keep_ref}", check=False, timeout=NETWORK_TIMEOUT)
    if kept.status != 0:
        raise PushRejected(f"Could not keep {tip[:12]} as {keep_ref} on the shared remote, so nothing was rolled "
                           f"back: {_tail(kept.err or kept.out, 1500)}")
    _git(repo, "update-ref", keep_ref, tip, doing=f"keep {tip[:12]} as {keep_ref}")
    _push_with_lease(repo, branch, tip, sha, f"Could not roll {branch} back on the shared remote (did a run push "
                     "to it meanwhile? nothing was rolled back; try again)")
    _git(repo, "update-ref", tracking_ref(branch), sha, doing="record the rolled-back branch")
    return sha, tip


def _push_with_lease(repo: str, branch: str, tip: str, new: str, refused: str) -> None:
    """Move ``branch`` on the shared remote from ``tip`` (as last fetched) to ``new``, forced but
    only with a lease on ``tip`` (git push --force-with-lease), so a run's push made meanwhile is
    never overwritten. Raises PushRejected with ``refused`` and git's words otherwise."""
    moved = _git(repo, "push", "--quiet", "--porcelain", f"--force-with-lease=refs/heads/{branch}:{tip}", REMOTE,
                 f"{new}:refs/heads/{branch}", check=False, timeout=NETWORK_TIMEOUT)
    if moved.status != 0:
        raise PushRejected(f"{refused}: {_tail(moved.err or moved.out, 1500)}")


def rebase_on_remote(path: str, base_branch: str, branch: str, identity, work_root: str) -> tuple[str, str]:
    """Rebase the remote's ``branch`` onto the remote's ``base_branch`` (as last fetched into the
    clone ``path``), in a temporary worktree under ``work_root`` that is removed afterwards, then
    push it forced with a lease on the tip fetched (refused if a run pushed meanwhile). Returns
    ``(the base's sha, the branch's new tip)``. Raises landing_git.MergeConflict (nothing
    changed), BranchNotFound, PushRejected and GitError."""
    import tempfile

    from agents import landing_git, worktrees

    with _landing_refs(path, base_branch, branch) as (repo, private, base_sha):
        tip = remote_tip(repo, branch)
        os.makedirs(work_root, exist_ok=True)
        folder = tempfile.mkdtemp(prefix=".rebase-", dir=work_root)
        try:
            worktrees.ensure_worktree(repo, tracking_ref(base_branch), private, folder)
            new = landing_git.rebase_onto_base(folder, tracking_ref(base_branch), identity)
        finally:
            worktrees.remove_worktree(repo, folder)
            if os.path.isdir(folder):
                os.rmdir(folder)
        if new == tip:
            return base_sha, new
        _push_with_lease(repo, branch, tip, new, f"Could not push the rebased {branch} to the shared remote (did a "
                         "run push to it meanwhile? nothing changed there; try again)")
        _git(repo, "update-ref", tracking_ref(branch), new, doing="record the rebased branch")
        return base_sha, new
