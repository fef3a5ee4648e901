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

from board.routing import websocket_urlpatterns  # noqa: E402

# A board of a thousand cards makes some hundred thousand small objects per render. Python's
# default thresholds (700, 10, 10) collected every few hundred of them and went over the whole heap
# often enough to double the render's p95 (bench/board_render.py): collect less often, and leave
# what start-up loaded (Django, litellm, …) out of every collection.
gc.set_threshold(50_000, 20, 100)
gc.freeze()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
