"""The built-in agent, ready to use: it takes its model from the project's settings (or the card's
override), so a new board needs no agent set-up, only a model."""

from django.db import migrations


def add_builtin(apps, schema_editor):
    Agent = apps.get_model("board", "Agent")
    Agent.objects.get_or_create(name="built-in", defaults={"kind": "builtin", "model": "", "enabled": True})


def remove_builtin(apps, schema_editor):
    Agent = apps.get_model("board", "Agent")
    Agent.objects.filter(name="built-in", model="", runs__isnull=True, cards__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("board", "0004_builtin_agent_settings")]
    operations = [migrations.RunPython(add_builtin, remove_builtin)]
