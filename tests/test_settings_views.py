"""Project and card settings, the models page and its Test button, and the lead's answers to a
waiting run, through the pages: bad input gets a message and a 4xx, never a 500."""

import pytest
from django.test import Client

from agents import runner
from board.models import Approvals, Card, Column, Mode, Run, RunState
from tests.conftest import FAKE_KEY, free_port, git
from tests.fake_llm import FakeLLM

pytestmark = pytest.mark.django_db

KEY = FAKE_KEY


@pytest.fixture
def client():
    return Client(HTTP_HOST="127.0.0.1", raise_request_exception=True)


@pytest.fixture(autouse=True)
def _key_set(model_key):
    """Every model here is a fake one that wants the key."""


def settings_data(project, **changes) -> dict:
    data = {
        "name": project.name, "base_branch": project.base_branch, "branch_prefix": project.branch_prefix,
        "copy_files": "", "setup_command": "", "model": "", "api_base": "", "api_key_env": "",
        "context_window": "", "approvals": "auto", "check_command": "", "max_steps": "", "max_cost": "",
        "max_minutes": "", "mcp_servers": "",
    }
    data.update(changes)
    return data


def test_project_settings_save_the_model_approvals_check_and_budgets(client, project):
    response = client.post(f"/projects/{project.pk}/settings", settings_data(
        project, model="ollama_chat/qwen2.5-coder", api_base="http://127.0.0.1:11434", approvals="commands",
        check_command="python -m compileall -q .", max_steps="12", max_cost="0.50", max_minutes="20",
        mcp_servers="files: python -m files_server\ndocs: https://docs.example/mcp",
    ))
    assert response.status_code == 302
    project.refresh_from_db()
    assert (project.model, project.approvals, project.max_steps, float(project.max_cost), project.max_minutes) == (
        "ollama_chat/qwen2.5-coder", Approvals.COMMANDS, 12, 0.5, 20)
    assert "compileall" in project.check_command
    page = client.get(f"/projects/{project.pk}/settings").content.decode()
    assert "qwen2.5-coder" in page and "Test ollama_chat/qwen2.5-coder" in page


@pytest.mark.parametrize("field, value, message", [
    ("api_key_env", "sk-abc123 secret", "NAME of an environment variable"),
    ("api_base", "localhost:11434", "http:// or https://"),
    ("model", "gpt 4", "no spaces"),
    ("base_branch", "nope", "does not exist"),
    ("branch_prefix", "a b", "branch prefix"),
    ("max_steps", "-3", ""),
    ("max_steps", "0", "at least 1"),
    ("max_minutes", "0", "at least 1"),
    ("api_key_env", "gsk_8fJ2kLmN0pQrStUvWxYz1234567890abcdefGHIJKLmnop", "NAME of an environment variable"),
    ("api_base", "http://a..b/v1", "http:// or https://"),
    ("api_base", "http://127.0.0.1:99999/v1", "http:// or https://"),
    ("max_cost", "0", "more than $0"),
    ("context_window", "100", "1,024"),
    ("mcp_servers", "no colon here", "line 1"),
])
def test_bad_project_settings_are_refused_with_a_message(client, project, field, value, message):
    response = client.post(f"/projects/{project.pk}/settings", settings_data(project, **{field: value}))
    assert response.status_code == 422
    assert f'data-field="{field}"' in response.content.decode()
    assert message in response.content.decode()


def test_card_settings_override_the_project_and_are_refused_while_running(client, make_card, project):
    project.model = "openai/project-model"
    project.save()
    card = make_card(kind="builtin", command="")
    response = client.post(f"/cards/{card.pk}/settings", {"mode": "plan", "model": "openai/card-model",
                                                          "approvals": "changes", "max_steps": "5"})
    assert response.status_code == 302
    card.refresh_from_db()
    assert card.mode == Mode.PLAN and card.model_settings()["model"] == "openai/card-model"
    assert card.effective_approvals == "changes" and card.budget()["steps"] == 5

    Card.objects.filter(pk=card.pk).update(model="")
    card.refresh_from_db()
    assert card.model_settings() == {"model": "openai/project-model", "api_base": "", "api_key_env": "",
                                     "source": "project"}

    card.start()
    response = client.post(f"/cards/{card.pk}/settings", {"mode": "act"}, follow=True)
    assert "Stop the card" in response.content.decode()
    card.refresh_from_db()
    assert card.mode == Mode.PLAN


def test_the_models_page_lists_configured_models_and_test_shows_the_latency(client, make_card, project):
    with FakeLLM([{"content": "OK"}], api_key=KEY) as llm:
        project.model, project.api_base, project.api_key_env = "openai/fake-model", llm.base_url, "FAKE_LLM_KEY"
        project.save()
        page = client.get("/models/").content.decode()
        assert "openai/fake-model" in page and f"project {project.name}" in page

        response = client.post("/models/test", {"model": "openai/fake-model", "api_base": llm.base_url,
                                                "api_key_env": "FAKE_LLM_KEY"}, HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200 and "Answered in" in body and " ms" in body


def test_the_test_button_shows_the_provider_error(client):
    with FakeLLM([{"content": "OK"}], api_key=KEY) as llm:
        response = client.post("/models/test", {"model": "openai/fake-model", "api_base": llm.base_url,
                                                "api_key_env": "WRONG_KEY_VAR"}, HTTP_HX_REQUEST="true")
    assert "Failed" in response.content.decode() and "WRONG_KEY_VAR" in response.content.decode()
    refused = client.post("/models/test", {"model": "openai/x", "api_base": f"http://127.0.0.1:{free_port()}/v1"})
    assert "Failed" in refused.content.decode() and "connection refused" in refused.content.decode()


def test_the_test_button_refuses_garbage_with_a_message(client):
    response = client.post("/models/test", {"model": "", "api_base": "ftp://x"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 422 and "Name a model" in response.content.decode()


def waiting_card(make_card, project, script, **project_fields) -> tuple[Card, Run, FakeLLM]:
    llm = FakeLLM(script, api_key=KEY)
    llm.start()
    project.model, project.api_base, project.api_key_env = "openai/fake-model", llm.base_url, "FAKE_LLM_KEY"
    for name, value in project_fields.items():
        setattr(project, name, value)
    project.save()
    card = make_card(kind="builtin", command="")
    run = card.start()
    runner.execute(run.pk)
    run.refresh_from_db()
    return card, run, llm


def test_a_waiting_command_shows_on_the_board_and_approving_it_queues_the_run(client, make_card, project):
    script = [{"tool_calls": [{"name": "run_command", "arguments": {"command": "echo from-agent"}}]}]
    card, run, llm = waiting_card(make_card, project, script, approvals="commands")
    try:
        board = client.get(f"/projects/{project.pk}/").content.decode()
        assert "awaiting approval" in board and "echo from-agent" in board and f"/runs/{run.pk}/decide" in board
        page = client.get(f"/cards/{card.pk}/").content.decode()
        assert "echo from-agent" in page and "Deny" in page

        response = client.post(f"/runs/{run.pk}/decide", {"decision": "approve"}, HTTP_HX_REQUEST="true")
        assert response.status_code == 200
        run.refresh_from_db()
        assert run.state == RunState.QUEUED

        again = client.post(f"/runs/{run.pk}/decide", {"decision": "approve"}, HTTP_HX_REQUEST="true")
        assert again.status_code == 409 and "not waiting" in again.content.decode()
        garbage = client.post(f"/runs/{run.pk}/decide", {"decision": "maybe"}, HTTP_HX_REQUEST="true")
        assert garbage.status_code == 409
    finally:
        llm.stop()


def test_a_question_needs_an_answer_and_a_plan_shows_in_an_editable_box(client, make_card, project):
    script = [{"tool_calls": [{"name": "ask_lead", "arguments": {"question": "Which database?"}}]}]
    card, run, llm = waiting_card(make_card, project, script)
    try:
        assert "Which database?" in client.get(f"/projects/{project.pk}/").content.decode()
        empty = client.post(f"/runs/{run.pk}/decide", {"decision": "approve", "text": " "}, HTTP_HX_REQUEST="true")
        assert empty.status_code == 409 and "Write an answer" in empty.content.decode()
        assert client.post(f"/runs/{run.pk}/decide", {"decision": "approve", "text": "SQLite"}).status_code == 302
        run.refresh_from_db()
        assert run.state == RunState.QUEUED and run.agent_state["pending"]["decision"]["text"] == "SQLite"
    finally:
        llm.stop()


def test_a_follow_up_from_the_card_page_starts_a_run_that_continues_the_last(client, make_card, project):
    card = make_card("echo first > first.txt")
    runner.execute(card.start().pk)
    card.refresh_from_db()
    assert card.column == Column.REVIEW
    assert "Send back with feedback" in client.get(f"/cards/{card.pk}/").content.decode()

    empty = client.post(f"/cards/{card.pk}/follow-up", {"text": ""}, HTTP_HX_REQUEST="true")
    assert empty.status_code == 409 and "Write what the agent should do next" in empty.content.decode()

    response = client.post(f"/cards/{card.pk}/follow-up", {"text": "Also second"})
    assert response.status_code == 302
    card.refresh_from_db()
    assert card.column == Column.IN_PROGRESS and card.current_run.prompt == "Also second"
    assert card.current_run.previous is not None


def test_roll_back_to_a_checkpoint_from_the_card_page(client, make_card, project):
    card = make_card("echo one > one.txt && git add -A && git commit -qm one && echo two > two.txt")
    runner.execute(card.start().pk)
    card.refresh_from_db()
    first, second = card.current_run.commits
    page = client.get(f"/cards/{card.pk}/").content.decode()
    assert "Roll back to here" in page

    response = client.post(f"/cards/{card.pk}/rollback", {"sha": first}, follow=True)

    assert "Rolled back to" in response.content.decode()
    assert git(project.repo_path, "rev-parse", card.branch).strip() == first
    assert git(project.repo_path, "rev-parse", f"refs/board/rollbacks/card-{card.pk}/1").strip() == second
    bad = client.post(f"/cards/{card.pk}/rollback", {"sha": "--help"}, follow=True)
    assert bad.status_code == 200 and "Not rolled back" in bad.content.decode()


def test_the_card_form_creates_a_plan_first_card(client, make_card, project):
    make_card()  # an enabled agent to choose
    response = client.post(f"/projects/{project.pk}/cards/", {"title": "Plan it", "prompt": "", "agent": "built-in",
                                                               "mode": "plan"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert Card.objects.get(title="Plan it").mode == Mode.PLAN


def test_a_change_waiting_for_approval_shows_its_diff_highlighted_and_escaped(client, make_card, project):
    script = [{"tool_calls": [{"name": "write_file", "arguments": {"path": "x.html", "content": "<b>bold</b>\n"}}]}]
    card, run, llm = waiting_card(make_card, project, script, approvals="changes")
    try:
        board = client.get(f"/projects/{project.pk}/").content.decode()
    finally:
        llm.stop()
    assert 'class="pending-detail diff highlight"' in board
    assert "&lt;b&gt;bold&lt;/b&gt;" in board and "<b>bold</b>" not in board
    assert 'class="gi"' in board  # Pygments marks the added line


def test_an_intranet_host_name_is_a_good_api_base(client, project):
    response = client.post(f"/projects/{project.pk}/settings", settings_data(
        project, model="ollama_chat/qwen2.5-coder", api_base="http://gpu-box:11434"))
    assert response.status_code == 302


def test_a_card_api_base_without_its_own_model_is_refused(client, make_card, project):
    card = make_card(kind="builtin", command="")
    response = client.post(f"/cards/{card.pk}/settings", {"mode": "act", "api_base": "http://127.0.0.1:9/v1"})
    assert response.status_code == 422 and "Name the model too" in response.content.decode()


def test_plan_first_is_refused_for_a_command_agent(client, make_card, project):
    card = make_card("echo hi")
    response = client.post(f"/cards/{card.pk}/settings", {"mode": "plan"})
    assert response.status_code == 422 and "Plan first needs the built-in agent" in response.content.decode()
    created = client.post(f"/projects/{project.pk}/cards/", {"title": "x", "agent": card.agent.name, "mode": "plan"},
                          HTTP_HX_REQUEST="true")
    assert created.status_code == 422 and "Plan first needs the built-in agent" in created.content.decode()


def test_a_stale_page_cannot_approve_what_the_run_now_waits_for(client, make_card, project):
    script = [{"tool_calls": [{"name": "run_command", "arguments": {"command": "echo x"}}]}]
    card, run, llm = waiting_card(make_card, project, script, approvals="commands")
    try:
        response = client.post(f"/runs/{run.pk}/decide", {"decision": "approve", "text": "an answer",
                                                          "kind": "question"}, HTTP_HX_REQUEST="true")
    finally:
        llm.stop()
    assert response.status_code == 409 and "waits for an approval" in response.content.decode()
    run.refresh_from_db()
    assert run.state == RunState.AWAITING_APPROVAL


def test_load_earlier_pages_back_through_a_long_log(client, make_card, project):
    card = make_card()
    run = card.start()  # its first event, "queued", is seq 1
    for i in range(1, 1201):
        run.emit("log", f"line-{i}")
    page = client.get(f"/cards/{card.pk}/").content.decode()
    assert "line-1200" in page and ">line-1<" not in page and "Load earlier lines" in page

    seqs = list(run.events.filter(kind="log").order_by("seq").values_list("seq", "text"))
    shown_first = min(seq for seq, text in seqs if f">{text}<" in page)
    older = client.get(f"/cards/{card.pk}/log?run={run.pk}&before={shown_first}").content.decode()
    assert older.count('class="line') == 500 and f"before={shown_first - 500}" in older
    oldest = client.get(f"/cards/{card.pk}/log?run={run.pk}&before=200").content.decode()
    assert ">line-1<" in oldest and "Load earlier lines" not in oldest
    assert client.get(f"/cards/{card.pk}/log?run=x&before=1").status_code == 400
    assert client.get(f"/cards/{card.pk}/log?run=999999&before=1").status_code == 404


def test_start_all_starts_every_backlog_card_and_says_why_one_could_not(client, make_card, project):
    ready = [make_card("echo a"), make_card("echo b")]
    no_model = make_card(kind="builtin", command="")
    board = client.get(f"/projects/{project.pk}/").content.decode()
    assert "Start all" in board

    response = client.post(f"/projects/{project.pk}/start-all", follow=True)

    body = response.content.decode()
    assert "Started 2 cards." in body and f"#{no_model.pk}" in body and "Set a model first" in body
    for card in ready:
        card.refresh_from_db()
        assert card.column == Column.IN_PROGRESS and card.current_run.state == RunState.QUEUED
    no_model.refresh_from_db()
    assert no_model.column == Column.BACKLOG
