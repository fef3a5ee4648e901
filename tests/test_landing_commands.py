"""Landing from a shell: `card land`, `card push` and the landing settings of `project set`."""

import json
import os
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from agents import runner
from board.models import Column, RunState
from tests.conftest import git

pytestmark = pytest.mark.django_db


def card_command(*args) -> tuple[str, str]:
    """``manage.py card ARGS``: (stdout, stderr); raises CommandError as the command does."""
    out, err = StringIO(), StringIO()
    call_command("card", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def printed_json(out: StringIO | str) -> dict:
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"one JSON object on one line, not {lines}"
    return json.loads(lines[0])


@pytest.fixture
def review_card(make_card):
    card = make_card("echo landed > landed.txt")
    runner.execute(card.start().pk)
    card.refresh_from_db()
    assert card.current_run.state == RunState.SUCCEEDED and card.column == Column.REVIEW
    return card


def test_card_land_lands_it_and_prints_the_json_with_the_landed_commit(review_card, project):
    out, err = card_command("land", str(review_card.pk), "--mode", "rebase")
    data = printed_json(out)
    assert data["id"] == review_card.pk and data["column"] == "done"
    assert data["landed_commit"] == git(project.repo_path, "rev-parse", "main").strip()
    assert data["landed_commit"] == git(project.repo_path, "rev-parse", review_card.branch).strip(), "rebase: fast-forward"
    assert "Landed on main" in err


def test_card_land_refused_exits_non_zero_with_the_reason_and_still_prints_the_json(review_card, project):
    (Path(project.repo_path) / "README.md").write_text("my unsaved edit\n")
    out = StringIO()
    with pytest.raises(CommandError, match="uncommitted changes") as refused:
        call_command("card", "land", str(review_card.pk), stdout=out, stderr=StringIO())
    assert refused.value.returncode == 1
    data = printed_json(out.getvalue())
    assert data["column"] == "review" and data["landed_commit"] == ""
    assert (Path(project.repo_path) / "README.md").read_text() == "my unsaved edit\n"


def test_card_land_twice_says_it_landed_already(review_card):
    card_command("land", str(review_card.pk))
    out = StringIO()
    with pytest.raises(CommandError, match="already landed as"):
        call_command("card", "land", str(review_card.pk), stdout=out, stderr=StringIO())
    assert printed_json(out.getvalue())["landed_commit"]


def test_card_land_refuses_an_unknown_mode_or_card(review_card):
    with pytest.raises(CommandError, match="invalid choice"):
        card_command("land", str(review_card.pk), "--mode", "octopus")
    with pytest.raises(CommandError, match="No card with id 424242"):
        card_command("land", "424242")


def test_card_push_with_pr_pushes_and_stores_the_link(review_card, project, tmp_path, monkeypatch):
    remote = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(project.repo_path, "remote", "add", "origin", str(remote))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text("#!/bin/sh\necho https://github.com/acme/demo/pull/11\n")
    (bin_dir / "gh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out, _ = card_command("push", str(review_card.pk), "--pr")
    assert printed_json(out)["pr_url"] == "https://github.com/acme/demo/pull/11"
    assert git(remote, "rev-parse", review_card.branch) == git(project.repo_path, "rev-parse", review_card.branch)


def test_project_set_takes_the_landing_settings(project):
    call_command("project", "set", str(project.pk), "--land-mode", "squash", "--delete-branch-on-land", "yes",
                 "--remote", "upstream", stdout=StringIO())
    project.refresh_from_db()
    assert (project.land_mode, project.delete_branch_on_land, project.remote) == ("squash", True, "upstream")
    call_command("project", "set", str(project.pk), "--delete-branch-on-land", "false", stdout=StringIO())
    project.refresh_from_db()
    assert project.delete_branch_on_land is False and project.land_mode == "squash"
    with pytest.raises(CommandError, match="--delete-branch-on-land takes true or false"):
        call_command("project", "set", str(project.pk), "--delete-branch-on-land", "maybe", stdout=StringIO())
    with pytest.raises(CommandError, match="land_mode"):
        call_command("project", "set", str(project.pk), "--land-mode", "octopus", stdout=StringIO())
