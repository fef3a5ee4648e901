from django.urls import path

from board import consumers

websocket_urlpatterns = [
    path("ws/projects/<int:project_id>/", consumers.BoardConsumer.as_asgi()),
    path("ws/cards/<int:card_id>/", consumers.CardConsumer.as_asgi()),
]
