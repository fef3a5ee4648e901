"""The built-in coding agent: a tool-calling loop over litellm, one stored step at a time.

The loop is stateless: :func:`step` takes the stored conversation (a JSON-serialisable dict
made by :func:`new_state`), makes one model call, runs the tool calls of the answer and
returns the new state. :func:`run` repeats that, handing the state to the caller after every
step, so a run can be stored, ended, and resumed later from its last step.

This module knows nothing of Django or the board: the caller passes the worktree path, the
model settings and callbacks, and stores what comes back. litellm is imported only inside
the function that calls the model, because importing it costs seconds and hundreds of MB.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from agents.llm import ModelConfig, ModelError, complete
from agents.tools import (
    READ_ONLY_TOOL_SCHEMAS,
    READ_ONLY_TOOLS,
    TOOL_SCHEMAS,
    describe_call,
    execute_tool,
)

__all__ = ["ModelConfig", "AgentResult", "ModelError", "new_state", "step", "run", "SYSTEM_PROMPT"]

Emit = Callable[..., None]  # emit(kind: str, text: str, data: dict | None = None)

LOG_LIMIT = 4000  # characters of tool output / model text per "log" event

SYSTEM_PROMPT = """\
You are a coding agent working in a git worktree of a software project. The current \
directory is the root of the worktree; every path you give is relative to it.

Make the change the task asks for by using the tools: look at the files that matter \
(list_files, search_files, read_file), change them (edit_file for targeted edits, \
write_file for new files or full rewrites), and check your work with run_command \
(tests, linters, builds) when the project has a way to do so. Keep changes focused \
on the task.

Rules:
- Work only through the tools; text you write without a tool call changes nothing.
- Commands run non-interactively: no stdin, a timeout, and background processes are \
killed when the command ends.
- Do not run git commands that rewrite history or move the branch (commit --amend, \
rebase, reset, push, checkout or switch of other branches, stash). You need not commit: \
your changes are committed for you after every step.
- When the task is done, or you cannot do it, call finish with a short summary (one or \
two sentences) of what you changed, or of what stopped you."""

PLAN_PROMPT = """\
You are a planning agent looking at a git worktree of a software project. The current \
directory is the root of the worktree; every path you give is relative to it.

You are in plan mode: you can only read (list_files, search_files, read_file). Do not \
try to change anything. Study the code the task concerns, then call finish with a \
concrete plan as the summary: the files to change, what to change in each, and how to \
check the result."""

NUDGE = (
    "You answered without calling a tool, so nothing happened. Use the tools to carry out the "
    "task, or call finish with a short summary if it is done."
)


@dataclass
class AgentResult:
    """How a :func:`run` ended.

    ``state`` is ``"succeeded"``, ``"failed"`` or ``"stopped"``; ``summary`` is the agent's
    own summary (set when it finished); ``error`` is a short human reason when it did not
    succeed (empty otherwise).
    """

    state: str
    summary: str
    error: str


# --------------------------------------------------------------------------- state


def new_state(title: str, prompt: str, *, read_only: bool = False) -> dict:
    """Return the initial state of a run for a card with ``title`` and ``prompt``.

    The state is a JSON-serialisable dict: ``{"messages": [system, user], "steps": 0,
    "done": False, "summary": "", "nudged": False, "read_only": bool, "last_action": "",
    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}}``. ``messages``
    follow the OpenAI chat format. ``read_only=True`` is plan mode: only the read-only tools
    are offered and the model is asked for a plan. Unknown keys are kept by :func:`step`.
    """
    task = f"Task: {title.strip()}" if title and title.strip() else "Task"
    body = prompt.strip() if prompt and prompt.strip() else "(no further description)"
    return {
        "messages": [
            {"role": "system", "content": PLAN_PROMPT if read_only else SYSTEM_PROMPT},
            {"role": "user", "content": f"{task}\n\n{body}"},
        ],
        "steps": 0,
        "done": False,
        "summary": "",
        "nudged": False,
        "read_only": bool(read_only),
        "last_action": "",
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0},
    }


# --------------------------------------------------------------------------- model call


def _shorten(text: str, limit: int = LOG_LIMIT) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


# --------------------------------------------------------------------------- change detection


def _tree_fingerprint(root: Path) -> str | None:
    """Hash of the worktree's content (tracked + untracked, ignored files excluded), or None.

    It is the tree git would commit after ``git add -A``, computed on a copy of the index so
    the real one is neither changed nor locked; it does not move when the caller commits,
    so two fingerprints differ exactly when a step changed files.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        index = subprocess.run(
            ["git", "rev-parse", "--path-format=absolute", "--git-path", "index"],
            cwd=root, capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL,
        )
        if index.returncode != 0:
            return None
        with tempfile.TemporaryDirectory(prefix="agent-index-") as tmp:
            temp_index = Path(tmp) / "index"
            real_index = Path(index.stdout.strip())
            if real_index.exists():
                # Starting from the real index lets git reuse its cached file hashes.
                shutil.copyfile(real_index, temp_index)
            env["GIT_INDEX_FILE"] = str(temp_index)
            for args in (["add", "-A", "--", "."], ["write-tree"]):
                proc = subprocess.run(
                    ["git", *args], cwd=root, capture_output=True, text=True, timeout=120, env=env,
                    stdin=subprocess.DEVNULL,
                )
                if proc.returncode != 0:
                    return None
            return proc.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------- step and run

_WRITING_TOOLS = {"write_file", "edit_file", "run_command"}


def step(
    state: dict,
    root: Path,
    config: ModelConfig,
    emit: Emit,
    extra_env: dict | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[dict, bool]:
    """Take one step: one model call, then the tool calls of its answer, in order.

    ``state`` is a dict from :func:`new_state` or a previous step; it is not modified. Returns
    ``(new_state, changed_files)``: ``new_state`` has the answer and the tool results appended,
    ``steps`` increased by one, ``done``/``summary`` set when the model called ``finish`` (or
    answered twice running without a tool call, see below), ``last_action`` a short
    description of what the step did, and ``usage`` accumulated; ``changed_files`` is True when
    the worktree's content (tracked and untracked files, not ignored ones) differs from before
    the step. A plain answer without tool calls gets one nudge message; a second plain answer
    in a row ends the run with its text as the summary.

    ``emit(kind, text, data=None)`` receives ``"step"`` (one line per tool call), ``"log"``
    (model text and tool output, shortened to a few KB) and ``"usage"`` (data
    ``{"prompt_tokens", "completion_tokens", "cost"}``, cost in US dollars, 0 when unknown).
    ``extra_env`` is added to the environment of commands; ``should_stop()`` is polled while
    a command runs and, when true, kills it and skips the remaining tool calls of the step.
    Raises :class:`ModelError` when the model cannot be called (the state is then unchanged).
    """
    root = Path(root)
    state = copy.deepcopy(state)
    messages: list[dict] = state.setdefault("messages", [])
    read_only = bool(state.get("read_only"))
    schemas = READ_ONLY_TOOL_SCHEMAS if read_only else TOOL_SCHEMAS
    before = _tree_fingerprint(root)

    step_no = int(state.get("steps", 0)) + 1
    answer, usage = complete(messages, config, schemas, step_no)
    messages.append(answer)
    state["steps"] = step_no

    totals = state.setdefault("usage", {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0})
    for key in ("prompt_tokens", "completion_tokens", "cost"):
        totals[key] = totals.get(key, 0) + usage[key]
    emit(
        "usage",
        f"{usage['prompt_tokens']} prompt + {usage['completion_tokens']} completion tokens"
        + (f", ${usage['cost']:.4f}" if usage["cost"] else ""),
        usage,
    )

    text = (answer.get("content") or "").strip()
    if text:
        emit("log", _shorten(text), {"source": "model"})

    calls = answer.get("tool_calls") or []
    if not calls:
        if state.get("nudged"):
            state["done"] = True
            state["summary"] = text or "The agent ended without a summary."
            state["last_action"] = "ended without a tool call"
        else:
            state["nudged"] = True
            messages.append({"role": "user", "content": NUDGE})
            state["last_action"] = "answered without a tool call"
            emit("log", "The model answered without a tool call; asked it to use the tools or finish.",
                 {"source": "agent"})
        return state, False

    state["nudged"] = False
    actions: list[str] = []
    skip_reason = ""
    wrote = False
    for call in calls:
        name = call["function"]["name"]
        raw = call["function"]["arguments"]
        try:
            parsed = json.loads(raw) if raw else {}
        except (json.JSONDecodeError, TypeError):
            parsed = None
        description = describe_call(name, parsed)
        if skip_reason:
            output, is_error = f"skipped: {skip_reason}", True
        else:
            emit("step", description, {"tool": name})
            actions.append(description)
            output, is_error = execute_tool(
                root,
                name,
                raw,
                extra_env=extra_env,
                should_stop=should_stop,
                allowed=READ_ONLY_TOOLS if read_only else None,
            )
            if name == "finish" and not is_error:
                state["done"] = True
                state["summary"] = output
                output = "Finished."
                skip_reason = "finish was called before this tool call"
            else:
                wrote = wrote or (name in _WRITING_TOOLS and not is_error)
                emit("log", _shorten(output), {"tool": name, "error": is_error})
                if should_stop is not None and should_stop():
                    skip_reason = "the run was stopped"
        messages.append({"role": "tool", "tool_call_id": call["id"], "name": name, "content": output})

    state["last_action"] = _join_actions(actions)
    if before is None:
        # Not a git worktree: fall back to what the tools were asked to do.
        return state, wrote
    after = _tree_fingerprint(root)
    return state, (after is None and wrote) or (after is not None and after != before)


def _join_actions(actions: list[str], limit: int = 100) -> str:
    if not actions:
        return ""
    text = actions[0][:limit]
    for i, action in enumerate(actions[1:], start=1):
        if len(text) + 2 + len(action) > limit:
            return f"{text} (+{len(actions) - i} more)"
        text = f"{text}, {action}"
    return text


def run(
    state: dict,
    root: Path,
    config: ModelConfig,
    emit: Emit,
    checkpoint: Callable[[str], Any],
    save_state: Callable[[dict], Any],
    should_stop: Callable[[], bool] = lambda: False,
    extra_env: dict | None = None,
) -> AgentResult:
    """Run :func:`step` until the agent finishes, fails or is stopped; return how it ended.

    After every step ``save_state(state)`` is called with the new state (store it: passing it
    back here resumes the run), then, if the step changed files, ``checkpoint("Step <n>:
    <short description>")`` (the caller commits). Ends with ``succeeded`` and the agent's
    summary when it calls finish (a state already done returns at once); ``failed`` with
    ``"step budget of N exhausted"`` after ``config.max_steps`` model calls (counted over the
    whole conversation, resumes included), with a cost or time budget message when
    ``config.max_cost`` / ``config.max_seconds`` is spent, or with the :class:`ModelError`
    reason; ``stopped`` as soon as ``should_stop()`` is true between steps (it is also polled
    during commands, which it kills). Exceptions raised by the callbacks propagate.
    """
    root = Path(root)
    started = time.monotonic()
    while True:
        if state.get("done"):
            return AgentResult("succeeded", state.get("summary", ""), "")
        if should_stop():
            return AgentResult("stopped", "", "stopped on request")
        if int(state.get("steps", 0)) >= config.max_steps:
            return AgentResult("failed", "", f"step budget of {config.max_steps} exhausted")
        spent = float((state.get("usage") or {}).get("cost", 0.0) or 0.0)
        if config.max_cost is not None and spent >= config.max_cost:
            return AgentResult("failed", "", f"cost budget of ${config.max_cost:g} exhausted (spent ${spent:.4f})")
        if config.max_seconds is not None and time.monotonic() - started >= config.max_seconds:
            return AgentResult("failed", "", f"time budget of {config.max_seconds:g} s exhausted")
        try:
            state, changed = step(state, root, config, emit, extra_env, should_stop=should_stop)
        except ModelError as exc:
            return AgentResult("failed", "", str(exc))
        save_state(state)
        if changed:
            checkpoint(f"Step {state['steps']}: {state.get('last_action') or 'changes'}")
