"""Pages and htmx endpoints: forms refuse bad input with a message, never a 500."""

import pytest
from django.test import Client

from agents import runner
from board.models import Agent, Card, Column, Project, RunState
from tests.conftest import git

pytestmark = pytest.mark.django_db


@pytest.fixture
def client():
    return Client(HTTP_HOST="127.0.0.1", raise_request_exception=True)


def htmx(client, url, data):
    return client.post(url, data, HTTP_HX_REQUEST="true")


def test_adding_a_project_defaults_to_the_checked_out_branch(client, make_repo):
    repo = make_repo()
    git(repo, "checkout", "-q", "-b", "develop")
    response = client.post("/projects/", {"repo_path": str(repo)})
    project = Project.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/projects/{project.pk}/"
    assert project.base_branch == "develop"
    assert project.name == "repo"
    assert project.repo_path == str(repo)


def test_a_path_that_is_not_a_repository_is_refused_on_the_form(client, tmp_path):
    plain = tmp_path / "plain folder"
    plain.mkdir()
    response = client.post("/projects/", {"repo_path": str(plain)})
    assert response.status_code == 422
    assert "not a git repository" in response.content.decode()
    assert not Project.objects.exists()


def test_a_missing_path_is_refused_on_the_form(client, tmp_path):
    response = client.post("/projects/", {"repo_path": str(tmp_path / "gone")})
    assert response.status_code == 422
    assert str(tmp_path / "gone") in response.content.decode()


def test_a_branch_that_does_not_exist_is_refused_on_the_form(client, make_repo):
    response = client.post("/projects/", {"repo_path": str(make_repo()), "base_branch": "nope"})
    assert response.status_code == 422
    assert "nope" in response.content.decode() and "does not exist" in response.content.decode()
    assert not Project.objects.exists()


def test_garbage_in_the_project_form_gets_a_message(client):
    response = client.post("/projects/", {"repo_path": "\x00\x01 ../../", "branch_prefix": "a b"})
    assert response.status_code == 422


def test_the_board_shows_four_columns_with_the_cards(client, make_card, project):
    card = make_card(title="Fix the login bug")
    page = client.get(f"/projects/{project.pk}/").content.decode()
    for column in ("Backlog", "In Progress", "Review", "Done"):
        assert f">{column}</h2>" in page
    assert f'id="card-{card.pk}"' in page and "Fix the login bug" in page
    assert f'ws-connect="/ws/projects/{project.pk}/"' in page


def test_creating_a_card_through_htmx_returns_it_for_the_backlog(client, project):
    Agent.objects.create(name="echo", kind=Agent.Kind.COMMAND, command="echo hi")
    response = htmx(client, f"/projects/{project.pk}/cards/", {"title": "  Add a  README ", "prompt": "Write it", "agent": "echo"})
    card = Card.objects.get()
    assert response.status_code == 200
    assert card.title == "Add a README" and card.column == Column.BACKLOG and card.agent.name == "echo"
    assert f'id="card-{card.pk}"' in response.content.decode()
    assert "beforeend:#list-backlog" in response.content.decode()


def test_a_card_without_title_or_with_an_unknown_agent_is_refused(client, project):
    Agent.objects.create(name="echo", kind=Agent.Kind.COMMAND, command="echo hi")
    response = htmx(client, f"/projects/{project.pk}/cards/", {"title": "   ", "agent": "ghost"})
    assert response.status_code == 422
    body = response.content.decode()
    assert "Give the card a title." in body and "Choose one of the enabled agents" in body
    assert not Card.objects.exists()


def test_start_queues_the_card_and_a_second_start_is_refused(client, make_card):
    card = make_card()
    first = htmx(client, f"/cards/{card.pk}/start", {})
    assert first.status_code == 200
    assert 'data-state="queued"' in first.content.decode()
    second = htmx(client, f"/cards/{card.pk}/start", {})
    assert second.status_code == 409
    assert "already running" in second.content.decode()


def test_start_needs_a_post(client, make_card):
    card = make_card()
    assert client.get(f"/cards/{card.pk}/start").status_code == 405


def test_the_card_page_shows_log_commits_and_diff(client, make_card):
    card = make_card("echo 'hello world' > hello.txt; echo wrote hello")
    run = card.start()
    runner.execute(run.pk)
    page = client.get(f"/cards/{card.pk}/").content.decode()
    assert "wrote hello" in page
    assert f"Card #{card.pk}: Do the thing" in page
    assert "hello.txt" in page and "hello world" in page
    assert RunState.SUCCEEDED.label in page


def test_unknown_objects_are_404(client):
    assert client.get("/projects/999/").status_code == 404
    assert client.get("/cards/999/").status_code == 404


def test_an_agent_form_refuses_a_key_where_the_variable_name_belongs(client):
    response = client.post("/agents/", {"name": "gpt", "kind": "builtin", "model": "openai/gpt-4o-mini", "api_key_env": "sk-abc123 secret"})
    assert response.status_code == 422
    assert "NAME of an environment variable" in response.content.decode()
    assert not Agent.objects.filter(name="gpt").exists()


def test_a_builtin_agent_is_added_with_its_model_settings(client):
    response = client.post(
        "/agents/",
        {"name": "local", "kind": "builtin", "model": "ollama_chat/qwen2.5-coder", "api_base": "http://127.0.0.1:11434"},
    )
    assert response.status_code == 302
    agent = Agent.objects.get(name="local")
    assert agent.kind == "builtin" and agent.api_base == "http://127.0.0.1:11434"


def test_a_template_agent_cannot_be_enabled_when_its_program_is_missing(client, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    aider = Agent.objects.get(name="aider")
    assert not aider.enabled
    client.post(f"/agents/{aider.pk}/toggle")
    aider.refresh_from_db()
    assert not aider.enabled
    page = client.get("/agents/").content.decode()
    assert "aider not installed" in page


def test_the_ready_made_templates_exist_for_the_common_cli_agents():
    names = set(Agent.objects.filter(program__gt="").values_list("name", flat=True))
    assert {"aider", "claude-code", "codex", "cline"} <= names


def test_paths_with_spaces_and_unicode_work_through_to_the_diff_view(client, make_repo, board_dirs, settings):
    settings.WORKTREES_DIR = board_dirs / "work trees ü"
    repo = make_repo("my répo with spaces")
    project = Project.objects.create(name="unicode", repo_path=str(repo), base_branch="main")
    agent = Agent.objects.create(name="writer", kind="command", command="mkdir -p 'docs ü' && echo grüße > 'docs ü/naïve file.txt'")
    card = Card.create(project, "Ünïcode títle with spaces", "", agent)
    run = card.start()
    runner.execute(run.pk)
    card.refresh_from_db()
    assert card.current_run.state == RunState.SUCCEEDED, card.current_run.error
    assert git(repo, "show", f"{card.branch}:docs ü/naïve file.txt") == "grüße\n"
    page = client.get(f"/cards/{card.pk}/").content.decode()
    assert "docs ü/naïve file.txt" in page, "names are shown as they are, not quoted or escaped"
    assert "grüße" in page


def test_control_characters_never_reach_titles(client, project):
    Agent.objects.create(name="echo", kind=Agent.Kind.COMMAND, command="echo hi")
    htmx(client, f"/projects/{project.pk}/cards/", {"title": "Fix\x1b[31m red\x07 bell\ttab", "agent": "echo"})
    assert Card.objects.get().title == "Fix red bell tab"


def test_a_description_too_long_is_refused_with_a_message(client, project):
    Agent.objects.create(name="echo", kind=Agent.Kind.COMMAND, command="echo hi")
    response = htmx(client, f"/projects/{project.pk}/cards/", {"title": "Big", "prompt": "x" * 100_001, "agent": "echo"})
    assert response.status_code == 422
    assert "Keep the description under 100,000 characters" in response.content.decode()


def test_a_repository_with_no_commit_is_refused_with_that_reason(client, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")
    response = client.post("/projects/", {"repo_path": str(empty)})
    assert response.status_code == 422
    assert "has no commit yet" in response.content.decode()


def test_the_same_repository_and_base_cannot_be_added_twice(client, make_repo):
    repo = make_repo()
    client.post("/projects/", {"repo_path": str(repo)})
    response = client.post("/projects/", {"repo_path": str(repo)})
    assert response.status_code == 422
    assert "already the project" in response.content.decode()
    assert Project.objects.count() == 1


def test_the_agents_page_says_when_a_key_variable_is_not_set_without_showing_keys(client, monkeypatch):
    monkeypatch.setenv("SET_KEY", "sk-secret-value")
    monkeypatch.delenv("UNSET_KEY", raising=False)
    Agent.objects.create(name="a", kind="builtin", model="openai/x", api_key_env="SET_KEY")
    Agent.objects.create(name="b", kind="builtin", model="openai/y", api_key_env="UNSET_KEY")
    page = client.get("/agents/").content.decode()
    assert page.count("not set in the board's environment") == 1
    assert "sk-secret-value" not in page


def test_a_missing_page_has_a_way_back(client):
    response = Client(HTTP_HOST="127.0.0.1").get("/cards/424242/")
    assert response.status_code == 404
    assert "Back to the projects" in response.content.decode()


def test_a_relative_project_path_is_refused_on_the_form(client):
    response = client.post("/projects/", {"repo_path": "src/shop"})
    assert response.status_code == 422
    assert "full path" in response.content.decode()


@pytest.mark.parametrize("field", ["waits_for", "agents"])
def test_an_id_too_big_for_any_database_is_refused_with_a_message_not_a_500(client, make_card, project, field):
    # SQLite raised OverflowError on such an id inside Django's own choice check (found by a trial).
    card = make_card()
    huge = "99999999999999999999999"
    if field == "waits_for":
        answers = [
            client.post(f"/projects/{project.pk}/cards/", {"title": "t", "agent": "built-in", "mode": "act", field: huge}),
            client.post(f"/cards/{card.pk}/settings", {field: huge}),
        ]
    else:
        answers = [client.post(f"/cards/{card.pk}/start-variants", {field: [huge, "1"], "models": ""})]
    for response in answers:
        assert response.status_code == 422, response.status_code
        assert "is not a" in response.content.decode()
    assert project.cards.count() == 1
