"""Ready-made command agents for the common CLI coding agents, disabled until the lead enables one
(the agents page allows that only where the program is installed). Each reads the card's prompt
from the file named by CARD_PROMPT_FILE. Flags from each tool's own docs: aider `--message-file`
and `--yes-always`; Claude Code `-p` (print mode) with `--permission-mode acceptEdits`; Codex
`exec --full-auto`; Cline CLI 2 `-y` (headless, auto-approve)."""

from django.db import migrations

TEMPLATES = [
    ("aider", "aider", 'aider --yes-always --no-check-update --no-pretty --message-file "$CARD_PROMPT_FILE"'),
    ("claude-code", "claude", 'claude -p "$(cat "$CARD_PROMPT_FILE")" --permission-mode acceptEdits --output-format text'),
    ("codex", "codex", 'codex exec --full-auto "$(cat "$CARD_PROMPT_FILE")"'),
    ("cline", "cline", 'cline -y "$(cat "$CARD_PROMPT_FILE")"'),
]


def add_templates(apps, schema_editor):
    Agent = apps.get_model("board", "Agent")
    for name, program, command in TEMPLATES:
        Agent.objects.get_or_create(
            name=name, defaults={"kind": "command", "program": program, "command": command, "enabled": False}
        )


def remove_templates(apps, schema_editor):
    Agent = apps.get_model("board", "Agent")
    Agent.objects.filter(name__in=[t[0] for t in TEMPLATES], runs__isnull=True, cards__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("board", "0001_initial")]
    operations = [migrations.RunPython(add_templates, remove_templates)]
