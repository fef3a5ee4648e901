import json
import time

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from board.forms import CardForm, parse_labels
from board import access
from board.management.commands._cli import form_errors
from board.models import BoardError, Card, Project, RunState


SHELL_ACTOR = "shell"  # how the audit log names what was done from the shell


def workers_running() -> bool:
    """True when a django-q2 cluster has reported itself in the last few seconds (its statistics
    live in the shared cache with a 3 s lifetime)."""
    from django_q.status import Stat

    return bool(Stat.get_all())


class Command(BaseCommand):
    help = (
        "Manage cards: add, labels, start/resume/follow-up [--wait], approve/deny/answer what a run waits for, stop, "
        "delete, land [--mode], push [--pr], show --json. With --wait the card's JSON is printed when the run ends (exit 0 when it "
        "succeeded, 1 otherwise) or waits for you (exit 3)."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Add a card to a project's Backlog; prints the new id last.")
        add.add_argument("--project", type=int, required=True)
        add.add_argument("--title", required=True)
        add.add_argument("--prompt", default="")
        add.add_argument("--agent", default="built-in", help="Agent name (default: built-in).")
        add.add_argument("--mode", choices=["act", "plan"], default="act", help="plan: plan first, act once approved.")
        add.add_argument("--waits-for", default="", metavar="IDS",
                         help="Comma-separated ids of cards of the project that must land (or be marked done) first.")
        add.add_argument("--start-when-ready", action="store_true",
                         help="Start by itself once every card it waits for has landed.")
        add.add_argument("--labels", default="", help='Comma-separated labels, such as "bug, ui".')
        add.add_argument("--start", action="store_true",
                         help="Start it at once (as `card start`); if the start is refused, no card is added.")
        labels = sub.add_parser("labels", help='Set a card\'s labels ("bug, ui"; "" for none); prints them.')
        labels.add_argument("id", type=int)
        labels.add_argument("labels", help='Comma-separated labels, such as "bug, ui"; "" removes them all.')
        start = sub.add_parser("start", help="Queue a card for the running workers.")
        resume = sub.add_parser("resume", help="Go on with an interrupted, stopped or failed run.")
        follow = sub.add_parser("follow-up", help="Send a card in Review back to its agent with feedback.")
        follow.add_argument("--text", required=True)
        approve = sub.add_parser("approve", help="Approve what the card's run waits for (a tool call or a plan).")
        approve.add_argument("--text", default="", help="The plan as you edited it (plans only).")
        deny = sub.add_parser("deny", help="Deny what the card's run waits for; the reason goes to the agent.")
        deny.add_argument("--reason", default="")
        answer = sub.add_parser("answer", help="Answer the agent's question.")
        answer.add_argument("--text", required=True)
        for waiting in (start, resume, follow, approve, deny, answer):
            waiting.add_argument("id", type=int)
            waiting.add_argument("--wait", action="store_true",
                                 help="Wait until the run ends or waits for you, and print the card's JSON.")
            waiting.add_argument("--timeout", type=float, default=None, help="Seconds to wait at most (with --wait).")
        stop = sub.add_parser("stop", help="Stop a card's run; prints the card's JSON when it has ended.")
        stop.add_argument("id", type=int)
        stop.add_argument("--timeout", type=float, default=30.0, help="Seconds to wait for the run to end (above 0).")
        delete = sub.add_parser("delete", help="Stop a card's agent, remove its worktree and delete the card.")
        delete.add_argument("id", type=int)
        delete.add_argument(
            "--delete-branch", action="store_true", help="Delete its branch even when it has commits not on the base."
        )
        land = sub.add_parser(
            "land", help="Land a card in Review on its base branch; prints the card's JSON either way (exit 1 when refused)."
        )
        land.add_argument("id", type=int)
        land.add_argument("--mode", choices=["merge", "squash", "rebase"], default=None,
                          help="How to land it this time (default: the card's landing mode, else the project's).")
        push = sub.add_parser("push", help="Push a card's branch to the project's remote; prints the card's JSON.")
        push.add_argument("id", type=int)
        push.add_argument("--pr", action="store_true", help="Then open a pull request with the GitHub CLI (gh).")
        show = sub.add_parser("show", help="Show a card.")
        show.add_argument("id", type=int)
        show.add_argument("--json", action="store_true", help="One JSON object on one line.")

    def handle(self, *args, action, **options):
        getattr(self, f"do_{action.replace('-', '_')}")(options)

    def _card(self, card_id: int) -> Card:
        card = Card.objects.select_related("current_run", "project").filter(pk=card_id).first()
        if card is None:
            raise CommandError(f"No card with id {card_id}.")
        return card

    def do_add(self, options):
        project = Project.objects.filter(pk=options["project"]).first()
        if project is None:
            raise CommandError(f"No project with id {options['project']}.")
        form = CardForm({"title": options["title"], "prompt": options["prompt"], "agent": options["agent"],
                         "mode": options["mode"], "labels": options["labels"]})
        if not form.is_valid():
            raise form_errors(form)
        waits_for = self._waits_for(options["waits_for"])
        if options["start"] and not workers_running():
            raise CommandError("No worker is running: start the board first (./run, or python manage.py board).")
        with transaction.atomic():
            card = Card.create(project, form.cleaned_data["title"], form.cleaned_data["prompt"], form.cleaned_data["agent"],
                               form.cleaned_data["mode"] or "act")
            card.set_labels(form.cleaned_data["labels"])
            if waits_for or options["start_when_ready"]:
                try:
                    card.set_dependencies(waits_for, options["start_when_ready"])
                except BoardError as exc:
                    transaction.set_rollback(True)
                    raise CommandError(str(exc)) from exc
            if options["start"]:
                try:
                    run = card.start()
                except BoardError as exc:
                    transaction.set_rollback(True)
                    raise CommandError(f"Not added: {exc}") from exc
                access.audit(None, "start", card=card, actor=SHELL_ACTOR, run=run.pk)
        self.stdout.write(f"Added card '{card.title}' to {project.name}'s Backlog"
                          + (f", waiting for {', '.join(f'#{c.pk}' for c in waits_for)}" if waits_for else "")
                          + (f"; started as run {run.pk}" if options["start"] else ""))
        self.stdout.write(str(card.pk))

    def do_labels(self, options):
        """Replace the card's labels, normalised as the board's card form does (parse_labels)."""
        card = self._card(options["id"])
        try:
            labels = parse_labels(options["labels"])
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        card.set_labels(labels)
        self.stdout.write(f"Card #{card.pk} labels: {', '.join(labels) if labels else '(none)'}")

    @staticmethod
    def _waits_for(text: str) -> list[Card]:
        """The cards ``--waits-for`` names ("3,5"); CommandError for junk or an id with no card."""
        ids = [part.strip().lstrip("#") for part in text.split(",") if part.strip()]
        if not all(part.isascii() and part.isdigit() and len(part) < 19 for part in ids):
            raise CommandError(f"--waits-for takes card ids separated by commas, such as 3,5; got '{text}'.")
        cards = list(Card.objects.filter(pk__in=[int(part) for part in ids]))
        missing = sorted({int(part) for part in ids} - {card.pk for card in cards})
        if missing:
            raise CommandError(f"No card with id {', '.join(map(str, missing))}.")
        return cards

    def do_start(self, options):
        self._queue(options, lambda card: card.start(), "start")

    def do_resume(self, options):
        self._queue(options, lambda card: card.resume(), "resume")

    def do_follow_up(self, options):
        self._queue(options, lambda card: card.follow_up(options["text"]), "follow-up")

    def do_approve(self, options):
        self._queue(options, lambda card: self._decide(card, True, options["text"], ("approval", "plan")), "approve")

    def do_deny(self, options):
        self._queue(options, lambda card: self._decide(card, False, options["reason"]), "deny")

    def do_answer(self, options):
        self._queue(options, lambda card: self._decide(card, True, options["text"], ("question",)), "approve")

    @staticmethod
    def _decide(card: Card, approved: bool, text: str, kinds: tuple[str, ...] | None = None):
        run = card.current_run
        if run is None:
            raise BoardError("This card has no run.")
        run.decide(approved, text, kinds)
        return run

    def _queue(self, options, action, audit_as: str):
        """Do ``action(card)`` (which queues a run and returns it), recorded in the audit log as
        ``audit_as`` by ``shell``; with --wait, follow the run."""
        if options["timeout"] is not None and options["timeout"] <= 0:
            raise CommandError("--timeout must be a number of seconds above 0.")
        card = self._card(options["id"])
        if not workers_running():
            raise CommandError("No worker is running: start the board first (./run, or python manage.py board).")
        try:
            run = action(card)
        except BoardError as exc:
            raise CommandError(str(exc)) from exc
        access.audit(None, audit_as, card=card, actor=SHELL_ACTOR, run=run.pk)
        if not options["wait"]:
            self.stdout.write(f"Card {card.pk} queued as run {run.pk}")
            return
        deadline = None if options["timeout"] is None else time.monotonic() + options["timeout"]
        while True:
            run.refresh_from_db()
            if not run.is_active or run.state == RunState.AWAITING_APPROVAL:
                break
            if deadline is not None and time.monotonic() > deadline:
                self.stdout.write(json.dumps(self._card(card.pk).as_dict()))
                raise CommandError(f"Run {run.pk} is still {run.state} after {options['timeout']:g} s.")
            time.sleep(0.5)
        data = self._card(card.pk).as_dict()
        self.stdout.write(json.dumps(data))
        if data["state"] == RunState.AWAITING_APPROVAL:
            pending = data["pending"] or {}
            raise CommandError(f"Run {run.pk} waits for you ({pending.get('kind')}): {pending.get('title', '')}",
                               returncode=3)
        if data["state"] != "succeeded":
            raise CommandError(f"Run {run.pk} ended {data['state']}: {data['error']}")

    def do_stop(self, options):
        if options["timeout"] <= 0:
            raise CommandError("--timeout must be a number of seconds above 0.")
        card = self._card(options["id"])
        try:
            card.stop()
        except BoardError as exc:
            raise CommandError(str(exc)) from exc
        access.audit(None, "stop", card=card, actor=SHELL_ACTOR)
        deadline = time.monotonic() + options["timeout"]
        while card.current_run.is_active and time.monotonic() < deadline:
            time.sleep(0.3)
            card.current_run.refresh_from_db()
        self.stdout.write(json.dumps(self._card(card.pk).as_dict()))
        if card.current_run.is_active:
            raise CommandError(f"The run is still {card.current_run.state} after {options['timeout']:g} s.")

    def do_delete(self, options):
        from agents import runner, worktrees

        card = self._card(options["id"])
        gone = Card(pk=card.pk, title=card.title, project_id=card.project_id)  # what the audit log names once it is deleted
        try:
            note = runner.delete_card(card, delete_branch=options["delete_branch"])
        except (BoardError, worktrees.GitError) as exc:
            raise CommandError(str(exc)) from exc
        access.audit(None, "delete", card=gone, project=card.project, actor=SHELL_ACTOR, delete_branch=options["delete_branch"])
        self.stdout.write(f"Card {options['id']} deleted. {note}")

    def do_land(self, options):
        from agents import landing

        self._land_action(options["id"], lambda card: landing.land_card(card, options["mode"]), "land")

    def do_push(self, options):
        from agents import landing

        self._land_action(options["id"], lambda card: landing.push_card(card, options["pr"]), "push")

    def _land_action(self, card_id: int, action, audit_as: str) -> None:
        """Do ``action(card) -> note`` (recorded in the audit log as ``audit_as`` when done); print
        the card's JSON on stdout whatever happened and the note on stderr, or exit 1 with the reason."""
        from agents import worktrees

        card = self._card(card_id)
        error = note = ""
        try:
            note = action(card)
        except (BoardError, worktrees.GitError) as exc:
            error = str(exc)
        else:
            access.audit(None, audit_as, card=card, actor=SHELL_ACTOR)
        self.stdout.write(json.dumps(self._card(card_id).as_dict()))
        if error:
            raise CommandError(error)
        self.stderr.write(note)

    def do_show(self, options):
        data = self._card(options["id"]).as_dict()
        if options["json"]:
            self.stdout.write(json.dumps(data))
            return
        for key, value in data.items():
            self.stdout.write(f"{key}: {value}")
