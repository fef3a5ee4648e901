"""The card's drawer on the board: the card page's own partials in four tabs, ids that never
clash with the board's."""

import re
from collections import Counter

import pytest
from django.test import Client

from agents import runner
from board.models import RunState

pytestmark = pytest.mark.django_db


@pytest.fixture
def client():
    return Client(HTTP_HOST="127.0.0.1", raise_request_exception=True)


def ids(html: str) -> list[str]:
    return re.findall(r'\sid="([^"]+)"', html)


def test_the_drawer_shows_the_cards_partials_in_four_tabs(client, make_card):
    card = make_card("echo drawn-output > out.txt && echo drawn-output", title="Draw me")
    runner.execute(card.start().pk)
    card.refresh_from_db()
    assert card.current_run.state == RunState.SUCCEEDED, card.current_run.error

    html = client.get(f"/cards/{card.pk}/drawer").content.decode()

    assert 'role="dialog"' in html and 'aria-modal="false"' in html and 'aria-labelledby="drawer-title"' in html
    tabs = re.findall(r'role="tab"[^>]*>([^<]+)<', html)
    assert tabs == ["Activity", "Diff", "Checkpoints", "Settings"]
    assert html.count('aria-selected="true"') == 1
    for part in ("card-header", "log", "diff", "commits", "runs", "card-settings"):
        assert f'id="{part}"' in html, part
    assert "drawn-output" in html, "the live log starts with the run's output"
    assert f'ws-connect="/ws/cards/{card.pk}/"' in html
    assert "Delete card" in html


def test_the_drawer_of_an_unknown_card_is_not_found(client, project):
    assert client.get("/cards/999999/drawer").status_code == 404


def test_the_drawer_and_the_board_page_have_no_element_id_in_common(client, make_card):
    card = make_card(title="Unique ids")
    board = client.get(f"/projects/{card.project_id}/").content.decode()
    drawer = client.get(f"/cards/{card.pk}/drawer").content.decode()

    assert not set(ids(board)) & set(ids(drawer))
    assert [i for i, n in Counter(ids(drawer)).items() if n > 1] == []


# Forms inside the drawer post with htmx into #drawer-slot (drawer.js) and get the drawer back.
DRAWER = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "drawer-slot"}


def test_a_form_posted_from_the_drawer_answers_the_drawer_not_a_redirect(client, make_card):
    card = make_card(title="Finish me")

    response = client.post(f"/cards/{card.pk}/mark-done", **DRAWER)

    html = response.content.decode()
    assert response.status_code == 200
    assert 'id="drawer"' in html and 'role="tab"' in html
    assert "drawer-message" not in html
    card.refresh_from_db()
    assert card.column == "done"


def test_a_refusal_in_the_drawer_shows_its_reason_at_the_drawers_top(client, make_card):
    card = make_card(title="Done already")
    card.mark_done()

    response = client.post(f"/cards/{card.pk}/mark-done", **DRAWER)

    html = response.content.decode()
    assert response.status_code == 409
    assert re.search(r'id="drawer-message"[^>]*role="alert">This card is done already\.<', html)
    assert 'id="drawer"' in html


def test_card_settings_saved_from_the_drawer_stay_in_the_drawer_with_a_note(client, make_card):
    card = make_card(title="Settle me")

    response = client.post(f"/cards/{card.pk}/settings", {"mode": "act", "max_steps": "7"}, **DRAWER)

    html = response.content.decode()
    assert response.status_code == 200
    assert "Card settings saved; the next run uses them." in html
    assert 'id="drawer-max_steps"' in html and 'value="7"' in html
    card.refresh_from_db()
    assert card.max_steps == 7


def test_bad_card_settings_from_the_drawer_come_back_with_their_errors_in_the_drawer(client, make_card):
    card = make_card(title="Settle me badly")

    response = client.post(f"/cards/{card.pk}/settings", {"mode": "act", "max_steps": "0"}, **DRAWER)

    html = response.content.decode()
    assert response.status_code == 422
    assert "The settings were not saved" in html and "at least 1" in html
    assert 'id="drawer"' in html


def test_deleting_from_the_drawer_says_so_there_and_takes_the_tile_off_the_board(client, make_card):
    card = make_card(title="Delete me")

    response = client.post(f"/cards/{card.pk}/delete", **DRAWER)

    html = response.content.decode()
    assert response.status_code == 200
    assert f"Card #{card.pk} deleted." in html
    assert f'<div id="card-{card.pk}" hx-swap-oob="delete"></div>' in html


def test_the_same_forms_outside_the_drawer_still_redirect_to_the_card_page(client, make_card):
    card = make_card(title="Page forms")

    response = client.post(f"/cards/{card.pk}/settings", {"mode": "act"})

    assert response.status_code == 302 and response["Location"] == f"/cards/{card.pk}/"
