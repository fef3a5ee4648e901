"""Moving cards by hand (drag and drop, keys): the server's rules decide each drop, a drop names
only the card's new neighbours and the server places it between them (or first or last when they
left meanwhile), the order within a column is kept, and junk is refused with 400/404, never a 500."""

import pytest
from django.test import Client

from agents import runner
from django.db import connection
from django.test.utils import CaptureQueriesContext

from board.models import Card, Column, Event, RunState

pytestmark = pytest.mark.django_db


@pytest.fixture
def client():
    return Client(HTTP_HOST="127.0.0.1", raise_request_exception=True)


def drop(client, card, column, before=None, after=None):
    """Drop ``card`` on ``column`` between the cards ``before`` (above it) and ``after`` (below)."""
    data = {"column": column, "before": before.pk if before else "", "after": after.pk if after else ""}
    return client.post(f"/cards/{card.pk}/drop", data, HTTP_HX_REQUEST="true")


def backlog_ids(project):
    return list(project.cards.filter(column=Column.BACKLOG).order_by("position", "id").values_list("pk", flat=True))


def test_a_drop_into_in_progress_starts_the_card(client, make_card):
    card = make_card()
    response = drop(client, card, "in_progress")
    card.refresh_from_db()
    assert response.status_code == 200
    assert card.column == Column.IN_PROGRESS and card.current_run.state == RunState.QUEUED
    html = response.content.decode()
    assert html.startswith('<div hx-swap-oob="afterbegin:#list-in_progress">') and f'id="card-{card.pk}"' in html


def test_a_drop_into_in_progress_keeps_the_place_it_was_dropped_at(client, make_card, project):
    first, second, third = make_card(title="one"), make_card(title="two"), make_card(title="three")
    first.start()
    second.start()  # on top of the first
    response = drop(client, third, "in_progress", before=second, after=first)
    order = list(project.cards.filter(column=Column.IN_PROGRESS).order_by("position", "id").values_list("pk", flat=True))
    assert order == [second.pk, third.pk, first.pk]
    assert response.content.decode().startswith(f'<div hx-swap-oob="afterend:#card-{second.pk}">')


def test_a_drop_into_done_is_refused_with_the_reason_and_the_card_stays(client, make_card):
    card = make_card()
    response = drop(client, card, "done")
    card.refresh_from_db()
    assert response.status_code == 409
    assert card.column == Column.BACKLOG
    html = response.content.decode()
    assert "reaches Done only by landing" in html and "afterbegin:#list-backlog" in html  # back where it was


def test_a_drop_into_review_is_refused_for_a_card_whose_run_did_not_succeed(client, make_card):
    card = make_card("exit 3")
    runner.execute(card.start().pk)
    card.refresh_from_db()
    assert card.current_run.state == RunState.FAILED
    response = drop(client, card, "review")
    card.refresh_from_db()
    assert response.status_code == 409 and "only when a run" in response.content.decode()
    assert card.column == Column.IN_PROGRESS


def test_a_running_card_does_not_go_back_to_the_backlog(client, make_card):
    card = make_card()
    card.start()
    response = drop(client, card, "backlog")
    card.refresh_from_db()
    assert response.status_code == 409 and "stop it before" in response.content.decode()
    assert card.column == Column.IN_PROGRESS


def test_an_idle_card_goes_back_to_the_backlog_at_the_place_it_was_dropped(client, make_card, project):
    card, other = make_card("exit 1"), make_card(title="other")
    runner.execute(card.start().pk)
    response = drop(client, card, "backlog", before=other)
    card.refresh_from_db()
    assert response.status_code == 200 and card.column == Column.BACKLOG
    assert backlog_ids(project) == [other.pk, card.pk]


def test_a_done_card_does_not_leave_done_by_a_drop(client, make_card):
    card = make_card()
    card.mark_done()
    for column in ("backlog", "in_progress", "review"):
        assert drop(client, card, column).status_code == 409
    card.refresh_from_db()
    assert card.column == Column.DONE


def test_reordering_the_backlog_is_kept_and_told_to_open_boards(client, make_card, project):
    a, b, c = make_card(title="a"), make_card(title="b"), make_card(title="c")
    response = drop(client, c, "backlog", after=a)
    assert response.status_code == 200
    assert backlog_ids(project) == [c.pk, a.pk, b.pk]
    event = Event.objects.filter(card_id=c.pk, kind="card").last()
    assert event.data == {"from": "backlog", "to": "backlog", "placed": "backlog"}
    # The board page renders that order too.
    html = client.get(f"/projects/{project.pk}/").content.decode()
    assert html.index(f'id="card-{c.pk}"') < html.index(f'id="card-{a.pk}"') < html.index(f'id="card-{b.pk}"')


def test_a_card_goes_above_its_lower_neighbour_when_the_upper_one_left_meanwhile(client, make_card, project):
    a, b, c, gone = make_card(title="a"), make_card(title="b"), make_card(title="c"), make_card(title="gone")
    gone.mark_done()  # the browser still had it above the drop
    drop(client, a, "backlog", before=gone, after=c)
    assert backlog_ids(project) == [b.pk, a.pk, c.pk]


@pytest.mark.parametrize("sent, expected", [
    ({"before": "", "after": "999999"}, "top"),  # dropped first: it stays first
    ({"before": "999999", "after": ""}, "bottom"),  # dropped last: it stays last
    ({"before": "999998", "after": "999999"}, "bottom"),
])
def test_a_card_whose_neighbours_both_left_goes_to_the_top_or_the_bottom(client, make_card, project, sent, expected):
    a, b, c = make_card(title="a"), make_card(title="b"), make_card(title="c")
    response = client.post(f"/cards/{b.pk}/drop", {"column": "backlog", **sent}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert backlog_ids(project) == ([b.pk, a.pk, c.pk] if expected == "top" else [a.pk, c.pk, b.pk])


def test_a_drop_in_a_long_column_writes_the_moved_card_alone_once_positions_have_gaps(client, make_card, project):
    cards = [make_card(title=f"card {i}") for i in range(60)]
    drop(client, cards[59], "backlog", before=cards[10], after=cards[11])  # created one apart: renumbered once
    with CaptureQueriesContext(connection) as queries:
        response = drop(client, cards[0], "backlog", before=cards[30], after=cards[31])
    assert response.status_code == 200
    writes = [q["sql"] for q in queries if q["sql"].startswith("UPDATE") and '"board_card"' in q["sql"]]
    assert len(writes) == 1, writes
    order = backlog_ids(project)
    assert order.index(cards[0].pk) == order.index(cards[30].pk) + 1 == order.index(cards[31].pk) - 1
    assert order.index(cards[59].pk) == order.index(cards[10].pk) + 1
    assert len(response.content) < 5000, "the answer is the card, not the column"


def test_placing_between_neighbours_with_no_room_renumbers_the_column_in_order(make_card, project):
    a, b, c = make_card(title="a"), make_card(title="b"), make_card(title="c")
    Card.objects.filter(pk__in=[a.pk, b.pk, c.pk]).update(position=5)  # ties: by id
    c.refresh_from_db()
    c.place(before=a.pk, after=b.pk)
    assert backlog_ids(project) == [a.pk, c.pk, b.pk]
    assert len(set(project.cards.values_list("position", flat=True))) == 3


@pytest.mark.parametrize("data", [
    {"column": "nowhere"},
    {"column": ""},
    {"column": "backlog", "before": "x"},
    {"column": "backlog", "after": "1,3"},
    {"column": "backlog", "before": "99999999999999999999999"},
    {"column": "backlog\x00", "after": "-1"},
    {"column": "backlog", "before": "\u00b2"},  # a digit to str.isdigit, not to int()
])
def test_junk_columns_and_orders_are_400(client, make_card, data):
    card = make_card()
    response = client.post(f"/cards/{card.pk}/drop", data)
    assert response.status_code == 400


def test_a_drop_of_a_card_that_does_not_exist_is_404_and_a_get_is_405(client, make_card):
    card = make_card()
    assert client.post("/cards/999999/drop", {"column": "backlog"}).status_code == 404
    assert client.get(f"/cards/{card.pk}/drop").status_code == 405


def test_mark_done_puts_an_idle_card_in_done_and_refuses_while_it_runs(client, make_card):
    running, idle = make_card(title="running"), make_card(title="idle")
    running.start()
    refused = client.post(f"/cards/{running.pk}/mark-done", HTTP_HX_REQUEST="true")
    assert refused.status_code == 409 and "running" in refused.content.decode()
    done = client.post(f"/cards/{idle.pk}/mark-done", HTTP_HX_REQUEST="true")
    idle.refresh_from_db()
    running.refresh_from_db()
    assert done.status_code == 200 and idle.column == Column.DONE and not idle.landed_commit
    assert running.column == Column.IN_PROGRESS
    assert client.post(f"/cards/{idle.pk}/mark-done", HTTP_HX_REQUEST="true").status_code == 409


def test_the_board_offers_mark_done_on_idle_cards(client, make_card, project):
    card = make_card()
    html = client.get(f"/projects/{project.pk}/").content.decode()
    assert f"/cards/{card.pk}/mark-done" in html and "Sortable.min.js" in html and "dnd.js" in html


@pytest.mark.django_db(transaction=True)
async def test_a_reorder_reaches_other_open_boards_as_the_column_s_list_only(make_card, project):
    import asyncio

    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator

    from config.asgi import application
    from tests.test_consumers import HEADERS, other_process, receive_until

    a = await database_sync_to_async(make_card)(title="a")
    b = await database_sync_to_async(make_card)(title="b")
    communicator = WebsocketCommunicator(application, f"/ws/projects/{project.pk}/", headers=HEADERS)
    assert (await communicator.connect())[0]
    await communicator.receive_from(timeout=5)  # the whole board, on connect
    await asyncio.to_thread(other_process, f"from board.models import Card\nCard.objects.get(pk={b.pk}).reorder([{b.pk}, {a.pk}])")
    pushed = await receive_until(communicator, 'id="list-backlog"')
    assert 'id="columns"' not in pushed and 'id="list-done"' not in pushed, "only the reordered list"
    assert pushed.index(f'id="card-{b.pk}"', pushed.index('id="list-backlog"')) < pushed.rindex(f'id="card-{a.pk}"')
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_card_placed_by_hand_reaches_other_open_boards_alone_under_its_new_neighbour(make_card, project):
    import asyncio

    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator

    from config.asgi import application
    from tests.test_consumers import HEADERS, other_process, receive_until

    a = await database_sync_to_async(make_card)(title="a")
    b = await database_sync_to_async(make_card)(title="b")
    c = await database_sync_to_async(make_card)(title="c")
    communicator = WebsocketCommunicator(application, f"/ws/projects/{project.pk}/", headers=HEADERS)
    assert (await communicator.connect())[0]
    await communicator.receive_from(timeout=5)  # the whole board, on connect
    await asyncio.to_thread(other_process, f"from board.models import Card\nCard.objects.get(pk={c.pk}).place({a.pk}, {b.pk})")
    pushed = await receive_until(communicator, f'id="card-{c.pk}"')
    assert pushed.startswith(f'<div hx-swap-oob="afterend:#card-{a.pk}">')
    assert 'id="list-backlog"' not in pushed and f'id="card-{b.pk}"' not in pushed, "the card alone, not its list"
    await communicator.disconnect()
