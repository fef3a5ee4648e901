"""Stopping, deleting and sweeping: the agent's processes go, the worktree goes, and work that is
not on the base branch stays unless the lead says otherwise. Real throwaway repositories."""

import os
import time
from pathlib import Path

import pytest
from django.test import Client

from agents import runner, worktrees
from board.models import Card, Event, Run, RunState
from tests.conftest import execute_in_thread, git, processes_named

pytestmark = pytest.mark.django_db


def run_once(card: Card) -> Run:
    run = card.start()
    runner.execute(run.pk)
    card.refresh_from_db()
    return card.current_run


def wait_for_state(run: Run, state: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.state == state:
            return
        time.sleep(0.1)
    raise AssertionError(f"run {run.pk} is {run.state}, not {state}")


@pytest.mark.django_db(transaction=True)
def test_stop_ends_the_whole_process_group_within_seconds(make_card):
    marker = f"stop-test-{os.getpid()}-{time.monotonic_ns()}"
    card = make_card(f"echo working; (exec -a {marker} sleep 300) & exec -a {marker} sleep 300")
    run = card.start()
    thread = execute_in_thread(run.pk)
    wait_for_state(run, RunState.RUNNING)
    deadline = time.monotonic() + 10
    while len(processes_named(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(processes_named(marker)) == 2
    stopped_at = time.monotonic()
    card.stop()
    wait_for_state(run, RunState.STOPPED, timeout=10)
    assert time.monotonic() - stopped_at < 5
    thread.join(10)
    assert processes_named(marker) == []
    assert run.error == "stopped by the lead"
    with pytest.raises(Exception, match="not running"):
        card.stop()


def test_stopping_a_queued_run_ends_it_before_any_worker_takes_it(make_card, tmp_path):
    flag = tmp_path / "ran"
    card = make_card(f"touch {flag}")
    run = card.start()
    card.stop()
    run.refresh_from_db()
    assert run.state == RunState.STOPPED
    assert runner.execute(run.pk) is None
    assert not flag.exists()


def test_deleting_a_card_removes_its_worktree_and_a_branch_with_nothing_on_it(make_card, project):
    card = make_card("echo looked around, changed nothing")
    run_once(card)
    worktree, branch, card_id = card.worktree_path, card.branch, card.pk
    assert Path(worktree).is_dir() and worktrees.branch_exists(project.repo_path, branch)
    note = runner.delete_card(card)
    assert "deleted" in note
    assert not Path(worktree).exists()
    assert not worktrees.branch_exists(project.repo_path, branch)
    assert worktree not in git(project.repo_path, "worktree", "list")
    assert not Card.objects.filter(pk=card_id).exists()
    assert Event.objects.filter(card_id=card_id, kind="card", text="deleted").exists(), "open boards are told"


def test_a_branch_with_commits_not_on_the_base_is_kept_unless_the_lead_confirms(make_card, project):
    kept = make_card("echo a > a.txt")
    run_once(kept)
    note = runner.delete_card(kept)
    assert "kept" in note
    assert git(project.repo_path, "show", f"{kept.branch}:a.txt") == "a\n"
    confirmed = make_card("echo b > b.txt")
    run_once(confirmed)
    runner.delete_card(confirmed, delete_branch=True)
    assert not worktrees.branch_exists(project.repo_path, confirmed.branch)


def test_uncommitted_work_is_committed_before_the_worktree_goes(make_card, project):
    card = make_card("echo first > first.txt")
    run_once(card)
    Path(card.worktree_path, "later.txt").write_text("written by hand in the worktree\n")
    runner.delete_card(card)
    assert git(project.repo_path, "show", f"{card.branch}:later.txt") == "written by hand in the worktree\n"


@pytest.mark.django_db(transaction=True)
def test_deleting_a_running_card_stops_its_agent_first(make_card, project):
    marker = f"delete-test-{os.getpid()}-{time.monotonic_ns()}"
    card = make_card(f"exec -a {marker} sleep 300")
    run = card.start()
    thread = execute_in_thread(run.pk)
    wait_for_state(run, RunState.RUNNING)
    card_id = card.pk
    card.refresh_from_db()
    runner.delete_card(Card.objects.select_related("project", "current_run").get(pk=card_id))
    thread.join(10)
    assert processes_named(marker) == []
    assert not Card.objects.filter(pk=card_id).exists()
    assert not Path(card.worktree_path).exists()


def test_the_delete_page_action_redirects_to_the_board_with_what_happened(make_card, project):
    card = make_card("echo c > c.txt")
    run_once(card)
    client = Client(HTTP_HOST="127.0.0.1")
    response = client.post(f"/cards/{card.pk}/delete", follow=True)
    assert response.redirect_chain[-1][0] == f"/projects/{project.pk}/"
    assert f"Its branch {card.branch} was kept" in response.content.decode()
    assert client.get(f"/cards/{card.pk}/delete").status_code == 405


def test_the_sweep_removes_only_worktrees_no_card_owns(make_card, project, settings):
    owned = make_card("echo mine > mine.txt")
    run_once(owned)
    orphan = make_card("echo orphan > orphan.txt")
    run_once(orphan)
    Path(orphan.worktree_path, "unsaved.txt").write_text("not committed yet\n")
    Card.objects.filter(pk=orphan.pk).delete()  # as if the database had lost it
    outside = Path(project.repo_path).parent / "users-own-worktree"
    git(project.repo_path, "worktree", "add", "-q", "-b", "users-branch", str(outside))
    removed = runner.sweep_worktrees()
    assert removed == [orphan.worktree_path]
    assert Path(owned.worktree_path).is_dir() and outside.is_dir()
    assert git(project.repo_path, "show", f"{orphan.branch}:unsaved.txt") == "not committed yet\n", "work recovered"


def test_a_card_keeps_its_branch_when_its_title_changes(make_card, project):
    card = make_card("echo one >> log.txt", title="First title")
    run_once(card)
    branch, worktree = card.branch, card.worktree_path
    card.title = "A completely different title"
    card.save()
    run_once(card)
    card.refresh_from_db()
    assert (card.branch, card.worktree_path) == (branch, worktree)
    assert git(project.repo_path, "show", f"{branch}:log.txt") == "one\none\n"


def test_after_a_hundred_cards_come_and_go_git_shows_only_what_live_cards_need(make_card, project):
    repo = project.repo_path
    live, kept = [], []
    for i in range(100):
        has_commit = i % 10 == 0
        card = make_card(f"echo {i} > card.txt" if has_commit else "true", title=f"Card {i}")
        run_once(card)
        if i % 25 == 0:
            live.append(card)
        else:
            runner.delete_card(card)
            if has_commit:
                kept.append(card.branch)  # work not on the base: kept
    listed = git(repo, "worktree", "list", "--porcelain")
    assert sorted(line[len("worktree "):] for line in listed.splitlines() if line.startswith("worktree ")) == sorted(
        [str(Path(repo).resolve())] + [c.worktree_path for c in live]
    )
    branches = set(git(repo, "branch", "--format=%(refname:short)").split())
    assert branches == {"main"} | {c.branch for c in live} | set(kept)
    assert len(kept) == 8
