from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from board import access
from board.forms import MemberForm
from board.management.commands._cli import form_errors
from board.models import BoardError, Membership, Project, Role

SHELL_ACTOR = "shell"  # how the audit log names what was done from the shell


class Command(BaseCommand):
    help = (
        "Manage who may do what in a project: `member add USER PROJECT_ID [ROLE]` (viewer, member or maintainer; "
        "default member; changes the role of someone already in), `member list [PROJECT_ID]`, "
        "`member remove USER PROJECT_ID`. The accounts themselves: manage.py createsuperuser."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="Give an account a role in a project (or change it).")
        add.add_argument("user")
        add.add_argument("project", type=int)
        add.add_argument("role", nargs="?", default=Role.MEMBER.value, help="viewer, member or maintainer (default member).")
        listing = sub.add_parser("list", help="List members: project id, project, user, role.")
        listing.add_argument("project", type=int, nargs="?")
        remove = sub.add_parser("remove", help="Take an account out of a project (not its last maintainer).")
        remove.add_argument("user")
        remove.add_argument("project", type=int)

    def handle(self, *args, action, **options):
        getattr(self, f"do_{action}")(options)

    @staticmethod
    def _project(project_id: int) -> Project:
        project = Project.objects.filter(pk=project_id).first()
        if project is None:
            raise CommandError(f"No project with id {project_id}.")
        return project

    def do_add(self, options):
        project = self._project(options["project"])
        form = MemberForm({"username": options["user"], "role": options["role"]})
        if not form.is_valid():
            raise form_errors(form)
        user, role = form.cleaned_data["user"], form.cleaned_data["role"]
        try:
            Membership.grant(user, project, role)
        except BoardError as exc:
            raise CommandError(str(exc)) from exc
        access.audit(None, "member-add", project=project, actor=SHELL_ACTOR, member=user.get_username(), role=role)
        self.stdout.write(f"{user.get_username()} is now {role} of {project.name}")

    def do_list(self, options):
        memberships = Membership.objects.select_related("user", "project").order_by("project_id", "user__username")
        if options["project"] is not None:
            memberships = memberships.filter(project=self._project(options["project"]))
        for m in memberships:
            self.stdout.write(f"{m.project_id}\t{m.project.name}\t{m.user.get_username()}\t{m.role}")
        for user in get_user_model().objects.filter(is_superuser=True).order_by("username"):
            self.stdout.write(f"*\t(every project)\t{user.get_username()}\tmaintainer (superuser)")

    def do_remove(self, options):
        project = self._project(options["project"])
        membership = Membership.objects.select_related("user", "project").filter(
            project=project, user__username=options["user"]).first()
        if membership is None:
            raise CommandError(f"{options['user']} is not a member of {project.name}.")
        try:
            membership.remove()
        except BoardError as exc:
            raise CommandError(str(exc)) from exc
        access.audit(None, "member-remove", project=project, actor=SHELL_ACTOR, member=options["user"])
        self.stdout.write(f"{options['user']} is no longer a member of {project.name}")
