"""The runner: the one place that joins the domain, the git layer and the agents (DESIGN.md).

A django-q2 task hands it a run id; it claims the run, makes or reuses the card's worktree, runs the
agent there, commits what the agent left, and ends the run. Whatever goes wrong ends the run as
failed with a reason on the card: nothing stays "running".
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from agents import clones, shared_remote, worktrees
from agents.command import MARK_VARIABLE, kill_marked, run_command
from agents.sandbox import SandboxError, decide as decide_sandbox
from agents.secrets import command_environment
from board.models import Agent, BoardError, Card, Project, Run, RunState

log = logging.getLogger(__name__)

ENV_VALUE_LIMIT = 100_000  # bytes of one environment variable we pass (Linux: MAX_ARG_STRLEN, 128 KiB)
SETUP_TAIL_LINES = 30  # lines of a failed setup command's output kept in the run's reason


class RunFailure(Exception):
    """A reason to fail the run, shown on the card as it is."""


class RunStopped(Exception):
    """The lead stopped the run before its agent began."""


@dataclass
class Outcome:
    state: str
    summary: str = ""
    error: str = ""
    pending: dict | None = None  # set when the run waits for the lead (state AWAITING_APPROVAL)
    agent_state: dict | None = None


# Tokens of context assumed for a model litellm does not know (most local models have 8k or more).
DEFAULT_CONTEXT_WINDOW = 8192


def execute(run_id: int) -> str | None:
    """Claim run ``run_id`` and carry it to a final state; returns that state, or None when the run
    was not taken: not queued (already taken by another worker, or a redelivered task), or held
    because its project runs as many as it may at once (Run.claim)."""
    run = Run.claim(run_id, settings.BOARD_NODE_NAME, os.getpid())
    if run is None:
        # Normal with several workers or a parallel limit (another worker took it, or it waits for
        # a slot): not worth a line in the board's log at the default level.
        log.debug("run %s not taken: not queued any more, or held until its project has a free slot", run_id)
        return None
    try:
        outcome = _execute(run)
    except (RunFailure, worktrees.GitError) as exc:
        outcome = Outcome(RunState.FAILED, error=str(exc))
    except RunStopped:
        outcome = Outcome(RunState.STOPPED, error="stopped by the lead")
    except Exception as exc:  # the card must never stay "running" because of a bug of ours
        log.exception("run %s crashed", run_id)
        outcome = Outcome(RunState.FAILED, error=f"internal error: {type(exc).__name__}: {exc}")
    finally:
        # Nothing an agent started outlives its run, not even what left its process group.
        try:
            kill_marked(run_mark(run.pk))
        except Exception:  # never let the cleanup keep the run from ending
            log.exception("could not end the leftover processes of run %s", run_id)
    outcome = _push_after(run, outcome)
    commits = _branch_commits(run)
    if outcome.state == RunState.AWAITING_APPROVAL:
        # The run waits for the lead without holding this worker; a decision queues it again.
        if commits is not None:
            Run.objects.filter(pk=run.pk).update(commits=commits)
        if run.wait_for_lead(outcome.agent_state or {}, outcome.pending or {}):
            return outcome.state
        outcome = Outcome(RunState.STOPPED, error="stopped by the lead")
    run.finish(outcome.state, outcome.summary, outcome.error, commits=commits)
    return outcome.state


def _push_after(run: Run, outcome: Outcome) -> Outcome:
    """In multi-host mode, push the card's branch to the shared remote whatever the outcome, so
    the web and the other nodes see what the run did; a push that fails fails the run with git's
    message and where the commits stay (this node's branch is untouched). Single host: unchanged."""
    card = run.card
    if not (shared_remote.is_multi_host(card.project) and card.branch):
        return outcome
    repo = shared_remote.clone_path(card.project)
    try:
        if not (os.path.isdir(repo) and worktrees.branch_exists(repo, card.branch)):
            return outcome  # cut off before its branch was made: nothing to push
        sha = clones.push_branch(repo, card.branch)
    except worktrees.GitError as exc:
        where = (f"The commits are safe on the branch {card.branch} of node {shared_remote.node_name()} "
                 f"(clone {repo}); start the card again to retry the push.")
        error = f"{exc} {where}"
        if outcome.state == RunState.FAILED and outcome.error:
            error = f"{outcome.error}\n{error}"
        return Outcome(RunState.FAILED, summary=outcome.summary, error=error)
    run.emit("step", f"Pushed {card.branch} to the shared remote at {sha[:10]}")
    return outcome


class _StopFlag:
    """``should_stop`` for the agents: whether the lead asked this run to stop, read from the
    database at most once every POLL seconds (the agents call it many times a second)."""

    POLL = 1.0

    def __init__(self, run_id: int):
        self.run_id = run_id
        self.checked_at = 0.0
        self.stop = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.stop and now - self.checked_at >= self.POLL:
            self.checked_at = now
            self.stop = Run.objects.filter(pk=self.run_id, stop_requested=True).exists()
        return self.stop


def run_mark(run_id: int) -> str:
    """The value of BOARD_RUN_MARK in the environment of every process of run ``run_id``: the
    data folder's name and the run id, so that two boards on one machine never touch each
    other's processes."""
    folder = hashlib.sha1(str(settings.DATA_DIR).encode()).hexdigest()[:12]
    return f"{folder}:{run_id}"


def _identity() -> worktrees.Identity:
    return worktrees.Identity(settings.BOARD_GIT_NAME, settings.BOARD_GIT_EMAIL)


def _trailers(run: Run, step: int | None = None) -> dict[str, str]:
    trailers = {"Card": f"#{run.card_id}", "Run": str(run.pk)}
    if step is not None:
        trailers["Step"] = str(step)
    return trailers


def _checkpoint(run: Run, worktree: str, message: str, step: int | None = None) -> str | None:
    """Commit everything uncommitted in the worktree on the card's branch, as the board, and
    show it on the card; returns the new sha, or None when nothing had changed. Raises GitError,
    e.g. with a failing hook's output."""
    sha = worktrees.commit_all(worktree, message, _identity(), _trailers(run, step))
    if sha:
        run.emit("checkpoint", message, {"sha": sha})
    return sha


def _branch_commits(run: Run) -> list[str] | None:
    """The branch's commits since its base, oldest first; None when there is no worktree yet.
    A run cut off before it recorded its base commit uses the card's last recorded one."""
    card = run.card
    base = run.base_commit or _branch_base(card)
    if not (base and card.worktree_path and os.path.isdir(card.worktree_path)):
        return None
    try:
        return [c.sha for c in worktrees.new_commits(card.worktree_path, base)]
    except worktrees.GitError:
        return None


def _repository(run: Run) -> tuple[str, str, bool]:
    """Where the card's worktree comes from: ``(repository, base ref, taken over)``; taken over:
    this node did not hold the card's worktree last (another node did, or none since a roll-back),
    so the remote's branch is the truth over this node's (multi-host only). Single host: the
    project's own checkout and base branch. Multi-host: this node's clone of the shared remote,
    fetched now, and the remote's base branch; the card's branch is first brought up to what
    the remote has (another node may have gone on with the card), and the card records that its
    worktree is on this node, in this node's data folder. Raises RunFailure and GitError."""
    card = run.card
    project = card.project
    if not shared_remote.is_multi_host(project):
        if not os.path.isdir(project.repo_path):
            raise RunFailure(f"The project's repository {project.repo_path} no longer exists.")
        worktrees.inspect_repository(project.repo_path)
        return project.repo_path, project.base_branch, False
    node = shared_remote.node_name()
    run.emit("step", f"Fetching the shared remote {project.remote_url} into node {node}'s clone")
    repo = shared_remote.fresh_clone(project)
    base = clones.tracking_ref(project.base_branch)
    try:
        worktrees.resolve_base(repo, base)
    except worktrees.BranchNotFound:
        raise RunFailure(f"The shared remote {project.remote_url} has no branch {project.base_branch}.") from None
    if card.branch and not card.worktree_host and clones.remote_tip(repo, card.branch) is None:
        _carry_over_branch(run, repo)
    # Blank here: made before the project had a shared remote, or rolled back by the lead since.
    taken_over = bool(card.branch) and card.worktree_host != node
    if card.branch and (card.worktree_host != node or not card.worktree_path):
        # The worktree is on another node (or nowhere yet): this node makes its own from the
        # pushed branch, in its own data folder.
        card.worktree_path = shared_remote.worktree_here(project, card)
        card.worktree_host = node
        card.worktree_ready = False
        card.save(update_fields=["worktree_path", "worktree_host", "worktree_ready", "updated_at"])
    return repo, base, taken_over


def _carry_over_branch(run: Run, repo: str) -> None:
    """A card whose branch was made before its project had a shared remote (its worktree host is
    blank) goes on from that branch, not from scratch: pushed to the remote from the project's
    checkout when this node has it, else the run fails saying how to push it. Raises RunFailure."""
    card = run.card
    project = card.project
    if os.path.isdir(project.repo_path) and worktrees.branch_exists(project.repo_path, card.branch):
        try:
            clones.push_from(project.repo_path, project.remote_url, card.branch)
        except worktrees.GitError as exc:
            raise RunFailure(f"The card's branch {card.branch} was made before the project had a shared remote, "
                             f"and pushing it there failed: {exc}") from exc
        clones.fetch(repo)
        run.emit("step", f"Pushed {card.branch} from {project.repo_path} to the shared remote, to go on from it")
        return
    if _branch_base(card):  # it ran before, so it has work somewhere
        raise RunFailure(
            f"The card's branch {card.branch} was made before the project had a shared remote and is not on it. "
            f"Push it from the project's checkout (git -C '{project.repo_path}' push '{project.remote_url}' "
            f"{card.branch}) and start the card again."
        )


def _execute(run: Run) -> Outcome:
    card = run.card
    project = card.project
    repo, base_branch, taken_over = _repository(run)
    multi_host = shared_remote.is_multi_host(project)
    if not card.branch:
        # Recorded before the branch exists, so a crash from here on leaves a branch that is
        # known to be the card's own and is reused by the next run.
        card.branch, card.worktree_path = worktrees.free_names(
            repo, project.branch_prefix, card.pk, card.title, str(settings.WORKTREES_DIR / str(project.pk)),
            # A branch of that name on the shared remote is someone else's (another board, a reset database).
            also_taken_refs=(clones.tracking_ref(""),) if multi_host else (),
        )
        card.worktree_host = shared_remote.node_name() if multi_host else ""
        card.save(update_fields=["branch", "worktree_path", "worktree_host", "updated_at"])
    if multi_host:
        synced = clones.sync_branch(repo, card.branch, card.worktree_path, remote_is_truth=taken_over)
        if synced:
            run.emit("step", synced)
    run.emit("step", f"Preparing worktree on branch {card.branch} from {project.base_branch}")
    tree = worktrees.ensure_worktree(repo, base_branch, card.branch, card.worktree_path)
    run.base_commit = tree.base_commit
    run.save(update_fields=["base_commit"])
    run.emit("step", f"Worktree {'created' if tree.created else 'reused'} at {tree.path} (base {tree.base_commit[:10]})")
    stop = _StopFlag(run.pk)
    sandbox = _sandbox(run, tree.path)
    if tree.created or not card.worktree_ready:
        # Until the setup has once succeeded, every run does it again.
        Card.objects.filter(pk=card.pk).update(worktree_ready=False)
        _fill_worktree(run, tree.path, stop, sandbox)
        Card.objects.filter(pk=card.pk).update(worktree_ready=True)
    if stop():
        return Outcome(RunState.STOPPED, error="stopped by the lead")

    agent = run.agent
    if agent.kind == Agent.Kind.COMMAND:
        outcome = _run_command_agent(run, tree.path, stop, sandbox)
    else:
        outcome = _run_builtin_agent(run, tree.path, stop, sandbox)

    checked_out = worktrees.current_branch(tree.path)
    if checked_out != card.branch:
        # Committing now would put the card's work on someone else's branch.
        raise RunFailure(
            f"The agent left the worktree on {checked_out or 'a detached HEAD'} instead of the card's branch "
            f"{card.branch}, so its work is not on the card's branch. Nothing more was committed; switch the "
            f"worktree back (git -C '{tree.path}' switch {card.branch}) and start the card again."
        )

    # What the agent left uncommitted is its work too: commit it on the card's branch whatever the
    # outcome, so nothing is lost. A failing hook fails the run with the hook's output.
    _checkpoint(run, tree.path, f"Card #{card.pk}: {card.title}")
    if outcome.state == RunState.AWAITING_APPROVAL and stop():
        return Outcome(RunState.STOPPED, error="stopped by the lead")
    if outcome.state == RunState.SUCCEEDED:
        stat = worktrees.diffstat(tree.path, tree.base_commit)
        outcome.summary = "; ".join(part for part in (outcome.summary, stat) if part)
    return outcome


def _sandbox(run: Run, worktree: str) -> tuple[str, ...]:
    """Decide whether this run's commands are sandboxed (agents.sandbox.decide under
    settings.BOARD_SANDBOX), record it on the run and say so in its log; returns the argv
    prefix for every command (empty: not sandboxed). Raises RunFailure when BOARD_SANDBOX is on
    and bubblewrap cannot be used."""
    team_server = bool(settings.BOARD_LOGIN_REQUIRED or settings.DATABASE_URL or settings.REDIS_URL)
    prompt_folder = settings.RUNS_DIR / str(run.pk)  # _prompt_file's, read from inside the sandbox
    prompt_folder.mkdir(parents=True, exist_ok=True)
    # The data folder holds the database, the generated secret key and every other card's
    # worktree: hidden, then the run's own parts bound back. A SQLite file kept elsewhere too.
    hidden = [str(settings.DATA_DIR)]
    sqlite = getattr(settings, "SQLITE_PATH", None)
    if sqlite and not settings.DATABASE_URL and not Path(sqlite).resolve().is_relative_to(settings.DATA_DIR):
        hidden += [str(sqlite), f"{sqlite}-wal", f"{sqlite}-shm"]
    try:
        decision = decide_sandbox(settings.BOARD_SANDBOX, team_server, worktree, run.card.project.sandbox_network,
                                  readable=(str(prompt_folder),), hidden=tuple(hidden))
    except SandboxError as exc:
        raise RunFailure(str(exc)) from exc
    run.sandboxed = decision.sandboxed
    Run.objects.filter(pk=run.pk).update(sandboxed=run.sandboxed)
    run.emit("step", decision.note, {"sandboxed": decision.sandboxed, "network": decision.network})
    return decision.prefix


def _fill_worktree(run: Run, worktree: str, stop: _StopFlag, sandbox: tuple[str, ...] = ()) -> None:
    """What a new worktree needs besides the checkout: submodules, the ignored files the project
    lists (such as .env), then its setup command, whose failure fails the run with its output."""
    project = run.card.project
    for line in worktrees.prepare_worktree(worktree):
        run.emit("step", line)
    if shared_remote.is_multi_host(project):
        # Ignored files live in someone's checkout, which a worker on another host does not have.
        if project.copy_patterns:
            run.emit("step", "Files to copy are not copied: the project works from a shared remote")
        copied = []
    else:
        copied = worktrees.copy_ignored_files(project.repo_path, worktree, project.copy_patterns)
    if copied:
        run.emit("step", f"Copied {len(copied)} ignored file(s): {', '.join(copied[:20])}")
    if project.setup_command.strip():
        run.emit("step", f"Setup: $ {project.setup_command}")
        tail: list[str] = []

        def emit(kind: str, text: str) -> None:
            tail.extend(text.splitlines())
            del tail[:-SETUP_TAIL_LINES]
            run.emit(kind, text)

        result = run_command(
            project.setup_command, cwd=worktree, env=agent_environment(run, _prompt_file(run)),
            emit=emit, timeout=settings.BOARD_RUN_TIMEOUT, should_stop=stop, sandbox=sandbox,
        )
        if result.state == RunState.STOPPED:
            raise RunStopped()
        if result.state != RunState.SUCCEEDED:
            output = "\n".join(tail)
            raise RunFailure(f"The setup command failed: {result.error}" + (f"\n{output}" if output else ""))


def agent_environment(run: Run, prompt_file: Path) -> dict[str, str]:
    """The environment of a command agent and of the project's setup command: the board's own
    as agents.secrets.command_environment scrubs it (no board settings, no secret but the run's
    own model key, Run.model_key_env), plus the card (CARD_ID, CARD_TITLE, CARD_PROMPT,
    CARD_PROMPT_FILE, CARD_BRANCH, RUN_ID) and the board's commit identity, so that agents that
    commit do so as the board, whatever the machine's git config."""
    card = run.card
    prompt = run_prompt(run)
    env = dict(
        CARD_ID=str(card.pk),
        CARD_TITLE=card.title,
        # Linux caps one variable at 128 KiB; a longer prompt is whole in CARD_PROMPT_FILE only.
        CARD_PROMPT=prompt if len(prompt.encode()) < ENV_VALUE_LIMIT else prompt[: ENV_VALUE_LIMIT // 4] + "\n[… cut: the whole description is in CARD_PROMPT_FILE]",
        CARD_PROMPT_FILE=str(prompt_file),
        CARD_BRANCH=card.branch,
        RUN_ID=str(run.pk),
        **{MARK_VARIABLE: run_mark(run.pk)},
        # git never looks above the worktree, even if the agent deletes its .git.
        GIT_CEILING_DIRECTORIES=os.path.dirname(os.path.abspath(card.worktree_path)),
    )
    env.update(_identity().env())
    return command_environment(run.model_key_env(), env)


def run_prompt(run: Run) -> str:
    """What a command agent is asked: the card's description, and the lead's follow-up when the
    run is one."""
    if not run.prompt:
        return run.card.prompt
    return f"{run.card.prompt}\n\nFollow-up from the lead (your earlier work is on this branch):\n{run.prompt}"


def _prompt_file(run: Run) -> Path:
    # Outside the worktree, so that the prompt never ends up in the card's commits.
    folder = settings.RUNS_DIR / str(run.pk)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prompt.md"
    path.write_text(f"# {run.card.title}\n\n{run_prompt(run)}\n", encoding="utf-8")
    return path


def _run_command_agent(run: Run, worktree: str, stop: _StopFlag, sandbox: tuple[str, ...] = ()) -> Outcome:
    command = run.agent.command
    run.emit("step", f"$ {command}")
    result = run_command(
        command,
        cwd=worktree,
        env=agent_environment(run, _prompt_file(run)),
        emit=lambda kind, text: run.emit(kind, text),
        timeout=settings.BOARD_RUN_TIMEOUT,
        should_stop=stop,
        sandbox=sandbox,
    )
    return Outcome(result.state, result.summary[:300], result.error)


def _run_builtin_agent(run: Run, worktree: str, stop: _StopFlag, sandbox: tuple[str, ...] = ()) -> Outcome:
    from agents import builtin

    card = run.card
    project = card.project
    chosen = card.model_settings()
    budget = run.budget or card.budget()
    config = builtin.ModelConfig(
        model=chosen["model"],
        api_base=chosen["api_base"] or None,
        api_key_env=chosen["api_key_env"] or None,
        timeout=settings.BOARD_MODEL_TIMEOUT,
        max_steps=int(budget["steps"]),
        num_retries=settings.BOARD_MODEL_RETRIES,
        max_cost=budget.get("cost"),
        max_seconds=budget["minutes"] * 60 if budget.get("minutes") else None,
    )
    state = run.agent_state or _first_state(run)
    run.save_progress(state)

    env = agent_environment(run, _prompt_file(run))
    extra_env = {k: v for k, v in env.items() if k.startswith(("CARD_", "RUN_ID", "GIT_", MARK_VARIABLE))}
    options = builtin.LoopOptions(
        approvals=card.effective_approvals,
        check_command=project.check_command,
        base_commit=run.base_commit or None,
        context_window=project.context_window or builtin.context_window(config.model) or DEFAULT_CONTEXT_WINDOW,
        sandbox=sandbox,
    )
    run.emit("step", f"Model {config.model}" + (f" at {config.api_base}" if config.api_base else "")
             + f" ({chosen['source']} setting); approvals: {options.approvals}")
    with contextlib.ExitStack() as stack:
        if project.mcp_servers.strip():
            options.toolbox = stack.enter_context(_mcp_toolbox(run, project.mcp_servers, worktree, extra_env))
        result = builtin.run(
            state, Path(worktree), config, emit=run.emit,
            checkpoint=lambda message: _checkpoint(run, worktree, message, run.steps), save_state=run.save_progress,
            should_stop=stop, extra_env=extra_env, options=options,
        )
    if result.state == "waiting":
        return Outcome(RunState.AWAITING_APPROVAL, pending=result.pending, agent_state=run.agent_state)
    return Outcome(result.state, result.summary, result.error)


@contextlib.contextmanager
def _mcp_toolbox(run: Run, servers: str, worktree: str, env: dict[str, str]):
    """The project's MCP servers, started in the worktree for this run; a server that fails is
    named on the card and left out, never fatal. Raises RunFailure for a list that does not parse."""
    from agents.mcp_tools import McpToolbox, parse_servers

    try:
        specs = parse_servers(servers)
    except ValueError as exc:
        raise RunFailure(f"The project's MCP servers setting is wrong: {exc}") from exc
    run.emit("step", f"Starting MCP servers: {', '.join(spec.name for spec in specs)}")
    with McpToolbox(specs, Path(worktree), env, call_timeout=settings.BOARD_MODEL_TIMEOUT) as toolbox:
        for error in toolbox.errors:
            run.emit("log", f"MCP server failed and is left out: {error}")
        run.emit("step", f"MCP tools offered: {len(toolbox.schemas())}")
        yield toolbox


def _first_state(run: Run) -> dict:
    """The conversation a new run starts from: the previous run's, with the lead's follow-up, or
    a new one; with the counters it starts from, so budgets and the card's figures are per run."""
    from agents import builtin

    previous = run.previous.agent_state if run.previous_id and run.previous else None
    if previous and run.prompt:
        state = builtin.follow_up(previous, run.prompt, read_only=run.mode == "plan")
    elif previous and not previous.get("done"):
        # A resume: on from the last stored step, a call still waiting for the lead included.
        state = copy.deepcopy(previous)
        state.pop("budget_base", None)
    else:
        state = builtin.new_state(run.card.title, run.card.prompt, read_only=run.mode == "plan")
    usage = state.get("usage") or {}
    state["budget_base"] = {
        "steps": int(state.get("steps", 0)),
        "cost": float(usage.get("cost", 0.0)),
        "tokens": int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0)),
        "seconds": float(state.get("seconds", 0.0)),
    }
    return state


def delete_card(card: Card, delete_branch: bool = False, stop_wait: float = 15.0) -> str:
    """Delete a card without losing work by accident: stop its agent (waiting up to ``stop_wait``
    seconds for the run to end), commit what its worktree holds uncommitted, remove the worktree,
    and delete its branch only when it has no commit that is not on the base branch or when
    ``delete_branch`` says so. Returns a sentence saying what happened to the branch. Raises
    BoardError when the agent does not stop in time (nothing is deleted then)."""
    run = card.current_run
    if run is not None and run.is_active:
        run.request_stop()
        deadline = time.monotonic() + stop_wait
        while True:
            run.refresh_from_db()
            if not run.is_active:
                break
            if time.monotonic() > deadline:
                raise BoardError(f"The agent did not stop within {stop_wait:g} s; the card was not deleted. Try again.")
            time.sleep(0.2)
    project = card.project
    note = "It had no branch yet."
    if card.branch and shared_remote.is_multi_host(project):
        # The branch on the shared remote is the card's record; only this node's worktree goes.
        note = f"Its branch {card.branch} was kept on the shared remote."
        repo = shared_remote.clone_path(project)
        if card.worktree_host == shared_remote.node_name() and os.path.isdir(card.worktree_path or "") and os.path.isdir(repo):
            worktrees.commit_all(
                card.worktree_path, f"Card #{card.pk}: work left when the card was deleted", _identity(),
                {"Card": f"#{card.pk}"},
            )
            worktrees.remove_worktree(repo, card.worktree_path)
            try:
                clones.push_branch(repo, card.branch)
            except worktrees.GitError as exc:
                note = f"Its branch {card.branch} was kept in this node's clone {repo}: {exc}"
    elif card.branch and os.path.isdir(project.repo_path):
        if card.worktree_path and os.path.isdir(card.worktree_path):
            worktrees.commit_all(
                card.worktree_path, f"Card #{card.pk}: work left when the card was deleted", _identity(),
                {"Card": f"#{card.pk}"},
            )
            worktrees.remove_worktree(project.repo_path, card.worktree_path)
        try:
            unlanded = worktrees.unlanded_commits(project.repo_path, project.base_branch, card.branch)
        except worktrees.BranchNotFound:  # the base is gone: keep the branch, it may be all there is
            unlanded = -1
        if unlanded == 0 or delete_branch:
            worktrees.delete_branch(project.repo_path, card.branch)
            note = f"Its branch {card.branch} was deleted."
        else:
            note = f"Its branch {card.branch} was kept: it has commits that are not on {project.base_branch}."
    card.remove()
    return note


def roll_back_card(card: Card, sha: str) -> str:
    """Reset the card's branch to its checkpoint ``sha``; what is rolled back stays recoverable:
    uncommitted work is committed first, and the branch's commit before the reset is kept as
    ``refs/board/rollbacks/card-<id>/<n>``. The conversation of the built-in agent is told, so a
    follow-up knows. With a shared remote, the pushed branch is rolled back there (see
    clones.roll_back_remote: forced with a lease, the old tip kept as that ref on the remote; what
    a node's worktree held uncommitted is not part of the pushed branch and stays there). Returns
    a sentence for the lead. Raises BoardError while the card runs or has no worktree, GitError
    for a commit that is not a checkpoint of the card or a push that fails."""
    card.refresh_from_db()
    run = card.current_run
    if card.is_running:
        raise BoardError("Stop the card before rolling it back.")
    if shared_remote.is_multi_host(card.project) and run is not None:
        # The pushed branch is rolled back on the remote (forced with a lease, the one rewrite);
        # no node holds an up-to-date worktree then, so whichever runs the card next moves its
        # branch to the remote's, keeping its own tip (clones.sync_branch).
        repo = shared_remote.fresh_clone(card.project)
        prefix = f"refs/board/rollbacks/card-{card.pk}/"
        keep = f"{prefix}{1 + len(worktrees.refs_under(repo, prefix))}"
        sha, saved = clones.roll_back_remote(repo, card.branch, run.base_commit or _branch_base(card), sha, keep)
        Card.objects.filter(pk=card.pk).update(worktree_host="")
        commits = [c.sha for c in clones.pushed_commits(repo, run.base_commit or _branch_base(card), card.branch)]
        note = f"Rolled back to {sha[:10]} on the shared remote; the previous state {saved[:10]} is kept there as {keep}."
    else:
        if not (run and card.worktree_path and os.path.isdir(card.worktree_path)):
            raise BoardError("This card has no worktree to roll back.")
        base = run.base_commit or _branch_base(card)
        worktrees.commit_all(card.worktree_path, f"Card #{card.pk}: work left before a roll-back", _identity(),
                             {"Card": f"#{card.pk}"})
        n = 1 + sum(1 for r in worktrees.refs_under(card.worktree_path, f"refs/board/rollbacks/card-{card.pk}/"))
        keep = f"refs/board/rollbacks/card-{card.pk}/{n}"
        saved = worktrees.roll_back(card.worktree_path, base, sha, keep)
        note = f"Rolled back to {sha[:10]}; the previous state {saved[:10]} is kept as {keep}."
        commits = _branch_commits(run) or []
    run.emit("checkpoint", note, {"rolled_back_to": sha, "kept": keep})
    Run.objects.filter(pk=run.pk).update(commits=commits)
    if run.agent_state and run.agent_state.get("messages"):
        from agents import builtin

        state = builtin.add_note(run.agent_state, f"[The lead rolled the branch back to commit {sha[:10]}; the "
                                                  "changes after it were undone.]")
        Run.objects.filter(pk=run.pk).update(agent_state=state)
    return note


def _branch_base(card: Card) -> str:
    """The base commit the card's latest run recorded ("" when none did)."""
    return Run.objects.filter(card_id=card.pk).exclude(base_commit="").order_by("-id").values_list(
        "base_commit", flat=True).first() or ""


def sweep_worktrees() -> list[str]:
    """Remove the worktrees under the board's data folder that no card owns, and only those:
    left by a crash or a reset database. Uncommitted work in one is first committed on its branch,
    and branches are never deleted here. Returns the removed paths. Projects whose repository is
    gone are skipped."""
    owned = {os.path.realpath(p) for p in Card.objects.exclude(worktree_path="").values_list("worktree_path", flat=True)}
    removed = []
    for project in Project.objects.all():
        folder = settings.WORKTREES_DIR / str(project.pk)
        repo = shared_remote.clone_path(project) if shared_remote.is_multi_host(project) else project.repo_path
        if not (folder.is_dir() and os.path.isdir(repo)):
            continue
        try:
            listed = worktrees.worktrees_under(repo, str(folder))
            for path, branch in listed:
                if os.path.realpath(path) in owned:
                    continue
                if branch:
                    worktrees.commit_all(path, "Work recovered from a worktree no card owned", _identity())
                worktrees.remove_worktree(repo, path)
                removed.append(path)
        except worktrees.GitError:
            log.exception("could not sweep the worktrees of project %s", project.pk)
    return removed


def interrupt_orphans(is_alive, reason: str) -> int:
    """Mark interrupted every running run whose worker is gone (``is_alive(host, pid)`` says),
    end whatever processes it left, and keep its work: uncommitted changes in its worktree are
    committed on its branch as a recovery checkpoint (a failing hook leaves them in place, and
    the card says so). Returns how many runs were interrupted."""
    runs = Run.objects.interrupt_orphans(is_alive, reason)
    for run in runs:
        kill_marked(run_mark(run.pk))
        card = run.card
        # A worktree another node holds is that node's to commit in (the path may even exist here).
        here = card.worktree_host in ("", settings.BOARD_NODE_NAME)
        try:
            if here and card.worktree_path and os.path.isdir(card.worktree_path):
                message = f"Recovery checkpoint: run {run.pk} of card #{card.pk} was interrupted"
                _checkpoint(run, card.worktree_path, message)
                # Its earlier checkpoints too: the run never got to record them itself.
                Run.objects.filter(pk=run.pk).update(commits=_branch_commits(run) or [])
        except worktrees.GitError as exc:
            run.emit("log", f"Could not commit the interrupted run's work, which stays in the worktree: {exc}")
        if shared_remote.is_multi_host(card.project) and card.worktree_host == shared_remote.node_name():
            # What it did is the other nodes' and the web's to see, and a resume elsewhere goes on from it.
            pushed = _push_after(run, Outcome(RunState.INTERRUPTED))
            if pushed.error:
                run.emit("log", f"The interrupted run's branch was not pushed: {pushed.error}")
    return len(runs)
