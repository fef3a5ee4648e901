"""The bubblewrap sandbox around agents' commands (agents/sandbox.py), on real throwaway
repositories. bwrap must be installed (./run-tests installs it): these tests fail, not skip,
without it."""

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from django.urls import reverse

from agents import runner, sandbox
from agents.tools import run_shell
from board.models import Card, Run, RunState
from tests.conftest import execute_in_thread, git, processes_named

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def bwrap_works():
    """Every test here needs a working bwrap: a clear failure, never a skip, when it is missing."""
    path = sandbox.find_bwrap()
    assert path, "bwrap (bubblewrap) is not installed; ./run-tests installs it with apt-get"
    assert sandbox.probe(path) == "", sandbox.probe(path)


@pytest.fixture
def sandbox_on(settings):
    settings.BOARD_SANDBOX = "on"
    return settings


def start_and_run(card: Card) -> Run:
    run = card.start()
    runner.execute(run.pk)
    run.refresh_from_db()
    card.refresh_from_db()
    return run


@pytest.fixture
def listener():
    """A TCP server on 127.0.0.1 of the host (as Redis would be) that answers "hello" to every
    connection; yields its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    done = threading.Event()

    def serve():
        while not done.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"hello\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    done.set()
    thread.join(2)
    server.close()


def path_without_bwrap(tmp_path) -> str:
    """A PATH folder holding every program of /usr/bin and /bin but bwrap."""
    folder = tmp_path / "bin-without-bwrap"
    folder.mkdir()
    for source in ("/usr/bin", "/bin"):
        for name in os.listdir(source):
            if name != "bwrap" and not (folder / name).exists():
                (folder / name).symlink_to(os.path.join(source, name))
    return str(folder)


def test_the_prefix_makes_everything_read_only_but_the_worktree_with_a_private_tmp_and_no_network():
    prefix = sandbox.bwrap_prefix("/usr/bin/bwrap", "/w/tree", writable=("/r/.git/objects",))
    text = " ".join(prefix)
    assert text.startswith("/usr/bin/bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp")
    # Binds after the private /tmp, so a worktree under /tmp is not hidden by it.
    assert "--bind /w/tree /w/tree --bind /r/.git/objects /r/.git/objects --unshare-all" in text
    assert "--die-with-parent" in prefix and "--new-session" in prefix and "--share-net" not in prefix
    assert prefix[-2:] == ("--chdir", "/w/tree")
    assert "--share-net" in sandbox.bwrap_prefix("/usr/bin/bwrap", "/w/tree", network=True)
    hidden = " ".join(sandbox.bwrap_prefix("/usr/bin/bwrap", "/usr/w", hidden=("/usr", "/etc/hostname", "/no/such")))
    assert "--tmpfs /tmp --tmpfs /usr --ro-bind /dev/null /etc/hostname --bind /usr/w /usr/w" in hidden
    assert "/no/such" not in hidden


def test_auto_sandboxes_only_a_team_server_and_off_never(tmp_path):
    assert not sandbox.decide("auto", False, str(tmp_path), False).sandboxed
    assert not sandbox.decide("off", True, str(tmp_path), False).sandboxed
    decision = sandbox.decide("auto", True, str(tmp_path), False)
    assert decision.sandboxed and "no network" in decision.note
    with pytest.raises(ValueError):
        sandbox.decide("sometimes", True, str(tmp_path), False)


def test_on_without_bwrap_raises_and_auto_runs_unsandboxed_saying_why(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", path_without_bwrap(tmp_path))
    with pytest.raises(sandbox.SandboxError, match="not installed"):
        sandbox.decide("on", False, str(tmp_path), False)
    decision = sandbox.decide("auto", True, str(tmp_path), False)
    assert not decision.sandboxed and "bwrap (bubblewrap) is not installed" in decision.note


def test_a_bwrap_that_cannot_make_namespaces_is_unusable_with_its_own_reason(tmp_path, monkeypatch):
    folder = tmp_path / "fake-bin"
    folder.mkdir()
    fake = folder / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    with pytest.raises(sandbox.SandboxError, match="No permissions to creating new namespace"):
        sandbox.decide("on", False, str(tmp_path), False)
    assert "does not work here" in sandbox.decide("auto", True, str(tmp_path), False).note


def test_a_sandboxed_command_agent_writes_and_commits_in_its_worktree_only(sandbox_on, make_card, project):
    repo = Path(project.repo_path)
    home_file = Path.home() / f"board-sandbox-test-{os.getpid()}"
    card = make_card(
        "echo inside > made.txt && git add made.txt && git commit -q -m 'Agent: inside the sandbox'; "
        f"echo changed > {repo}/README.md; echo home > {home_file}; touch /tmp/private-tmp-file; "
        f"ls {repo}/README.md /tmp/private-tmp-file; echo done"
    )
    try:
        run = start_and_run(card)
        assert run.state == RunState.SUCCEEDED, run.error
        assert run.sandboxed is True
        assert git(repo, "show", f"{card.branch}:made.txt") == "inside\n"
        assert "Agent: inside the sandbox" in git(repo, "log", "--format=%s", card.branch)
        # The user's checkout and $HOME are unchanged; /tmp was the sandbox's own.
        assert (repo / "README.md").read_text() == "# Demo\n"
        assert not home_file.exists()
        assert not Path("/tmp/private-tmp-file").exists()
        assert run.events.filter(text__startswith="Sandboxed with bubblewrap").exists()
    finally:
        home_file.unlink(missing_ok=True)


def test_the_sandbox_cannot_change_the_repository_s_hooks_or_config(sandbox_on, make_card, project):
    repo = Path(project.repo_path)
    card = make_card(f"echo 'echo planted' > {repo}/.git/hooks/post-commit; git config core.planted yes; true")
    run = start_and_run(card)
    assert run.state == RunState.SUCCEEDED, run.error
    assert not (repo / ".git" / "hooks" / "post-commit").exists()
    assert "planted" not in (repo / ".git" / "config").read_text()


def test_a_sandboxed_command_reaches_the_network_only_when_the_project_allows_it(sandbox_on, make_card, project, listener):
    command = f"if read -r line < /dev/tcp/127.0.0.1/{listener}; then echo \"reached: $line\"; else echo unreachable; fi"
    run = start_and_run(make_card(command))
    assert run.state == RunState.SUCCEEDED, run.error
    assert run.summary.startswith("unreachable")
    assert run.sandbox_label == "sandboxed"

    project.sandbox_network = True
    project.save()
    run = start_and_run(make_card(command, title="With the network"))
    assert run.state == RunState.SUCCEEDED, run.error
    assert run.summary.startswith("reached: hello")
    assert run.sandbox_label == "sandboxed, network allowed"


def test_the_setup_command_runs_in_the_sandbox_too(sandbox_on, make_card, project, tmp_path):
    outside = tmp_path / "setup-was-here"
    project.setup_command = f"touch {outside}; touch inside-setup"
    project.save()
    card = make_card("test -f inside-setup && echo setup ran inside")
    run = start_and_run(card)
    assert run.state == RunState.SUCCEEDED, run.error
    assert not outside.exists()


def test_the_card_page_says_whether_the_run_was_sandboxed(client, sandbox_on, make_card, project, settings):
    run = start_and_run(make_card("echo hi"))
    page = client.get(reverse("card_detail", args=[run.card_id])).content.decode()
    assert '<dt>Sandbox</dt><dd class="sandbox">sandboxed</dd>' in page
    settings.BOARD_SANDBOX = "off"
    card = make_card("echo hi", title="Unsandboxed")
    run = start_and_run(card)
    assert run.sandboxed is False
    page = client.get(reverse("card_detail", args=[card.pk])).content.decode()
    assert '<dt>Sandbox</dt><dd class="sandbox">not sandboxed</dd>' in page
    assert "<td>not sandboxed</td>" in page


def test_on_without_bwrap_fails_the_run_with_a_clear_reason(sandbox_on, make_card, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", path_without_bwrap(tmp_path))
    ran = tmp_path / "agent-ran"
    run = start_and_run(make_card(f"touch {ran}"))
    assert run.state == RunState.FAILED
    assert "BOARD_SANDBOX is on but the sandbox cannot be used" in run.error and "not installed" in run.error
    assert not ran.exists()


def test_the_project_settings_form_has_the_network_switch(client, project):
    page = client.get(reverse("project_settings", args=[project.pk])).content.decode()
    assert 'name="sandbox_network"' in page


def test_the_builtin_agent_s_commands_run_in_the_sandbox(make_card, project, tmp_path):
    worktree = tmp_path / "wt"
    git(project.repo_path, "worktree", "add", "-q", "-b", "agent/x", str(worktree))
    home_file = Path.home() / f"board-sandbox-test-{os.getpid()}"
    prefix = sandbox.decide("on", False, str(worktree), False).prefix
    try:
        code, output = run_shell(worktree, f"touch inside.txt && touch {home_file}", sandbox=prefix)
        assert code != 0 and "Read-only file system" in output
        assert (worktree / "inside.txt").exists() and not home_file.exists()
    finally:
        home_file.unlink(missing_ok=True)


@pytest.mark.django_db(transaction=True)
def test_stop_kills_a_sandboxed_command_s_whole_tree(sandbox_on, make_card):
    marker = f"sandboxed-sleep-{os.getpid()}-{time.monotonic_ns()}"
    card = make_card(
        f"bash -c 'exec -a {marker} sleep 300' & bash -c 'exec -a {marker} sleep 300' & "
        f"(setsid bash -c 'exec -a {marker} sleep 300' &); echo started; wait"
    )
    run = card.start()
    thread = execute_in_thread(run.pk)
    deadline = time.monotonic() + 30

    def sleeping():
        return [p for p in processes_named(marker) if p.name() == "sleep"]

    while len(sleeping()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(sleeping()) == 3
    card.stop()
    thread.join(30)
    run.refresh_from_db()
    assert run.state == RunState.STOPPED and run.sandboxed is True
    time.sleep(0.5)
    assert processes_named(marker) == [], "bwrap, the shell and every sleep, the one in its own session too"


def test_the_board_s_data_folder_is_hidden_but_the_run_s_worktree_and_prompt_are_there(sandbox_on, make_card, project):
    import shutil
    import tempfile

    # Outside /tmp, which the sandbox replaces anyway, as a real data folder is.
    data = Path(tempfile.mkdtemp(prefix="board-data-", dir="/var/tmp"))
    try:
        sandbox_on.DATA_DIR, sandbox_on.WORKTREES_DIR, sandbox_on.RUNS_DIR = data, data / "worktrees", data / "runs"
        (data / "secret_key").write_text("generated-secret-key\n")
        (data / "board.sqlite3").write_text("database pages\n")
        card = make_card(f'cat {data}/secret_key {data}/board.sqlite3; ls {data}; head -1 "$CARD_PROMPT_FILE"; '
                         "echo in the worktree > made.txt")
        run = start_and_run(card)
        assert run.state == RunState.SUCCEEDED, run.error
        log = "\n".join(run.events.values_list("text", flat=True))
        assert "generated-secret-key" not in log and "database pages" not in log
        assert "No such file or directory" in log and "# Do the thing" in log
        assert card.worktree_path.startswith(str(data))
        assert git(project.repo_path, "show", f"{card.branch}:made.txt") == "in the worktree\n"
    finally:
        shutil.rmtree(data, ignore_errors=True)
