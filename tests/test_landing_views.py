"""Landing through the pages: the card page's Land panel, the board's Land button, the settings;
refusals answer 409 (422 for bad input) with the reason, never a 500."""

import os
import re
from pathlib import Path

import pytest
from django.test import Client

from agents import runner
from board.models import Card, Column, RunState
from tests.conftest import git

pytestmark = pytest.mark.django_db


@pytest.fixture
def client():
    return Client(HTTP_HOST="127.0.0.1", raise_request_exception=True)


def htmx(client, url, data=None):
    return client.post(url, data or {}, HTTP_HX_REQUEST="true")


@pytest.fixture
def review_card(make_card):
    """A card whose command agent wrote landed.txt, in Review."""
    card = make_card("echo landed > landed.txt")
    run = card.start()
    runner.execute(run.pk)
    card.refresh_from_db()
    assert card.current_run.state == RunState.SUCCEEDED and card.column == Column.REVIEW
    return card


def land_panel(html: str) -> str:
    found = re.search(r'<div id="land".*?</div>\s*</section>', html, re.S)
    assert found, "the card page has a Land panel"
    return found.group(0)


def test_the_card_page_offers_landing_with_the_mode_preselected_from_card_or_project(client, review_card, project):
    project.land_mode = "squash"
    project.save()
    panel = land_panel(client.get(f"/cards/{review_card.pk}/").content.decode())
    assert '<option value="squash" selected>' in panel and "Land on main" in panel
    assert "Not checked against main yet" in panel
    for button in ("Check for conflicts", "Rebase onto main", "Push", "Open pull request"):
        assert button in panel
    review_card.land_mode = "rebase"
    review_card.save()
    panel = land_panel(client.get(f"/cards/{review_card.pk}/").content.decode())
    assert '<option value="rebase" selected>' in panel and '<option value="squash" selected>' not in panel


def test_landing_from_the_card_page_moves_the_card_to_done(client, review_card, project):
    response = client.post(f"/cards/{review_card.pk}/land", {"mode": "squash"})
    assert response.status_code == 302 and response["Location"] == f"/cards/{review_card.pk}/"
    review_card.refresh_from_db()
    assert review_card.column == Column.DONE
    assert review_card.landed_commit == git(project.repo_path, "rev-parse", "main").strip()
    assert len(git(project.repo_path, "rev-list", "--parents", "-n1", "main").split()) == 2, "squash, as chosen"
    page = client.get(f"/cards/{review_card.pk}/").content.decode()
    assert f"Landed on main as {review_card.landed_commit[:10]}" in page
    assert "Landed</strong> on <code>main</code>" in page
    # Not the removed worktree's path, nor "No commits yet" for commits that are on main now.
    assert "removed when the card landed" in page and "No commits yet" not in page
    assert f"commits are on <code>main</code> since it landed as <code title=\"{review_card.landed_commit}\">" in page


def test_a_refused_landing_answers_409_with_the_reason_in_the_land_panel(client, review_card, project):
    readme = Path(project.repo_path) / "README.md"
    readme.write_text("my own unsaved edit\n")
    response = client.post(f"/cards/{review_card.pk}/land", {"mode": "merge"})
    assert response.status_code == 409
    panel = land_panel(response.content.decode())
    assert 'role="alert"' in panel and "uncommitted changes" in panel and "README.md" in panel
    assert readme.read_text() == "my own unsaved edit\n"
    review_card.refresh_from_db()
    assert review_card.column == Column.REVIEW and not review_card.landed_commit


def test_a_landing_mode_that_does_not_exist_is_422(client, review_card):
    response = client.post(f"/cards/{review_card.pk}/land", {"mode": "octopus"})
    assert response.status_code == 422
    assert "Choose merge, squash or rebase" in response.content.decode()


def test_the_board_lands_a_review_card_with_its_button_and_refuses_twice_with_409(client, review_card, make_card, project):
    idle = make_card(title="Not started")
    board = client.get(f"/projects/{project.pk}/").content.decode()
    assert board.count('class="land"') == 1, "only the Review card has a Land button"
    assert f'data-post="/cards/{review_card.pk}/land"' in board and f'data-post="/cards/{idle.pk}/land"' not in board
    first = htmx(client, f"/cards/{review_card.pk}/land")
    assert first.status_code == 200
    review_card.refresh_from_db()
    assert review_card.column == Column.DONE
    assert f'id="card-{review_card.pk}"' in first.content.decode()
    assert f"landed as <code>{review_card.landed_commit[:10]}" in first.content.decode()
    second = htmx(client, f"/cards/{review_card.pk}/land")
    assert second.status_code == 409
    assert f"already landed as {review_card.landed_commit[:10]}" in second.content.decode()


def test_landing_while_the_card_runs_is_409(client, review_card, project):
    review_card.follow_up("One more thing")
    response = htmx(client, f"/cards/{review_card.pk}/land")
    assert response.status_code == 409 and "still queued" in response.content.decode()
    assert git(project.repo_path, "rev-list", "--count", "main").strip() == "1"


def test_check_for_conflicts_shows_conflicts_with_base_and_the_files(client, make_card, project):
    card = make_card("echo card > README.md")
    runner.execute(card.start().pk)
    (Path(project.repo_path) / "README.md").write_text("main's own\n")
    git(project.repo_path, "commit", "-q", "-am", "Main edits README")
    response = client.post(f"/cards/{card.pk}/conflicts")
    assert response.status_code == 302
    page = client.get(f"/cards/{card.pk}/").content.decode()
    panel = land_panel(page)
    assert "Conflicts with main" in panel and "<code>README.md</code>" in panel
    assert "Ask the agent to resolve" in panel
    assert "Conflicts with main in 1 file." in page  # the message after the redirect

    resolve = client.post(f"/cards/{card.pk}/resolve")
    assert resolve.status_code == 302
    card.refresh_from_db()
    assert card.column == Column.IN_PROGRESS and card.current_run.state == RunState.QUEUED
    assert "README.md" in card.current_run.prompt and "git merge main" in card.current_run.prompt


def test_rebase_onto_base_through_the_page_and_its_conflict_answer(client, make_card, project):
    card = make_card("echo card > README.md")
    runner.execute(card.start().pk)
    card.refresh_from_db()
    tip = git(card.worktree_path, "rev-parse", "HEAD")
    (Path(project.repo_path) / "README.md").write_text("main's own\n")
    git(project.repo_path, "commit", "-q", "-am", "Main edits README")
    response = client.post(f"/cards/{card.pk}/rebase")
    assert response.status_code == 409
    assert "conflicts in README.md" in land_panel(response.content.decode())
    assert git(card.worktree_path, "rev-parse", "HEAD") == tip

    git(project.repo_path, "revert", "--no-edit", "HEAD")
    git(project.repo_path, "commit", "-q", "--allow-empty", "-m", "Main moves on")
    assert client.post(f"/cards/{card.pk}/rebase").status_code == 302
    card.refresh_from_db()
    assert card.conflicts["files"] == []
    assert git(card.worktree_path, "merge-base", "--is-ancestor", "main", "HEAD") == ""


def test_push_and_open_a_pull_request_show_the_link(client, review_card, project, tmp_path, monkeypatch):
    remote = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(project.repo_path, "remote", "add", "origin", str(remote))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text("#!/bin/sh\necho https://github.com/acme/demo/pull/3\n")
    (bin_dir / "gh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert client.post(f"/cards/{review_card.pk}/push").status_code == 302
    assert git(remote, "rev-parse", review_card.branch) == git(project.repo_path, "rev-parse", review_card.branch)
    assert client.post(f"/cards/{review_card.pk}/push", {"pr": "1"}).status_code == 302
    panel = land_panel(client.get(f"/cards/{review_card.pk}/").content.decode())
    assert 'href="https://github.com/acme/demo/pull/3"' in panel


def test_open_pull_request_without_gh_is_409_with_what_to_do(client, review_card, project, tmp_path, monkeypatch):
    remote = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(project.repo_path, "remote", "add", "origin", str(remote))
    only_git = tmp_path / "only-git"
    only_git.mkdir()
    (only_git / "git").symlink_to(os.popen("command -v git").read().strip())
    monkeypatch.setenv("PATH", str(only_git))
    response = client.post(f"/cards/{review_card.pk}/push", {"pr": "1"})
    assert response.status_code == 409
    panel = land_panel(response.content.decode())
    assert "gh) is not installed" in panel and "gh auth login" in panel


def test_landing_views_need_a_post(client, review_card):
    for action in ("land", "conflicts", "rebase", "resolve", "push"):
        assert client.get(f"/cards/{review_card.pk}/{action}").status_code == 405
    assert client.post("/cards/424242/land").status_code == 404


def test_project_settings_set_the_landing_mode_branch_deletion_and_remote(client, project):
    from tests.test_settings_views import settings_data

    response = client.post(f"/projects/{project.pk}/settings", settings_data(
        project, land_mode="rebase", delete_branch_on_land="on", remote="upstream"))
    assert response.status_code == 302
    project.refresh_from_db()
    assert (project.land_mode, project.delete_branch_on_land, project.remote) == ("rebase", True, "upstream")
    bad = client.post(f"/projects/{project.pk}/settings", settings_data(project, remote="--upload-pack=evil"))
    assert bad.status_code == 422 and "Name a git remote" in bad.content.decode()
    bad = client.post(f"/projects/{project.pk}/settings", settings_data(project, land_mode="octopus"))
    assert bad.status_code == 422
    project.refresh_from_db()
    assert (project.land_mode, project.remote) == ("rebase", "upstream")


def test_card_settings_set_the_card_landing_mode(client, review_card):
    data = {"mode": "act", "model": "", "api_base": "", "api_key_env": "", "approvals": "", "max_steps": "",
            "max_cost": "", "max_minutes": "", "land_mode": "squash"}
    page = client.get(f"/cards/{review_card.pk}/").content.decode()
    assert "Project&#x27;s (merge commit)" in page or "Project's (merge commit)" in page
    assert client.post(f"/cards/{review_card.pk}/settings", data).status_code == 302
    assert Card.objects.get(pk=review_card.pk).effective_land_mode == "squash"
