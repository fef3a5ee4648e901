"""Landing a card: the joiner of the domain's guards and records (``Card.check_can_land``,
``Card.record_landing``, …) with the git work of :mod:`agents.landing_git`, as the runner joins
runs with worktrees and agents.

Every function here takes a Card, refuses with BoardError (the domain's reasons) or a GitError
subclass (git's reasons: a dirty checkout, conflicts, a base that moved, no ``gh``), and returns
a sentence for the lead. Landings of one project are serialised with a lock file in the data
folder, so two leads pressing Land at once take turns instead of racing for the base branch.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from django.conf import settings

from agents import clones, landing_git, shared_remote, worktrees
from agents.runner import _identity
from board.models import BoardError, Card, LandMode, Run

LandingError = worktrees.GitError  # what the views catch besides BoardError


@contextlib.contextmanager
def _project_lock(card: Card):
    """Hold the landing lock of the card's project (a file under the data folder, flock'ed):
    one landing, rebase or conflict check per project at a time, across web processes."""
    folder = settings.DATA_DIR / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"landing-{card.project_id}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _refuse_shared_remote(card: Card, doing: str) -> None:
    """Raise BoardError for git work on the card's branch that this board does not do yet for a
    project whose cards live on a shared remote (workers on other hosts): it would rewrite a
    branch other nodes have, or act on the user's checkout, which the cards' branches are not in."""
    if shared_remote.is_multi_host(card.project):
        raise BoardError(
            f"{doing} is not available yet for projects whose cards work from a shared remote "
            f"({card.project.remote_url}): the card's branch {card.branch or ''} is there; land it, "
            "or merge it from the remote by hand (or with a pull request) and mark the card done."
        )


def _fresh(card: Card) -> Card:
    return Card.objects.select_related("project", "current_run", "agent").get(pk=card.pk)


def _message(card: Card, mode: str) -> str:
    """The merge or squash commit's message: what the card did, with a Card trailer like the
    board's other commits."""
    run = card.current_run
    if mode == LandMode.MERGE:
        subject = f"Merge card #{card.pk}: {card.title} ({card.branch})"
    else:
        subject = f"Card #{card.pk}: {card.title}"
    body = (run.summary if run and run.summary else "").strip()
    return f"{subject}\n\n{body}\n\nCard: #{card.pk}" if body else f"{subject}\n\nCard: #{card.pk}"


def land_card(card: Card, mode: str | None = None) -> str:
    """Land the card's branch on its project's base branch by ``mode`` (a LandMode value; None:
    the card's, else the project's), then move the card to Done, remove its worktree (committing
    on its branch anything left there uncommitted first) and delete its branch when the project
    says so and the branch holds nothing that did not land. Returns a sentence saying what
    happened.

    Raises BoardError for a mode that does not exist and as ``Card.check_can_land`` (already
    landed, a run still active, not in Review), and the errors of ``landing_git.land`` (a dirty
    checkout, conflicts, a base that moved…), in which case nothing changed. Conflicts found are
    also stored on the card (``Card.record_conflicts``) so it shows them."""
    card = _fresh(card)
    mode = mode or card.effective_land_mode
    if mode not in LandMode.values:
        raise BoardError(f"'{mode}' is not a landing mode; use one of {', '.join(LandMode.values)}.")
    card.check_can_land()
    project = card.project
    if shared_remote.is_multi_host(project):
        return _land_on_shared_remote(card, mode)
    with _project_lock(card):
        card = _fresh(card)
        card.check_can_land()  # again, inside the lock: another landing of this card may just have ended
        work_dir = str(settings.WORKTREES_DIR / str(project.pk))
        try:
            sha = landing_git.land(project.repo_path, project.base_branch, card.branch, mode, _identity(),
                                   _message(card, mode), work_dir=work_dir)
        except landing_git.MergeConflict as exc:
            card.record_conflicts(exc.base, exc.files)
            raise
        base = project.base_branch
        card.record_landing(sha, mode, f"landed on {base} as {sha[:10]} ({LandMode(mode).label.lower()})")
    return f"Landed on {base} as {sha[:10]} ({LandMode(mode).label.lower()}). " + _clean_up(
        card, rebased_tip=sha if mode == LandMode.REBASE else None
    )


def _land_on_shared_remote(card: Card, mode: str) -> str:
    """Land a card of a project with a shared remote: in this node's clone, fetched now, the
    card's pushed branch goes onto the remote's base, which is then pushed (fast-forward only, so
    a base that moved on the remote fails cleanly and nothing changed). The card's branch stays
    on the remote as it is (deleted there when the project says so), and worker nodes keep
    their worktrees of it until they remove them. Raises as land_card."""
    project = card.project
    with _project_lock(card):
        card = _fresh(card)
        card.check_can_land()
        repo = shared_remote.fresh_clone(project)
        try:
            sha = clones.land_on_remote(repo, project.base_branch, card.branch, mode, _identity(), _message(card, mode),
                                        work_dir=str(settings.WORKTREES_DIR / str(project.pk)))
        except landing_git.MergeConflict as exc:
            card.record_conflicts(exc.base, exc.files)
            raise
        base = project.base_branch
        card.record_landing(sha, mode, f"landed on {base} of the shared remote as {sha[:10]} "
                                       f"({LandMode(mode).label.lower()})")
    note = f"Landed on {base} of the shared remote as {sha[:10]} ({LandMode(mode).label.lower()})."
    if not project.delete_branch_on_land:
        return f"{note} The branch {card.branch} was kept on the shared remote."
    try:
        clones.delete_remote_branch(repo, card.branch)
    except worktrees.GitError as exc:
        return f"{note} The branch {card.branch} could not be deleted on the shared remote: {exc}"
    return f"{note} The branch {card.branch} was deleted on the shared remote."


def _rebase_on_shared_remote(card: Card) -> str:
    """Rebase a card of a project with a shared remote: its pushed branch, onto the remote's
    base, in this node's clone (clones.rebase_on_remote: pushed forced with a lease). No node's
    worktree is up to date then, so whichever runs the card next moves to the rebased branch
    (keeping its own tip as a ref). Raises as rebase_card."""
    project = card.project
    with _project_lock(card):
        repo = shared_remote.fresh_clone(project)
        try:
            base, head = clones.rebase_on_remote(repo, project.base_branch, card.branch, _identity(),
                                                 str(settings.WORKTREES_DIR / str(project.pk)))
        except landing_git.MergeConflict as exc:
            card.record_conflicts(exc.base, exc.files)
            raise
        Card.objects.filter(pk=card.pk).update(worktree_host="")
        run = card.current_run
        if run is not None:
            commits = [c.sha for c in clones.pushed_commits(repo, base, card.branch)]
            Run.objects.filter(pk=run.pk).update(base_commit=base, commits=commits)
        card.record_conflicts(base, [])
    return f"Rebased {card.branch} onto {project.base_branch} ({base[:10]}) on the shared remote; it is at {head[:10]} now."


def _clean_up(card: Card, rebased_tip: str | None = None) -> str:
    """After a landing: the worktree goes (what it held uncommitted is committed on the branch
    first, as when a card is deleted), and the branch goes too when the project says so, unless
    that commit left it holding work that did not land. A branch kept after a rebase landing is
    moved to ``rebased_tip``, as a local rebase would leave it, so that it holds nothing that did
    not land. Failures are reported, never raised: the landing itself has happened."""
    project = card.project
    leftover = None
    try:
        if card.worktree_path and os.path.isdir(card.worktree_path):
            leftover = worktrees.commit_all(
                card.worktree_path, f"Card #{card.pk}: work left in the worktree after landing", _identity(),
                {"Card": f"#{card.pk}"},
            )
            worktrees.remove_worktree(project.repo_path, card.worktree_path)
    except worktrees.GitError as exc:
        return f"The worktree {card.worktree_path} could not be removed: {exc}"
    note = "The worktree was removed"
    if leftover:
        return (f"{note}; what it held uncommitted was committed on {card.branch} as {leftover[:10]}, which did not "
                "land, so the branch was kept.")
    if not project.delete_branch_on_land:
        if rebased_tip:
            try:
                worktrees.move_branch(project.repo_path, card.branch, rebased_tip)
            except worktrees.GitError as exc:
                return f"{note}; the branch {card.branch} was kept at its commits before the rebase: {exc}"
            return f"{note}; the branch {card.branch} was kept, moved to the rebased commits."
        return f"{note}; the branch {card.branch} was kept."
    try:
        worktrees.delete_branch(project.repo_path, card.branch)
    except worktrees.GitError as exc:
        return f"{note}, but the branch {card.branch} could not be deleted: {exc}"
    return f"{note} and the branch {card.branch} deleted."


def check_conflicts(card: Card) -> list[str]:
    """Try merging the card's branch into the base now (objects only: nothing anyone sees
    changes) and store the result on the card (``Card.conflicts``); returns the conflicting
    paths, [] when none. Raises BoardError when the card has no branch or has landed, and
    GitError."""
    card = _fresh(card)
    if card.landed_commit:
        raise BoardError(f"This card has already landed as {card.landed_commit[:10]}.")
    if not card.branch:
        raise BoardError("Nothing to check: the card has no branch yet; start it first.")
    project = card.project
    if shared_remote.is_multi_host(project):
        base, files = clones.trial_merge_on_remote(shared_remote.fresh_clone(project), project.base_branch, card.branch)
        card.record_conflicts(base, files)
        return files
    base = worktrees.resolve_base(project.repo_path, project.base_branch)
    files = landing_git.trial_merge(project.repo_path, project.base_branch, card.branch)
    card.record_conflicts(base, files)
    return files


def rebase_card(card: Card) -> str:
    """Rebase the card's branch onto the current base, in the card's own worktree (what it holds
    uncommitted is committed first). On success the latest run's base commit and commits are
    brought up to date, so the card's diff and checkpoints count from the new base, and the card
    shows no conflicts. On a conflict the rebase is abandoned, everything is as it was, and the
    conflicting files are stored on the card. Returns a sentence. Raises BoardError (running,
    landed, no branch or worktree) and GitError (MergeConflict with ``files``)."""
    card = _fresh(card)
    card.check_branch_idle("rebase")
    if shared_remote.is_multi_host(card.project):
        return _rebase_on_shared_remote(card)
    if not (card.worktree_path and os.path.isdir(card.worktree_path)):
        raise BoardError("This card has no worktree to rebase in.")
    project = card.project
    with _project_lock(card):
        worktrees.commit_all(card.worktree_path, f"Card #{card.pk}: work left before a rebase", _identity(),
                             {"Card": f"#{card.pk}"})
        base = worktrees.resolve_base(project.repo_path, project.base_branch)
        try:
            head = landing_git.rebase_onto_base(card.worktree_path, project.base_branch, _identity())
        except landing_git.MergeConflict as exc:
            card.record_conflicts(exc.base, exc.files)
            raise
        run = card.current_run
        if run is not None:
            commits = [c.sha for c in worktrees.new_commits(card.worktree_path, base)]
            Run.objects.filter(pk=run.pk).update(base_commit=base, commits=commits)
        card.record_conflicts(base, [])
    return f"Rebased {card.branch} onto {project.base_branch} ({base[:10]}); it is at {head[:10]} now."


def push_card(card: Card, pull_request: bool = False) -> str:
    """Push the card's branch to the project's remote and, with ``pull_request``, open a pull
    request into the base with ``gh`` and store its link on the card. Returns a sentence. Raises
    BoardError (no branch) and GitError: PushError, PullRequestError (no ``gh``, not logged in;
    the branch is pushed by then, and the message says so)."""
    card = _fresh(card)
    _refuse_shared_remote(card, "Pushing to the pull-request remote")
    if not card.branch:
        raise BoardError("Nothing to push: the card has no branch yet; start it first.")
    if card.is_running:
        # What the agent commits meanwhile would miss the push; it is cheap to wait.
        raise BoardError("A run of this card is still going: wait for it to end or stop it, then push.")
    project = card.project
    landing_git.push_branch(project.repo_path, project.remote, card.branch)
    note = f"Pushed {card.branch} to {project.remote}."
    if not pull_request:
        return note
    run = card.current_run
    body = "\n\n".join(part for part in (card.prompt.strip(), (run.summary if run else "").strip(),
                                          f"Card #{card.pk} of the agent board.") if part)
    try:
        url = landing_git.open_pull_request(project.repo_path, project.remote, project.base_branch, card.branch,
                                            card.title, body)
    except landing_git.PullRequestError as exc:
        raise landing_git.PullRequestError(f"{note} {exc}") from exc
    card.record_pull_request(url)
    return f"{note} Pull request: {url}"

