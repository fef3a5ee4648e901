from django.urls import path

from board import views

urlpatterns = [
    path("", views.home, name="home"),
    path("projects/", views.project_create, name="project_create"),
    path("projects/<int:project_id>/", views.board, name="board"),
    path("projects/<int:project_id>/cards/", views.card_create, name="card_create"),
    path("cards/<int:card_id>/", views.card_detail, name="card_detail"),
    path("cards/<int:card_id>/start", views.card_start, name="card_start"),
    path("cards/<int:card_id>/stop", views.card_stop, name="card_stop"),
    path("cards/<int:card_id>/delete", views.card_delete, name="card_delete"),
    path("agents/", views.agents, name="agents"),
    path("agents/<int:agent_id>/toggle", views.agent_toggle, name="agent_toggle"),
]
