"""Tests for the git layer (agents/worktrees.py) against real throwaway repositories.

No database and no Django: each test builds its own repository in tmp_path.
An autouse fixture hides the machine's global and system git config, so the
tests prove the module never leans on a globally configured identity.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agents import worktrees as wt
from agents.worktrees import (
    BranchNotFound,
    EmptyRepository,
    GitError,
    Identity,
    NotARepository,
)

FIXTURE_IDENTITY = ["-c", "user.name=Fixture Setup", "-c", "user.email=fixture@example.invalid"]
AGENT = Identity(name="Board Agent", email="agent@board.invalid")


@pytest.fixture(autouse=True)
def isolated_git_config(tmp_path_factory, monkeypatch):
    """Run git as on a machine with no global or system config and no identity."""
    home = tmp_path_factory.mktemp("home")
    empty = home / "empty.gitconfig"
    empty.write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in (
        "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL",
        "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE",
    ):
        monkeypatch.delenv(var, raising=False)


def git(cwd, *args: str) -> str:
    """Run git for the test's own setup and checks; returns stripped stdout."""
    done = subprocess.run(
        ["git", *FIXTURE_IDENTITY, *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"git {' '.join(args)} failed: {done.stderr}"
    return done.stdout.strip()


def commit_file(repo, name: str, content: str, message: str) -> str:
    (Path(repo) / name).write_text(content)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path) -> Path:
    """A real repository on branch 'main' with one commit (README.md)."""
    path = tmp_path / "project"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    commit_file(path, "README.md", "hello\n", "Initial commit")
    return path


@pytest.fixture
def data(tmp_path) -> Path:
    """The board's data folder, outside the repository."""
    return tmp_path / "data"


def checkout_state(repo) -> dict:
    return {
        "head": git(repo, "rev-parse", "HEAD"),
        "symbolic": subprocess.run(
            ["git", "symbolic-ref", "-q", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip(),
        "status": git(repo, "status", "--porcelain", "--untracked-files=all"),
        "readme": (Path(repo) / "README.md").read_text(),
        "index": git(repo, "diff", "--cached", "--name-status"),
    }


# --------------------------------------------------------------------------- inspect_repository


def test_inspect_repository_reports_top_level_current_branch_and_branches(repo):
    git(repo, "branch", "feature")

    info = wt.inspect_repository(str(repo))

    assert info.path == os.path.realpath(repo)
    assert info.current_branch == "main"
    assert info.branches == ["feature", "main"]


def test_inspect_repository_reports_no_current_branch_on_detached_head(repo):
    git(repo, "checkout", "-q", "--detach")

    assert wt.inspect_repository(str(repo)).current_branch is None


def test_inspect_repository_reports_no_current_branch_before_first_commit(tmp_path):
    git(tmp_path, "init", "-q", "-b", "main")

    info = wt.inspect_repository(str(tmp_path))

    assert info.current_branch is None
    assert info.branches == []


def test_inspect_repository_rejects_a_plain_folder_naming_it(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()

    with pytest.raises(NotARepository, match="plain"):
        wt.inspect_repository(str(plain))


def test_inspect_repository_rejects_a_missing_path_naming_it(tmp_path):
    missing = tmp_path / "nowhere"

    with pytest.raises(NotARepository) as caught:
        wt.inspect_repository(str(missing))

    assert str(missing) in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_inspect_repository_rejects_a_file(repo):
    with pytest.raises(NotARepository, match="is a file"):
        wt.inspect_repository(str(repo / "README.md"))


def test_inspect_repository_rejects_a_bare_repository(tmp_path):
    bare = tmp_path / "bare.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))

    with pytest.raises(NotARepository, match="bare"):
        wt.inspect_repository(str(bare))


def test_inspect_repository_points_a_subfolder_to_its_repository(repo):
    sub = repo / "src"
    sub.mkdir()

    with pytest.raises(NotARepository) as caught:
        wt.inspect_repository(str(sub))

    assert os.path.realpath(repo) in str(caught.value)


# --------------------------------------------------------------------------- resolve_base


def test_resolve_base_returns_the_full_sha_of_an_existing_branch(repo):
    assert wt.resolve_base(str(repo), "main") == git(repo, "rev-parse", "main")


def test_resolve_base_accepts_a_remote_tracking_branch(repo):
    sha = git(repo, "rev-parse", "HEAD")
    git(repo, "update-ref", "refs/remotes/origin/main", sha)

    assert wt.resolve_base(str(repo), "origin/main") == sha


def test_resolve_base_prefers_the_branch_over_a_tag_of_the_same_name(repo):
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "release", first)
    git(repo, "branch", "release")
    moved = commit_file(repo, "b.txt", "b", "second")
    git(repo, "branch", "-f", "release", moved)

    assert wt.resolve_base(str(repo), "release") == moved


def test_resolve_base_raises_branch_not_found_for_a_missing_branch(repo):
    with pytest.raises(BranchNotFound) as caught:
        wt.resolve_base(str(repo), "nope")

    assert str(caught.value) == f"Branch 'nope' does not exist in {repo}."


def test_resolve_base_never_reads_a_dash_name_as_an_option(repo):
    with pytest.raises(BranchNotFound):
        wt.resolve_base(str(repo), "--all")


def test_resolve_base_raises_empty_repository_before_the_first_commit(tmp_path):
    git(tmp_path, "init", "-q", "-b", "main")

    with pytest.raises(EmptyRepository, match="no commit yet"):
        wt.resolve_base(str(tmp_path), "main")


def test_resolve_base_raises_not_a_repository_for_a_plain_folder(tmp_path):
    with pytest.raises(NotARepository):
        wt.resolve_base(str(tmp_path / "missing"), "main")


# --------------------------------------------------------------------------- names

NASTY_TITLES = [
    "",
    "   ",
    "../../etc",
    ".hidden",
    "-dash",
    "a.lock",
    "émoji 🚀 ü",
    "tab\tand\nnewline",
    "x" * 500,
    "a//b",
    "a@{b",
    "ends.",
    "with~^:?*[\\",
    "@",
    "HEAD",
    "refs/heads/main",
    "🚀🚀🚀",
    "\x00\x01\x7f control",
    "trailing/",
    "/leading",
    "a..b...c",
    "Straße Œuvre",
]


@pytest.mark.parametrize("title", NASTY_TITLES)
def test_branch_name_is_accepted_by_git_for_any_title(title, repo):
    name = wt.branch_name("agent", 42, title)

    assert name.startswith("agent/42-")
    assert git(repo, "check-ref-format", "--branch", name) == name


@pytest.mark.parametrize("prefix", ["", "/", "Agent Bots", "../x", "a//b/", ".lock", "-x", "émoji/🚀"])
def test_branch_name_sanitises_the_prefix_too(prefix, repo):
    name = wt.branch_name(prefix, 7, "Fix it")

    assert name.endswith("/7-fix-it")
    assert git(repo, "check-ref-format", "--branch", name) == name


def test_branch_name_falls_back_to_agent_for_an_empty_prefix():
    assert wt.branch_name("", 3, "x") == "agent/3-x"
    assert wt.branch_name("board/agents", 3, "Add login page!") == "board/agents/3-add-login-page"


@pytest.mark.parametrize("title", NASTY_TITLES)
def test_worktree_folder_is_one_safe_path_component(title):
    folder = wt.worktree_folder(9, title)

    assert folder.startswith("9-")
    assert "/" not in folder and "\\" not in folder
    assert folder not in (".", "..")
    assert len(folder) <= 45


def test_slugify_folds_accents_lowercases_and_falls_back_to_task():
    assert wt.slugify("Émoji 🚀 ü") == "emoji-u"
    assert wt.slugify("  Fix the LOGIN   page!! ") == "fix-the-login-page"
    assert wt.slugify("") == "task"
    assert wt.slugify("🚀") == "task"
    assert wt.slugify("Straße") == "strasse"


def test_slugify_respects_max_length_preferring_word_boundaries():
    slug = wt.slugify("implement the new authentication flow for admins", max_length=20)

    assert len(slug) <= 20
    assert slug == "implement-the-new"
    assert len(wt.slugify("x" * 500)) == 40


# --------------------------------------------------------------------------- ensure_worktree


def test_start_creates_branch_from_base_in_a_folder_outside_the_repository(repo, data):
    base_sha = git(repo, "rev-parse", "main")
    target = data / "worktrees" / "project" / "1-fix-login"

    made = wt.ensure_worktree(str(repo), "main", "agent/1-fix-login", str(target))

    assert made.created is True
    assert made.path == str(target)
    assert made.branch == "agent/1-fix-login"
    assert made.base_commit == base_sha
    assert git(target, "rev-parse", "HEAD") == base_sha
    assert git(target, "symbolic-ref", "--short", "HEAD") == "agent/1-fix-login"
    assert git(repo, "rev-parse", "agent/1-fix-login") == base_sha
    assert not str(target).startswith(str(repo))


def test_start_leaves_the_users_dirty_checkout_exactly_as_it_was(repo, data):
    (repo / "README.md").write_text("user's unsaved edit\n")
    (repo / "notes.txt").write_text("untracked\n")
    (repo / "staged.txt").write_text("staged\n")
    git(repo, "add", "staged.txt")
    before = checkout_state(repo)

    made = wt.ensure_worktree(str(repo), "main", "agent/2-x", str(data / "2-x"))
    (Path(made.path) / "agent.txt").write_text("agent work\n")
    wt.commit_all(made.path, "Agent work", AGENT)
    wt.ensure_worktree(str(repo), "main", "agent/2-x", str(data / "2-x"))

    assert checkout_state(repo) == before
    # The worktree starts from the committed base, not from the user's edits.
    assert (Path(made.path) / "README.md").read_text() == "hello\n"
    assert not (Path(made.path) / "notes.txt").exists()
    assert not (Path(made.path) / "staged.txt").exists()


def test_start_works_when_the_users_checkout_is_on_a_detached_head(repo, data):
    base_sha = git(repo, "rev-parse", "main")
    commit_file(repo, "later.txt", "later", "later on main")
    git(repo, "checkout", "-q", "--detach", "HEAD~1")
    git(repo, "branch", "-f", "main", base_sha)  # main back to the first commit
    before = checkout_state(repo)

    made = wt.ensure_worktree(str(repo), "main", "agent/3-x", str(data / "3-x"))

    assert made.base_commit == base_sha
    assert checkout_state(repo) == before


def test_second_start_reuses_the_existing_worktree(repo, data):
    target = data / "4-x"
    first = wt.ensure_worktree(str(repo), "main", "agent/4-x", str(target))
    (target / "wip.txt").write_text("work in progress\n")

    again = wt.ensure_worktree(str(repo), "main", "agent/4-x", str(target))

    assert again.created is False
    assert again.base_commit == first.base_commit
    assert (target / "wip.txt").read_text() == "work in progress\n"


def test_reuse_measures_from_the_merge_base_when_the_base_moved_on(repo, data):
    target = data / "5-x"
    first = wt.ensure_worktree(str(repo), "main", "agent/5-x", str(target))
    commit_file(repo, "moved.txt", "m", "base moves on")

    again = wt.ensure_worktree(str(repo), "main", "agent/5-x", str(target))

    assert again.base_commit == first.base_commit


def test_an_existing_branch_not_checked_out_is_reused(repo, data):
    fork_point = git(repo, "rev-parse", "main")
    git(repo, "branch", "agent/6-x")
    commit_file(repo, "main-only.txt", "m", "main moves on")

    made = wt.ensure_worktree(str(repo), "main", "agent/6-x", str(data / "6-x"))

    assert made.created is True
    assert made.base_commit == fork_point
    assert git(made.path, "rev-parse", "HEAD") == fork_point
    assert git(made.path, "symbolic-ref", "--short", "HEAD") == "agent/6-x"


def test_a_worktree_folder_deleted_by_hand_is_recreated_with_its_commits(repo, data):
    target = data / "7-x"
    made = wt.ensure_worktree(str(repo), "main", "agent/7-x", str(target))
    (target / "kept.txt").write_text("kept\n")
    sha = wt.commit_all(made.path, "keep me", AGENT)
    subprocess.run(["rm", "-rf", str(target)], check=True)

    again = wt.ensure_worktree(str(repo), "main", "agent/7-x", str(target))

    assert again.created is True
    assert git(target, "rev-parse", "HEAD") == sha
    assert (target / "kept.txt").read_text() == "kept\n"


def test_start_from_a_missing_base_branch_raises_branch_not_found(repo, data):
    with pytest.raises(BranchNotFound, match="'develop'"):
        wt.ensure_worktree(str(repo), "develop", "agent/8-x", str(data / "8-x"))
    assert not (data / "8-x").exists()


def test_start_in_an_empty_repository_raises_empty_repository(tmp_path, data):
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")

    with pytest.raises(EmptyRepository):
        wt.ensure_worktree(str(empty), "main", "agent/1-x", str(data / "1-x"))


def test_start_refuses_a_folder_that_is_a_worktree_on_another_branch(repo, data):
    target = data / "9-x"
    wt.ensure_worktree(str(repo), "main", "agent/9-x", str(target))

    with pytest.raises(GitError, match="agent/9-x"):
        wt.ensure_worktree(str(repo), "main", "agent/9-other", str(target))


def test_start_refuses_a_branch_checked_out_in_another_folder(repo, data):
    wt.ensure_worktree(str(repo), "main", "agent/10-x", str(data / "10-x"))

    with pytest.raises(GitError, match="already checked out"):
        wt.ensure_worktree(str(repo), "main", "agent/10-x", str(data / "elsewhere"))


def test_start_refuses_a_non_empty_folder_that_is_not_a_worktree(repo, data):
    target = data / "11-x"
    target.mkdir(parents=True)
    (target / "precious.txt").write_text("do not touch")

    with pytest.raises(GitError, match="already there"):
        wt.ensure_worktree(str(repo), "main", "agent/11-x", str(target))
    assert (target / "precious.txt").read_text() == "do not touch"


def test_start_refuses_the_users_own_checkout_as_the_worktree(repo):
    with pytest.raises(GitError, match="own checkout"):
        wt.ensure_worktree(str(repo), "main", "agent/12-x", str(repo))


def test_start_refuses_an_invalid_branch_name(repo, data):
    with pytest.raises(GitError, match="not a valid git branch name"):
        wt.ensure_worktree(str(repo), "main", "bad..name", str(data / "x"))


# --------------------------------------------------------------------------- commit_all


def test_commit_all_commits_everything_with_the_given_identity_and_trailers(repo, data):
    made = wt.ensure_worktree(str(repo), "main", "agent/20-x", str(data / "20-x"))
    (Path(made.path) / "new.txt").write_text("new\n")
    (Path(made.path) / "README.md").write_text("changed\n")

    sha = wt.commit_all(made.path, "Add new file", AGENT, trailers={"Card": "20", "Run-Id": "7"})

    assert sha == git(made.path, "rev-parse", "HEAD")
    assert git(made.path, "log", "-1", "--format=%an|%ae|%cn|%ce") == (
        "Board Agent|agent@board.invalid|Board Agent|agent@board.invalid"
    )
    assert git(made.path, "log", "-1", "--format=%B") == "Add new file\n\nCard: 20\nRun-Id: 7"
    assert git(made.path, "log", "-1", "--format=%(trailers:key=Card,valueonly)") == "20"
    assert git(made.path, "status", "--porcelain") == ""


def test_commit_all_returns_none_when_nothing_changed(repo, data):
    made = wt.ensure_worktree(str(repo), "main", "agent/21-x", str(data / "21-x"))

    assert wt.commit_all(made.path, "Nothing", AGENT) is None
    assert git(made.path, "rev-parse", "HEAD") == made.base_commit


def test_commit_all_skips_gitignored_files(repo, data):
    commit_file(repo, ".gitignore", ".env\n", "ignore .env")
    made = wt.ensure_worktree(str(repo), "main", "agent/22-x", str(data / "22-x"))
    (Path(made.path) / ".env").write_text("SECRET=1\n")

    assert wt.commit_all(made.path, "Nothing tracked", AGENT) is None


def test_commit_all_with_a_failing_pre_commit_hook_raises_with_the_hooks_output(repo, data):
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'lint failed: trailing whitespace in new.txt'\nexit 1\n")
    hook.chmod(hook.stat().st_mode | stat.S_IEXEC)
    made = wt.ensure_worktree(str(repo), "main", "agent/23-x", str(data / "23-x"))
    (Path(made.path) / "new.txt").write_text("new \n")

    with pytest.raises(GitError, match="lint failed: trailing whitespace in new.txt"):
        wt.commit_all(made.path, "Should be refused", AGENT)
    assert git(made.path, "rev-parse", "HEAD") == made.base_commit


def test_commit_all_runs_passing_hooks(repo, data):
    marker = data / "hook-ran"
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text(f"#!/bin/sh\ntouch '{marker}'\n")
    hook.chmod(hook.stat().st_mode | stat.S_IEXEC)
    made = wt.ensure_worktree(str(repo), "main", "agent/24-x", str(data / "24-x"))
    (Path(made.path) / "a.txt").write_text("a\n")

    assert wt.commit_all(made.path, "ok", AGENT)
    assert marker.exists()


def test_commit_all_rejects_an_unusable_identity(repo, data):
    made = wt.ensure_worktree(str(repo), "main", "agent/25-x", str(data / "25-x"))
    (Path(made.path) / "a.txt").write_text("a\n")

    with pytest.raises(GitError, match="identity"):
        wt.commit_all(made.path, "x", Identity(name="", email="a@b.c"))


def test_identity_env_sets_author_and_committer():
    assert AGENT.env() == {
        "GIT_AUTHOR_NAME": "Board Agent",
        "GIT_AUTHOR_EMAIL": "agent@board.invalid",
        "GIT_COMMITTER_NAME": "Board Agent",
        "GIT_COMMITTER_EMAIL": "agent@board.invalid",
    }


def test_identity_env_lets_a_child_process_commit_without_git_config(repo, data):
    made = wt.ensure_worktree(str(repo), "main", "agent/26-x", str(data / "26-x"))
    (Path(made.path) / "a.txt").write_text("a\n")
    env = {**os.environ, **AGENT.env()}
    subprocess.run(["git", "add", "-A"], cwd=made.path, check=True, env=env)
    subprocess.run(["git", "commit", "-q", "-m", "by a command agent"], cwd=made.path, check=True, env=env)

    assert git(made.path, "log", "-1", "--format=%an <%ae>") == "Board Agent <agent@board.invalid>"


# --------------------------------------------------------------------------- history and diffs


def test_new_commits_lists_the_commits_since_base_oldest_first(repo, data):
    made = wt.ensure_worktree(str(repo), "main", "agent/30-x", str(data / "30-x"))
    shas = []
    for i, subject in enumerate(["First step", "Second step", "Third step"]):
        (Path(made.path) / f"f{i}.txt").write_text(str(i))
        shas.append(wt.commit_all(made.path, f"{subject}\n\nbody text", AGENT))

    commits = wt.new_commits(made.path, made.base_commit)

    assert [c.sha for c in commits] == shas
    assert [c.subject for c in commits] == ["First step", "Second step", "Third step"]
    assert {c.author for c in commits} == {"Board Agent"}
    assert all("T" in c.date and (c.date.endswith("Z") or c.date[-6] in "+-") for c in commits)


def test_new_commits_is_empty_without_new_work(repo, data):
    made = wt.ensure_worktree(str(repo), "main", "agent/31-x", str(data / "31-x"))

    assert wt.new_commits(made.path, made.base_commit) == []


def test_new_commits_rejects_an_unknown_base(repo, data):
    made = wt.ensure_worktree(str(repo), "main", "agent/32-x", str(data / "32-x"))

    with pytest.raises(GitError, match="does not exist"):
        wt.new_commits(made.path, "0" * 40)


def test_diff_against_base_shows_an_added_file(repo, data):
    made = wt.ensure_worktree(str(repo), "main", "agent/33-x", str(data / "33-x"))
    (Path(made.path) / "feature.txt").write_text("the feature\n")
    wt.commit_all(made.path, "Add feature", AGENT)

    diff = wt.diff_against_base(str(repo), "main", "agent/33-x")

    assert "diff --git a/feature.txt b/feature.txt" in diff
    assert "new file mode" in diff
    assert "+the feature" in diff
    assert "\x1b[" not in diff


def test_diff_against_base_ignores_changes_made_on_the_base_after_branching(repo, data):
    made = wt.ensure_worktree(str(repo), "main", "agent/34-x", str(data / "34-x"))
    (Path(made.path) / "feature.txt").write_text("the feature\n")
    wt.commit_all(made.path, "Add feature", AGENT)
    commit_file(repo, "base-change.txt", "later on main\n", "Base moves ahead")

    diff = wt.diff_against_base(str(repo), "main", "agent/34-x")

    assert "feature.txt" in diff
    assert "base-change.txt" not in diff


def test_diff_against_base_is_empty_without_changes(repo, data):
    wt.ensure_worktree(str(repo), "main", "agent/35-x", str(data / "35-x"))

    assert wt.diff_against_base(str(repo), "main", "agent/35-x") == ""


def test_diff_against_base_raises_branch_not_found_for_either_missing_branch(repo):
    with pytest.raises(BranchNotFound, match="agent/none"):
        wt.diff_against_base(str(repo), "main", "agent/none")
    with pytest.raises(BranchNotFound, match="develop"):
        wt.diff_against_base(str(repo), "develop", "main")


def test_diffstat_summarises_committed_changes(repo, data):
    made = wt.ensure_worktree(str(repo), "main", "agent/36-x", str(data / "36-x"))
    assert wt.diffstat(made.path, made.base_commit) == "no changes"

    (Path(made.path) / "a.txt").write_text("1\n2\n3\n")
    (Path(made.path) / "README.md").write_text("bye\n")
    wt.commit_all(made.path, "two files", AGENT)

    assert wt.diffstat(made.path, made.base_commit) == "2 files changed, 4 insertions(+), 1 deletion(-)"


def test_has_changes_sees_modified_and_untracked_files_but_not_ignored_ones(repo, data):
    commit_file(repo, ".gitignore", "*.log\n", "ignore logs")
    made = wt.ensure_worktree(str(repo), "main", "agent/37-x", str(data / "37-x"))
    work = Path(made.path)
    assert wt.has_changes(made.path) is False

    (work / "debug.log").write_text("noise")
    assert wt.has_changes(made.path) is False

    (work / "untracked.txt").write_text("new")
    assert wt.has_changes(made.path) is True

    (work / "untracked.txt").unlink()
    (work / "README.md").write_text("edited\n")
    assert wt.has_changes(made.path) is True


def test_has_changes_on_a_missing_worktree_raises_not_a_repository(tmp_path):
    with pytest.raises(NotARepository, match="does not exist"):
        wt.has_changes(str(tmp_path / "gone"))


# --------------------------------------------------------------------------- remove_worktree


def test_remove_worktree_deletes_the_folder_and_record_but_keeps_the_branch(repo, data):
    made = wt.ensure_worktree(str(repo), "main", "agent/40-x", str(data / "40-x"))
    (Path(made.path) / "dirty.txt").write_text("uncommitted\n")

    wt.remove_worktree(str(repo), made.path)

    assert not Path(made.path).exists()
    assert made.path not in git(repo, "worktree", "list", "--porcelain")
    assert git(repo, "rev-parse", "--verify", "refs/heads/agent/40-x")


def test_remove_worktree_on_a_missing_path_is_fine(repo, data):
    made = wt.ensure_worktree(str(repo), "main", "agent/41-x", str(data / "41-x"))
    subprocess.run(["rm", "-rf", made.path], check=True)

    wt.remove_worktree(str(repo), made.path)
    wt.remove_worktree(str(repo), made.path)

    assert made.path not in git(repo, "worktree", "list", "--porcelain")


def test_remove_worktree_leaves_a_folder_that_is_not_a_worktree_alone(repo, data):
    folder = data / "not-a-worktree"
    folder.mkdir(parents=True)
    (folder / "keep.txt").write_text("keep")

    with pytest.raises(GitError):
        wt.remove_worktree(str(repo), str(folder))
    assert (folder / "keep.txt").exists()


# --------------------------------------------------------------------------- locks and concurrency


def test_a_held_index_lock_is_waited_for_then_the_commit_succeeds(repo, data):
    made = wt.ensure_worktree(str(repo), "main", "agent/50-x", str(data / "50-x"))
    (Path(made.path) / "a.txt").write_text("a\n")
    lock = Path(git(made.path, "rev-parse", "--absolute-git-dir")) / "index.lock"
    lock.write_text("")
    releaser = threading.Timer(0.5, lock.unlink)
    releaser.start()
    started = time.monotonic()

    sha = wt.commit_all(made.path, "after the lock", AGENT)

    releaser.join()
    assert sha == git(made.path, "rev-parse", "HEAD")
    assert time.monotonic() - started >= 0.4


def test_a_lock_that_never_frees_raises_a_clear_git_error(repo, data, monkeypatch):
    monkeypatch.setattr(wt, "LOCK_WAIT_SECONDS", 0.5)
    made = wt.ensure_worktree(str(repo), "main", "agent/51-x", str(data / "51-x"))
    (Path(made.path) / "a.txt").write_text("a\n")
    lock = Path(git(made.path, "rev-parse", "--absolute-git-dir")) / "index.lock"
    lock.write_text("")

    with pytest.raises(GitError) as caught:
        wt.commit_all(made.path, "blocked", AGENT)

    message = str(caught.value)
    assert "locked by another git process" in message
    assert "0.5 seconds" in message
    assert str(lock) in message


def test_many_cards_start_commit_and_remove_in_one_repository_at_once(repo, data):
    errors: list[BaseException] = []

    def card(n: int) -> None:
        try:
            made = wt.ensure_worktree(str(repo), "main", f"agent/{n}-x", str(data / f"{n}-x"))
            (Path(made.path) / f"card{n}.txt").write_text(str(n))
            assert wt.commit_all(made.path, f"card {n}", AGENT)
            assert len(wt.new_commits(made.path, made.base_commit)) == 1
            if n % 2:
                wt.remove_worktree(str(repo), made.path)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=card, args=(n,)) for n in range(100, 116)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert len(wt.inspect_repository(str(repo)).branches) == 17
    listed = git(repo, "worktree", "list", "--porcelain")
    assert listed.count("worktree ") == 1 + 8


def test_concurrent_commits_in_one_worktree_wait_for_each_others_index_lock(repo, data):
    made = wt.ensure_worktree(str(repo), "main", "agent/60-x", str(data / "60-x"))
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(4):
                (Path(made.path) / f"w{n}-{i}.txt").write_text(f"{n}-{i}")
                wt.commit_all(made.path, f"writer {n} step {i}", AGENT)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert wt.has_changes(made.path) is False
    committed = git(made.path, "ls-files")
    assert all(f"w{n}-{i}.txt" in committed for n in range(8) for i in range(4))


def test_roll_back_resets_the_card_branch_and_keeps_the_rolled_back_commit(make_repo, tmp_path):
    repo = make_repo()
    tree = wt.ensure_worktree(str(repo), "main", "agent/1-x", str(tmp_path / "wt"))
    identity = wt.Identity("Board", "board@example.invalid")
    (Path(tree.path) / "a.txt").write_text("a\n")
    first = wt.commit_all(tree.path, "Step 1", identity)
    (Path(tree.path) / "b.txt").write_text("b\n")
    second = wt.commit_all(tree.path, "Step 2", identity)

    saved = wt.roll_back(tree.path, tree.base_commit, first, "refs/board/rollbacks/card-1/1")

    assert saved == second
    assert git(tree.path, "rev-parse", "HEAD").strip() == first
    assert not (Path(tree.path) / "b.txt").exists()
    assert git(str(repo), "rev-parse", "refs/board/rollbacks/card-1/1").strip() == second
    assert wt.refs_under(str(repo), "refs/board/rollbacks/card-1/") == ["refs/board/rollbacks/card-1/1"]
    assert git(str(repo), "rev-parse", "main").strip() == tree.base_commit, "the base branch is untouched"


def test_roll_back_refuses_a_commit_that_is_not_a_checkpoint_of_the_branch(make_repo, tmp_path):
    repo = make_repo()
    tree = wt.ensure_worktree(str(repo), "main", "agent/1-x", str(tmp_path / "wt"))
    git(str(repo), "commit", "-q", "--allow-empty", "-m", "on main later")
    elsewhere = git(str(repo), "rev-parse", "main").strip()

    with pytest.raises(wt.GitError, match="not one of the card's checkpoints"):
        wt.roll_back(tree.path, tree.base_commit, elsewhere, "refs/board/rollbacks/card-1/1")
    with pytest.raises(wt.GitError, match="not a valid ref"):
        wt.roll_back(tree.path, tree.base_commit, tree.base_commit, "refs/board/bad name")


def test_roll_back_to_the_commit_the_branch_is_at_changes_nothing(make_repo, tmp_path):
    repo = make_repo()
    tree = wt.ensure_worktree(str(repo), "main", "agent/1-x", str(tmp_path / "wt"))
    (Path(tree.path) / "a.txt").write_text("a\n")
    tip = wt.commit_all(tree.path, "Step 1", wt.Identity("Board", "board@example.invalid"))

    with pytest.raises(wt.GitError, match="already"):
        wt.roll_back(tree.path, tree.base_commit, tip, "refs/board/rollbacks/card-1/1")
    assert wt.refs_under(str(repo), "refs/board/") == []
