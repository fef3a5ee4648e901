"""Websocket pushes, through Channels' communicator, in the default mode (no Redis): what another
process writes to the event table reaches a connected board through the web process's relay."""

import asyncio
import os
import subprocess
import sys

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connection

from config.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

HEADERS = [(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")]


_received: dict[int, list[str]] = {}


async def receive_until(communicator, needle: str, timeout: float = 10.0) -> str:
    """The first push from this communicator, since it connected, that contains ``needle``;
    waits up to ``timeout`` seconds for it (the relay may put several events in one push)."""
    history = _received.setdefault(id(communicator), [])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for message in history:
            if needle in message:
                return message
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"no push with {needle!r} in {timeout} s; got {[m[:300] for m in history]!r}")
        try:
            history.append(await communicator.receive_from(timeout=remaining))
        except asyncio.TimeoutError:
            continue


def other_process(code: str) -> None:
    """Run ``code`` in a new Python process with Django set up on the test database."""
    env = {**os.environ, "BOARD_DB_PATH": str(connection.settings_dict["NAME"]), "DJANGO_SETTINGS_MODULE": "config.settings"}
    subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + code],
        cwd=settings.BASE_DIR, env=env, check=True, capture_output=True, timeout=60,
    )


async def test_a_status_change_written_by_another_process_reaches_a_connected_board(make_card, project):
    card = await database_sync_to_async(make_card)()
    run = await database_sync_to_async(card.start)()
    communicator = WebsocketCommunicator(application, f"/ws/projects/{project.pk}/", headers=HEADERS)
    connected, _ = await communicator.connect()
    assert connected
    first = await communicator.receive_from(timeout=5)
    assert f'id="card-{card.pk}"' in first and 'data-state="queued"' in first
    await asyncio.to_thread(
        other_process,
        f"from board.models import Run\nrun = Run.claim({run.pk}, 'elsewhere', 1)\nrun.emit('log', 'compiling the widgets')",
    )
    pushed = await receive_until(communicator, 'data-state="running"')
    assert f'id="card-{card.pk}"' in pushed and 'hx-swap-oob="true"' in pushed
    pushed = await receive_until(communicator, "compiling the widgets")
    await asyncio.to_thread(
        other_process, f"from board.models import Run\nRun.objects.get(pk={run.pk}).finish('succeeded', 'All done')"
    )
    moved = await receive_until(communicator, "afterbegin:#list-review")
    assert f'id="card-{card.pk}"' in moved and 'data-state="succeeded"' in moved
    await communicator.disconnect()


async def test_a_card_page_receives_log_lines_and_the_final_state(make_card):
    card = await database_sync_to_async(make_card)()
    run = await database_sync_to_async(card.start)()
    communicator = WebsocketCommunicator(application, f"/ws/cards/{card.pk}/", headers=HEADERS)
    connected, _ = await communicator.connect()
    assert connected
    first = await communicator.receive_from(timeout=5)
    assert 'id="card-header"' in first and 'id="log"' in first
    await asyncio.to_thread(
        other_process,
        f"from board.models import Run\nrun = Run.claim({run.pk}, 'elsewhere', 1)\nrun.emit('log', 'step one <b>done</b>')\n"
        "run.finish('failed', error='the tests failed')",
    )
    line = await receive_until(communicator, "step one")
    assert 'hx-swap-oob="beforeend"' in line and "&lt;b&gt;done&lt;/b&gt;" in line, "output is escaped"
    final = await receive_until(communicator, "the tests failed")
    assert 'data-state="failed"' in final
    await communicator.disconnect()


async def test_a_board_for_an_unknown_project_is_refused():
    communicator = WebsocketCommunicator(application, "/ws/projects/999/", headers=HEADERS)
    connected, _ = await communicator.connect()
    assert not connected


async def test_a_foreign_origin_is_refused(project):
    communicator = WebsocketCommunicator(
        application, f"/ws/projects/{project.pk}/", headers=[(b"origin", b"http://evil.example"), (b"host", b"127.0.0.1")]
    )
    connected, _ = await communicator.connect()
    assert not connected


async def test_a_line_already_shown_is_not_appended_again(make_card):
    card = await database_sync_to_async(make_card)()
    run = await database_sync_to_async(card.start)()
    watcher = WebsocketCommunicator(application, f"/ws/cards/{card.pk}/", headers=HEADERS)
    assert (await watcher.connect())[0]  # starts the relay
    await watcher.receive_from(timeout=5)
    # Written just before a second page connects: its first render holds the line, and the relay
    # then pushes the same line.
    await database_sync_to_async(run.emit)("log", "only once please")
    page = WebsocketCommunicator(application, f"/ws/cards/{card.pk}/", headers=HEADERS)
    assert (await page.connect())[0]
    await database_sync_to_async(run.emit)("log", "the next line")
    messages = [await page.receive_from(timeout=5)]
    while "the next line" not in messages[-1]:
        messages.append(await page.receive_from(timeout=5))
    assert "".join(messages).count(">only once please</div>") == 1
    await watcher.disconnect()
    await page.disconnect()


async def test_a_deleted_card_disappears_from_open_boards(make_card, project):
    card = await database_sync_to_async(make_card)()
    communicator = WebsocketCommunicator(application, f"/ws/projects/{project.pk}/", headers=HEADERS)
    assert (await communicator.connect())[0]
    await communicator.receive_from(timeout=5)
    await asyncio.to_thread(other_process, f"from board.models import Card\nCard.objects.get(pk={card.pk}).remove()")
    pushed = await receive_until(communicator, f'id="card-{card.pk}" hx-swap-oob="delete"')
    assert "list-" not in pushed, "nothing is inserted back"
    await communicator.disconnect()


async def test_a_flood_of_output_loses_neither_the_move_nor_the_end_nor_lines(make_card, project):
    card = await database_sync_to_async(make_card)()
    run = await database_sync_to_async(card.start)()
    board = WebsocketCommunicator(application, f"/ws/projects/{project.pk}/", headers=HEADERS)
    page = WebsocketCommunicator(application, f"/ws/cards/{card.pk}/", headers=HEADERS)
    assert (await board.connect())[0] and (await page.connect())[0]
    await board.receive_from(timeout=5)
    await page.receive_from(timeout=5)
    await asyncio.to_thread(
        other_process,
        f"from board.models import Run\nrun = Run.claim({run.pk}, 'elsewhere', 1)\n"
        "for i in range(1, 1501):\n    run.emit('log', f'line {i}')\n"
        "run.finish('succeeded', 'flooded')",
    )
    moved = await receive_until(board, "afterbegin:#list-review", timeout=20)
    assert 'data-state="succeeded"' in moved
    await receive_until(page, 'data-state="succeeded"', timeout=20)
    # The header is rendered from the database, so it can say succeeded one relay look before
    # the last lines arrive; they must still come.
    await receive_until(page, ">line 1500</div>", timeout=20)
    pushed = "".join(_received[id(page)])
    shown = [i for i in range(1, 1501) if f">line {i}</div>" in pushed]
    assert shown == list(range(1, 1501)), "every line reaches the open card page, in order"
    assert pushed.index(">line 1<") < pushed.index(">line 1500<")
    await board.disconnect()
    await page.disconnect()


async def test_websocket_paths_the_board_does_not_serve_are_closed_not_errors():
    for path in ("/ws/nope/", "/ws/projects/abc/", "/elsewhere"):
        communicator = WebsocketCommunicator(application, path, headers=HEADERS)
        connected, _ = await communicator.connect()
        assert not connected
