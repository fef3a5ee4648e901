"""The REST API under /api/ (board/api.py): tokens, roles, each endpoint on a real throwaway
repository, refusals (409), junk (422), the audit log, and `manage.py token`."""

import json

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from agents import runner
from board.models import Agent, ApiToken, AuditEntry, Card, Column, Membership, Role, RunState

pytestmark = pytest.mark.django_db


@pytest.fixture
def client():
    return Client(HTTP_HOST="127.0.0.1", raise_request_exception=True)


@pytest.fixture
def make_token(db):
    """Factory: ``make(role=None, superuser=False) -> (user, secret)`` for a new user; with ``role``,
    a member of ``project`` in that role."""

    def make(project=None, role=None, superuser=False, name="ci"):
        user = User.objects.create_user(f"user{User.objects.count() + 1}", is_superuser=superuser)
        if role is not None:
            Membership.objects.create(user=user, project=project, role=role)
        return user, ApiToken.issue(user, name)[1]

    return make


@pytest.fixture
def token(make_token):
    """A superuser's token: a maintainer of every project."""
    return make_token(superuser=True)[1]


def call(client, method, url, secret=None, body=None, header="bearer"):
    headers = {}
    if secret is not None:
        headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if header == "bearer" else {"HTTP_X_BOARD_TOKEN": secret}
    if method == "get":
        return client.get(url, **headers)
    return client.post(url, json.dumps(body) if body is not None else "", content_type="application/json", **headers)


def test_every_endpoint_answers_401_without_a_token_or_with_a_wrong_one(client, make_card, token):
    card = make_card()
    urls = [("get", "/api/projects/"), ("get", f"/api/projects/{card.project_id}/"), ("get", "/api/cards/"),
            ("post", "/api/cards/"), ("get", f"/api/cards/{card.pk}/"), ("post", f"/api/cards/{card.pk}/start"),
            ("post", f"/api/cards/{card.pk}/stop"), ("get", f"/api/cards/{card.pk}/log")]
    for method, url in urls:
        for secret in (None, "board_wrong", token + "x", "", "\u00e9" * 300):
            response = call(client, method, url, secret)
            assert response.status_code == 401, (method, url, secret)
        assert call(client, "get", url if method == "get" else "/api/projects/", token, header="x").status_code == 200
    assert client.get("/api/projects/", HTTP_AUTHORIZATION=f"Basic {token}").status_code == 401


def test_a_revoked_token_is_refused_and_the_command_lists_it_as_revoked(client, make_token, capsys):
    user, secret = make_token(superuser=True)
    assert call(client, "get", "/api/projects/", secret).status_code == 200
    stored = ApiToken.objects.get(user=user)
    assert stored.last_used_at is not None and stored.key_hash != secret and secret.startswith(stored.prefix)
    call_command("token", "revoke", str(stored.pk))
    assert call(client, "get", "/api/projects/", secret).status_code == 401
    capsys.readouterr()
    call_command("token", "list")
    assert "revoked" in capsys.readouterr().out


def test_the_token_command_prints_a_working_token_once_and_refuses_an_unknown_user(client, project, capsys):
    User.objects.create_user("alerts", is_superuser=True)
    call_command("token", "create", "--user", "alerts", "--name", "grafana")
    secret = capsys.readouterr().out.strip().splitlines()[-1]
    assert secret.startswith("board_") and not ApiToken.objects.filter(key_hash=secret).exists()
    assert [p["name"] for p in call(client, "get", "/api/projects/", secret).json()] == ["demo"]
    call_command("token", "list")
    listed = capsys.readouterr().out
    assert "grafana" in listed and "alerts" in listed and secret not in listed
    with pytest.raises(CommandError, match="No user"):
        call_command("token", "create", "--user", "nobody", "--name", "x")
    with pytest.raises(CommandError, match="No token"):
        call_command("token", "revoke", "999")


def test_projects_list_and_detail_show_only_what_the_user_may_see(client, project, make_token, make_repo):
    from board.models import Project

    other = Project.objects.create(name="secret", repo_path=str(make_repo("other")), base_branch="main")
    _, viewer = make_token(project, Role.VIEWER)
    listed = call(client, "get", "/api/projects/", viewer).json()
    assert [(p["id"], p["role"]) for p in listed] == [(project.pk, "viewer")]
    assert listed[0]["cards"] == {"backlog": 0, "in_progress": 0, "review": 0, "done": 0}
    assert listed[0]["url"] == f"http://127.0.0.1/projects/{project.pk}/"
    assert call(client, "get", f"/api/projects/{project.pk}/", viewer).json()["name"] == "demo"
    response = call(client, "get", f"/api/projects/{other.pk}/", viewer)
    assert response.status_code == 404 and "No project" in response.json()["detail"]
    assert call(client, "get", "/api/projects/999999/", viewer).status_code == 404


def test_a_user_without_a_role_sees_no_project_even_without_a_login(client, project, make_token, settings):
    settings.BOARD_LOGIN_REQUIRED = False
    _, nobody = make_token()
    assert call(client, "get", "/api/projects/", nobody).json() == []
    assert call(client, "get", f"/api/projects/{project.pk}/", nobody).status_code == 404


def test_creating_and_starting_a_card_in_one_request_runs_its_agent(client, project, token):
    agent = Agent.objects.create(name="echo", kind=Agent.Kind.COMMAND, command="echo from-the-agent > out.txt")
    project.default_agent = agent
    project.save()
    response = call(client, "post", "/api/cards/", token,
                    {"project": project.pk, "title": "Fix the login bug", "prompt": "It fails", "labels": ["bug", "CI"],
                     "start": True})
    assert response.status_code == 201, response.content
    data = response.json()
    card = Card.objects.get()
    assert data["id"] == card.pk and data["agent"] == "echo" and data["labels"] == ["bug", "ci"]
    assert data["column"] == Column.IN_PROGRESS and data["run"]["state"] == RunState.QUEUED
    assert data["url"] == f"http://127.0.0.1/cards/{card.pk}/"
    runner.execute(data["run"]["id"])
    shown = call(client, "get", f"/api/cards/{card.pk}/", token).json()
    assert shown["column"] == Column.REVIEW and shown["run"]["state"] == RunState.SUCCEEDED
    assert shown["branch"] == card.__class__.objects.get().branch and shown["branch"].startswith("agent/")
    assert shown["run"]["started_at"] and shown["run"]["ended_at"]
    log = call(client, "get", f"/api/cards/{card.pk}/log", token).json()
    assert log["run"] == data["run"]["id"] and log["lines"][0]["seq"] == 1
    assert any(line["kind"] == "state" and line["text"] == "succeeded" for line in log["lines"])
    seqs = [line["seq"] for line in log["lines"]]
    assert seqs == sorted(seqs)
    newer = call(client, "get", f"/api/cards/{card.pk}/log?after={seqs[1]}&limit=1", token).json()
    assert [line["seq"] for line in newer["lines"]] == [seqs[2]] and newer["more"] is True
    assert newer["next_after"] == seqs[2]
    assert list(AuditEntry.objects.order_by("id").values_list("actor", "action", "card_id_ref")) == [
        ("api:ci", "create", card.pk), ("api:ci", "start", card.pk)]


def test_a_card_made_without_start_stays_in_the_backlog_with_the_built_in_agent(client, project, token):
    response = call(client, "post", "/api/cards/", token, {"project": project.pk, "title": "Later"})
    assert response.status_code == 201
    assert response.json()["column"] == Column.BACKLOG and response.json()["agent"] == "built-in"
    assert response.json()["run"] is None


def test_an_agent_is_named_by_name_or_id(client, project, token):
    agent = Agent.objects.create(name="lint", kind=Agent.Kind.COMMAND, command="true")
    for named in ("lint", agent.pk):
        response = call(client, "post", "/api/cards/", token, {"project": project.pk, "title": "x", "agent": named})
        assert response.status_code == 201 and response.json()["agent"] == "lint"
    response = call(client, "post", "/api/cards/", token, {"project": project.pk, "title": "x", "agent": 99999})
    assert response.status_code == 422 and "enabled agents" in json.dumps(response.json())


def test_start_and_stop_endpoints_use_the_cards_own_rules(client, make_card, token):
    card = make_card("sleep 5")
    response = call(client, "post", f"/api/cards/{card.pk}/stop", token)
    assert response.status_code == 409 and response.json()["detail"] == "This card is not running."
    started = call(client, "post", f"/api/cards/{card.pk}/start", token)
    assert started.status_code == 200 and started.json()["run"]["state"] == RunState.QUEUED
    again = call(client, "post", f"/api/cards/{card.pk}/start", token)
    assert again.status_code == 409 and again.json()["detail"] == "This card is already running."
    stopped = call(client, "post", f"/api/cards/{card.pk}/stop", token)
    assert stopped.status_code == 200 and stopped.json()["run"]["state"] == RunState.STOPPED
    assert list(AuditEntry.objects.order_by("id").values_list("action", flat=True)) == ["start", "stop"]


def test_a_refused_start_on_create_creates_no_card(client, project, token):
    waited = Card.create(project, "First", "", Agent.objects.get(name="built-in"))
    response = call(client, "post", "/api/cards/", token,
                    {"project": project.pk, "title": "Second", "agent": "built-in", "depends_on": [waited.pk],
                     "start": True})
    assert response.status_code == 409 and f"#{waited.pk}" in response.json()["detail"]
    assert Card.objects.count() == 1 and not AuditEntry.objects.exists()


def test_depends_on_sets_what_the_card_waits_for(client, project, token, make_repo):
    from board.models import Project

    first = Card.create(project, "First", "", None)
    made = call(client, "post", "/api/cards/", token,
                {"project": project.pk, "title": "Second", "depends_on": [first.pk], "start_when_ready": True}).json()
    assert made["depends_on"] == [first.pk] and made["start_when_ready"] is True
    elsewhere = Project.objects.create(name="b", repo_path=str(make_repo("b")), base_branch="main")
    response = call(client, "post", "/api/cards/", token, {"project": elsewhere.pk, "title": "x", "depends_on": [first.pk]})
    assert response.status_code == 409 and "another project" in response.json()["detail"]
    response = call(client, "post", "/api/cards/", token, {"project": project.pk, "title": "x", "depends_on": [424242]})
    assert response.status_code == 422 and "424242" in json.dumps(response.json())


def test_roles_decide_403_and_404(client, make_card, make_token, project):
    card = make_card()
    _, viewer = make_token(project, Role.VIEWER)
    _, member = make_token(project, Role.MEMBER)
    _, stranger = make_token()
    assert call(client, "get", f"/api/cards/{card.pk}/", viewer).status_code == 200
    for url in (f"/api/cards/{card.pk}/start", f"/api/cards/{card.pk}/stop"):
        response = call(client, "post", url, viewer)
        assert response.status_code == 403 and "member role" in response.json()["detail"]
        assert call(client, "post", url, stranger).status_code == 404
    response = call(client, "post", "/api/cards/", viewer, {"project": project.pk, "title": "x"})
    assert response.status_code == 403 and Card.objects.count() == 1
    assert call(client, "post", "/api/cards/", stranger, {"project": project.pk, "title": "x"}).status_code == 404
    assert call(client, "get", f"/api/cards/{card.pk}/", stranger).status_code == 404
    assert call(client, "get", f"/api/cards/{card.pk}/log", stranger).status_code == 404
    assert call(client, "get", f"/api/cards/?project={project.pk}", stranger).status_code == 404
    assert call(client, "get", "/api/cards/", stranger).json()["count"] == 0
    assert call(client, "post", f"/api/cards/{card.pk}/start", member).status_code == 200
    entry = AuditEntry.objects.get()
    assert entry.actor == "api:ci" and entry.action == "start" and entry.user.memberships.get().role == "member"


def test_the_card_list_filters_by_project_column_and_state_and_pages(client, make_card, project, token):
    cards = [make_card(title=f"Card {n}") for n in range(5)]
    cards[0].start()
    page = call(client, "get", f"/api/cards/?project={project.pk}&limit=2&offset=1", token).json()
    assert page["count"] == 5 and [c["id"] for c in page["items"]] == [cards[3].pk, cards[2].pk]
    assert [c["id"] for c in call(client, "get", "/api/cards/?column=in_progress", token).json()["items"]] == [cards[0].pk]
    assert call(client, "get", "/api/cards/?status=queued", token).json()["count"] == 1
    assert call(client, "get", "/api/cards/?status=idle", token).json()["count"] == 4


def test_the_log_of_an_earlier_run_and_of_a_card_never_run(client, make_card, token):
    card = make_card("echo first")
    empty = call(client, "get", f"/api/cards/{card.pk}/log", token).json()
    assert empty["run"] is None and empty["lines"] == []
    first = card.start()
    runner.execute(first.pk)
    card.refresh_from_db()
    card.follow_up("again")
    log = call(client, "get", f"/api/cards/{card.pk}/log?run={first.pk}", token).json()
    assert log["run"] == first.pk and log["state"] == "succeeded"
    assert call(client, "get", f"/api/cards/{card.pk}/log?run=999999", token).status_code == 404


@pytest.mark.parametrize("body", [
    None, [], "text", {"project": "x", "title": "t"}, {"title": "t"}, {"project": 1},
    {"project": 2**80, "title": "t"}, {"project": 1, "title": "\ud800"}, {"project": 1, "title": "t", "labels": "a"},
    {"project": 1, "title": "t", "depends_on": [-1]}, {"project": 1, "title": "t", "mode": "fast"},
    {"project": 1, "title": "t", "start": {"yes": 1}}, {"project": 1, "title": "   "},
    # Ids are JSON numbers: true was read as project 1, and "1" as 1.
    {"project": True, "title": "t"}, {"project": "PK", "title": "t"}, {"project": 1, "title": "t", "depends_on": [True]},
])
def test_junk_bodies_are_refused_with_4xx_and_a_detail(client, project, token, body):
    if isinstance(body, dict) and body.get("project") == "PK":
        body = {**body, "project": str(project.pk)}
    elif isinstance(body, dict) and type(body.get("project")) is int and body["project"] == 1:
        body = {**body, "project": project.pk}
    response = call(client, "post", "/api/cards/", token, body)
    assert response.status_code in (400, 422), response.content
    assert "detail" in response.json()
    assert not Card.objects.exists()


@pytest.mark.parametrize("url", [
    "/api/cards/?limit=0", "/api/cards/?limit=100000", "/api/cards/?offset=-1", "/api/cards/?project=abc",
    "/api/cards/?column=nowhere", "/api/cards/?status=%00", f"/api/cards/?project={2**70}",
    f"/api/cards/{2**70}/", f"/api/projects/{2**64}/", "/api/cards/1/log?after=-5", f"/api/cards/1/log?run={2**90}",
])
def test_junk_queries_are_422_not_500(client, token, url):
    assert call(client, "get", url, token).status_code == 422


def test_the_openapi_schema_lists_the_endpoints(client):
    schema = client.get("/api/openapi.json").json()
    assert {"/api/projects/", "/api/cards/", "/api/cards/{card_id}/start", "/api/cards/{card_id}/log"} <= set(schema["paths"])


def test_card_add_with_start_queues_the_card_from_a_shell_or_adds_nothing(project, monkeypatch, capsys):
    from board.management.commands import card as card_command

    monkeypatch.setattr(card_command, "workers_running", lambda: True)
    Agent.objects.create(name="echo", kind=Agent.Kind.COMMAND, command="echo hi")
    call_command("card", "add", "--project", str(project.pk), "--title", "From cron", "--agent", "echo", "--start")
    card = Card.objects.get(pk=int(capsys.readouterr().out.strip().splitlines()[-1]))
    assert card.column == Column.IN_PROGRESS and card.current_run.state == RunState.QUEUED
    assert AuditEntry.objects.get().action == "start"
    with pytest.raises(CommandError, match="Not added: Set a model first"):
        call_command("card", "add", "--project", str(project.pk), "--title", "No model", "--start")
    assert Card.objects.count() == 1
    monkeypatch.setattr(card_command, "workers_running", lambda: False)
    with pytest.raises(CommandError, match="No worker is running"):
        call_command("card", "add", "--project", str(project.pk), "--title", "x", "--agent", "echo", "--start")
    assert Card.objects.count() == 1


def test_a_token_works_from_another_machine_where_pages_need_a_login(project, token, settings):
    settings.BOARD_LOGIN_REQUIRED = True
    remote = Client(HTTP_HOST="127.0.0.1", REMOTE_ADDR="10.0.0.5")
    assert remote.get(f"/projects/{project.pk}/").status_code == 302  # the page: log in first
    response = remote.get("/api/projects/", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200 and [p["id"] for p in response.json()] == [project.pk]
    assert remote.get("/api/projects/").status_code == 401


def test_last_use_is_written_at_most_once_a_minute_and_an_inactive_user_is_refused(make_token):
    from datetime import timedelta

    from django.utils import timezone

    user, secret = make_token(superuser=True)
    first = ApiToken.authenticate(secret).last_used_at
    assert ApiToken.authenticate(secret).last_used_at == first
    ApiToken.objects.update(last_used_at=timezone.now() - timedelta(minutes=2))
    assert ApiToken.authenticate(secret).last_used_at > first
    user.is_active = False
    user.save()
    assert ApiToken.authenticate(secret) is None
