"""The doorbell between workers and browsers.

The event table is the truth; the channel layer only rings. How an event reaches the consumers
depends on the channel layer:

- Embedded mode (in-memory layer, which does not cross processes): workers only write rows. Each
  web process runs one relay task that reads rows newer than the last it saw, by id, a few times
  a second (BOARD_RELAY_INTERVAL), and publishes them, one message per card per look.
- Redis mode (REDIS_URL set, channels_redis): whoever writes an event publishes it after its
  transaction commits (``publish_on_commit``, wired to Event's post_save); no relay runs.

Either way a message is ``{"type": "board.events", "card_id", "project_id", "events": [row, …]}``,
rows as ``event_row`` gives them, oldest first, with the text of output beyond LIVE_PUSH_CHARS per
message left out (``"cut": True``): a flood costs each browser a few bounded pushes a second, and
what it did not get live stays in the table for "Load earlier". A message to QUEUE_GROUP says run
states changed, so boards can re-render their queued cards' places in the queue.
"""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.db.models.functions import Length

from board.models import Event

log = logging.getLogger(__name__)

BATCH = 200  # rows read per look: with output chunks of 32,000 characters at most, a few MB
LIVE_PUSH_CHARS = 200_000  # characters of output one message carries to a card's page at most
QUEUE_GROUP = "run-queue"
EVENT_FIELDS = ("id", "run_id", "card_id", "project_id", "seq", "kind", "text", "data")
_task: asyncio.Task | None = None
_ready: asyncio.Event | None = None


def project_group(project_id: int) -> str:
    """Channel-layer group of everyone watching a project's board."""
    return f"project-{project_id}"


def card_group(card_id: int) -> str:
    """Channel-layer group of everyone watching one card's detail."""
    return f"card-{card_id}"


def publishes_directly() -> bool:
    """Whether writers publish their events themselves (a channel layer that crosses processes)
    rather than a relay in each web process reading the table."""
    return "InMemory" not in settings.CHANNEL_LAYERS["default"]["BACKEND"]


def event_row(event: Event) -> dict:
    """An event as messages carry it: the EVENT_FIELDS as a dict."""
    return {name: getattr(event, name) for name in EVENT_FIELDS}


def messages_for(rows: list[dict]) -> list[dict]:
    """The messages for ``rows`` (event rows, oldest first): one per card with all its rows, the
    text of output beyond LIVE_PUSH_CHARS per card cut (the newest kept), and one QUEUE_GROUP
    message (``"type": "board.queue"``, with ``"group"``) when any row is a run's state change."""
    by_card: dict[int, list[dict]] = {}
    for row in rows:
        by_card.setdefault(row["card_id"], []).append(row)
    messages = []
    for card_id, events in by_card.items():
        cut_flood(events)
        messages.append({"type": "board.events", "card_id": card_id, "project_id": events[0]["project_id"], "events": events})
    if any(row["kind"] == "state" and row["seq"] > 0 for row in rows):
        messages.append({"type": "board.queue", "group": QUEUE_GROUP})
    return messages


def cut_flood(rows: list[dict]) -> list[dict]:
    """Leave out, in place, the text of output rows ("log") beyond LIVE_PUSH_CHARS characters
    counted from the newest, marking them ``"cut": True``. Returns ``rows``."""
    budget = LIVE_PUSH_CHARS
    for row in reversed(rows):
        if row["kind"] == "log" and not row.get("cut"):
            budget -= len(row["text"]) + 1
            if budget < 0:
                row.update(text="", cut=True)
    return rows


def stored_rows(run_id: int, after: int, before: int | None = None) -> list[dict]:
    """The rows of run ``run_id`` with ``after`` < seq < ``before``, oldest first, as messages
    carry them, flood text cut as cut_flood does, without ever reading the cut text from the
    database: what a browser missed, however much that was."""
    rows = Event.objects.filter(run_id=run_id, seq__gt=after)
    if before is not None:
        rows = rows.filter(seq__lt=before)
    sizes = list(rows.order_by("seq").annotate(chars=Length("text")).values_list("id", "kind", "chars"))
    budget, keep = LIVE_PUSH_CHARS, set()
    for event_id, kind, chars in reversed(sizes):
        if kind == "log":
            budget -= (chars or 0) + 1
            if budget < 0:
                continue
        keep.add(event_id)
    full = {row["id"]: row for row in rows.filter(id__in=keep).values(*EVENT_FIELDS)} if keep else {}
    cut = rows.exclude(id__in=keep).values(*(f for f in EVENT_FIELDS if f != "text")) if len(keep) < len(sizes) else []
    for row in cut:
        full[row["id"]] = {**row, "text": "", "cut": True}
    return [full[event_id] for event_id, _, _ in sizes if event_id in full]


async def publish(rows: list[dict]) -> None:
    """Send ``rows`` to the groups that watch them (see messages_for)."""
    layer = get_channel_layer()
    for message in messages_for(rows):
        if message["type"] == "board.queue":
            await layer.group_send(QUEUE_GROUP, {"type": "board.queue"})
            continue
        await layer.group_send(project_group(message["project_id"]), message)
        await layer.group_send(card_group(message["card_id"]), message)


def publish_on_commit(sender, instance: Event, created: bool, **kwargs) -> None:
    """post_save receiver of Event: in Redis mode, publish a new event once its transaction has
    committed (never before: a browser told of a row must find it in the table). A failed publish
    is logged and dropped; browsers catch up from the table when they reconnect."""
    if not created or not publishes_directly():
        return
    row = event_row(instance)

    def send() -> None:
        try:
            async_to_sync(publish)([row])
        except Exception:  # Redis briefly gone: the row is stored; readers catch up from the table
            log.exception("could not publish event %s", row["id"])

    transaction.on_commit(send)


async def ensure_started() -> None:
    """Start this process's relay on the running event loop, once (again if its loop has ended,
    which happens between tests), and return when it has fixed the row it starts after. A consumer
    that renders from the database after this misses nothing: every later row is pushed. Does
    nothing where writers publish directly."""
    global _task, _ready
    if publishes_directly():
        return
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
    return list(Event.objects.filter(id__gt=last_id).order_by("id").values(*EVENT_FIELDS)[:BATCH])


async def _relay(ready: asyncio.Event) -> None:
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
            await publish(rows)
        if len(rows) < BATCH:
            await asyncio.sleep(settings.BOARD_RELAY_INTERVAL)
