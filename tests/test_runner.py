"""The runner end to end, on real throwaway repositories: a card's run from queued to its end."""

import os
import shutil
import time
from pathlib import Path

import pytest

from agents import runner, worktrees
from board.models import LOG_CHUNK_CHARS, Card, Column, Event, Run, RunState
from tests.conftest import execute_in_thread, free_port, git

pytestmark = pytest.mark.django_db


def start_and_run(card: Card) -> Run:
    run = card.start()
    runner.execute(run.pk)
    run.refresh_from_db()
    card.refresh_from_db()
    return run


def test_start_queues_a_run_and_moves_the_card_to_in_progress(make_card, django_capture_on_commit_callbacks):
    card = make_card()
    with django_capture_on_commit_callbacks() as callbacks:
        run = card.start()
    card.refresh_from_db()
    assert run.state == RunState.QUEUED
    assert card.column == Column.IN_PROGRESS
    assert card.current_run == run
    assert len(callbacks) == 1, "the task is enqueued once, after the transaction commits"
    assert list(run.events.filter(seq__gt=0).values_list("seq", "kind", "text")) == [(1, "state", "queued")]


def test_a_command_agent_edit_is_committed_on_the_card_branch(make_card, project):
    repo = project.repo_path
    head_before = git(repo, "rev-parse", "HEAD")
    card = make_card('printf "%s|%s\\n" "$CARD_TITLE" "$(cat "$CARD_PROMPT_FILE" | tail -1)" > out.txt; echo made the edit')
    run = start_and_run(card)
    assert run.state == RunState.SUCCEEDED, run.error
    assert card.column == Column.REVIEW
    assert card.branch == f"agent/{card.pk}-do-the-thing"
    assert run.base_commit == head_before.strip()
    assert "made the edit" in run.summary and "1 file changed" in run.summary
    assert git(repo, "show", f"{card.branch}:out.txt") == "Do the thing|Please do it\n"
    assert run.commits == git(repo, "rev-list", "--reverse", f"main..{card.branch}").split()
    # The board's identity and trailers, not the machine's git config.
    log = git(repo, "log", "-1", "--format=%an <%ae>%n%B", card.branch)
    assert "Agent Board <agent-board@localhost>" in log and f"Card: #{card.pk}" in log
    # The user's own checkout is untouched and the worktree lives outside it.
    assert git(repo, "rev-parse", "HEAD") == head_before
    assert git(repo, "status", "--porcelain") == ""
    assert not card.worktree_path.startswith(repo)


def test_commits_the_agent_made_itself_are_kept_as_they_are(make_card, project):
    card = make_card("echo one > a.txt && git add a.txt && git commit -q -m 'Agent: add a' && echo two > b.txt")
    run = start_and_run(card)
    assert run.state == RunState.SUCCEEDED, run.error
    subjects = git(project.repo_path, "log", "--format=%s", f"main..{card.branch}").split("\n")
    assert subjects[1] == "Agent: add a"
    assert subjects[0] == f"Card #{card.pk}: Do the thing"
    assert len(run.commits) == 2


def test_a_failing_command_fails_the_run_with_its_reason_and_stays_in_progress(make_card):
    card = make_card("echo partial > p.txt; echo 'compilation failed' >&2; exit 2")
    run = start_and_run(card)
    assert run.state == RunState.FAILED
    assert "status 2" in run.error and "compilation failed" in run.error
    assert card.column == Column.IN_PROGRESS
    assert len(run.commits) == 1, "the failed run's work is kept on its branch"


def test_output_lines_become_numbered_events(make_card):
    card = make_card("echo first; echo second")
    run = start_and_run(card)
    events = list(run.events.filter(seq__gt=0).order_by("seq"))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    logged = "\n".join(e.text for e in events if e.kind == "log")
    assert logged == "first\nsecond"
    assert [e.text for e in events if e.kind == "state"] == ["queued", "running", "succeeded"]


def test_a_vanished_project_path_fails_the_run(make_card, project):
    card = make_card()
    shutil.rmtree(project.repo_path)
    run = start_and_run(card)
    assert run.state == RunState.FAILED
    assert "no longer exists" in run.error


def test_a_missing_base_branch_fails_the_run_with_the_git_reason(make_card, project):
    project.base_branch = "no-such-branch"
    project.save()
    run = start_and_run(make_card())
    assert run.state == RunState.FAILED
    assert "no-such-branch" in run.error


def test_an_internal_error_still_ends_the_run(make_card, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(worktrees, "ensure_worktree", explode)
    run = start_and_run(make_card())
    assert run.state == RunState.FAILED
    assert "boom" in run.error


def test_a_redelivered_task_does_not_run_the_agent_twice(make_card, project, tmp_path):
    counter = tmp_path / "count"
    card = make_card(f"echo x >> {counter}")
    run = card.start()
    assert runner.execute(run.pk) == RunState.SUCCEEDED
    assert runner.execute(run.pk) is None
    assert counter.read_text() == "x\n"


def test_a_run_not_taken_is_logged_at_debug_level_only(make_card, caplog):
    run = make_card("echo once").start()
    runner.execute(run.pk)
    with caplog.at_level("DEBUG", logger=runner.log.name):
        assert runner.execute(run.pk) is None
    taken = [r for r in caplog.records if "not taken" in r.getMessage()]
    assert [r.levelname for r in taken] == ["DEBUG"], "normal with several workers: not a warning, not even info"


def test_a_second_start_reuses_the_card_worktree_and_branch(make_card, project):
    card = make_card("echo again >> notes.txt")
    first = start_and_run(card)
    second = start_and_run(card)
    assert second.state == RunState.SUCCEEDED, second.error
    assert git(project.repo_path, "show", f"{card.branch}:notes.txt") == "again\nagain\n"
    assert second.base_commit == first.base_commit
    assert len(second.commits) == 2


def test_starting_a_running_card_is_refused(make_card):
    from board.models import BoardError

    card = make_card()
    card.start()
    with pytest.raises(BoardError, match="already running"):
        card.start()


def test_an_orphaned_run_is_interrupted_its_processes_ended_and_its_work_committed(make_card, project):
    import subprocess

    card = make_card("echo first > first.txt")
    start_and_run(card)
    run = card.start()
    # As if a worker had claimed it, made changes and died, leaving its agent running.
    Run.objects.filter(pk=run.pk).update(state=RunState.RUNNING, worker_host="h", worker_pid=1)
    Path(card.worktree_path, "half-done.txt").write_text("work in progress\n")
    orphan = subprocess.Popen(["sleep", "300"], env={**os.environ, "BOARD_RUN_MARK": runner.run_mark(run.pk)}, start_new_session=True)
    try:
        assert runner.interrupt_orphans(lambda host, pid: False, reason="its worker process died") == 1
        assert orphan.wait(timeout=10) is not None
    finally:
        orphan.kill()
    run.refresh_from_db()
    assert run.state == RunState.INTERRUPTED
    assert run.error == "Its worker process died. Its work so far is kept."
    assert Event.objects.filter(run=run, kind="state", text="interrupted").exists()
    assert git(project.repo_path, "show", f"{card.branch}:half-done.txt") == "work in progress\n"
    assert "Recovery checkpoint" in git(project.repo_path, "log", "-1", "--format=%s", card.branch)
    assert len(run.commits) == 2


def test_an_orphaned_run_with_nothing_uncommitted_still_lists_the_branch_s_commits(make_card, project):
    card = make_card("echo first > first.txt")
    start_and_run(card)
    run = card.start()
    Run.objects.filter(pk=run.pk).update(state=RunState.RUNNING, worker_host="h", worker_pid=1)
    assert runner.interrupt_orphans(lambda host, pid: False, reason="its worker process died") == 1
    run.refresh_from_db()
    assert run.state == RunState.INTERRUPTED
    branch = git(project.repo_path, "rev-list", "--reverse", f"main..{card.branch}").split()
    assert run.commits == branch and len(branch) == 1, "what `card show --json` lists is the branch's work"


# The built-in agent, through litellm's real HTTP path to a scripted local server.

from tests.fake_llm import EDIT_THEN_FINISH, FakeLLM  # noqa: E402


def builtin_card(make_card, api_base: str) -> Card:
    return make_card(kind="builtin", command="", model="openai/fake-model", api_base=api_base, api_key_env="FAKE_LLM_KEY")


@pytest.fixture
def model_key(monkeypatch):
    monkeypatch.setenv("FAKE_LLM_KEY", "sk-test")


def test_the_builtin_agent_edit_is_a_checkpoint_commit_on_the_card_branch(make_card, project, model_key):
    with FakeLLM(EDIT_THEN_FINISH, api_key="sk-test") as llm:
        card = builtin_card(make_card, llm.base_url)
        run = start_and_run(card)
    assert run.state == RunState.SUCCEEDED, run.error
    assert card.column == Column.REVIEW
    assert run.summary.startswith("Added AGENT_NOTE.md")
    assert "Written by the fake model." in git(project.repo_path, "show", f"{card.branch}:AGENT_NOTE.md")
    assert git(project.repo_path, "log", "--format=%s", f"main..{card.branch}").strip() == "Step 1: write_file AGENT_NOTE.md"
    trailers = git(project.repo_path, "log", "-1", "--format=%(trailers:only,unfold)", card.branch).split("\n")
    assert [t for t in trailers if t] == [f"Card: #{card.pk}", f"Run: {run.pk}", "Step: 1"]
    assert run.agent_state["done"] is True, "the conversation is stored with the run"
    assert run.events.filter(kind="step", text__contains="write_file").exists()


def test_a_model_endpoint_that_refuses_the_connection_fails_the_run(make_card, model_key, settings):
    settings.BOARD_MODEL_RETRIES = 0
    run = start_and_run(builtin_card(make_card, f"http://127.0.0.1:{free_port()}/v1"))
    assert run.state == RunState.FAILED
    assert "could not connect" in run.error and "connection refused" in run.error


def test_a_model_call_that_times_out_fails_the_run(make_card, model_key, settings):
    settings.BOARD_MODEL_TIMEOUT = 1
    with FakeLLM([{"delay": 4, "content": "too late"}]) as llm:
        run = start_and_run(builtin_card(make_card, llm.base_url))
    assert run.state == RunState.FAILED
    assert "timed out" in run.error


def test_a_branch_and_folder_left_by_someone_else_are_avoided_with_a_new_name(make_card, project, settings):
    card = make_card("echo mine > mine.txt")
    taken_branch = f"agent/{card.pk}-do-the-thing"
    git(project.repo_path, "branch", taken_branch)  # made by hand, not the card's
    (settings.WORKTREES_DIR / str(project.pk) / f"{card.pk}-do-the-thing-2").mkdir(parents=True)
    run = start_and_run(card)
    assert run.state == RunState.SUCCEEDED, run.error
    assert card.branch == f"{taken_branch}-3"
    assert card.worktree_path.endswith(f"{card.pk}-do-the-thing-3")
    assert git(project.repo_path, "rev-list", "--count", f"main..{taken_branch}").strip() == "0", "left alone"


def test_listed_ignored_files_are_copied_and_the_setup_command_runs_in_the_new_worktree(make_card, project):
    repo = project.repo_path
    (Path(repo) / ".gitignore").write_text(".env\nconfig/local.py\nbuild/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "Ignore local files")
    (Path(repo) / ".env").write_text("TOKEN=abc\n")
    (Path(repo) / "config").mkdir()
    (Path(repo) / "config" / "local.py").write_text("DEBUG = True\n")
    (Path(repo) / "build").mkdir()
    (Path(repo) / "build" / "big.bin").write_text("not listed\n")
    project.copy_files = ".env\nconfig/local.py\n"
    project.setup_command = "echo setting up; cat .env > setup-saw.txt"
    project.save()
    card = make_card("test -f .env && test -f config/local.py && ! test -e build/big.bin && echo agent ok")
    run = start_and_run(card)
    assert run.state == RunState.SUCCEEDED, run.error
    worktree = Path(card.worktree_path)
    assert (worktree / "setup-saw.txt").read_text() == "TOKEN=abc\n"
    logged = "\n".join(run.events.values_list("text", flat=True))
    assert "Copied 2 ignored file(s): .env, config/local.py" in logged and "setting up" in logged
    # Copied files stay ignored: they never reach the card's commits.
    assert ".env" not in git(repo, "show", "--name-only", "--format=", card.branch)


def test_a_failing_setup_command_fails_the_run_with_its_output(make_card, project):
    project.setup_command = "echo 'npm ERR! missing package.json' >&2; exit 1"
    project.save()
    card = make_card("echo should not run > ran.txt")
    run = start_and_run(card)
    assert run.state == RunState.FAILED
    assert "setup command failed" in run.error and "npm ERR! missing package.json" in run.error
    assert not (Path(card.worktree_path) / "ran.txt").exists()


def test_submodules_are_initialised_in_the_worktree(make_card, project, make_repo):
    library = make_repo("library")
    git(project.repo_path, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(library), "lib")
    git(project.repo_path, "commit", "-q", "-m", "Add the library")
    card = make_card("cat lib/README.md")
    run = start_and_run(card)
    assert run.state == RunState.SUCCEEDED, run.error
    assert (Path(card.worktree_path) / "lib" / "README.md").read_text() == "# Demo\n"


def test_a_repository_using_lfs_fails_clearly_where_git_lfs_is_missing(make_card, project, monkeypatch, tmp_path):
    repo = project.repo_path
    (Path(repo) / ".gitattributes").write_text("*.psd filter=lfs diff=lfs merge=lfs -text\n")
    git(repo, "add", ".gitattributes")
    git(repo, "commit", "-q", "-m", "Track designs with LFS")
    # A PATH that has git and nothing else, so git-lfs is missing whatever this machine has.
    only_git = tmp_path / "only-git"
    only_git.mkdir()
    (only_git / "git").symlink_to(shutil.which("git"))
    monkeypatch.setenv("PATH", str(only_git))
    run = start_and_run(make_card())
    assert run.state == RunState.FAILED
    assert "Git LFS" in run.error and "git-lfs is not installed" in run.error


@pytest.mark.django_db(transaction=True)
def test_ten_cards_started_at_once_all_succeed_while_the_user_works_in_their_checkout(make_card, project):
    import threading

    repo = project.repo_path
    cards = [make_card(f"echo {i} > out-{i}.txt", title=f"Parallel {i}") for i in range(10)]
    runs = [card.start() for card in cards]
    done = threading.Event()
    user_errors = []

    def user_at_work():
        n = 0
        while not done.is_set():
            n += 1
            try:
                git(repo, "status", "--porcelain")
                Path(repo, "notes.txt").write_text(f"note {n}\n")
                git(repo, "add", "notes.txt")
                git(repo, "commit", "-q", "-m", f"User's own commit {n}")
            except AssertionError as exc:  # the user's git must keep working too
                user_errors.append(str(exc))

    user = threading.Thread(target=user_at_work)
    user.start()
    workers = [execute_in_thread(run.pk) for run in runs]
    for w in workers:
        w.join(120)
    done.set()
    user.join(30)
    for run in runs:
        run.refresh_from_db()
    assert [r.state for r in runs] == [RunState.SUCCEEDED] * 10, [r.error for r in runs]
    for i, card in enumerate(cards):
        card.refresh_from_db()
        assert git(repo, "show", f"{card.branch}:out-{i}.txt") == f"{i}\n"
    assert git(repo, "worktree", "list").count("\n") == 11
    agent_branches = {b for b in git(repo, "branch", "--format=%(refname:short)").split() if b.startswith("agent/")}
    assert agent_branches == {c.branch for c in cards}, "no orphan branch"
    assert user_errors == []


def test_a_worktree_that_takes_too_long_to_create_fails_the_run_not_hangs_it(make_card, project, monkeypatch):
    # A post-checkout hook that hangs stands for a checkout that never ends.
    hook = Path(project.repo_path, ".git", "hooks", "post-checkout")
    hook.write_text("#!/bin/sh\nsleep 30\n")
    hook.chmod(0o755)
    monkeypatch.setattr(worktrees, "COMMAND_TIMEOUT", 1.0)
    started = time.monotonic()
    run = start_and_run(make_card())
    assert time.monotonic() - started < 20
    assert run.state == RunState.FAILED
    assert "did not finish within 1 seconds" in run.error
    steps = list(run.events.filter(kind="step").values_list("text", flat=True))
    assert steps and steps[0].startswith("Preparing worktree"), "progress is on the card"
    # What the timeout left is the card's own and is taken up by the next run, not orphaned.
    hook.unlink()
    monkeypatch.setattr(worktrees, "COMMAND_TIMEOUT", 600.0)
    card = Card.objects.get(pk=run.card_id)
    again = start_and_run(card)
    assert again.state == RunState.SUCCEEDED, again.error
    agent_branches = [b for b in git(project.repo_path, "branch", "--format=%(refname:short)").split() if b.startswith("agent/")]
    assert agent_branches == [card.branch]


def test_a_failing_pre_commit_hook_fails_the_run_with_the_hook_output(make_card, project):
    hook = Path(project.repo_path, ".git", "hooks", "pre-commit")
    hook.write_text("#!/bin/sh\necho 'lint: trailing whitespace in out.txt' >&2\nexit 1\n")
    hook.chmod(0o755)
    card = make_card("echo 'x ' > out.txt")
    run = start_and_run(card)
    assert run.state == RunState.FAILED
    assert "lint: trailing whitespace in out.txt" in run.error
    assert Path(card.worktree_path, "out.txt").exists(), "the work stays in the worktree"
    assert git(project.repo_path, "rev-list", "--count", f"main..{card.branch}").strip() == "0", "never bypassed"


def test_a_description_beyond_the_environment_limit_still_reaches_the_agent_whole(make_card):
    prompt = "€" * 60_000  # 180 KB in UTF-8: more than Linux allows in one variable
    card = make_card('echo "${#CARD_PROMPT}"; wc -c < "$CARD_PROMPT_FILE"', prompt=prompt)
    run = start_and_run(card)
    assert run.state == RunState.SUCCEEDED, run.error
    output = "\n".join(run.events.filter(kind="log").values_list("text", flat=True)).split()
    assert int(output[0]) < 60_000, "the variable is cut"
    assert int(output[1]) > 180_000, "the file has it whole"


def test_a_repository_using_lfs_gets_real_file_contents_where_git_lfs_is_installed(make_card, project):
    # Needs git-lfs (./run-tests and .ci/run install it); a missing one fails here, loudly.
    repo = project.repo_path
    git(repo, "lfs", "install", "--local")
    git(repo, "lfs", "track", "*.bin")
    Path(repo, "model.bin").write_bytes(b"\x00real binary content\x01" * 100)
    git(repo, "add", ".gitattributes", "model.bin")
    git(repo, "commit", "-q", "-m", "Add a large file through LFS")
    assert "oid sha256:" in git(repo, "cat-file", "-p", "HEAD:model.bin"), "stored as an LFS pointer"
    card = make_card("cmp -s model.bin /dev/null; wc -c < model.bin")
    run = start_and_run(card)
    assert run.state == RunState.SUCCEEDED, run.error
    assert Path(card.worktree_path, "model.bin").read_bytes() == b"\x00real binary content\x01" * 100


def test_an_agent_that_deletes_the_worktree_git_never_makes_the_board_commit_elsewhere(make_card, project, settings, make_repo):
    # The data folder inside another repository, as the default .data inside the board's checkout.
    outer = make_repo("outer")
    settings.WORKTREES_DIR = outer / ".data" / "worktrees"
    outer_head = git(outer, "rev-parse", "HEAD")
    card = make_card("rm -rf .git; echo hacked > hacked.txt; git add -A 2>&1; git commit -qm sneaky 2>&1; true")
    run = start_and_run(card)
    assert run.state == RunState.FAILED
    assert "no longer a git worktree" in run.error
    assert git(outer, "rev-parse", "HEAD") == outer_head, "the enclosing repository is untouched"
    assert "sneaky" not in git(outer, "log", "--all", "--format=%s"), "nor the agent's own git commands"
    assert git(outer, "diff", "--cached", "--name-only") == "", "nothing staged in it"


def test_a_failed_setup_is_done_again_by_the_next_run(make_card, project, tmp_path):
    flag = tmp_path / "setup-may-pass"
    project.setup_command = f"test -e {flag} && echo set up > setup-done.txt"
    project.save()
    card = make_card("cat setup-done.txt")
    assert start_and_run(card).state == RunState.FAILED
    flag.touch()
    run = start_and_run(card)
    assert run.state == RunState.SUCCEEDED, run.error
    assert "set up" in "\n".join(run.events.filter(kind="log").values_list("text", flat=True))


@pytest.mark.django_db(transaction=True)
def test_stop_during_the_setup_command_stops_the_run_before_the_agent(make_card, project, tmp_path):
    project.setup_command = "echo setting up; sleep 60"
    project.save()
    ran = tmp_path / "agent-ran"
    card = make_card(f"touch {ran}")
    run = card.start()
    thread = execute_in_thread(run.pk)
    deadline = time.monotonic() + 20
    while not run.events.filter(text__contains="setting up").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    card.stop()
    thread.join(15)
    run.refresh_from_db()
    assert run.state == RunState.STOPPED
    assert not ran.exists()


def test_an_agent_that_switches_branches_fails_the_run_instead_of_misplacing_work(make_card, project):
    card = make_card("git switch -q -c sneaky-branch && echo x > x.txt && git add x.txt && git commit -qm 'on another branch' && echo y > y.txt")
    run = start_and_run(card)
    assert run.state == RunState.FAILED
    assert "sneaky-branch instead of the card's branch" in run.error
    assert git(project.repo_path, "rev-list", "--count", f"main..{card.branch}").strip() == "0"
    assert git(project.repo_path, "show", "sneaky-branch:x.txt") == "x\n", "the agent's work is where it put it"


def test_a_flood_of_output_is_stored_in_bounded_chunks_in_order(make_card):
    # 20,000 lines of 100 characters as fast as the command can print them: 2 MB.
    card = make_card("python3 -c \"import sys\nfor i in range(20000): sys.stdout.write('%06d ' % i + 'y' * 93 + '\\n')\"")
    run = start_and_run(card)
    assert run.state == RunState.SUCCEEDED, run.error
    chunks = list(run.events.filter(kind="log").order_by("seq").values_list("text", flat=True))
    assert len(chunks) >= 2_000_000 // (LOG_CHUNK_CHARS + 4000)
    assert max(len(c) for c in chunks) <= LOG_CHUNK_CHARS
    lines = "\n".join(chunks).split("\n")
    assert [int(line[:6]) for line in lines] == list(range(20000)), "every line, once, in order"
    assert run.log_chars == sum(len(c) for c in chunks)


def test_one_long_text_is_split_into_chunks_between_lines(make_card):
    run = make_card().start()
    text = "\n".join(f"row {i:05d} " + "z" * 90 for i in range(1000))  # about 100,000 characters
    run.emit("log", text)
    chunks = list(run.events.filter(kind="log").order_by("seq").values_list("text", flat=True))
    assert len(chunks) >= 4 and all(len(c) <= LOG_CHUNK_CHARS for c in chunks)
    assert "\n".join(chunks) == text, "cut at line breaks, nothing lost or doubled"


def test_output_past_the_retention_limit_drops_the_oldest_but_keeps_the_start_steps_and_the_newest(make_card, settings):
    settings.BOARD_RUN_LOG_MAX_CHARS = 100_000
    run = make_card().start()
    run.emit("step", "a step that stays")
    for i in range(300):  # 300 chunks of about 1,000 characters: three times the limit
        run.emit("log", "\n".join(f"out {i}.{j} " + "w" * 90 for j in range(10)))
    run.refresh_from_db()
    stored = list(run.events.filter(kind="log").order_by("seq").values_list("text", flat=True))
    assert sum(len(t) for t in stored) == run.log_chars <= 100_000
    assert stored[0].startswith("out 0.0 "), "the run's first output is kept"
    assert stored[-1].startswith("out 299.0 "), "the newest output is kept"
    assert run.events.filter(kind="step", text="a step that stays").exists()
    gone = 3000 - sum(t.count("\n") + 1 for t in stored)
    assert run.log_dropped == gone > 0
    note = run.events.filter(kind="step", text__startswith="Dropped").order_by("-seq").first()
    assert note is not None and f"({gone:,} lines dropped in all)" in note.text


def test_the_card_page_reads_only_the_tail_of_a_huge_log(make_card):
    run = make_card().start()
    for i in range(40):
        run.emit("log", f"big {i} " + "q" * 30_000)
    events, earlier = run.log_tail(("log",), None, 500, 200_000)
    assert earlier and [e.text[:6] for e in events] == [f"big {i}" for i in range(34, 40)]
    assert sum(len(e.text) for e in events) <= 200_000
    events, earlier = run.log_tail(("log",), events[0].seq, 500, 200_000)
    assert events[-1].text.startswith("big 33 ")
    one, _ = run.log_tail(("log",), None, 500, 10)
    assert len(one) == 1, "never less than one event, however long"
