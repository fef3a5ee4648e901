"""Who may do what: per-project roles, and the audit log of what they did.

One place answers "may this person do this here?" for pages, htmx endpoints, websockets, the REST
API and the shell, so each write checks the same rule:

- Without a login (the board bound to loopback, ``settings.BOARD_LOGIN_REQUIRED`` false) the one
  local user may do everything; the audit log calls them ``local``.
- With a login, a superuser is a maintainer of every project; anyone else has the role their
  ``Membership`` gives, or none (the project is then hidden: 404, not 403, so its name does not leak).
- Each role may do everything the roles before it may (``ROLE_RANK``).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404

from board.models import ROLE_RANK, AuditEntry, Card, Membership, Project, Role

LOCAL_ACTOR = "local"


def login_required() -> bool:
    """Whether every request needs a logged-in user (``settings.BOARD_LOGIN_REQUIRED``)."""
    return bool(getattr(settings, "BOARD_LOGIN_REQUIRED", False))


def _is_person(user) -> bool:
    return user is not None and getattr(user, "is_authenticated", False)


def role_for(user, project: Project | int) -> Role | None:
    """``user``'s role in ``project`` (a Project or its id): MAINTAINER for the local user without
    a login and for superusers, the Membership's role otherwise, None without one."""
    if not login_required() and not _is_person(user):
        return Role.MAINTAINER
    if not _is_person(user):
        return None
    if user.is_superuser:
        return Role.MAINTAINER
    project_id = project.pk if isinstance(project, Project) else project
    role = Membership.objects.filter(user=user, project_id=project_id).values_list("role", flat=True).first()
    return Role(role) if role else None


def has_role(user, project: Project | int, role: Role) -> bool:
    """Whether ``user`` has at least ``role`` in ``project``."""
    mine = role_for(user, project)
    return mine is not None and ROLE_RANK[mine] >= ROLE_RANK[role]


def require_role(user, project: Project | int, role: Role) -> None:
    """Raise Http404 when ``user`` cannot see ``project`` at all (no role), PermissionDenied (403)
    when their role is below ``role``; return quietly otherwise."""
    mine = role_for(user, project)
    if mine is None:
        raise Http404("No such project.")
    if ROLE_RANK[mine] < ROLE_RANK[role]:
        raise PermissionDenied(f"This needs the {role.label.split(' (')[0].lower()} role in this project; you are a {mine.value}.")


def visible_projects(user) -> QuerySet[Project]:
    """The projects ``user`` may see: all of them for the local user and superusers, else those
    they are a member of."""
    projects = Project.objects.all()
    if not login_required() and not _is_person(user):
        return projects
    if not _is_person(user):
        return projects.none()
    if user.is_superuser:
        return projects
    return projects.filter(memberships__user=user).distinct()


def may_manage_board(user) -> bool:
    """Whether ``user`` may change what is not one project's: add projects, agents, members."""
    if not login_required() and not _is_person(user):
        return True
    return _is_person(user) and user.is_superuser


def actor_name(user) -> str:
    """How the audit log names ``user``: their username, or ``local`` without a login."""
    return user.get_username() if _is_person(user) else LOCAL_ACTOR


def audit(user, action: str, *, project: Project | None = None, card: Card | None = None,
          actor: str | None = None, **detail) -> AuditEntry:
    """Record that ``user`` did ``action`` (such as ``start``, ``stop``, ``approve``, ``land``,
    ``delete``, ``settings``) on ``card`` or ``project``; ``actor`` overrides the name (such as
    ``api:<token name>``); ``detail`` must be JSON-serialisable."""
    if card is not None and project is None:
        project = card.project
    return AuditEntry.objects.create(
        user=user if _is_person(user) else None,
        actor=(actor or actor_name(user))[:150],
        action=action[:40],
        project=project,
        card_id_ref=card.pk if card is not None else None,
        card_title=(card.title if card is not None else "")[:300],
        detail=detail,
    )
