from django.contrib.auth import views as auth_views
from django.urls import include, path

from board.api import api

urlpatterns = [
    path("api/", api.urls),  # the REST API for machines (board/api.py): token auth, its own 401/403/404
    # Django's own login (README, "Sharing it"); logging out is a POST (the header's button).
    path("login", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("board.urls")),
]

# A refusal for a role too low: the reason in the page, or alone for htmx (board/views.py).
handler403 = "board.views.permission_denied"
