"""Secrets: keys are names of environment variables, never shown; their values are redacted from
what runs store; the commands agents run get a scrubbed environment (agents/secrets.py)."""

import pytest
from django.urls import reverse

from agents import runner
from agents.secrets import Redactor, command_environment, looks_secret, redactor, url_password
from board.models import Card, Event, Project, Run, RunState

MODEL_KEY = "model-key-value-0123456789"


def start_and_run(card: Card) -> Run:
    run = card.start()
    runner.execute(run.pk)
    run.refresh_from_db()
    return run


def stored_texts(run: Run) -> str:
    """Everything of the run the database holds as text: its events (text and data), summary,
    error and last line."""
    run.refresh_from_db()
    parts = [run.summary, run.error, run.last_line]
    for text, data in Event.objects.filter(run=run).values_list("text", "data"):
        parts += [text, repr(data)]
    return "\n".join(parts)


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "GITHUB_TOKEN", "PGPASSWORD", "aws_secret_access_key",
                                  "GOOGLE_APPLICATION_CREDENTIALS", "SMTP_PASSWD", "deploy-keys", "DJANGO_SECRET_KEY"])
def test_names_with_a_secret_word_part_look_secret(name):
    assert looks_secret(name)


@pytest.mark.parametrize("name", ["PATH", "HOME", "KEYBOARD_LAYOUT", "SSH_AUTH_SOCK", "TOKENIZERS_PARALLELISM", "LANG"])
def test_ordinary_names_do_not_look_secret(name):
    assert not looks_secret(name)


def test_the_environment_keeps_only_the_run_s_own_key_and_drops_the_board_s_settings():
    base = {
        "PATH": "/usr/bin", "HOME": "/home/lead", "MY_MODEL": "mine-12345678", "OPENAI_API_KEY": "sk-other-123456",
        "DJANGO_SECRET_KEY": "django-secret", "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": "postgres://board:pw@db/board", "REDIS_URL": "redis://:pw@127.0.0.1:6379/0",
        "BOARD_DATA_DIR": "/srv/board", "BOARD_HOST": "0.0.0.0", "GIT_DIR": "/elsewhere/.git",
        "GITHUB_TOKEN": "ghp_12345678", "PGPASSWORD": "pgpass123",
    }
    env = command_environment("MY_MODEL", {"CARD_ID": "7", "BOARD_RUN_MARK": "x:1"}, base=base)
    assert env == {"PATH": "/usr/bin", "HOME": "/home/lead", "MY_MODEL": "mine-12345678", "CARD_ID": "7",
                   "BOARD_RUN_MARK": "x:1"}


def test_a_redactor_replaces_values_by_their_names_longest_first_and_ignores_short_ones():
    r = Redactor({"abcdefgh": "SHORTER_KEY", "abcdefgh-and-more": "LONGER_TOKEN", "tiny": "PIN_PASSWORD"})
    assert r.text("x abcdefgh-and-more y abcdefgh z tiny") == (
        "x [redacted: LONGER_TOKEN] y [redacted: SHORTER_KEY] z tiny")
    assert r.data({"a": ["abcdefgh", 3, {"b": "abcdefgh!"}]}) == {"a": ["[redacted: SHORTER_KEY]", 3, {"b": "[redacted: SHORTER_KEY]!"}]}
    assert not Redactor({}) and Redactor({}).text("abcdefgh") == "abcdefgh"


def test_the_redactor_covers_secret_variables_the_model_key_and_url_passwords(monkeypatch):
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "token-value-42")
    monkeypatch.setenv("PLAINLY_NAMED", MODEL_KEY)
    monkeypatch.setenv("DATABASE_URL", "postgres://board:db-pass-word@localhost/board")
    monkeypatch.setenv("REDIS_URL", "redis://:redis-pass-1@127.0.0.1:6379/0")
    r = redactor("PLAINLY_NAMED", [("DJANGO_SECRET_KEY", "django-secret-key-value")])
    text = r.text(f"{MODEL_KEY} token-value-42 db-pass-word redis-pass-1 django-secret-key-value")
    assert text == ("[redacted: PLAINLY_NAMED] [redacted: SOME_SERVICE_TOKEN] [redacted: DATABASE_URL password] "
                    "[redacted: REDIS_URL password] [redacted: DJANGO_SECRET_KEY]")
    assert redactor("PLAINLY_NAMED", [("DJANGO_SECRET_KEY", "django-secret-key-value")]) is r, "compiled once"
    assert url_password("postgres://u:p%40ss@h/d") == "p@ss" and url_password("not a url") == ""


def test_a_key_printed_by_a_command_agent_is_stored_redacted(make_card, monkeypatch):
    monkeypatch.setenv("PLAINLY_NAMED", MODEL_KEY)
    monkeypatch.setenv("DEPLOY_TOKEN", "deploy-token-value")
    card = make_card(f'echo "my key is $PLAINLY_NAMED"; echo "and deploy-token-value"; echo "last: $PLAINLY_NAMED"',
                     api_key_env="PLAINLY_NAMED")
    run = start_and_run(card)
    assert run.state == RunState.SUCCEEDED, run.error
    stored = stored_texts(run)
    assert MODEL_KEY not in stored and "deploy-token-value" not in stored
    assert "my key is [redacted: PLAINLY_NAMED]" in stored and "and [redacted: DEPLOY_TOKEN]" in stored
    assert run.summary.startswith("last: [redacted: PLAINLY_NAMED]")


def test_the_board_s_own_secret_key_and_database_password_are_redacted_from_the_log(make_card, settings, monkeypatch):
    settings.SECRET_KEY = "the-board-django-secret-key"
    monkeypatch.setenv("DATABASE_URL", "postgres://board:database-password@localhost/board")
    card = make_card("echo the-board-django-secret-key; echo database-password; exit 1")
    run = start_and_run(card)
    stored = stored_texts(run)
    assert "the-board-django-secret-key" not in stored and "database-password" not in stored
    assert "[redacted: DJANGO_SECRET_KEY]" in stored and "[redacted: DATABASE_URL password]" in run.error


def test_a_command_agent_sees_its_own_model_key_but_no_board_secret_or_other_key(make_card, monkeypatch, tmp_path, project):
    monkeypatch.setenv("PLAINLY_NAMED", MODEL_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "another-key-value")
    monkeypatch.setenv("DJANGO_SECRET_KEY", "django-secret-value")
    monkeypatch.setenv("DATABASE_URL", "postgres://board:pw@127.0.0.1/board")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("BOARD_SOME_SETTING", "board-only")
    monkeypatch.setenv("HARMLESS", "kept")
    project.api_key_env = "PLAINLY_NAMED"  # the project's key: a command agent with none of its own gets it
    project.save()
    dump = tmp_path / "env.txt"
    card = make_card(f"env > {dump}")
    run = start_and_run(card)
    assert run.state == RunState.SUCCEEDED, run.error
    seen = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert seen["PLAINLY_NAMED"] == MODEL_KEY and seen["HARMLESS"] == "kept"
    assert seen["CARD_ID"] == str(card.pk) and "BOARD_RUN_MARK" in seen
    for name in ("ANTHROPIC_API_KEY", "DJANGO_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "BOARD_SOME_SETTING"):
        assert name not in seen


def test_the_setup_command_gets_the_same_scrubbed_environment(make_card, monkeypatch, tmp_path, project):
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_not_for_setup")
    monkeypatch.setenv("DJANGO_SECRET_KEY", "django-secret-value")
    dump = tmp_path / "setup-env.txt"
    project.setup_command = f"env > {dump}"
    project.save()
    run = start_and_run(make_card("true"))
    assert run.state == RunState.SUCCEEDED, run.error
    text = dump.read_text()
    assert "GITHUB_TOKEN" not in text and "DJANGO_SECRET_KEY" not in text and "CARD_ID=" in text


def test_a_provider_error_that_echoes_the_key_is_redacted(monkeypatch):
    from agents import llm

    monkeypatch.setenv("PLAINLY_NAMED", MODEL_KEY)
    config = llm.ModelConfig(model="openai/gpt-4o-mini", api_key_env="PLAINLY_NAMED")
    error = llm._to_model_error(RuntimeError(f"Incorrect API key provided: {MODEL_KEY}"), config)
    assert MODEL_KEY not in str(error) and "[redacted: PLAINLY_NAMED]" in str(error)


def test_the_models_page_says_whether_a_key_is_set_but_never_shows_it(client, db, monkeypatch, make_repo, board_dirs):
    monkeypatch.setenv("PLAINLY_NAMED", MODEL_KEY)
    Project.objects.create(name="demo", repo_path=str(make_repo()), model="openai/gpt-4o-mini",
                           api_key_env="PLAINLY_NAMED")
    Project.objects.create(name="other", repo_path=str(make_repo("other")), model="openai/gpt-4o",
                           api_key_env="UNSET_KEY_VARIABLE")
    page = client.get(reverse("models")).content.decode()
    assert "$PLAINLY_NAMED" in page and MODEL_KEY not in page
    assert "not set in the board" in page.split("UNSET_KEY_VARIABLE", 1)[1].split("</tr>", 1)[0]


def test_the_builtin_agent_s_stored_conversation_holds_no_key(make_card, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-conversation-key-123")
    run = make_card("true").start()
    run.save_progress({"steps": 1, "messages": [{"role": "tool", "content": "printed sk-conversation-key-123"}]})
    run.refresh_from_db()
    assert run.agent_state["messages"][0]["content"] == "printed [redacted: OPENAI_API_KEY]"


def test_a_command_line_holding_a_key_is_refused_with_the_variable_to_use(db, monkeypatch):
    from board.forms import AgentForm, clean_no_key
    from django import forms

    monkeypatch.setenv("PLAINLY_TOKEN", "plain-token-value-99")
    form = AgentForm({"name": "mine", "kind": "command", "command": "tool --token plain-token-value-99"})
    assert not form.is_valid()
    assert "write $PLAINLY_TOKEN instead" in form.errors["command"][0]
    form = AgentForm({"name": "aider", "kind": "command", "command": "aider --api-key sk-proj-a1b2c3d4e5f6g7h8i9"})
    assert not form.is_valid() and "looks like an API key" in form.errors["command"][0]
    assert clean_no_key('aider --api-key "$OPENAI_API_KEY" --model sk-short') == 'aider --api-key "$OPENAI_API_KEY" --model sk-short'
    with pytest.raises(forms.ValidationError):
        clean_no_key("curl -H 'Authorization: Bearer ghp_abcdefghijklmnop1234' x")


def test_the_project_s_setup_and_check_commands_refuse_a_key_too(client, project, monkeypatch):
    monkeypatch.setenv("DEPLOY_PASSWORD", "deploy-password-42")
    response = client.post(reverse("project_settings", args=[project.pk]), {
        "name": project.name, "base_branch": "main", "branch_prefix": "agent", "approvals": "auto",
        "land_mode": "merge", "setup_command": "login --password deploy-password-42",
        "check_command": "make check"})
    project.refresh_from_db()
    assert project.setup_command == ""
    assert "write $DEPLOY_PASSWORD instead" in response.content.decode()


def test_a_command_agent_gets_the_key_its_agent_names_before_the_project_s_model_key(make_card, monkeypatch, tmp_path, project):
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key-value")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "anthropic-key-value")
    project.model, project.api_key_env = "openai/gpt-4o-mini", "OPENAI_API_KEY"  # the built-in agent's
    project.save()
    dump = tmp_path / "env.txt"
    run = start_and_run(make_card(f"env > {dump}", api_key_env="ANTHROPIC_API_KEY"))
    assert run.state == RunState.SUCCEEDED, run.error
    text = dump.read_text()
    assert "ANTHROPIC_API_KEY=anthropic-key-value" in text and "OPENAI_API_KEY" not in text
