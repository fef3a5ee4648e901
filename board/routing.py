from django.urls import path, re_path

from board import consumers

websocket_urlpatterns = [
    path("ws/projects/<int:project_id>/", consumers.BoardConsumer.as_asgi()),
    path("ws/cards/<int:card_id>/", consumers.CardConsumer.as_asgi()),
    # Anything else is refused with a close, not an error in the log.
    re_path(r"", consumers.RefusingConsumer.as_asgi()),
]
