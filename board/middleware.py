"""The login gate: who may reach the board at all (board/access.py says what each may do there)."""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse
from django.shortcuts import resolve_url

from board import access

# Paths served without a login: static files, and the REST API, which checks its own tokens.
OPEN_PREFIXES = ("/static/", "/api/")


class LoginRequiredMiddleware:
    """Sends an anonymous request to the login page when a login is needed
    (``access.request_needs_login``: BOARD_LOGIN_REQUIRED, or a client that is not this machine's
    loopback): a redirect for pages, 401 with ``HX-Redirect`` to the login page for htmx requests
    (htmx would otherwise swap the login page into a card). The login and logout pages, static
    files and /api/ are let through. Goes after AuthenticationMiddleware (it reads request.user)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.user.is_authenticated or not access.request_needs_login(request) or self._open(request.path_info):
            return self.get_response(request)
        login_url = resolve_url(settings.LOGIN_URL)
        if request.headers.get("HX-Request") == "true":
            response = HttpResponse("Log in first.", status=401, content_type="text/plain; charset=utf-8")
            # Back to the page the request came from after logging in, not to an htmx fragment.
            page = urlsplit(request.headers.get("HX-Current-URL", "")).path or "/"
            response["HX-Redirect"] = redirect_to_login(page, login_url)["Location"]
            return response
        return redirect_to_login(request.get_full_path(), login_url)

    @staticmethod
    def _open(path: str) -> bool:
        return path.startswith(OPEN_PREFIXES) or path in (resolve_url(settings.LOGIN_URL), resolve_url("logout"))
