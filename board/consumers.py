"""Websocket consumers. They only push HTML for htmx's ws extension (each top-level element is
swapped by its id); every write goes through a normal POST view."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.template.loader import render_to_string

from board import relay
from board.models import Card, Project
from board.views import LOG_KINDS, board_context, card_context, queue_places

# Event kinds that change what a card shows on the board or in its detail.
BOARD_KINDS = {"card", "state", "step", "log", "checkpoint", "usage", "approval", "check"}
# Characters of new output one push may carry to a card page; a flood beyond it shows its tail
# and says how much it left out (all of it stays stored with the run).
LIVE_PUSH_CHARS = 200_000


class BoardConsumer(AsyncWebsocketConsumer):
    """Pushes card updates of one project's board: a card re-rendered in place, or moved to the top
    of its new column. On (re)connect it sends all columns, so a browser that missed pushes is
    made right at once."""

    async def connect(self):
        self.project_id = self.scope["url_route"]["kwargs"]["project_id"]
        if not await database_sync_to_async(Project.objects.filter(pk=self.project_id).exists)():
            await self.close(code=4404)
            return
        await self.channel_layer.group_add(relay.project_group(self.project_id), self.channel_name)
        await self.accept()
        await relay.ensure_started()
        await self.send(text_data=await self._render_columns())

    async def disconnect(self, code):
        await self.channel_layer.group_discard(relay.project_group(self.project_id), self.channel_name)

    @database_sync_to_async
    def _render_columns(self) -> str:
        project = Project.objects.get(pk=self.project_id)
        return render_to_string("board/board.html#columns", board_context(project, oob=True))

    @database_sync_to_async
    def _render_card(self, card_id: int, events: list[dict]) -> str:
        card = Card.objects.select_related("agent", "current_run").filter(pk=card_id).first()
        if card is None:  # deleted
            return f'<div id="card-{card_id}" hx-swap-oob="delete"></div>'
        moves = [e["data"] for e in events if e["kind"] == "card" and e["data"].get("to")]
        created = any(m.get("from") is None for m in moves)
        moved = any(m.get("from") != m.get("to") for m in moves)
        context = {"card": card, "moved": moved, "created": created, "queue": queue_places([card.current_run])}
        return render_to_string("board/board.html#card-push", context)

    async def board_events(self, message):
        """All of one card's new events since the relay's last look: the card rendered once."""
        if any(e["kind"] in BOARD_KINDS for e in message["events"]):
            await self.send(text_data=await self._render_card(message["card_id"], message["events"]))


class CardConsumer(AsyncWebsocketConsumer):
    """Pushes one card's detail: new log lines appended, the header (state, last line) re-rendered,
    and the commits and diff when a run ends or checkpoints.

    It remembers the run and the last sequence number it has shown, so a line that was already in
    the log it rendered is never appended twice, and a new run gets a fresh log."""

    run_id: int | None = None
    seq = 0

    async def connect(self):
        self.card_id = self.scope["url_route"]["kwargs"]["card_id"]
        if not await database_sync_to_async(Card.objects.filter(pk=self.card_id).exists)():
            await self.close(code=4404)
            return
        await self.channel_layer.group_add(relay.card_group(self.card_id), self.channel_name)
        await self.accept()
        await relay.ensure_started()
        await self.send(text_data=await self._render(["header", "log"]))

    async def disconnect(self, code):
        await self.channel_layer.group_discard(relay.card_group(self.card_id), self.channel_name)

    @database_sync_to_async
    def _render(self, parts: list[str]) -> str:
        card = Card.objects.select_related("project", "agent", "current_run").filter(pk=self.card_id).first()
        if card is None:
            return '<section id="card-header" class="panel" hx-swap-oob="true"><p role="alert">This card was deleted.</p></section>'
        context = {**card_context(card, tuple(parts)), "oob": True}
        if "log" in parts:
            self.run_id = card.current_run_id
            self.seq = context["events"][-1].seq if context["events"] else 0
        return "".join(render_to_string(f"board/card_detail.html#{p}", context) for p in parts)

    async def board_events(self, message):
        """All of the card's new events since the relay's last look, in one push: new log lines
        appended (a new run gets its log afresh), the header once, commits and diff when a run
        ended or checkpointed."""
        events = message["events"]
        html = ""
        lines = [e for e in events if e["kind"] in LOG_KINDS and e["seq"] > 0]
        if any(e["run_id"] != self.run_id for e in lines):
            html += await self._render(["log"])
        else:
            fresh = [e for e in lines if e["seq"] > self.seq]
            if fresh:
                self.seq = fresh[-1]["seq"]
                shown, skipped = _tail_within(fresh, LIVE_PUSH_CHARS)
                html += render_to_string("board/card_detail.html#log-push", {"events": shown, "skipped": skipped})
        kinds = {e["kind"] for e in events}
        if kinds & BOARD_KINDS:  # the header shows the latest line
            parts = ["header"]
            ended = any(e["kind"] == "state" and e["text"] not in ("queued", "running") for e in events)
            if "checkpoint" in kinds or ended:
                parts += ["commits", "diff"]
            html += await self._render(parts)
        if html:
            await self.send(text_data=html)


def _tail_within(events: list[dict], limit: int) -> tuple[list[dict], int]:
    """The last events whose texts fit in ``limit`` characters, and how many were left out."""
    total, keep = 0, 0
    for event in reversed(events):
        total += len(event["text"]) + 1
        if total > limit and keep:
            break
        keep += 1
    return events[len(events) - keep:], len(events) - keep


class RefusingConsumer(AsyncWebsocketConsumer):
    """Closes websockets to paths the board does not serve."""

    async def connect(self):
        await self.close(code=4404)
