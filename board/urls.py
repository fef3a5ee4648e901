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
    path("cards/<int:card_id>/resume", views.card_resume, name="card_resume"),
    path("cards/<int:card_id>/log", views.card_log, name="card_log"),
    path("cards/<int:card_id>/follow-up", views.card_follow_up, name="card_follow_up"),
    path("cards/<int:card_id>/settings", views.card_settings, name="card_settings"),
    path("cards/<int:card_id>/rollback", views.card_rollback, name="card_rollback"),
    path("cards/<int:card_id>/land", views.card_land, name="card_land"),
    path("cards/<int:card_id>/conflicts", views.card_check_conflicts, name="card_check_conflicts"),
    path("cards/<int:card_id>/rebase", views.card_rebase, name="card_rebase"),
    path("cards/<int:card_id>/resolve", views.card_resolve, name="card_resolve"),
    path("cards/<int:card_id>/push", views.card_push, name="card_push"),
    path("runs/<int:run_id>/decide", views.run_decide, name="run_decide"),
    path("projects/<int:project_id>/settings", views.project_settings, name="project_settings"),
    path("projects/<int:project_id>/start-all", views.project_start_all, name="project_start_all"),
    path("models/", views.models_page, name="models"),
    path("models/test", views.model_test, name="model_test"),
    path("agents/", views.agents, name="agents"),
    path("agents/<int:agent_id>/toggle", views.agent_toggle, name="agent_toggle"),
]
