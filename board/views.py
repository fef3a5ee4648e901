"""Pages and htmx endpoints. Each view fetches, calls a model method and renders a partial or
redirects; none runs an agent (DESIGN.md, "Style")."""

from __future__ import annotations

import os

from django.contrib import messages
from django.db.models import Count
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.views.decorators.http import require_POST
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer

from agents import runner, worktrees
from board.forms import AgentForm, CardForm, ProjectForm
from board.models import Agent, BoardError, Card, Column, Project

LOG_KINDS = ("log", "step", "state")  # event kinds shown as lines of a run's log
LOG_TAIL = 500  # events shown when a card opens; the rest stays in the table
DIFF_LIMIT = 400_000  # characters of diff rendered at once; longer diffs are cut with a note


def home(request):
    projects = Project.objects.annotate(card_count=Count("cards"))
    return render(request, "board/home.html", {"projects": projects, "form": ProjectForm()})


@require_POST
def project_create(request):
    form = ProjectForm(request.POST)
    if form.is_valid():
        project = form.save()
        return redirect("board", project_id=project.pk)
    projects = Project.objects.annotate(card_count=Count("cards"))
    return render(request, "board/home.html", {"projects": projects, "form": form}, status=422)


def board_context(project: Project, oob: bool = False) -> dict:
    """What the board template needs: the project and its cards in the four columns, in order."""
    cards = list(project.cards.select_related("agent", "current_run"))
    columns = [
        {"value": value, "label": label, "cards": [c for c in cards if c.column == value]}
        for value, label in Column.choices
    ]
    return {"project": project, "columns": columns, "oob": oob}


def board(request, project_id):
    project = get_object_or_404(Project, pk=project_id)
    context = board_context(project)
    # The agent of the project's latest card is the likely next choice, not the first by name.
    last = project.cards.filter(agent__enabled=True).order_by("-id").values_list("agent__name", flat=True).first()
    context["form"] = CardForm(initial={"agent": last})
    return render(request, "board/board.html", context)


@require_POST
def card_create(request, project_id):
    project = get_object_or_404(Project, pk=project_id)
    form = CardForm(request.POST)
    if not form.is_valid():
        return render(request, "board/board.html#card-form", {"project": project, "form": form}, status=422)
    card = Card.create(project, form.cleaned_data["title"], form.cleaned_data["prompt"], form.cleaned_data["agent"])
    if request.htmx:
        # The new card goes into the Backlog at once; the push that follows replaces it by id.
        form = CardForm(initial={"agent": card.agent.name})
        html = render_to_string("board/board.html#card-form", {"project": project, "form": form}, request)
        html += render_to_string("board/board.html#card-push", {"card": card, "moved": True, "created": True}, request)
        return HttpResponse(html)
    return redirect("board", project_id=project.pk)


def _commits(card: Card) -> list[worktrees.Commit]:
    run = card.current_run
    if not (run and run.base_commit and card.worktree_path and os.path.isdir(card.worktree_path)):
        return []
    try:
        return worktrees.new_commits(card.worktree_path, run.base_commit)
    except worktrees.GitError:
        return []


def _diff_html(card: Card) -> tuple[str, str]:
    """The branch's diff against its merge-base with the base branch, highlighted, and a note."""
    if not card.branch:
        return "", "No branch yet: start the card."
    try:
        text = worktrees.diff_against_base(card.project.repo_path, card.project.base_branch, card.branch)
    except worktrees.GitError as exc:
        return "", str(exc)
    if not text:
        return "", "No changes against the base branch yet."
    note = ""
    if len(text) > DIFF_LIMIT:
        note = f"The diff is {len(text):,} characters; the first {DIFF_LIMIT:,} are shown."
        text = text[:DIFF_LIMIT]
    return highlight(text, DiffLexer(), HtmlFormatter(nowrap=True)), note


# The card page's parts, as the partials of card_detail.html name them; "page" is what only the
# full page shows (the runs table, the delete form).
CARD_PARTS = ("header", "log", "commits", "diff", "page")


def card_context(card: Card, parts: tuple[str, ...] = CARD_PARTS) -> dict:
    """What the card page needs for ``parts``, and only that: a push of the header, several times
    a second while a run prints, must not read the log or run git."""
    run = card.current_run
    context = {"card": card, "run": run, "can_start": not card.is_running and card.column != Column.DONE}
    if "log" in parts:
        events = []
        if run:
            events = list(run.events.filter(kind__in=LOG_KINDS, seq__gt=0).order_by("-seq")[:LOG_TAIL])[::-1]
        context.update(events=events, earlier=bool(events) and events[0].seq > 1)
    if "commits" in parts:
        context["commits"] = _commits(card)
    if "diff" in parts:
        context["diff_html"], context["diff_note"] = _diff_html(card)
    if "page" in parts:
        unlanded = 0
        if card.branch and os.path.isdir(card.project.repo_path):
            try:
                unlanded = worktrees.unlanded_commits(card.project.repo_path, card.project.base_branch, card.branch)
            except worktrees.GitError:
                unlanded = 0
        context.update(unlanded=unlanded, runs=card.runs.select_related("agent").order_by("-id"))
    return context


def card_detail(request, card_id):
    card = get_object_or_404(Card.objects.select_related("project", "agent", "current_run"), pk=card_id)
    return render(request, "board/card_detail.html", card_context(card))


def _card_action(request, card_id: int, action: str):
    """Call ``card.<action>()`` (start or stop); answer htmx with the card re-rendered (409 with
    the reason when refused), a plain form with a redirect to the card's page."""
    card = get_object_or_404(Card, pk=card_id)
    error = ""
    try:
        getattr(card, action)()
    except BoardError as exc:
        error = str(exc)
    card = Card.objects.select_related("agent", "current_run").get(pk=card.pk)
    if request.htmx:
        return render(request, "board/board.html#card", {"card": card, "error": error}, status=409 if error else 200)
    if error:
        messages.error(request, error)
    return redirect("card_detail", card_id=card.pk)


@require_POST
def card_start(request, card_id):
    return _card_action(request, card_id, "start")


@require_POST
def card_stop(request, card_id):
    return _card_action(request, card_id, "stop")


@require_POST
def card_delete(request, card_id):
    card = get_object_or_404(Card.objects.select_related("project", "current_run"), pk=card_id)
    project_id = card.project_id
    try:
        note = runner.delete_card(card, delete_branch=request.POST.get("delete_branch") == "on")
    except (BoardError, worktrees.GitError) as exc:
        messages.error(request, f"The card was not deleted: {exc}")
        return redirect("card_detail", card_id=card_id)
    messages.success(request, f"Card #{card_id} deleted. {note}")
    return redirect("board", project_id=project_id)


def agents(request):
    form = AgentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        agent = form.save()
        messages.success(request, f"Agent '{agent.name}' added.")
        return redirect("agents")
    rows = [(a, a.installed) for a in Agent.objects.all()]
    # Only whether each named variable is set; values are never shown.
    key_vars_set = {a.api_key_env for a, _ in rows if a.api_key_env and os.environ.get(a.api_key_env)}
    context = {"rows": rows, "form": form, "key_vars_set": key_vars_set}
    return render(request, "board/agents.html", context, status=422 if form.errors else 200)


@require_POST
def agent_toggle(request, agent_id):
    agent = get_object_or_404(Agent, pk=agent_id)
    try:
        agent.set_enabled(not agent.enabled)
    except BoardError as exc:
        messages.error(request, str(exc))
    return redirect("agents")

