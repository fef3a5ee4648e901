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

import functools
import ipaddress

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404
from django.utils.functional import SimpleLazyObject

from board.models import ROLE_RANK, AuditEntry, Card, Membership, Project, Role, Run

LOCAL_ACTOR = "local"
# Headers a reverse proxy adds. A request carrying one came from somewhere else, whatever address
# the proxy itself connects from: it is never the one local user's (a client that sends one on
# purpose only makes the board ask it to log in).
FORWARDED_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def login_required() -> bool:
    """Whether every request needs a logged-in user (``settings.BOARD_LOGIN_REQUIRED``)."""
    return bool(getattr(settings, "BOARD_LOGIN_REQUIRED", False))


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` (an IP address as a string, as in REMOTE_ADDR or an ASGI scope's
    ``client``) is this machine's loopback; an unknown address (None or empty: a Unix socket, an
    in-process test) counts as local. Anything unparsable is not loopback."""
    if not address:
        return True
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def login_needed(address: str | None, forwarded: bool = False) -> bool:
    """Whether a request from ``address`` (``forwarded``: it carries a proxy's forwarding
    header) must come from a logged-in user: always when ``settings.BOARD_LOGIN_REQUIRED``, and
    for any client that is not this machine's loopback even when it is off, so a board bound to
    another address by other means never serves a stranger without a login."""
    return login_required() or forwarded or not is_loopback(address)


def request_needs_login(request) -> bool:
    """``login_needed`` for an HTTP request (REMOTE_ADDR and its headers)."""
    forwarded = any(f"HTTP_{h.upper().replace('-', '_')}" in request.META for h in FORWARDED_HEADERS)
    return login_needed(request.META.get("REMOTE_ADDR"), forwarded)


def scope_needs_login(scope) -> bool:
    """``login_needed`` for an ASGI scope (a websocket's ``client`` and headers)."""
    client = scope.get("client")
    forwarded = any(name.decode("latin-1").lower() in FORWARDED_HEADERS for name, _ in scope.get("headers", ()))
    return login_needed(client[0] if client else None, forwarded)


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


def is_maintainer_somewhere(user) -> bool:
    """Whether ``user`` may manage the board or maintains at least one project (for what belongs
    to no single project but touches a project's settings, such as trying a model)."""
    if may_manage_board(user):
        return True
    return _is_person(user) and Membership.objects.filter(user=user, role=Role.MAINTAINER).exists()


def project_id_of(kwargs: dict) -> int | None:
    """The id of the project a URL's keyword arguments point into (``project_id``, ``card_id`` or
    ``run_id``); raises Http404 when that object does not exist, returns None when the URL names
    none of them."""
    if "project_id" in kwargs:
        found = Project.objects.filter(pk=kwargs["project_id"]).values_list("pk", flat=True).first()
    elif "card_id" in kwargs:
        found = Card.objects.filter(pk=kwargs["card_id"]).values_list("project_id", flat=True).first()
    elif "run_id" in kwargs:
        found = Run.objects.filter(pk=kwargs["run_id"]).values_list("card__project_id", flat=True).first()
    else:
        return None
    if found is None:
        raise Http404("No such project or card.")
    return found


def role_required(role: Role):
    """Decorator for a view whose URL names a project, card or run (see ``project_id_of``): the
    request's user needs at least ``role`` in that project, else Http404 (no role: the project
    stays hidden) or PermissionDenied (403, with the role needed). The one local user without a
    login passes without a query. The role is kept on the view as ``required_role``."""

    def decorate(view):
        @functools.wraps(view)
        def checked(request, *args, **kwargs):
            if login_required() or _is_person(request.user):
                project_id = project_id_of(kwargs)
                if project_id is None:
                    raise ValueError(f"{view.__name__}'s URL names no project, card or run to check a role in.")
                require_role(request.user, project_id, role)
            return view(request, *args, **kwargs)

        checked.required_role = role
        return checked

    return decorate


def board_manager_required(view):
    """Decorator for a view that changes what is no single project's (projects, agents): the
    request's user must be allowed to manage the board (``may_manage_board``), else
    PermissionDenied (403)."""

    @functools.wraps(view)
    def checked(request, *args, **kwargs):
        if not may_manage_board(request.user):
            raise PermissionDenied("Only a board administrator (a superuser) may add projects or change agents.")
        return view(request, *args, **kwargs)

    checked.required_role = "board"
    return checked


def current_role(request) -> str:
    """The request's user's role in the project its URL points into, as a string (``viewer``,
    ``member``, ``maintainer``), or ``""`` where the URL names none or the user has none."""
    match = getattr(request, "resolver_match", None)
    if not login_required() and not _is_person(getattr(request, "user", None)):
        return Role.MAINTAINER.value
    try:
        project_id = project_id_of(match.kwargs) if match else None
    except Http404:
        return ""
    role = role_for(request.user, project_id) if project_id is not None else None
    return role.value if role else ""


def role_context(request) -> dict:
    """Template context processor: ``board_role``, the user's role where the page is (for
    ``<body data-role>``: the cached card partials, shared by all users, carry every button, and
    CSS hides those a viewer or member may not use; the views refuse them anyway), read only when
    a template uses it; and ``board_admin``, whether the user may add projects and agents
    (``may_manage_board``)."""
    return {"board_role": SimpleLazyObject(lambda: current_role(request)),
            "board_admin": SimpleLazyObject(lambda: may_manage_board(getattr(request, "user", None)))}


def may_watch(scope, project_id: int) -> bool:
    """Whether a websocket with ASGI ``scope`` may receive the pushes of project ``project_id``:
    anyone where no login is needed (``scope_needs_login``), else a logged-in user
    (``scope["user"]``, from Channels' AuthMiddlewareStack) with at least the viewer role there."""
    user = scope.get("user")
    if not scope_needs_login(scope) and not _is_person(user):
        return True
    return _is_person(user) and has_role(user, project_id, Role.VIEWER)
