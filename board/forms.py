"""Forms: the one place input is checked, for the pages and the `manage.py` commands alike."""

from __future__ import annotations

import os
import re

from django import forms
from django.db import models

from agents import clones, worktrees
from board.models import Agent, Approvals, BoardError, Card, Column, LandMode, Mode, Project, Role, Run
from board.models import Webhook, WebhookEvent

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PROMPT_LIMIT = 100_000  # characters; a prompt is also passed in an environment variable (Linux caps one at 128 KiB)


ANSI_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")  # ECMA-48 CSI, OSC, Fe


def printable(text: str) -> str:
    """``text`` with terminal escape sequences and control characters (bells, NULs) dropped and
    runs of whitespace made one space: titles and names end up in commit subjects and terminals."""
    text = ANSI_ESCAPE.sub("", text)
    return " ".join("".join(ch if ch.isprintable() or ch.isspace() else "" for ch in text).split())


BIGINT_MAX = 2**63 - 1  # the largest id a database keeps (SQLite INTEGER, PostgreSQL bigint)


class IdsField(forms.ModelMultipleChoiceField):
    """ModelMultipleChoiceField that refuses, as ``invalid_pk_value``, an id no database can hold
    (such as 99999999999999999999999) before querying: Django only catches ValueError and
    TypeError there, and SQLite raised OverflowError, a 500."""

    def _check_values(self, value):
        for pk in value:
            text = str(pk).strip()
            if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= BIGINT_MAX:
                raise forms.ValidationError(self.error_messages["invalid_pk_value"], code="invalid_pk_value",
                                            params={"pk": text[:40]})
        return super()._check_values(value)


class ProjectForm(forms.ModelForm):
    """Add a project: a local git repository and its base branch (default: the branch checked out
    there). Refuses a path that is not a repository and a branch that does not exist."""

    name = forms.CharField(required=False, max_length=200, help_text="Defaults to the folder's name.")
    base_branch = forms.CharField(
        required=False, max_length=255, help_text="Defaults to the branch checked out in the repository."
    )
    branch_prefix = forms.CharField(
        required=False, max_length=100, help_text="Cards' branches are <prefix>/<card id>-<title>; defaults to agent."
    )

    class Meta:
        model = Project
        fields = ["repo_path", "base_branch", "name", "branch_prefix", "copy_files", "setup_command"]
        labels = {"repo_path": "Repository path", "copy_files": "Files to copy", "setup_command": "Setup command"}
        widgets = {"copy_files": forms.Textarea(attrs={"rows": 2}), "setup_command": forms.Textarea(attrs={"rows": 1})}

    def clean_repo_path(self):
        path = os.path.expanduser(self.cleaned_data["repo_path"].strip())
        if not os.path.isabs(path):
            # Relative to what? The board's own folder is never what the lead means.
            raise forms.ValidationError("Give the repository's full path, such as /home/me/src/shop.")
        path = os.path.abspath(path)
        try:
            self.repo_info = worktrees.inspect_repository(path)
        except worktrees.GitError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return self.repo_info.path

    def clean_branch_prefix(self):
        from django.conf import settings

        prefix = self.cleaned_data["branch_prefix"].strip() or settings.BOARD_BRANCH_PREFIX
        if worktrees.branch_name(prefix, 1, "x") != f"{prefix}/1-x":
            raise forms.ValidationError("Use letters, digits, '-', '_' and '/' only in the branch prefix.")
        return prefix

    def clean(self):
        data = super().clean()
        info = getattr(self, "repo_info", None)
        if info is None:
            return data
        base = (data.get("base_branch") or "").strip() or info.current_branch
        if not base:
            try:
                worktrees.resolve_base(info.path, "")
            except worktrees.EmptyRepository as exc:
                self.add_error("repo_path", str(exc))
            except worktrees.GitError:
                self.add_error("base_branch", "The repository has no branch checked out (detached HEAD): name the base branch.")
            return data
        try:
            worktrees.resolve_base(info.path, base)
        except worktrees.GitError as exc:
            self.add_error("base_branch", str(exc))
            return data
        data["base_branch"] = base
        same = Project.objects.filter(repo_path=info.path, base_branch=base).first()
        if same is not None:
            self.add_error("repo_path", f"This repository is already the project '{same.name}' with base {base}.")
            return data
        data["name"] = (data.get("name") or "").strip() or os.path.basename(info.path.rstrip("/")) or info.path
        return data


# How API keys of common providers begin (OpenAI, Anthropic, Groq, Hugging Face, xAI, Google,
# GitHub, GitLab, Replicate, Perplexity): such a value is a key, not a variable's name.
KEY_PREFIXES = ("sk-", "sk_", "gsk_", "hf_", "xai-", "AIza", "ghp_", "github_pat_", "glpat-", "r8_", "pplx-")


def looks_like_key(value: str) -> bool:
    """True for a value that is more likely a secret than a variable name: a known key prefix,
    or a long run that mixes lower case and digits (variable names are words)."""
    if value.startswith(KEY_PREFIXES):
        return True
    return len(value) >= 32 and any(c.islower() for c in value) and sum(c.isdigit() for c in value) >= 4


def clean_env_name(value: str) -> str:
    """An environment variable's NAME (or empty); a value that looks like a key is refused."""
    value = (value or "").strip()
    if value and (not ENV_NAME.match(value) or looks_like_key(value)):
        raise forms.ValidationError("Give the NAME of an environment variable (such as OPENAI_API_KEY), not the key itself.")
    return value


def clean_no_key(value: str) -> str:
    """``value`` (a command line) unless it holds a key: the value of one of the board's
    secret-looking environment variables (agents.secrets), or a word that starts like a
    provider's key (KEY_PREFIXES) and is 20 characters or more with a digit. Such a value would
    be stored and shown in plain text; the command should read the variable instead."""
    from agents.secrets import redactor

    value = value or ""
    found = re.search(r"\[redacted: ([^\]]+)\]", redactor().text(value))
    if found:
        name = found.group(1).split()[0]
        raise forms.ValidationError(f"This holds the value of ${name}; write ${name} instead, so the key is never stored or shown.")
    for word in re.findall(r"[\w.-]+", value):
        if word.startswith(KEY_PREFIXES) and len(word) >= 20 and any(c.isdigit() for c in word):
            raise forms.ValidationError("This looks like an API key; set it in an environment variable of the board and "
                                        "write $NAME here instead, so the key is never stored or shown.")
    return value


HOST_NAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")


def http_url(value: str, message: str) -> str:
    """``value`` (stripped) if it is an http(s) URL with a host (a name, one-label intranet names
    included, or an IP address), a port from 1 to 65535 and no spaces or control characters;
    raises ValidationError(``message``) otherwise."""
    import ipaddress
    from urllib.parse import urlsplit

    if not value.isprintable() or any(ch.isspace() for ch in value):
        raise forms.ValidationError(message)
    try:
        parts = urlsplit(value)
        port = parts.port  # ValueError beyond 65535
    except ValueError:
        raise forms.ValidationError(message) from None
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        good_host = True
    except ValueError:
        good_host = bool(HOST_NAME.match(host))
    if parts.scheme not in ("http", "https") or not good_host or port == 0:
        raise forms.ValidationError(message)
    return value


def clean_api_base(value: str) -> str:
    """An http(s) URL (http_url), or empty."""
    value = (value or "").strip()
    if not value:
        return value
    return http_url(value, "The API base must be an http:// or https:// URL, such as http://127.0.0.1:11434/v1.")


def clean_model(value: str) -> str:
    """A litellm model string: printable, no spaces (``provider/model``)."""
    value = (value or "").strip()
    if value and (not value.isprintable() or any(ch.isspace() for ch in value)):
        raise forms.ValidationError("A model name has no spaces, such as openai/gpt-4o-mini or ollama_chat/qwen2.5-coder.")
    return value


REMOTE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$")


def clean_remote(value: str) -> str:
    """A git remote's name, such as origin: letters, digits, '.', '_', '-' and '/', not starting
    with '-' (it would read as an option)."""
    value = (value or "").strip()
    if not REMOTE_NAME.match(value) or ".." in value or value.endswith((".", "/", ".lock")):
        raise forms.ValidationError("Name a git remote of the repository, such as origin.")
    return value


PARALLEL_MESSAGE = "Give a whole number of runs, at least 1, or leave it empty for no limit but the number of workers."
PARALLEL_MAX = 1000  # far past any machine's workers; a bigger number is a typo

MODEL_HELP = "litellm model string: openai/gpt-4o-mini, anthropic/claude-sonnet-4-5, ollama_chat/qwen2.5-coder, openai/<name> for any OpenAI-compatible server."


class ModelFieldsMixin:
    """Cleaning shared by every form that names a model, its API base and its key variable (and
    a cost budget, where it has one)."""

    def clean_model(self):
        return clean_model(self.cleaned_data.get("model", ""))

    def clean_api_base(self):
        return clean_api_base(self.cleaned_data.get("api_base", ""))

    def clean_api_key_env(self):
        return clean_env_name(self.cleaned_data.get("api_key_env", ""))

    def clean_max_cost(self):
        value = self.cleaned_data.get("max_cost")
        if value is not None and value <= 0:
            raise forms.ValidationError("A cost budget must be more than $0; leave it empty for the default.")
        return value

    def clean_max_steps(self):
        return _at_least_one(self.cleaned_data.get("max_steps"), "A step budget")

    def clean_max_minutes(self):
        return _at_least_one(self.cleaned_data.get("max_minutes"), "A time budget")


def _at_least_one(value, what: str):
    if value is not None and value < 1:
        raise forms.ValidationError(f"{what} must be at least 1; leave it empty for the default.")
    return value


def _plan_needs_builtin(form: forms.BaseForm, mode: str | None, agent: Agent | None) -> None:
    if mode == Mode.PLAN and agent is not None and agent.kind != Agent.Kind.BUILTIN:
        form.add_error("mode", "Plan first needs the built-in agent: a command agent cannot be held to reading.")


class ProjectSettingsForm(ModelFieldsMixin, forms.ModelForm):
    """A project's settings: branches, worktree preparation, and the built-in agent's model,
    approvals, check command, budgets and MCP servers. The base branch must exist."""

    class Meta:
        model = Project
        fields = [
            "name", "base_branch", "branch_prefix", "copy_files", "setup_command",
            "model", "api_base", "api_key_env", "context_window", "approvals", "check_command",
            "max_steps", "max_cost", "max_minutes", "max_parallel", "mcp_servers", "sandbox_network",
            "land_mode", "delete_branch_on_land", "remote", "remote_url",
        ]
        labels = {
            "copy_files": "Files to copy", "setup_command": "Setup command", "api_base": "API base URL",
            "api_key_env": "API key environment variable", "context_window": "Context window (tokens)",
            "check_command": "Check command", "max_steps": "Step budget", "max_cost": "Cost budget (US $)",
            "max_minutes": "Time budget (minutes)", "max_parallel": "Parallel runs", "mcp_servers": "MCP servers",
            "sandbox_network": "Sandboxed commands may use the network",
            "land_mode": "Landing mode", "delete_branch_on_land": "Delete the branch after landing",
            "remote": "Remote for pull requests", "remote_url": "Shared remote (workers on other hosts)",
        }
        widgets = {
            "copy_files": forms.Textarea(attrs={"rows": 2}), "setup_command": forms.Textarea(attrs={"rows": 1}),
            "check_command": forms.Textarea(attrs={"rows": 1}), "mcp_servers": forms.Textarea(attrs={"rows": 3}),
        }
        help_texts = {"model": MODEL_HELP}
        error_messages = {"max_parallel": {"invalid": PARALLEL_MESSAGE, "min_value": PARALLEL_MESSAGE,
                                           "max_value": f"At most {PARALLEL_MAX} parallel runs, or leave it empty for no limit."}}

    def clean_name(self):
        name = printable(self.cleaned_data["name"])
        if not name:
            raise forms.ValidationError("Give the project a name.")
        return name

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Posts that predate the landing settings leave them as they are.
        self.fields["land_mode"].required = False
        self.fields["remote"].required = False
        self.fields["remote"].help_text += " Empty: origin."

    def clean_land_mode(self):
        return self.cleaned_data.get("land_mode") or self.instance.land_mode or LandMode.MERGE

    def clean_remote(self):
        return clean_remote(self.cleaned_data.get("remote", "") or "origin")

    def clean_remote_url(self):
        """Blank (single host), or a git URL or path that ``git ls-remote`` can read now, with the
        base branch on it, checked from this process (workers elsewhere need the same access)."""
        value = (self.cleaned_data.get("remote_url") or "").strip()
        if not value:
            return ""
        if value == self.instance.remote_url and self.data.get("base_branch", self.instance.base_branch) == self.instance.base_branch:
            # Unchanged: saving other settings needs no network, even while the remote is down.
            return value
        try:
            url = clones.normalise_url(value)
            branches = clones.check_remote(url)
        except worktrees.GitError as exc:
            raise forms.ValidationError(f"{exc} Give a URL or path git can read from here (such as "
                                        "ssh://git@host/team/repo.git or /srv/git/repo.git), or leave it empty.")
        base = (self.data.get("base_branch") or self.instance.base_branch or "").strip()
        if base and base not in branches:
            raise forms.ValidationError(f"The remote {url} has no branch {base}: push it there first.")
        return url

    def clean_max_parallel(self):
        value = self.cleaned_data.get("max_parallel")
        if value is not None and value < 1:
            raise forms.ValidationError(PARALLEL_MESSAGE)
        if value is not None and value > PARALLEL_MAX:
            raise forms.ValidationError(f"At most {PARALLEL_MAX} parallel runs, or leave it empty for no limit.")
        return value

    def save(self, commit: bool = True) -> Project:
        """Save the settings; a changed parallel limit lets held runs go at once where it leaves
        free slots (RunQuerySet.release_held), not only when a run ends."""
        project = super().save(commit)
        if commit and "max_parallel" in self.changed_data:
            Run.objects.release_held(project.pk)
        return project

    def clean_branch_prefix(self):
        prefix = self.cleaned_data["branch_prefix"].strip()
        if not prefix or worktrees.branch_name(prefix, 1, "x") != f"{prefix}/1-x":
            raise forms.ValidationError("Use letters, digits, '-', '_' and '/' only in the branch prefix.")
        return prefix

    def clean_base_branch(self):
        base = self.cleaned_data["base_branch"].strip()
        try:
            worktrees.resolve_base(self.instance.repo_path, base)
        except worktrees.GitError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return base

    def clean_context_window(self):
        value = self.cleaned_data.get("context_window")
        if value is not None and value < 1024:
            raise forms.ValidationError("A context window under 1,024 tokens cannot hold the agent's instructions.")
        return value

    def clean_setup_command(self):
        return clean_no_key(self.cleaned_data.get("setup_command", ""))

    def clean_check_command(self):
        return clean_no_key(self.cleaned_data.get("check_command", ""))

    def clean_mcp_servers(self):
        from agents.mcp_tools import parse_servers

        text = self.cleaned_data.get("mcp_servers", "")
        try:
            parse_servers(text)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return text

class CardSettingsForm(ModelFieldsMixin, forms.ModelForm):
    """A card's own settings, each overriding the project's when set; and the cards it waits for
    (Card.set_dependencies, which refuses a cycle or another project's card)."""

    waits_for = IdsField(
        queryset=Card.objects.none(), required=False, label="Waits for",
        help_text="Cards of this project that must land (or be marked done) before this one starts.",
        error_messages={"invalid_choice": "Card %(value)s is not a card of this project.",
                        "invalid_pk_value": "'%(pk)s' is not a card id."},
    )
    start_by_itself = forms.BooleanField(required=False, label="Start by itself when they have landed")
    labels = forms.CharField(required=False, max_length=400, label="Labels",
                             help_text="Comma-separated, such as bug, frontend.")

    class Meta:
        model = Card
        fields = ["mode", "model", "api_base", "api_key_env", "approvals", "max_steps", "max_cost", "max_minutes",
                  "land_mode"]
        labels = {
            "mode": "Mode", "land_mode": "Landing mode", "model": "Model override", "api_base": "API base URL",
            "api_key_env": "API key environment variable", "approvals": "Approvals",
            "max_steps": "Step budget", "max_cost": "Cost budget (US $)", "max_minutes": "Time budget (minutes)",
        }
        help_texts = {"max_steps": "Empty: the project's.", "max_cost": "Empty: the project's.",
                      "max_minutes": "Empty: the project's."}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        project = self.instance.project
        self.fields["approvals"].choices = [("", f"Project's ({project.get_approvals_display().lower()})"),
                                            *Approvals.choices]
        self.fields["model"].help_text = f"Empty: the project's ({project.model or 'none set'})."
        self.fields["land_mode"].choices = [("", f"Project's ({project.get_land_mode_display().lower()})"),
                                            *LandMode.choices]
        # Any card of the project but this one; a cycle is refused in clean_waits_for, by the domain.
        # Done cards are offered only where already chosen: waiting for one is waiting for nothing.
        current = list(self.instance.depends_on.values_list("pk", flat=True)) if self.instance.pk else []
        self.fields["waits_for"].queryset = (
            project.cards.exclude(pk=self.instance.pk).filter(~models.Q(column=Column.DONE) | models.Q(pk__in=current))
            .order_by("id")
        )
        self.fields["waits_for"].label_from_instance = lambda card: f"#{card.pk} {card.title}"
        if self.instance.pk and not self.is_bound:
            self.initial["waits_for"] = current
            self.initial["start_by_itself"] = self.instance.start_when_ready
            self.initial["labels"] = ", ".join(self.instance.labels or [])

    def clean_labels(self):
        return parse_labels(self.cleaned_data.get("labels", ""))

    def clean_waits_for(self):
        cards = list(self.cleaned_data["waits_for"])
        try:
            self.instance.check_dependencies(cards)
        except BoardError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return cards

    def clean(self):
        data = super().clean()
        if not data.get("model") and (data.get("api_base") or data.get("api_key_env")):
            self.add_error("model", "Name the model too: the card's API base and key variable go with its own model.")
        _plan_needs_builtin(self, data.get("mode"), self.instance.agent)
        return data

    def save(self, commit: bool = True) -> Card:
        """Save the settings and, with ``commit``, the cards this one waits for and its labels."""
        card = super().save(commit)
        if commit:
            card.set_dependencies(self.cleaned_data["waits_for"], self.cleaned_data["start_by_itself"])
            card.set_labels(self.cleaned_data["labels"])
        return card


class ModelTestForm(ModelFieldsMixin, forms.Form):
    """The model to try with one small real call (the models page's Test button)."""

    model = forms.CharField(max_length=200, error_messages={"required": "Name a model to test."}, help_text=MODEL_HELP)
    api_base = forms.CharField(max_length=500, required=False, label="API base URL")
    api_key_env = forms.CharField(max_length=100, required=False, label="API key environment variable")


class DecisionForm(forms.Form):
    """The lead's answer to a run waiting for them: approve or deny, with a text (the answer, the
    edited plan or the reason), and the kind of wait the page showed (so a stale page cannot
    approve something else)."""

    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("deny", "Deny")])
    text = forms.CharField(required=False, max_length=PROMPT_LIMIT, strip=True)
    kind = forms.ChoiceField(choices=[("approval", "approval"), ("question", "question"), ("plan", "plan")],
                             required=False)


class LandForm(forms.Form):
    """How to land a card this time; empty: the card's landing mode, else the project's."""

    mode = forms.ChoiceField(
        choices=[("", "the card's"), *LandMode.choices], required=False,
        error_messages={"invalid_choice": "Choose merge, squash or rebase as the landing mode."},
    )


class FollowUpForm(forms.Form):
    """Feedback that sends a card in Review back to its agent."""

    text = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}), max_length=PROMPT_LIMIT, label="Follow-up",
        error_messages={"required": "Write what the agent should do next."},
    )


COMMENT_LIMIT = 10_000  # characters of one comment on a diff line


class DiffCommentForm(forms.Form):
    """The lead's comment on one line of a card's diff: ``path`` as the diff names it, ``line``
    from 1 on ``side`` ("old" or "new"), ``commit`` (empty for the whole branch's diff, else the
    checkpoint's sha) and the ``text``. Whether the line is in the diff is checked against git by
    the view (board.review.find_line)."""

    path = forms.CharField(max_length=4096, strip=False, error_messages={"required": "Which file? The path is missing."})
    line = forms.IntegerField(min_value=1, max_value=100_000_000,
                              error_messages={"required": "Which line? The line number is missing.",
                                              "invalid": "The line number must be a whole number from 1."})
    side = forms.ChoiceField(choices=[("old", "old"), ("new", "new")],
                             error_messages={"required": "Which side? Old or new.",
                                             "invalid_choice": "The side must be old or new."})
    commit = forms.RegexField(regex=r"^[0-9a-fA-F]{4,64}$", required=False, max_length=64,
                              error_messages={"invalid": "The commit must be a commit id (hexadecimal)."})
    text = forms.CharField(max_length=COMMENT_LIMIT, widget=forms.Textarea(attrs={"rows": 3}),
                           error_messages={"required": "Write a comment."})

    def clean_commit(self) -> str:
        return self.cleaned_data["commit"].lower()

    def clean_path(self) -> str:
        path = self.cleaned_data["path"]
        if "\x00" in path:
            raise forms.ValidationError("That path is not in the diff.")
        return path


class SendCommentsForm(forms.Form):
    """Sending the card's comments back to its agent, with an optional general ``message``."""

    message = forms.CharField(required=False, max_length=PROMPT_LIMIT, widget=forms.Textarea(attrs={"rows": 2}))


class AgentForm(ModelFieldsMixin, forms.ModelForm):
    """Add an agent: a command line (``kind=command``) or the built-in loop on a litellm model
    (``kind=builtin``)."""

    class Meta:
        model = Agent
        fields = ["name", "kind", "command", "model", "api_base", "api_key_env"]
        labels = {"api_key_env": "API key environment variable", "api_base": "API base URL"}
        widgets = {"command": forms.Textarea(attrs={"rows": 2})}
        error_messages = {"name": {"unique": "An agent with this name already exists."}}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["kind"].choices = Agent.Kind.choices  # no empty "---------" choice

    def clean_name(self):
        name = printable(self.cleaned_data["name"])
        if not name:
            raise forms.ValidationError("Give the agent a name.")
        return name

    def clean_command(self):
        return clean_no_key(self.cleaned_data.get("command", ""))

    def clean(self):
        data = super().clean()
        kind = data.get("kind")
        if kind == Agent.Kind.COMMAND and not (data.get("command") or "").strip():
            self.add_error("command", "A command agent needs a command line.")
        return data


class WaitsForWidget(forms.SelectMultiple):
    """A multi-select of cards that renders only the options already chosen (a form sent back
    with errors); the rest load when the lead first focuses or points at it (views.card_waitable,
    through the hx-get its form sets), so a board of 1,000 cards does not render 1,000 options on
    every page load."""

    def optgroups(self, name, value, attrs=None):
        if not [v for v in value if v]:
            return []  # nothing chosen: no need to read the project's cards here at all
        groups = super().optgroups(name, value, attrs)
        return [(group, [o for o in options if o["selected"]], index) for group, options, index in groups
                if any(o["selected"] for o in options)]


class CardForm(forms.Form):
    """Create a card: a title, the prompt for the agent and an enabled agent; optionally labels and,
    given the ``project``, the cards of it that have not landed that the new card waits for
    (``waits_for``, Cards) and whether it then starts by itself (``start_when_ready``). Without a
    project (the shell, the API) no card may be chosen."""

    title = forms.CharField(max_length=300, error_messages={"required": "Give the card a title."})
    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        label="Description (prompt)",
        max_length=PROMPT_LIMIT,
        error_messages={"max_length": f"Keep the description under {PROMPT_LIMIT:,} characters; point the agent at files for the rest."},
    )
    agent = forms.ModelChoiceField(
        queryset=Agent.objects.filter(enabled=True),
        empty_label=None,
        to_field_name="name",
        error_messages={"invalid_choice": "Choose one of the enabled agents (see the Agents page)."},
    )
    mode = forms.ChoiceField(choices=Mode.choices, initial=Mode.ACT, required=False,
                             help_text="Plan first: the built-in agent only reads, and you approve its plan.")
    labels = forms.CharField(required=False, max_length=400, help_text="Comma-separated, such as bug, frontend.")
    waits_for = IdsField(
        queryset=Card.objects.none(), required=False, label="Waits for", widget=WaitsForWidget(attrs={"size": 4}),
        help_text="Cards of this project that must land (or be marked done) before this one starts.",
        error_messages={"invalid_choice": "Card %(value)s is not a card of this project that is still to land.",
                        "invalid_pk_value": "'%(pk)s' is not a card id."},
    )
    start_when_ready = forms.BooleanField(required=False, label="Start by itself when they have landed")

    def __init__(self, *args, project: Project | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["waits_for"].label_from_instance = lambda card: f"#{card.pk} {card.title}"
        if project is not None:
            from django.urls import reverse

            self.fields["waits_for"].queryset = project.cards.exclude(column=Column.DONE).order_by("id")
            self.fields["waits_for"].widget.attrs.update({
                "hx-get": reverse("card_waitable", args=[project.pk]), "hx-trigger": "focus once, mouseenter once",
                "hx-swap": "innerHTML",
            })

    def clean_labels(self):
        return parse_labels(self.cleaned_data.get("labels", ""))

    def clean_title(self):
        title = printable(self.cleaned_data["title"])
        if not title:
            raise forms.ValidationError("Give the card a title.")
        return title

    def clean(self):
        data = super().clean()
        _plan_needs_builtin(self, data.get("mode"), data.get("agent"))
        return data


class VariantsForm(forms.Form):
    """Start a card on several agents or models at once (issue 7): the enabled agents ticked (by
    id) and, for the built-in agents ticked, litellm model strings, one a line. ``choices`` in
    ``cleaned_data``: the ``(agent, model)`` pairs for Card.start_variants, a command agent with
    model "", a built-in one once per model string (or once with "": the model the card would use)."""

    MAX_MODELS = 8  # model strings at most (Card.MAX_VARIANTS caps the cards in all)

    agents = IdsField(
        queryset=Agent.objects.filter(enabled=True), widget=forms.CheckboxSelectMultiple, required=False,
        error_messages={"invalid_choice": "Choose enabled agents only; %(value)s is not one (see the Agents page).",
                        "invalid_pk_value": "'%(pk)s' is not an agent id."},
    )
    models = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "openai/gpt-4o-mini\nollama_chat/qwen2.5-coder"}),
        required=False, max_length=4000, label="Models for the built-in agent",
        help_text="One litellm model string a line; each runs as its own card, on the endpoint the card uses.",
    )

    def clean_models(self):
        lines = [line.strip() for line in self.cleaned_data["models"].splitlines() if line.strip()]
        for line in lines:
            if len(line) > 200 or printable(line) != line or " " in line:
                raise forms.ValidationError(f"'{printable(line)[:80]}' is not a model string (one per line, no spaces).")
        if len(lines) > self.MAX_MODELS:
            raise forms.ValidationError(f"At most {self.MAX_MODELS} model strings at once.")
        return list(dict.fromkeys(lines))

    def clean(self):
        data = super().clean()
        agents, models = data.get("agents"), data.get("models")
        if agents is None or models is None:
            return data
        if not agents:
            raise forms.ValidationError("Tick at least two agents, or the built-in agent and two models.")
        # In the order they were sent (the page lists them by name): the card itself takes the first.
        sent = [str(value) for value in (self.data.getlist("agents") if hasattr(self.data, "getlist") else [])]
        agents = sorted(agents, key=lambda agent: sent.index(str(agent.pk)) if str(agent.pk) in sent else len(sent))
        builtins = [agent for agent in agents if agent.kind == Agent.Kind.BUILTIN]
        if models and not builtins:
            raise forms.ValidationError("Model strings are for the built-in agent: tick one, or clear the models.")
        choices = []
        for agent in agents:
            if agent.kind == Agent.Kind.BUILTIN and models:
                choices += [(agent, model) for model in models]
            else:
                choices.append((agent, ""))
        if len(choices) < 2:
            raise forms.ValidationError("Tick at least two agents, or the built-in agent and two models.")
        if len(choices) > Card.MAX_VARIANTS:
            raise forms.ValidationError(f"At most {Card.MAX_VARIANTS} agents or models at once; {len(choices)} were chosen.")
        data["choices"] = choices
        return data


MAX_LABELS = 10
MAX_LABEL_CHARS = 30


def parse_labels(text: str) -> list[str]:
    """Comma-separated labels as a list: each trimmed, lower-cased, inner spaces made dashes (the
    board filters on space-separated labels), empty ones and repeats dropped. Raises
    ValidationError for more than MAX_LABELS or a label longer than MAX_LABEL_CHARS."""
    labels: list[str] = []
    for part in printable(text or "").split(","):
        label = "-".join(part.lower().split())
        if label and label not in labels:
            labels.append(label)
    if len(labels) > MAX_LABELS:
        raise forms.ValidationError(f"At most {MAX_LABELS} labels, please.")
    long = [label for label in labels if len(label) > MAX_LABEL_CHARS]
    if long:
        raise forms.ValidationError(f"Keep each label under {MAX_LABEL_CHARS} characters: {long[0][:40]}… is longer.")
    return labels


class MemberForm(forms.Form):
    """Add a person to a project (the Members page, ``manage.py member add``): an existing
    account's username and a role."""

    username = forms.CharField(max_length=150, help_text="An account made with manage.py createsuperuser or the admin.")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.MEMBER)

    def clean_username(self):
        from django.contrib.auth import get_user_model

        name = self.cleaned_data["username"].strip()
        user = get_user_model().objects.filter(username=name).first()
        if user is None:
            raise forms.ValidationError(f"No account named '{name}'. Make it first: manage.py createsuperuser, or ask the board's administrator.")
        self.cleaned_data["user"] = user
        return name


class RoleForm(forms.Form):
    """Change a member's role, or remove them (``remove`` set)."""

    role = forms.ChoiceField(choices=Role.choices, required=False)
    remove = forms.BooleanField(required=False)

    def clean(self):
        data = super().clean()
        if not data.get("remove") and not data.get("role"):
            raise forms.ValidationError("Choose a role, or remove the member.")
        return data


WEBHOOK_URL_MESSAGE = "Give an http:// or https:// URL, such as https://hooks.slack.com/services/… or http://ci.local:8080/hook."


def clean_webhook_url(value: str) -> str:
    """A URL the board may POST to: an http(s) URL (http_url) of at most 2,000 characters."""
    value = (value or "").strip()
    if len(value) > 2000:
        raise forms.ValidationError(WEBHOOK_URL_MESSAGE)
    return http_url(value, WEBHOOK_URL_MESSAGE)


class WebhookForm(forms.Form):
    """Add a webhook to a project (its settings page, ``manage.py project webhook add``): the URL,
    the card events it hears about (none ticked: all of them) and whether to send Slack's form.
    A plain form, not a ModelForm: the model's URLField would refuse one-label intranet hosts
    (http://ci:8080/hook) that clean_webhook_url accepts."""

    url = forms.CharField(max_length=2000, label="URL", help_text="The board POSTs JSON here.")
    events = forms.MultipleChoiceField(
        choices=WebhookEvent.choices, required=False, widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every event.",
        error_messages={"invalid_choice": "Choose events among: " + ", ".join(WebhookEvent.values) + "."},
    )
    slack = forms.BooleanField(
        required=False, label="Slack form",
        help_text="Send {\"text\": one line with a link}, as Slack's and Mattermost's incoming webhooks take.",
    )

    def clean_url(self):
        return clean_webhook_url(self.cleaned_data["url"])

    def clean_events(self):
        return [value for value in WebhookEvent.values if value in self.cleaned_data["events"]]

    def save(self, project: Project) -> Webhook:
        """The new, enabled Webhook of ``project``."""
        data = self.cleaned_data
        return Webhook.objects.create(project=project, url=data["url"], events=data["events"], slack=data["slack"])
