"""The git side of landing a card: trial merges, the three landing modes, rebasing a card's
branch onto its base, pushing it, and pull requests through the ``gh`` command.

Like :mod:`agents.worktrees` (whose runner of git commands it shares), this module knows nothing
of Django: it takes paths and names, returns plain values and raises :class:`GitError`
subclasses whose ``str()`` is a sentence to show the lead.

The user's own checkout is sacred. Nothing here stashes, resets or checks out there. Landing
moves the base branch's ref with a compare-and-swap; when the base branch is checked out in a
working tree (the user's own, or any other worktree of the repository), that checkout must be
clean, and its files are then brought forward to the new commit with git's own two-tree merge
(``read-tree -m -u``), which refuses rather than overwrite anything. Every new commit is built
first, from objects only (``merge-tree --write-tree``, ``commit-tree``, or a rebase in a
temporary worktree of the board's), so a landing that is refused or abandoned changes nothing
anyone can see.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time

from agents.worktrees import (
    BranchNotFound,
    GitError,
    Identity,
    _abs,
    _base_ref,
    _check_identity,
    _commit_of,
    _git,
    _list_worktrees,
    _tail,
    _worktree,
)

__all__ = [
    "MODES",
    "LandingRefused",
    "MergeConflict",
    "NothingToLand",
    "BaseMoved",
    "PushError",
    "PullRequestError",
    "trial_merge",
    "land",
    "rebase_onto_base",
    "push_branch",
    "open_pull_request",
]

#: The landing modes :func:`land` knows.
MODES = ("merge", "squash", "rebase")
#: Seconds ``gh pr create`` may take (it talks to the forge over the network).
GH_TIMEOUT = 120.0
# Files named in one refusal at most; the rest are counted.
_NAMED_FILES = 10


class LandingRefused(GitError):
    """Landing would touch the user's work (a dirty checkout of the base branch, untracked files
    in the way, an operation in progress there) or cannot move the base (a remote-tracking base).
    Nothing was changed."""


class MergeConflict(GitError):
    """The card's branch and the base branch change the same lines. ``files``: the conflicting
    paths (sorted, relative to the repository); ``base``: the base commit's sha it was tried
    against. Nothing was changed."""

    def __init__(self, message: str, files: list[str], base: str):
        super().__init__(message)
        self.files = files
        self.base = base


class NothingToLand(GitError):
    """Every change of the card's branch is on the base branch already."""


class BaseMoved(GitError):
    """The base branch moved while the landing was being built; nothing was changed."""


class PushError(GitError):
    """``git push`` failed (no such remote, refused, unreachable)."""


class PullRequestError(GitError):
    """No pull request could be opened: ``gh`` is missing, not logged in, or refused."""


def _names(files: list[str]) -> str:
    shown = ", ".join(files[:_NAMED_FILES])
    more = len(files) - _NAMED_FILES
    return shown + (f" and {more} more" if more > 0 else "")


def _local_base(repo: str, base_branch: str) -> tuple[str, str]:
    """(short name, sha) of the local branch the landing moves. Raises LandingRefused for a
    remote-tracking base, which is the remote's to move, and BranchNotFound."""
    ref, sha = _base_ref(repo, base_branch)
    if not ref.startswith("refs/heads/"):
        raise LandingRefused(
            f"The base branch {base_branch} is a remote-tracking branch, which only its remote may move: "
            "push the card's branch and open a pull request instead, or make the project's base a local branch."
        )
    return ref[len("refs/heads/"):], sha


def _branch_sha(repo: str, branch: str) -> str:
    sha = _commit_of(repo, f"refs/heads/{branch}") if branch and not branch.startswith("-") else None
    if sha is None:
        raise BranchNotFound(f"Branch '{branch}' does not exist in {repo}.")
    return sha


def _merge_tree(repo: str, base_sha: str, branch_sha: str, base_name: str, branch: str) -> tuple[str, list[str]]:
    """(tree sha of the merge, conflicting paths); writes objects only, never an index or a
    working tree, so a trial leaves nothing behind anyone can see."""
    r = _git(
        repo, "merge-tree", "--write-tree", "--name-only", "--no-messages", "-z", base_sha, branch_sha,
        check=False, doing=f"try merging '{branch}' into '{base_name}'",
    )
    parts = [p for p in r.out.split("\0") if p]
    if r.status in (0, 1) and parts and re.fullmatch(r"[0-9a-f]{40,64}", parts[0]):
        return parts[0], sorted(set(parts[1:])) if r.status == 1 else []
    if "unrelated histories" in r.err:
        raise GitError(f"Branch '{branch}' shares no history with '{base_name}' in {repo}; it cannot be merged.")
    raise GitError(f"Could not try merging '{branch}' into '{base_name}': {_tail(r.err or r.out)}")


def trial_merge(repo_path: str, base_branch: str, branch: str) -> list[str]:
    """The paths that would conflict if ``branch`` were merged into ``base_branch`` now, sorted;
    ``[]`` when it merges cleanly. Computed with ``git merge-tree --write-tree``, which writes
    objects only: no working tree, index or ref of anyone changes, so there is nothing to undo.
    ``base_branch`` may be local or remote-tracking. Raises :class:`BranchNotFound`,
    :class:`NotARepository` and :class:`GitError` (unrelated histories)."""
    repo = _abs(repo_path)
    _, base_sha = _base_ref(repo, base_branch)
    _, files = _merge_tree(repo, base_sha, _branch_sha(repo, branch), base_branch, branch)
    return files


# --------------------------------------------------------------------------
# The base branch's checkouts
# --------------------------------------------------------------------------


def _in_progress(checkout: str) -> str | None:
    """What git operation is half done in ``checkout`` (a merge, a rebase, …), or None."""
    for name, what in (("MERGE_HEAD", "a merge"), ("rebase-merge", "a rebase"), ("rebase-apply", "a rebase or git am"),
                       ("CHERRY_PICK_HEAD", "a cherry-pick"), ("REVERT_HEAD", "a revert")):
        path = _git(checkout, "rev-parse", "--git-path", name, doing="look for operations in progress", read_only=True).out
        if os.path.exists(path if os.path.isabs(path) else os.path.join(checkout, path)):
            return what
    return None


def _rebasing(checkout: str) -> str | None:
    """The branch (full ref) a rebase in ``checkout`` is rewriting, or None. During a rebase the
    worktree shows a detached HEAD, so this is the only way to see that the branch is busy."""
    for name in ("rebase-merge/head-name", "rebase-apply/head-name"):
        path = _git(checkout, "rev-parse", "--git-path", name, check=False, read_only=True).out
        path = path if os.path.isabs(path) else os.path.join(checkout, path)
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip() or None
        except OSError:
            continue
    return None


def _base_checkouts(repo: str, base: str) -> list[str]:
    """The working trees (the user's own, or any other worktree of ``repo``) where the local
    branch ``base`` is checked out. Raises LandingRefused when a rebase of ``base`` is under way
    in one: moving the branch under it would be undone when it finishes."""
    found = []
    for wt in _list_worktrees(repo):
        if not os.path.isdir(wt.path):
            continue  # a record of a folder deleted by hand: nothing there to keep in step
        if wt.branch == base:
            found.append(wt.path)
        elif wt.branch is None and _rebasing(wt.path) == f"refs/heads/{base}":
            raise LandingRefused(
                f"A rebase of {base} is in progress in {wt.path}; finish or abort it there, then land again."
            )
    return found


def _check_clean(checkout: str, base: str) -> None:
    """Refuse (LandingRefused) when ``checkout`` has uncommitted changes to tracked files, staged
    or not, or an operation in progress. Untracked files alone do not refuse here: they are the
    user's, the landing never writes them, and they look the same before and after (but see
    _check_untracked for those the landing would overwrite)."""
    # The stat cache only: read-tree -m -u later trusts it, and a file merely touched since the
    # last status would otherwise count as changed. No content of the user's changes.
    _git(checkout, "update-index", "-q", "--refresh", check=False, doing=f"refresh the index of {checkout}")
    doing = _in_progress(checkout)
    if doing:
        raise LandingRefused(
            f"{base} is checked out in {checkout}, where {doing} is in progress; finish or abort it there, then land again."
        )
    out = _git(
        checkout, "status", "--porcelain", "-z", "--untracked-files=no", "--no-renames",
        doing=f"read the status of {checkout}", read_only=True,
    ).out
    changed = [entry[3:] for entry in out.split("\0") if len(entry) > 3]
    if changed:
        raise LandingRefused(
            f"{base} is checked out in {checkout} with uncommitted changes ({len(changed)} file"
            f"{'s' if len(changed) != 1 else ''}: {_names(changed)}). The board never stashes, resets or overwrites "
            "your work: commit or stash them yourself, then land again."
        )


def _check_untracked(checkout: str, base: str, old: str, new: str) -> None:
    """Refuse when moving ``checkout`` from ``old`` to ``new`` would write over a file git does
    not track there (untracked or ignored, such as a local .env): git counts ignored files as
    expendable and would replace them silently, but to the user they may be work."""
    out = _git(
        checkout, "diff-tree", "-r", "--no-renames", "--name-only", "--diff-filter=A", "-z", old, new,
        doing="list the files the landing adds", read_only=True,
    ).out
    blocked = []
    for rel in filter(None, out.split("\0")):
        parts = rel.split("/")
        # The file itself, or a file or link where the landing needs a folder.
        if os.path.lexists(os.path.join(checkout, rel)):
            blocked.append(rel)
            continue
        for i in range(1, len(parts)):
            prefix = os.path.join(checkout, *parts[:i])
            if os.path.lexists(prefix) and (os.path.islink(prefix) or not os.path.isdir(prefix)):
                blocked.append("/".join(parts[:i]))
                break
    if blocked:
        blocked = sorted(set(blocked))
        raise LandingRefused(
            f"{base} is checked out in {checkout}, and landing would overwrite files there that git does not track "
            f"({_names(blocked)}). Move or delete them yourself, then land again."
        )


def _bring_forward(checkout: str, old: str, new: str) -> None:
    """Update a clean checkout of the base from ``old`` to ``new`` (its branch ref already moved):
    git's two-tree merge checks every file first and changes nothing when one is in the way."""
    _git(checkout, "read-tree", "-m", "-u", old, new, doing=f"bring the checkout {checkout} up to date")


# --------------------------------------------------------------------------
# Moving the base
# --------------------------------------------------------------------------


def _update_ref(repo: str, ref: str, new: str, old: str, reason: str) -> None:
    """``git update-ref ref new old``: moves ``ref`` only if it still points at ``old``. Raises
    BaseMoved when it does not. Run directly rather than through _git, which would retry a
    compare-and-swap miss for half a minute as if it were a busy lock."""
    command = ["git", "-C", repo, "update-ref", "-m", reason, ref, new, old]
    deadline = time.monotonic() + 30.0
    while True:
        r = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
        if r.returncode == 0:
            return
        if "but expected" in r.stderr or "reference already exists" in r.stderr:
            now = _commit_of(repo, ref) or "nothing"
            raise BaseMoved(
                f"{ref.removeprefix('refs/heads/')} moved while the landing was being made (it is at {now[:10]} now, "
                f"not {old[:10]}); nothing was changed. Land again to land on top of it."
            )
        if re.search(r"Unable to create '[^']*\.lock'", r.stderr) and time.monotonic() < deadline:
            time.sleep(0.1)
            continue
        raise GitError(f"Could not move {ref}: {_tail(r.stderr)}")


def _commit_tree(repo: str, tree: str, parents: list[str], message: str, identity: Identity) -> str:
    args = ["-c", "commit.gpgsign=false", "commit-tree", tree]
    for parent in parents:
        args += ["-p", parent]
    text = (message or "").replace("\0", "").strip() or "Land"
    return _git(repo, *args, "-m", text, env=identity.env(), doing="make the landing commit").out.strip()


def _rebased(repo: str, base: str, old: str, branch_sha: str, identity: Identity, work_dir: str | None) -> str:
    """The branch's commits replayed on ``old`` in a temporary detached worktree (under
    ``work_dir``, else the system's temporary folder) that is removed again whatever happens;
    returns the new tip. Raises MergeConflict (the rebase aborted) or GitError."""
    if work_dir:
        os.makedirs(work_dir, exist_ok=True)
    folder = tempfile.mkdtemp(prefix=".landing-", dir=work_dir)
    os.rmdir(folder)  # worktree add wants to make it
    try:
        _git(repo, "worktree", "add", "--detach", "--quiet", folder, branch_sha, doing="make a worktree for the rebase")
        return _rebase(folder, old, base, identity)
    finally:
        try:
            _git(repo, "worktree", "remove", "--force", folder, check=False, doing="remove the rebase's worktree")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            _git(repo, "worktree", "prune", check=False, doing="clean up stale worktree records")


def _rebase(worktree: str, onto: str, base_name: str, identity: Identity) -> str:
    """Rebase what is checked out in ``worktree`` onto ``onto``; on any failure abort, leaving
    it as it was, and raise MergeConflict (with the files) or GitError. Returns the new HEAD."""
    env = {
        # The commits keep their authors; the board is their committer.
        "GIT_COMMITTER_NAME": identity.name, "GIT_COMMITTER_EMAIL": identity.email,
        # No editor may ever wait for an answer in a background process.
        "GIT_EDITOR": ":", "GIT_SEQUENCE_EDITOR": ":",
    }
    r = _git(
        worktree, "-c", "commit.gpgsign=false", "rebase", "--no-autosquash", "--no-autostash",
        # --no-update-refs: other branches pointing into the range stay where they are.
        "--no-update-refs", "--quiet", onto,
        env=env, check=False, doing=f"rebase onto {base_name}",
    )
    if r.status == 0:
        return _git(worktree, "rev-parse", "HEAD", doing="read the rebased commit", read_only=True).out.strip()
    files = _git(worktree, "diff", "--name-only", "--diff-filter=U", "-z", check=False, read_only=True).out
    files = sorted(set(filter(None, files.split("\0"))))
    _git(worktree, "rebase", "--abort", check=False, doing="abort the rebase")
    if files:
        raise MergeConflict(
            f"Rebasing onto {base_name} stops on conflicts in {_names(files)}; it was abandoned and nothing changed.",
            files, onto,
        )
    raise GitError(f"Could not rebase onto {base_name}; it was abandoned and nothing changed: {_tail(r.err or r.out)}")


def land(
    repo_path: str,
    base_branch: str,
    branch: str,
    mode: str,
    identity: Identity,
    message: str,
    work_dir: str | None = None,
) -> str:
    """Land ``branch`` on the local branch ``base_branch`` of ``repo_path``; returns the base's
    new commit (full sha).

    ``mode``: ``"merge"`` (a merge commit whose parents are the base and the branch, even when a
    fast-forward were possible), ``"squash"`` (one commit on top of the base holding the merged
    tree; its parent is the base only) or ``"rebase"`` (the branch's commits replayed on the base
    in a temporary worktree under ``work_dir``, merge commits flattened away, then the base
    fast-forwarded: linear history). ``message``: the merge or squash commit's message (unused by
    rebase, whose commits keep theirs). New commits are by ``identity``; plumbing makes them, so
    no commit hook runs (the card's commits met the hooks in its worktree).

    Conflicts are found before anything moves. The base's ref is moved with a compare-and-swap
    (``update-ref <ref> <new> <old>``), so a base that moved meanwhile fails cleanly. Where the base
    is checked out (the user's checkout or any worktree), that checkout must have no uncommitted
    changes to tracked files and no untracked file where the landing writes one; its files are
    then brought forward, so it shows the new commit with nothing changed. If that fails the ref
    is moved back.

    Raises :class:`LandingRefused` (dirty checkout, files in the way, an operation in progress,
    remote-tracking base), :class:`MergeConflict` (with ``files``), :class:`NothingToLand`,
    :class:`BaseMoved`, :class:`BranchNotFound`, :class:`NotARepository` and :class:`GitError`.
    In each case nothing was changed.
    """
    if mode not in MODES:
        raise GitError(f"'{mode}' is not a landing mode; use one of {', '.join(MODES)}.")
    _check_identity(identity)
    repo = _abs(repo_path)
    base, old = _local_base(repo, base_branch)
    branch_sha = _branch_sha(repo, branch)
    checkouts = _base_checkouts(repo, base)
    for checkout in checkouts:  # refuse early, before the work of building the commit
        _check_clean(checkout, base)

    if _git(repo, "merge-base", "--is-ancestor", branch_sha, old, check=False, read_only=True).status == 0:
        raise NothingToLand(f"Nothing to land: every commit of '{branch}' is on {base} already.")
    tree, files = _merge_tree(repo, old, branch_sha, base, branch)
    if files:
        raise MergeConflict(
            f"'{branch}' conflicts with {base} in {_names(files)}; nothing was landed.", files, old,
        )
    old_tree = _git(repo, "rev-parse", f"{old}^{{tree}}", doing="read the base's files", read_only=True).out.strip()
    if tree == old_tree:
        raise NothingToLand(f"Nothing to land: the changes of '{branch}' are on {base} already.")

    if mode == "merge":
        new = _commit_tree(repo, tree, [old, branch_sha], message, identity)
    elif mode == "squash":
        new = _commit_tree(repo, tree, [old], message, identity)
    else:
        new = _rebased(repo, base, old, branch_sha, identity, work_dir)
        if new == old:
            raise NothingToLand(f"Nothing to land: the changes of '{branch}' are on {base} already.")

    for checkout in checkouts:  # again, as the rebase may have taken a while
        _check_clean(checkout, base)
        _check_untracked(checkout, base, old, new)
    _update_ref(repo, f"refs/heads/{base}", new, old, f"board: land {branch} ({mode})")
    for checkout in checkouts:
        try:
            _bring_forward(checkout, old, new)
        except GitError as exc:
            # Put the base back where the checkout still is, so it never shows the landing
            # reversed as uncommitted changes.
            _update_ref(repo, f"refs/heads/{base}", old, new, f"board: undo landing {branch}")
            raise LandingRefused(
                f"{base} is checked out in {checkout}, and its files could not be brought forward, so nothing "
                f"was landed: {exc}"
            ) from exc
    return new


def rebase_onto_base(worktree_path: str, base_branch: str, identity: Identity) -> str:
    """Rebase the branch checked out in the card's worktree onto the current ``base_branch``
    (local or remote-tracking); returns the branch's new tip. Merge commits on the branch are
    flattened away. The worktree must be clean (commit what it holds first). On a conflict the
    rebase is aborted and everything is as it was. Raises :class:`MergeConflict` (with
    ``files``), :class:`NotARepository` and :class:`GitError` (dirty worktree, detached HEAD, a
    rebase already in progress)."""
    _check_identity(identity)
    wt = _worktree(worktree_path)
    if _git(wt, "symbolic-ref", "--quiet", "HEAD", check=False, read_only=True).status != 0:
        raise GitError(f"{wt} has no branch checked out (a detached HEAD, or a rebase in progress); nothing was rebased.")
    doing = _in_progress(wt)
    if doing:
        raise GitError(f"{doing[0].upper()}{doing[1:]} is in progress in {wt}; nothing was rebased.")
    status = _git(wt, "status", "--porcelain", "-z", doing=f"read the status of {wt}", read_only=True).out
    if status.strip("\0").strip():
        raise GitError(f"{wt} has uncommitted changes; commit them before rebasing.")
    _, base_sha = _base_ref(wt, base_branch)
    return _rebase(wt, base_sha, base_branch, identity)


# --------------------------------------------------------------------------
# Remotes and pull requests
# --------------------------------------------------------------------------


def push_branch(path: str, remote: str, branch: str) -> None:
    """Push the local ``branch`` of the repository at ``path`` (or any worktree of it) to
    ``remote``'s branch of the same name. Never forced, and no upstream is recorded in the user's
    config. Raises :class:`PushError` with what to do (no such remote, rejected, unreachable)
    and :class:`BranchNotFound`."""
    repo = _abs(path)
    remote = (remote or "").strip()
    if not remote or remote.startswith("-"):
        raise PushError("Set the remote to push to in the project's settings (such as origin).")
    if _git(repo, "remote", "get-url", "--", remote, check=False, read_only=True).status != 0:
        raise PushError(
            f"The repository has no remote named '{remote}': add one (git remote add {remote} URL) or set the "
            "project's remote in its settings."
        )
    _branch_sha(repo, branch)
    r = _git(repo, "push", "--porcelain", "--", remote, f"refs/heads/{branch}:refs/heads/{branch}", check=False,
             doing=f"push {branch} to {remote}")
    if r.status != 0:
        raise PushError(f"Could not push {branch} to {remote}: {_tail(r.err or r.out) or f'git exited with {r.status}'}")


_URL = re.compile(r"https?://\S+")


def open_pull_request(path: str, remote: str, base_branch: str, branch: str, title: str, body: str) -> str:
    """Open a pull request of ``branch`` into ``base_branch`` with the GitHub CLI (``gh pr create``
    run in ``path``, the branch pushed already); returns its URL. A remote-tracking base
    (``origin/main``) names the remote's branch (``main``). When a pull request for the branch
    exists already, its URL is returned. Raises :class:`PullRequestError` saying what to do when
    ``gh`` is not installed, not logged in, or refuses."""
    gh = shutil.which("gh")
    if gh is None:
        raise PullRequestError(
            "The GitHub CLI (gh) is not installed on the board's machine, so no pull request was opened. "
            "Install it (https://cli.github.com), run 'gh auth login', and try again; or open the pull request "
            f"on your forge's site for the pushed branch {branch}."
        )
    base = base_branch.removeprefix("refs/heads/")
    for prefix in (f"refs/remotes/{remote}/", f"{remote}/"):
        base = base.removeprefix(prefix)
    command = [gh, "pr", "create", "--head", branch, "--base", base, "--title", title or branch, "--body", body or ""]
    env = {**os.environ, "GH_PROMPT_DISABLED": "1", "GIT_TERMINAL_PROMPT": "0", "NO_COLOR": "1"}
    try:
        r = subprocess.run(command, cwd=_abs(path), capture_output=True, text=True, env=env, timeout=GH_TIMEOUT,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise PullRequestError(f"gh did not answer within {GH_TIMEOUT:g} seconds; no pull request was opened.") from None
    except OSError as exc:
        raise PullRequestError(f"Could not run gh: {exc}") from exc
    found = _URL.findall(r.stdout)
    if r.returncode == 0 and found:
        return found[-1]
    said = (r.stderr or r.stdout).strip()
    if "already exists" in said and _URL.search(said):
        return _URL.findall(said)[-1]
    hint = " Run 'gh auth login' on the board's machine first." if re.search(r"auth|log ?in|token", said, re.I) else ""
    raise PullRequestError(f"gh could not open the pull request: {_tail(said, 1000) or f'it exited with {r.returncode}'}.{hint}")
