"""Who may do what: every URL of board/urls.py for each role, the login gate (a login required, or
a client that is not loopback), the audit log and ``manage.py member``."""

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client, override_settings
from django.urls import URLPattern, reverse

from board import access, urls
from board.models import Agent, AuditEntry, Card, DiffComment, Membership, Role, Run

pytestmark = pytest.mark.django_db

# What each URL of board/urls.py needs: (method, need), need being "login" (any logged-in user),
# a Role, "maintains" (a maintainer of any project) or "board" (a superuser: what is no one
# project's). A URL added without a rule here
# fails test_every_url_of_the_board_has_a_rule.
V, M, X = Role.VIEWER, Role.MEMBER, Role.MAINTAINER
RULES = {
    "home": ("get", "login"),
    "project_create": ("post", "board"),
    "board": ("get", V),
    "card_create": ("post", M),
    "card_waitable": ("get", V),
    "card_detail": ("get", V),
    "card_drawer": ("get", V),
    "card_start": ("post", M),
    "card_stop": ("post", M),
    "card_delete": ("post", X),
    "card_resume": ("post", M),
    "card_log": ("get", V),
    "card_diff": ("get", V),
    "card_diff_raw": ("get", V),
    "card_comment_add": ("post", M),
    "card_comments_send": ("post", M),
    "card_comment_delete": ("post", M),
    "card_follow_up": ("post", M),
    "card_settings": ("post", M),
    "card_rollback": ("post", X),
    "card_land": ("post", X),
    "card_check_conflicts": ("post", M),
    "card_rebase": ("post", X),
    "card_resolve": ("post", X),
    "card_push": ("post", X),
    "card_start_variants": ("post", M),
    "card_compare": ("get", V),
    "card_choose": ("post", X),
    "card_drop": ("post", M),
    "card_mark_done": ("post", X),
    "run_decide": ("post", M),
    "project_settings": ("get", X),
    "project_webhooks": ("post", X),
    "project_start_all": ("post", M),
    "members": ("get", X),
    "member_change": ("post", X),
    "audit_log": ("get", X),
    "models": ("get", "login"),
    "model_test": ("post", "maintains"),  # a maintainer of any project: it spends the provider's money
    "agents": ("get", "login"),
    "agent_toggle": ("post", "board"),
}
WHO = ("outsider", "viewer", "member", "maintainer", "superuser")
RANK = {"outsider": 0, "viewer": 1, "member": 2, "maintainer": 3, "superuser": 4}
ACCESS_404 = {"No such project.", "No such project or card."}


def board_url_names() -> set[str]:
    return {p.name for p in urls.urlpatterns if isinstance(p, URLPattern)}


def test_every_url_of_the_board_has_a_rule():
    assert board_url_names() - set(RULES) == set(), "add the new URL to RULES with the role it needs"
    assert set(RULES) - board_url_names() == set()


def person(name: str, superuser: bool = False):
    user = get_user_model().objects.create(username=name, is_superuser=superuser)
    user.set_unusable_password()
    user.save()
    return user


@pytest.fixture
def world(project, make_card):
    """A project with a card, a run, a comment, an agent and one person per role."""
    card = make_card()
    run = Run.objects.create(card=card, agent=card.agent, state="succeeded")
    comment = DiffComment.objects.create(card=card, path="README.md", line=1, text="why?")
    people = {name: person(name, superuser=(name == "superuser")) for name in WHO}
    for name in ("viewer", "member", "maintainer"):
        Membership.objects.create(user=people[name], project=project, role=name)
    ids = {"project_id": project.pk, "card_id": card.pk, "run_id": run.pk, "comment_id": comment.pk,
           "agent_id": card.agent.pk, "membership_id": Membership.objects.get(user=people["viewer"]).pk}
    return {"people": people, "ids": ids, "project": project, "card": card}


def url_of(name: str, ids: dict) -> str:
    pattern = next(p for p in urls.urlpatterns if getattr(p, "name", None) == name)
    return reverse(name, kwargs={key: ids[key] for key in pattern.pattern.converters})


def allowed(need, who: str) -> bool:
    if need == "login":
        return True
    if need == "board":
        return who == "superuser"
    if need == "maintains":
        return RANK[who] >= 3
    return RANK[who] >= {V: 1, M: 2, X: 3}[need]


def refused_as_hidden(response) -> bool:
    return response.status_code == 404 and (response.context or {}).get("exception") in ACCESS_404


@override_settings(BOARD_LOGIN_REQUIRED=True)
@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("who", ("anonymous", *WHO))
def test_each_role_reaches_only_what_it_may(world, name, who):
    method, need = RULES[name]
    client = Client(HTTP_HOST="127.0.0.1")
    if who != "anonymous":
        client.force_login(world["people"][who])
    url = url_of(name, world["ids"])
    response = getattr(client, method)(url)
    if who == "anonymous":
        assert response.status_code == 302 and response["Location"].startswith("/login?next="), (url, response.status_code)
    elif allowed(need, who):
        assert response.status_code not in (401, 403) and not refused_as_hidden(response), (url, response.status_code)
    elif who == "outsider" and need in (V, M, X):
        assert refused_as_hidden(response), (url, response.status_code)
    else:
        assert response.status_code == 403, (url, response.status_code)
        assert "role" in response.content.decode() or "administrator" in response.content.decode() or "maintainer" in response.content.decode()


@override_settings(BOARD_LOGIN_REQUIRED=True)
def test_a_role_too_low_gets_a_short_reason_over_htmx_not_a_page(world):
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(world["people"]["viewer"])
    response = client.post(f"/cards/{world['card'].pk}/start", HTTP_HX_REQUEST="true")
    assert response.status_code == 403
    assert response["Content-Type"].startswith("text/plain")
    assert response.content.decode() == "This needs the member role in this project; you are a viewer."


@override_settings(BOARD_LOGIN_REQUIRED=True)
def test_an_anonymous_htmx_request_gets_401_and_is_sent_to_the_login_page(world):
    response = Client(HTTP_HOST="127.0.0.1").post(
        f"/cards/{world['card'].pk}/start", HTTP_HX_REQUEST="true", HTTP_HX_CURRENT_URL=f"http://127.0.0.1/projects/{world['project'].pk}/")
    assert response.status_code == 401
    assert response["HX-Redirect"] == f"/login?next=/projects/{world['project'].pk}/"
    assert not Run.objects.filter(card=world["card"]).exclude(state="succeeded").exists()


@override_settings(BOARD_LOGIN_REQUIRED=True)
def test_the_login_page_and_static_files_and_the_api_are_not_behind_the_gate():
    client = Client(HTTP_HOST="127.0.0.1")
    assert client.get("/login").status_code == 200
    assert client.get("/static/board/board.css").status_code == 200
    assert client.get("/api/projects/").status_code != 302  # the API answers for itself (401 without a token)


@override_settings(BOARD_LOGIN_REQUIRED=False)
@pytest.mark.parametrize("address", ["192.168.1.20", "10.0.0.5", "2001:db8::1", "not an address"])
def test_a_client_that_is_not_loopback_must_log_in_even_when_no_login_is_required(world, address):
    response = Client(HTTP_HOST="127.0.0.1", REMOTE_ADDR=address).get(f"/projects/{world['project'].pk}/")
    assert response.status_code == 302 and response["Location"].startswith("/login")


@override_settings(BOARD_LOGIN_REQUIRED=False)
def test_a_request_through_a_proxy_must_log_in_even_from_loopback(world):
    response = Client(HTTP_HOST="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9").get(f"/projects/{world['project'].pk}/")
    assert response.status_code == 302 and response["Location"].startswith("/login")


@override_settings(BOARD_LOGIN_REQUIRED=False)
@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_the_one_local_user_on_loopback_needs_no_login(world, address):
    response = Client(HTTP_HOST="127.0.0.1", REMOTE_ADDR=address).get(f"/projects/{world['project'].pk}/")
    assert response.status_code == 200


@override_settings(BOARD_LOGIN_REQUIRED=True)
def test_home_lists_only_the_projects_a_person_may_see_and_the_forms_only_an_administrator_may_use(world, make_repo):
    from board.models import Project

    hidden = Project.objects.create(name="secret-project", repo_path=str(make_repo("other")), base_branch="main")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(world["people"]["viewer"])
    page = client.get("/").content.decode()
    assert world["project"].name in page and hidden.name not in page
    assert 'id="project-form"' not in page  # only an administrator adds projects
    assert 'id="agent-form"' not in client.get("/agents/").content.decode()
    world["project"].__class__.objects.filter(pk=hidden.pk).update(model="secret-model/x")
    assert "secret-model" not in client.get("/models/").content.decode()  # nor its settings
    client.force_login(world["people"]["superuser"])
    assert "secret-model" in client.get("/models/").content.decode()
    page = client.get("/").content.decode()
    assert hidden.name in page and 'id="project-form"' in page
    assert 'id="agent-form"' in client.get("/agents/").content.decode()


@override_settings(BOARD_LOGIN_REQUIRED=True)
def test_the_page_says_who_is_logged_in_and_offers_to_log_out_and_marks_the_role(world):
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(world["people"]["viewer"])
    page = client.get(f"/projects/{world['project'].pk}/").content.decode()
    assert 'id="who-name"' in page and ">viewer<" in page
    assert 'action="/logout"' in page
    assert 'data-role="viewer"' in page
    response = client.post("/logout")
    assert response.status_code == 302 and response["Location"] == "/login"
    assert client.get("/").status_code == 302


def test_logging_in_through_the_login_page_leads_to_the_page_asked_for(world):
    user = world["people"]["member"]
    user.set_password("correct horse")
    user.save()
    client = Client(HTTP_HOST="127.0.0.1")
    with override_settings(BOARD_LOGIN_REQUIRED=True):
        wrong = client.post("/login", {"username": "member", "password": "nope", "next": "/"})
        assert wrong.status_code == 200 and "correct username and password" in wrong.content.decode()
        response = client.post("/login", {"username": "member", "password": "correct horse", "next": f"/projects/{world['project'].pk}/"})
        assert response.status_code == 302 and response["Location"] == f"/projects/{world['project'].pk}/"
        assert client.get(response["Location"]).status_code == 200


# --- The audit log -------------------------------------------------------------------------------


@override_settings(BOARD_LOGIN_REQUIRED=True)
def test_start_land_and_delete_through_the_pages_are_audited_with_who_did_them(world, monkeypatch):
    from agents import landing

    monkeypatch.setattr(landing, "land_card", lambda card, mode=None: "Landed.")
    card, project = world["card"], world["project"]
    member, maintainer = Client(HTTP_HOST="127.0.0.1"), Client(HTTP_HOST="127.0.0.1")
    member.force_login(world["people"]["member"])
    maintainer.force_login(world["people"]["maintainer"])
    assert member.post(f"/cards/{card.pk}/start").status_code == 302
    assert member.post(f"/cards/{card.pk}/land").status_code == 403  # refused: not recorded
    Run.objects.filter(card=card).update(state="succeeded")
    assert maintainer.post(f"/cards/{card.pk}/land").status_code == 302
    assert maintainer.post(f"/cards/{card.pk}/delete").status_code == 302
    entries = list(AuditEntry.objects.order_by("id").values_list("actor", "action", "card_id_ref", "card_title", "project_id"))
    assert entries == [
        ("member", "start", card.pk, card.title, project.pk),
        ("maintainer", "land", card.pk, card.title, project.pk),
        ("maintainer", "delete", card.pk, card.title, project.pk),
    ]
    page = maintainer.get(f"/projects/{project.pk}/audit").content.decode()
    assert page.index(">delete<") < page.index(">land<") < page.index(">start<")  # newest first
    assert member.get(f"/projects/{project.pk}/audit").status_code == 403


def test_without_a_login_the_local_user_is_audited_as_local(world):
    Client(HTTP_HOST="127.0.0.1").post(f"/cards/{world['card'].pk}/stop")
    Client(HTTP_HOST="127.0.0.1").post(f"/cards/{world['card'].pk}/start")
    assert list(AuditEntry.objects.values_list("actor", "action")) == [("local", "start")]  # stop was refused: idle


def test_the_audit_log_is_paged(world):
    for i in range(60):
        access.audit(None, "start", project=world["project"], n=i)
    client = Client(HTTP_HOST="127.0.0.1")
    first = client.get(f"/projects/{world['project'].pk}/audit").content.decode()
    assert "Page 1 of 2" in first and "n</span> 59" in first and "n</span> 0<" not in first
    second = client.get(f"/projects/{world['project'].pk}/audit?page=2").content.decode()
    assert "n</span> 0<" in second
    assert client.get(f"/projects/{world['project'].pk}/audit?page=junk").status_code == 200


def test_shell_commands_are_audited_as_shell(world, monkeypatch):
    from board.management.commands import card as card_command

    monkeypatch.setattr(card_command, "workers_running", lambda: True)
    call_command("card", "start", str(world["card"].pk))
    call_command("card", "delete", str(world["card"].pk))
    assert list(AuditEntry.objects.order_by("id").values_list("actor", "action", "card_id_ref")) == [
        ("shell", "start", world["card"].pk), ("shell", "delete", world["card"].pk)]


# --- Members ----------------------------------------------------------------------------------------


@override_settings(BOARD_LOGIN_REQUIRED=True)
def test_a_maintainer_adds_changes_and_removes_members_on_the_members_page(world):
    project = world["project"]
    newcomer = person("newcomer")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(world["people"]["maintainer"])
    assert client.post(f"/projects/{project.pk}/members", {"username": "newcomer", "role": "viewer"}).status_code == 302
    membership = Membership.objects.get(user=newcomer, project=project)
    assert membership.role == "viewer"
    client.post(f"/projects/{project.pk}/members/{membership.pk}", {"role": "member"})
    assert Membership.objects.get(pk=membership.pk).role == "member"
    client.post(f"/projects/{project.pk}/members/{membership.pk}", {"remove": "1"})
    assert not Membership.objects.filter(pk=membership.pk).exists()
    unknown = client.post(f"/projects/{project.pk}/members", {"username": "nobody", "role": "viewer"})
    assert unknown.status_code == 422 and "No account named" in unknown.content.decode()
    bad_role = client.post(f"/projects/{project.pk}/members", {"username": "newcomer", "role": "king"})
    assert bad_role.status_code == 422
    assert [a for a, in AuditEntry.objects.order_by("id").values_list("action")] == ["member-add", "member-role", "member-remove"]


@override_settings(BOARD_LOGIN_REQUIRED=True)
def test_the_last_maintainer_can_be_neither_removed_nor_demoted(world):
    project = world["project"]
    mine = Membership.objects.get(user=world["people"]["maintainer"], project=project)
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(world["people"]["maintainer"])
    page = client.post(f"/projects/{project.pk}/members/{mine.pk}", {"remove": "1"}, follow=True).content.decode()
    assert "last maintainer" in page
    client.post(f"/projects/{project.pk}/members/{mine.pk}", {"role": "viewer"})
    assert Membership.objects.get(pk=mine.pk).role == "maintainer"


def test_a_membership_of_another_project_cannot_be_changed_through_this_one(world, make_repo):
    from board.models import Project

    other = Project.objects.create(name="other", repo_path=str(make_repo("other")), base_branch="main")
    theirs = Membership.objects.create(user=world["people"]["outsider"], project=other, role="viewer")
    response = Client(HTTP_HOST="127.0.0.1").post(f"/projects/{world['project'].pk}/members/{theirs.pk}", {"remove": "1"})
    assert response.status_code == 404
    assert Membership.objects.filter(pk=theirs.pk).exists()


def test_the_member_command_adds_lists_and_removes(world, capsys):
    project = world["project"]
    person("carol")
    call_command("member", "add", "carol", str(project.pk), "maintainer")
    assert Membership.objects.get(user__username="carol", project=project).role == "maintainer"
    call_command("member", "add", "carol", str(project.pk))  # default: member
    assert Membership.objects.get(user__username="carol", project=project).role == "member"
    call_command("member", "list", str(project.pk))
    out = capsys.readouterr().out
    assert f"{project.pk}\t{project.name}\tcarol\tmember" in out
    assert "superuser\tmaintainer (superuser)" in out
    call_command("member", "remove", "carol", str(project.pk))
    assert not Membership.objects.filter(user__username="carol").exists()
    assert set(AuditEntry.objects.values_list("actor", flat=True)) == {"shell"}
    with pytest.raises(CommandError, match="No account named 'nobody'"):
        call_command("member", "add", "nobody", str(project.pk))
    with pytest.raises(CommandError, match="not a role|Select a valid choice"):
        call_command("member", "add", "viewer", str(project.pk), "king")
    with pytest.raises(CommandError, match="No project with id 999"):
        call_command("member", "add", "viewer", "999")
    with pytest.raises(CommandError, match="last maintainer"):
        call_command("member", "remove", "maintainer", str(project.pk))


# --- CSRF ------------------------------------------------------------------------------------------


def test_a_write_without_the_csrf_token_is_refused_and_with_it_is_done(world):
    client = Client(HTTP_HOST="127.0.0.1", enforce_csrf_checks=True)
    card = world["card"]
    assert client.post(f"/cards/{card.pk}/start", HTTP_HX_REQUEST="true").status_code == 403
    assert not AuditEntry.objects.exists()
    page = client.get(f"/projects/{world['project'].pk}/")
    token = page.cookies["csrftoken"].value
    response = client.post(f"/cards/{card.pk}/start", HTTP_HX_REQUEST="true", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200
    assert AuditEntry.objects.get().action == "start"


# --- The rule itself --------------------------------------------------------------------------------


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True), ("::ffff:127.0.0.1", True), (None, True),
    ("192.168.0.2", False), ("0.0.0.0", False), ("fe80::1", False), ("junk", False),
])
def test_what_counts_as_loopback(address, loopback):
    assert access.is_loopback(address) is loopback
