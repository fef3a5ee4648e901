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


async def receive_until(communicator, needle: str, timeout: float = 10.0) -> str:
    """Messages until one contains ``needle``; fails after ``timeout`` seconds."""
    seen = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"no message with {needle!r} in {timeout} s; got {seen!r}")
        try:
            message = await communicator.receive_from(timeout=remaining)
        except asyncio.TimeoutError:
            continue
        seen.append(message[:300])
        if needle in message:
            return message


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
    assert f'id="card-{card.pk}" hx-swap-oob="delete"' in moved and 'data-state="succeeded"' in moved
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
