"""The doorbell between workers and browsers in the embedded mode.

Workers only write event rows; the in-memory channel layer does not cross processes. So each web
process runs one relay task that reads rows newer than the last it saw, by id, a few times a second
(BOARD_RELAY_INTERVAL), and publishes them, one message per card per look, to the channel-layer
groups of their project and card. The
table stays the truth: a consumer that connects renders from it, and the relay only rings.
"""

from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db.models import Max

from board.models import Event

log = logging.getLogger(__name__)

BATCH = 500
_task: asyncio.Task | None = None
_ready: asyncio.Event | None = None


def project_group(project_id: int) -> str:
    """Channel-layer group of everyone watching a project's board."""
    return f"project-{project_id}"


def card_group(card_id: int) -> str:
    """Channel-layer group of everyone watching one card's detail."""
    return f"card-{card_id}"


async def ensure_started() -> None:
    """Start this process's relay on the running event loop, once (again if its loop has ended,
    which happens between tests), and return when it has fixed the row it starts after. A consumer
    that renders from the database after this misses nothing: every later row is pushed."""
    global _task, _ready
    loop = asyncio.get_running_loop()
    if _task is None or _task.done() or _task.get_loop() is not loop:
        _ready = asyncio.Event()
        _task = loop.create_task(_relay(_ready), name="board-event-relay")
    await _ready.wait()


@database_sync_to_async
def _latest_id() -> int:
    return Event.objects.aggregate(m=Max("id"))["m"] or 0


@database_sync_to_async
def _rows_after(last_id: int) -> list[dict]:
    return list(
        Event.objects.filter(id__gt=last_id)
        .order_by("id")
        .values("id", "run_id", "card_id", "project_id", "seq", "kind", "text", "data")[:BATCH]
    )


async def _relay(ready: asyncio.Event) -> None:
    layer = get_channel_layer()
    while True:
        try:
            last_id = await _latest_id()
            break
        except Exception:  # the database may be busy or briefly gone
            log.exception("relay could not read where to start")
            await asyncio.sleep(1)
    ready.set()
    while True:
        try:
            rows = await _rows_after(last_id)
        except Exception:  # the database may be busy or briefly gone; the rows will still be there
            log.exception("relay could not read events")
            await asyncio.sleep(1)
            continue
        if rows:
            last_id = rows[-1]["id"]
        # One message per card per look, holding all its new rows: a run that prints a flood
        # then costs each browser one push per card a few times a second, and the channel layer's
        # per-channel capacity (where messages are dropped silently) is never approached.
        by_card: dict[int, list[dict]] = {}
        for row in rows:
            by_card.setdefault(row["card_id"], []).append(row)
        for card_id, events in by_card.items():
            message = {"type": "board.events", "card_id": card_id, "project_id": events[0]["project_id"], "events": events}
            await layer.group_send(project_group(message["project_id"]), message)
            await layer.group_send(card_group(card_id), message)
        if len(rows) < BATCH:
            await asyncio.sleep(settings.BOARD_RELAY_INTERVAL)
