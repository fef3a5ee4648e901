from django.apps import AppConfig


class BoardConfig(AppConfig):
    name = "board"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.db.models.signals import post_save

        from board import relay
        from board.models import Event

        # In Redis mode every writer (web or worker) publishes its events itself, after commit.
        post_save.connect(relay.publish_on_commit, sender=Event, dispatch_uid="board-publish-event")
