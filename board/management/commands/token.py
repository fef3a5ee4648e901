from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from board.models import ApiToken


class Command(BaseCommand):
    help = (
        "Manage REST API tokens (README, \"An API for machines\"). `token create --user NAME --name LABEL` prints a "
        "new token once, last; the board keeps only its SHA-256. `token list`, `token revoke ID`."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="Make a token acting as an existing user, with that user's roles.")
        create.add_argument("--user", required=True, help="The username the token acts as.")
        create.add_argument("--name", required=True, help="What the token is for, such as grafana or ci.")
        sub.add_parser("list", help="List tokens: id, name, user, first characters, last use, revoked.")
        revoke = sub.add_parser("revoke", help="Refuse a token from now on.")
        revoke.add_argument("id", type=int)

    def handle(self, *args, action, **options):
        getattr(self, f"do_{action}")(options)

    def do_create(self, options):
        name = options["name"].strip()
        if not name or not name.isprintable():
            raise CommandError("--name must be a printable label, such as ci.")
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(
                f"No user '{options['user']}'. Make one first (python manage.py createsuperuser, or a user "
                "with a role in each project it should reach)."
            )
        token, secret = ApiToken.issue(user, name)
        self.stdout.write(f"Token {token.pk} '{token.name}' acts as {user.get_username()}. "
                          "It is shown only now; keep it secret:")
        self.stdout.write(secret)

    def do_list(self, options):
        for token in ApiToken.objects.select_related("user"):
            used = token.last_used_at.isoformat(timespec="seconds") if token.last_used_at else "never used"
            self.stdout.write(f"{token.pk}\t{token.name}\t{token.user.get_username()}\t{token.prefix}…\t{used}"
                              f"\t{'revoked' if token.revoked else 'active'}")

    def do_revoke(self, options):
        if ApiToken.objects.filter(pk=options["id"]).update(revoked=True) == 0:
            raise CommandError(f"No token with id {options['id']}.")
        self.stdout.write(f"Token {options['id']} revoked.")
