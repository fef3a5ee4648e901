"""The board's everyday UX (issue 7): a board of many cards in a bounded number of queries, labels,
the filters' data attributes, empty states, the project switcher, progress of running cards."""

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from board.forms import parse_labels
from board.models import Agent, Card, Column, Event, Project, Run, RunState

pytestmark = pytest.mark.django_db


@pytest.fixture
def client():
    return Client(HTTP_HOST="127.0.0.1", raise_request_exception=True)


def _cards(project, agent, count: int, start: int = 0) -> None:
    """``count`` cards in every column and run state, some with labels and dependencies."""
    states = [None, RunState.QUEUED, RunState.RUNNING, RunState.AWAITING_APPROVAL, RunState.SUCCEEDED,
              RunState.FAILED, RunState.INTERRUPTED]
    columns = [Column.BACKLOG, Column.IN_PROGRESS, Column.IN_PROGRESS, Column.IN_PROGRESS, Column.REVIEW,
               Column.REVIEW, Column.BACKLOG]
    previous = None
    for i in range(start, start + count):
        k = i % len(states)
        card = Card.objects.create(project=project, agent=agent, title=f"Card {i}", column=columns[k],
                                   labels=["bug"] if i % 2 else ["frontend", "a11y"])
        if states[k] is not None:
            run = Run.objects.create(
                card=card, agent=agent, state=states[k], steps=i, budget={"steps": 40, "cost": 1.0, "minutes": 30},
                started_at=timezone.now(), pending={"kind": "question", "detail": "Which?"}
                if states[k] == RunState.AWAITING_APPROVAL else None, agent_state={"messages": ["x" * 100]},
            )
            card.current_run = run
            card.save(update_fields=["current_run"])
        if previous is not None and i % 3 == 0:
            card.depends_on.add(previous)
        previous = card


def _queries_for_board(client, project) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/projects/{project.pk}/")
    assert response.status_code == 200
    return len(queries)


def test_the_board_renders_in_the_same_number_of_queries_whatever_the_number_of_cards(client, project):
    agent = Agent.objects.create(name="builtin-x", kind=Agent.Kind.BUILTIN, model="openai/x")
    _cards(project, agent, 14)
    few = _queries_for_board(client, project)
    _cards(project, agent, 140, start=14)
    many = _queries_for_board(client, project)
    assert many == few, f"{few} queries for 14 cards, {many} for 154: something is read per card"
    assert many <= 15


def test_labels_typed_with_commas_are_saved_and_shown_as_chips(client, project):
    Agent.objects.create(name="echo", kind=Agent.Kind.COMMAND, command="echo hi")
    response = client.post(f"/projects/{project.pk}/cards/", {
        "title": "Fix login", "prompt": "", "agent": "echo", "labels": " Bug, front end ,bug,,",
    }, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    card = Card.objects.get(title="Fix login")
    assert card.labels == ["bug", "front-end"]
    page = client.get(f"/projects/{project.pk}/").content.decode()
    assert '<li class="chip">bug</li>' in page and '<li class="chip">front-end</li>' in page
    assert '<option value="front-end">front-end</option>' in page  # the label filter offers it


def test_too_many_or_too_long_labels_are_refused_with_a_message(client, project):
    Agent.objects.create(name="echo", kind=Agent.Kind.COMMAND, command="echo hi")
    url = f"/projects/{project.pk}/cards/"
    response = client.post(url, {"title": "A", "agent": "echo", "labels": ",".join(f"l{i}" for i in range(11))})
    assert response.status_code == 422 and "At most 10 labels" in response.content.decode()
    response = client.post(url, {"title": "A", "agent": "echo", "labels": "x" * 31})
    assert response.status_code == 422 and "under 30 characters" in response.content.decode()
    assert not Card.objects.exists()


def test_labels_are_parsed_trimmed_lowercased_and_without_repeats():
    assert parse_labels("") == []
    assert parse_labels("UI,  ui , needs review,\x00x") == ["ui", "needs-review", "x"]


def test_cards_carry_the_data_the_filters_read(client, make_card, project):
    card = make_card(title="Speed up the Parser")
    card.labels = ["perf", "backend"]
    card.save(update_fields=["labels"])
    page = client.get(f"/projects/{project.pk}/").content.decode()
    assert f'data-state="idle" data-labels="perf backend" data-search="#{card.pk} speed up the parser perf backend"' in page
    assert 'id="board-search"' in page and 'id="filter-state"' in page and 'id="filter-label"' in page
    assert '<option value="awaiting_approval">awaiting approval</option>' in page


def test_empty_columns_say_what_to_do_next(client, project):
    page = client.get(f"/projects/{project.pk}/").content.decode()
    assert "No cards waiting. Add one with the form above" in page
    assert "Nothing running. Start a card from the Backlog" in page
    assert "Finished cards wait here for your review." in page
    assert "Landed cards end here." in page


def test_the_home_page_without_a_project_says_how_to_add_one(client):
    page = client.get("/").content.decode()
    assert "No project yet. Add the path of a local git repository below" in page


def test_the_top_bar_lists_every_project_to_switch_to(client, project):
    other = Project.objects.create(name="second", repo_path=project.repo_path, base_branch="main")
    page = client.get(f"/projects/{project.pk}/").content.decode()
    assert f'<option value="/projects/{project.pk}/" selected>demo</option>' in page
    assert f'<option value="/projects/{other.pk}/">second</option>' in page
    assert 'aria-label="Dark mode"' in page and 'aria-label="Keyboard shortcuts"' in page
    assert 'id="keys-help"' in page


def test_a_running_command_card_shows_its_time_budget_and_a_built_in_one_its_steps(client, project, make_card):
    card = make_card()
    run = Run.objects.create(card=card, agent=card.agent, state=RunState.RUNNING, started_at=timezone.now(),
                             budget={"steps": 40, "cost": None, "minutes": 30})
    Card.objects.filter(pk=card.pk).update(current_run=run, column=Column.IN_PROGRESS)
    page = client.get(f"/projects/{project.pk}/").content.decode()
    assert 'class="time-budget" max="30"' in page and "of 30 min" in page
    assert "badge-running" in page  # the spinner
    builtin = Agent.objects.create(name="bi", kind=Agent.Kind.BUILTIN, model="openai/x")
    Card.objects.filter(pk=card.pk).update(agent=builtin)
    Run.objects.filter(pk=run.pk).update(steps=3, cost=0.5, tokens=1200, budget={"steps": 40, "cost": 2.0, "minutes": 30})
    page = client.get(f"/projects/{project.pk}/").content.decode()
    assert "Steps 3/40" in page and "$0.5000/$2.00" in page and "1200 tokens" in page


# --- The board's socket on (re)connect: only what changed since the page was rendered ----------

from channels.db import database_sync_to_async  # noqa: E402
from channels.testing import WebsocketCommunicator  # noqa: E402

from board.consumers import RESUME_WAIT  # noqa: E402
from board.models import Event  # noqa: E402
from config.asgi import application  # noqa: E402

HEADERS = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]


async def _board_socket(project):
    communicator = WebsocketCommunicator(application, f"/ws/projects/{project.pk}/", headers=HEADERS)
    assert (await communicator.connect())[0]
    return communicator


def _last_event() -> int:
    return Event.objects.order_by("-id").values_list("id", flat=True).first() or 0


@pytest.mark.django_db(transaction=True)
async def test_a_board_page_that_says_what_it_shows_gets_no_second_copy_of_the_board(make_card, project):
    card = await database_sync_to_async(make_card)()
    communicator = await _board_socket(project)
    await communicator.send_to(text_data=json.dumps({"since": await database_sync_to_async(_last_event)(), "cards": [card.pk]}))
    assert await communicator.receive_nothing(timeout=RESUME_WAIT + 0.5)
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_board_page_reconnecting_gets_the_cards_changed_since_and_loses_the_deleted(make_card, project):
    quiet, busy, gone = [await database_sync_to_async(make_card)(title=t) for t in ("Quiet", "Busy", "Gone")]
    since = await database_sync_to_async(_last_event)()
    await database_sync_to_async(busy.start)()  # moves to In Progress while the page was away
    await database_sync_to_async(Card.objects.filter(pk=gone.pk).delete)()
    communicator = await _board_socket(project)
    await communicator.send_to(text_data=json.dumps({"since": since, "cards": [quiet.pk, busy.pk, gone.pk]}))
    messages = [await communicator.receive_from(timeout=5), await communicator.receive_from(timeout=5)]
    text = "".join(messages)
    assert f'<div id="card-{gone.pk}" hx-swap-oob="delete"></div>' in text
    assert f'hx-swap-oob="afterbegin:#list-in_progress"' in text and f'id="card-{busy.pk}"' in text
    assert f'id="card-{quiet.pk}"' not in text and 'id="columns"' not in text
    assert await communicator.receive_nothing(timeout=0.5)
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_board_page_that_says_nothing_or_junk_gets_the_whole_board(make_card, project):
    card = await database_sync_to_async(make_card)()
    communicator = await _board_socket(project)
    await communicator.send_to(text_data='{"since": "soon", "cards": {"a": 1}}')
    first = await communicator.receive_from(timeout=RESUME_WAIT + 3)
    assert 'id="columns"' in first and f'id="card-{card.pk}"' in first
    await communicator.disconnect()


# --- Cards kept rendered per process (board_tags.cached_card) -----------------------------------


def test_a_card_kept_rendered_shows_every_change_of_its_run_its_agent_and_what_it_waits_for(client, project, make_card):
    card, first = make_card(title="Later"), make_card(title="First")
    card.depends_on.add(first)
    run = Run.objects.create(card=card, agent=card.agent, state=RunState.FAILED, error="It broke at step one",
                             started_at=timezone.now(), ended_at=timezone.now())
    Card.objects.filter(pk=card.pk).update(current_run=run)
    url = f"/projects/{project.pk}/"
    page = client.get(url).content.decode()
    assert "It broke at step one" in page and f'<a href="/cards/{first.pk}/">#{first.pk}</a>' in page
    def cards(html: str) -> str:
        return html[html.index("<article"):html.rindex("</article>")]

    assert cards(client.get(url).content.decode()) == cards(page)  # unchanged: the same cards
    Run.objects.filter(pk=run.pk).update(error="It broke at step two")
    assert "It broke at step two" in client.get(url).content.decode()
    Agent.objects.filter(pk=card.agent_id).update(name="renamed-agent")
    assert "renamed-agent" in client.get(url).content.decode()
    Card.objects.filter(pk=first.pk).update(column=Column.DONE)
    assert f'<a href="/cards/{first.pk}/">#{first.pk}</a>' not in client.get(url).content.decode()


def test_a_card_waiting_for_the_lead_carries_each_request_s_own_csrf_token(project, make_card):
    card = make_card()
    run = Run.objects.create(card=card, agent=card.agent, state=RunState.AWAITING_APPROVAL, started_at=timezone.now(),
                             pending={"kind": "question", "detail": "Which one?"})
    Card.objects.filter(pk=card.pk).update(current_run=run, column=Column.IN_PROGRESS)
    tokens = set()
    for _ in range(2):
        fresh = Client(HTTP_HOST="127.0.0.1", enforce_csrf_checks=True)
        page = fresh.get(f"/projects/{project.pk}/").content.decode()
        assert "Which one?" in page
        start = page.index('name="csrfmiddlewaretoken" value="', page.index("Which one?")) + 34
        tokens.add(page[start:page.index('"', start)])
        assert page[start:page.index('"', start)] != ""
    assert len(tokens) == 2


def test_labels_are_changed_in_the_card_settings_with_the_same_normalisation(client, make_card):
    card = make_card(title="Relabel me")

    response = client.post(f"/cards/{card.pk}/settings", {"mode": "act", "labels": " UI, needs review,ui"})

    assert response.status_code == 302
    card.refresh_from_db()
    assert card.labels == ["ui", "needs-review"]
    page = client.get(f"/cards/{card.pk}/").content.decode()
    assert 'name="labels" value="ui, needs-review"' in page
    assert '<span class="label">needs-review</span>' in page
    assert Event.objects.filter(card_id=card.pk, kind="card", text="labels set").count() == 1


def test_too_many_labels_in_the_card_settings_are_refused_and_nothing_changes(client, make_card):
    card = make_card(title="Keep my labels")
    card.set_labels(["keep"])

    response = client.post(f"/cards/{card.pk}/settings", {"mode": "act", "labels": ",".join(f"l{i}" for i in range(11))})

    assert response.status_code == 422 and "At most 10 labels" in response.content.decode()
    card.refresh_from_db()
    assert card.labels == ["keep"]


def test_setting_the_same_labels_again_records_no_event(make_card):
    card = make_card(title="Same labels")
    card.set_labels(["a", "b"])
    card.set_labels(["a", "b"])
    assert Event.objects.filter(card_id=card.pk, text="labels set").count() == 1


def test_the_list_of_keys_names_the_keys_that_move_a_card(client, project):
    page = client.get(f"/projects/{project.pk}/").content.decode()
    keys = page[page.index('id="keys-help"'):page.index("</dialog>")]
    assert "<kbd>Alt</kbd>+<kbd>←</kbd> <kbd>Alt</kbd>+<kbd>→</kbd>" in keys
    assert "<kbd>Alt</kbd>+<kbd>↑</kbd> <kbd>Alt</kbd>+<kbd>↓</kbd>" in keys
    assert 'id="dnd-status" class="sr-only" role="status" aria-live="polite"' in page  # where moves are said


# --- A board of many cards is light for the browser (bench/board_render.py) ---------------------


def test_a_finished_run_shows_how_long_it_took_and_only_a_running_one_ticks(client, project, make_card):
    done, going = make_card(title="Done one"), make_card(title="Going one")
    began = timezone.now() - timedelta(hours=1)
    finished = Run.objects.create(card=done, agent=done.agent, state=RunState.SUCCEEDED, started_at=began,
                                  ended_at=began + timedelta(minutes=2, seconds=5))
    running = Run.objects.create(card=going, agent=going.agent, state=RunState.RUNNING, started_at=began)
    Card.objects.filter(pk=done.pk).update(current_run=finished, column=Column.REVIEW)
    Card.objects.filter(pk=going.pk).update(current_run=running, column=Column.IN_PROGRESS)
    page = client.get(f"/projects/{project.pk}/").content.decode()
    assert '<time class="elapsed" datetime="PT125S">2:05</time>' in page
    assert "data-until" not in page  # nothing for board.js to tick on a finished run
    assert f'<time class="elapsed" data-since="{began.isoformat()}"></time>' in page


def test_the_clock_filter_writes_durations_as_the_board_s_clock_does():
    from board.templatetags.board_tags import clock

    assert [clock(7), clock(750), clock(3723), clock(-5), clock(None)] == ["0:07", "12:30", "1:02:03", "0:00", ""]


def test_the_budget_bars_are_named_by_the_text_beside_them(client, project):
    agent = Agent.objects.create(name="builtin-y", kind=Agent.Kind.BUILTIN, model="openai/x")
    card = Card.objects.create(project=project, agent=agent, title="Spend", column=Column.IN_PROGRESS)
    run = Run.objects.create(card=card, agent=agent, state=RunState.RUNNING, started_at=timezone.now(), steps=3,
                             cost=0.07139999999999999, budget={"steps": 40, "cost": 2.0, "minutes": 30})
    Card.objects.filter(pk=card.pk).update(current_run=run)
    page = client.get(f"/projects/{project.pk}/").content.decode()
    assert '<label class="usage-row">Steps 3/40<progress max="40" value="3"></progress></label>' in page
    assert '<label class="usage-row">$0.0714/$2.00<progress max="2.0" value="0.0714"></progress></label>' in page


def test_a_board_card_has_no_whitespace_between_its_tags(client, project):
    agent = Agent.objects.create(name="builtin-z", kind=Agent.Kind.BUILTIN, model="openai/x")
    _cards(project, agent, 7)
    page = client.get(f"/projects/{project.pk}/").content.decode()
    cards = [c for c in page.split("<article")[1:] if "<textarea" not in c.split("</article>")[0]]
    assert len(cards) >= 5
    for card in cards:
        html = card.split("</article>")[0]
        assert ">\n" not in html and "> <" not in html, html


def test_the_cards_a_board_waits_for_are_read_in_one_query_and_in_the_cards_order(project, make_card):
    first, second, waiting, alone = (make_card(title=t) for t in ("First", "Second", "Waiting", "Alone"))
    waiting.depends_on.add(second, first)
    Card.objects.filter(pk=second.pk).update(position=-1)  # above First in its column
    cards = list(Card.objects.filter(project=project))
    with CaptureQueriesContext(connection) as queries:
        Card.read_dependencies(cards, project.pk)
        waits = {card.title: [dep.title for dep in card.waiting_for] for card in cards}
    assert len(queries) == 1
    assert waits["Waiting"] == ["Second", "First"] and waits["Alone"] == [] and waits["First"] == []


def test_a_queued_card_kept_rendered_shows_its_new_place_when_the_line_moves(client, project, make_card):
    first, second = make_card(title="Queued first"), make_card(title="Queued second")
    runs = []
    for card in (first, second):
        run = Run.objects.create(card=card, agent=card.agent, state=RunState.QUEUED, queued_at=timezone.now())
        Card.objects.filter(pk=card.pk).update(current_run=run, column=Column.IN_PROGRESS)
        runs.append(run)
    url = f"/projects/{project.pk}/"

    def place(page: str, card) -> str:
        html = page[page.index(f'id="card-{card.pk}"'):]
        return html[html.index('class="queue-place'):html.index("</div>", html.index('class="queue-place'))]

    page = client.get(url).content.decode()
    assert "2nd in line" in place(page, second)
    Run.objects.filter(pk=runs[0].pk).update(state=RunState.RUNNING, started_at=timezone.now())
    assert "1st in line" in place(client.get(url).content.decode(), second)


def test_a_kept_card_waiting_for_the_lead_carries_no_empty_token_when_pushed(client, project, make_card):
    from board.consumers import BoardConsumer

    card = make_card(title="Asks")
    run = Run.objects.create(card=card, agent=card.agent, state=RunState.AWAITING_APPROVAL, started_at=timezone.now(),
                             pending={"kind": "question", "detail": "Which one?"})
    Card.objects.filter(pk=card.pk).update(current_run=run, column=Column.IN_PROGRESS)
    page = client.get(f"/projects/{project.pk}/").content.decode()
    assert 'name="csrfmiddlewaretoken" value=""' not in page and "csrf0token0slot" not in page
    holder = type("Consumer", (), {"project_id": project.pk})()
    pushed = BoardConsumer.__dict__["_render_card"].func(holder, card.pk)
    assert "Which one?" in pushed and "csrfmiddlewaretoken" not in pushed  # board.js adds the page's own
