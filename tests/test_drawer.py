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
