"""The headless commands: the same job from a shell."""

import json
import os
import signal
import subprocess
import sys
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from board.models import Agent, Card, Column, Project
from tests.conftest import git, shared_database_env

pytestmark = pytest.mark.django_db


def run_cmd(*args) -> list[str]:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue().strip().splitlines()


def test_project_add_prints_the_new_id_alone_on_its_last_line(make_repo):
    repo = make_repo()
    lines = run_cmd("project", "add", str(repo), "--name", "Demo")
    project = Project.objects.get()
    assert lines[-1] == str(project.pk)
    assert (project.name, project.base_branch) == ("Demo", "main")


def test_project_add_refuses_a_path_that_is_not_a_repository(tmp_path):
    with pytest.raises(CommandError, match="not a git repository"):
        run_cmd("project", "add", str(tmp_path))


def test_project_add_refuses_a_missing_base_branch(make_repo):
    with pytest.raises(CommandError, match="does not exist"):
        run_cmd("project", "add", str(make_repo()), "--base", "release")


def test_agent_add_makes_command_and_builtin_agents():
    run_cmd("agent", "add", "script", "--command", "make fix")
    run_cmd("agent", "add", "local", "--model", "ollama_chat/qwen2.5-coder", "--api-base", "http://127.0.0.1:11434")
    run_cmd("agent", "add", "gpt", "--model", "openai/gpt-4o-mini", "--api-key-env", "OPENAI_API_KEY")
    assert Agent.objects.get(name="script").command == "make fix"
    assert Agent.objects.get(name="local").api_base == "http://127.0.0.1:11434"
    assert Agent.objects.get(name="gpt").api_key_env == "OPENAI_API_KEY"


def test_agent_add_refuses_a_duplicate_name():
    run_cmd("agent", "add", "script", "--command", "make fix")
    with pytest.raises(CommandError, match="already exists"):
        run_cmd("agent", "add", "script", "--command", "make other")


def test_card_add_prints_the_id_and_card_show_prints_the_json(project):
    Agent.objects.create(name="echo", kind="command", command="echo hi")
    lines = run_cmd("card", "add", "--project", str(project.pk), "--title", "Fix it", "--prompt", "Fix the bug", "--agent", "echo")
    card = Card.objects.get()
    assert lines[-1] == str(card.pk)
    shown = run_cmd("card", "show", str(card.pk), "--json")
    assert len(shown) == 1
    data = json.loads(shown[0])
    assert data == {
        "id": card.pk, "title": "Fix it", "state": "idle", "column": "backlog", "branch": "", "worktree": "",
        "base_commit": "", "commits": [], "summary": "", "error": "", "pending": None, "usage": None,
        "landed_commit": "", "pr_url": "", "conflicts": None,
    }


def test_card_add_refuses_an_unknown_agent_or_project(project):
    with pytest.raises(CommandError, match="enabled agents"):
        run_cmd("card", "add", "--project", str(project.pk), "--title", "x", "--agent", "ghost")
    with pytest.raises(CommandError, match="No project with id 999"):
        run_cmd("card", "add", "--project", "999", "--title", "x", "--agent", "ghost")


def test_card_start_without_a_running_worker_says_so_and_queues_nothing(make_card):
    card = make_card()
    with pytest.raises(CommandError, match="No worker is running"):
        run_cmd("card", "start", str(card.pk))
    card.refresh_from_db()
    assert card.column == Column.BACKLOG and not card.runs.exists()


@pytest.mark.django_db(transaction=True)
def test_card_start_wait_runs_it_on_a_real_worker_and_prints_the_result(make_card, project, settings, tmp_path):
    card = make_card("echo done > done.txt; echo finished")
    # The worker shares the test database and, for its heartbeat, the cache; its data folder is
    # this test's own.
    worker_data = tmp_path / "worker-data"
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": str(worker_data / "cache")}}
    env = {**os.environ, **shared_database_env(), "BOARD_WORKERS": "1",
           "DJANGO_SECRET_KEY": settings.SECRET_KEY,  # django-q2 signs its heartbeat with it
           "BOARD_DATA_DIR": str(worker_data)}
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"], cwd=settings.BASE_DIR, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        from django_q.status import Stat

        deadline = time.monotonic() + 60
        while not Stat.get_all() and time.monotonic() < deadline:
            time.sleep(0.3)
        lines = run_cmd("card", "start", str(card.pk), "--wait", "--timeout", "90")
    finally:
        # django-q2's graceful stop waits for running tasks; the board kills what outlives a grace.
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    data = json.loads(lines[-1])
    assert data["state"] == "succeeded", data
    assert data["column"] == "review"
    assert data["branch"] == f"agent/{card.pk}-do-the-thing"
    assert os.path.isdir(data["worktree"])
    assert data["commits"] == git(project.repo_path, "rev-list", "--reverse", f"main..{data['branch']}").split()
    assert len(data["commits"]) == 1
    assert data["base_commit"] == git(project.repo_path, "rev-parse", "main").strip()
    assert "finished" in data["summary"]


def test_project_add_takes_files_to_copy_and_a_setup_command(make_repo):
    run_cmd("project", "add", str(make_repo()), "--copy", ".env", "--copy", "config/local.py", "--setup", "npm ci")
    project = Project.objects.get()
    assert project.copy_patterns == [".env", "config/local.py"]
    assert project.setup_command == "npm ci"


def test_agent_enable_refuses_a_template_whose_program_is_missing(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(CommandError, match="'aider' is not installed"):
        run_cmd("agent", "enable", "aider")
    assert not Agent.objects.get(name="aider").enabled


def test_project_add_takes_a_path_relative_to_where_it_is_run(make_repo, monkeypatch):
    repo = make_repo()
    monkeypatch.chdir(repo.parent)
    run_cmd("project", "add", repo.name)
    assert Project.objects.get().repo_path == str(repo)


def test_card_start_refuses_a_timeout_that_is_not_positive(make_card):
    card = make_card()
    with pytest.raises(CommandError, match="above 0"):
        run_cmd("card", "start", str(card.pk), "--wait", "--timeout", "-5")


def test_project_set_changes_the_model_and_keeps_the_rest(project):
    run_cmd("project", "set", str(project.pk), "--model", "ollama_chat/qwen2.5-coder", "--approvals", "commands",
            "--max-steps", "9")
    project.refresh_from_db()
    assert (project.model, project.approvals, project.max_steps, project.base_branch) == (
        "ollama_chat/qwen2.5-coder", "commands", 9, "main")
    with pytest.raises(CommandError, match="api_key_env: Give the NAME"):
        run_cmd("project", "set", str(project.pk), "--api-key-env", "sk-123 456")


def test_card_commands_approve_deny_and_answer_what_a_run_waits_for(project, monkeypatch):
    from agents import runner
    from board.management.commands import card as card_command
    from tests.fake_llm import FakeLLM

    monkeypatch.setattr(card_command, "workers_running", lambda: True)
    monkeypatch.setenv("FAKE_LLM_KEY", "k")
    script = [{"tool_calls": [{"name": "ask_lead", "arguments": {"question": "Which?"}}]},
              {"tool_calls": [{"name": "finish", "arguments": {"summary": "ok"}}]}]
    with FakeLLM(script, api_key="k") as llm:
        run_cmd("project", "set", str(project.pk), "--model", "openai/fake-model", "--api-base", llm.base_url,
                "--api-key-env", "FAKE_LLM_KEY")
        card_id = int(run_cmd("card", "add", "--project", str(project.pk), "--title", "Ask", "--mode", "plan")[-1])
        card = Card.objects.get(pk=card_id)
        assert card.mode == "plan" and card.agent.name == "built-in"
        run = card.start()
        runner.execute(run.pk)
        shown = json.loads(run_cmd("card", "show", str(card_id), "--json")[0])
        assert shown["state"] == "awaiting_approval" and shown["pending"]["detail"] == "Which?"

        with pytest.raises(CommandError, match="Write an answer"):
            run_cmd("card", "answer", str(card_id), "--text", " ")
        with pytest.raises(CommandError, match="waits for an answer to a question"):
            run_cmd("card", "approve", str(card_id))
        run_cmd("card", "answer", str(card_id), "--text", "This one")
        runner.execute(run.pk)
    run.refresh_from_db()
    assert run.state == "awaiting_approval" and run.pending["kind"] == "plan"
    with pytest.raises(CommandError, match="waits for a plan review"):
        run_cmd("card", "answer", str(card_id), "--text", "not a plan")
    with pytest.raises(CommandError, match="can be resumed"):
        run_cmd("card", "resume", str(card_id))
    run_cmd("card", "deny", str(card_id), "--reason", "shorter")
    run.refresh_from_db()
    assert run.state == "queued"


def test_card_add_takes_labels_normalised_as_the_board_form_does(project):
    Agent.objects.create(name="echo", kind=Agent.Kind.COMMAND, command="echo hi")
    lines = run_cmd("card", "add", "--project", str(project.pk), "--title", "Labelled", "--agent", "echo",
                    "--labels", " Bug, UI,front end,bug")
    assert Card.objects.get(pk=int(lines[-1])).labels == ["bug", "ui", "front-end"]


def test_card_labels_replaces_a_cards_labels_and_an_empty_text_clears_them(project):
    Agent.objects.create(name="echo", kind=Agent.Kind.COMMAND, command="echo hi")
    card_id = run_cmd("card", "add", "--project", str(project.pk), "--title", "Relabel", "--agent", "echo",
                      "--labels", "old")[-1]

    assert run_cmd("card", "labels", card_id, "New, needs review") == [f"Card #{card_id} labels: new, needs-review"]
    assert Card.objects.get(pk=card_id).labels == ["new", "needs-review"]
    assert run_cmd("card", "labels", card_id, "") == [f"Card #{card_id} labels: (none)"]
    assert Card.objects.get(pk=card_id).labels == []


def test_card_labels_refuses_too_many_labels_or_an_unknown_card(project):
    Agent.objects.create(name="echo", kind=Agent.Kind.COMMAND, command="echo hi")
    card_id = run_cmd("card", "add", "--project", str(project.pk), "--title", "Few labels", "--agent", "echo")[-1]
    with pytest.raises(CommandError, match="At most 10 labels"):
        run_cmd("card", "labels", card_id, ",".join(f"l{i}" for i in range(11)))
    with pytest.raises(CommandError, match="No card with id 999999"):
        run_cmd("card", "labels", "999999", "x")
    with pytest.raises(CommandError, match="At most 10 labels"):
        run_cmd("card", "add", "--project", str(project.pk), "--title", "Too many", "--agent", "echo",
                "--labels", ",".join(f"l{i}" for i in range(11)))
