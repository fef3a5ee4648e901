"""The git layer: repositories, per-card worktrees and branches, commits, diffs.

This module knows nothing of Django. It takes filesystem paths and names,
returns plain values (dataclasses, ``str``, ``list``) and raises the
:class:`GitError` family, whose ``str()`` is a sentence fit to show a user on a
form or a card.

Every git command goes through :func:`_git`, which

* runs the git CLI through GitPython with ``git -C <path>``, so a missing
  folder can never make a command run in the process's own working directory;
* waits and retries while another process holds one of git's lock files
  (``index.lock``, ``refs/heads/x.lock``, ...) for up to
  :data:`LOCK_WAIT_SECONDS`, because workers and the web process touch one
  repository at the same time;
* turns failures into :class:`GitError` subclasses.

Nothing here reads an identity from git config: commits always carry the
:class:`Identity` they are given. Nothing here checks out, resets or stashes in
the user's own checkout.
"""

from __future__ import annotations

import fnmatch
import os
import random
import re
import shutil
import time
import unicodedata
from dataclasses import dataclass
from typing import Mapping

import git
from git.exc import GitCommandError, GitCommandNotFound

__all__ = [
    "GitError",
    "NotARepository",
    "BranchNotFound",
    "EmptyRepository",
    "Identity",
    "RepoInfo",
    "Commit",
    "Worktree",
    "LOCK_WAIT_SECONDS",
    "inspect_repository",
    "resolve_base",
    "slugify",
    "branch_name",
    "worktree_folder",
    "ensure_worktree",
    "commit_all",
    "new_commits",
    "diff_against_base",
    "CommitNotOnBranch",
    "ChangedFile",
    "branch_range",
    "checkpoint_range",
    "changed_files",
    "diff_between",
    "diff_of_commit",
    "diffstat",
    "has_changes",
    "remove_worktree",
]

#: Upper bound, in seconds, on how long one git command waits for another
#: process's lock file to go away before giving up with a :class:`GitError`.
LOCK_WAIT_SECONDS = 30.0
# Seconds one git command may take before it is killed: long enough for a checkout of a very
# large repository, short enough that a hung command (a credential prompt, a stuck filter)
# fails the run instead of holding it. Tests lower it.
COMMAND_TIMEOUT = 600.0

# Longest stretch of git output (characters) quoted in an error message; a
# failing hook can print a whole test report and a card has limited room.
_MAX_DETAIL = 4000


# --------------------------------------------------------------------------
# Errors and values
# --------------------------------------------------------------------------


class GitError(Exception):
    """Base of every error raised by this module.

    ``str(error)`` is a complete, user-facing sentence (it may quote git's own
    output, e.g. a failing hook's report, after a colon).
    """


class NotARepository(GitError):
    """The path does not exist, is a file, is a bare repository, or is not the
    top level of a git working tree."""


class BranchNotFound(GitError):
    """A named branch (local or remote-tracking) does not exist."""


class EmptyRepository(GitError):
    """The repository has no commit yet, so there is nothing to branch from."""


class CommitNotOnBranch(GitError):
    """A revision that is not one of a branch's own commits (or not a commit at all)."""


@dataclass(frozen=True)
class Identity:
    """Who the board's commits are by (author and committer alike).

    ``name`` and ``email`` are plain strings, e.g. ``"Board agent"`` and
    ``"agent@board.invalid"``. They are checked when a commit is made
    (:func:`commit_all` raises :class:`GitError` if either is empty or holds
    ``<``, ``>`` or a newline).
    """

    name: str
    email: str

    def env(self) -> dict[str, str]:
        """Environment variables that make any git commit use this identity.

        Returns a new dict with ``GIT_AUTHOR_NAME``, ``GIT_AUTHOR_EMAIL``,
        ``GIT_COMMITTER_NAME`` and ``GIT_COMMITTER_EMAIL``; merge it into the
        environment of child processes (command agents) that commit
        themselves, so they never fall back on the machine's git config.
        """
        return {
            "GIT_AUTHOR_NAME": self.name,
            "GIT_AUTHOR_EMAIL": self.email,
            "GIT_COMMITTER_NAME": self.name,
            "GIT_COMMITTER_EMAIL": self.email,
        }


@dataclass(frozen=True)
class RepoInfo:
    """What :func:`inspect_repository` found.

    ``path``: absolute, symlink-resolved top level of the working tree.
    ``current_branch``: the checked-out local branch's short name (``"main"``),
    or ``None`` on a detached HEAD or an unborn branch (no commit yet).
    ``branches``: short names of all local branches, sorted by name.
    """

    path: str
    current_branch: str | None
    branches: list[str]


@dataclass(frozen=True)
class Commit:
    """One commit: full 40-hex ``sha``, first-line ``subject``, ``author``
    name (without email) and author ``date`` in strict ISO 8601 with offset
    (``"2024-05-01T12:00:00+02:00"``)."""

    sha: str
    subject: str
    author: str
    date: str


@dataclass(frozen=True)
class ChangedFile:
    """One file of a diff, as :func:`changed_files` lists it.

    ``path``: the file's path after the change (before it, for a deleted file).
    ``old_path``: its path before the change (``""`` for an added file; equal
    to ``path`` unless it was renamed or copied). ``status``: ``"added"``,
    ``"deleted"``, ``"modified"``, ``"renamed"``, ``"copied"`` or ``"type
    changed"``. ``added`` and ``deleted``: lines (both 0 for a binary file).
    ``binary``: git compares the file as binary (no lines to show).
    ``similarity``: percent, for a rename or copy (else ``None``).
    """

    path: str
    old_path: str
    status: str
    added: int
    deleted: int
    binary: bool
    similarity: int | None = None


@dataclass(frozen=True)
class Worktree:
    """A card's worktree as returned by :func:`ensure_worktree`.

    ``path``: absolute folder of the worktree. ``branch``: local branch checked
    out there. ``base_commit``: full sha the card's work is measured against
    (the base branch's commit for a new branch, else the merge-base of branch
    and base). ``created``: ``False`` when an existing worktree was reused.
    """

    path: str
    branch: str
    base_commit: str
    created: bool


# --------------------------------------------------------------------------
# Running git
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Result:
    status: int
    out: str
    err: str


# git's messages for "someone else holds a lock file right now", plus the
# symptoms of racing another git process that git does not lock against:
# the compare-and-swap miss of a HEAD another commit moved; COMMIT_EDITMSG
# (one per worktree) emptied by another commit (our messages are never
# empty); a record under .git/worktrees/ that another `worktree add` has
# half written or another `worktree remove`/`prune` is deleting, seen while
# git walks all worktrees (git cleans up after such a failed command, so
# trying again is safe). Only these are retried: every other failure is
# permanent, and retrying would only delay it.
_LOCK_PATTERNS = re.compile(
    r"Unable to create '[^'\n]*\.lock'"
    r"|cannot lock ref '[^'\n]*': is at [0-9a-f]+ but expected"
    r"|Aborting commit due to empty commit message"
    r"|(failed to read|could not open|unable to read|Invalid path) [^\n]*/worktrees/"
    r"|\.lock'?:? File exists"
    r"|could not lock config file"
    r"|Another git process seems to be running",
    re.IGNORECASE,
)
_LOCK_FILE = re.compile(r"'([^'\n]*\.lock)'")


def _decode(data: bytes | str | None) -> str:
    # Output may hold file contents or names in any encoding; a lone bad byte
    # must not make a diff or a hook report impossible to show.
    if data is None:
        return ""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return data.decode("utf-8", "replace")


def _tail(text: str, limit: int = _MAX_DETAIL) -> str:
    text = text.strip()
    if len(text) > limit:
        return "…" + text[-limit:]
    return text


def _git(
    cwd: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    doing: str = "run git",
    read_only: bool = False,
    strip: bool = True,
    timeout: float | None = None,
) -> _Result:
    """Run ``git -C cwd <args>``; the one place that executes git.

    Retries with a jittered exponential backoff (50 ms up to 1 s) while git
    reports a lock file held by another process, for at most
    ``LOCK_WAIT_SECONDS`` in total. A command running longer than ``timeout``
    seconds (default ``COMMAND_TIMEOUT``) is killed. Raises NotARepository when
    ``cwd`` is missing or not inside a repository, GitError when the lock never
    frees, on a timeout or, with ``check``, when git exits non-zero ("Could not
    <doing>: <git says>").
    """
    limit = COMMAND_TIMEOUT if timeout is None else timeout
    if not os.path.isdir(cwd):
        if os.path.exists(cwd):
            raise NotARepository(f"'{cwd}' is a file, not a folder.")
        raise NotARepository(f"'{cwd}' does not exist.")

    full_env = {"GIT_TERMINAL_PROMPT": "0"}
    if read_only:
        # Lets `status`/`diff` skip refreshing the index, so readers (the web
        # page) do not take index.lock away from a committing worker.
        full_env["GIT_OPTIONAL_LOCKS"] = "0"
    if env:
        full_env.update(env)
    command = ["git", "-C", cwd, "-c", "core.quotepath=false", "-c", "color.ui=false", *args]

    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    delay = 0.05
    while True:
        try:
            status, out, err = git.Git(cwd).execute(
                command,
                with_extended_output=True,
                with_exceptions=False,
                stdout_as_string=False,
                strip_newline_in_stdout=strip,
                env=full_env,
                kill_after_timeout=limit,
            )
        except GitCommandNotFound as exc:
            raise GitError("git is not installed or not on the PATH of the board's processes.") from exc
        except GitCommandError as exc:  # pragma: no cover - with_exceptions=False
            raise GitError(f"Could not {doing}: {_tail(_decode(exc.stderr))}") from exc
        except (OSError, ValueError) as exc:
            # ValueError: an argument held a NUL byte, which no process can take.
            raise GitError(f"Could not {doing}: {exc}") from exc

        result = _Result(status, _decode(out), _decode(err))
        if status == 0:
            return result
        if result.err.startswith("Timeout: the command"):  # GitPython's words after killing it
            raise GitError(f"Could not {doing}: git did not finish within {limit:g} seconds and was stopped.")

        _raise_if_not_a_repository(cwd, result.err)

        if _LOCK_PATTERNS.search(result.err):
            now = time.monotonic()
            if now < deadline:
                time.sleep(min(delay * random.uniform(0.5, 1.5), max(deadline - now, 0.0)))
                delay = min(delay * 2, 1.0)
                continue
            found = _LOCK_FILE.search(result.err)
            if found:
                raise GitError(
                    f"Could not {doing}: the repository at {cwd} stayed locked by another git "
                    f"process for {LOCK_WAIT_SECONDS:g} seconds. If no git process is running "
                    f"any more, delete the stale lock file {found.group(1)} and try again."
                )
            raise GitError(
                f"Could not {doing}: the repository at {cwd} was still busy with another git "
                f"process after {LOCK_WAIT_SECONDS:g} seconds: {_tail(result.err)}"
            )

        if check:
            raise GitError(f"Could not {doing}: {_tail(result.err or result.out) or f'git exited with status {status}.'}")
        return result


def _raise_if_not_a_repository(cwd: str, err: str) -> None:
    if re.match(r"\s*fatal: detected dubious ownership", err, re.IGNORECASE):
        raise NotARepository(
            f"git refuses to work in '{cwd}' because the folder belongs to another user; "
            "fix its owner or add it to git's safe.directory setting."
        )
    # Only git's own verdict on the folder, at the start of its output: a hook's
    # report quoting that phrase must stay a plain GitError.
    if re.match(r"\s*fatal: not a git repository", err, re.IGNORECASE):
        if "parent directories" in err:
            raise NotARepository(f"'{cwd}' is not a git repository.")
        raise NotARepository(f"'{cwd}' is not a usable git repository: {_tail(err)}")


def _abs(path: str) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def _worktree(path: str) -> str:
    """``path`` made absolute, after checking it is still a worktree of its own: without its
    ``.git`` (an agent may delete it), git would look upwards and act on whatever repository
    encloses the folder, such as the board's own checkout. Raises :class:`NotARepository`."""
    wt = _abs(path)
    if os.path.isdir(wt) and not os.path.lexists(os.path.join(wt, ".git")):
        raise NotARepository(
            f"{wt} is no longer a git worktree: its .git is gone (did the agent delete it?). "
            "Nothing was committed; delete the card to clean up."
        )
    return wt


def _same_path(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


# --------------------------------------------------------------------------
# Repositories and branches
# --------------------------------------------------------------------------


def inspect_repository(path: str) -> RepoInfo:
    """Check that ``path`` is the top level of a non-bare git working tree.

    ``path`` may start with ``~``. Returns a :class:`RepoInfo`. Raises
    :class:`NotARepository` (message names the path) when the path is
    missing, is a file, is not a repository, is a bare repository, or is a
    folder *inside* a repository (the message names the top level to use
    instead, rather than silently taking a parent such as a dotfiles repo in
    the home folder).
    """
    p = _abs(path)
    if not os.path.exists(p):
        raise NotARepository(f"'{p}' does not exist.")
    if not os.path.isdir(p):
        raise NotARepository(f"'{p}' is a file, not a folder.")

    try:
        with git.Repo(p) as found:
            bare = found.bare
    except PermissionError as exc:
        raise NotARepository(f"'{p}' cannot be read by the board's processes ({exc.strerror}).") from exc
    except (git.exc.InvalidGitRepositoryError, git.exc.NoSuchPathError):
        # Repo() only looks at p itself; ask git whether p sits inside a work
        # tree, to give the user a precise message.
        try:
            top = _git(p, "rev-parse", "--show-toplevel", check=False, read_only=True)
        except NotARepository:
            top = _Result(1, "", "")
        if top.status == 0 and top.out:
            raise NotARepository(
                f"'{p}' is a folder inside the git repository '{top.out}'; choose that folder instead."
            ) from None
        raise NotARepository(f"'{p}' is not a git repository (run 'git init' there first).") from None
    if bare:
        raise NotARepository(f"'{p}' is a bare git repository; the board needs one with a working tree.")

    top = _git(p, "rev-parse", "--show-toplevel", check=False, read_only=True)
    if top.status != 0 or not top.out:
        raise NotARepository(f"'{p}' is not the working tree of a git repository.")
    if not _same_path(top.out, p):
        raise NotARepository(f"'{p}' is a folder inside the git repository '{top.out}'; choose that folder instead.")

    current: str | None = None
    head = _git(p, "symbolic-ref", "--quiet", "HEAD", check=False, read_only=True)
    if head.status == 0 and head.out.startswith("refs/heads/") and _commit_of(p, head.out):
        current = head.out[len("refs/heads/"):]

    listing = _git(p, "for-each-ref", "--format=%(refname)", "refs/heads", doing="list branches", read_only=True)
    branches = sorted(line[len("refs/heads/"):] for line in listing.out.splitlines() if line.startswith("refs/heads/"))
    return RepoInfo(path=os.path.realpath(top.out), current_branch=current, branches=branches)


def _commit_of(repo: str, ref: str) -> str | None:
    """Full sha of the commit ``ref`` (a full ref name or sha) points at, or None."""
    r = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False, read_only=True)
    return r.out.strip() if r.status == 0 and r.out.strip() else None


def _has_any_commit(repo: str) -> bool:
    refs = _git(repo, "for-each-ref", "--count=1", "--format=%(objectname)", check=False, read_only=True)
    return bool(refs.out.strip()) or _commit_of(repo, "HEAD") is not None


def _base_ref(repo: str, base_branch: str) -> tuple[str, str]:
    """(full ref name, sha) of a local or remote-tracking branch; raises like resolve_base."""
    name = (base_branch or "").strip()
    # Revision syntax ('main~1', 'main^{tree}', 'a..b') names no branch.
    if name and not re.search(r"[~^:?*\[\\\s]|@\{|\.\.", name):
        # Always qualified refs: a name can then never be read as an option
        # ('-x') or be shadowed by a tag or a file of the same name.
        candidates = [name] if name.startswith("refs/") else [f"refs/heads/{name}", f"refs/remotes/{name}"]
        for ref in candidates:
            sha = _commit_of(repo, ref)
            if sha:
                return ref, sha
    if not _has_any_commit(repo):
        raise EmptyRepository(f"The repository {repo} has no commit yet; make a first commit before starting a card.")
    if not name:
        raise BranchNotFound(f"No base branch was given for {repo}.")
    raise BranchNotFound(f"Branch '{name}' does not exist in {repo}.")


def resolve_base(repo_path: str, base_branch: str) -> str:
    """Full 40-hex sha of the commit ``base_branch`` points at now.

    ``base_branch`` is a local branch (``"main"``), a remote-tracking branch
    (``"origin/main"``) or a full ref (``"refs/heads/main"``); local wins over
    remote-tracking. Nothing is fetched. Raises :class:`NotARepository`,
    :class:`EmptyRepository` ("... has no commit yet") when the repository has
    no commit at all, :class:`BranchNotFound` ("Branch 'x' does not exist in
    /path.") otherwise.
    """
    return _base_ref(_abs(repo_path), base_branch)[1]


# Letters NFKD does not split into an ASCII base letter plus accents.
_TRANSLITERATE = str.maketrans(
    {"ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O", "œ": "oe", "Œ": "OE",
     "đ": "d", "Đ": "D", "ł": "l", "Ł": "L", "þ": "th", "Þ": "TH", "ı": "i"}
)


def _slug(text: str, max_length: int) -> str:
    ascii_text = (
        unicodedata.normalize("NFKD", str(text).translate(_TRANSLITERATE)).encode("ascii", "ignore").decode("ascii")
    )
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if len(slug) > max_length:
        cut = slug[:max_length]
        # Prefer ending on a whole word when that keeps at least half the room.
        if "-" in cut and slug[max_length] != "-" and cut.rfind("-") >= max_length // 2:
            cut = cut[: cut.rfind("-")]
        slug = cut.strip("-")
    return slug


def slugify(title: str, max_length: int = 40) -> str:
    """Turn any title into a short, safe name part: the ONE sanitiser used for
    both branch and folder names.

    Returns lowercase ASCII letters and digits in words joined by single
    ``-`` (accents folded: ``"Émoji ü"`` -> ``"emoji-u"``), no leading or
    trailing ``-``, at most ``max_length`` characters (cut at a word boundary
    when reasonable), and ``"task"`` when nothing usable is left. Such a
    string is a valid file name and a valid git ref component everywhere.
    """
    return _slug(title, max(1, int(max_length))) or "task"


def branch_name(prefix: str, card_id: int, title: str) -> str:
    """The card's branch: ``f"{prefix}/{card_id}-{slugify(title)}"``.

    Each ``/``-separated part of ``prefix`` goes through the same sanitiser;
    empty parts are dropped and an empty prefix becomes ``"agent"``. The
    result passes ``git check-ref-format --branch`` for any title.
    Example: ``branch_name("agent", 12, "Fix login!")`` -> ``"agent/12-fix-login"``.
    """
    parts = [p for p in (_slug(part, 40) for part in str(prefix or "").split("/")) if p] or ["agent"]
    return f"{'/'.join(parts)}/{int(card_id)}-{slugify(title)}"


def worktree_folder(card_id: int, title: str) -> str:
    """The card's worktree folder name (one path component, no slash):
    ``f"{card_id}-{slugify(title)}"``."""
    return f"{int(card_id)}-{slugify(title)}"


def free_names(repo_path: str, prefix: str, card_id: int, title: str, root: str,
               also_taken_refs: tuple[str, ...] = ()) -> tuple[str, str]:
    """A branch name and a worktree folder (under ``root``) for a card's first run that nothing
    uses yet: ``(branch_name(...), root/worktree_folder(...))``, or the same with ``-2``, ``-3``…
    when a branch of that name exists (made by hand, or left by a board whose database was reset)
    or the folder is taken; ``also_taken_refs``: more ref prefixes whose branches count as taken, such as
    ``("refs/remotes/origin/",)`` for branches on a shared remote. Someone else's branch or folder is
    never reused. Raises
    :class:`NotARepository`, or :class:`GitError` when 100 names are all taken."""
    repo = _abs(repo_path)
    branch, folder = branch_name(prefix, card_id, title), worktree_folder(card_id, title)
    for n in range(1, 101):
        suffix = "" if n == 1 else f"-{n}"
        candidate = os.path.join(root, folder + suffix)
        taken = any(_commit_of(repo, f"{ref}{branch}{suffix}") for ref in ("refs/heads/", *also_taken_refs))
        if not taken and not os.path.lexists(candidate):
            return branch + suffix, candidate
    raise GitError(f"Branches {branch}, {branch}-2 … {branch}-100 all exist already in {repo}.")


# --------------------------------------------------------------------------
# Worktrees
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Listed:
    path: str
    branch: str | None  # short name; None when detached
    head: str | None


def _list_worktrees(repo: str) -> list[_Listed]:
    """Registered worktrees of ``repo``, the main one first."""
    out = _git(repo, "worktree", "list", "--porcelain", doing="list worktrees", read_only=True).out
    found: list[_Listed] = []
    for block in re.split(r"\n\s*\n", out.strip()):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            fields[key] = value
        if "worktree" not in fields or "bare" in fields:
            continue
        ref = fields.get("branch", "")
        branch = ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else None
        found.append(_Listed(fields["worktree"], branch, fields.get("HEAD")))
    return found


def _merge_base(repo: str, a: str, b: str, base_name: str, branch: str) -> str:
    r = _git(repo, "merge-base", a, b, check=False, read_only=True)
    if r.status == 0 and r.out.strip():
        return r.out.strip()
    if r.status == 1:
        raise GitError(f"Branch '{branch}' shares no history with '{base_name}' in {repo}.")
    raise GitError(f"Could not find where '{branch}' left '{base_name}': {_tail(r.err)}")


def ensure_worktree(repo_path: str, base_branch: str, branch: str, path: str) -> Worktree:
    """Make (or reuse) the worktree at ``path`` with ``branch`` checked out.

    Steps: resolve ``base_branch`` (see :func:`resolve_base`); ``git worktree
    prune`` to drop records of folders deleted by hand; then

    * ``path`` already a worktree of this repository on ``branch``: reused,
      ``created=False``, ``base_commit`` = merge-base of branch and base;
    * ``branch`` exists: ``git worktree add path branch``, ``base_commit`` =
      merge-base of branch and base;
    * otherwise: ``git worktree add -b branch path <base sha>``,
      ``base_commit`` = that sha.

    Parent folders of ``path`` are created. The user's checkout (its HEAD,
    branch, index and uncommitted or untracked files) is never touched; the
    worktree starts from the *committed* base, whatever state the checkout is
    in (dirty, detached). Returns a :class:`Worktree` with absolute ``path``.

    Raises :class:`NotARepository`, :class:`EmptyRepository`,
    :class:`BranchNotFound` (base missing), and :class:`GitError` when
    ``branch`` is not a valid name, ``path`` is the repository itself, a worktree
    on another branch, or a non-empty folder, or ``branch`` is checked out in
    another folder.
    """
    repo = _abs(repo_path)
    target = _abs(path)
    _, base_sha = _base_ref(repo, base_branch)

    valid = bool(branch) and not branch.startswith("-")
    if valid:
        checked = _git(repo, "check-ref-format", "--branch", branch, check=False)
        # --branch also expands '@{-1}' to another name; only a name that comes
        # back unchanged is a plain, valid branch name.
        valid = checked.status == 0 and checked.out.strip() == branch
    if not valid:
        raise GitError(f"'{branch}' is not a valid git branch name.")

    _git(repo, "worktree", "prune", doing="clean up stale worktree records")
    listed = _list_worktrees(repo)

    if _same_path(repo, target) or (listed and _same_path(listed[0].path, target)):
        raise GitError(f"The worktree folder {target} is the repository's own checkout; choose another folder.")
    for wt in listed:
        if _same_path(wt.path, target):
            if wt.branch == branch:
                base = _merge_base(repo, base_sha, f"refs/heads/{branch}", base_branch, branch)
                return Worktree(path=target, branch=branch, base_commit=base, created=False)
            on = f"branch '{wt.branch}'" if wt.branch else "a detached HEAD"
            raise GitError(f"{target} is already a worktree of {repo}, but on {on}, not on '{branch}'.")
    for wt in listed:
        if wt.branch == branch:
            raise GitError(
                f"Branch '{branch}' is already checked out at {wt.path}; remove that worktree before using {target}."
            )
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise GitError(f"Cannot create a worktree at {target}: something else is already there.")

    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
    except OSError as exc:
        raise GitError(f"Cannot create the folder for the worktree {target}: {exc.strerror or exc}.") from exc

    existing = _commit_of(repo, f"refs/heads/{branch}")
    if existing is None:
        made = _git(repo, "worktree", "add", "-b", branch, target, base_sha, check=False)
        if made.status == 0:
            return Worktree(path=target, branch=branch, base_commit=base_sha, created=True)
        # Another process may have made the branch in the meantime (or a
        # lock-retried attempt made it before failing): fall through and use it.
        if _commit_of(repo, f"refs/heads/{branch}") is None:
            _raise_add_failed(repo, target, branch, made)

    made = _git(repo, "worktree", "add", target, branch, check=False)
    if made.status != 0:
        _raise_add_failed(repo, target, branch, made)
    base = _merge_base(repo, base_sha, f"refs/heads/{branch}", base_branch, branch)
    return Worktree(path=target, branch=branch, base_commit=base, created=True)


def _raise_add_failed(repo: str, target: str, branch: str, result: _Result) -> None:
    # A failing post-checkout hook makes `worktree add` exit non-zero although
    # the worktree exists; that worktree is usable, so only raise when it is not.
    for wt in _list_worktrees(repo):
        if _same_path(wt.path, target) and wt.branch == branch:
            return
    raise GitError(f"Could not create the worktree {target} on branch '{branch}': {_tail(result.err or result.out)}")


def remove_worktree(repo_path: str, path: str) -> None:
    """Delete the worktree folder ``path`` of ``repo_path`` and its record.

    Runs ``git worktree remove --force`` (uncommitted and untracked files in
    it are lost; the branch and its commits stay) then ``git worktree prune``.
    A ``path`` that no longer exists is fine (only the prune runs). Raises
    :class:`NotARepository` for a bad ``repo_path`` and :class:`GitError` when
    ``path`` exists but is not a removable worktree of that repository (it is
    then left alone).
    """
    repo = _abs(repo_path)
    target = _abs(path)
    if os.path.lexists(target):
        _git(repo, "worktree", "remove", "--force", target, doing=f"remove the worktree {target}")
    _git(repo, "worktree", "prune", doing="clean up stale worktree records")


def worktrees_under(repo_path: str, folder: str) -> list[tuple[str, str | None]]:
    """The registered worktrees of ``repo_path`` whose path lies inside ``folder``, as
    ``(path, branch)`` pairs (branch None when detached), after pruning stale records. Raises
    :class:`NotARepository` and :class:`GitError`."""
    repo = _abs(repo_path)
    _git(repo, "worktree", "prune", doing="clean up stale worktree records")
    root = os.path.realpath(folder)
    return [
        (w.path, w.branch)
        for w in _list_worktrees(repo)
        if os.path.realpath(w.path).startswith(root.rstrip(os.sep) + os.sep)
    ]


def branch_exists(repo_path: str, branch: str) -> bool:
    """Whether the local branch ``branch`` exists in ``repo_path``."""
    return _commit_of(_abs(repo_path), f"refs/heads/{branch}") is not None


def unlanded_commits(repo_path: str, base_branch: str, branch: str) -> int:
    """How many commits of ``branch`` are not on ``base_branch`` (0 when the branch is missing):
    the work that deleting the branch would lose. Raises :class:`GitError` when the base is
    missing."""
    repo = _abs(repo_path)
    if not branch_exists(repo, branch):
        return 0
    base_ref, _ = _base_ref(repo, base_branch)
    out = _git(repo, "rev-list", "--count", f"{base_ref}..refs/heads/{branch}", doing="count the branch's commits", read_only=True).out
    return int(out.strip() or 0)


def delete_branch(repo_path: str, branch: str) -> None:
    """Delete the local branch ``branch`` (its commits too, unless something else holds them);
    a missing branch is fine. Raises :class:`GitError`, e.g. when it is checked out somewhere."""
    repo = _abs(repo_path)
    if branch_exists(repo, branch):
        _git(repo, "branch", "-D", "--", branch, doing=f"delete the branch {branch}")


def move_branch(repo_path: str, branch: str, sha: str) -> None:
    """Point the local branch ``branch`` at commit ``sha`` (``git branch -f``), as a local
    rebase would leave it. Raises :class:`GitError`, e.g. when it is checked out somewhere."""
    repo = _abs(repo_path)
    _git(repo, "branch", "-f", "--", branch, _check_commit(repo, sha), doing=f"move the branch {branch}")


# --------------------------------------------------------------------------
# Commits and diffs
# --------------------------------------------------------------------------


def _check_identity(identity: Identity) -> None:
    for label, value in (("name", identity.name), ("email", identity.email)):
        if not value or not value.strip() or any(c in value for c in "<>\n\r\0"):
            raise GitError(
                f"The commit identity's {label} {value!r} is not usable; set a name and an email "
                "without '<', '>' or line breaks in the board's settings."
            )


def _trailer_lines(trailers: Mapping[str, str] | None) -> list[str]:
    lines = []
    for key, value in (trailers or {}).items():
        # git only recognises a trailer whose key is a token and whose value
        # stays on one line.
        token = re.sub(r"[^A-Za-z0-9-]+", "-", str(key)).strip("-")
        if token:
            lines.append(f"{token}: {' '.join(str(value).split())}")
    return lines


def commit_all(
    worktree_path: str,
    message: str,
    identity: Identity,
    trailers: dict[str, str] | None = None,
) -> str | None:
    """Stage everything (``git add -A``, honouring .gitignore) and commit it.

    ``message``: the commit message (``"Checkpoint"`` if blank). ``trailers``:
    appended after a blank line as ``Key: value`` lines, in dict order (keys
    reduced to letters, digits and ``-``; values to one line). Author and
    committer are ``identity``, whatever git config says. Hooks run (no
    ``--no-verify``); commit signing is turned off, since a background worker
    cannot answer a passphrase prompt.

    Returns the new commit's full sha, or ``None`` when nothing changed.
    Raises :class:`NotARepository` for a bad path and :class:`GitError` when
    the identity is unusable or the commit fails; a failing hook's output is
    part of the message.
    """
    wt = _worktree(worktree_path)
    _check_identity(identity)
    _git(wt, "add", "-A", doing=f"stage the changes in {wt}")

    staged = _git(wt, "diff", "--cached", "--quiet", "--no-ext-diff", check=False)
    if staged.status == 0:
        return None
    if staged.status != 1:
        raise GitError(f"Could not compare the staged changes in {wt}: {_tail(staged.err)}")

    text = (message or "").replace("\0", "").strip() or "Checkpoint"
    lines = _trailer_lines(trailers)
    if lines:
        text = f"{text}\n\n" + "\n".join(lines)

    result = _git(
        wt,
        "-c", "commit.gpgsign=false",
        "commit", "--quiet", "--cleanup=whitespace", "-m", text,
        env=identity.env(),
        check=False,
    )
    if result.status != 0:
        # Another process may have committed our staged changes between the
        # check above and this commit; git then only says there is nothing to do.
        if re.search(r"^(nothing to commit|nothing added to commit|no changes added to commit)", result.out, re.M):
            return None
        output = _tail("\n".join(part for part in (result.out.strip(), result.err.strip()) if part))
        raise GitError(f"The commit in {wt} was refused (a git hook may have failed): {output or 'no output'}")
    return _git(wt, "rev-parse", "HEAD", doing="read the new commit", read_only=True).out.strip()


def _check_commit(repo: str, rev: str) -> str:
    if not rev or rev.startswith("-"):
        raise GitError(f"'{rev}' is not a commit in {repo}.")
    sha = _commit_of(repo, rev)
    if sha is None:
        raise GitError(f"Commit '{rev}' does not exist in {repo}.")
    return sha


def new_commits(worktree_path: str, base_commit: str) -> list[Commit]:
    """Commits reachable from the worktree's HEAD but not from ``base_commit``
    (``git log base..HEAD``), oldest first, as :class:`Commit` values.

    Raises :class:`NotARepository` for a bad path and :class:`GitError` when
    ``base_commit`` is not a commit of the repository.
    """
    wt = _worktree(worktree_path)
    return commits_between(wt, _check_commit(wt, base_commit), "HEAD", doing="list the new commits")


def commits_between(repo: str, base: str, tip: str, doing: str) -> list[Commit]:
    """The commits of ``git log base..tip`` in the repository at ``repo`` (an absolute path),
    oldest first, as :class:`Commit` values. Raises :class:`GitError` saying ``doing`` when git
    fails."""
    out = _git(
        repo, "log", "--reverse", "--no-show-signature", "-z", "--format=%H%n%an%n%aI%n%s", f"{base}..{tip}",
        doing=doing, read_only=True,
    ).out
    commits = []
    for record in out.split("\0"):
        if not record.strip():
            continue
        sha, author, date, subject = (record.lstrip("\n").split("\n", 3) + ["", "", ""])[:4]
        commits.append(Commit(sha=sha, subject=subject, author=author, date=date))
    return commits


def refs_under(repo_path: str, prefix: str) -> list[str]:
    """Full names of the refs whose names start with ``prefix`` (such as ``refs/board/``)."""
    out = _git(_abs(repo_path), "for-each-ref", "--format=%(refname)", prefix, doing="list refs", read_only=True).out
    return [line for line in out.splitlines() if line.strip()]


def roll_back(worktree_path: str, base_commit: str, target: str, keep_ref: str) -> str:
    """Reset the worktree's branch to ``target``, one of its commits since ``base_commit`` (or
    the base commit itself), keeping what is rolled back recoverable: the branch's current
    commit is first saved as the ref ``keep_ref`` (such as ``refs/board/rollbacks/card-7/1``).
    Only the board's own worktree is touched, never the user's checkout. The caller commits
    uncommitted work first (``commit_all``), or it is lost with the reset.

    Returns the saved commit's sha. Raises :class:`GitError` when ``target`` is not on the
    branch since its base, or ``keep_ref`` is not a valid new ref name under ``refs/``.
    """
    wt = _worktree(worktree_path)
    base = _check_commit(wt, base_commit)
    sha = _check_commit(wt, target)
    if not keep_ref.startswith("refs/") or _git(wt, "check-ref-format", keep_ref, check=False, read_only=True).status:
        raise GitError(f"'{keep_ref}' is not a valid ref name.")
    on_branch = sha == base or any(c.sha == sha for c in new_commits(wt, base))
    if not on_branch:
        raise GitError(f"Commit {target[:12]} is not one of the card's checkpoints.")
    head = _git(wt, "rev-parse", "HEAD", doing="read the branch's commit", read_only=True).out.strip()
    if head == sha:
        raise GitError(f"The branch is at {sha[:12]} already; nothing to roll back.")
    # update-ref with an empty old value refuses to overwrite an existing ref.
    _git(wt, "update-ref", keep_ref, head, "", doing=f"keep {head[:12]} as {keep_ref}")
    _git(wt, "reset", "--hard", "--quiet", sha, doing=f"reset the card's branch to {sha[:12]}")
    return head


def diff_against_base(repo_path: str, base_branch: str, branch: str) -> str:
    """Unified diff of ``branch`` against where it left ``base_branch``.

    Runs ``git diff --no-color -M base...branch`` (three dots: from the
    merge-base, so commits added to the base since do not show). ``base_branch``
    may be local or remote-tracking, ``branch`` is local. Paths use the
    ``a/`` and ``b/`` prefixes whatever the user's config. Returns the patch
    text (``""`` when there is no difference; undecodable bytes become
    U+FFFD). Raises :class:`BranchNotFound` when either branch is missing,
    :class:`NotARepository`, :class:`GitError`.
    """
    repo = _abs(repo_path)
    base_ref, _ = _base_ref(repo, base_branch)
    if not branch or _commit_of(repo, f"refs/heads/{branch}") is None:
        raise BranchNotFound(f"Branch '{branch}' does not exist in {repo}.")
    return _git(
        repo,
        "diff", "--no-color", "--no-ext-diff", "--no-textconv", "-M",
        "--src-prefix=a/", "--dst-prefix=b/",
        f"{base_ref}...refs/heads/{branch}",
        doing=f"compare '{branch}' with '{base_branch}'", read_only=True, strip=False,
    ).out


# Options of every diff the review reads: the same output whatever the user's git config says
# (external diff tools, textconv filters, prefixes, a "relative" default).
_DIFF_OPTIONS = ("--no-color", "--no-ext-diff", "--no-textconv", "--no-relative", "-M")


def branch_range(repo_path: str, base_branch: str, branch: str) -> tuple[str, str]:
    """``(old, new)``: full shas of where ``branch`` (a local branch, or a full ref such as a
    remote-tracking ``refs/remotes/origin/x``) left ``base_branch`` (their merge-base) and of
    the branch's tip, so that later reads of one diff see
    the same commits even while an agent adds more. Raises
    :class:`BranchNotFound`, :class:`NotARepository`, :class:`GitError` (no
    shared history)."""
    repo = _abs(repo_path)
    base_ref, _ = _base_ref(repo, base_branch)
    tip = _commit_of(repo, branch if branch.startswith("refs/") else f"refs/heads/{branch}") if branch else None
    if tip is None:
        raise BranchNotFound(f"Branch '{branch}' does not exist in {repo}.")
    return _merge_base(repo, base_ref, tip, base_branch, branch), tip


def commit_range(repo_path: str, sha: str) -> tuple[str, str]:
    """``(old, new)``: full shas of commit ``sha``'s first parent (the empty tree for a root
    commit) and of ``sha`` itself: the change one commit made, such as a landing's merge or
    squash commit on the base. Raises :class:`GitError` when ``sha`` is not a commit."""
    repo = _abs(repo_path)
    new = _check_commit(repo, sha)
    return _parent_or_empty_tree(repo, new), new


def _parent_or_empty_tree(repo: str, sha: str) -> str:
    parent = _commit_of(repo, f"{sha}^1")
    if parent:
        return parent
    # A root commit is compared with the empty tree, whose id depends on the repository's hash.
    return _git(repo, "hash-object", "-t", "tree", "/dev/null", doing="name the empty tree", read_only=True).out.strip()


def checkpoint_range(repo_path: str, base_branch: str, branch: str, commit: str) -> tuple[str, str]:
    """``(old, new)`` for the diff of one of ``branch``'s own commits: its first
    parent (the empty tree for a root commit) and its full sha. ``commit`` is
    a full or abbreviated sha. A commit of the branch is one reachable from its
    tip but not from where it left ``base_branch``. Raises
    :class:`CommitNotOnBranch` for anything else (another branch's commit, a
    base commit, garbage), :class:`BranchNotFound`, :class:`GitError`."""
    repo = _abs(repo_path)
    merge_base, tip = branch_range(repo, base_branch, branch)
    sha = None
    if commit and re.fullmatch(r"[0-9a-fA-F]{4,64}", commit):
        sha = _commit_of(repo, commit)
    if sha is None:
        raise CommitNotOnBranch(f"'{commit[:80]}' is not a commit of the branch '{branch}'.")

    def is_ancestor(a: str, b: str) -> bool:
        return _git(repo, "merge-base", "--is-ancestor", a, b, check=False, read_only=True).status == 0

    if not is_ancestor(sha, tip) or is_ancestor(sha, merge_base):
        raise CommitNotOnBranch(f"Commit {sha[:12]} is not one of the commits of the branch '{branch}'.")
    return _parent_or_empty_tree(repo, sha), sha


def changed_files(repo_path: str, old: str, new: str) -> list[ChangedFile]:
    """The files that differ between commits ``old`` and ``new`` (renames
    detected), in git's order (by path), with their line counts: cheap even
    for a huge diff, since no patch text is made (``git diff --raw --numstat
    -z -M``). Raises :class:`GitError` when either is not a commit."""
    repo = _abs(repo_path)
    out = _git(
        repo, "diff", *_DIFF_OPTIONS, "--raw", "--numstat", "-z", _check_commit(repo, old), _check_commit(repo, new),
        doing="list the changed files", read_only=True, strip=False,
    ).out
    fields = out.split("\0")
    raw: list[tuple[str, int | None, str, str]] = []  # (status letter, similarity, old path, new path)
    i = 0
    # First the --raw records (":modes shas STATUS", then one path, or two for a rename or copy) ...
    while i < len(fields) and fields[i].startswith(":"):
        letters = fields[i].split()[-1]
        kind, score = letters[:1], letters[1:]
        if kind in "RC":
            raw.append((kind, int(score) if score.isdigit() else None, fields[i + 1], fields[i + 2]))
            i += 3
        else:
            raw.append((kind, None, fields[i + 1], fields[i + 1]))
            i += 2
    # ... then as many --numstat records ("added<TAB>deleted<TAB>path", or with an empty path
    # followed by the old and the new path), in the same order.
    counts: list[tuple[str, str]] = []
    while i < len(fields) and len(counts) < len(raw):
        added, deleted, path = (fields[i].split("\t", 2) + ["", ""])[:3]
        counts.append((added, deleted))
        i += 1 if path else 3
    names = {"A": "added", "D": "deleted", "M": "modified", "R": "renamed", "C": "copied", "T": "type changed"}
    files = []
    for (kind, score, before, after), (added, deleted) in zip(raw, counts):
        binary = added == "-"
        files.append(ChangedFile(
            path=after, old_path="" if kind == "A" else before, status=names.get(kind, "modified"),
            added=0 if binary else int(added or 0), deleted=0 if binary else int(deleted or 0),
            binary=binary, similarity=score,
        ))
    return files


def diff_between(repo_path: str, old: str, new: str, paths: list[str] | None = None) -> str:
    """Unified diff (``a/`` and ``b/`` prefixes, renames detected, binary files
    named as ``Binary files … differ``) from commit ``old`` to commit ``new``,
    only of ``paths`` when given (taken literally, no wildcards; give a renamed
    file's old path as well as its new one, or it shows as added). Returns
    ``""`` for no difference; undecodable bytes become U+FFFD. Raises
    :class:`GitError` when either is not a commit."""
    repo = _abs(repo_path)
    return _git(
        repo, "diff", *_DIFF_OPTIONS, "--src-prefix=a/", "--dst-prefix=b/",
        _check_commit(repo, old), _check_commit(repo, new), "--", *(paths or []),
        env={"GIT_LITERAL_PATHSPECS": "1"}, doing="read the diff", read_only=True, strip=False,
    ).out


def diff_of_commit(repo_path: str, sha: str, paths: list[str] | None = None) -> str:
    """The diff a commit made: against its first parent (a merge commit
    included), or the empty tree for a root commit; see :func:`diff_between`.
    Raises :class:`GitError` when ``sha`` is not a commit."""
    repo = _abs(repo_path)
    commit = _check_commit(repo, sha)
    return diff_between(repo, _parent_or_empty_tree(repo, commit), commit, paths)


def diffstat(worktree_path: str, base_commit: str) -> str:
    """One-line summary of the committed changes since ``base_commit``
    (``git diff --shortstat -M base HEAD``), e.g.
    ``"3 files changed, 10 insertions(+), 2 deletions(-)"``, or ``"no changes"``.

    Uncommitted changes are not counted (see :func:`has_changes`). Raises
    :class:`NotARepository` and :class:`GitError` (``base_commit`` unknown).
    """
    wt = _worktree(worktree_path)
    base = _check_commit(wt, base_commit)
    out = _git(wt, "diff", "--shortstat", "-M", base, "HEAD", doing="summarise the changes", read_only=True).out
    return out.strip() or "no changes"


def current_branch(worktree_path: str) -> str | None:
    """The branch checked out in the worktree, or None on a detached HEAD. Raises
    :class:`NotARepository` and :class:`GitError`."""
    wt = _worktree(worktree_path)
    r = _git(wt, "symbolic-ref", "--quiet", "--short", "HEAD", check=False, read_only=True)
    return r.out.strip() if r.status == 0 and r.out.strip() else None


def has_changes(worktree_path: str) -> bool:
    """True when the working tree has uncommitted work: modified, staged,
    deleted or untracked files (files ignored by .gitignore do not count).
    Raises :class:`NotARepository` and :class:`GitError`."""
    wt = _worktree(worktree_path)
    out = _git(
        wt, "status", "--porcelain", "-z", "--untracked-files=normal",
        doing=f"read the status of {wt}", read_only=True,
    ).out
    return bool(out.strip("\0").strip())


# --------------------------------------------------------------------------
# What a new worktree holds besides the checkout
# --------------------------------------------------------------------------


def _matches(rel: str, pattern: str) -> bool:
    """Whether ``rel`` (a file's path relative to the repository, ``/``-separated) is named by
    ``pattern``: a glob on the whole path (``config/*.py``), on the file name alone when the
    pattern has no ``/`` (``.env``, ``*.pem``), or a folder and everything below it (``certs/``)."""
    pattern = pattern.strip().lstrip("/")
    if pattern.endswith("/"):
        return rel.startswith(pattern)
    if "/" not in pattern:
        return fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(rel, pattern) or rel.startswith(pattern + "/")


def copy_ignored_files(repo_path: str, worktree_path: str, patterns: list[str]) -> list[str]:
    """Copy into the worktree the files of the user's checkout that git ignores and ``patterns``
    name (see :func:`_matches`), such as ``.env``; files already in the worktree are left as they
    are. Tracked files are never copied: the checkout holds them already. Returns the copied
    paths, relative and sorted. Raises :class:`NotARepository` and :class:`GitError`; a file that
    cannot be read raises GitError naming it."""
    patterns = [p for p in (p.strip() for p in patterns) if p]
    if not patterns:
        return []
    repo, wt = _abs(repo_path), _abs(worktree_path)
    out = _git(
        repo, "ls-files", "--others", "--ignored", "--exclude-standard", "-z",
        doing="list the ignored files", read_only=True,
    ).out
    copied = []
    for rel in sorted(filter(None, out.split("\0"))):
        if not any(_matches(rel, p) for p in patterns):
            continue
        source, target = os.path.join(repo, rel), os.path.join(wt, rel)
        if os.path.lexists(target) or not os.path.isfile(source):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            shutil.copy2(source, target, follow_symlinks=False)
        except OSError as exc:
            raise GitError(f"Could not copy {rel} into the worktree: {exc.strerror or exc}") from exc
        copied.append(rel)
    return copied


def _uses_lfs(worktree: str) -> bool:
    attributes = os.path.join(worktree, ".gitattributes")
    try:
        with open(attributes, encoding="utf-8", errors="replace") as f:
            return any("filter=lfs" in line for line in f)
    except OSError:
        return False


def prepare_worktree(worktree_path: str) -> list[str]:
    """Finish a new worktree's checkout: initialise its submodules (recursively) and check that
    Git LFS is there when the repository uses it. Returns one line per thing done, for the card.
    Raises :class:`GitError` with a clear reason: LFS used but git-lfs not installed, or a
    submodule that cannot be fetched."""
    wt = _worktree(worktree_path)
    done = []
    if _uses_lfs(wt) and _git(wt, "lfs", "version", check=False, read_only=True).status != 0:
        raise GitError(
            "This repository uses Git LFS (filter=lfs in .gitattributes) but git-lfs is not installed "
            "on this machine: install it (apt-get install git-lfs, or see git-lfs.com) and start the card again."
        )
    if os.path.exists(os.path.join(wt, ".gitmodules")):
        # Submodules cloned from local paths need the file protocol, which git refuses by default
        # since 2.38.1 (CVE-2022-39253) unless allowed for this one command.
        _git(
            wt, "-c", "protocol.file.allow=always", "submodule", "update", "--init", "--recursive",
            doing="initialise the submodules",
        )
        done.append("Submodules initialised")
    return done
