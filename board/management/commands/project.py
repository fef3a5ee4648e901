import os

from django.core.management.base import BaseCommand, CommandError
from django.db.models import BooleanField
from django.forms.models import model_to_dict

from board.forms import ProjectForm, ProjectSettingsForm
from board.management.commands._cli import form_errors
from board.models import Project


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

    def handle(self, *args, action, **options):
        if action == "list":
            for p in Project.objects.all():
                self.stdout.write(f"{p.pk}\t{p.name}\t{p.base_branch}\t{p.repo_path}\t{p.model or '-'}")
            return
        if action == "set":
            return self.do_set(options)
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
