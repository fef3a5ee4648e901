"""The REST API under /api/ (django-ninja), for machines: a CI job or a monitoring alert opens a
card and starts an agent with one request, then reads its status and log.

Every request carries a token (``Authorization: Bearer <token>``, or ``X-Board-Token: <token>``),
made with ``manage.py token create``; the token acts as its user, with that user's roles
(board/access.py; superusers are maintainers everywhere). The endpoints call the same domain
methods and forms as the pages (Card.create, CardForm, Card.start, Card.stop, Run.log_tail), so no
rule lives twice. Answers: 401 without a valid token, 403 when the role is too low, 404 for what
does not exist or the user may not see, 409 with the reason when the board refuses (BoardError),
422 for invalid input (ninja's ``detail`` list), never a 500. The schema is at /api/openapi.json
and browsable at /api/docs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest
from django.urls import reverse
from ninja import Field, NinjaAPI, Query, Schema, Status
from ninja.errors import HttpError
from ninja.security import APIKeyHeader, HttpBearer

from board import access
from board.forms import CardForm
from board.models import ApiToken, BoardError, Card, Column, Project, Role, Run, RunState

MAX_ID = 2**63 - 1  # the largest id SQLite and PostgreSQL's bigint store; larger ones would be a 500
MAX_OFFSET = 2**31
PAGE_MAX = 200
LOG_KINDS = ("log", "step", "state", "approval", "check", "checkpoint")  # as the card page's log (board.views)


class TokenBearer(HttpBearer):
    """``Authorization: Bearer <token>``: the ApiToken, or None (401)."""

    def authenticate(self, request, token):
        return ApiToken.authenticate(token)


class TokenHeader(APIKeyHeader):
    """``X-Board-Token: <token>``, for tools that cannot set Authorization."""

    param_name = "X-Board-Token"

    def authenticate(self, request, key):
        return ApiToken.authenticate(key or "")


api = NinjaAPI(
    title="Agent Board API", version="1", urls_namespace="api", auth=[TokenBearer(), TokenHeader()],
    description="Projects and cards of the board: list them, create a card, start and stop it, read its run and log.",
)


@api.exception_handler(BoardError)
def refused(request, exc):
    return api.create_response(request, {"detail": str(exc)}, status=409)


@api.exception_handler(PermissionDenied)
def forbidden(request, exc):
    return api.create_response(request, {"detail": str(exc) or "Forbidden"}, status=403)


Id = Annotated[int, Field(ge=1, le=MAX_ID)]
# In a JSON body an id is a JSON number: pydantic's lax mode read true as 1 and "7" as 7.
BodyId = Annotated[int, Field(ge=1, le=MAX_ID, strict=True)]


# --- Shapes -------------------------------------------------------------------------------------


class ProjectOut(Schema):
    id: int
    name: str
    base_branch: str
    default_agent: str | None = Field(description="The agent new cards get when none is named.")
    role: str = Field(description="The token user's role here: viewer, member or maintainer.")
    cards: dict[str, int] = Field(description="Cards per column.")
    url: str = Field(description="The project's board page.")


class RunOut(Schema):
    id: int
    state: str
    agent: str
    summary: str
    error: str
    pending: dict | None = Field(description="What the run waits for the lead for, if it does.")
    steps: int
    tokens: int
    cost: float = Field(description="US dollars, litellm's accounting.")
    queued_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None


class CardOut(Schema):
    id: int
    project: int
    title: str
    prompt: str
    column: str
    agent: str | None
    mode: str
    branch: str
    labels: list[str]
    depends_on: list[int]
    start_when_ready: bool
    landed_commit: str
    pr_url: str
    run: RunOut | None = Field(description="The card's current (latest) run.")
    created_at: datetime
    updated_at: datetime
    url: str = Field(description="The card's page.")
    board_url: str = Field(description="The card, opened on its project's board.")
    log_url: str = Field(description="This card's log in the API.")


class CardPage(Schema):
    count: int
    limit: int
    offset: int
    items: list[CardOut]


class LogLine(Schema):
    seq: int
    kind: str = Field(description="state, step, log (output), approval, check or checkpoint.")
    text: str
    at: datetime


class LogOut(Schema):
    card: int
    run: int | None
    state: str | None
    lines: list[LogLine]
    next_after: int = Field(description="Pass as ?after= to get only newer lines.")
    more: bool = Field(description="Whether lines after these exist already (ask again with next_after).")


class CardIn(Schema):
    # Strings: pydantic itself refuses lone surrogates ("\ud800"), which no database stores (422).
    project: BodyId
    title: str = Field(max_length=300)
    prompt: str = Field("", max_length=100_000)
    agent: Annotated[str, Field(max_length=100)] | BodyId | None = Field(
        None, description="An enabled agent's name or id; default: the project's default agent, else built-in."
    )
    mode: Literal["act", "plan"] = "act"
    labels: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=list, max_length=50)
    depends_on: list[BodyId] = Field(default_factory=list, max_length=100, description="Ids of cards it waits for.")
    start_when_ready: bool = Field(False, description="Start by itself once every card it waits for has landed.")
    start: bool = Field(False, description="Start the card's agent at once.")


class Detail(Schema):
    detail: str


class CardFilters(Schema):
    project: Id | None = None
    column: Literal[tuple(Column.values)] | None = None  # type: ignore[valid-type]
    status: Literal[("idle", *RunState.values)] | None = Field(  # type: ignore[valid-type]
        None, description="The current run's state, or idle for a card never started."
    )
    limit: int = Field(50, ge=1, le=PAGE_MAX)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


class LogQuery(Schema):
    after: int = Field(0, ge=0, le=MAX_OFFSET, description="Only lines with a sequence number above this.")
    limit: int = Field(500, ge=1, le=5000)
    run: Id | None = Field(None, description="Another run of the card than its current one.")


# --- Helpers ------------------------------------------------------------------------------------


def _user(request):
    return request.auth.user


def _actor(request) -> str:
    return f"api:{request.auth.name}"


def _card(request, card_id: int, role: Role) -> Card:
    """The card, when the token's user has ``role`` in its project: 404 when it does not exist or
    they may not see it, 403 when their role is lower."""
    card = Card.objects.select_related("project", "agent", "current_run__agent").filter(pk=card_id).first()
    if card is None or access.role_for(_user(request), card.project_id) is None:
        raise HttpError(404, f"No card with id {card_id}.")
    access.require_role(_user(request), card.project_id, role)
    return card


def _project(request, project_id: int, role: Role) -> Project:
    project = Project.objects.select_related("default_agent").filter(pk=project_id).first()
    if project is None or access.role_for(_user(request), project) is None:
        raise HttpError(404, f"No project with id {project_id}.")
    access.require_role(_user(request), project, role)
    return project


def _run_out(run: Run | None) -> dict | None:
    if run is None:
        return None
    return {
        "id": run.pk, "state": run.state, "agent": run.agent.name, "summary": run.summary, "error": run.error,
        "pending": run.pending, "steps": run.steps, "tokens": run.tokens, "cost": run.cost,
        "queued_at": run.queued_at, "started_at": run.started_at, "ended_at": run.ended_at,
    }


def _card_out(request: HttpRequest, card: Card) -> dict:
    url = request.build_absolute_uri(reverse("card_detail", args=[card.pk]))
    board = request.build_absolute_uri(reverse("board", args=[card.project_id]))
    return {
        "id": card.pk, "project": card.project_id, "title": card.title, "prompt": card.prompt, "column": card.column,
        "agent": card.agent.name if card.agent else None, "mode": card.mode, "branch": card.branch,
        "labels": list(card.labels or []), "depends_on": sorted(c.pk for c in card.depends_on.all()),
        "start_when_ready": card.start_when_ready, "landed_commit": card.landed_commit, "pr_url": card.pr_url,
        "run": _run_out(card.current_run), "created_at": card.created_at, "updated_at": card.updated_at,
        "url": url, "board_url": f"{board}?card={card.pk}",
        "log_url": request.build_absolute_uri(reverse("api:card_log", args=[card.pk])),
    }


def _fresh(card_id: int) -> Card:
    return Card.objects.select_related("project", "agent", "current_run__agent").get(pk=card_id)


def _project_out(request, project: Project, counts: dict) -> dict:
    return {
        "id": project.pk, "name": project.name, "base_branch": project.base_branch,
        "default_agent": project.default_agent.name if project.default_agent else None,
        "role": access.role_for(_user(request), project).value,
        "cards": {column: counts.get((project.pk, column), 0) for column in Column.values},
        "url": request.build_absolute_uri(reverse("board", args=[project.pk])),
    }


def _counts(project_ids) -> dict:
    from django.db.models import Count

    rows = Card.objects.filter(project_id__in=project_ids).values("project_id", "column").annotate(n=Count("id"))
    return {(row["project_id"], row["column"]): row["n"] for row in rows}


# --- Endpoints ----------------------------------------------------------------------------------

ERRORS = {401: Detail, 403: Detail, 404: Detail}


@api.get("/projects/", response={200: list[ProjectOut], **ERRORS}, summary="The projects the token's user may see")
def list_projects(request):
    projects = list(access.visible_projects(_user(request)).select_related("default_agent"))
    counts = _counts([p.pk for p in projects])
    return [_project_out(request, project, counts) for project in projects]


@api.get("/projects/{project_id}/", response={200: ProjectOut, **ERRORS}, summary="One project")
def get_project(request, project_id: Id):
    project = _project(request, project_id, Role.VIEWER)
    return _project_out(request, project, _counts([project.pk]))


@api.get("/cards/", response={200: CardPage, **ERRORS}, summary="Cards, newest first, paged")
def list_cards(request, filters: Query[CardFilters]):
    if filters.project is not None:
        cards = _project(request, filters.project, Role.VIEWER).cards.all()
    else:
        cards = Card.objects.filter(project__in=access.visible_projects(_user(request)))
    if filters.column:
        cards = cards.filter(column=filters.column)
    if filters.status == "idle":
        cards = cards.filter(current_run=None)
    elif filters.status:
        cards = cards.filter(current_run__state=filters.status)
    total = cards.count()
    page = cards.select_related("project", "agent", "current_run__agent").prefetch_related("depends_on").order_by("-id")
    page = page[filters.offset:filters.offset + filters.limit]
    return {"count": total, "limit": filters.limit, "offset": filters.offset,
            "items": [_card_out(request, card) for card in page]}


@api.post("/cards/", response={201: CardOut, 409: Detail, **ERRORS}, summary="Create a card (and start it)")
def create_card(request, payload: CardIn):
    """Create a card in the project's Backlog, checked by the same form as the board's New card;
    with ``start``, start its agent too. All or nothing: a refused start (409) creates no card."""
    project = _project(request, payload.project, Role.MEMBER)
    agent = payload.agent
    if isinstance(agent, int):
        from board.models import Agent

        agent = Agent.objects.filter(pk=agent).values_list("name", flat=True).first() or f"#{agent}"
    elif agent is None:
        agent = project.default_agent.name if project.default_agent else "built-in"
    form = CardForm({"title": payload.title, "prompt": payload.prompt, "agent": agent, "mode": payload.mode,
                     "labels": ",".join(label.replace(",", " ") for label in payload.labels)})
    if not form.is_valid():
        raise _form_error(form)
    depends_on = list(Card.objects.filter(pk__in=payload.depends_on)) if payload.depends_on else []
    missing = sorted(set(payload.depends_on) - {card.pk for card in depends_on})
    if missing:
        raise _invalid("depends_on", f"No card with id {', '.join(map(str, missing))}.")
    data = form.cleaned_data
    with transaction.atomic():
        card = Card.create(project, data["title"], data["prompt"], data["agent"], data["mode"] or "act")
        if data["labels"]:
            card.labels = data["labels"]
            card.save(update_fields=["labels"])
        if depends_on or payload.start_when_ready:
            card.set_dependencies(depends_on, payload.start_when_ready)  # BoardError: rolled back, 409
        access.audit(_user(request), "create", card=card, actor=_actor(request))
        if payload.start:
            card.start()
            access.audit(_user(request), "start", card=card, actor=_actor(request))
    return Status(201, _card_out(request, _fresh(card.pk)))


def _invalid(field: str, message: str) -> Exception:
    from ninja.errors import ValidationError

    return ValidationError([{"type": "value_error", "loc": ["body", "payload", field], "msg": message}])


def _form_error(form) -> Exception:
    from ninja.errors import ValidationError

    return ValidationError([
        {"type": "value_error", "loc": ["body", "payload", field], "msg": str(message)}
        for field, messages in form.errors.items() for message in messages
    ])


@api.get("/cards/{card_id}/", response={200: CardOut, **ERRORS}, summary="One card, with its current run")
def get_card(request, card_id: Id):
    return _card_out(request, _card(request, card_id, Role.VIEWER))


@api.post("/cards/{card_id}/start", response={200: CardOut, 409: Detail, **ERRORS}, summary="Start the card's agent")
def start_card(request, card_id: Id):
    card = _card(request, card_id, Role.MEMBER)
    card.start()
    access.audit(_user(request), "start", card=card, actor=_actor(request))
    return _card_out(request, _fresh(card.pk))


@api.post("/cards/{card_id}/stop", response={200: CardOut, 409: Detail, **ERRORS}, summary="Stop the card's run")
def stop_card(request, card_id: Id):
    """Ask the card's run to stop: a queued or waiting run ends at once, a running one within
    about a second (its worker kills the agent); read the card again to see it ``stopped``."""
    card = _card(request, card_id, Role.MEMBER)
    card.stop()
    access.audit(_user(request), "stop", card=card, actor=_actor(request))
    return _card_out(request, _fresh(card.pk))


@api.get("/cards/{card_id}/log", response={200: LogOut, **ERRORS}, url_name="card_log",
         summary="A run's log lines after a sequence number")
def card_log(request, card_id: Id, query: Query[LogQuery]):
    """The lines of the card's current run (or of ``run``) with a sequence number above ``after``,
    oldest first, at most ``limit``; poll with ``after=next_after`` to follow a run."""
    card = _card(request, card_id, Role.VIEWER)
    run = card.current_run
    if query.run is not None:
        run = card.runs.filter(pk=query.run).select_related("agent").first()
        if run is None:
            raise HttpError(404, f"Card {card.pk} has no run {query.run}.")
    if run is None:
        return {"card": card.pk, "run": None, "state": None, "lines": [], "next_after": query.after, "more": False}
    events = list(run.events.filter(kind__in=LOG_KINDS, seq__gt=query.after).order_by("seq")[:query.limit + 1])
    more = len(events) > query.limit
    events = events[:query.limit]
    lines = [{"seq": e.seq, "kind": e.kind, "text": e.text, "at": e.created_at} for e in events]
    return {"card": card.pk, "run": run.pk, "state": run.state, "lines": lines,
            "next_after": events[-1].seq if events else query.after, "more": more}

