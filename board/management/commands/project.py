import os

from django.core.management.base import BaseCommand, CommandError
from django.db.models import BooleanField
from django.forms.models import model_to_dict

from board.forms import ProjectForm, ProjectSettingsForm, WebhookForm
from board.management.commands._cli import form_errors
from board.models import Project, Webhook


SETTINGS = ProjectSettingsForm._meta.fields
# What a yes/no setting takes from the command line (a checkbox's form value is only on or off).
YES_NO = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


class Command(BaseCommand):
    help = "Manage projects. `project add PATH [--base BRANCH] [--name NAME]` prints the new id last."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Add a local git repository as a project.")
        add.add_argument("path")
        add.add_argument("--base", default="", help="Base branch (default: the branch checked out there).")
        add.add_argument("--name", default="")
        add.add_argument("--prefix", default="", help="Branch prefix for the cards' branches.")
        add.add_argument(
            "--copy", action="append", default=[], metavar="PATTERN",
            help="A gitignored file to copy into each new worktree, such as .env (repeatable).",
        )
        add.add_argument("--setup", default="", metavar="CMD", help="Command run in each new worktree, such as 'npm ci'.")
        sub.add_parser("list", help="List projects: id, name, base branch, path, model.")
        change = sub.add_parser("set", help="Change a project's settings; unnamed settings keep their value.")
        change.add_argument("id", type=int)
        for name in SETTINGS:
            change.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None)
        hooks = sub.add_parser("webhook", help="A project's outgoing webhooks: add, list, remove.")
        verbs = hooks.add_subparsers(dest="verb", required=True)
        hook_add = verbs.add_parser("add", help="POST card events of project ID to URL; prints the webhook's id last.")
        hook_add.add_argument("id", type=int)
        hook_add.add_argument("url")
        hook_add.add_argument("--events", default="", help="Comma-separated: approval, failed, review, landed (default: all).")
        hook_add.add_argument("--slack", action="store_true", help="Send Slack's form: {\"text\": one line with a link}.")
        verbs.add_parser("list", help="List webhooks: id, project, URL, events, form, last delivery.").add_argument(
            "id", type=int, nargs="?", help="Only this project's.")
        verbs.add_parser("remove", help="Remove a webhook.").add_argument("webhook_id", type=int)

    def handle(self, *args, action, **options):
        if action == "list":
            for p in Project.objects.all():
                self.stdout.write(f"{p.pk}\t{p.name}\t{p.base_branch}\t{p.repo_path}\t{p.model or '-'}")
            return
        if action == "set":
            return self.do_set(options)
        if action == "webhook":
            return getattr(self, f"do_webhook_{options['verb']}")(options)
        form = ProjectForm(
            {"repo_path": os.path.abspath(os.path.expanduser(options["path"])), "base_branch": options["base"], "name": options["name"],
             "branch_prefix": options["prefix"], "copy_files": "\n".join(options["copy"]),
             "setup_command": options["setup"]}
        )
        if not form.is_valid():
            raise form_errors(form)
        project = form.save()
        self.stdout.write(f"Added project '{project.name}' ({project.repo_path}, base {project.base_branch})")
        self.stdout.write(str(project.pk))

    def do_set(self, options):
        project = Project.objects.filter(pk=options["id"]).first()
        if project is None:
            raise CommandError(f"No project with id {options['id']}.")
        data = {name: ("" if value is None else value) for name, value in model_to_dict(project, SETTINGS).items()}
        data.update({name: options[name] for name in SETTINGS if options.get(name) is not None})
        for name in SETTINGS:
            if isinstance(Project._meta.get_field(name), BooleanField) and options.get(name) is not None:
                value = options[name].strip().lower()
                if value not in YES_NO:
                    raise CommandError(f"--{name.replace('_', '-')} takes true or false, not '{options[name]}'.")
                data[name] = YES_NO[value]
        form = ProjectSettingsForm(data, instance=project)
        if not form.is_valid():
            raise form_errors(form)
        form.save()
        self.stdout.write(f"Settings of '{project.name}' saved")

    def do_webhook_add(self, options):
        project = Project.objects.filter(pk=options["id"]).first()
        if project is None:
            raise CommandError(f"No project with id {options['id']}.")
        events = [part.strip() for part in options["events"].split(",") if part.strip()]
        form = WebhookForm({"url": options["url"], "events": events, "slack": options["slack"]})
        if not form.is_valid():
            raise form_errors(form)
        hook = form.save(project)
        self.stdout.write(f"Webhook for '{project.name}' added: {hook.url} ({', '.join(hook.events) or 'every event'}"
                          f"{', Slack form' if hook.slack else ''})")
        self.stdout.write(str(hook.pk))

    def do_webhook_list(self, options):
        hooks = Webhook.objects.select_related("project")
        if options["id"] is not None:
            hooks = hooks.filter(project_id=options["id"])
        for hook in hooks:
            last = hook.deliveries.first()
            said = (f"{last.state} ({last.event}, {last.attempts} attempt(s){', ' + last.last_error if last.last_error else ''})"
                    if last else "no delivery yet")
            self.stdout.write(f"{hook.pk}\t{hook.project.name}\t{hook.url}\t{','.join(hook.events) or 'all'}"
                              f"\t{'slack' if hook.slack else 'json'}\t{said}")

    def do_webhook_remove(self, options):
        deleted, _ = Webhook.objects.filter(pk=options["webhook_id"]).delete()
        if not deleted:
            raise CommandError(f"No webhook with id {options['webhook_id']}.")
        self.stdout.write(f"Webhook {options['webhook_id']} removed.")
