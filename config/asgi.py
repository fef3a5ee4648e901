"""ASGI entry point for daphne: HTTP through Django, websockets through Channels."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Django must be set up before the consumers (and the models they import) are loaded.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.signals import request_finished  # noqa: E402
from django.db import connections  # noqa: E402

from board.routing import websocket_urlpatterns  # noqa: E402

# A board of a thousand cards makes some hundred thousand small objects per render. Python's
# default thresholds (700, 10, 10) collected every few hundred of them and went over the whole heap
# often enough to double the render's p95 (bench/board_render.py): collect less often, and leave
# what start-up loaded (Django, litellm, …) out of every collection.
gc.set_threshold(50_000, 20, 100)
gc.freeze()

if settings.DATABASE_URL:
    # Each HTTP request runs its sync code in a thread of its own (asgiref's ThreadSensitiveContext),
    # so a connection kept for CONN_MAX_AGE outlives its thread and lingers until collected: under
    # bench/team_load.py one web process held some hundred PostgreSQL connections within a minute,
    # and PostgreSQL refused more. A request's connection is closed when it ends; the consumers'
    # calls share one thread and keep theirs, as the workers do.
    def _close_request_connections(**kwargs) -> None:
        connections.close_all()

    request_finished.connect(_close_request_connections, dispatch_uid="board-close-request-connections")

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
