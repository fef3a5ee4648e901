"""Workers on other hosts: each node clones the project's shared remote into its own data folder,
works in its own worktrees and pushes the card's branch back; the web reads diffs from the pushed
branch. Git-level tests of the clone helpers on real throwaway repositories and a bare remote;
the runner and the review switching nodes in one process; and the issue's test, two worker
processes that share nothing but the remote, PostgreSQL and Redis."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from agents import clones, worktrees
from tests.conftest import git

BASE_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture
def remote(make_repo, tmp_path) -> Path:
    """A bare repository holding main with one commit: the shared remote."""
    source = make_repo("seed")
    bare = tmp_path / "shared.git"
    git(tmp_path, "clone", "-q", "--bare", str(source), str(bare))
    return bare


def commit_in(worktree: Path, name: str, text: str) -> str:
    (worktree / name).write_text(text)
    git(worktree, "add", name)
    git(worktree, "commit", "-q", "-m", f"Add {name}")
    return git(worktree, "rev-parse", "HEAD").strip()


# ---------------------------------------------------------------------------------------------
# The git layer
# ---------------------------------------------------------------------------------------------


def test_check_remote_lists_the_branches_of_a_reachable_remote_and_names_git_s_reason_otherwise(remote, tmp_path):
    assert clones.check_remote(str(remote)) == ["main"]
    with pytest.raises(clones.RemoteUnreachable, match="git cannot read the remote .*nowhere.git"):
        clones.check_remote(str(tmp_path / "nowhere.git"))
    for bad in ("", "  ", "--upload-pack=touch /tmp/x", "a\nb"):
        with pytest.raises(worktrees.GitError):
            clones.check_remote(bad)


def test_a_url_is_kept_as_it_is_and_a_local_path_made_absolute():
    assert clones.normalise_url("ssh://git@example.invalid/team/repo.git") == "ssh://git@example.invalid/team/repo.git"
    assert clones.normalise_url("git@example.invalid:team/repo.git") == "git@example.invalid:team/repo.git"
    assert clones.normalise_url("~/repo.git") == os.path.expanduser("~/repo.git")
    assert clones.normalise_url("rel/repo.git") == os.path.abspath("rel/repo.git")


def test_ensure_clone_clones_once_then_follows_a_changed_remote_url(remote, tmp_path):
    clone = tmp_path / "node" / "clones" / "1"
    assert clones.ensure_clone(str(remote), str(clone)) is True
    assert clones.remote_tip(str(clone), "main") == git(remote, "rev-parse", "main").strip()
    assert clones.ensure_clone(str(remote), str(clone)) is False
    moved = tmp_path / "moved.git"
    shutil.copytree(remote, moved)
    clones.ensure_clone(str(moved), str(clone))
    assert git(clone, "remote", "get-url", "origin").strip() == str(moved)


def test_ensure_clone_fails_with_git_s_message_for_an_unreachable_remote(tmp_path):
    with pytest.raises(clones.RemoteUnreachable, match="Could not clone the shared remote .*missing.git"):
        clones.ensure_clone(str(tmp_path / "missing.git"), str(tmp_path / "clone"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(worktrees.GitError, match="something else is already there"):
        clones.ensure_clone(str(tmp_path), str(tmp_path / "busy"))


def test_a_branch_pushed_by_one_clone_is_taken_up_by_another_and_pushed_back(remote, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    clones.ensure_clone(str(remote), str(a))
    clones.ensure_clone(str(remote), str(b))
    base = clones.tracking_ref("main")

    tree_a = worktrees.ensure_worktree(str(a), base, "agent/1-x", str(tmp_path / "wa"))
    first = commit_in(Path(tree_a.path), "one.txt", "1\n")
    assert clones.push_branch(str(a), "agent/1-x") == first
    assert git(remote, "rev-parse", "agent/1-x").strip() == first

    clones.fetch(str(b))
    assert clones.sync_branch(str(b), "agent/1-x") == f"Took agent/1-x from the shared remote at {first[:10]}"
    tree_b = worktrees.ensure_worktree(str(b), base, "agent/1-x", str(tmp_path / "wb"))
    assert tree_b.base_commit == git(remote, "rev-parse", "main").strip()
    assert (Path(tree_b.path) / "one.txt").read_text() == "1\n"
    second = commit_in(Path(tree_b.path), "two.txt", "2\n")
    clones.push_branch(str(b), "agent/1-x")
    assert [c.sha for c in clones.pushed_commits(str(b), tree_b.base_commit, "agent/1-x")] == [first, second]

    # Back on a: its worktree of the card is behind and is fast-forwarded in place.
    clones.fetch(str(a))
    note = clones.sync_branch(str(a), "agent/1-x", tree_a.path)
    assert note.startswith("Brought agent/1-x up to the shared remote's")
    assert git(tree_a.path, "rev-parse", "HEAD").strip() == second
    assert (Path(tree_a.path) / "two.txt").exists()
    assert clones.sync_branch(str(a), "agent/1-x", tree_a.path) == ""


def test_a_rejected_push_fails_with_git_s_message_and_keeps_the_commits_on_the_local_branch(remote, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for clone in (a, b):
        clones.ensure_clone(str(remote), str(clone))
    base = clones.tracking_ref("main")
    tree_a = worktrees.ensure_worktree(str(a), base, "agent/2-y", str(tmp_path / "wa"))
    tree_b = worktrees.ensure_worktree(str(b), base, "agent/2-y", str(tmp_path / "wb"))
    commit_in(Path(tree_a.path), "a.txt", "a\n")
    clones.push_branch(str(a), "agent/2-y")
    mine = commit_in(Path(tree_b.path), "b.txt", "b\n")

    with pytest.raises(clones.PushRejected, match=r"Could not push agent/2-y to the shared remote: .*(rejected|fetch first)"):
        clones.push_branch(str(b), "agent/2-y")
    assert git(b, "rev-parse", "refs/heads/agent/2-y").strip() == mine, "nothing is lost"
    clones.fetch(str(b))
    with pytest.raises(clones.BranchesDiverged, match="both have commits the other lacks"):
        clones.sync_branch(str(b), "agent/2-y", tree_b.path)
    assert git(b, "rev-parse", "refs/heads/agent/2-y").strip() == mine


def test_a_branch_ahead_of_the_remote_is_kept_for_the_next_push(remote, tmp_path):
    a = tmp_path / "a"
    clones.ensure_clone(str(remote), str(a))
    tree = worktrees.ensure_worktree(str(a), clones.tracking_ref("main"), "agent/3-z", str(tmp_path / "wa"))
    commit_in(Path(tree.path), "a.txt", "a\n")
    clones.push_branch(str(a), "agent/3-z")
    ahead = commit_in(Path(tree.path), "b.txt", "b\n")
    assert "ahead of the shared remote" in clones.sync_branch(str(a), "agent/3-z", tree.path)
    assert git(a, "rev-parse", "refs/heads/agent/3-z").strip() == ahead


# ---------------------------------------------------------------------------------------------
# The runner and the review, switching nodes in one process
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def node(settings, tmp_path):
    """Switch this process to the node ``name``: its own BOARD_NODE_NAME and data folder."""

    def use(name: str) -> Path:
        settings.BOARD_NODE_NAME = name
        settings.DATA_DIR = tmp_path / "nodes" / name
        settings.WORKTREES_DIR = settings.DATA_DIR / "worktrees"
        settings.RUNS_DIR = settings.DATA_DIR / "runs"
        settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
        return settings.DATA_DIR

    return use


@pytest.fixture
def shared_card(project, remote, make_card):
    """A card whose command agent appends a line to work.txt, on a project with a shared remote."""
    project.remote_url = str(remote)
    project.save()
    return make_card('echo "run $RUN_ID: $(tail -c 40 "$CARD_PROMPT_FILE" | tr -d "\\n")" >> work.txt', title="Shared work")


@pytest.mark.django_db
def test_a_card_goes_on_on_another_node_from_what_the_first_pushed_and_the_web_shows_the_pushed_diff(
    shared_card, project, remote, node
):
    from agents import runner
    from board import review
    from board.models import RunState

    card = shared_card
    a = node("node-a")
    run = card.start()
    runner.execute(run.pk)
    run.refresh_from_db()
    card.refresh_from_db()
    assert run.state == RunState.SUCCEEDED, run.error
    assert run.worker_host == "node-a" and card.worktree_host == "node-a"
    assert card.worktree_path.startswith(str(a / "worktrees"))
    first = git(remote, "rev-parse", card.branch).strip()
    assert run.commits == [first]
    assert git(remote, "show", f"{card.branch}:work.txt").startswith(f"run {run.pk}:")
    assert not worktrees.branch_exists(project.repo_path, card.branch), "the user's checkout is not used"
    assert "Pushed" in " ".join(run.events.values_list("text", flat=True))

    b = node("node-b")
    follow = card.follow_up("Add one more line")
    runner.execute(follow.pk)
    follow.refresh_from_db()
    card.refresh_from_db()
    assert follow.state == RunState.SUCCEEDED, follow.error
    assert follow.worker_host == "node-b" and card.worktree_host == "node-b"
    assert card.worktree_path.startswith(str(b / "worktrees"))
    lines = git(remote, "show", f"{card.branch}:work.txt").splitlines()
    assert [line.split(":")[0] for line in lines] == [f"run {run.pk}", f"run {follow.pk}"], "it went on from node a's work"
    assert git(remote, "rev-parse", f"{card.branch}~1").strip() == first
    assert follow.base_commit == run.base_commit == git(remote, "rev-parse", "main").strip()

    node("web")  # no worktree, no clone yet: the diff comes from the pushed branch
    page = review.diff_page(card, review.DiffQuery())
    assert page.note == ""
    assert [e.file.path for e in page.entries] == ["work.txt"] and page.added == 2
    assert [c.sha for c in review.checkpoints(card)] == git(remote, "rev-list", "--reverse", f"main..{card.branch}").split()
    one = review.diff_page(card, review.DiffQuery(commit=first))
    assert one.added == 1 and one.commit == first
    from board.compare import diff_size

    assert diff_size(card) == (1, 2, 0, ""), "the variants' comparison reads the pushed branch too"

    from django.test import Client
    from django.urls import reverse

    page = Client().get(reverse("card_detail", args=[card.pk]))
    assert page.status_code == 200
    assert b'class="worktree-host">node-b</strong>' in page.content


@pytest.mark.django_db
def test_a_push_that_fails_fails_the_run_with_git_s_message_and_keeps_the_commits_on_the_node(
    shared_card, project, remote, node, tmp_path
):
    from agents import runner, shared_remote
    from board.models import RunState

    card = shared_card
    node("node-a")
    shared_remote.fresh_clone(project)
    # The remote takes no more pushes: a hook refuses them, as an unreachable or protected remote would.
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'the remote says no' >&2\nexit 1\n")
    hook.chmod(0o755)
    run = card.start()
    runner.execute(run.pk)
    run.refresh_from_db()
    card.refresh_from_db()
    assert run.state == RunState.FAILED
    assert "Could not push" in run.error and "the remote says no" in run.error
    assert f"The commits are safe on the branch {card.branch} of node node-a" in run.error
    clone = shared_remote.clone_path(project)
    assert "run " in git(clone, "show", f"refs/heads/{card.branch}:work.txt")
    assert run.commits == [git(clone, "rev-parse", f"refs/heads/{card.branch}").strip()]


@pytest.mark.django_db
def test_a_remote_that_is_gone_fails_the_run_before_the_agent_starts(shared_card, project, remote, node, tmp_path):
    from agents import runner
    from board.models import RunState

    node("node-a")
    shutil.rmtree(remote)
    run = shared_card.start()
    runner.execute(run.pk)
    run.refresh_from_db()
    assert run.state == RunState.FAILED
    assert "Could not clone the shared remote" in run.error and str(remote) in run.error


@pytest.mark.django_db
def test_the_web_rebases_a_pushed_card_on_the_remote_s_base_and_the_next_run_goes_on_from_it(
    shared_card, remote, node, tmp_path
):
    from agents import landing, runner
    from board.models import RunState

    card = shared_card
    node("node-a")
    first = card.start()
    runner.execute(first.pk)
    card.refresh_from_db()
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(remote), str(other))
    commit_in(other, "other.txt", "on main since\n")
    git(other, "push", "-q", "origin", "main")
    main = git(remote, "rev-parse", "main").strip()

    node("web")
    note = landing.rebase_card(card)
    card.refresh_from_db()
    tip = git(remote, "rev-parse", card.branch).strip()
    assert note == f"Rebased {card.branch} onto main ({main[:10]}) on the shared remote; it is at {tip[:10]} now."
    assert git(remote, "rev-parse", f"{card.branch}~1").strip() == main
    assert card.worktree_host == "" and card.current_run.base_commit == main
    assert card.current_run.commits == [tip]

    node("node-a")  # its worktree has the branch before the rebase: it moves to the rebased one
    second = card.follow_up("Go on")
    runner.execute(second.pk)
    second.refresh_from_db()
    assert second.state == RunState.SUCCEEDED, second.error
    assert git(remote, "show", f"{card.branch}:other.txt") == "on main since\n"
    assert len(git(remote, "show", f"{card.branch}:work.txt").splitlines()) == 2
    assert git(remote, "rev-list", "--count", f"main..{card.branch}").strip() == "2"


@pytest.mark.django_db
def test_a_roll_back_from_the_web_rewrites_the_pushed_branch_with_a_lease_and_the_next_run_goes_on_from_it(
    shared_card, remote, node, tmp_path, monkeypatch
):
    from agents import runner, shared_remote
    from board.models import RunState

    card = shared_card
    node("node-a")
    first = card.start()
    runner.execute(first.pk)
    card.refresh_from_db()
    second = card.follow_up("Another line")
    runner.execute(second.pk)
    second.refresh_from_db()
    tip = git(remote, "rev-parse", card.branch).strip()
    checkpoint = second.commits[0]

    node("web")
    # A push after the web's last fetch: the lease fails, and nothing is rolled back.
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", "-b", card.branch, str(remote), str(other))
    shared_remote.fresh_clone(card.project)
    pushed = commit_in(other, "other.txt", "pushed meanwhile\n")
    with monkeypatch.context() as patch:
        patch.setattr(clones, "fetch", lambda path, timeout=None: None)
        git(other, "push", "-q", "origin", card.branch)
        with pytest.raises(clones.PushRejected, match="Could not roll .* back on the shared remote"):
            runner.roll_back_card(card, checkpoint)
    assert git(remote, "rev-parse", card.branch).strip() == pushed
    git(other, "push", "-q", "--force", "origin", f"{tip}:refs/heads/{card.branch}")  # undo the stranger's push

    note = runner.roll_back_card(card, checkpoint)
    card.refresh_from_db()
    assert note.startswith(f"Rolled back to {checkpoint[:10]} on the shared remote")
    assert git(remote, "rev-parse", card.branch).strip() == checkpoint
    kept = note.split("kept there as ")[1].rstrip(".")
    assert git(remote, "rev-parse", kept).strip() == tip, "the rolled-back commits stay on the remote"
    assert card.worktree_host == ""

    node("node-a")  # its worktree still has the rolled-back commit: the remote wins, its tip is kept
    third = card.follow_up("Go on")
    runner.execute(third.pk)
    third.refresh_from_db()
    assert third.state == RunState.SUCCEEDED, third.error
    lines = git(remote, "show", f"{card.branch}:work.txt").splitlines()
    assert [line.split(":")[0] for line in lines] == [f"run {first.pk}", f"run {third.pk}"]


@pytest.mark.django_db
@pytest.mark.parametrize("mode", ["merge", "squash", "rebase"])
def test_the_web_lands_a_pushed_card_on_the_remote_s_base_and_a_base_that_moved_fails_cleanly(
    shared_card, project, remote, node, tmp_path, mode, monkeypatch
):
    from agents import landing, landing_git, runner
    from board import review
    from board.models import Column

    node("node-a")
    runner.execute(shared_card.start().pk)
    shared_card.refresh_from_db()
    node("web")
    before = git(remote, "rev-parse", "main").strip()
    assert landing.check_conflicts(shared_card) == []

    # Someone pushes to main on the remote after the web's last fetch: the web's first try
    # builds on what it fetched, and the remote refuses the push, so nothing lands.
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(remote), str(other))
    commit_in(other, "other.txt", "elsewhere\n")
    with monkeypatch.context() as patch:
        patch.setattr(clones, "fetch", lambda path, timeout=None: None)  # the push lands between the web's fetch and its push
        git(other, "push", "-q", "origin", "main")
        with pytest.raises(landing_git.BaseMoved, match="Could not push the landing to main on the shared remote"):
            landing.land_card(shared_card, mode)
    moved = git(remote, "rev-parse", "main").strip()
    assert moved != before
    shared_card.refresh_from_db()
    assert shared_card.column == Column.REVIEW and not shared_card.landed_commit

    note = landing.land_card(shared_card, mode)
    shared_card.refresh_from_db()
    landed = git(remote, "rev-parse", "main").strip()
    assert note.startswith(f"Landed on main of the shared remote as {landed[:10]}")
    assert shared_card.column == Column.DONE and shared_card.landed_commit == landed
    assert git(remote, "merge-base", "--is-ancestor", moved, landed) == ""  # a fast-forward of the remote's main
    assert git(remote, "show", "main:work.txt").startswith("run ") and git(remote, "show", "main:other.txt") == "elsewhere\n"
    assert git(remote, "rev-parse", shared_card.branch), "the card's branch is kept on the remote"
    page = review.diff_page(shared_card, review.DiffQuery())
    assert page.note == "" and [e.file.path for e in page.entries] == ["work.txt"]


@pytest.mark.django_db
def test_the_project_settings_take_a_reachable_remote_and_refuse_others_with_a_clear_message(project, remote, tmp_path):
    from django.core.management import CommandError, call_command
    from django.forms.models import model_to_dict

    from board.forms import ProjectSettingsForm

    data = {k: ("" if v is None else v) for k, v in model_to_dict(project, ProjectSettingsForm._meta.fields).items()}
    form = ProjectSettingsForm({**data, "remote_url": str(tmp_path / "nowhere.git")}, instance=project)
    assert not form.is_valid()
    assert "git cannot read the remote" in form.errors["remote_url"][0]
    form = ProjectSettingsForm({**data, "remote_url": str(remote), "base_branch": "trunk"}, instance=project)
    assert not form.is_valid()
    assert any("has no branch trunk" in e for e in form.errors.get("remote_url", []))

    call_command("project", "set", str(project.pk), "--remote-url", str(remote))
    project.refresh_from_db()
    assert project.remote_url == str(remote)
    with pytest.raises(CommandError, match="git cannot read the remote"):
        call_command("project", "set", str(project.pk), "--remote-url", str(tmp_path / "gone.git"))
    call_command("project", "set", str(project.pk), "--remote-url", "")
    project.refresh_from_db()
    assert project.remote_url == ""


def test_only_this_node_s_runs_are_judged_by_their_process(settings):
    from board.management.commands.board import worker_alive

    settings.BOARD_NODE_NAME = "node-a"
    dead_pid = 2 ** 22 + 12345  # above Linux's pid_max default
    assert worker_alive("node-b", dead_pid) is True, "another node's run is that node's to judge"
    assert worker_alive("node-a", dead_pid) is False
    assert worker_alive("node-a", os.getpid()) is True


# ---------------------------------------------------------------------------------------------
# The test: two worker processes sharing nothing but the remote, PostgreSQL and Redis
# ---------------------------------------------------------------------------------------------

POSTGRES_URL = os.environ.get("BOARD_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/6")
RUN_TIMEOUT = 90.0  # seconds for a queued run to be taken by a worker and end
# The test process's own settings must not leak into the nodes, which set their own.
NOT_INHERITED = ("DATABASE_URL", "REDIS_URL", "BOARD_REDIS_PREFIX", "BOARD_DB_PATH", "BOARD_Q_SYNC", "BOARD_PORT",
                 "BOARD_HOST", "BOARD_WORKERS", "BOARD_DATA_DIR", "BOARD_NODE_NAME", "DJANGO_SECRET_KEY")
# The agent commits by itself: one line per run in a file of its card.
AGENT_COMMAND = ('echo "run $RUN_ID" >> "notes-$CARD_ID.txt" && git add -A && '
                 'git commit -q -m "Agent: note of run $RUN_ID" && echo noted')


@pytest.fixture
def shared_services(tmp_path):
    """A fresh PostgreSQL database (made and dropped here through psycopg) and a Redis key prefix
    of this test's own; yields (database URL, Redis URL, prefix). Fails, never skips, when either
    service cannot be reached."""
    import psycopg
    import redis

    name = f"board_multi_host_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL is needed for the multi-host test ({POSTGRES_URL}): {exc}")
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        admin.close()
        pytest.fail(f"Redis is needed for the multi-host test ({REDIS_URL}): {exc}")
    prefix = f"board-mh-{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}", REDIS_URL, prefix
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        for key in client.scan_iter(f"*{prefix}*"):
            client.delete(key)
        client.close()


class Node:
    """One node of the team: its own BOARD_NODE_NAME and data folder, the shared database,
    broker and (through the projects) remote, nothing else."""

    def __init__(self, name: str, root: Path, database: str, redis_url: str, prefix: str, secret: str):
        self.name, self.data = name, root / name
        self.data.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
        env.update(DATABASE_URL=database, REDIS_URL=redis_url, BOARD_REDIS_PREFIX=prefix, BOARD_WORKERS="1",
                   BOARD_DATA_DIR=str(self.data), BOARD_NODE_NAME=name, PYTHONUNBUFFERED="1",
                   # One key for the team: django-q2 signs what a cluster reports (and tasks) with it.
                   DJANGO_SECRET_KEY=secret)
        self.env = env
        self.worker: subprocess.Popen | None = None

    def manage(self, *args: str) -> str:
        """Run `manage.py args` as this node; returns stdout. Fails the test with the output."""
        result = subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=self.env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"manage.py {' '.join(args)} on {self.name}: {result.stdout}{result.stderr}"
        return result.stdout

    def queue(self, *args: str) -> str:
        """`manage.py card <args>` that queues a run, retried while no worker has reported itself
        yet (a starting qcluster takes a few seconds to show in the broker's statistics)."""
        deadline = time.monotonic() + 60
        while True:
            result = subprocess.run([sys.executable, "manage.py", "card", *args], cwd=BASE_DIR, env=self.env,
                                    capture_output=True, text=True, timeout=120)
            if result.returncode == 0:
                return result.stdout
            if "No worker is running" not in result.stderr or time.monotonic() > deadline:
                pytest.fail(f"manage.py card {' '.join(args)} on {self.name}: {result.stdout}{result.stderr}\n"
                            f"worker log: {self.log()}")
            time.sleep(1)

    def start_worker(self) -> None:
        """This node's worker process: django-q2's qcluster, its output in <data>/worker.log."""
        log = open(self.data / "worker.log", "a")
        self.worker = subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=BASE_DIR, env=self.env,
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        # Ready once its cluster reports itself in the broker, as `card start` checks.
        import redis

        client = redis.Redis.from_url(self.env["REDIS_URL"], socket_timeout=5)
        pattern = f"django_q:{self.env['BOARD_REDIS_PREFIX']}-runs:cluster:*"
        deadline = time.monotonic() + 60
        while not any(True for _ in client.scan_iter(pattern)):
            if self.worker.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"The worker of {self.name} did not start: {self.log()}")
            time.sleep(0.3)
        client.close()

    def stop_worker(self) -> None:
        """SIGTERM (django-q2's graceful stop), SIGKILL of its group if it lingers."""
        if self.worker is None:
            return
        if self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.worker.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        self.worker.wait(10)
        self.worker = None

    def log(self) -> str:
        path = self.data / "worker.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture
def team(tmp_path, shared_services):
    """Three nodes on the shared services: workers "node-a" and "node-b" and the "web"."""
    database, redis_url, prefix = shared_services
    secret = uuid.uuid4().hex * 2
    nodes = {name: Node(name, tmp_path / "nodes", database, redis_url, prefix, secret)
             for name in ("node-a", "node-b", "web")}
    nodes["web"].database = database
    try:
        yield nodes
    finally:
        for n in nodes.values():
            n.stop_worker()


def finished_run(database: str, card_id: int, after_run: int, nodes) -> dict:
    """Wait (RUN_TIMEOUT at most) for a run of the card newer than ``after_run`` to end; returns
    its id, state, worker host, error and commits, read straight from PostgreSQL."""
    import psycopg

    deadline = time.monotonic() + RUN_TIMEOUT
    with psycopg.connect(database, autocommit=True) as db:
        while time.monotonic() < deadline:
            row = db.execute(
                "SELECT id, state, worker_host, error, commits FROM board_run WHERE card_id = %s AND id > %s "
                "ORDER BY id DESC LIMIT 1", (card_id, after_run),
            ).fetchone()
            if row and row[1] in ("succeeded", "failed", "stopped", "interrupted"):
                commits = row[4] if isinstance(row[4], list) else json.loads(row[4] or "[]")
                return {"id": row[0], "state": row[1], "host": row[2], "error": row[3], "commits": commits}
            time.sleep(0.3)
    logs = "\n".join(f"--- {n.name}:\n{n.log()}" for n in nodes.values())
    pytest.fail(f"No run of card {card_id} ended within {RUN_TIMEOUT:g} s.\n{logs}")


WEB_VIEW = """
import json
from django.test import Client
from board import review
from board.models import Card
client = Client(SERVER_NAME="127.0.0.1")
out = {}
for card in Card.objects.select_related("project", "current_run").order_by("pk"):
    page = review.diff_page(card, review.DiffQuery())
    raw = client.get(f"/cards/{card.pk}/diff/raw", {"path": f"notes-{card.pk}.txt"})
    out[card.pk] = {"note": page.note, "files": [e.file.path for e in page.entries], "added": page.added,
                    "checkpoints": [c.sha for c in review.checkpoints(card)], "host": card.worktree_host,
                    "raw": [raw.status_code, raw.content.decode()]}
print("WEB " + json.dumps(out))
"""


def web_view(web: Node) -> dict:
    """What the web node shows of each card: its diff's files and added lines and its
    checkpoints, read the way the card page reads them (board.review), in its own data folder."""
    out = web.manage("shell", "-c", WEB_VIEW)
    line = [line for line in out.splitlines() if line.startswith("WEB ")][-1]
    return {int(k): v for k, v in json.loads(line[4:]).items()}


def test_two_worker_processes_sharing_only_the_remote_postgresql_and_redis_push_and_go_on_from_each_other(
    team, remote, tmp_path
):
    a, b, web = team["node-a"], team["node-b"], team["web"]
    database = web.database
    checkout = tmp_path / "lead-checkout"
    git(tmp_path, "clone", "-q", str(remote), str(checkout))

    web.manage("migrate", "--noinput")
    project = int(web.manage("project", "add", str(checkout), "--base", "main", "--name", "shared").split()[-1])
    web.manage("project", "set", str(project), "--remote-url", str(remote))
    web.manage("agent", "add", "noter", "--command", AGENT_COMMAND)
    first = int(web.manage("card", "add", "--project", str(project), "--title", "First card", "--agent", "noter").split()[-1])
    second = int(web.manage("card", "add", "--project", str(project), "--title", "Second card", "--agent", "noter").split()[-1])

    # Node a alone: it takes the first card and pushes its branch.
    a.start_worker()
    web.queue("start", str(first))
    run1 = finished_run(database, first, 0, team)
    assert run1["state"] == "succeeded" and run1["host"] == "node-a", (run1, a.log())
    branch1 = f"agent/{first}-first-card"
    assert git(remote, "show", f"{branch1}:notes-{first}.txt") == f"run {run1['id']}\n"
    assert run1["commits"] == git(remote, "rev-list", "--reverse", f"main..{branch1}").split()

    # Node b comes up while a still runs, then a goes: b takes the second card, and a follow-up of
    # the first, which goes on from what node a pushed, in b's own worktree.
    b.start_worker()
    time.sleep(2)
    a.stop_worker()
    web.queue("start", str(second))
    run2 = finished_run(database, second, 0, team)
    assert run2["state"] == "succeeded" and run2["host"] == "node-b", (run2, b.log())
    web.queue("follow-up", str(first), "--text", "One more note")
    run3 = finished_run(database, first, run1["id"], team)
    assert run3["state"] == "succeeded" and run3["host"] == "node-b", (run3, b.log())
    assert git(remote, "show", f"{branch1}:notes-{first}.txt") == f"run {run1['id']}\nrun {run3['id']}\n"
    assert git(remote, "rev-list", "--reverse", f"main..{branch1}").split() == run1["commits"] + run3["commits"][-1:]
    assert (b.data / "worktrees" / str(project) / f"{first}-first-card" / f"notes-{first}.txt").exists()

    # And back: node a takes up the second card from b's push.
    a.start_worker()
    time.sleep(2)
    b.stop_worker()
    web.queue("follow-up", str(second), "--text", "And another")
    run4 = finished_run(database, second, run2["id"], team)
    assert run4["state"] == "succeeded" and run4["host"] == "node-a", (run4, a.log())
    branch2 = f"agent/{second}-second-card"
    assert git(remote, "show", f"{branch2}:notes-{second}.txt") == f"run {run2['id']}\nrun {run4['id']}\n"
    a.stop_worker()

    # The web, with a data folder of its own and no worktree, shows each card's pushed diff.
    shown = web_view(web)
    for card, runs in ((first, (run1, run3)), (second, (run2, run4))):
        status, patch = shown[card].pop("raw")
        assert status == 200, patch
        assert [line for line in patch.splitlines() if line.startswith("+run")] == [f"+run {r['id']}" for r in runs]
    assert shown[first] == {
        "note": "", "files": [f"notes-{first}.txt"], "added": 2, "host": "node-b",
        "checkpoints": git(remote, "rev-list", "--reverse", f"main..{branch1}").split(),
    }
    assert shown[second] == {
        "note": "", "files": [f"notes-{second}.txt"], "added": 2, "host": "node-a",
        "checkpoints": git(remote, "rev-list", "--reverse", f"main..{branch2}").split(),
    }
    assert not (web.data / "worktrees").exists() or not any((web.data / "worktrees").rglob("notes-*"))
    # The lead's checkout was never used: no card's branch there.
    assert git(checkout, "branch", "--list", "agent/*") == ""


@pytest.mark.django_db
def test_a_first_run_never_takes_a_branch_of_the_same_name_already_on_the_remote(shared_card, remote, node, tmp_path):
    from agents import runner
    from board.models import RunState

    # Another board (or this one before its database was reset) pushed a branch of that name.
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(remote), str(other))
    git(other, "switch", "-q", "-c", f"agent/{shared_card.pk}-shared-work")
    theirs = commit_in(other, "theirs.txt", "not yours\n")
    git(other, "push", "-q", "origin", f"agent/{shared_card.pk}-shared-work")

    node("node-a")
    run = shared_card.start()
    runner.execute(run.pk)
    run.refresh_from_db()
    shared_card.refresh_from_db()
    assert run.state == RunState.SUCCEEDED, run.error
    assert shared_card.branch == f"agent/{shared_card.pk}-shared-work-2"
    assert git(remote, "rev-parse", f"agent/{shared_card.pk}-shared-work").strip() == theirs
    assert "theirs.txt" not in git(remote, "ls-tree", "--name-only", shared_card.branch)


@pytest.mark.django_db
def test_an_interrupted_run_is_judged_only_by_its_own_node_which_pushes_its_recovery_checkpoint(
    shared_card, remote, node
):
    from agents import runner
    from board.management.commands.board import worker_alive
    from board.models import Run, RunState

    card = shared_card
    node("node-a")
    runner.execute(card.start().pk)
    card.refresh_from_db()
    follow = card.follow_up("More")
    dead_pid = 2 ** 22 + 4321
    Run.objects.filter(pk=follow.pk).update(state=RunState.RUNNING, worker_host="node-a", worker_pid=dead_pid)
    Path(card.worktree_path, "half-done.txt").write_text("work in progress\n")

    node("node-b")  # another node's start-up or check: node a's run is not its to judge
    assert runner.interrupt_orphans(worker_alive, reason="its worker process died") == 0
    follow.refresh_from_db()
    assert follow.state == RunState.RUNNING

    node("node-a")
    assert runner.interrupt_orphans(worker_alive, reason="its worker process died") == 1
    follow.refresh_from_db()
    assert follow.state == RunState.INTERRUPTED
    assert git(remote, "show", f"{card.branch}:half-done.txt") == "work in progress\n", "the recovery checkpoint was pushed"


@pytest.mark.django_db
def test_deleting_a_card_keeps_its_branch_on_the_remote_and_removes_only_this_node_s_worktree(
    shared_card, remote, node
):
    from agents import runner
    from board.models import Card

    card = shared_card
    node("node-a")
    runner.execute(card.start().pk)
    card.refresh_from_db()
    worktree, branch = Path(card.worktree_path), card.branch
    (worktree / "left.txt").write_text("not committed yet\n")

    note = runner.delete_card(card)
    assert note == f"Its branch {branch} was kept on the shared remote."
    assert not worktree.exists() and not Card.objects.filter(pk=card.pk).exists()
    assert git(remote, "show", f"{branch}:left.txt") == "not committed yet\n", "what was left is committed and pushed"


@pytest.mark.django_db
def test_a_card_that_ran_before_the_project_had_a_shared_remote_goes_on_from_its_branch(
    project, remote, make_card, node
):
    from agents import runner
    from board.models import RunState

    git(project.repo_path, "fetch", "-q", str(remote), "main")
    git(project.repo_path, "reset", "-q", "--hard", "FETCH_HEAD")  # the checkout and the remote share main
    card = make_card('echo "run $RUN_ID" >> work.txt', title="Older card")
    runner.execute(card.start().pk)  # single host: the branch is in the project's checkout
    card.refresh_from_db()
    assert card.worktree_host == "" and worktrees.branch_exists(project.repo_path, card.branch)

    project.remote_url = str(remote)
    project.save()
    node("node-a")
    follow = card.follow_up("Go on")
    runner.execute(follow.pk)
    follow.refresh_from_db()
    card.refresh_from_db()
    assert follow.state == RunState.SUCCEEDED, follow.error
    assert card.worktree_host == "node-a"
    assert len(git(remote, "show", f"{card.branch}:work.txt").splitlines()) == 2, "it went on from the earlier run"


@pytest.mark.django_db
def test_the_web_shows_the_last_fetched_diff_when_the_remote_cannot_be_reached(shared_card, remote, node, tmp_path):
    from agents import runner, shared_remote
    from board import review

    node("node-a")
    runner.execute(shared_card.start().pk)
    shared_card.refresh_from_db()
    node("web")
    assert review.diff_page(shared_card, review.DiffQuery()).added == 1
    remote.rename(tmp_path / "away.git")
    shared_remote._fetched_at.clear()  # as if the last fetch were long ago
    page = review.diff_page(shared_card, review.DiffQuery())
    assert page.note == "" and page.added == 1


def test_a_node_that_was_passed_by_goes_on_from_the_remote_and_keeps_its_own_commits_as_a_ref(remote, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for clone in (a, b):
        clones.ensure_clone(str(remote), str(clone))
    base = clones.tracking_ref("main")
    tree_a = worktrees.ensure_worktree(str(a), base, "agent/4-w", str(tmp_path / "wa"))
    unpushed = commit_in(Path(tree_a.path), "a.txt", "a\n")  # its push failed
    tree_b = worktrees.ensure_worktree(str(b), base, "agent/4-w", str(tmp_path / "wb"))
    theirs = commit_in(Path(tree_b.path), "b.txt", "b\n")
    clones.push_branch(str(b), "agent/4-w")
    clones.fetch(str(a))

    (Path(tree_a.path) / "dirty.txt").write_text("uncommitted\n")
    with pytest.raises(clones.BranchesDiverged, match="holds uncommitted work"):
        clones.sync_branch(str(a), "agent/4-w", tree_a.path, remote_is_truth=True)
    (Path(tree_a.path) / "dirty.txt").unlink()

    note = clones.sync_branch(str(a), "agent/4-w", tree_a.path, remote_is_truth=True)
    keep = f"refs/board/superseded/agent/4-w/{unpushed[:12]}"
    assert f"they are kept as {keep}" in note
    assert git(a, "rev-parse", keep).strip() == unpushed
    assert git(tree_a.path, "rev-parse", "HEAD").strip() == theirs
    assert (Path(tree_a.path) / "b.txt").exists() and not (Path(tree_a.path) / "a.txt").exists()


@pytest.mark.django_db
def test_a_node_whose_push_failed_goes_on_from_what_another_node_pushed_since(shared_card, remote, node):
    from agents import runner, shared_remote
    from board.models import RunState

    card = shared_card
    node("node-a")
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nexit 1\n")
    hook.chmod(0o755)
    first = card.start()
    runner.execute(first.pk)
    first.refresh_from_db()
    assert first.state == RunState.FAILED and "Could not push" in first.error
    hook.unlink()

    node("node-b")
    card.refresh_from_db()
    second = card.resume()  # the lead starts it again; node b takes it
    runner.execute(second.pk)
    second.refresh_from_db()
    assert second.state == RunState.SUCCEEDED, second.error

    node("node-a")
    card.refresh_from_db()
    third = card.follow_up("Again")
    runner.execute(third.pk)
    third.refresh_from_db()
    card.refresh_from_db()
    assert third.state == RunState.SUCCEEDED, third.error
    assert "they are kept as refs/board/superseded/" in " ".join(third.events.values_list("text", flat=True))
    lines = git(remote, "show", f"{card.branch}:work.txt").splitlines()
    assert [line.split(":")[0] for line in lines] == [f"run {second.pk}", f"run {third.pk}"]
    clone = shared_remote.clone_path(card.project)
    assert git(clone, "for-each-ref", "--format=%(objectname)", "refs/board/superseded/").split() == first.commits


@pytest.mark.django_db
def test_saving_other_settings_does_not_check_an_unchanged_remote_again(project, remote, tmp_path):
    from django.forms.models import model_to_dict

    from board.forms import ProjectSettingsForm

    project.remote_url = str(remote)
    project.save()
    remote.rename(tmp_path / "down.git")  # unreachable for now
    data = {k: ("" if v is None else v) for k, v in model_to_dict(project, ProjectSettingsForm._meta.fields).items()}
    form = ProjectSettingsForm({**data, "name": "renamed"}, instance=project)
    assert form.is_valid(), form.errors
    form = ProjectSettingsForm({**data, "remote_url": str(tmp_path / "other.git")}, instance=project)
    assert not form.is_valid() and "git cannot read the remote" in form.errors["remote_url"][0]


@pytest.mark.django_db
def test_the_web_says_so_while_a_card_s_branch_is_not_pushed_yet(shared_card, node):
    from board import review

    node("web")
    shared_card.branch = f"agent/{shared_card.pk}-shared-work"  # its first run has named it, not pushed it
    shared_card.save()
    page = review.diff_page(shared_card, review.DiffQuery())
    assert page.note == (f"Nothing of {shared_card.branch} is on the shared remote yet: "
                         "a run pushes the card's branch when it ends.")
    assert review.checkpoints(shared_card) == []
