"""Websocket consumers. They only push HTML for htmx's ws extension (each top-level element is
swapped by its id); every write goes through a normal POST view. The one message a browser sends
is the card page's resume point (see CardConsumer)."""

from __future__ import annotations

import asyncio
import json

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string

from board import access, relay
from board.models import Card, Column, Event, Project, RunState
from board.views import LOG_KINDS, board_context, card_context, queue_places

# Event kinds that change what a card shows on the board or in its detail.
BOARD_KINDS = {"card", "state", "step", "log", "checkpoint", "usage", "approval", "check"}
# Seconds between two pushes of one card to one browser: updates in between are folded into the
# next push, which renders the card as it is then (five updates a second per card at most); a
# card quiet for that long is pushed at once.
CARD_PUSH_GAP = 0.2
# Seconds a card page's socket waits for the browser's resume point before sending the whole log.
RESUME_WAIT = 2.0


class BoardConsumer(AsyncWebsocketConsumer):
    """Pushes card updates of one project's board: a card re-rendered in place, or moved to the top
    of its new column, at most once every CARD_PUSH_GAP seconds per card. When runs start or end
    anywhere, its queued cards are re-rendered, since their places in the queue moved.

    On (re)connect the page says what it shows, as JSON ``{"since": <the last event id when its
    columns were rendered>, "cards": [ids of the cards on it]}``: the consumer pushes only the cards
    with events after that (and the queued ones, if runs changed state anywhere) and removes those
    gone. Without that message within RESUME_WAIT seconds it sends all columns. A page of a
    thousand cards is thus never sent twice on load: the whole board is over a megabyte, more than
    one websocket message may carry (autobahn's limit), and swapping it in froze the page for a
    second (bench/board_render.py)."""

    synced = False
    fallback: asyncio.Task | None = None

    async def connect(self):
        self.project_id = self.scope["url_route"]["kwargs"]["project_id"]
        if not await database_sync_to_async(Project.objects.filter(pk=self.project_id).exists)():
            await self.close(code=4404)
            return
        if not await database_sync_to_async(access.may_watch)(self.scope, self.project_id):
            await self.close(code=4403)
            return
        self.last_push: dict[int, float] = {}
        self.later: dict[int, asyncio.Task] = {}
        self.moves: dict[int, dict] = {}
        await self.channel_layer.group_add(relay.project_group(self.project_id), self.channel_name)
        await self.channel_layer.group_add(relay.QUEUE_GROUP, self.channel_name)
        await self.accept()
        await relay.ensure_started()
        self.fallback = asyncio.get_running_loop().create_task(self._columns_later())

    async def _columns_later(self) -> None:
        await asyncio.sleep(RESUME_WAIT)
        if not self.synced:
            self.synced = True
            await self.send(text_data=await self._render_columns())

    async def receive(self, text_data=None, bytes_data=None):
        """The page's resume point (see the class); anything else is ignored."""
        if self.synced or not text_data or len(text_data) > 200_000:  # ids of a big board: tens of KB
            return
        try:
            point = json.loads(text_data)
            since = int(point["since"])
            shown = {int(card_id) for card_id in point.get("cards", [])}
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):  # junk: ignored
            return
        self.synced = True
        if self.fallback is not None:
            self.fallback.cancel()
        changed, moved, gone = await self._changed_since(since, shown)
        if gone:
            await self.send(text_data="".join(f'<div id="card-{card_id}" hx-swap-oob="delete"></div>' for card_id in sorted(gone)))
        for card_id in changed:
            if card_id in moved:
                self.moves[card_id] = {"moved": True, "created": False}
            await self._push(card_id)

    @database_sync_to_async
    def _changed_since(self, since: int, shown: set[int]) -> tuple[list[int], set[int], set[int]]:
        """The project's cards with events after ``since`` (and its queued cards when runs changed
        state anywhere), those of them that changed column, and the ids in ``shown`` that are no
        longer the project's cards."""
        # Distinct pairs: a page back after a flood of output must not read one row per event.
        rows = list(Event.objects.filter(project_id=self.project_id, id__gt=since).values_list("card_id", "kind").order_by().distinct())
        changed = {card_id for card_id, _ in rows}
        moved = {card_id for card_id, kind in rows if kind == "card"}
        if Event.objects.filter(id__gt=since, kind="state").exists():
            changed.update(Card.objects.filter(project_id=self.project_id, current_run__state=RunState.QUEUED).values_list("pk", flat=True))
        present = set(Card.objects.filter(project_id=self.project_id, pk__in=shown).values_list("pk", flat=True)) if shown else set()
        changed -= shown - present
        return sorted(changed), moved, shown - present

    async def disconnect(self, code):
        for task in getattr(self, "later", {}).values():
            task.cancel()
        if self.fallback is not None:
            self.fallback.cancel()
        await self.channel_layer.group_discard(relay.project_group(self.project_id), self.channel_name)
        await self.channel_layer.group_discard(relay.QUEUE_GROUP, self.channel_name)

    @database_sync_to_async
    def _render_columns(self) -> str:
        project = Project.objects.get(pk=self.project_id)
        return render_to_string("board/board.html#columns", board_context(project, oob=True))

    @database_sync_to_async
    def _render_card(self, card_id: int, moved: bool = False, created: bool = False, lists=(), placed: bool = False) -> str:
        card = Card.objects.select_related("agent", "current_run").filter(pk=card_id).first()
        if card is None or card.project_id != self.project_id:  # deleted
            return f'<div id="card-{card_id}" hx-swap-oob="delete"></div>'
        context = {"card": card, "moved": moved, "created": created, "queue": queue_places([card.current_run])}
        if placed:  # moved by hand (Card.place): the card alone, under the card above it now
            html = render_to_string("board/_placed.html", {**context, "above": card.card_above()})
        else:
            html = render_to_string("board/board.html#card-push", context)
        if lists:  # only the lists reordered, not the whole board
            board = board_context(card.project, oob=True)
            html += "".join(render_to_string("board/board.html#column-list", {**board, "column": column, "oob": False, "list_oob": True})
                            for column in board["columns"] if column["value"] in lists)
        return html

    @database_sync_to_async
    def _queued_cards(self) -> list[int]:
        return list(Card.objects.filter(project_id=self.project_id, current_run__state=RunState.QUEUED).values_list("pk", flat=True))

    async def board_events(self, message):
        """All of one card's new events since the last message: the card rendered once."""
        events = message["events"]
        if not any(e["kind"] in BOARD_KINDS for e in events):
            return
        moves = [e["data"] for e in events if e["kind"] == "card" and e["data"].get("to")]
        flags = self.moves.setdefault(message["card_id"], {"moved": False, "created": False})
        flags["created"] |= any(m.get("from") is None for m in moves)
        flags["moved"] |= any(m.get("from") != m.get("to") for m in moves)
        # A column put in a new order by hand (Card.reorder): its list is pushed whole, after the card.
        reordered = {m["reordered"] for m in moves if m.get("reordered") in Column.values}
        if reordered:
            flags["lists"] = sorted(set(flags.get("lists", ())) | reordered)
        # A card placed by hand (Card.place, a drop): it alone moves, whatever the column's length.
        if any(m.get("placed") in Column.values for m in moves):
            flags["placed"] = True
        await self._push(message["card_id"])

    async def board_queue(self, message):
        """Runs started or ended somewhere: this board's queued cards show new places."""
        for card_id in await self._queued_cards():
            await self._push(card_id)

    async def _push(self, card_id: int) -> None:
        if card_id in self.later:  # a push is already due; it will show this too
            return
        wait = self.last_push.get(card_id, 0.0) + CARD_PUSH_GAP - asyncio.get_running_loop().time()
        if wait > 0:
            self.later[card_id] = asyncio.get_running_loop().create_task(self._push_after(card_id, wait))
            return
        await self._send_card(card_id)

    async def _push_after(self, card_id: int, wait: float) -> None:
        await asyncio.sleep(wait)
        del self.later[card_id]
        await self._send_card(card_id)

    async def _send_card(self, card_id: int) -> None:
        self.last_push[card_id] = asyncio.get_running_loop().time()
        flags = self.moves.pop(card_id, {})
        await self.send(text_data=await self._render_card(card_id, **flags))


class CardConsumer(AsyncWebsocketConsumer):
    """Pushes one card's detail: new log lines appended, the header (state, last line) re-rendered,
    and the commits and diff when a run ends or checkpoints; at most once every CARD_PUSH_GAP
    seconds.

    The page says where its log stands when the socket opens, as JSON
    ``{"resume": {"run": <run id>, "seq": <last sequence number shown>}}``; the consumer answers
    with what the page missed (from the table) and the header. Without that message within
    RESUME_WAIT seconds, or for another run than the card's current one, it sends the header and
    the log's tail afresh. It then remembers the run and the last sequence number handled, so a
    line is never appended twice, and a gap in what the channel layer brought is filled from the
    table."""

    run_id: int | None = None
    seq = 0
    synced = False
    last_push = 0.0
    later: asyncio.Task | None = None

    async def connect(self):
        self.card_id = self.scope["url_route"]["kwargs"]["card_id"]
        project_id = await database_sync_to_async(Card.objects.filter(pk=self.card_id).values_list("project_id", flat=True).first)()
        if project_id is None:
            await self.close(code=4404)
            return
        if not await database_sync_to_async(access.may_watch)(self.scope, project_id):
            await self.close(code=4403)
            return
        await self.channel_layer.group_add(relay.card_group(self.card_id), self.channel_name)
        await self.accept()
        await relay.ensure_started()
        self.buffer: list[dict] = []
        self.fallback = asyncio.get_running_loop().create_task(self._sync_later())

    async def disconnect(self, code):
        for task in (getattr(self, "fallback", None), self.later):
            if task is not None:
                task.cancel()
        await self.channel_layer.group_discard(relay.card_group(self.card_id), self.channel_name)

    async def _sync_later(self) -> None:
        await asyncio.sleep(RESUME_WAIT)
        if not self.synced:
            self.synced = True
            await self.send(text_data=await self._render(["header", "log"]))

    async def receive(self, text_data=None, bytes_data=None):
        """The page's resume point; anything else is ignored."""
        if not text_data or len(text_data) > 1000:  # a resume point is a few dozen characters
            return
        try:
            point = json.loads(text_data)["resume"]
            run_id, seq = int(point["run"]), int(point["seq"])
        except (ValueError, TypeError, KeyError, OverflowError, RecursionError):  # junk: ignored
            return
        if self.synced:  # already sent the page what it needs
            return
        self.synced = True
        self.fallback.cancel()
        await self.send(text_data=await self._resume(run_id, seq))

    @database_sync_to_async
    def _resume(self, run_id: int, seq: int) -> str:
        card = Card.objects.filter(pk=self.card_id).values_list("current_run_id", flat=True).first()
        if card is None or card != run_id or seq < 0:
            return self._render_sync(["header", "log"])
        self.run_id, self.seq = run_id, seq
        html = self._events_html(relay.stored_rows(run_id, seq))
        if 'id="card-header"' not in html:  # nothing missed; the header is cheap and always right
            html += self._render_sync(["header"])
        return html

    @database_sync_to_async
    def _render(self, parts: list[str]) -> str:
        return self._render_sync(parts)

    def _render_sync(self, parts: list[str]) -> str:
        card = Card.objects.select_related("project", "agent", "current_run").filter(pk=self.card_id).first()
        if card is None:
            return '<section id="card-header" class="panel" hx-swap-oob="true"><p role="alert">This card was deleted.</p></section>'
        context = {**card_context(card, tuple(parts)), "oob": True}
        if "log" in parts:
            self.run_id = card.current_run_id
            self.seq = context["events"][-1].seq if context["events"] else 0
        return "".join(render_to_string(f"board/card_detail.html#{p}", context) for p in parts)

    def _events_html(self, events: list[dict]) -> str:
        """HTML for new events of the card: log lines of the current run appended (a new run gets
        its log afresh), the header once, commits and diff when a run ended or checkpointed."""
        html = ""
        mine = [e for e in events if e["run_id"] == self.run_id and e["seq"] > self.seq]
        if mine and mine[0]["seq"] > self.seq + 1:
            # What the channel layer did not bring, or what came between the page's render and
            # the first message: read from the table.
            mine = relay.cut_flood(relay.stored_rows(self.run_id, self.seq, mine[0]["seq"]) + mine)
        if any(e["run_id"] not in (None, self.run_id) and e["seq"] > 0 for e in events):
            html += self._render_sync(["log"])
        elif mine:
            self.seq = mine[-1]["seq"]
            lines = [e for e in mine if e["kind"] in LOG_KINDS]
            shown = [e for e in lines if not e.get("cut")]
            if lines:
                html += render_to_string("board/card_detail.html#log-push", {"events": shown, "skipped": len(lines) - len(shown)})
        kinds = {e["kind"] for e in events}
        if kinds & BOARD_KINDS:  # the header shows the latest line
            parts = ["header"]
            ended = any(e["kind"] == "state" and e["text"] not in ("queued", "running") for e in events)
            if "checkpoint" in kinds or ended:
                parts += ["commits", "diff"]
            if "state" in kinds:
                parts.append("runs")
            html += self._render_sync(parts)
        return html

    async def board_events(self, message):
        """The card's new events: pushed at once when the page has had nothing for
        CARD_PUSH_GAP seconds, else folded into one push at the end of the gap."""
        if not self.synced:  # the resume answer, read from the table later, will hold these
            return
        self.buffer.extend(message["events"])
        if self.later is not None:
            return
        wait = self.last_push + CARD_PUSH_GAP - asyncio.get_running_loop().time()
        if wait > 0:
            self.later = asyncio.get_running_loop().create_task(self._flush_after(wait))
            return
        await self._flush()

    async def _flush_after(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self.later = None
        await self._flush()

    async def _flush(self) -> None:
        self.last_push = asyncio.get_running_loop().time()
        events, self.buffer = relay.cut_flood(self.buffer), []
        html = await database_sync_to_async(self._events_html)(events)
        if html:
            await self.send(text_data=html)


class RefusingConsumer(AsyncWebsocketConsumer):
    """Closes websockets to paths the board does not serve."""

    async def connect(self):
        await self.close(code=4404)
