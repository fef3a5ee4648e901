"""Pages of who may do what in a project: its members and their roles, and its audit log. Both
are a maintainer's (board/access.py holds the rule; Membership.grant/remove keep the last
maintainer)."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from board import access
from board.forms import MemberForm, RoleForm
from board.models import BoardError, Membership, Project, Role

AUDIT_PAGE = 50  # entries per page of the audit log


def _members_page(request, project: Project, form: MemberForm, status: int = 200):
    memberships = project.memberships.select_related("user").order_by("user__username")
    context = {"project": project, "memberships": memberships, "form": form, "roles": Role.choices}
    return render(request, "board/members.html", context, status=status)


@access.role_required(Role.MAINTAINER)
def members(request, project_id):
    """The project's members and roles; a POST adds one (or changes the role of one already in):
    422 with the reason for an unknown username or role."""
    project = get_object_or_404(Project, pk=project_id)
    form = MemberForm(request.POST or None)
    if request.method != "POST":
        return _members_page(request, project, form)
    if not form.is_valid():
        return _members_page(request, project, form, status=422)
    user, role = form.cleaned_data["user"], form.cleaned_data["role"]
    try:
        Membership.grant(user, project, role)
    except BoardError as exc:
        form.add_error(None, str(exc))
        return _members_page(request, project, form, status=409)
    access.audit(request.user, "member-add", project=project, member=user.get_username(), role=role)
    messages.success(request, f"{user.get_username()} is now {role} of {project.name}.")
    return redirect("members", project_id=project.pk)


@require_POST
@access.role_required(Role.MAINTAINER)
def member_change(request, project_id, membership_id):
    """Change one member's role, or remove them (``remove=1``); the last maintainer stays (an
    error message says why)."""
    membership = get_object_or_404(Membership.objects.select_related("user", "project"), pk=membership_id, project_id=project_id)
    form = RoleForm(request.POST)
    name = membership.user.get_username()
    if not form.is_valid():
        messages.error(request, " ".join(e for errors in form.errors.values() for e in errors))
        return redirect("members", project_id=project_id)
    try:
        if form.cleaned_data["remove"]:
            membership.remove()
            access.audit(request.user, "member-remove", project=membership.project, member=name)
            messages.success(request, f"{name} is no longer a member of {membership.project.name}.")
        else:
            Membership.grant(membership.user, membership.project, form.cleaned_data["role"])
            access.audit(request.user, "member-role", project=membership.project, member=name, role=form.cleaned_data["role"])
            messages.success(request, f"{name} is now {form.cleaned_data['role']} of {membership.project.name}.")
    except BoardError as exc:
        messages.error(request, str(exc))
    return redirect("members", project_id=project_id)


@access.role_required(Role.MAINTAINER)
def audit_log(request, project_id):
    """Who did what in the project, newest first, AUDIT_PAGE entries a page (``?page=N``; past
    the last page: the last page)."""
    project = get_object_or_404(Project, pk=project_id)
    page = Paginator(project.audit.order_by("-id"), AUDIT_PAGE).get_page(request.GET.get("page"))
    return render(request, "board/audit.html", {"project": project, "page": page})
