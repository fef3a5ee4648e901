"""The HTTP side of outgoing webhooks: one POST of a JSON body to a URL, and what came of it.

Knows no Django models (DESIGN.md, "Which part may know which"): board/webhooks.py hands it a URL
and a body and records the Result. Uses the standard library's urllib, so it needs nothing the
board does not have already.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from dataclasses import dataclass

USER_AGENT = "agent-board-webhooks/1"
READ_LIMIT = 64 * 1024  # bytes of a receiver's answer read (and then dropped): it only says "got it"


@dataclass(frozen=True)
class Result:
    """What one POST came to: ``status`` is the HTTP status (None when no answer came: refused,
    timed out, a bad URL); ``error`` is "" for a 2xx answer, else one line saying what went wrong."""

    status: int | None
    error: str

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300 and not self.error


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # urllib would follow a 301/302 with a GET and lose the body: a redirect is the receiver's
    # misconfiguration, shown as such (a non-2xx answer) rather than silently half-delivered.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def post_json(url: str, body: dict, timeout: float = 5.0) -> Result:
    """POST ``body`` as JSON (UTF-8) to ``url`` (http or https), waiting ``timeout`` seconds at
    most for the connection and for each read. Never raises for anything the network or the
    receiver does: every failure is a Result with its error."""
    if not url.lower().startswith(("http://", "https://")):
        return Result(None, "Not an http:// or https:// URL.")
    data = json.dumps(body).encode("ascii")  # \u escapes: valid JSON whatever the text holds
    try:
        request = urllib.request.Request(
            url, data=data, method="POST",
            headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT},
        )
        with _opener.open(request, timeout=timeout) as response:
            response.read(READ_LIMIT)
            status = response.status
    except urllib.error.HTTPError as exc:
        return Result(exc.code, f"HTTP {exc.code} {exc.reason}".strip())
    except urllib.error.URLError as exc:
        return Result(None, f"Could not reach the receiver: {exc.reason}")
    except TimeoutError:
        return Result(None, f"No answer within {timeout:g} s.")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Result(None, f"{type(exc).__name__}: {exc}"[:500])
    if not 200 <= status < 300:
        return Result(status, f"HTTP {status}")
    return Result(status, "")
