import os

from django.core.management.base import BaseCommand

from board.forms import ProjectForm
from board.management.commands._cli import form_errors
from board.models import Project


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
        sub.add_parser("list", help="List projects: id, name, base branch, path.")

    def handle(self, *args, action, **options):
        if action == "list":
            for p in Project.objects.all():
                self.stdout.write(f"{p.pk}\t{p.name}\t{p.base_branch}\t{p.repo_path}")
            return
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
