from django.urls import include, path

from board.api import api

urlpatterns = [
    path("api/", api.urls),  # the REST API for machines (board/api.py): token auth, its own 401/403/404
    path("", include("board.urls")),
]
