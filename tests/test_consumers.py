"""Websocket pushes, through Channels' communicator, in the default mode (no Redis): what another
process writes to the event table reaches a connected board through the web process's relay."""

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
from channels.db import database_sync_to_async
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings

from board import relay
from board.consumers import CARD_PUSH_GAP, RESUME_WAIT
from board.models import Run
from board.relay import LIVE_PUSH_CHARS
from config.asgi import application
from config.settings import redis_channel_layer
from tests.conftest import shared_database_env

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


def other_process(code: str, **env_vars: str) -> None:
    """Run ``code`` in a new Python process with Django set up on the test database (and
    ``env_vars`` in its environment)."""
    env = {**os.environ, **shared_database_env(), "DJANGO_SETTINGS_MODULE": "config.settings", **env_vars}
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


async def resume(communicator, run_id: int, seq: int) -> None:
    """Send what the card page sends when its socket opens: where its log stands."""
    await communicator.send_to(text_data=json.dumps({"resume": {"run": run_id, "seq": seq}}))


async def test_a_card_page_cut_off_while_its_run_finishes_gets_what_it_missed_on_reconnect(make_card):
    card = await database_sync_to_async(make_card)()
    run = await database_sync_to_async(card.start)()
    await asyncio.to_thread(
        other_process,
        f"from board.models import Run\nrun = Run.claim({run.pk}, 'elsewhere', 1)\nrun.emit('log', 'before the cut')",
    )
    seen = await database_sync_to_async(lambda: Run.objects.get(pk=run.pk).last_seq)()
    page = WebsocketCommunicator(application, f"/ws/cards/{card.pk}/", headers=HEADERS)
    assert (await page.connect())[0]
    await resume(page, run.pk, seen)
    first = await page.receive_from(timeout=5)
    assert 'data-state="running"' in first and 'id="log"' not in first, "only the header: the page has the log"
    await page.disconnect()  # the network drops

    await asyncio.to_thread(
        other_process,
        f"from board.models import Run\nrun = Run.objects.get(pk={run.pk})\nrun.emit('log', 'while away 1')\n"
        "run.emit('log', 'while away 2')\nrun.finish('succeeded', 'All done')",
    )
    again = WebsocketCommunicator(application, f"/ws/cards/{card.pk}/", headers=HEADERS)
    assert (await again.connect())[0]
    await resume(again, run.pk, seen)
    pushed = await receive_until(again, "while away 2")
    assert 'hx-swap-oob="beforeend"' in pushed, "appended to the log the page has"
    assert pushed.index("while away 1") < pushed.index("while away 2")
    assert "before the cut" not in pushed, "nothing the page already shows is sent again"
    assert 'data-state="succeeded"' in pushed and 'id="commits"' in pushed and 'id="diff"' in pushed
    assert 'id="runs"' in pushed and "badge-succeeded" in pushed.split('id="runs"')[1], "the runs table too"
    await again.disconnect()


async def test_junk_from_a_card_page_s_socket_is_ignored_and_the_socket_keeps_serving(make_card):
    card = await database_sync_to_async(make_card)()
    run = await database_sync_to_async(card.start)()
    page = WebsocketCommunicator(application, f"/ws/cards/{card.pk}/", headers=HEADERS)
    assert (await page.connect())[0]
    for junk in ('{"resume": {"run": 1e999, "seq": 0}}', '{"resume": {"run": 1, "seq": 1e999}}',
                 "[" * 100_000 + "]" * 100_000, '{"resume": null}', "x" * 5000, "null"):
        await page.send_to(text_data=junk)
    await resume(page, run.pk, 0)
    pushed = await receive_until(page, 'id="card-header"')
    assert 'data-state="queued"' in pushed
    await page.disconnect()


async def test_a_page_of_an_older_run_or_without_a_resume_point_gets_the_whole_log(make_card):
    card = await database_sync_to_async(make_card)()
    run = await database_sync_to_async(card.start)()
    await database_sync_to_async(run.emit)("log", "the current run's line")
    stale = WebsocketCommunicator(application, f"/ws/cards/{card.pk}/", headers=HEADERS)
    assert (await stale.connect())[0]
    await stale.send_to(text_data="not json at all")  # ignored, not fatal
    await resume(stale, run.pk + 1000, 7)
    pushed = await stale.receive_from(timeout=5)
    assert 'id="log"' in pushed and 'hx-swap-oob="true"' in pushed and "the current run&#x27;s line" in pushed
    await stale.disconnect()
    silent = WebsocketCommunicator(application, f"/ws/cards/{card.pk}/", headers=HEADERS)
    assert (await silent.connect())[0]
    pushed = await silent.receive_from(timeout=RESUME_WAIT + 5)
    assert 'id="log"' in pushed and "the current run&#x27;s line" in pushed
    await silent.disconnect()


async def test_a_page_away_during_a_flood_gets_its_tail_and_is_told_what_it_skipped(make_card):
    card = await database_sync_to_async(make_card)()
    run = await database_sync_to_async(card.start)()
    page = WebsocketCommunicator(application, f"/ws/cards/{card.pk}/", headers=HEADERS)

    def flood():
        for i in range(60):  # 60 chunks of about 20,000 characters: 1.2 MB missed
            run.emit("log", "\n".join(f"chunk {i} line {j} " + "x" * 180 for j in range(100)))

    await database_sync_to_async(flood)()
    assert (await page.connect())[0]
    await resume(page, run.pk, 1)
    pushed = await receive_until(page, "chunk 59 line 99 ")
    assert len(pushed) < LIVE_PUSH_CHARS * 1.5, "one push stays bounded"
    assert "came too fast to show live" in pushed and "chunk 0 line 0 " not in pushed
    await page.disconnect()


async def test_a_board_pushes_a_busy_card_a_few_times_a_second_and_ends_on_its_latest_state(make_card, project):
    card = await database_sync_to_async(make_card)()
    run = await database_sync_to_async(card.start)()
    board = WebsocketCommunicator(application, f"/ws/projects/{project.pk}/", headers=HEADERS)
    assert (await board.connect())[0]
    await board.receive_from(timeout=5)
    layer = get_channel_layer()
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(40):  # as a worker publishing every event would, under Redis
        await database_sync_to_async(run.emit)("step", f"step number {i}")
        row = {"id": 0, "run_id": run.pk, "card_id": card.pk, "project_id": project.pk, "seq": i + 2, "kind": "step", "text": "", "data": {}}
        await layer.group_send(f"project-{project.pk}", {"type": "board.events", "card_id": card.pk, "project_id": project.pk, "events": [row]})
        await asyncio.sleep(0.02)
    await receive_until(board, "step number 39", timeout=5)
    elapsed = loop.time() - started
    pushes = [m for m in _received[id(board)][1:] if f'id="card-{card.pk}"' in m]
    assert len(pushes) <= elapsed / CARD_PUSH_GAP + 2, f"{len(pushes)} pushes in {elapsed:.2f} s"
    await board.disconnect()


@pytest.fixture
def redis_mode(settings):
    """The board's Redis mode on this machine's Redis (REDIS_URL, as the team server sets it), under
    a prefix of its own; returns the environment another process needs for the same mode. Fails,
    never skips, when Redis is not there."""
    url = os.environ.get("BOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"test-{os.getpid()}-{time.monotonic_ns()}"
    settings.CHANNEL_LAYERS = {"default": redis_channel_layer(url, prefix)}
    channel_layers.backends.clear()
    yield {"REDIS_URL": url, "BOARD_REDIS_PREFIX": prefix}
    channel_layers.backends.clear()


async def test_in_redis_mode_a_worker_publishes_its_events_and_no_relay_polls(make_card, project, redis_mode):
    assert relay.publishes_directly()
    card = await database_sync_to_async(make_card)()
    run = await database_sync_to_async(card.start)()
    board = WebsocketCommunicator(application, f"/ws/projects/{project.pk}/", headers=HEADERS)
    page = WebsocketCommunicator(application, f"/ws/cards/{card.pk}/", headers=HEADERS)
    assert (await board.connect())[0] and (await page.connect())[0]
    await board.receive_from(timeout=5)
    await resume(page, run.pk, await database_sync_to_async(lambda: Run.objects.get(pk=run.pk).last_seq)())
    await page.receive_from(timeout=5)
    await asyncio.to_thread(
        other_process,
        f"from board.models import Run\nrun = Run.claim({run.pk}, 'elsewhere', 1)\nrun.emit('log', 'straight through redis')\n"
        "run.finish('succeeded', 'All done')",
        **redis_mode,
    )
    line = await receive_until(page, "straight through redis")
    assert 'hx-swap-oob="beforeend"' in line
    await receive_until(page, 'data-state="succeeded"')
    moved = await receive_until(board, "afterbegin:#list-review")
    assert f'id="card-{card.pk}"' in moved
    assert relay._task is None or relay._task.done() or relay._task.get_loop() is not asyncio.get_running_loop(), \
        "no relay runs in Redis mode"
    await board.disconnect()
    await page.disconnect()


async def test_in_redis_mode_a_board_left_idle_past_redis_read_timeouts_stays_connected(project, redis_mode):
    # channels_redis blocks 5 s waiting for a message and redis-py 8 stopped reading after 5 s:
    # an idle board was closed with 1011 every few seconds (config.settings.redis_channel_layer).
    board = WebsocketCommunicator(application, f"/ws/projects/{project.pk}/", headers=HEADERS)
    assert (await board.connect())[0]
    await board.receive_from(timeout=5)  # the columns, after the resume wait
    await asyncio.sleep(12)  # two of channels_redis's 5 s waits, idle
    assert await board.receive_nothing(timeout=0.5), "an idle board got a message"
    await board.send_to(text_data="{}")  # a live consumer ignores it; a dead one fails the send
    assert await board.receive_nothing(timeout=0.5)
    await board.disconnect()
