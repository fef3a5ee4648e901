"""Landing, on real throwaway repositories: the git layer (agents/landing_git.py) and the domain
and joiner (Card.check_can_land and friends, agents/landing.py)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from agents import landing, landing_git, runner, worktrees
from agents.worktrees import BranchNotFound, Identity
from board.models import BoardError, Card, Column, Event, Run, RunState
from tests.conftest import git

BOARD = Identity("Land Bot", "land-bot@board.invalid")
BRANCH = "agent/1-work"
MODES = ("merge", "squash", "rebase")


def sha(repo, rev: str) -> str:
    return git(repo, "rev-parse", rev).strip()


def snapshot(repo: Path) -> dict:
    """Everything of the user's repository that a refused or abandoned landing must leave as it
    was: every ref, the checked-out branch and commit, the status, the worktrees, and the bytes
    of every file in the checkout (.git excluded)."""
    files = {}
    for path in sorted(repo.rglob("*")):
        if ".git" in path.relative_to(repo).parts or not path.is_file():
            continue
        files[str(path.relative_to(repo))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        "head": git(repo, "symbolic-ref", "-q", "HEAD") + sha(repo, "HEAD"),
        "status": git(repo, "status", "--porcelain=v1", "--untracked-files=all"),
        "worktrees": git(repo, "worktree", "list", "--porcelain"),
        "files": files,
    }


def commit(where: Path, files: dict[str, str | bytes | None], message: str) -> str:
    """Write ``files`` (None deletes one) in the worktree ``where`` and commit them all."""
    for rel, content in files.items():
        path = where / rel
        if content is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    git(where, "add", "-A")
    git(where, "commit", "-q", "-m", message)
    return sha(where, "HEAD")


@pytest.fixture
def repo(make_repo) -> Path:
    """The user's repository: main checked out (README.md, shared.txt), clean."""
    path = make_repo("user")
    commit(path, {"shared.txt": "one\ntwo\nthree\n"}, "Add shared.txt")
    return path


@pytest.fixture
def card_tree(repo, tmp_path) -> Path:
    """A card's worktree on BRANCH, made from main, outside the user's checkout."""
    path = tmp_path / "card-worktree"
    git(repo, "worktree", "add", "-q", "-b", BRANCH, str(path), "main")
    return path


def land(repo, mode="merge", branch=BRANCH, **kw) -> str:
    return landing_git.land(str(repo), "main", branch, mode, BOARD, f"Land {branch}", **kw)


# --------------------------------------------------------------------------
# Trial merges
# --------------------------------------------------------------------------


def test_trial_merge_names_the_conflicting_files_and_changes_nothing(repo, card_tree):
    commit(card_tree, {"shared.txt": "one\nCARD\nthree\n", "card.txt": "new\n"}, "Card edits")
    commit(repo, {"shared.txt": "one\nMAIN\nthree\n"}, "Main edits")
    before = snapshot(repo)
    assert landing_git.trial_merge(str(repo), "main", BRANCH) == ["shared.txt"]
    assert snapshot(repo) == before
    assert git(card_tree, "status", "--porcelain") == ""


def test_trial_merge_of_a_branch_that_merges_cleanly_is_empty(repo, card_tree):
    commit(card_tree, {"card.txt": "new\n"}, "Card edits")
    commit(repo, {"main.txt": "main\n"}, "Main edits")
    assert landing_git.trial_merge(str(repo), "main", BRANCH) == []


def test_trial_merge_of_a_missing_branch_says_so(repo):
    with pytest.raises(BranchNotFound, match="agent/9-gone"):
        landing_git.trial_merge(str(repo), "main", "agent/9-gone")


# --------------------------------------------------------------------------
# The user's checkout
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_dirty_checkout_of_the_base_is_refused_and_left_exactly_as_it_was(repo, card_tree, mode):
    commit(card_tree, {"card.txt": "card\n"}, "Card edits")
    (repo / "shared.txt").write_text("one\nmy unsaved edit\nthree\n")
    (repo / "staged.txt").write_text("staged\n")
    git(repo, "add", "staged.txt")
    (repo / "scratch.txt").write_text("untracked notes\n")
    before = snapshot(repo)
    with pytest.raises(landing_git.LandingRefused, match="uncommitted changes") as refused:
        land(repo, mode)
    assert "shared.txt" in str(refused.value) and "staged.txt" in str(refused.value)
    assert "never stashes, resets or overwrites" in str(refused.value)
    assert snapshot(repo) == before
    assert (repo / "shared.txt").read_text() == "one\nmy unsaved edit\nthree\n"
    assert git(repo, "stash", "list") == ""


@pytest.mark.parametrize("mode", MODES)
def test_a_clean_checkout_of_the_base_shows_the_landed_commit_with_nothing_changed(repo, card_tree, mode):
    commit(card_tree, {"card.txt": "card\n", "shared.txt": "one\ntwo\nthree\nfour\n"}, "Card edits")
    (repo / "scratch.txt").write_text("untracked notes\n")  # the user's: untouched, still untracked
    old = sha(repo, "main")
    new = land(repo, mode)
    assert sha(repo, "main") == new != old
    assert sha(repo, "HEAD") == new and git(repo, "symbolic-ref", "--short", "HEAD").strip() == "main"
    assert git(repo, "status", "--porcelain").splitlines() == ["?? scratch.txt"]
    assert (repo / "card.txt").read_text() == "card\n"
    assert (repo / "shared.txt").read_text() == "one\ntwo\nthree\nfour\n"
    assert (repo / "scratch.txt").read_text() == "untracked notes\n"


def test_landing_works_when_the_base_is_checked_out_nowhere(repo, card_tree):
    commit(card_tree, {"card.txt": "card\n"}, "Card edits")
    git(repo, "switch", "-q", "-c", "dev")
    (repo / "wip.txt").write_text("work in progress on dev\n")  # dirt on another branch is no concern
    before = snapshot(repo)
    new = land(repo)
    assert sha(repo, "main") == new
    assert git(repo, "show", "main:card.txt") == "card\n"
    after = snapshot(repo)
    assert after["head"] == before["head"] and after["status"] == before["status"]
    assert after["files"] == before["files"]


def test_a_base_checked_out_in_another_worktree_is_brought_forward_too(repo, card_tree, tmp_path):
    commit(card_tree, {"card.txt": "card\n"}, "Card edits")
    git(repo, "switch", "-q", "-c", "dev")
    other = tmp_path / "main-elsewhere"
    git(repo, "worktree", "add", "-q", str(other), "main")
    new = land(repo)
    assert sha(other, "HEAD") == new
    assert git(other, "status", "--porcelain") == ""
    assert (other / "card.txt").read_text() == "card\n"


def test_an_untracked_file_the_landing_would_overwrite_is_refused(repo, card_tree):
    commit(card_tree, {"notes/todo.txt": "the card's\n"}, "Card edits")
    (repo / "notes").mkdir()
    (repo / "notes" / "todo.txt").write_text("the user's own, untracked\n")
    before = snapshot(repo)
    with pytest.raises(landing_git.LandingRefused, match="would overwrite") as refused:
        land(repo)
    assert "notes/todo.txt" in str(refused.value)
    assert snapshot(repo) == before


def test_a_remote_tracking_base_is_refused_with_what_to_do_instead(repo, card_tree):
    commit(card_tree, {"card.txt": "card\n"}, "Card edits")
    git(repo, "update-ref", "refs/remotes/origin/main", "main")
    with pytest.raises(landing_git.LandingRefused, match="pull request"):
        landing_git.land(str(repo), "origin/main", BRANCH, "merge", BOARD, "x")


def test_a_branch_with_nothing_new_has_nothing_to_land(repo, card_tree):
    before = snapshot(repo)
    with pytest.raises(landing_git.NothingToLand):
        land(repo)
    assert snapshot(repo) == before


# --------------------------------------------------------------------------
# The base moved on
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_landing_after_the_base_moved_ahead_cleanly_keeps_both_sides(repo, card_tree, mode):
    commit(card_tree, {"card.txt": "card\n"}, "Card edits")
    ahead = commit(repo, {"main.txt": "main\n"}, "Main moved on")
    new = land(repo, mode)
    assert git(repo, "merge-base", "--is-ancestor", ahead, new) == ""  # raises if not
    assert git(repo, "show", "main:main.txt") == "main\n" and git(repo, "show", "main:card.txt") == "card\n"
    assert git(repo, "status", "--porcelain") == ""


@pytest.mark.parametrize("mode", MODES)
def test_landing_after_the_base_moved_into_a_conflict_is_refused_before_anything_moves(repo, card_tree, mode, tmp_path):
    commit(card_tree, {"shared.txt": "one\nCARD\nthree\n"}, "Card edits")
    commit(repo, {"shared.txt": "one\nMAIN\nthree\n"}, "Main edits")
    before = snapshot(repo)
    card_head = sha(card_tree, "HEAD")
    with pytest.raises(landing_git.MergeConflict) as conflict:
        land(repo, mode, work_dir=str(tmp_path / "landing"))
    assert conflict.value.files == ["shared.txt"]
    assert conflict.value.base == sha(repo, "main")
    assert "shared.txt" in str(conflict.value)
    assert snapshot(repo) == before
    assert sha(card_tree, "HEAD") == card_head and git(card_tree, "status", "--porcelain") == ""


def test_a_rebase_that_stops_on_a_conflict_the_merge_does_not_see_is_abandoned(repo, card_tree, tmp_path):
    # The card changes a line and later changes it back: merged as a whole it touches nothing,
    # but replayed commit by commit its first commit conflicts with main's edit of that line.
    commit(card_tree, {"shared.txt": "one\nCARD\nthree\n"}, "Card edits the line")
    commit(card_tree, {"shared.txt": "one\ntwo\nthree\n", "card.txt": "card\n"}, "Card puts it back")
    commit(repo, {"shared.txt": "one\nMAIN\nthree\n"}, "Main edits the line")
    before = snapshot(repo)
    work = tmp_path / "landing"
    with pytest.raises(landing_git.MergeConflict) as conflict:
        land(repo, "rebase", work_dir=str(work))
    assert conflict.value.files == ["shared.txt"]
    assert snapshot(repo) == before
    assert list(work.iterdir()) == [], "the temporary worktree is gone"


def test_a_base_that_moves_while_the_landing_is_made_fails_cleanly(repo, card_tree, monkeypatch):
    commit(card_tree, {"card.txt": "card\n"}, "Card edits")
    git(repo, "switch", "-q", "-c", "dev")
    real_update_ref = landing_git._update_ref
    interloper = {}

    def someone_lands_meanwhile(repo_, ref, new, old, reason):
        # Between building the landing and moving the ref, another commit lands on main.
        interloper["sha"] = git(repo, "commit-tree", "-p", "main", "-m", "Interloper", "main^{tree}").strip()
        git(repo, "update-ref", "refs/heads/main", interloper["sha"])
        real_update_ref(repo_, ref, new, old, reason)

    monkeypatch.setattr(landing_git, "_update_ref", someone_lands_meanwhile)
    with pytest.raises(landing_git.BaseMoved, match="moved while the landing was being made"):
        land(repo)
    assert sha(repo, "main") == interloper["sha"], "the other commit is kept, not overwritten"


# --------------------------------------------------------------------------
# The three modes
# --------------------------------------------------------------------------


def test_merge_mode_makes_a_merge_commit_with_two_parents_by_the_board(repo, card_tree):
    tip = commit(card_tree, {"card.txt": "card\n"}, "Card edits")
    old = sha(repo, "main")
    new = land(repo, "merge")
    assert git(repo, "rev-list", "--parents", "-n1", new).split() == [new, old, tip]
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", new).strip() == (
        "Land Bot <land-bot@board.invalid>|Land Bot <land-bot@board.invalid>|Land agent/1-work")


def test_squash_mode_makes_one_commit_with_the_branch_changes(repo, card_tree):
    commit(card_tree, {"card.txt": "card\n"}, "Card edit one")
    commit(card_tree, {"more.txt": "more\n", "shared.txt": None}, "Card edit two")
    old = sha(repo, "main")
    new = land(repo, "squash")
    assert git(repo, "rev-list", "--parents", "-n1", new).split() == [new, old]
    assert git(repo, "rev-list", "--count", f"{old}..{new}").strip() == "1"
    assert git(repo, "diff", "--name-status", old, new) == git(repo, "diff", "--name-status", f"{old}...{BRANCH}")
    assert git(repo, "log", "-1", "--format=%s", new).strip() == "Land agent/1-work"


def test_rebase_mode_leaves_linear_history_with_the_branch_commits(repo, card_tree):
    commit(card_tree, {"card.txt": "card\n"}, "Card edit one")
    commit(card_tree, {"more.txt": "more\n"}, "Card edit two")
    ahead = commit(repo, {"main.txt": "main\n"}, "Main moved on")
    new = land(repo, "rebase")
    assert git(repo, "rev-list", "--merges", f"{ahead}..{new}") == ""
    assert git(repo, "log", "--format=%s", f"{ahead}..{new}").split("\n")[:2] == ["Card edit two", "Card edit one"]
    assert git(repo, "rev-parse", f"{new}~2").strip() == ahead
    assert git(repo, "log", "-1", "--format=%an|%cn", new).strip() == "Test User|Land Bot"
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 2, "the rebase's worktree is gone"


def test_rebase_mode_fast_forwards_when_the_base_has_not_moved(repo, card_tree):
    tip = commit(card_tree, {"card.txt": "card\n"}, "Card edits")
    assert land(repo, "rebase") == tip


@pytest.fixture
def branch_with_a_merge(repo, card_tree) -> Path:
    """The card's branch: a commit, then a side branch merged into it with a merge commit."""
    commit(card_tree, {"card.txt": "card\n"}, "Card edits")
    git(card_tree, "switch", "-q", "-c", "side")
    commit(card_tree, {"side.txt": "side\n"}, "Side work")
    git(card_tree, "switch", "-q", BRANCH)
    commit(card_tree, {"card2.txt": "card two\n"}, "More card edits")
    git(card_tree, "merge", "-q", "--no-ff", "-m", "Merge side", "side")
    commit(repo, {"main.txt": "main\n"}, "Main moved on")
    return card_tree


@pytest.mark.parametrize("mode", MODES)
def test_a_branch_with_a_merge_commit_in_it_lands_in_every_mode(repo, branch_with_a_merge, mode):
    old = sha(repo, "main")
    new = land(repo, mode)
    for path, text in (("card.txt", "card\n"), ("card2.txt", "card two\n"), ("side.txt", "side\n"), ("main.txt", "main\n")):
        assert git(repo, "show", f"main:{path}") == text
    parents = git(repo, "rev-list", "--parents", "-n1", new).split()[1:]
    if mode == "merge":
        assert parents == [old, sha(repo, BRANCH)]
    elif mode == "squash":
        assert parents == [old]
    else:
        assert git(repo, "rev-list", "--merges", f"{old}..{new}") == ""
        assert git(repo, "rev-list", "--count", f"{old}..{new}").strip() == "3"
    assert git(repo, "status", "--porcelain") == ""


@pytest.mark.parametrize("mode", MODES)
def test_binary_and_renamed_files_land_intact(repo, card_tree, mode):
    blob = bytes(range(256)) * 64 + b"\x00\xff\x00 not text"
    (card_tree / "docs").mkdir()
    git(card_tree, "mv", "shared.txt", "docs/moved.txt")
    (card_tree / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(card_tree / "run.sh", 0o755)
    commit(card_tree, {"image.bin": blob}, "Binary, rename, executable")
    old = sha(repo, "main")
    land(repo, mode)
    assert (repo / "image.bin").read_bytes() == blob
    assert (repo / "docs" / "moved.txt").read_text() == "one\ntwo\nthree\n" and not (repo / "shared.txt").exists()
    assert os.stat(repo / "run.sh").st_mode & stat.S_IXUSR
    status = git(repo, "diff", "-M", "--name-status", old, "main").splitlines()
    assert "R100\tshared.txt\tdocs/moved.txt" in status
    assert git(repo, "status", "--porcelain") == ""


# --------------------------------------------------------------------------
# Rebasing the card's branch in its worktree
# --------------------------------------------------------------------------


def test_rebase_onto_base_replays_the_branch_on_the_current_base(repo, card_tree):
    commit(card_tree, {"card.txt": "card\n"}, "Card edits")
    ahead = commit(repo, {"main.txt": "main\n"}, "Main moved on")
    user = snapshot(repo)
    head = landing_git.rebase_onto_base(str(card_tree), "main", BOARD)
    assert sha(card_tree, "HEAD") == head == sha(repo, BRANCH)
    assert git(card_tree, "merge-base", BRANCH, "main").strip() == ahead
    assert (card_tree / "main.txt").exists() and git(card_tree, "status", "--porcelain") == ""
    after = snapshot(repo)
    assert after["files"] == user["files"] and after["status"] == user["status"] and after["head"] == user["head"]


def test_a_conflicting_rebase_onto_base_is_abandoned_leaving_all_as_it_was(repo, card_tree):
    tip = commit(card_tree, {"shared.txt": "one\nCARD\nthree\n"}, "Card edits")
    commit(repo, {"shared.txt": "one\nMAIN\nthree\n"}, "Main edits")
    user = snapshot(repo)
    with pytest.raises(landing_git.MergeConflict) as conflict:
        landing_git.rebase_onto_base(str(card_tree), "main", BOARD)
    assert conflict.value.files == ["shared.txt"]
    assert sha(card_tree, "HEAD") == tip and git(card_tree, "symbolic-ref", "--short", "HEAD").strip() == BRANCH
    assert git(card_tree, "status", "--porcelain") == ""
    assert (card_tree / "shared.txt").read_text() == "one\nCARD\nthree\n"
    assert not os.path.exists(git(card_tree, "rev-parse", "--git-path", "rebase-merge").strip())
    assert snapshot(repo) == user


def test_rebase_onto_base_refuses_a_worktree_with_uncommitted_changes(repo, card_tree):
    (card_tree / "loose.txt").write_text("not committed\n")
    with pytest.raises(landing_git.GitError, match="uncommitted changes"):
        landing_git.rebase_onto_base(str(card_tree), "main", BOARD)
    assert (card_tree / "loose.txt").read_text() == "not committed\n"


# --------------------------------------------------------------------------
# Remotes and pull requests
# --------------------------------------------------------------------------


@pytest.fixture
def bare_remote(repo, tmp_path) -> Path:
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    return remote


def test_push_branch_sends_the_branch_to_a_local_bare_remote(repo, card_tree, bare_remote):
    tip = commit(card_tree, {"card.txt": "card\n"}, "Card edits")
    landing_git.push_branch(str(repo), "origin", BRANCH)
    assert sha(bare_remote, f"refs/heads/{BRANCH}") == tip
    assert "branch.agent/1-work.remote" not in git(repo, "config", "--list"), "no upstream written in the user's config"


def test_push_to_a_remote_that_does_not_exist_says_how_to_add_one(repo, card_tree):
    with pytest.raises(landing_git.PushError, match="no remote named 'origin'.*git remote add origin"):
        landing_git.push_branch(str(repo), "origin", BRANCH)


def fake_gh(folder: Path, script: str) -> Path:
    """A ``gh`` executable in ``folder`` running ``script`` (sh); ``folder`` goes first on PATH."""
    folder.mkdir(exist_ok=True)
    gh = folder / "gh"
    gh.write_text("#!/bin/sh\n" + script)
    gh.chmod(0o755)
    return gh


def test_a_pull_request_is_opened_with_gh_and_its_link_returned(repo, card_tree, tmp_path, monkeypatch):
    calls = tmp_path / "gh-calls.txt"
    fake_gh(tmp_path / "bin", f'printf "%s\\n" "$PWD" "$@" > "{calls}"\necho "Creating pull request"\n'
                             'echo "https://github.com/acme/shop/pull/42"\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    url = landing_git.open_pull_request(str(repo), "origin", "origin/main", BRANCH, "Fix it", "Body text")
    assert url == "https://github.com/acme/shop/pull/42"
    args = calls.read_text().splitlines()
    assert args[0] == str(repo)
    assert args[1:] == ["pr", "create", "--head", BRANCH, "--base", "main", "--title", "Fix it", "--body", "Body text"]


def test_without_gh_a_pull_request_gets_a_clear_message(repo, tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(landing_git.PullRequestError, match=r"GitHub CLI \(gh\) is not installed.*gh auth login"):
        landing_git.open_pull_request(str(repo), "origin", "main", BRANCH, "t", "b")


def test_gh_that_is_not_logged_in_says_to_log_in(repo, tmp_path, monkeypatch):
    fake_gh(tmp_path / "bin", 'echo "To get started with GitHub CLI, please run:  gh auth login" >&2\nexit 4\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(landing_git.PullRequestError, match="Run 'gh auth login'"):
        landing_git.open_pull_request(str(repo), "origin", "main", BRANCH, "t", "b")


# --------------------------------------------------------------------------
# The domain and the joiner: a card's landing
# --------------------------------------------------------------------------


def run_to_review(card: Card) -> Card:
    run = card.start()
    runner.execute(run.pk)
    card.refresh_from_db()
    assert card.current_run.state == RunState.SUCCEEDED, card.current_run.error
    assert card.column == Column.REVIEW
    return card


@pytest.mark.django_db
def test_landing_a_card_moves_it_to_done_removes_its_worktree_and_keeps_its_branch(make_card, project):
    card = run_to_review(make_card("echo landed > landed.txt"))
    repo = project.repo_path
    worktree = card.worktree_path
    note = landing.land_card(card)
    card.refresh_from_db()
    assert card.column == Column.DONE
    assert card.landed_commit == sha(repo, "main") and card.landed_at is not None
    assert git(repo, "show", "main:landed.txt") == "landed\n"
    assert len(git(repo, "rev-list", "--parents", "-n1", "main").split()) == 3, "the project's mode: a merge commit"
    assert (Path(repo) / "landed.txt").read_text() == "landed\n" and git(repo, "status", "--porcelain") == ""
    assert not os.path.exists(worktree)
    assert git(repo, "branch", "--list", card.branch).strip()
    assert f"as {card.landed_commit[:10]}" in note and "kept" in note
    event = Event.objects.filter(card_id=card.pk, kind="card", data__landed=card.landed_commit).get()
    assert event.data["mode"] == "merge"
    assert card.as_dict()["landed_commit"] == card.landed_commit


@pytest.mark.django_db
def test_landing_deletes_the_branch_when_the_project_says_so(make_card, project):
    project.delete_branch_on_land = True
    project.land_mode = "squash"
    project.save()
    card = run_to_review(make_card("echo landed > landed.txt"))
    note = landing.land_card(card)
    card.refresh_from_db()
    assert git(project.repo_path, "branch", "--list", card.branch) == ""
    assert "deleted" in note
    assert len(git(project.repo_path, "rev-list", "--parents", "-n1", "main").split()) == 2, "squash: one parent"


@pytest.mark.django_db
def test_work_left_uncommitted_in_the_worktree_is_committed_on_the_branch_and_the_branch_kept(make_card, project):
    project.delete_branch_on_land = True
    project.save()
    card = run_to_review(make_card("echo landed > landed.txt"))
    Path(card.worktree_path, "late.txt").write_text("edited by hand after the review\n")
    note = landing.land_card(card)
    card.refresh_from_db()
    assert git(project.repo_path, "show", f"{card.branch}:late.txt") == "edited by hand after the review\n"
    assert "late.txt" not in git(project.repo_path, "ls-tree", "--name-only", "main"), "only what was reviewed lands"
    assert "branch was kept" in note


@pytest.mark.django_db
def test_the_card_mode_overrides_the_project_and_a_mode_given_overrides_both(make_card, project):
    card = run_to_review(make_card("echo landed > landed.txt"))
    card.land_mode = "squash"
    card.save()
    assert card.effective_land_mode == "squash"
    landing.land_card(card, "rebase")
    card.refresh_from_db()
    assert card.landed_commit == sha(project.repo_path, card.branch), "rebase onto an unmoved base fast-forwards"
    with pytest.raises(BoardError, match="not a landing mode"):
        landing.land_card(card, "octopus")


@pytest.mark.django_db
def test_landing_twice_is_refused_clearly(make_card, project):
    card = run_to_review(make_card("echo landed > landed.txt"))
    landing.land_card(card)
    card.refresh_from_db()
    main = sha(project.repo_path, "main")
    with pytest.raises(BoardError, match=f"already landed as {card.landed_commit[:10]}"):
        landing.land_card(card)
    assert sha(project.repo_path, "main") == main


@pytest.mark.django_db
@pytest.mark.parametrize("state", ["queued", "running", "awaiting_approval"])
def test_landing_while_a_run_is_still_going_is_refused(make_card, project, state):
    card = run_to_review(make_card("echo landed > landed.txt"))
    run = card.follow_up("One more thing")
    Run.objects.filter(pk=run.pk).update(state=state)
    card.refresh_from_db()
    main = sha(project.repo_path, "main")
    with pytest.raises(BoardError, match=f"still {RunState(state).label}"):
        landing.land_card(card)
    card.refresh_from_db()
    assert sha(project.repo_path, "main") == main and not card.landed_commit
    assert os.path.isdir(card.worktree_path)
    with pytest.raises(BoardError, match="still"):
        landing.rebase_card(card)


@pytest.mark.django_db
def test_only_a_card_in_review_can_land(make_card, project):
    card = run_to_review(make_card("echo landed > landed.txt"))
    card.move_to(Column.IN_PROGRESS)
    with pytest.raises(BoardError, match="Only a card in Review can land; this one is in In Progress"):
        landing.land_card(card)
    fresh = make_card()
    with pytest.raises(BoardError, match="no branch yet"):
        landing.land_card(fresh)


@pytest.mark.django_db
def test_conflicts_found_by_landing_are_stored_on_the_card_and_nothing_moves(make_card, project):
    card = run_to_review(make_card("echo card > README.md"))
    commit(Path(project.repo_path), {"README.md": "main's own\n"}, "Main edits README")
    main = sha(project.repo_path, "main")
    with pytest.raises(landing_git.MergeConflict):
        landing.land_card(card)
    card.refresh_from_db()
    assert card.column == Column.REVIEW and not card.landed_commit
    assert card.conflicts["files"] == ["README.md"] and card.conflicts["base"] == main
    assert sha(project.repo_path, "main") == main and git(project.repo_path, "status", "--porcelain") == ""


@pytest.mark.django_db
def test_check_for_conflicts_stores_them_and_a_clean_check_clears_them(make_card, project):
    card = run_to_review(make_card("echo card > README.md"))
    assert landing.check_conflicts(card) == []
    card.refresh_from_db()
    assert card.conflicts["files"] == [] and card.conflicts["base"] == sha(project.repo_path, "main")
    commit(Path(project.repo_path), {"README.md": "main's own\n"}, "Main edits README")
    assert landing.check_conflicts(card) == ["README.md"]
    card.refresh_from_db()
    assert card.conflicts["files"] == ["README.md"] and card.as_dict()["conflicts"] == card.conflicts


@pytest.mark.django_db
def test_rebasing_a_card_onto_the_moved_base_clears_its_conflicts_and_its_base(make_card, project):
    card = run_to_review(make_card("echo card > card.txt"))
    ahead = commit(Path(project.repo_path), {"main.txt": "main\n"}, "Main moved on")
    note = landing.rebase_card(card)
    card.refresh_from_db()
    assert "Rebased" in note
    assert card.conflicts["files"] == [] and card.conflicts["base"] == ahead
    assert card.current_run.base_commit == ahead
    assert card.current_run.commits == [sha(card.worktree_path, "HEAD")]


@pytest.mark.django_db
def test_a_conflicting_rebase_of_a_card_is_abandoned_and_the_files_shown(make_card, project):
    card = run_to_review(make_card("echo card > README.md"))
    tip = sha(card.worktree_path, "HEAD")
    commit(Path(project.repo_path), {"README.md": "main's own\n"}, "Main edits README")
    with pytest.raises(landing_git.MergeConflict):
        landing.rebase_card(card)
    card.refresh_from_db()
    assert card.conflicts["files"] == ["README.md"]
    assert sha(card.worktree_path, "HEAD") == tip and git(card.worktree_path, "status", "--porcelain") == ""


@pytest.mark.django_db
def test_asking_the_agent_to_resolve_sends_a_follow_up_that_lands_afterwards(make_card, project):
    # The agent: on its first run it edits README.md; asked to resolve, it merges main and keeps both.
    agent_command = (
        'if grep -q "git merge main" "$CARD_PROMPT_FILE"; then '
        'git merge -q main >/dev/null 2>&1; printf "card\\nmain\\n" > README.md; git add README.md; '
        'git commit -q --no-edit; else echo card > README.md; fi'
    )
    card = run_to_review(make_card(agent_command))
    commit(Path(project.repo_path), {"README.md": "main\n"}, "Main edits README")
    with pytest.raises(BoardError, match="check for conflicts first"):
        card.resolve_conflicts()
    landing.check_conflicts(card)
    card.refresh_from_db()
    run = card.resolve_conflicts()
    assert "main" in run.prompt and "- README.md" in run.prompt and "git merge main" in run.prompt
    runner.execute(run.pk)
    card.refresh_from_db()
    assert card.current_run.state == RunState.SUCCEEDED, card.current_run.error
    assert landing.check_conflicts(card) == []
    landing.land_card(card)
    assert git(project.repo_path, "show", "main:README.md") == "card\nmain\n"


@pytest.mark.django_db
def test_pushing_a_card_with_a_pull_request_stores_and_shows_the_link(make_card, project, bare_remote_for, tmp_path, monkeypatch):
    remote = bare_remote_for(project.repo_path)
    fake_gh(tmp_path / "bin", 'echo "https://github.com/acme/shop/pull/7"\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    card = run_to_review(make_card("echo card > card.txt"))
    note = landing.push_card(card, pull_request=True)
    card.refresh_from_db()
    assert card.pr_url == "https://github.com/acme/shop/pull/7" and card.pr_url in note
    assert sha(remote, f"refs/heads/{card.branch}") == sha(project.repo_path, card.branch)
    assert Event.objects.filter(card_id=card.pk, data__url=card.pr_url).exists()


@pytest.mark.django_db
def test_without_gh_the_branch_is_pushed_and_the_message_says_what_to_do(make_card, project, bare_remote_for, tmp_path, monkeypatch):
    remote = bare_remote_for(project.repo_path)
    card = run_to_review(make_card("echo card > card.txt"))
    bin_dir = tmp_path / "only-git"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(os.popen("command -v git").read().strip())
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(landing_git.PullRequestError) as refused:
        landing.push_card(card, pull_request=True)
    assert f"Pushed {card.branch} to origin" in str(refused.value) and "gh auth login" in str(refused.value)
    card.refresh_from_db()
    assert card.pr_url == ""
    assert sha(remote, f"refs/heads/{card.branch}") == sha(project.repo_path, card.branch)


@pytest.fixture
def bare_remote_for(tmp_path):
    """Factory: a bare repository added as ``origin`` of the repository at the given path."""

    def make(repo_path) -> Path:
        remote = tmp_path / "origin.git"
        git(tmp_path, "init", "-q", "--bare", str(remote))
        git(repo_path, "remote", "add", "origin", str(remote))
        return remote

    return make


@pytest.mark.django_db
def test_a_landed_card_shows_the_change_it_made_on_the_base_and_a_rebased_branch_holds_nothing_unlanded(client, make_card, project):
    merged = run_to_review(make_card("echo merged > merged.txt", title="Merge me"))
    landing.land_card(merged)
    merged.refresh_from_db()
    page = client.get(f"/cards/{merged.pk}/diff").content.decode()
    assert "merged.txt" in page and f"as <code title=\"{merged.landed_commit}\">" in page
    assert "the change it made there" in page

    rebased = run_to_review(make_card("echo rebased > rebased.txt", title="Rebase me"))
    note = landing.land_card(rebased, "rebase")
    rebased.refresh_from_db()
    assert "moved to the rebased commits" in note
    assert sha(project.repo_path, rebased.branch) == rebased.landed_commit == sha(project.repo_path, "main")
    assert worktrees.unlanded_commits(project.repo_path, "main", rebased.branch) == 0
