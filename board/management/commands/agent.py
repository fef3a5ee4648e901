from django.core.management.base import BaseCommand, CommandError

from board.forms import AgentForm
from board.management.commands._cli import form_errors
from board.models import Agent, BoardError


class Command(BaseCommand):
    help = (
        "Manage agents. `agent add NAME --command 'CMD'` adds a command agent; "
        "`agent add NAME --model MODEL [--api-base URL] [--api-key-env VAR]` a built-in one."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Add an agent.")
        add.add_argument("name")
        kind = add.add_mutually_exclusive_group(required=True)
        kind.add_argument("--command", dest="cmdline", help="Command line run in the card's worktree.")
        kind.add_argument("--model", help="litellm model string for the built-in agent, e.g. openai/gpt-4o-mini.")
        add.add_argument("--api-base", default="", help="API base URL (local servers: Ollama, LM Studio, vLLM…).")
        add.add_argument("--api-key-env", default="", help="Name of the environment variable holding the key.")
        sub.add_parser("list", help="List agents.")
        for verb in ("enable", "disable"):
            sub.add_parser(verb, help=f"{verb.title()} an agent.").add_argument("name")

    def handle(self, *args, action, **options):
        if action == "list":
            for a in Agent.objects.all():
                self.stdout.write(f"{a.name}\t{a.kind}\t{'enabled' if a.enabled else 'disabled'}\t{a.describe}")
            return
        if action in ("enable", "disable"):
            agent = Agent.objects.filter(name=options["name"]).first()
            if agent is None:
                raise CommandError(f"No agent named '{options['name']}'.")
            try:
                agent.set_enabled(action == "enable")
            except BoardError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(f"{agent.name} {action}d")
            return
        is_command = options["cmdline"] is not None
        form = AgentForm(
            {
                "name": options["name"],
                "kind": Agent.Kind.COMMAND if is_command else Agent.Kind.BUILTIN,
                "command": options["cmdline"] or "",
                "model": options["model"] or "",
                "api_base": options["api_base"],
                "api_key_env": options["api_key_env"],
            }
        )
        if not form.is_valid():
            raise form_errors(form)
        agent = form.save()
        self.stdout.write(f"Added {agent.get_kind_display().lower()} agent '{agent.name}': {agent.describe}")
