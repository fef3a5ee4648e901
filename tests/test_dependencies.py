"""Cards that wait for others: cycles and other projects' cards refused, starting refused until
every dependency is done, and a card that asked to start by itself started when the last one lands
(a real landing on a throwaway repository) or is marked done."""

import pytest
from django.test import Client

from agents import landing, runner
from board.models import BoardError, Card, Column, Event, Project, RunState

pytestmark = pytest.mark.django_db


@pytest.fixture
def client():
    return Client(HTTP_HOST="127.0.0.1", raise_request_exception=True)


def in_review(card: Card) -> Card:
    runner.execute(card.start().pk)
    card.refresh_from_db()
    assert card.column == Column.REVIEW, card.current_run.error
    return card


def test_a_card_waiting_for_another_that_waits_for_it_is_a_cycle_and_refused(make_card):
    a, b, c = make_card(title="a"), make_card(title="b"), make_card(title="c")
    a.set_dependencies([b], False)
    b.set_dependencies([c], False)
    with pytest.raises(BoardError, match="cycle"):
        c.set_dependencies([a], False)
    with pytest.raises(BoardError, match="itself"):
        a.set_dependencies([a], False)
    assert list(c.depends_on.all()) == []


def test_a_card_of_another_project_is_refused_as_a_dependency(make_card, project, make_repo):
    other_project = Project.objects.create(name="other", repo_path=str(make_repo("other")), base_branch="main")
    mine = make_card()
    foreign = Card.create(other_project, "Foreign", "", mine.agent)
    with pytest.raises(BoardError, match="another project"):
        mine.set_dependencies([foreign], False)


def test_starting_a_card_whose_dependencies_have_not_landed_is_refused_with_the_reason(make_card):
    first, second, waiting = make_card(title="first"), make_card(title="second"), make_card(title="waiting")
    waiting.set_dependencies([first, second], False)
    with pytest.raises(BoardError, match=f"waits for #{first.pk}, #{second.pk}"):
        waiting.start()
    waiting.set_dependencies([first, second], True)
    with pytest.raises(BoardError, match="start by itself"):
        waiting.start()
    waiting.refresh_from_db()
    assert waiting.column == Column.BACKLOG and waiting.current_run is None


def test_a_drop_into_in_progress_of_a_waiting_card_is_409_with_what_it_waits_for(client, make_card):
    first, waiting = make_card(title="first"), make_card(title="waiting")
    waiting.set_dependencies([first], True)
    response = client.post(f"/cards/{waiting.pk}/drop", {"column": "in_progress"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 409 and f"waits for #{first.pk}" in response.content.decode()


def test_landing_the_last_dependency_starts_the_waiting_card_by_itself(make_card, django_capture_on_commit_callbacks):
    first = make_card("echo one > one.txt", title="first")
    second = make_card("echo two > two.txt", title="second")
    waiting = make_card("echo three > three.txt", title="waiting")
    manual = make_card(title="manual")
    waiting.set_dependencies([first, second], True)
    manual.set_dependencies([first, second], False)
    in_review(first)
    in_review(second)
    with django_capture_on_commit_callbacks(execute=True):
        landing.land_card(first)
    waiting.refresh_from_db()
    assert waiting.current_run is None, "one dependency is still to land"
    with django_capture_on_commit_callbacks(execute=True):
        landing.land_card(second)
    waiting.refresh_from_db()
    manual.refresh_from_db()
    assert waiting.column == Column.IN_PROGRESS and waiting.current_run.state == RunState.QUEUED
    assert manual.current_run is None and manual.column == Column.BACKLOG, "only cards that asked start by themselves"
    assert manual.waiting_for == []
    manual.start()  # and it may now start by hand


def test_marking_the_dependency_done_starts_the_waiting_card(make_card, django_capture_on_commit_callbacks):
    first, waiting = make_card(title="first"), make_card(title="waiting")
    waiting.set_dependencies([first], True)
    with django_capture_on_commit_callbacks(execute=True):
        first.mark_done()
    waiting.refresh_from_db()
    assert waiting.column == Column.IN_PROGRESS


def test_a_waiting_card_that_cannot_start_stays_and_says_why(make_card, django_capture_on_commit_callbacks):
    first, waiting = make_card(title="first"), make_card(title="waiting")
    waiting.agent.enabled = False
    waiting.agent.save()
    waiting.set_dependencies([first], True)
    with django_capture_on_commit_callbacks(execute=True):
        first.mark_done()
    waiting.refresh_from_db()
    assert waiting.column == Column.BACKLOG and waiting.current_run is None
    assert Event.objects.filter(card_id=waiting.pk, text__startswith="could not start by itself").exists()


def test_the_board_and_the_card_page_show_what_a_card_waits_for(client, make_card, project):
    first, second, waiting = make_card(title="first"), make_card(title="second"), make_card(title="waiting")
    waiting.set_dependencies([first, second], True)
    board = client.get(f"/projects/{project.pk}/").content.decode()
    card_html = board[board.index(f'id="card-{waiting.pk}"'):]
    assert f"waits for <a href=\"/cards/{first.pk}/\">#{first.pk}</a>, <a href=\"/cards/{second.pk}/\">#{second.pk}</a>" in card_html
    page = client.get(f"/cards/{waiting.pk}/").content.decode()
    assert "Waits for" in page and f"#{first.pk} first" in page and "starts by itself" in page
    first.mark_done()
    board = client.get(f"/projects/{project.pk}/").content.decode()
    card_html = board[board.index(f'id="card-{waiting.pk}"'):board.index("</article>", board.index(f'id="card-{waiting.pk}"'))]
    assert f"#{first.pk}<" not in card_html and f"#{second.pk}" in card_html


def test_card_settings_set_what_a_card_waits_for_and_refuse_a_cycle(client, make_card):
    first, waiting = make_card(title="first"), make_card(title="waiting")
    response = client.post(f"/cards/{waiting.pk}/settings", {"mode": "act", "waits_for": [first.pk], "start_by_itself": "on"})
    assert response.status_code == 302
    waiting.refresh_from_db()
    assert list(waiting.depends_on.all()) == [first] and waiting.start_when_ready
    refused = client.post(f"/cards/{first.pk}/settings", {"mode": "act", "waits_for": [waiting.pk]})
    assert refused.status_code == 422 and "cycle" in refused.content.decode()
    assert list(first.depends_on.all()) == []


@pytest.mark.parametrize("junk", ["999999", "x", "-1", "1e9"])
def test_card_settings_refuse_junk_in_waits_for_with_422(client, make_card, junk):
    card = make_card()
    response = client.post(f"/cards/{card.pk}/settings", {"mode": "act", "waits_for": [junk]})
    assert response.status_code == 422


def test_card_add_waits_for_cards_from_the_shell_and_refuses_junk(make_card, project):
    from io import StringIO

    from django.core.management import CommandError, call_command

    first, second = make_card(title="first"), make_card(title="second")
    out = StringIO()
    call_command("card", "add", "--project", str(project.pk), "--title", "After both", "--agent", first.agent.name,
                 "--waits-for", f"{first.pk},{second.pk}", "--start-when-ready", stdout=out)
    card = Card.objects.get(pk=int(out.getvalue().strip().splitlines()[-1]))
    assert sorted(c.pk for c in card.depends_on.all()) == [first.pk, second.pk] and card.start_when_ready
    assert f"waiting for #{first.pk}, #{second.pk}" in out.getvalue()
    count = Card.objects.count()
    for junk in ("x", "999999", "1;2", "\u00b2"):
        with pytest.raises(CommandError):
            call_command("card", "add", "--project", str(project.pk), "--title", "Junk", "--agent", first.agent.name,
                         "--waits-for", junk, stdout=StringIO())
    assert Card.objects.count() == count, "a refused card is not added"


def test_only_backlog_cards_start_by_themselves(make_card, django_capture_on_commit_callbacks):
    first, failed = make_card(title="first"), make_card("exit 1", title="failed already")
    runner.execute(failed.start().pk)
    failed.set_dependencies([first], True)
    with django_capture_on_commit_callbacks(execute=True):
        first.mark_done()
    failed.refresh_from_db()
    assert failed.column == Column.IN_PROGRESS and failed.current_run.state == RunState.FAILED, "left to the lead"


# "Waits for" in the board's new-card form.


def test_a_card_added_on_the_board_waits_for_the_cards_chosen_and_may_start_by_itself(client, make_card, project):
    first, second = make_card(title="first"), make_card(title="second")
    response = client.post(f"/projects/{project.pk}/cards/", {
        "title": "After both", "agent": first.agent.name, "waits_for": [first.pk, second.pk],
        "start_when_ready": "on",
    }, HTTP_HX_REQUEST="true")
    assert response.status_code == 200, response.content.decode()
    card = Card.objects.get(title="After both")
    assert sorted(c.pk for c in card.depends_on.all()) == [first.pk, second.pk] and card.start_when_ready
    assert f"waits for <a href=\"/cards/{first.pk}/\">#{first.pk}</a>" in response.content.decode()


@pytest.mark.parametrize("junk, message", [
    ("999999", "Card 999999 is not a card of this project that is still to land."),
    ("x", "&#x27;x&#x27; is not a card id."),
])
def test_the_new_card_form_refuses_a_bad_id_in_waits_for_with_a_message(client, make_card, project, junk, message):
    first = make_card(title="first")
    response = client.post(f"/projects/{project.pk}/cards/", {"title": "Bad wait", "agent": first.agent.name,
                                                              "waits_for": [junk]}, HTTP_HX_REQUEST="true")
    assert response.status_code == 422 and message in response.content.decode()
    assert not Card.objects.filter(title="Bad wait").exists()


def test_the_new_card_form_does_not_offer_a_card_that_landed_and_refuses_it(client, make_card, project):
    done, open_card = make_card(title="done one"), make_card(title="open one")
    done.mark_done()
    options = client.get(f"/projects/{project.pk}/cards/waitable?waits_for={open_card.pk}").content.decode()
    assert f'<option value="{open_card.pk}" selected>#{open_card.pk} open one</option>' in options
    assert "done one" not in options
    response = client.post(f"/projects/{project.pk}/cards/", {"title": "Late", "agent": done.agent.name,
                                                              "waits_for": [done.pk]}, HTTP_HX_REQUEST="true")
    assert response.status_code == 422 and "not a card of this project that is still to land" in response.content.decode()


def test_a_refusal_by_the_domain_in_the_new_card_form_is_shown_and_nothing_is_created(client, make_card, project, monkeypatch):
    # A new card has no dependents, so no choice can close a cycle; the domain's check still runs.
    first = make_card(title="first")

    def refuse(self, cards):
        raise BoardError("That would make a cycle: card #1 would wait, through others, for itself.")

    monkeypatch.setattr(Card, "check_dependencies", refuse)
    response = client.post(f"/projects/{project.pk}/cards/", {"title": "Loop", "agent": first.agent.name,
                                                              "waits_for": [first.pk]}, HTTP_HX_REQUEST="true")
    assert response.status_code == 422 and "That would make a cycle" in response.content.decode()
    assert not Card.objects.filter(title="Loop").exists()


def test_the_board_page_renders_no_waits_for_options_until_the_list_is_opened(client, make_card, project):
    first = make_card(title="lazy first")
    page = client.get(f"/projects/{project.pk}/").content.decode()
    form = page[page.index('id="card-form"'):page.index("</form>", page.index('id="card-form"'))]
    assert 'name="waits_for"' in form and f'hx-get="/projects/{project.pk}/cards/waitable"' in form
    assert "<option" not in form[form.index('name="waits_for"'):]
    assert f'#{first.pk} lazy first' in client.get(f"/projects/{project.pk}/cards/waitable").content.decode()


def test_a_card_that_could_not_start_by_itself_shows_why_on_the_board_until_it_is_started(
        client, make_card, project, django_capture_on_commit_callbacks):
    first, waiting = make_card(title="first"), make_card(title="stuck", command="echo fine")
    waiting.agent.enabled = False
    waiting.agent.save()
    waiting.set_dependencies([first], True)
    board_url = f"/projects/{project.pk}/"
    client.get(board_url)  # the card's HTML is kept now: the failure must still show
    with django_capture_on_commit_callbacks(execute=True):
        first.mark_done()

    reason = f"Did not start by itself: The agent &#x27;{waiting.agent.name}&#x27; is not enabled."
    board = client.get(board_url).content.decode()
    tile = board[board.index(f'id="card-{waiting.pk}"'):board.index("</article>", board.index(f'id="card-{waiting.pk}"'))]
    assert reason in tile
    assert "Did not start by itself" in client.get(f"/cards/{waiting.pk}/").content.decode()
    assert Card.objects.get(pk=waiting.pk).start_failure == f"The agent '{waiting.agent.name}' is not enabled."

    waiting.agent.enabled = True
    waiting.agent.save()
    runner.execute(Card.objects.get(pk=waiting.pk).start().pk)
    assert "Did not start by itself" not in client.get(board_url).content.decode()
    assert Card.objects.get(pk=waiting.pk).start_failure == ""


def test_cards_that_started_by_themselves_or_wait_still_show_no_failure(make_card, django_capture_on_commit_callbacks):
    first, second, fine, still = make_card(title="first"), make_card(title="second"), make_card(title="fine"), make_card(title="still")
    fine.set_dependencies([first], True)
    still.set_dependencies([first, second], True)
    with django_capture_on_commit_callbacks(execute=True):
        first.mark_done()
    assert Card.objects.get(pk=fine.pk).column == Column.IN_PROGRESS
    assert Card.objects.get(pk=fine.pk).start_failure == ""
    assert Card.objects.get(pk=still.pk).start_failure == ""
