"""Pages and htmx endpoints. Each view fetches, calls a model method and renders a partial or
redirects; none runs an agent (DESIGN.md, "Style")."""

from __future__ import annotations

import os
from collections import Counter

from django.conf import settings
from django.contrib import messages
from django.db import transaction
from django.db.models import Count
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.views.decorators.http import require_POST

from agents import landing, runner, worktrees
from board.forms import (
    AgentForm,
    CardForm,
    CardSettingsForm,
    DecisionForm,
    DiffCommentForm,
    FollowUpForm,
    LandForm,
    ModelTestForm,
    ProjectForm,
    ProjectSettingsForm,
    SendCommentsForm,
    WebhookForm,
)
from board import access, review
from board.models import Agent, BoardError, Card, Column, LandMode, Project, Role, Run, RunState
from board.models import DiffComment, Event, WebhookEvent, start_failures

LOG_KINDS = ("log", "step", "state", "approval", "check", "checkpoint")  # event kinds shown as lines of a run's log
LOG_TAIL = 500  # events shown when a card opens (or per "Load earlier"); the rest stays in the table
LOG_TAIL_CHARS = 200_000  # and about this many characters of them at most
RUNS_SHOWN = 50  # latest runs listed on a card page
DIFF_VIEW_COOKIE = "diff_view"  # the lead's last choice of unified or side-by-side diffs


def home(request):
    projects = access.visible_projects(request.user).annotate(card_count=Count("cards"))
    return render(request, "board/home.html", {"projects": projects, "form": ProjectForm()})


@require_POST
@access.board_manager_required
def project_create(request):
    form = ProjectForm(request.POST)
    if form.is_valid():
        project = form.save()
        access.audit(request.user, "project-add", project=project, path=project.repo_path)
        return redirect("board", project_id=project.pk)
    projects = access.visible_projects(request.user).annotate(card_count=Count("cards"))
    return render(request, "board/home.html", {"projects": projects, "form": form}, status=422)


def queue_places(runs) -> dict:
    """The queue's places (``{run id: QueuePlace}``, RunQuerySet.queue_positions) for the card
    partial and the card page's header; read, in one query, only when one of ``runs`` (Runs or
    None) is queued."""
    if any(run is not None and run.state == RunState.QUEUED for run in runs):
        return Run.objects.queue_positions()
    return {}


BOARD_DEFERRED = ("prompt", "conflicts", "current_run__agent_state", "current_run__commits", "current_run__prompt")


def board_context(project: Project, oob: bool = False) -> dict:
    """What the board template needs: the project, its cards in the four columns, in order, and
    the queued ones' places in line (``queue``)."""
    # The board shows none of these, and a run's stored conversation alone may be megabytes: read
    # for a thousand cards, they were most of a render's time (bench/board_render.py).
    # Read before the cards: the page then shows every change up to this event (BoardConsumer).
    last_event = Event.objects.order_by("-id").values_list("id", flat=True).first() or 0
    cards = list(project.cards.select_related("current_run").prefetch_related("agent").defer(*BOARD_DEFERRED))
    Card.read_dependencies(cards, project.pk)  # prefetched as depends_on, they were a third of the render
    # Why cards that were to start by themselves did not, in one query for the board (Card.start_failure).
    idle = [c for c in cards if c.column == Column.BACKLOG and c.start_when_ready and not c.is_running and not c.waiting_for]
    failures = start_failures(idle)
    for card in idle:
        card.start_failure = failures.get(card.pk, "")
    groups = Counter(c.variant_of_id for c in cards if c.variant_of_id is not None)  # variants share a project
    for card in cards:
        if card.variant_of_id is not None:
            card.variant_count = groups[card.variant_of_id]
    columns = [
        {"value": value, "label": label, "cards": [c for c in cards if c.column == value]}
        for value, label in Column.choices
    ]
    return {"project": project, "columns": columns, "oob": oob, "queue": queue_places(c.current_run for c in cards),
            "last_event": last_event}


@access.role_required(Role.VIEWER)
def board(request, project_id):
    project = get_object_or_404(Project, pk=project_id)
    context = board_context(project)
    # The agent of the project's latest card is the likely next choice, not the first by name.
    last = project.cards.filter(agent__enabled=True).order_by("-id").values_list("agent__name", flat=True).first()
    context["form"] = CardForm(initial={"agent": last}, project=project)
    context.update(board_filters(context["columns"]))
    context["projects"] = access.visible_projects(request.user).only("id", "name")  # the top bar's switcher
    return render(request, "board/board.html", context)


def board_filters(columns: list[dict]) -> dict:
    """The board's filter choices: the run states a card can show (``states``) and the labels of
    its cards (``labels``, sorted)."""
    labels = sorted({label for column in columns for card in column["cards"] for label in card.labels})
    return {"states": [("idle", "not started"), *RunState.choices], "labels": labels}


@require_POST
@access.role_required(Role.MEMBER)
def card_create(request, project_id):
    project = get_object_or_404(Project, pk=project_id)
    form = CardForm(request.POST, project=project)
    if not form.is_valid():
        return render(request, "board/board.html#card-form", {"project": project, "form": form}, status=422)
    waits_for, start_when_ready = form.cleaned_data["waits_for"], form.cleaned_data["start_when_ready"]
    try:
        with transaction.atomic():
            card = Card.create(project, form.cleaned_data["title"], form.cleaned_data["prompt"],
                               form.cleaned_data["agent"], form.cleaned_data.get("mode") or "act")
            if waits_for or start_when_ready:
                card.set_dependencies(waits_for, start_when_ready)  # refuses a cycle (Card.check_dependencies)
    except BoardError as exc:
        form.add_error("waits_for", str(exc))
        return render(request, "board/board.html#card-form", {"project": project, "form": form}, status=422)
    if form.cleaned_data.get("labels"):
        card.labels = form.cleaned_data["labels"]
        card.save(update_fields=["labels"])
    access.audit(request.user, "create", card=card, project=project)
    if request.htmx:
        # The new card goes into the Backlog at once; the push that follows replaces it by id.
        form = CardForm(initial={"agent": card.agent.name}, project=project)
        html = render_to_string("board/board.html#card-form", {"project": project, "form": form}, request)
        html += render_to_string("board/board.html#card-push", {"card": card, "moved": True, "created": True}, request)
        return HttpResponse(html)
    return redirect("board", project_id=project.pk)


@access.role_required(Role.VIEWER)
def card_waitable(request, project_id):
    """The options of the new-card form's "Waits for": the project's cards that have not landed,
    by id, those named by ``waits_for`` (repeated; what the browser had chosen) selected. Loaded
    when the lead first goes to the list (board.forms.WaitsForWidget); 404 for no such project."""
    project = get_object_or_404(Project, pk=project_id)
    chosen = {int(v) for v in request.GET.getlist("waits_for") if v.isascii() and v.isdigit() and len(v) < 19}
    cards = project.cards.exclude(column=Column.DONE).order_by("id").values_list("pk", "title")
    return render(request, "board/_waitable.html", {"cards": cards, "chosen": chosen})


def _commits(card: Card) -> list[worktrees.Commit]:
    return review.checkpoints(card)


# The card page's parts, as the partials of card_detail.html name them; "page" is what only the
# full page shows (the runs table, the delete form).
CARD_PARTS = ("header", "log", "commits", "diff", "page")


def card_context(card: Card, parts: tuple[str, ...] = CARD_PARTS, diff: review.DiffQuery | None = None) -> dict:
    """What the card page needs for ``parts``, and only that: a push of the header, several times
    a second while a run prints, must not read the log or run git.

    The "diff" part is page ``diff.page`` of the diff ``diff`` asks for (``review``, a
    board.review.DiffPage: bounded whatever the diff's size). Without ``diff`` (a push, which
    knows neither the page nor the view a browser shows) it is an empty panel that loads the
    first page itself (``diff_lazy``), in the view that browser chose. Raises review.NotInDiff
    for a checkpoint not on the branch or a page past the last."""
    run = card.current_run
    context = {
        "card": card, "run": run, "can_start": not card.is_running and card.column != Column.DONE,
        "can_resume": bool(run and run.state in ("interrupted", "stopped", "failed")),
        "queue": queue_places([run]), "land_modes": LandMode.choices,
    }
    if "log" in parts:
        events, earlier = run.log_tail(LOG_KINDS, None, LOG_TAIL, LOG_TAIL_CHARS) if run else ([], False)
        context.update(events=events, earlier=earlier)
    if "commits" in parts:
        context["commits"] = _commits(card)
    if "diff" in parts:
        if diff is None:
            context["diff_lazy"] = True
        else:
            context["review"] = review.diff_page(card, diff)
    if "runs" in parts or "page" in parts:
        context["runs"] = list(card.runs.select_related("agent").order_by("-id")[:RUNS_SHOWN])
    if "page" in parts:
        unlanded = 0
        if card.branch and os.path.isdir(card.project.repo_path):
            try:
                unlanded = worktrees.unlanded_commits(card.project.repo_path, card.project.base_branch, card.branch)
            except worktrees.GitError:
                unlanded = 0
        context.update(
            unlanded=unlanded,
            settings_form=CardSettingsForm(instance=card), comments_to_send=list(card.comments_to_send),
        )
    return context


@access.role_required(Role.VIEWER)
def card_log(request, card_id):
    """The ``LOG_TAIL`` log lines of run ``run`` before sequence number ``before``, with their own
    "Load earlier" button while more remain (the card page's "Load earlier lines")."""
    card = get_object_or_404(Card, pk=card_id)
    try:
        run_id, before = int(request.GET.get("run", "")), int(request.GET.get("before", ""))
    except ValueError:
        return HttpResponse("run and before must be numbers", status=400)
    run = get_object_or_404(Run, pk=run_id, card_id=card.pk)
    events, earlier = run.log_tail(LOG_KINDS, before, LOG_TAIL, LOG_TAIL_CHARS)
    context = {"card": card, "run": run, "events": events, "earlier": earlier}
    return render(request, "board/card_detail.html#log-earlier", context)


@access.role_required(Role.VIEWER)
def card_detail(request, card_id):
    """The card's page; ``?commit=<sha>``, ``?page=N`` and ``?view=unified|split`` choose the diff
    shown (400 for garbage, 404 for a commit not on the card's branch)."""
    card = get_object_or_404(Card.objects.select_related("project", "agent", "current_run"), pk=card_id)
    try:
        response = render(request, "board/card_detail.html", card_context(card, diff=_diff_query(request)))
    except review.BadQuery as exc:
        return HttpResponseBadRequest(str(exc))
    except review.NotInDiff as exc:
        raise Http404(str(exc)) from exc
    return _remember_view(request, response)


@access.role_required(Role.VIEWER)
def card_drawer(request, card_id):
    """The card's drawer on the board: the card page's own partials in four tabs (Activity,
    Diff, Checkpoints, Settings), with its own socket to the card; 404 for an unknown card."""
    card = get_object_or_404(Card.objects.select_related("project", "agent", "current_run"), pk=card_id)
    return render(request, "board/_drawer.html", _drawer_context(card))


def _drawer_context(card: Card, settings_form: CardSettingsForm | None = None) -> dict:
    context = card_context(card, ("header", "log", "commits", "diff", "runs", "page"))
    if settings_form is not None:
        context["settings_form"] = settings_form
    # The board's new-card form names its fields id_title, id_agent…: the drawer's settings form
    # must not repeat those ids on the same page.
    context["settings_form"].auto_id = "drawer-%s"
    return context


def _in_drawer(request) -> bool:
    """Whether a form inside the board's card drawer posted this (drawer.js posts them with htmx
    into #drawer-slot): its answer is then the drawer again, not a redirect to the card's page."""
    return bool(request.htmx) and request.htmx.target == "drawer-slot"


def _drawer_answer(request, card_id: int, error: str = "", note: str = "", status: int | None = None,
                   settings_form: CardSettingsForm | None = None):
    """The drawer re-rendered after one of its forms posted, with ``error`` (a refusal: status 409
    unless ``status`` says otherwise) or ``note`` at its top; ``settings_form``: the card settings
    form as sent, with its errors."""
    card = Card.objects.select_related("project", "agent", "current_run").get(pk=card_id)
    context = {**_drawer_context(card, settings_form), "drawer_error": error, "drawer_note": note, "drawer_answer": True}
    return render(request, "board/_drawer.html", context, status=status or (409 if error else 200))


# --- Review: the diff, its pages and views, comments on its lines -----------------------------


def _diff_query(request) -> review.DiffQuery:
    """The diff a request asks for, in the view it names, else the one the lead chose last."""
    return review.DiffQuery.parse(request.GET, request.COOKIES.get(DIFF_VIEW_COOKIE, "unified"))


def _remember_view(request, response):
    view = request.GET.get("view")
    if view in review.VIEWS and request.COOKIES.get(DIFF_VIEW_COOKIE) != view:
        response.set_cookie(DIFF_VIEW_COOKIE, view, max_age=365 * 24 * 3600, samesite="Lax")
    return response


@access.role_required(Role.VIEWER)
def card_diff(request, card_id):
    """The card's diff panel alone (htmx: a page, a checkpoint, the other view): 400 for garbage,
    404 for a commit not on the branch or a page past the last."""
    card = get_object_or_404(Card.objects.select_related("project", "agent", "current_run"), pk=card_id)
    try:
        context = card_context(card, ("diff",), diff=_diff_query(request))
    except review.BadQuery as exc:
        return HttpResponseBadRequest(str(exc))
    except review.NotInDiff as exc:
        raise Http404(str(exc)) from exc
    return _remember_view(request, render(request, "board/_diff.html", context))


@access.role_required(Role.VIEWER)
def card_diff_raw(request, card_id):
    """One file's whole diff as plain text (``?path=…&commit=…``): where a file cut on the page
    is read whole. 400 without a path, 404 for a file or commit not in the card's diff."""
    card = get_object_or_404(Card.objects.select_related("project"), pk=card_id)
    path = request.GET.get("path", "")
    try:
        query = review.DiffQuery.parse({"commit": request.GET.get("commit", "")})
        if not path:
            raise review.BadQuery("path is missing: which file's diff?")
        text = review.file_diff(card, query.commit, path)
    except review.BadQuery as exc:
        return HttpResponseBadRequest(str(exc))
    except review.NotInDiff as exc:
        raise Http404(str(exc)) from exc
    except worktrees.GitError as exc:
        return HttpResponse(str(exc), status=409, content_type="text/plain; charset=utf-8")
    return HttpResponse(text, content_type="text/plain; charset=utf-8")


def _comments_panel(request, card: Card, status: int = 200, error: str = "", note: str = "", extra: str = ""):
    """The "Comments to send" panel re-rendered (with ``error`` or ``note``), then ``extra`` HTML
    (out-of-band swaps)."""
    context = {"card": card, "comments_to_send": list(card.comments_to_send), "error": error, "note": note}
    return HttpResponse(render_to_string("board/_diff.html#comments-to-send", context, request) + extra, status=status)


@require_POST
@access.role_required(Role.MEMBER)
def card_comment_add(request, card_id):
    """A comment on one line of the card's diff (htmx, from the form under the line): answers the
    comment in the form's place and the "Comments to send" panel out of band; 422 with the form
    and the reason for an empty text or a line the diff does not show, 409 for a card that is done."""
    card = get_object_or_404(Card.objects.select_related("project"), pk=card_id)
    form = DiffCommentForm(request.POST)
    view = request.POST.get("view") if request.POST.get("view") in review.VIEWS else "unified"
    status, error = 422, ""
    if not form.is_valid():
        error = " ".join(e for errors in form.errors.values() for e in errors)
    else:
        data = form.cleaned_data
        try:
            commit = review.diff_range(card, data["commit"])[1] if data["commit"] else ""
            review.find_line(card, commit, data["path"], data["side"], data["line"])
            comment = card.add_comment(data["path"], data["line"], data["side"], data["text"], commit)
        except (review.ReviewError, worktrees.GitError) as exc:
            error = str(exc)
        except BoardError as exc:
            status, error = 409, str(exc)
    if error and not request.htmx:
        messages.error(request, f"The comment was not saved: {error}")
    if not request.htmx:
        return redirect("card_detail", card_id=card.pk)
    if error:
        context = {"card": card, "form": form, "error": error, "view": view}
        return render(request, "board/_diff.html#comment-form", context, status=status)
    row = render_to_string("board/_diff.html#comment-row", {"card": card, "comments": [comment], "view": view}, request)
    panel = {"card": card, "comments_to_send": list(card.comments_to_send), "oob": True}
    # In a <template>: after a table row, the HTML parser would take the panel's form apart.
    return HttpResponse(f'{row}<template>{render_to_string("board/_diff.html#comments-to-send", panel, request)}</template>')


@require_POST
@access.role_required(Role.MEMBER)
def card_comment_delete(request, card_id, comment_id):
    """Delete an unsent comment: answers the "Comments to send" panel and takes the comment out of
    the diff; 409 for a comment sent already."""
    card = get_object_or_404(Card.objects.select_related("project"), pk=card_id)
    comment = get_object_or_404(DiffComment, pk=comment_id, card=card)
    try:
        comment.remove()
    except BoardError as exc:
        if not request.htmx:
            messages.error(request, str(exc))
            return redirect("card_detail", card_id=card.pk)
        return _comments_panel(request, card, 409, error=str(exc))
    if not request.htmx:
        return redirect("card_detail", card_id=card.pk)
    return _comments_panel(request, card, extra=f'<div id="comment-{comment_id}" hx-swap-oob="delete"></div>')


@require_POST
@access.role_required(Role.MEMBER)
def card_comments_send(request, card_id):
    """Send the card's unsent comments back to its agent as one follow-up run, with the optional
    general message; answers the emptied panel, the card's header and the comments taken out of
    the diff. 409 with the reason when there is nothing to send, or the card is not in Review or is
    running; 422 for a message too long."""
    card = get_object_or_404(Card.objects.select_related("project", "agent", "current_run"), pk=card_id)
    form = SendCommentsForm(request.POST)
    status, error = 422, ""
    if not form.is_valid():
        error = " ".join(e for errors in form.errors.values() for e in errors)
    else:
        try:
            # The lines are quoted here: the domain reads no git.
            run = card.send_comments(form.cleaned_data["message"], review.quote_lines(card, card.comments_to_send))
            access.audit(request.user, "follow-up", card=card, run=run.pk, comments=run.comments.count())
        except BoardError as exc:
            status, error = 409, str(exc)
    if error:
        if not request.htmx:
            messages.error(request, error)
            return redirect("card_detail", card_id=card.pk)
        return _comments_panel(request, card, status, error=error)
    sent = list(run.comments.values_list("pk", flat=True))
    note = f"Sent {len(sent)} comment{'s' if len(sent) != 1 else ''} to the agent as one follow-up: run {run.pk}."
    if not request.htmx:
        messages.success(request, note)
        return redirect("card_detail", card_id=card.pk)
    card = Card.objects.select_related("project", "agent", "current_run").get(pk=card.pk)
    header = render_to_string("board/card_detail.html#header", {**card_context(card, ("header",)), "oob": True}, request)
    gone = "".join(f'<div id="comment-{pk}" hx-swap-oob="delete"></div>' for pk in sent)
    return _comments_panel(request, card, note=note, extra=header + gone)


def _card_action(request, card_id: int, action: str, *args):
    """Call ``card.<action>(*args)`` (start, stop, resume, follow_up); answer htmx with the card
    re-rendered (409 with the reason when refused), a plain form with a redirect to the card's page."""
    card = get_object_or_404(Card, pk=card_id)
    error = ""
    try:
        getattr(card, action)(*args)
    except BoardError as exc:
        error = str(exc)
    else:
        access.audit(request.user, action.replace("_", "-"), card=card)
    return _card_answer(request, card.pk, error)


def _card_answer(request, card_id: int, error: str = "", note: str = ""):
    if _in_drawer(request):
        return _drawer_answer(request, card_id, error, note)
    card = Card.objects.select_related("project", "agent", "current_run").get(pk=card_id)
    if request.htmx:
        context = {"card": card, "error": error, "queue": queue_places([card.current_run])}
        return render(request, "board/board.html#card", context, status=409 if error else 200)
    if error:
        messages.error(request, error)
    elif note:
        messages.success(request, note)
    return redirect("card_detail", card_id=card.pk)


@require_POST
@access.role_required(Role.MEMBER)
def card_start(request, card_id):
    return _card_action(request, card_id, "start")


@require_POST
@access.role_required(Role.MEMBER)
def card_stop(request, card_id):
    return _card_action(request, card_id, "stop")


@require_POST
@access.role_required(Role.MEMBER)
def project_start_all(request, project_id):
    """Start every card in the project's Backlog, top first; says how many started and why any
    did not."""
    project = get_object_or_404(Project, pk=project_id)
    started, refused = 0, []
    for card in project.cards.filter(column=Column.BACKLOG).select_related("agent", "project"):
        try:
            card.start()
            started += 1
            access.audit(request.user, "start", card=card, project=project)
        except BoardError as exc:
            refused.append(f"#{card.pk} {card.title}: {exc}")
    if started:
        messages.success(request, f"Started {started} card{'s' if started != 1 else ''}.")
    for line in refused:
        messages.error(request, f"Not started: {line}")
    if not started and not refused:
        messages.info(request, "The Backlog is empty.")
    return redirect("board", project_id=project.pk)


@require_POST
@access.role_required(Role.MEMBER)
def card_resume(request, card_id):
    return _card_action(request, card_id, "resume")


@require_POST
@access.role_required(Role.MEMBER)
def card_follow_up(request, card_id):
    form = FollowUpForm(request.POST)
    if not form.is_valid():
        get_object_or_404(Card, pk=card_id)
        return _card_answer(request, card_id, " ".join(form.errors.get("text", ["Write a follow-up."])))
    return _card_action(request, card_id, "follow_up", form.cleaned_data["text"])


@require_POST
@access.role_required(Role.MEMBER)
def run_decide(request, run_id):
    """The lead approves or denies what a run waits for (a tool call, a question, a plan)."""
    run = get_object_or_404(Run, pk=run_id)
    form = DecisionForm(request.POST)
    error = ""
    if not form.is_valid():
        error = "; ".join(e for errors in form.errors.values() for e in errors)
    else:
        try:
            kind = form.cleaned_data["kind"]
            run.decide(form.cleaned_data["decision"] == "approve", form.cleaned_data["text"], (kind,) if kind else None)
            access.audit(request.user, form.cleaned_data["decision"], card=run.card, run=run.pk, kind=kind or "")
        except BoardError as exc:
            error = str(exc)
    return _card_answer(request, run.card_id, error)


@require_POST
@access.role_required(Role.MEMBER)
def card_settings(request, card_id):
    card = get_object_or_404(Card.objects.select_related("project", "agent", "current_run"), pk=card_id)
    if card.is_running:
        return _card_answer(request, card.pk, "Stop the card before changing its settings; a run keeps the settings it started with.")
    form = CardSettingsForm(request.POST, instance=card)
    if form.is_valid():
        form.save()
        access.audit(request.user, "card-settings", card=card, changed=form.changed_data)
        return _card_answer(request, card.pk, note="Card settings saved; the next run uses them.")
    if _in_drawer(request):
        return _drawer_answer(request, card.pk, "The settings were not saved: see the fields below.", status=422,
                              settings_form=form)
    context = card_context(card)
    context["settings_form"] = form
    return render(request, "board/card_detail.html", context, status=422)


@require_POST
@access.role_required(Role.MAINTAINER)
def card_rollback(request, card_id):
    card = get_object_or_404(Card.objects.select_related("project", "current_run"), pk=card_id)
    try:
        note = runner.roll_back_card(card, request.POST.get("sha", ""))
    except (BoardError, worktrees.GitError) as exc:
        return _card_answer(request, card.pk, f"Not rolled back: {exc}")
    access.audit(request.user, "rollback", card=card, sha=request.POST.get("sha", "")[:64])
    return _card_answer(request, card.pk, note=note)


# Landing (agents/landing.py does the git work). The board's compact Land button posts with htmx
# and gets the card partial (409 with the reason when refused); the card page's Land panel posts
# plain forms and gets the page again with the reason in the panel (409), or a redirect.


def _land_answer(request, card_id: int, error: str = "", note: str = "", status: int = 409):
    if request.htmx or not error:
        return _card_answer(request, card_id, error, note)
    card = Card.objects.select_related("project", "agent", "current_run").get(pk=card_id)
    context = {**card_context(card), "land_error": error}
    return render(request, "board/card_detail.html", context, status=status)


def _land_action(request, card_id: int, action, *args, audit_as: str = ""):
    """``action(card, *args) -> note`` from agents.landing; a refusal (BoardError, or git's
    reason) is answered with 409. Done, it goes in the audit log as ``audit_as`` (if given)."""
    card = get_object_or_404(Card, pk=card_id)
    try:
        note = action(card, *args)
    except (BoardError, worktrees.GitError) as exc:
        return _land_answer(request, card.pk, str(exc))
    if audit_as:
        access.audit(request.user, audit_as, card=card, args=[str(a) for a in args if a is not None])
    return _land_answer(request, card.pk, note=note)


@require_POST
@access.role_required(Role.MAINTAINER)
def card_land(request, card_id):
    get_object_or_404(Card, pk=card_id)
    form = LandForm(request.POST)
    if not form.is_valid():
        return _land_answer(request, card_id, " ".join(form.errors.get("mode", [])), status=422)
    return _land_action(request, card_id, landing.land_card, form.cleaned_data["mode"] or None, audit_as="land")


@require_POST
@access.role_required(Role.MEMBER)
def card_check_conflicts(request, card_id):
    def check(card):
        files = landing.check_conflicts(card)
        base = card.project.base_branch
        return f"Conflicts with {base} in {len(files)} file{'s' if len(files) != 1 else ''}." if files else f"No conflicts with {base}."

    return _land_action(request, card_id, check)


@require_POST
@access.role_required(Role.MAINTAINER)
def card_rebase(request, card_id):
    return _land_action(request, card_id, landing.rebase_card, audit_as="rebase")


@require_POST
@access.role_required(Role.MAINTAINER)
def card_resolve(request, card_id):
    """Ask the card's agent to resolve the conflicts found (a follow-up run)."""
    def resolve(card):
        card.resolve_conflicts()
        return "Sent back to the agent to merge the base and resolve the conflicts."

    return _land_action(request, card_id, resolve, audit_as="resolve")


@require_POST
@access.role_required(Role.MAINTAINER)
def card_push(request, card_id):
    return _land_action(request, card_id, landing.push_card, request.POST.get("pr") == "1", audit_as="push")


# --- Variants (issue 7, "Several models on one card"): start a card on several agents or models,
# compare the results side by side, land the chosen one. Domain: Card.start_variants,
# Card.check_can_choose; the clean-up: agents/variants.py; the rows: board/compare.py.


def _variants_refused(request, card: Card, error: str, status: int, form=None):
    """The card page again with ``error`` in its "Start on several" panel (and the form as sent)."""
    card = Card.objects.select_related("project", "agent", "current_run").get(pk=card.pk)
    context = {**card_context(card), "variants_error": error}
    if form is not None:
        context["variants_form"] = form
    return render(request, "board/card_detail.html", context, status=status)


@require_POST
@access.role_required(Role.MEMBER)
def card_start_variants(request, card_id):
    """Start the card on the agents and models ticked (board.forms.VariantsForm), one card each,
    then show their comparison; 422 for bad input (no agent, an unknown agent id, one choice), 409
    with the reason when the domain refuses (a card not in the Backlog, one that cannot start)."""
    from board.forms import VariantsForm

    card = get_object_or_404(Card.objects.select_related("project", "agent"), pk=card_id)
    form = VariantsForm(request.POST)
    if not form.is_valid():
        error = " ".join(e for errors in form.errors.values() for e in errors)
        return _variants_refused(request, card, error, 422, form)
    try:
        runs = card.start_variants(form.cleaned_data["choices"])
    except BoardError as exc:
        return _variants_refused(request, card, str(exc), 409, form)
    access.audit(request.user, "start-variants", card=card, runs=[run.pk for run in runs])
    messages.success(request, f"Started {len(runs)} variants of card #{card.pk}, each on its own branch.")
    return redirect("card_compare", card_id=card.pk)


def _compare_context(card: Card) -> dict:
    from board import compare

    group = card.variant_group()
    return {"card": card, "rows": compare.rows(group), "active": any(c.is_running for c in group)}


@access.role_required(Role.VIEWER)
def card_compare(request, card_id):
    """The card's group side by side (board.compare.rows); 404 for a card with no variants. With
    ``?part=rows`` only the table (what the page polls while a variant runs)."""
    card = get_object_or_404(Card.objects.select_related("project", "agent", "current_run"), pk=card_id)
    context = _compare_context(card)
    if len(context["rows"]) < 2:
        raise Http404("This card has no variants to compare; start it on several agents from its page.")
    template = "board/compare.html#rows" if request.GET.get("part") == "rows" else "board/compare.html"
    return render(request, template, context)


@require_POST
@access.role_required(Role.MAINTAINER)
def card_choose(request, card_id):
    """Land this card as the chosen one of its group and remove the others from the board
    (agents.variants.choose_variant); then the board. Refused with the reason on the comparison:
    409 (another variant still running, a card not in Review, a dirty checkout, conflicts), 422 for
    a landing mode that does not exist."""
    from agents import variants

    card = get_object_or_404(Card.objects.select_related("project", "agent", "current_run"), pk=card_id)
    mode = request.POST.get("mode") or None
    if mode is not None and mode not in LandMode.values:
        error, status = f"'{mode[:40]}' is not a landing mode; use one of {', '.join(LandMode.values)}.", 422
    else:
        try:
            note = variants.choose_variant(card, keep_branches=request.POST.get("keep_branches") == "on", mode=mode)
        except (BoardError, worktrees.GitError) as exc:
            error, status = str(exc), 409
        else:
            access.audit(request.user, "choose", card=card, mode=mode or card.effective_land_mode)
            messages.success(request, f"Chose #{card.pk}. {note}")
            return redirect("board", project_id=card.project_id)
    context = _compare_context(Card.objects.select_related("project", "agent", "current_run").get(pk=card.pk))
    context["choose_error"] = error
    return render(request, "board/compare.html", context, status=status)


@access.role_required(Role.MAINTAINER)
def project_settings(request, project_id):
    project = get_object_or_404(Project, pk=project_id)
    form = ProjectSettingsForm(request.POST or None, instance=project)
    if request.method == "POST" and form.is_valid():
        form.save()
        access.audit(request.user, "settings", project=project, changed=form.changed_data)
        messages.success(request, "Settings saved; runs that start from now on use them.")
        return redirect("project_settings", project_id=project.pk)
    context = {"project": project, "form": form, **webhooks_context(project)}
    return render(request, "board/project_settings.html", context, status=422 if form.errors else 200)


def webhooks_context(project: Project, form: WebhookForm | None = None) -> dict:
    """The settings page's Webhooks panel: the project's webhooks, each with ``last`` (its latest
    WebhookDelivery, or None) and ``event_labels`` (what it hears about), and the form to add one."""
    hooks = list(project.webhooks.all())
    labels = dict(WebhookEvent.choices)
    for hook in hooks:
        hook.last = hook.deliveries.first()
        hook.event_labels = [labels.get(event, event).lower() for event in hook.events]
    return {"webhooks": hooks, "webhook_form": form or WebhookForm()}


@require_POST
@access.role_required(Role.MAINTAINER)
def project_webhooks(request, project_id):
    """Add a webhook to the project (the form's fields), or with ``delete=<id>`` remove one of its
    webhooks; back to the settings page, or the page again with the form's errors (422)."""
    project = get_object_or_404(Project, pk=project_id)
    if "delete" in request.POST:
        raw = request.POST["delete"].strip()
        hook = project.webhooks.filter(pk=int(raw)).first() if raw.isascii() and raw.isdigit() and len(raw) < 19 else None
        if hook is None:
            messages.error(request, "That webhook is gone already.")
        else:
            hook.delete()
            access.audit(request.user, "webhook removed", project=project, url=hook.url)
            messages.success(request, f"Webhook {hook.url} removed.")
        return redirect("project_settings", project_id=project.pk)
    form = WebhookForm(request.POST)
    if not form.is_valid():
        context = {"project": project, "form": ProjectSettingsForm(instance=project), **webhooks_context(project, form)}
        return render(request, "board/project_settings.html", context, status=422)
    hook = form.save(project)
    access.audit(request.user, "webhook added", project=project, url=hook.url, events=hook.events, slack=hook.slack)
    messages.success(request, f"Webhook {hook.url} added: it hears about "
                              f"{', '.join(WebhookEvent(e).label.lower() for e in hook.events) or 'every event'}.")
    return redirect("project_settings", project_id=project.pk)


def configured_models(projects=None) -> list[dict]:
    """Every distinct model the board is set to use, with where it is set: ``[{"model",
    "api_base", "api_key_env", "key_set", "used_by": [str]}]``; of the projects in ``projects``
    (a Project queryset: those the reader may see) and their cards only, when given."""
    rows: dict[tuple, dict] = {}

    def add(model, api_base, api_key_env, where):
        if not model:
            return
        row = rows.setdefault((model, api_base, api_key_env), {
            "model": model, "api_base": api_base, "api_key_env": api_key_env,
            "key_set": not api_key_env or bool(os.environ.get(api_key_env)), "used_by": [],
        })
        row["used_by"].append(where)

    projects = Project.objects.all() if projects is None else projects
    for project in projects.exclude(model=""):
        add(project.model, project.api_base, project.api_key_env, f"project {project.name}")
    for agent in Agent.objects.filter(kind=Agent.Kind.BUILTIN).exclude(model=""):
        add(agent.model, agent.api_base, agent.api_key_env, f"agent {agent.name}")
    for card in Card.objects.filter(project__in=projects).exclude(model="").only("pk", "model", "api_base", "api_key_env"):
        add(card.model, card.api_base, card.api_key_env, f"card #{card.pk}")
    return list(rows.values())


def models_page(request):
    models = configured_models(access.visible_projects(request.user))
    return render(request, "board/models.html", {"models": models, "form": ModelTestForm()})


@require_POST
def model_test(request):
    """One small real call to a model; answers the result partial (latency or the provider's error).
    Only for those who maintain a project (or manage the board): it spends the provider's money."""
    from agents import llm

    if not access.is_maintainer_somewhere(request.user):
        raise PermissionDenied("Only a project's maintainer may try a model.")

    form = ModelTestForm(request.POST)
    if not form.is_valid():
        errors = "; ".join(e for field in form.errors.values() for e in field)
        result = {"ok": False, "error": errors, "latency_ms": None}
        return render(request, "board/models.html#test-result", {"result": result}, status=422)
    data = form.cleaned_data
    config = llm.ModelConfig(
        model=data["model"], api_base=data["api_base"] or None, api_key_env=data["api_key_env"] or None,
        timeout=min(float(settings.BOARD_MODEL_TIMEOUT), 30.0), num_retries=0,
    )
    result = llm.check_model(config)
    return render(request, "board/models.html#test-result", {"result": result})


@require_POST
@access.role_required(Role.MAINTAINER)
def card_delete(request, card_id):
    card = get_object_or_404(Card.objects.select_related("project", "current_run"), pk=card_id)
    project_id = card.project_id
    gone = Card(pk=card.pk, title=card.title, project_id=project_id)  # what the audit log names once it is deleted
    try:
        note = runner.delete_card(card, delete_branch=request.POST.get("delete_branch") == "on")
    except (BoardError, worktrees.GitError) as exc:
        if _in_drawer(request):
            return _drawer_answer(request, card_id, f"The card was not deleted: {exc}")
        messages.error(request, f"The card was not deleted: {exc}")
        return redirect("card_detail", card_id=card_id)
    access.audit(request.user, "delete", card=gone, project=card.project, delete_branch=request.POST.get("delete_branch") == "on")
    if _in_drawer(request):
        # The drawer says so in its place, and the board's tile goes at once (the push follows).
        context = {"card_id": card_id, "note": note}
        return render(request, "board/_drawer.html#deleted", context)
    messages.success(request, f"Card #{card_id} deleted. {note}")
    return redirect("board", project_id=project_id)


def agents(request):
    if request.method == "POST" and not access.may_manage_board(request.user):
        raise PermissionDenied("Only a board administrator (a superuser) may add agents.")
    form = AgentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        agent = form.save()
        access.audit(request.user, "agent-add", agent=agent.name)
        messages.success(request, f"Agent '{agent.name}' added.")
        return redirect("agents")
    rows = [(a, a.installed) for a in Agent.objects.all()]
    # Only whether each named variable is set; values are never shown.
    key_vars_set = {a.api_key_env for a, _ in rows if a.api_key_env and os.environ.get(a.api_key_env)}
    context = {"rows": rows, "form": form, "key_vars_set": key_vars_set}
    return render(request, "board/agents.html", context, status=422 if form.errors else 200)


@require_POST
@access.board_manager_required
def agent_toggle(request, agent_id):
    agent = get_object_or_404(Agent, pk=agent_id)
    try:
        agent.set_enabled(not agent.enabled)
    except BoardError as exc:
        messages.error(request, str(exc))
    else:
        access.audit(request.user, "agent-enable" if agent.enabled else "agent-disable", agent=agent.name)
    return redirect("agents")



# --- Moving cards by hand (drag and drop and keys, static/board/dnd.js) and marking them done ----
# The browser asks; Card.move_by_hand and Card.place decide. A drop names the card's new
# neighbours, not the column's whole order (a column may hold a thousand cards), and the answer is
# the card alone, placed under the card the server has above it: so a refused drop puts it back.


def _card_id(text: str) -> int | None | bool:
    """A neighbour's id as a drop sends it: None for "", the id for ASCII digits, False for junk."""
    text = text.strip()
    if not text:
        return None
    if text.isascii() and text.isdigit() and len(text) < 19:
        return int(text)
    return False


def _placed_card(request, card: Card, error: str = "", status: int = 200):
    """The card as the server has it, out of band right under the card above it in its column
    (or first in the column's list), with ``error`` shown on it."""
    fresh = Card.objects.select_related("agent", "current_run").prefetch_related("depends_on").get(pk=card.pk)
    context = {"card": fresh, "error": error, "above": fresh.card_above(), "queue": queue_places([fresh.current_run])}
    return HttpResponse(render_to_string("board/_placed.html", context, request), status=status)


@require_POST
@access.role_required(Role.MEMBER)
def card_drop(request, card_id):
    """The lead dropped the card on ``column`` (POST) between ``before`` (the id of the card
    just above it there; empty when dropped first) and ``after`` (the card just below; empty when
    last). The server puts it under ``before``, else above ``after``, else first or last when both
    have left the column meanwhile (Card.place). Answers the card, placed where the server has
    it: 200 when moved (In Progress starts the card), 409 with the reason on the card, back where
    it was, when the rules refuse (Review, Done, a running card to the Backlog, a card that waits
    for others), 400 for a column or neighbour that is junk, 404 for no such card."""
    card = get_object_or_404(Card.objects.select_related("project"), pk=card_id)
    column = request.POST.get("column", "")
    before, after = _card_id(request.POST.get("before", "")), _card_id(request.POST.get("after", ""))
    if column not in Column.values or before is False or after is False:
        return HttpResponseBadRequest(f"column must be one of {', '.join(Column.values)}, before and after card ids (or empty).")
    old = card.column
    try:
        card.move_by_hand(column)
    except BoardError as exc:
        return _placed_card(request, card, error=str(exc), status=409)
    card.refresh_from_db()
    if card.column != old:
        access.audit(request.user, "start" if card.column == Column.IN_PROGRESS else "move", card=card, to=card.column)
    if card.column == column:
        card.place(before, after)
    return _placed_card(request, card)


@require_POST
@access.role_required(Role.MAINTAINER)
def card_mark_done(request, card_id):
    """Put the card in Done without landing it (Card.mark_done): the card re-rendered for htmx
    (409 with the reason while it runs or when done), else back to its page."""
    return _card_action(request, card_id, "mark_done")


def permission_denied(request, exception=None):
    """The answer to a role too low (handler403): the reason (access.require_role's message) on
    a page, or alone as text for htmx, which shows it in place of a button's work."""
    reason = str(exception) if exception and str(exception) else "You may not do this here."
    if request.headers.get("HX-Request") == "true":
        return HttpResponse(reason, status=403, content_type="text/plain; charset=utf-8")
    return render(request, "403.html", {"reason": reason}, status=403)
