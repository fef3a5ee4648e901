"""The domain: projects, agents, cards, runs and their events.

This module knows no views, no git, no subprocess and no model provider (see DESIGN.md, "Which part
may know which"). Only the server moves a run or a card; the methods here are the only way it does.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import NamedTuple

from django.conf import settings
from django.db import models, transaction
from django.db.models import F, Max, Value
from django.db.models.functions import Coalesce, Length, Replace
from django.utils import timezone


class BoardError(Exception):
    """A request the domain refuses; ``str(e)`` is a sentence to show the user."""


class Column(models.TextChoices):
    BACKLOG = "backlog", "Backlog"
    IN_PROGRESS = "in_progress", "In Progress"
    REVIEW = "review", "Review"
    DONE = "done", "Done"


class RunState(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    AWAITING_APPROVAL = "awaiting_approval", "awaiting approval"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    STOPPED = "stopped", "stopped"
    INTERRUPTED = "interrupted", "interrupted"


class Approvals(models.TextChoices):
    """When the built-in agent waits for the lead (agents.tools.needs_approval)."""

    AUTO = "auto", "Automatic"
    COMMANDS = "commands", "Ask before running a command"
    CHANGES = "changes", "Ask before every change"


class Mode(models.TextChoices):
    ACT = "act", "Act"
    PLAN = "plan", "Plan first, act once approved"


class LandMode(models.TextChoices):
    """How a card's branch lands on the base branch."""

    MERGE = "merge", "Merge commit"
    SQUASH = "squash", "Squash into one commit"
    REBASE = "rebase", "Rebase and fast-forward"


ACTIVE_STATES = (RunState.QUEUED, RunState.RUNNING, RunState.AWAITING_APPROVAL)
FINAL_STATES = (RunState.SUCCEEDED, RunState.FAILED, RunState.STOPPED, RunState.INTERRUPTED)
LOG_CHUNK_CHARS = 32_000  # characters of output in one stored event at most
LOG_KEEP_HEAD = 5  # output chunks at a run's start never dropped by the retention limit


class Project(models.Model):
    """A local git repository the board works on: worktrees are made from ``base_branch``."""

    name = models.CharField(max_length=200)
    repo_path = models.CharField(max_length=4096, help_text="Absolute path of the repository's working tree.")
    base_branch = models.CharField(max_length=255)
    branch_prefix = models.CharField(max_length=100, default="agent")
    copy_files = models.TextField(
        blank=True,
        help_text="Gitignored files to copy into each new worktree: one pattern a line, such as .env or config/local.py.",
    )
    setup_command = models.TextField(
        blank=True, help_text="Run in each new worktree before the agent, such as npm ci. If it fails, the run fails."
    )
    # The built-in agent's model for this project's cards (a card may override it).
    model = models.CharField(
        max_length=200, blank=True,
        help_text="litellm model string, such as openai/gpt-4o-mini or ollama_chat/qwen2.5-coder. "
        "Empty: the agent's own model.",
    )
    api_base = models.CharField(max_length=500, blank=True, help_text="Endpoint URL, for local or self-hosted servers.")
    api_key_env = models.CharField(
        max_length=100, blank=True, help_text="NAME of the environment variable holding the key (never the key)."
    )
    context_window = models.PositiveIntegerField(
        null=True, blank=True, help_text="The model's context window in tokens; empty: litellm's figure, else 8192."
    )
    approvals = models.CharField(max_length=20, choices=Approvals.choices, default=Approvals.AUTO)
    check_command = models.TextField(
        blank=True,
        help_text="Must pass before the agent may finish, such as ruff check . or npm run lint. "
        "Changed Python files are always syntax-checked.",
    )
    max_steps = models.PositiveIntegerField(null=True, blank=True, help_text="Model calls per run; empty: the board's default.")
    max_cost = models.DecimalField(
        max_digits=10, decimal_places=2, null=True, blank=True, help_text="US dollars per run (litellm's prices)."
    )
    max_minutes = models.PositiveIntegerField(null=True, blank=True, help_text="Working minutes per run.")
    land_mode = models.CharField(max_length=10, choices=LandMode.choices, default=LandMode.MERGE)
    default_agent = models.ForeignKey(
        "Agent", on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        help_text="The agent new cards of this project get unless another is chosen.",
    )
    delete_branch_on_land = models.BooleanField(
        default=False, help_text="Delete a card's branch once it has landed (its commits are on the base branch)."
    )
    remote = models.CharField(
        max_length=100, default="origin", help_text="Remote that cards' branches are pushed to for pull requests."
    )
    max_parallel = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Runs of this project at once; empty: as many as there are workers. The rest wait in the queue.",
    )
    mcp_servers = models.TextField(
        blank=True,
        help_text="MCP servers whose tools the built-in agent gets, one a line: name: command args, or name: https://url",
    )
    sandbox_network = models.BooleanField(
        default=False, help_text="Let sandboxed agent commands reach the network (bubblewrap sandbox only)."
    )
    remote_url = models.CharField(
        max_length=2000, blank=True,
        help_text="Shared remote that workers on other hosts clone from and push cards' branches to.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "id"]

    @property
    def copy_patterns(self) -> list[str]:
        """The non-empty lines of ``copy_files``."""
        return [line.strip() for line in self.copy_files.splitlines() if line.strip()]

    def __str__(self):
        return self.name


class Agent(models.Model):
    """Who works on a card: a command line (an external CLI agent or any script) or the built-in
    tool-calling loop over litellm, configured by a litellm model string, an optional API base and
    the *name* of the environment variable that holds the key (never the key itself)."""

    class Kind(models.TextChoices):
        COMMAND = "command", "Command"
        BUILTIN = "builtin", "Built-in"

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    command = models.TextField(blank=True, help_text="Shell command run in the worktree (command agents).")
    program = models.CharField(
        max_length=100, blank=True, help_text="Executable a ready-made template needs; empty for your own."
    )
    model = models.CharField(max_length=200, blank=True, help_text="litellm model string (built-in agents).")
    api_base = models.CharField(max_length=500, blank=True)
    api_key_env = models.CharField(max_length=100, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-enabled", "name"]

    def __str__(self):
        return self.name

    @property
    def installed(self) -> bool:
        """Whether the program a ready-made template needs is on the PATH (True for others)."""
        import shutil

        return not self.program or shutil.which(self.program) is not None

    def set_enabled(self, enabled: bool) -> None:
        """Enable or disable the agent; raises BoardError when enabling a template whose program
        is not installed on this machine."""
        if enabled and not self.installed:
            raise BoardError(f"'{self.program}' is not installed on this machine, so '{self.name}' cannot be enabled.")
        self.enabled = enabled
        self.save(update_fields=["enabled"])

    @property
    def describe(self) -> str:
        """One line for lists: the command, or the model and where it is served."""
        if self.kind == self.Kind.COMMAND:
            return self.command
        return self.model + (f" @ {self.api_base}" if self.api_base else "")


class Card(models.Model):
    """A task on the board. ``branch`` and ``worktree_path`` are set by its first run and then kept,
    even when the title changes."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="cards")
    title = models.CharField(max_length=300)
    prompt = models.TextField(blank=True, help_text="What the agent is asked to do.")
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, null=True, related_name="cards")
    column = models.CharField(max_length=20, choices=Column.choices, default=Column.BACKLOG)
    position = models.IntegerField(default=0)
    branch = models.CharField(max_length=300, blank=True)
    worktree_path = models.CharField(max_length=4096, blank=True)
    worktree_host = models.CharField(
        max_length=255, blank=True, help_text="The worker node whose data folder holds the worktree; empty: this one."
    )
    worktree_ready = models.BooleanField(
        default=False, help_text="Files copied and setup command done in the worktree; redone until it is."
    )
    current_run = models.ForeignKey("Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.ACT)
    # Overrides of the project's settings for this card; empty means the project's.
    model = models.CharField(max_length=200, blank=True, help_text="Empty: the project's model.")
    api_base = models.CharField(max_length=500, blank=True)
    api_key_env = models.CharField(max_length=100, blank=True)
    approvals = models.CharField(max_length=20, choices=Approvals.choices, blank=True, help_text="Empty: the project's.")
    max_steps = models.PositiveIntegerField(null=True, blank=True)
    max_cost = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True)
    max_minutes = models.PositiveIntegerField(null=True, blank=True)
    land_mode = models.CharField(max_length=10, choices=LandMode.choices, blank=True, help_text="Empty: the project's.")
    landed_commit = models.CharField(max_length=64, blank=True, help_text="The base branch's commit the landing made.")
    landed_at = models.DateTimeField(null=True, blank=True)
    pr_url = models.URLField(max_length=500, blank=True, help_text="The pull request opened for the card's branch.")
    depends_on = models.ManyToManyField(
        "self", symmetrical=False, related_name="dependents", blank=True,
        help_text="Cards that must land before this one starts.",
    )
    start_when_ready = models.BooleanField(
        default=False, help_text="Start by itself once every card it depends on has landed."
    )
    labels = models.JSONField(default=list, blank=True, help_text="Short labels for search and filters.")
    variant_of = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="variants",
        help_text="The card this one is a variant of: the same task on another agent or model, for comparison.",
    )
    conflicts = models.JSONField(
        null=True, blank=True,
        help_text='The last trial merge with the base: {"base": sha, "files": [paths], "checked_at": iso time}.',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["position", "id"]

    def __str__(self):
        return f"#{self.pk} {self.title}"

    @classmethod
    def create(cls, project: Project, title: str, prompt: str, agent: Agent | None, mode: str = Mode.ACT) -> Card:
        """A new card at the end of the Backlog, announced to open boards. ``mode`` is "act" or
        "plan" (the built-in agent plans first and waits for the lead's approval)."""
        with transaction.atomic():
            last = project.cards.filter(column=Column.BACKLOG).aggregate(m=Max("position"))["m"]
            card = cls.objects.create(
                project=project, title=title, prompt=prompt, agent=agent, position=(last or 0) + 1,
                mode=mode or Mode.ACT,
            )
            Event.record(card, None, "card", "created", {"to": card.column})
        return card

    @property
    def is_running(self) -> bool:
        return self.current_run is not None and self.current_run.state in ACTIVE_STATES

    def has_active_run(self) -> bool:
        """Whether any run of the card is queued, running or awaiting approval, read from the
        database (not from ``current_run``, which a caller may hold stale)."""
        return self.runs.active().exists()

    def model_settings(self) -> dict:
        """The built-in agent's model for this card: ``{"model", "api_base", "api_key_env",
        "source"}`` from the card's override if it names a model, else the project's, else the
        card's agent's; ``source`` says which ("card", "project", "agent"; "" when none is set)."""
        for source, owner in (("card", self), ("project", self.project), ("agent", self.agent)):
            if owner is not None and owner.model:
                return {"model": owner.model, "api_base": owner.api_base, "api_key_env": owner.api_key_env,
                        "source": source}
        return {"model": "", "api_base": "", "api_key_env": "", "source": ""}

    def budget(self) -> dict:
        """This card's budget per run: ``{"steps": int, "cost": float | None (US dollars),
        "minutes": int | None}``, each from the card, else the project, else the board's default
        (settings.BOARD_MAX_STEPS; BOARD_RUN_TIMEOUT for the time)."""
        from django.conf import settings

        def pick(name):
            value = getattr(self, name)
            return value if value is not None else getattr(self.project, name)

        cost = pick("max_cost")
        minutes = pick("max_minutes")
        return {
            "steps": pick("max_steps") or settings.BOARD_MAX_STEPS,
            "cost": float(cost) if cost is not None else None,
            "minutes": minutes if minutes is not None else max(1, settings.BOARD_RUN_TIMEOUT // 60),
        }

    @property
    def effective_approvals(self) -> str:
        return self.approvals or self.project.approvals

    def start(self, follow_up: str = "") -> Run:
        """Queue a run of the card's agent and move the card to In Progress.

        With ``follow_up`` (the lead's feedback on a card in Review), the new run goes on from the
        latest run in the same worktree and branch, and, for the built-in agent, in the same
        conversation. The task is enqueued only after the transaction commits, with the run's id,
        so a worker never sees a run that is not stored. Raises BoardError when the card is already
        running, is done, has no enabled agent, or its built-in agent has no model, and when a card it
        waits for (``depends_on``) is not done yet."""
        follow_up = follow_up.strip()

        def new_run(card: Card) -> tuple[dict, dict]:
            if follow_up and card.current_run_id is None:
                raise BoardError("Start the card first; a follow-up goes on from a run.")
            waiting = card.waiting_for
            if waiting and not follow_up:
                names = ", ".join(f"#{c.pk}" for c in waiting)
                then = ("; it will start by itself when they have landed." if card.start_when_ready
                        else ", or mark them done.")
                raise BoardError(f"This card waits for {names}: they must land first{then}")
            fields = {"prompt": follow_up, "mode": Mode.ACT if follow_up else card.mode,
                      "previous": card.current_run if follow_up else None}
            return fields, {}

        return self._queue_run(new_run)

    def _queue_run(self, new_run) -> Run:
        """Create and queue a run of the card's agent, in one transaction with the card locked
        for reading: ``new_run(card) -> (run fields, data of the "queued" event)`` may refuse with
        BoardError first; then the checks every run needs (nothing running, not done, an enabled
        agent, a model for the built-in one)."""
        with transaction.atomic():
            card = Card.objects.select_related("agent", "project", "current_run").get(pk=self.pk)
            fields, data = new_run(card)
            if card.has_active_run():
                raise BoardError("This card is already running.")
            if card.column == Column.DONE:
                raise BoardError("This card is done; create a new card for more work.")
            if card.agent is None:
                raise BoardError("Choose an agent for this card first.")
            if not card.agent.enabled:
                raise BoardError(f"The agent '{card.agent.name}' is not enabled.")
            if card.agent.kind == Agent.Kind.BUILTIN and not card.model_settings()["model"]:
                raise BoardError("Set a model first: in the project's settings, or on this card.")
            run = Run.objects.create(card=card, agent=card.agent, state=RunState.QUEUED, budget=card.budget(),
                                     queued_at=timezone.now(), **fields)
            card.current_run = run
            card.save(update_fields=["current_run", "updated_at"])
            card.move_to(Column.IN_PROGRESS)
            run.emit("state", "queued", data)
            transaction.on_commit(run.enqueue)
        self.refresh_from_db()
        return run

    def move_to(self, column: str) -> None:
        """Put the card at the top of ``column`` and tell open boards where it went."""
        if self.column == column:
            return
        old = self.column
        first = Card.objects.filter(project_id=self.project_id, column=column).aggregate(m=models.Min("position"))["m"]
        self.column = column
        self.position = (first or 0) - 1
        self.save(update_fields=["column", "position", "updated_at"])
        Event.record(self, self.current_run, "card", "moved", {"from": old, "to": column})

    # Moving cards by hand (drag and drop) and dependencies between cards. Only these methods and
    # the ones above move a card: the board asks, the rules here answer.

    def reorder(self, ids: list[int]) -> None:
        """Order the cards of this card's column as ``ids`` says (card ids, top first), in one
        transaction, and tell open boards (an Event "card" with ``{"from": column, "to": column,
        "reordered": column}``). Ids not in the column are ignored; cards of the column that
        ``ids`` leaves out keep their order after the named ones. Raises nothing for junk ids:
        the server's order is the truth, and a stale browser's list is only a wish."""
        with transaction.atomic():
            cards = list(Card.objects.select_for_update().filter(project_id=self.project_id, column=self.column))
            by_id = {card.pk: card for card in cards}
            named = [by_id.pop(pk) for pk in dict.fromkeys(ids) if pk in by_id]
            ordered = named + sorted(by_id.values(), key=lambda c: (c.position, c.pk))
            changed = []
            for position, card in enumerate(ordered):
                if card.position != position:
                    card.position = position
                    changed.append(card)
            Card.objects.bulk_update(changed, ["position"])
            Event.record(self, None, "card", "reordered", {"from": self.column, "to": self.column, "reordered": self.column})

    POSITION_GAP = 1024  # between neighbours placed by ``place``, so that a drop writes one row

    def place(self, before: int | None = None, after: int | None = None) -> None:
        """Put the card, within its column, just below card ``before`` (the card the lead dropped
        it under) or, when that one is not in the column (moved or deleted meanwhile), just above
        card ``after``; when neither is there, at the top if ``before`` is None (dropped first),
        else at the bottom. Reads the column's (id, position) pairs and writes the card's position
        only: positions keep POSITION_GAP between them, and the column is renumbered only when two
        neighbours leave no room. Tells open boards with an Event "card" ``{"from": column, "to":
        column, "placed": column}``, on which they move this card alone (BoardConsumer)."""
        with transaction.atomic():
            rows = list(Card.objects.select_for_update().filter(project_id=self.project_id, column=self.column)
                        .exclude(pk=self.pk).order_by("position", "id").values_list("pk", "position"))
            ids = [pk for pk, _ in rows]
            if before in ids:
                at = ids.index(before) + 1
            elif after in ids:
                at = ids.index(after)
            else:
                at = 0 if before is None else len(ids)
            above = rows[at - 1][1] if at > 0 else None
            below = rows[at][1] if at < len(rows) else None
            if above is not None and below is not None and below - above < 2:
                gap = self.POSITION_GAP
                Card.objects.bulk_update([Card(pk=pk, position=i * gap) for i, (pk, position) in enumerate(rows)
                                          if position != i * gap], ["position"], batch_size=500)
                above, below = (at - 1) * gap, at * gap
            if above is None and below is None:
                position = 0
            elif above is None:
                position = below - self.POSITION_GAP
            elif below is None:
                position = above + self.POSITION_GAP
            else:
                position = (above + below) // 2
            Card.objects.filter(pk=self.pk).update(position=position, updated_at=timezone.now())
            self.position = position
            Event.record(self, None, "card", "placed", {"from": self.column, "to": self.column, "placed": self.column})

    def card_above(self) -> int | None:
        """The id of the card just above this one in its column (by position, then id), or None
        when it is the first: where a board puts it back."""
        return (Card.objects.filter(project_id=self.project_id, column=self.column)
                .filter(models.Q(position__lt=self.position) | models.Q(position=self.position, pk__lt=self.pk))
                .order_by("-position", "-id").values_list("pk", flat=True).first())

    def move_by_hand(self, column: str) -> None:
        """The lead dropped the card on ``column`` (a Column value): apply the board's rules. To In
        Progress starts it (``start``); back to Backlog only when nothing runs and it is not done;
        Review only by a run that succeeded and Done only by landing or ``mark_done``, so both are
        refused here. The same column is no move. Raises BoardError with the reason, or as
        ``start``; ValueError for a column that does not exist."""
        if column not in Column.values:
            raise ValueError(f"'{column}' is not a column; use one of {', '.join(Column.values)}.")
        if column == self.column:
            return
        if column == Column.IN_PROGRESS:
            self.start()
        elif column == Column.BACKLOG:
            self._move_when_idle(Column.BACKLOG, "This card is done; create a new card for more work.",
                                 "This card is running: stop it before moving it back to the Backlog.")
        elif column == Column.REVIEW:
            raise BoardError("A card reaches Review only when a run of its agent succeeds; start it instead.")
        else:
            raise BoardError("A card reaches Done only by landing it (Land, from Review) or by Mark done.")

    def mark_done(self) -> None:
        """Put the card in Done without landing it: for work that is not to be landed (a question
        answered, a branch kept aside). Cards waiting for it may then start by themselves
        (``start_ready_dependents``, after the commit). Raises BoardError while a run is active or
        when the card is done already."""
        self._move_when_idle(Column.DONE, "This card is done already.",
                             "This card is running: stop it or let it end before marking it done.")

    def _move_when_idle(self, column: str, done_reason: str, running_reason: str) -> None:
        """Move the card to ``column`` by hand, with the card locked: refused (BoardError) with
        ``done_reason`` when it is done, ``running_reason`` while a run is active. Into Done, it
        says it was marked done and lets cards waiting for it start, once that commits."""
        with transaction.atomic():
            card = Card.objects.select_for_update().get(pk=self.pk)
            if card.column == Column.DONE:
                raise BoardError(done_reason)
            if card.has_active_run():
                raise BoardError(running_reason)
            card.move_to(column)
            if column == Column.DONE:
                Event.record(card, None, "card", "marked done", {})
                transaction.on_commit(card.start_ready_dependents)
        self.refresh_from_db()

    # Where a list of the cards this one depends on, read ahead for many cards at once, is kept
    # (read_dependencies, for views.board_context); waiting_for reads it if there.
    DEPENDS_ON_READ = "depends_on_read"

    @classmethod
    def read_dependencies(cls, cards: list[Card], project_id: int) -> None:
        """Give each of ``cards`` (cards of project ``project_id``) the list of the cards it
        depends on, in the cards' order (position, id), for ``waiting_for``: one query over the
        project's dependencies. Prefetched as ``depends_on`` (an IN list of every card's id and a
        queryset per card to hold the result), a board of 1,000 cards took about 10 ms more."""
        links = (cls.depends_on.through.objects.filter(from_card__project_id=project_id)
                 .select_related("to_card").defer("to_card__prompt", "to_card__conflicts")
                 .order_by("to_card__position", "to_card__id"))
        read: dict[int, list[Card]] = {}
        for link in links:
            read.setdefault(link.from_card_id, []).append(link.to_card)
        for card in cards:
            setattr(card, cls.DEPENDS_ON_READ, read.get(card.pk, []))

    @property
    def waiting_for(self) -> list[Card]:
        """The cards this one depends on that are not done yet (landed or marked done), by id."""
        deps = self.__dict__.get(self.DEPENDS_ON_READ)
        return [card for card in (self.depends_on.all() if deps is None else deps) if card.column != Column.DONE]

    def check_dependencies(self, cards) -> None:
        """Refuse (BoardError) to make this card wait for ``cards`` (Cards) when one is the card
        itself, belongs to another project, or already waits, directly or not, for this card (a
        cycle: neither would ever start)."""
        cards = list(cards)
        for other in cards:
            if other.pk == self.pk:
                raise BoardError("A card cannot wait for itself.")
            if other.project_id != self.project_id:
                raise BoardError(f"Card #{other.pk} is in another project; a card waits only for cards of its own project.")
        # Walk what the new dependencies wait for, one level a query; reaching this card is a cycle.
        seen, frontier = set(), {c.pk for c in cards}
        while frontier:
            if self.pk in frontier:
                raise BoardError(
                    f"That would make a cycle: card #{self.pk} would wait, through others, for itself. "
                    "Remove one of the waits first."
                )
            seen |= frontier
            frontier = set(
                Card.depends_on.through.objects.filter(from_card_id__in=frontier).values_list("to_card_id", flat=True)
            ) - seen

    def set_dependencies(self, cards, start_when_ready: bool) -> None:
        """Make this card wait for ``cards`` (Cards of its project; an empty list: for none) and,
        with ``start_when_ready``, start by itself once they are all done. Raises BoardError as
        ``check_dependencies``."""
        cards = list(cards)
        self.check_dependencies(cards)
        with transaction.atomic():
            self.depends_on.set(cards)
            self.start_when_ready = bool(start_when_ready)
            self.save(update_fields=["start_when_ready", "updated_at"])
            Event.record(self, None, "card", "dependencies set", {"waits_for": sorted(c.pk for c in cards)})

    def set_labels(self, labels: list[str]) -> None:
        """Replace the card's labels with ``labels`` (already normalised: board.forms.parse_labels)
        and tell open boards, whose filters and tiles show them. No event when nothing changed."""
        labels = list(labels)
        if labels == list(self.labels or []):
            return
        with transaction.atomic():
            self.labels = labels
            self.save(update_fields=["labels", "updated_at"])
            Event.record(self, None, "card", "labels set", {"labels": labels})

    def start_ready_dependents(self) -> list[Card]:
        """Start every card waiting for this one that asked to start by itself and waits for
        nothing else now (all its dependencies done), and is idle in the Backlog (a card moved on
        by hand meanwhile is the lead's again). Returns the cards started; a card that may not start
        (no agent, no model…) is left where it is, the reason recorded as an event on it rather than
        raised: the landing that called this has happened."""
        started = []
        candidates = self.dependents.filter(start_when_ready=True, column=Column.BACKLOG)
        for card in candidates.select_related("agent", "project"):
            if card.waiting_for or card.has_active_run():
                continue
            try:
                card.start()
            except BoardError as exc:
                with transaction.atomic():
                    Event.record(card, None, "card", f"{START_FAILED}{exc}", {})
                    # A changed card: boards render it afresh (their kept HTML is keyed by its fields).
                    Card.objects.filter(pk=card.pk).update(updated_at=timezone.now())
                continue
            started.append(card)
        return started

    @cached_property
    def start_failure(self) -> str:
        """Why this card did not start by itself when the last card it waited for landed (the
        reason ``start_ready_dependents`` recorded), while that still holds: the card asked to,
        sits in the Backlog, waits for nothing and has not been started since; "" otherwise. Reads
        one event, and only for such a card; board_context sets it for a whole board at once."""
        if self.column != Column.BACKLOG or not self.start_when_ready or self.is_running or self.waiting_for:
            return ""
        found = start_failures([self])
        return found.get(self.pk, "")

    def follow_up(self, text: str) -> Run:
        """Send the card back to its agent with the lead's ``text`` (see ``start``). Raises
        BoardError for an empty text or a card that is not in Review."""
        if not text.strip():
            raise BoardError("Write what the agent should do next.")
        if self.column != Column.REVIEW:
            raise BoardError("Only a card in Review takes a follow-up.")
        return self.start(follow_up=text)

    # Review comments. Whether a line is in the diff is the review module's to check (it reads
    # git); these are their records and the one follow-up that sends them.

    def add_comment(self, path: str, line: int, side: str, text: str, commit: str = "") -> DiffComment:
        """Store the lead's comment on line ``line`` (from 1) of ``side`` ("old" or "new") of
        ``path`` in the card's diff: the whole branch's when ``commit`` is "", else that
        checkpoint's (full sha). The caller has checked the line is in that diff
        (board.review.find_line). Raises BoardError for an empty text, a bad side or line, or a
        card that is done."""
        if not text.strip():
            raise BoardError("Write a comment.")
        if side not in DiffComment.Side.values or not isinstance(line, int) or line < 1 or not path:
            raise BoardError("A comment needs a path, a line number from 1 and a side (old or new).")
        if self.column == Column.DONE:
            raise BoardError("This card is done; its diff takes no more comments.")
        return DiffComment.objects.create(card=self, path=path, line=line, side=side, text=text.strip(), commit=commit)

    @property
    def comments_to_send(self):
        """The lead's comments not sent to the agent yet, by path and line."""
        return self.comments.filter(sent_run=None)

    def send_comments(self, message: str = "", quotes: Mapping[int, str] | None = None) -> Run:
        """Send every unsent comment back to the agent together, as ONE follow-up (``follow_up``)
        whose text lists each comment with its path, line, side and the commented line's text
        (``quotes``: {comment id: line text}, read from the diff by the caller; a comment missing
        from it goes without), then ``message``, the lead's general word, if any. The comments are
        marked sent with the new run. Raises BoardError when there is no comment to send, and as
        ``follow_up`` (not in Review, already running)."""
        with transaction.atomic():
            comments = list(self.comments_to_send.order_by("commit", "path", "line", "id"))
            if not comments:
                raise BoardError("There are no comments to send: click a line number in the diff to comment on it.")
            run = self.follow_up(DiffComment.prompt(comments, quotes or {}, message))
            DiffComment.objects.filter(pk__in=[c.pk for c in comments], sent_run=None).update(sent_run=run)
        return run

    def resume(self) -> Run:
        """Go on with a run that was interrupted, stopped or failed: a new run in the same worktree
        and branch that, for the built-in agent, continues from the last stored step (a command
        agent is run again). Raises BoardError when there is nothing to resume, and as ``start``."""

        def new_run(card: Card) -> tuple[dict, dict]:
            last = card.current_run
            if last is None or last.state not in (RunState.INTERRUPTED, RunState.STOPPED, RunState.FAILED):
                raise BoardError("Only an interrupted, stopped or failed run can be resumed.")
            return {"mode": last.mode, "previous": last}, {"resumed": last.pk}

        return self._queue_run(new_run)

    def stop(self) -> None:
        """Stop the card's run (see Run.request_stop); raises BoardError when nothing runs."""
        run = Run.objects.filter(pk=self.current_run_id).first()
        if run is None or not run.is_active:
            raise BoardError("This card is not running.")
        run.request_stop()

    def remove(self) -> None:
        """Delete the card, its runs and their events, and tell open boards. The caller has
        stopped its agent and dealt with its worktree and branch first (agents.runner)."""
        with transaction.atomic():
            if self.variant_of_id == self.pk:
                # The original of a group goes: the next card by id leads the group on.
                rest = Card.objects.filter(variant_of_id=self.pk).exclude(pk=self.pk)
                heir = rest.order_by("id").values_list("pk", flat=True).first()
                if heir is not None:
                    rest.update(variant_of_id=heir)
            Event.record(self, None, "card", "deleted", {"from": self.column, "to": None})
            self.delete()

    # Landing. The git work is agents/landing.py's; these are its guards and its records.

    @property
    def effective_land_mode(self) -> str:
        """How this card lands: its own LandMode, else its project's."""
        return self.land_mode or self.project.land_mode

    def check_branch_idle(self, doing: str) -> None:
        """Refuse (BoardError) to ``doing`` (such as "land", "rebase") the card's branch while it
        has landed already, has no branch yet, or a run is active (queued, running, awaiting
        approval): that run works on the branch and would race the change."""
        if self.landed_commit:
            raise BoardError(f"This card has already landed as {self.landed_commit[:10]}.")
        if not self.branch:
            raise BoardError(f"Nothing to {doing}: the card has no branch yet; start it first.")
        active = self.runs.active().values_list("state", flat=True).first()
        if active:
            raise BoardError(
                f"A run of this card is still {RunState(active).label}: wait for it to end or stop it, then {doing}."
            )

    def check_can_land(self) -> None:
        """Refuse (BoardError) to land a card that may not land now: see ``check_branch_idle``, and
        only a card in Review lands. Review means its last run succeeded (and passed its checks);
        the work of a run that failed or was stopped halfway is resumed or started again first,
        rather than landed by accident from In Progress."""
        self.check_branch_idle("land")
        if self.column != Column.REVIEW:
            raise BoardError(
                f"Only a card in Review can land; this one is in {self.get_column_display()}: "
                "its last run must succeed first."
            )

    def record_landing(self, sha: str, mode: str, note: str = "") -> None:
        """The card's branch has landed as commit ``sha`` (LandMode ``mode``): remember it, move the
        card to Done and tell open boards and card pages; once that commits, cards waiting for it
        start if they asked to (``start_ready_dependents``)."""
        with transaction.atomic():
            self.landed_commit, self.landed_at, self.conflicts = sha, timezone.now(), None
            self.save(update_fields=["landed_commit", "landed_at", "conflicts", "updated_at"])
            self.move_to(Column.DONE)
            Event.record(self, None, "card", note or f"landed as {sha[:10]}", {"landed": sha, "mode": mode})
            _notify_webhooks(WebhookEvent.LANDED, self.pk, self.current_run)
            # Cards waiting for this one may start now; only once the landing is stored for good.
            transaction.on_commit(self.start_ready_dependents)

    def record_conflicts(self, base: str, files: list[str]) -> None:
        """The result of a trial merge with the base at commit ``base``: the conflicting ``files``
        ([] when it merges cleanly), shown on the card until the next check or landing."""
        self.conflicts = {"base": base, "files": list(files), "checked_at": timezone.now().isoformat()}
        self.save(update_fields=["conflicts", "updated_at"])
        Event.record(self, None, "card", "conflicts checked", {"conflicts": self.conflicts})

    def record_pull_request(self, url: str) -> None:
        """A pull request was opened for the card's branch at ``url``."""
        self.pr_url = url[:500]
        self.save(update_fields=["pr_url", "updated_at"])
        Event.record(self, None, "card", "pull request opened", {"url": self.pr_url})

    def resolve_conflicts(self) -> Run:
        """Send the card back to its agent (a follow-up run) to merge the base branch into its
        branch and resolve the conflicts the last check found. Raises BoardError when no conflict
        is known, and as ``follow_up``."""
        files = (self.conflicts or {}).get("files") or []
        if not files:
            raise BoardError("No conflicts are known: check for conflicts first.")
        base = self.project.base_branch
        at = (self.conflicts or {}).get("base", "")
        listed = "\n".join(f"- {path}" for path in files)
        text = (
            f"This branch conflicts with the base branch {base}{f' (at {at[:10]})' if at else ''} in these files:\n"
            f"{listed}\n\n"
            f"Merge {base} into this branch (git merge {base}), resolve the conflicts in those files so that both "
            "sides' intent is kept, make sure the result works, and commit the merge. Do not rebase, and do not "
            f"change {base} itself."
        )
        return self.follow_up(text)

    # Variants (issue 7, "Several models on one card"): the same task started on several agents or
    # models at once, one ordinary card each (own branch, worktree and runs), compared side by side,
    # one of them landed and the others cleaned up (agents/variants.py). The original of a group
    # points to itself (variant_of = its own id): so any card knows from its own row, without a
    # query, whether it is in a group and which card leads it, which the board needs for 1,000 cards.

    MAX_VARIANTS = 8  # cards one "Start on several" may run at once, the original included

    @property
    def variant_root_id(self) -> int | None:
        """The id of the original of this card's group (None for a card in no group)."""
        return self.variant_of_id

    @property
    def variant_label(self) -> str:
        """What tells this card apart in its group: the model for the built-in agent, else the
        agent's name."""
        if self.agent is not None and self.agent.kind == Agent.Kind.BUILTIN:
            return self.model_settings()["model"] or self.agent.name
        return self.agent.name if self.agent else "no agent"

    def variant_group(self) -> list[Card]:
        """The cards of this card's group: the original first, then its variants by id; ``[self]``
        for a card in no group."""
        if self.variant_of_id is None:
            return [self]
        cards = Card.objects.filter(variant_of_id=self.variant_of_id).select_related("project", "agent", "current_run")
        return sorted(cards, key=lambda c: (c.pk != c.variant_of_id, c.pk))

    @cached_property
    def variant_count(self) -> int:
        """How many cards the card's group of variants holds, itself included (0 for a card in
        no group): what its Compare link says. One query; board_context sets it for a whole board
        from the cards it read."""
        if self.variant_of_id is None:
            return 0
        return Card.objects.filter(variant_of_id=self.variant_of_id).count()

    def start_variants(self, choices: list[tuple[Agent, str]]) -> list[Run]:
        """Start this Backlog card on several agents or models at once. ``choices``: ``(agent,
        model)`` pairs, ``model`` a litellm model string for a built-in agent or "" for the model
        the card would use anyway (duplicates count once). The card itself takes the first choice;
        each other one becomes a new card (the title + " · <agent or model>", the same prompt and
        settings, the same endpoint and key variable for a model string) in the same group
        (``variant_of``), and all are started. All or nothing: one transaction. Returns the runs,
        the card's first. Raises BoardError for fewer than two or more than MAX_VARIANTS choices,
        a model string for a command agent, a disabled agent, a card that is not in the Backlog
        (or is done), and as ``start`` for any of them (named in the message)."""
        unique = list(dict.fromkeys((agent, (model or "").strip()) for agent, model in choices))
        if len(unique) < 2:
            raise BoardError("Choose at least two agents or models; one is started with Start.")
        if len(unique) > self.MAX_VARIANTS:
            raise BoardError(f"At most {self.MAX_VARIANTS} agents or models at once; {len(unique)} were chosen.")
        for agent, model in unique:
            if not agent.enabled:
                raise BoardError(f"The agent '{agent.name}' is not enabled.")
            if model and agent.kind != Agent.Kind.BUILTIN:
                raise BoardError(f"'{agent.name}' runs a command: a model string is for the built-in agent only.")
        with transaction.atomic():
            card = Card.objects.select_for_update(of=("self",)).select_related("project", "agent").get(pk=self.pk)
            if card.column == Column.DONE:
                raise BoardError("This card is done; create a new card for more work.")
            if card.column != Column.BACKLOG or card.has_active_run():
                raise BoardError(f"Only a card in the Backlog starts on several agents at once; this one is in "
                                 f"{card.get_column_display()}.")
            endpoint = card.model_settings()  # a model string is served where the card's model is
            root_id = card.variant_of_id or card.pk
            title = Card.objects.values_list("title", flat=True).get(pk=root_id) if card.variant_of_id else card.title
            copied = ("mode", "prompt", "approvals", "max_steps", "max_cost", "max_minutes", "land_mode",
                      "model", "api_base", "api_key_env", "labels")
            group = []
            for number, (agent, model) in enumerate(unique):
                if number == 0:
                    variant = card
                else:
                    variant = Card.create(card.project, title, card.prompt, agent, card.mode)
                    for name in copied:
                        setattr(variant, name, getattr(card, name))
                variant.agent, variant.variant_of_id = agent, root_id
                if model:
                    variant.model = model
                    variant.api_base, variant.api_key_env = endpoint["api_base"], endpoint["api_key_env"]
                if number:
                    variant.title = f"{title} · {variant.variant_label}"[:300]
                variant.save()
                group.append(variant)
            runs = []
            for variant in group:
                try:
                    runs.append(variant.start())
                except BoardError as exc:
                    raise BoardError(f"Not started on {variant.variant_label}: {exc}") from exc
        self.refresh_from_db()
        return runs

    def check_can_choose(self) -> list[Card]:
        """Refuse (BoardError) to land this card as the chosen one of its group now: a card in no
        group or alone in it, another card of the group still running (it is stopped or waited
        for first, never discarded by surprise) or landed already, and as ``check_can_land``.
        Returns the other cards of the group, which the choice discards."""
        group = self.variant_group()
        others = [card for card in group if card.pk != self.pk]
        if not others:
            raise BoardError("This card has no variants to choose between: land it as usual.")
        landed = [card for card in others if card.landed_commit]
        if landed:
            raise BoardError(f"Card #{landed[0].pk} of this group has landed already: the choice was made.")
        running = [card for card in others if card.has_active_run()]
        if running:
            names = ", ".join(f"#{card.pk} ({card.variant_label})" for card in running)
            raise BoardError(f"Still running: {names}. Stop {'them' if len(running) > 1 else 'it'} or wait for the "
                             "end before choosing, so no work is thrown away by surprise.")
        self.check_can_land()
        return others

    def record_choice(self, discarded: list[int]) -> None:
        """This card was landed as the chosen one of its group; ``discarded``: the ids of the cards
        removed. A card left alone leaves the group, so it no longer offers a comparison."""
        with transaction.atomic():
            if self.variant_of_id is not None and not Card.objects.filter(variant_of_id=self.variant_of_id).exclude(
                    pk=self.pk).exists():
                Card.objects.filter(pk=self.pk).update(variant_of=None)
                self.variant_of_id = None
            listed = ", ".join(f"#{pk}" for pk in discarded)
            Event.record(self, None, "card", f"chosen over {listed}" if listed else "chosen", {"discarded": discarded})

    def as_dict(self) -> dict:
        """The card as ``card show --json`` prints it: id, state (of the latest run, or "idle"),
        column, branch, worktree, base_commit, commits (the branch's new commit ids, oldest first, as
        the latest run recorded them), summary and error; landed_commit ("" until it lands),
        pr_url ("" until a pull request is opened) and conflicts (the last trial merge:
        {"base", "files", "checked_at"}, or None)."""
        run = self.current_run
        return {
            "id": self.pk,
            "title": self.title,
            "state": run.state if run else "idle",
            "column": self.column,
            "branch": self.branch,
            "worktree": self.worktree_path,
            "base_commit": run.base_commit if run else "",
            "commits": list(run.commits) if run else [],
            "summary": run.summary if run else "",
            "error": run.error if run else "",
            "pending": run.pending if run else None,
            "usage": {"steps": run.steps, "tokens": run.tokens, "cost": run.cost} if run else None,
            "landed_commit": self.landed_commit,
            "pr_url": self.pr_url,
            "conflicts": self.conflicts,
        }


class RunQuerySet(models.QuerySet):
    def active(self):
        return self.filter(state__in=ACTIVE_STATES)

    def interrupt_orphans(self, is_alive, reason: str) -> list[Run]:
        """Mark interrupted every running run whose worker is gone, so no card shows "running"
        with nothing behind it. ``is_alive(host, pid) -> bool`` is the caller's test (the domain
        knows no processes). Returns the runs marked."""
        marked = []
        for run in self.filter(state=RunState.RUNNING).select_related("card"):
            if is_alive(run.worker_host, run.worker_pid):
                continue
            with transaction.atomic():
                # Re-checked inside the write, so a run that has just ended keeps its real end.
                if Run.objects.filter(pk=run.pk, state=RunState.RUNNING).exists():
                    run.finish(RunState.INTERRUPTED, error=f"{reason[:1].upper()}{reason[1:]}. Its work so far is kept.")
                    marked.append(run)
        return marked

    def queue_positions(self) -> dict[int, QueuePlace]:
        """Every queued run's place in line, read in one query: ``{run id: QueuePlace(position,
        held)}``, positions from 1. Runs the workers may take are numbered together across all
        projects, in the order the workers take them (QUEUE_ORDER); a held run is numbered among
        its own project's held runs, in the order they are let go (release_held)."""
        places: dict[int, QueuePlace] = {}
        in_line = 0
        held_in_project: dict[int, int] = {}
        rows = self.filter(state=RunState.QUEUED).order_by(*QUEUE_ORDER).values_list("id", "held", "card__project_id")
        for run_id, held, project_id in rows:
            if held:
                held_in_project[project_id] = held_in_project.get(project_id, 0) + 1
                places[run_id] = QueuePlace(held_in_project[project_id], True)
            else:
                in_line += 1
                places[run_id] = QueuePlace(in_line, False)
        return places

    def release_held(self, project_id: int) -> list[int]:
        """Hand project ``project_id``'s held runs back to the workers, oldest first (QUEUE_ORDER),
        as many as it has free slots: its ``max_parallel`` less its running runs and its queued runs
        already with the workers (every held run when it has no limit any more). Each is marked not
        held, says so in its log, and is enqueued once the transaction commits. Returns the ids let
        go ([] for a project that is gone).

        The project row is locked as in Run.claim, so a run held at the same moment as a slot
        frees up is either seen here or sees the free slot itself: none waits beside a free slot."""
        runs = self.model.objects
        with transaction.atomic():
            limit = Project.objects.select_for_update().filter(pk=project_id).values_list("max_parallel", flat=True).first()
            ids = list(
                runs.filter(card__project_id=project_id, state=RunState.QUEUED, held=True)
                .order_by(*QUEUE_ORDER).values_list("id", flat=True)
            )
            if ids and limit:
                busy = runs.filter(card__project_id=project_id).filter(
                    models.Q(state=RunState.RUNNING) | models.Q(state=RunState.QUEUED, held=False)
                ).count()
                ids = ids[:max(0, limit - busy)]
            for run in runs.filter(pk__in=ids).order_by(*QUEUE_ORDER):
                runs.filter(pk=run.pk).update(held=False)
                run.held = False
                run.emit("step", "A slot is free: queued for the next worker")
                transaction.on_commit(run.enqueue)
        return ids

    def release_all_held(self) -> list[int]:
        """release_held for every project that has held runs; returns the ids let go."""
        projects = sorted(set(self.filter(state=RunState.QUEUED, held=True).values_list("card__project_id", flat=True)))
        return [run_id for project_id in projects for run_id in self.release_held(project_id)]

    def hand_out_queued(self) -> int:
        """At the board's start: enqueue again every queued run that is not held (a task the
        previous board's workers had taken but not run would wait for its retry, hours; a run is
        claimed once, so a second delivery is harmless), then let held runs go where their
        projects have free slots (release_all_held). Returns how many runs were enqueued."""
        waiting = list(self.filter(state=RunState.QUEUED, held=False).order_by(*QUEUE_ORDER))
        for run in waiting:
            run.enqueue()
        return len(waiting) + len(self.release_all_held())


class QueuePlace(NamedTuple):
    """A queued run's place in line (RunQuerySet.queue_positions): ``position`` counts from 1;
    ``held`` says it waits for a slot of its own project (counted among that project's held runs)."""

    position: int
    held: bool


# The order in which queued runs go to the workers, and held runs are let go: when each joined the
# queue, then id (runs queued before queued_at existed have none, and come first).
QUEUE_ORDER = (F("queued_at").asc(nulls_first=True), "id")


class Run(models.Model):
    """One attempt of an agent at a card. Its events are numbered 1, 2, … by ``last_seq``."""

    card = models.ForeignKey(Card, on_delete=models.CASCADE, related_name="runs")
    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="runs")
    state = models.CharField(max_length=20, choices=RunState.choices, default=RunState.QUEUED)
    base_commit = models.CharField(max_length=64, blank=True)
    commits = models.JSONField(default=list, blank=True)
    summary = models.TextField(blank=True)
    error = models.TextField(blank=True)
    last_line = models.CharField(max_length=300, blank=True, help_text="The latest step or output line.")
    agent_state = models.JSONField(default=dict, blank=True, help_text="The built-in agent's stored conversation.")
    prompt = models.TextField(blank=True, help_text="The lead's follow-up that started this run, if any.")
    mode = models.CharField(max_length=10, choices=Mode.choices, default=Mode.ACT)
    previous = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    pending = models.JSONField(null=True, blank=True, help_text="What waits for the lead: approval, question or plan.")
    budget = models.JSONField(default=dict, blank=True, help_text="Card.budget() when the run was made.")
    steps = models.IntegerField(default=0, help_text="Model calls in this run.")
    tokens = models.IntegerField(default=0, help_text="Prompt and completion tokens in this run.")
    cost = models.FloatField(default=0.0, help_text="US dollars in this run, litellm's accounting.")
    last_seq = models.IntegerField(default=0)
    queued_at = models.DateTimeField(null=True, blank=True, help_text="When the run last joined the queue.")
    held = models.BooleanField(
        default=False, help_text="Queued but out of the broker: its project is at its parallel limit."
    )
    log_chars = models.BigIntegerField(default=0, help_text="Characters of output stored for this run.")
    log_dropped = models.BigIntegerField(default=0, help_text="Output lines dropped by the retention limit.")
    stop_requested = models.BooleanField(default=False)
    worker_host = models.CharField(max_length=255, blank=True)
    worker_pid = models.IntegerField(null=True, blank=True)
    sandboxed = models.BooleanField(
        null=True, blank=True, help_text="Whether the agent's commands ran in a bubblewrap sandbox; empty: not known yet."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self):
        return f"run {self.pk} of card {self.card_id} ({self.state})"

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @classmethod
    def claim(cls, run_id: int, host: str, pid: int) -> Run | None:
        """Atomically take a queued run for this worker. None when it is gone or someone else has
        it, so a redelivered task never runs an agent twice; None too when its project already runs
        ``max_parallel`` runs: the run is then marked ``held`` (still queued, out of the broker,
        with one "Waiting for a free slot" step) until a run of its project ends or parks and
        RunQuerySet.release_held enqueues it again.

        The slots are counted with the project row locked (select_for_update, for PostgreSQL;
        SQLite's IMMEDIATE transactions serialise writers anyway), so two workers never both
        take a project's last slot."""
        now = timezone.now()
        with transaction.atomic():
            project_id = cls.objects.filter(pk=run_id, state=RunState.QUEUED).values_list("card__project_id", flat=True).first()
            if project_id is None:
                return None
            limit = Project.objects.select_for_update().values_list("max_parallel", flat=True).get(pk=project_id)
            if limit and cls.objects.filter(card__project_id=project_id, state=RunState.RUNNING).count() >= limit:
                if cls.objects.filter(pk=run_id, state=RunState.QUEUED, held=False).update(held=True):
                    cls.objects.get(pk=run_id).emit(
                        "step", f"Waiting for a free slot: this project runs at most {limit} at once"
                    )
                return None
            # A run back from an approval keeps its first start.
            taken = cls.objects.filter(pk=run_id, state=RunState.QUEUED).update(
                state=RunState.RUNNING, held=False, started_at=Coalesce(F("started_at"), now), worker_host=host,
                worker_pid=pid,
            )
            if not taken:
                return None
            run = cls.objects.select_related("card__project", "agent").get(pk=run_id)
            run.emit("state", "running")
        return run

    def enqueue(self) -> None:
        """Hand the run to the workers (a django-q2 task taking its id). Safe to repeat: the first
        worker to claim the run runs it, and later deliveries find it taken and do nothing."""
        from django_q.tasks import async_task

        async_task("agents.tasks.execute_run", self.pk, task_name=f"run-{self.pk}")

    def request_stop(self) -> None:
        """Ask the run to stop. A queued run, or one waiting for the lead (no worker holds it), ends
        ``stopped`` at once; a running one is stopped by its worker, which polls ``stop_requested``
        about once a second and kills the agent's whole process group. A run that has ended is left
        as it is."""
        with transaction.atomic():
            state = Run.objects.values_list("state", flat=True).get(pk=self.pk)
            if state in (RunState.QUEUED, RunState.AWAITING_APPROVAL):
                self.refresh_from_db()
                started = self.started_at is not None
                self.finish(RunState.STOPPED, error="Stopped by the lead." if started else "Stopped before it started.")
            elif state in ACTIVE_STATES:
                Run.objects.filter(pk=self.pk).update(stop_requested=True)
                self.emit("step", "Stop requested")

    def save_progress(self, agent_state: dict) -> None:
        """Store the built-in agent's state after a step, with the run's steps, tokens and cost
        counted from ``agent_state["budget_base"]`` (what the conversation had used before this run).
        Secret values in it (a key a command printed, say) are stored redacted, as in the log."""
        agent_state = self.redactor().data(agent_state)
        base = agent_state.get("budget_base") or {}
        usage = agent_state.get("usage") or {}
        self.agent_state = agent_state
        self.steps = int(agent_state.get("steps", 0)) - int(base.get("steps", 0))
        self.tokens = int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0)) - int(base.get("tokens", 0))
        self.cost = round(float(usage.get("cost", 0.0)) - float(base.get("cost", 0.0)), 6)
        Run.objects.filter(pk=self.pk).update(agent_state=agent_state, steps=self.steps, tokens=self.tokens, cost=self.cost)

    def wait_for_lead(self, agent_state: dict, pending: dict) -> bool:
        """Park a running run until the lead decides on ``pending`` (an approval, a question or a
        plan): it holds no worker meanwhile. Returns False, changing nothing, when the run is no
        longer running or the lead asked it to stop meanwhile (the caller ends it instead)."""
        with transaction.atomic():
            if not Run.objects.filter(pk=self.pk, state=RunState.RUNNING, stop_requested=False).update(
                state=RunState.AWAITING_APPROVAL, pending=self.redactor().data(pending),
                agent_state=self.redactor().data(agent_state), worker_host="", worker_pid=None
            ):
                return False
            self.state, self.pending = RunState.AWAITING_APPROVAL, pending
            self.emit("state", RunState.AWAITING_APPROVAL, {"pending": pending})
            _notify_webhooks(WebhookEvent.APPROVAL, self.card_id, self)
            self._release_slot()
        return True

    def _release_slot(self) -> None:
        """Once the transaction commits, let the oldest held runs of this run's project take the
        slot it no longer holds (RunQuerySet.release_held). Best effort (robust): an error there
        is logged and never undoes this run's own change; the board's start-up and its periodic
        check release what is left."""
        project_id = Card.objects.values_list("project_id", flat=True).get(pk=self.card_id)
        transaction.on_commit(lambda: Run.objects.release_held(project_id), robust=True)

    def decide(self, approved: bool, text: str = "", kinds: tuple[str, ...] | None = None) -> None:
        """The lead's decision on what the run waits for: approve (with ``text``: the answer to a
        question, or the plan as edited) or deny (``text``: the reason, sent to the agent). The
        run is queued again and goes on from its stored state on the next free worker. ``kinds``
        ("approval", "question", "plan") is what the lead means to answer; a run waiting for
        something else is refused, so an answer never approves a command. Raises BoardError when
        the run is not waiting (decided already, or stopped) or waits for another kind."""
        from agents.builtin import decide  # the state's shape is the loop's business

        with transaction.atomic():
            run = Run.objects.select_for_update().get(pk=self.pk)
            if run.state != RunState.AWAITING_APPROVAL or not run.pending:
                raise BoardError("This run is not waiting for you any more.")
            kind = run.pending.get("kind")
            if kinds and kind not in kinds:
                waits = {"approval": "an approval", "question": "an answer to a question", "plan": "a plan review"}
                raise BoardError(f"This run waits for {waits.get(kind, kind)}, not for that: look at the card again.")
            if kind == "question" and approved and not text.strip():
                raise BoardError("Write an answer to the agent's question.")
            try:
                state = decide(run.agent_state, approved, text.strip())
            except ValueError as exc:  # a state stored without its pending call: nothing to decide on
                raise BoardError("This run is not waiting for you any more.") from exc
            # Back in the queue: at its end, like any run that joins it now.
            Run.objects.filter(pk=self.pk).update(state=RunState.QUEUED, pending=None, agent_state=state,
                                                  queued_at=timezone.now(), held=False)
            self.refresh_from_db()
            if kind == "question":
                said = f"Answered: {text.strip()}"
            elif approved:
                said = "Plan approved" if kind == "plan" else f"Approved: {run.pending.get('title', '')}"
            else:
                said = f"Denied: {run.pending.get('title', '')}" + (f" ({text.strip()})" if text.strip() else "")
            self.emit("step", said[:2000])
            self.emit("state", RunState.QUEUED)
            transaction.on_commit(self.enqueue)

    @property
    def sandbox_label(self) -> str:
        """What the card says of the sandbox of this run's commands: "sandboxed", "sandboxed,
        network allowed" or "not sandboxed"; "" while not known (queued, or from before the
        sandbox). The network part comes from the run's own sandbox step, not the project's
        switch now, which may have changed since."""
        if self.sandboxed is None:
            return ""
        if not self.sandboxed:
            return "not sandboxed"
        if getattr(self, "_sandbox_network", None) is None:
            self._sandbox_network = self.events.filter(kind="step", data__sandboxed=True, data__network=True).exists()
        return "sandboxed, network allowed" if self._sandbox_network else "sandboxed"

    def model_key_env(self) -> str:
        """The NAME of the environment variable holding this run's model key ("" when none): for a
        command agent the first ``api_key_env`` set on the agent, the card or its project (the
        agent knows which provider its program calls); for the built-in agent its model setting's
        (Card.model_settings). Read once per instance."""
        if getattr(self, "_model_key_env", None) is None:
            card, agent = self.card, self.agent
            if agent.kind == Agent.Kind.COMMAND:
                name = agent.api_key_env or card.api_key_env or card.project.api_key_env
            else:
                name = card.model_settings()["api_key_env"]
            self._model_key_env = name or ""
        return self._model_key_env

    def redactor(self):
        """The agents.secrets.Redactor for this run's texts: the values of the run's model key
        variable, of every environment variable whose name looks secret, the board's own
        SECRET_KEY and the passwords of its database and Redis. Its regex is compiled once per
        process for each distinct set of secrets."""
        from agents import secrets

        board = [("DJANGO_SECRET_KEY", settings.SECRET_KEY),
                 ("DATABASE_URL password", settings.DATABASES["default"].get("PASSWORD") or ""),
                 ("REDIS_URL password", secrets.url_password(getattr(settings, "REDIS_URL", "")))]
        return secrets.redactor(self.model_key_env(), board)

    def emit(self, kind: str, text: str = "", data: dict | None = None) -> Event:
        """Append one event to this run's stream (the next sequence number) and, for steps and
        output, remember its last line for the card. Kinds: state, step, log, checkpoint, usage.

        Output ("log") is stored in chunks of at most LOG_CHUNK_CHARS characters (a longer text
        becomes several events, split between lines where it can be; the last is returned), and
        a run keeps at most settings.BOARD_RUN_LOG_MAX_CHARS characters of it (see _trim_log).

        Every text and every string in ``data`` is stored with secret values replaced by
        ``[redacted: NAME]`` (see redactor), so no key reaches the database or a screen."""
        redactor = self.redactor()
        text, data = redactor.text(text), redactor.data(data)
        if kind == "log" and len(text) > LOG_CHUNK_CHARS:
            event = None
            for chunk in _chunks(text, LOG_CHUNK_CHARS):
                event = self.emit(kind, chunk, data)
            return event
        with transaction.atomic():
            updates = {"last_seq": F("last_seq") + 1}
            if kind in ("step", "log") and text.strip():
                updates["last_line"] = text.strip().splitlines()[-1][:300]
            if kind == "log":
                updates["log_chars"] = F("log_chars") + len(text)
            Run.objects.filter(pk=self.pk).update(**updates)
            self.last_seq, self.log_chars = Run.objects.values_list("last_seq", "log_chars").get(pk=self.pk)
            if "last_line" in updates:
                self.last_line = updates["last_line"]
            event = Event.objects.create(
                run=self,
                card_id=self.card_id,
                project_id=Card.objects.values_list("project_id", flat=True).get(pk=self.card_id),
                seq=self.last_seq,
                kind=kind,
                text=text,
                data=data or {},
            )
        if kind == "log" and self.log_chars > settings.BOARD_RUN_LOG_MAX_CHARS:
            self._trim_log()
        return event

    def log_tail(self, kinds, before: int | None = None, max_events: int = 500, max_chars: int = 200_000) -> tuple[list[Event], bool]:
        """The last events of ``kinds`` before sequence number ``before`` (all when None), oldest
        first: at most ``max_events`` of them and about ``max_chars`` characters of text (never
        fewer than one event). Returns them and whether earlier ones remain. Reads the sizes
        first, so a run with gigabytes of output costs a page only its tail."""
        rows = self.events.filter(kind__in=kinds, seq__gt=0)
        if before is not None:
            rows = rows.filter(seq__lt=before)
        first, total = None, 0
        for seq, chars in rows.order_by("-seq").annotate(chars=Length("text")).values_list("seq", "chars")[:max_events]:
            total += chars or 0
            if total > max_chars and first is not None:
                break
            first = seq
        if first is None:
            return [], False
        events = list(rows.filter(seq__gte=first).order_by("seq"))
        return events, rows.filter(seq__lt=first).exists()

    def _trim_log(self) -> None:
        """Keep the run's stored output under settings.BOARD_RUN_LOG_MAX_CHARS characters: drop
        the oldest output chunks (past the first LOG_KEEP_HEAD, which say how the run began)
        until a quarter of the limit is free, and say in the log how many lines went. Steps,
        states and checkpoints are never dropped."""
        limit = settings.BOARD_RUN_LOG_MAX_CHARS
        target = self.log_chars - limit * 3 // 4
        head = list(self.events.filter(kind="log").order_by("seq").values_list("seq", flat=True)[:LOG_KEEP_HEAD])
        oldest = (
            self.events.filter(kind="log", seq__gt=head[-1] if head else 0)
            .order_by("seq")
            .annotate(chars=Length("text"), lines=Length("text") - Length(Replace("text", Value("\n"), Value(""))) + 1)
            .values_list("id", "chars", "lines")
        )
        ids, chars, lines = [], 0, 0
        for event_id, size, count in oldest.iterator(chunk_size=500):
            if chars >= target:
                break
            ids.append(event_id)
            chars += size
            lines += count
        if not ids:
            return
        with transaction.atomic():
            for start in range(0, len(ids), 500):  # SQLite caps the parameters of one query
                Event.objects.filter(id__in=ids[start:start + 500]).delete()
            Run.objects.filter(pk=self.pk).update(log_chars=F("log_chars") - chars, log_dropped=F("log_dropped") + lines)
            self.log_chars -= chars
            self.log_dropped = Run.objects.values_list("log_dropped", flat=True).get(pk=self.pk)
            self.emit(
                "step",
                f"Dropped {lines:,} older output lines: a run keeps {limit // 1_000_000 or limit:,}"
                f"{' million' if limit >= 1_000_000 else ''} characters of output ({self.log_dropped:,} lines dropped in all)",
            )

    def finish(self, state: str, summary: str = "", error: str = "", commits: list[str] | None = None) -> bool:
        """End the run in a final state. A run that succeeded moves its card to Review; any other
        end leaves the card where it is, showing the state and the reason. A run that has ended
        already keeps its first end (returns False): an end is never rewritten. Once the end
        commits, held runs of the project may take the slot (RunQuerySet.release_held)."""
        if state not in FINAL_STATES:
            raise ValueError(f"{state!r} is not a final run state")
        with transaction.atomic():
            redactor = self.redactor()
            summary, error = redactor.text(summary), redactor.text(error)
            fields = {"state": state, "summary": summary[:2000], "error": error[:4000], "ended_at": timezone.now(),
                      "pending": None, "held": False}
            if commits is not None:
                fields["commits"] = commits
            if not Run.objects.filter(pk=self.pk, state__in=ACTIVE_STATES).update(**fields):
                self.refresh_from_db()
                return False
            for name, value in fields.items():
                setattr(self, name, value)
            self.emit("state", state, {"summary": self.summary, "error": self.error})
            if state == RunState.SUCCEEDED:
                card = Card.objects.get(pk=self.card_id)
                card.move_to(Column.REVIEW)
            if state in (RunState.SUCCEEDED, RunState.FAILED):
                _notify_webhooks(WebhookEvent.REVIEW if state == RunState.SUCCEEDED else WebhookEvent.FAILED,
                                 self.card_id, self)
            # Whatever it ended from: a running run frees its slot, and a queued one already handed
            # to the workers was counted as taking one (release_held).
            self._release_slot()
        return True

    @property
    def elapsed_seconds(self) -> int | None:
        if not self.started_at:
            return None
        end = self.ended_at or timezone.now()
        return int((end - self.started_at).total_seconds())


START_FAILED = "could not start by itself: "  # the text of the event start_ready_dependents records


def start_failures(cards) -> dict[int, str]:
    """``{card id: reason}`` for those of ``cards`` (Cards, their current run loaded) whose latest
    "could not start by itself" event came after their current run was queued (or that have no
    run): one query for all of them."""
    cards = list(cards)
    if not cards:
        return {}
    latest: dict[int, dict] = {}
    rows = (Event.objects.filter(card_id__in=[c.pk for c in cards], kind="card", text__startswith=START_FAILED)
            .order_by("id").values("card_id", "text", "created_at"))
    for row in rows:
        latest[row["card_id"]] = row
    found = {}
    for card in cards:
        row = latest.get(card.pk)
        run = card.current_run
        if row and not (run is not None and run.queued_at and run.queued_at >= row["created_at"]):
            found[card.pk] = row["text"][len(START_FAILED):]
    return found


class DiffComment(models.Model):
    """The lead's comment on one line of a card's diff. Unsent comments go back to the agent
    together, as one follow-up; ``sent_run`` is the run that carried it."""

    class Side(models.TextChoices):
        OLD = "old", "Old (removed) line"
        NEW = "new", "New line"

    card = models.ForeignKey(Card, on_delete=models.CASCADE, related_name="comments")
    commit = models.CharField(max_length=64, blank=True, help_text="The commit whose diff was commented.")
    path = models.CharField(max_length=4096)
    line = models.PositiveIntegerField(help_text="Line number on ``side`` of the diff, from 1.")
    side = models.CharField(max_length=3, choices=Side.choices, default=Side.NEW)
    text = models.TextField()
    sent_run = models.ForeignKey("Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="comments")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["path", "line", "id"]

    def __str__(self):
        return f"{self.path}:{self.line} on card {self.card_id}"

    @property
    def where(self) -> str:
        """Where the comment sits, for people and the agent: ``path:line (new side)``, with the
        checkpoint's short sha when it was made on one checkpoint's diff."""
        side = "new side" if self.side == self.Side.NEW else "old side, as it was before the change"
        at = f", in checkpoint {self.commit[:10]}" if self.commit else ""
        return f"{self.path}:{self.line} ({side}{at})"

    def remove(self) -> None:
        """Delete an unsent comment; raises BoardError for one sent already (the agent has it)."""
        if self.sent_run_id is not None:
            raise BoardError("This comment was sent to the agent already; it stays with that run.")
        self.delete()

    @staticmethod
    def prompt(comments: list[DiffComment], quotes: Mapping[int, str], message: str = "") -> str:
        """The follow-up text that carries ``comments`` to the agent: each numbered, with
        ``where`` and the commented line's text from ``quotes`` ({comment id: text}, cut at 300
        characters), then the lead's ``message`` if any."""
        count = len(comments)
        parts = [f"The lead reviewed your changes and left {count} comment{'s' if count != 1 else ''} on lines of "
                 "the diff. Address each of them:"]
        for number, comment in enumerate(comments, 1):
            lines = [f"{number}. {comment.where}"]
            quote = quotes.get(comment.pk)
            if quote is not None:
                quote = quote.strip()
                lines.append(f"   Line: {quote[:300]}{'…' if len(quote) > 300 else ''}")
            lines += [f"   {text}" for text in comment.text.strip().splitlines()]
            parts.append("\n".join(lines))
        if message.strip():
            parts.append(f"The lead also says:\n{message.strip()}")
        return "\n\n".join(parts)


def _notify_webhooks(event: str, card_id: int, run: Run | None) -> None:
    """Tell the project's webhooks about ``event`` once the current transaction commits
    (board/webhooks.py: deliveries are made then, and sent by the workers, so nothing waits here)."""
    from board import webhooks

    webhooks.notify(event, card_id, run)


def _chunks(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of at most ``size`` characters, each ending at a line break when
    one is in its second half (so lines stay whole where they can)."""
    pieces = []
    while len(text) > size:
        cut = text.rfind("\n", size // 2, size)
        if cut == -1:
            pieces.append(text[:size])
            text = text[size:]
        else:
            pieces.append(text[:cut])
            text = text[cut + 1:]
    pieces.append(text)
    return pieces


class Event(models.Model):
    """One entry of the append-only stream the board shows live: written first, pushed after.

    ``seq`` numbers a run's events from 1 (0 for card events outside a run); the relay reads rows
    by ``id``, so a browser that missed a push still finds the truth here."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, null=True, related_name="events")
    # Plain ids, not foreign keys: the event that says a card was deleted outlives the card.
    card_id = models.BigIntegerField(db_index=True)
    project_id = models.BigIntegerField(db_index=True)
    seq = models.IntegerField(default=0)
    kind = models.CharField(max_length=20)
    text = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "seq"], condition=models.Q(seq__gt=0), name="event_run_seq"),
        ]

    @classmethod
    def record(cls, card: Card, run: Run | None, kind: str, text: str = "", data: dict | None = None) -> Event:
        """An event about the card itself (created, moved), outside any run's numbering."""
        return cls.objects.create(
            card_id=card.pk, run=run, project_id=card.project_id, seq=0, kind=kind, text=text, data=data or {}
        )


# --- Team-server mode: people, roles, audit, API tokens, webhooks ------------------------------


class Role(models.TextChoices):
    """What a person may do in one project; each role may do all the roles before it may."""

    VIEWER = "viewer", "Viewer (reads)"
    MEMBER = "member", "Member (creates, starts, stops, follows up)"
    MAINTAINER = "maintainer", "Maintainer (lands, deletes, changes settings)"


ROLE_RANK = {Role.VIEWER: 1, Role.MEMBER: 2, Role.MAINTAINER: 3}


class Membership(models.Model):
    """A person's role in one project. Superusers are maintainers of every project without one."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project_id", "user_id"]
        constraints = [models.UniqueConstraint(fields=["user", "project"], name="membership_user_project")]

    def __str__(self):
        return f"{self.user} is {self.role} of {self.project}"

    @classmethod
    def grant(cls, user, project: Project, role: str) -> "Membership":
        """Give ``user`` ``role`` (a Role value) in ``project``, adding the membership or changing
        it. Raises BoardError for a role that does not exist, or when it would demote the
        project's last maintainer."""
        if role not in Role.values:
            raise BoardError(f"'{role}' is not a role; use one of {', '.join(Role.values)}.")
        with transaction.atomic():
            membership = cls.objects.select_for_update().filter(user=user, project=project).first()
            if membership is None:
                return cls.objects.create(user=user, project=project, role=role)
            if role != Role.MAINTAINER and membership.is_last_maintainer():
                raise BoardError(f"{user} is the last maintainer of {project.name}: make someone else maintainer first.")
            membership.role = role
            membership.save(update_fields=["role"])
            return membership

    def remove(self) -> None:
        """Take the person out of the project. Raises BoardError for its last maintainer."""
        with transaction.atomic():
            if self.is_last_maintainer():
                raise BoardError(f"{self.user} is the last maintainer of {self.project.name}: make someone else maintainer first.")
            self.delete()

    def is_last_maintainer(self) -> bool:
        """Whether this is the project's only maintainer membership (superusers, maintainers of
        every project without one, do not count: they may leave)."""
        if self.role != Role.MAINTAINER:
            return False
        return not Membership.objects.filter(project_id=self.project_id, role=Role.MAINTAINER).exclude(pk=self.pk).exists()


class AuditEntry(models.Model):
    """Who did what, and when: one row per start, stop, approval, landing, deletion or settings
    change. ``actor`` keeps the name even after the user is deleted; ``card_title`` after the card."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    actor = models.CharField(max_length=150, help_text="The user's name, 'local' without a login, or 'api:<token>'.")
    action = models.CharField(max_length=40, db_index=True)
    project = models.ForeignKey(Project, on_delete=models.SET_NULL, null=True, blank=True, related_name="audit")
    card_id_ref = models.BigIntegerField(null=True, blank=True, help_text="The card's id; the card may be gone.")
    card_title = models.CharField(max_length=300, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"{self.actor} {self.action} {self.card_title or self.project_id}"


class ApiToken(models.Model):
    """A token a machine uses for the REST API, acting as ``user``. Only a SHA-256 of the token is
    stored; the token itself is shown once, when made."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=12, help_text="The token's first characters, to tell tokens apart.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked = models.BooleanField(default=False)

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    TOKEN_PREFIX = "board_"  # so a leaked token is recognisable (secret scanners, logs)
    TOUCH_EVERY = 60  # seconds: last_used_at is written at most this often, not on every request

    @staticmethod
    def hash(secret: str) -> str:
        """The SHA-256 hex digest of ``secret`` as stored in ``key_hash`` (any string: what a
        client sent, junk included, hashes without error)."""
        import hashlib

        return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()

    @classmethod
    def issue(cls, user, name: str) -> tuple[ApiToken, str]:
        """A new token for ``user`` called ``name``: returns the stored row and the secret, which
        is not kept anywhere and so can be shown only now (``board_`` and 43 URL-safe characters,
        256 random bits)."""
        import secrets

        secret = cls.TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(user=user, name=name[:100], prefix=secret[:12], key_hash=cls.hash(secret))
        return token, secret

    @classmethod
    def authenticate(cls, secret: str) -> ApiToken | None:
        """The live token whose secret is ``secret`` (its user active), with its user; None for
        an unknown or revoked one. Marks it used (``last_used_at``), at most once a TOUCH_EVERY."""
        if not secret or len(secret) > 200:
            return None
        token = cls.objects.select_related("user").filter(key_hash=cls.hash(secret), revoked=False).first()
        if token is None or not token.user.is_active:
            return None
        now = timezone.now()
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() >= cls.TOUCH_EVERY:
            cls.objects.filter(pk=token.pk).update(last_used_at=now)
            token.last_used_at = now
        return token


class WebhookEvent(models.TextChoices):
    """Card events a webhook may be told about."""

    APPROVAL = "approval", "Needs approval"
    FAILED = "failed", "Failed"
    REVIEW = "review", "Ready for review"
    LANDED = "landed", "Landed"


class Webhook(models.Model):
    """A URL the board POSTs a JSON payload to on the chosen card events of one project."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=2000)
    events = models.JSONField(default=list, blank=True, help_text="WebhookEvent values; empty: all of them.")
    slack = models.BooleanField(default=False, help_text="Send Slack's form ({\"text\": …}) instead of the board's JSON.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project_id", "id"]

    def __str__(self):
        return self.url


class WebhookDelivery(models.Model):
    """One POST of one event to one webhook, retried with backoff until delivered or given up."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Given up"

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=20, choices=WebhookEvent.choices)
    payload = models.JSONField(default=dict)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    response_status = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
