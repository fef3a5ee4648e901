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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from agents.llm import CallStopped, ModelConfig, ModelError, complete, context_window
from agents.tools import (
    READ_ONLY_TOOL_SCHEMAS,
    READ_ONLY_TOOLS,
    TOOL_SCHEMAS,
    ToolError,
    cap_middle,
    changed_paths,
    describe_call,
    execute_tool,
    needs_approval,
    preview_change,
    run_shell,
    syntax_errors,
    temp_index_git,
)

__all__ = [
    "ModelConfig", "AgentResult", "LoopOptions", "ModelError", "new_state", "follow_up", "decide", "add_note", "step",
    "run",
    "fit_context", "context_window", "SYSTEM_PROMPT",
]

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
check the result. The lead reads the plan, may edit it, and approves it; you then carry \
it out with all the tools."""

PLAN_APPROVED = """The lead approved the plan below. You are now in act mode and have all the tools: carry \
the plan out, check your work, then call finish with a short summary.

The plan:
{plan}"""

PLAN_REVISE = "The lead asks you to revise the plan: {reason}\nCall finish with the revised plan."
DENIED = "The lead denied this tool call. Reason: {reason}. Do not repeat it; find another way or ask with ask_lead."
ANSWERED = "The lead answered: {answer}"
CHECK_FAILED = """The checks failed, so the task is not finished yet. Fix the problems below, then call \
finish again.

{output}"""
TRIMMED = "[older output shortened to keep the conversation within the model's context window]"

NUDGE = (
    "You answered without calling a tool, so nothing happened. Use the tools to carry out the "
    "task, or call finish with a short summary if it is done."
)


@dataclass
class LoopOptions:
    """How the loop behaves around the model, per run.

    ``approvals`` is ``"auto"``, ``"commands"`` or ``"changes"`` (see
    :func:`agents.tools.needs_approval`). ``check_command`` runs (``bash -c`` in the worktree)
    before a finish is accepted whenever files changed since the last passing check; Python
    files changed since ``base_commit`` are always syntax-checked. ``base_commit`` is the commit
    the card's branch started from (for show_diff and the checks; ``HEAD`` when None).
    ``toolbox`` offers extra tools (an :class:`agents.mcp_tools.McpToolbox` or anything with
    ``schemas()``, ``owns(name)`` and ``call(name, arguments) -> (text, is_error)``).
    ``context_window`` is the model's window in tokens; the conversation is kept under about
    80 % of it (None: not trimmed). ``check_timeout`` is in seconds. ``time_left`` (seconds,
    set by :func:`run` from the time budget) caps the timeout of commands and checks, so a
    long command cannot outlast the budget. ``sandbox`` is the argv prefix that wraps every
    command and check (:func:`agents.sandbox.bwrap_prefix`; empty: none).
    """

    approvals: str = "auto"
    check_command: str = ""
    base_commit: str | None = None
    toolbox: Any = None
    context_window: int | None = None
    check_timeout: float = 600.0
    time_left: float | None = None  # seconds of the time budget left; caps commands and checks
    sandbox: tuple[str, ...] = ()


@dataclass
class AgentResult:
    """How a :func:`run` ended.

    ``state`` is ``"succeeded"``, ``"failed"``, ``"stopped"`` or ``"waiting"`` (a tool call, a
    question or a plan waits for the lead: ``pending`` says which; store the state, and call
    :func:`decide` then :func:`run` again once the lead has answered). ``summary`` is the
    agent's own summary (set when it finished); ``error`` is a short human reason when it did
    not succeed (empty otherwise).
    """

    state: str
    summary: str
    error: str
    pending: dict | None = None


# --------------------------------------------------------------------------- state


def new_state(title: str, prompt: str, *, read_only: bool = False) -> dict:
    """Return the initial state of a run for a card with ``title`` and ``prompt``.

    The state is a JSON-serialisable dict: ``{"messages": [system, user], "steps": 0,
    "done": False, "summary": "", "nudged": False, "read_only": bool, "last_action": "",
    "queue": [], "pending": None, "seconds": 0.0, "usage": {"prompt_tokens": 0,
    "completion_tokens": 0, "cost": 0.0}}``. ``messages`` follow the OpenAI chat format;
    ``queue`` holds the tool calls of the last answer not yet carried out; ``pending`` the one
    waiting for the lead; ``seconds`` the agent's working time (waits excluded).
    ``read_only=True`` is plan mode: only the read-only tools are offered, and the plan the
    model finishes with waits for the lead's approval. Unknown keys are kept by :func:`step`.
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
        "queue": [],
        "pending": None,
        "seconds": 0.0,
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0},
    }


def follow_up(state: dict, text: str, *, read_only: bool | None = None) -> dict:
    """A copy of a finished (or ended) run's ``state`` that goes on with the lead's ``text`` as a
    new user message, in the same conversation: done, pending and queued calls are cleared (a
    call left queued gets a "skipped" result so the conversation stays well-formed).
    ``read_only`` switches plan mode on or off (None keeps it)."""
    state = copy.deepcopy(state)
    messages = state.setdefault("messages", [])
    for call in state.get("queue") or []:
        messages.append(_tool_message(call, "skipped: the run ended before this tool call"))
    if read_only is not None and bool(read_only) != bool(state.get("read_only")):
        state["read_only"] = bool(read_only)
        if messages and messages[0].get("role") == "system":
            messages[0] = {"role": "system", "content": PLAN_PROMPT if read_only else SYSTEM_PROMPT}
    messages.append({"role": "user", "content": text.strip() or "Go on with the task."})
    state.update(done=False, summary="", nudged=False, queue=[], pending=None)
    return state


def decide(state: dict, approved: bool, text: str = "") -> dict:
    """A copy of ``state`` with the lead's decision on its pending call: ``approved`` with
    ``text`` (the answer to a question, or the plan as the lead edited it), or denied with
    ``text`` as the reason. The next :func:`step` carries it out. Raises ValueError when
    nothing is pending."""
    state = copy.deepcopy(state)
    pending = state.get("pending")
    if not pending:
        raise ValueError("nothing is waiting for a decision")
    pending["decision"] = {"approved": bool(approved), "text": text}
    return state


def usage_line(usage: dict) -> str:
    """``"1200 prompt + 80 completion tokens, $0.0012"`` (the cost only when known)."""
    line = f"{usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} completion tokens"
    return line + (f", ${usage['cost']:.4f}" if usage.get("cost") else "")


def _shorten(text: str, limit: int = LOG_LIMIT) -> str:
    return cap_middle(text, limit // 2, limit // 2)


def _tool_message(call: dict, content: str) -> dict:
    return {"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"], "content": content}


# --------------------------------------------------------------------------- context window

# Characters a token, on the safe side for code: litellm's tokenizers would download vocabularies.
CHARS_PER_TOKEN = 3
KEEP_RECENT = 6  # newest messages never shortened


def estimate_tokens(messages: list[dict]) -> int:
    """A conservative token count of ``messages`` (JSON characters / 3), without a tokenizer."""
    return len(json.dumps(messages, ensure_ascii=False)) // CHARS_PER_TOKEN + 1


def fit_context(messages: list[dict], window: int | None, reserve: int = 2048) -> int:
    """Shorten ``messages`` in place until they fit in ``window`` tokens less ``reserve`` (for the
    answer) and 20 % margin; returns how many messages were shortened. Old tool outputs go first,
    then the long arguments of old tool calls (a file written whole), then old assistant text; the system prompt, the task and the newest messages are kept whole,
    and no message is removed (tool results must answer their calls)."""
    if not window:
        return 0
    budget = max(int(window * 0.8) - reserve, window // 4)
    if estimate_tokens(messages) <= budget:
        return 0
    shortened = 0
    candidates = [i for i in range(2, max(2, len(messages) - KEEP_RECENT))]
    for roles in (("tool",), ("calls",), ("assistant", "user")):
        for i in candidates:
            message = messages[i]
            if roles == ("calls",):
                if not _shorten_arguments(message):
                    continue
            else:
                content = message.get("content")
                if message.get("role") not in roles or not isinstance(content, str) or len(content) <= 300:
                    continue
                message["content"] = f"{content[:200]}\n{TRIMMED}"
            shortened += 1
            if estimate_tokens(messages) <= budget:
                return shortened
    return shortened


def _shorten_arguments(message: dict) -> bool:
    """Shorten the long string arguments of an old assistant message's tool calls in place (a
    file written whole, say), keeping them valid JSON; True when something was shortened."""
    changed = False
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        raw = function.get("arguments")
        if not isinstance(raw, str) or len(raw) <= 300:
            continue
        try:
            arguments = json.loads(raw)
        except json.JSONDecodeError:
            arguments = None
        if isinstance(arguments, dict):
            arguments = {k: f"{v[:100]} {TRIMMED}" if isinstance(v, str) and len(v) > 200 else v
                         for k, v in arguments.items()}
        else:
            arguments = {"shortened": TRIMMED}
        function["arguments"] = json.dumps(arguments, ensure_ascii=False)
        changed = changed or len(function["arguments"]) < len(raw)
    return changed


# --------------------------------------------------------------------------- change detection


def _tree_fingerprint(root: Path) -> str | None:
    """The tree git would commit after ``git add -A`` (ignored files excluded), or None.

    It does not move when the caller commits, so two fingerprints differ exactly when files
    changed in between."""
    out = temp_index_git(root, "write-tree")
    return out.strip() if out else None


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
    options: LoopOptions | None = None,
) -> tuple[dict, bool]:
    """Take one step: one model call, then the tool calls of its answer, in order.

    ``state`` is a dict from :func:`new_state` or a previous step; it is not modified. Returns
    ``(new_state, changed_files)``: ``new_state`` has the answer and the tool results appended,
    ``steps`` increased by one, ``done``/``summary`` set when the model called ``finish`` (and
    the checks passed; or it answered twice running without a tool call: a plain answer gets
    one nudge, a second ends the run with its text as the summary), ``last_action`` a short
    description, ``usage`` accumulated; ``changed_files`` is True when the worktree's content
    (tracked and untracked files, not ignored ones) differs from before the step.

    A call that needs the lead (see :class:`LoopOptions`, ``ask_lead``, or finish in plan mode)
    stops the step: ``new_state["pending"]`` describes it (``{"id", "kind": "approval" |
    "question" | "plan", "tool", "title", "detail", "decision": None}``) and the calls after
    it stay in ``new_state["queue"]``. Once :func:`decide` has filled in the decision, the next
    step goes on with those calls before asking the model anything.

    ``emit(kind, text, data=None)`` receives ``"step"`` (one line per tool call, data ``{"tool"}``),
    ``"log"`` (model text and tool output, shortened to a few KB), ``"usage"`` (data
    ``{"prompt_tokens", "completion_tokens", "cost"}``, cost in US dollars, 0 when unknown),
    ``"check"`` (data ``{"passed"}``) and ``"approval"`` (data: the pending dict).
    ``extra_env`` is added to the environment of commands; ``should_stop()`` is polled while a
    command runs and, when true, kills it and skips the remaining tool calls of the step.
    Raises :class:`ModelError` when the model cannot be called, and
    :class:`agents.llm.CallStopped` when ``should_stop()`` turned true during the model call
    (the state is then unchanged either way).
    """
    root = Path(root)
    options = options or LoopOptions()
    state = copy.deepcopy(state)
    messages: list[dict] = state.setdefault("messages", [])
    before = _tree_fingerprint(root)
    state.setdefault("checked_tree", before)

    if not state.get("queue"):
        pending = state.get("pending")
        if pending and pending.get("decision") is not None and pending.get("id") is None:
            # The plan came as plain text (no call to answer): the decision goes in as a message.
            output, _, _ = _apply_decision(state, None, pending, pending["decision"], root, emit, extra_env,
                                           should_stop, options, [], pending.get("title", ""), False)
            messages.append({"role": "user", "content": output})
        state["pending"] = None
        messages.extend({"role": "user", "content": note} for note in state.pop("notes", []))
        shortened = fit_context(messages, options.context_window)
        if shortened:
            emit("log", f"Shortened {shortened} old message(s) to stay within the model's context window.",
                 {"source": "agent"})
        schemas = list(READ_ONLY_TOOL_SCHEMAS if state.get("read_only") else TOOL_SCHEMAS)
        if options.toolbox is not None and not state.get("read_only"):
            schemas += options.toolbox.schemas()
        step_no = int(state.get("steps", 0)) + 1
        answer, usage = complete(messages, config, schemas, step_no, should_stop=should_stop)
        messages.append(answer)
        state["steps"] = step_no
        totals = state.setdefault("usage", {"prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0})
        for key in ("prompt_tokens", "completion_tokens", "cost"):
            totals[key] = totals.get(key, 0) + usage[key]
        emit("usage", usage_line(usage), usage)

        text = (answer.get("content") or "").strip()
        if text:
            emit("log", _shorten(text), {"source": "model"})
        calls = answer.get("tool_calls") or []
        if not calls:
            if state.get("nudged"):
                _end_without_tool(state, text, root, emit, extra_env, should_stop, options)
            else:
                state["nudged"] = True
                messages.append({"role": "user", "content": NUDGE})
                state["last_action"] = "answered without a tool call"
                emit("log", "The model answered without a tool call; asked it to use the tools or finish.",
                     {"source": "agent"})
            return state, False
        state["nudged"] = False
        # A copy: carrying calls out pops the queue, and the answer must keep every call it made.
        state["queue"] = [dict(call) for call in calls]

    actions = _carry_out(state, root, emit, extra_env, should_stop, options)
    if actions:
        state["last_action"] = _join_actions(actions)
    after = _tree_fingerprint(root)
    if before is None or after is None:
        # Not a git worktree: fall back to what the tools were asked to do.
        return state, any(a.split(" ", 1)[0].rstrip(":") in _WRITING_TOOLS for a in actions)
    return state, after != before


def _end_without_tool(state, text, root, emit, extra_env, should_stop, options) -> None:
    """A second plain answer in a row: it ends the run like a finish, with the same rules. In plan
    mode the text is the plan, put to the lead; otherwise the checks must pass first."""
    state["nudged"] = False
    if state.get("read_only"):
        state["pending"] = {"id": None, "kind": "plan", "tool": "finish", "title": "Plan ready for review",
                            "detail": text or "(the model wrote no plan)", "decision": None}
        emit("approval", "Plan ready for review", state["pending"])
        return
    passed, report = _run_checks(state, root, emit, extra_env, should_stop, options)
    if not passed:
        state["messages"].append({"role": "user", "content": CHECK_FAILED.format(output=report)})
        state["last_action"] = "checks failed"
        return
    state["done"] = True
    state["summary"] = text or "The agent ended without a summary."
    state["last_action"] = "ended without a tool call"


def add_note(state: dict, text: str) -> dict:
    """A copy of ``state`` that tells the model ``text`` (as a user message) before its next
    answer: at once when no tool call is waiting for its result, else once the queued calls are
    answered, as a conversation must not put a message between a call and its result."""
    state = copy.deepcopy(state)
    if state.get("queue"):
        state.setdefault("notes", []).append(text)
    else:
        state.setdefault("messages", []).append({"role": "user", "content": text})
    return state


def _unpack(call: dict) -> tuple[str, str, Any]:
    """A queued call's tool name, raw arguments, and the arguments decoded (None when they are
    not JSON: the tool then sends the model the error)."""
    name, raw = call["function"]["name"], call["function"]["arguments"]
    try:
        return name, raw, json.loads(raw) if raw else {}
    except (json.JSONDecodeError, TypeError):
        return name, raw, None


def _carry_out(state, root, emit, extra_env, should_stop, options) -> list[str]:
    """Run the queued calls in order until the queue is empty or one waits for the lead."""
    messages = state["messages"]
    read_only = bool(state.get("read_only"))
    toolbox = options.toolbox
    actions: list[str] = []
    skip_reason = ""
    while state.get("queue"):
        call = state["queue"][0]
        name, raw, parsed = _unpack(call)
        description = describe_call(name, parsed)
        external = toolbox is not None and not read_only and toolbox.owns(name)
        pending = state.get("pending")
        decision = pending.get("decision") if pending and pending.get("id") == call["id"] else None

        if skip_reason:
            output, is_error = f"skipped: {skip_reason}", True
        elif decision is not None:
            state["pending"] = None
            output, is_error, skip_reason = _apply_decision(state, call, pending, decision, root, emit, extra_env,
                                                            should_stop, options, actions, description, external)
        else:
            waiting = _needs_lead(state, call, name, parsed, description, root, options, external)
            if waiting is not None:
                if "error" in waiting:
                    output, is_error = waiting["error"], True
                    emit("step", description, {"tool": name})
                    emit("log", _shorten(output), {"tool": name, "error": True})
                else:
                    state["pending"] = waiting
                    emit("approval", waiting["title"], waiting)
                    return actions
            else:
                emit("step", description, {"tool": name})
                actions.append(description)
                output, is_error, skip_reason = _execute(state, call, name, raw, parsed, root, emit, extra_env,
                                                         should_stop, options, external)
        state["queue"].pop(0)
        messages.append(_tool_message(call, output))
        if not skip_reason and should_stop is not None and should_stop():
            skip_reason = "the run was stopped"
    return actions


def _needs_lead(state, call, name, parsed, description, root, options, external) -> dict | None:
    """The pending entry when this call must wait for the lead; ``{"error": …}`` when it would
    fail anyway (so it is not put to the lead); None when it can go ahead."""
    base = {"id": call["id"], "tool": name, "title": description, "decision": None}
    if not isinstance(parsed, dict):
        return None  # malformed arguments: running it gives the model the error at once
    if name == "ask_lead":
        question = parsed.get("question")
        if isinstance(question, str) and question.strip():
            return {**base, "kind": "question", "detail": question.strip()}
        return None
    if name == "finish" and state.get("read_only"):
        plan = parsed.get("summary")
        if isinstance(plan, str) and plan.strip():
            return {**base, "kind": "plan", "title": "Plan ready for review", "detail": plan.strip()}
        return None
    if state.get("read_only") or not needs_approval(name, options.approvals, external=external):
        return None
    if name in ("write_file", "edit_file"):
        try:
            detail = preview_change(root, name, parsed)
        except ToolError as exc:
            return {"error": f"error: {exc}"}
    elif name == "run_command":
        detail = str(parsed.get("command", ""))
        if not detail.strip():
            return None
    else:
        detail = json.dumps(parsed, indent=2, ensure_ascii=False)[:4000]
    return {**base, "kind": "approval", "detail": detail}


def _apply_decision(state, call, pending, decision, root, emit, extra_env, should_stop, options, actions,
                    description, external) -> tuple[str, bool, str]:
    approved, text = bool(decision.get("approved")), str(decision.get("text") or "").strip()
    kind = pending.get("kind")
    if kind == "question":
        emit("step", f"The lead answered: {_shorten(text, 200)}", {"tool": "ask_lead"})
        return ANSWERED.format(answer=text or "(no answer)"), False, ""
    if kind == "plan":
        if not approved:
            emit("step", f"The lead asked for another plan: {_shorten(text, 200)}", {"tool": "finish"})
            return PLAN_REVISE.format(reason=text or "no reason given"), False, ""
        plan = text or str(pending.get("detail") or "")
        state["read_only"] = False
        messages = state["messages"]
        if messages and messages[0].get("role") == "system":
            messages[0] = {"role": "system", "content": SYSTEM_PROMPT}
        state["plan"] = plan
        emit("step", "The lead approved the plan; acting on it", {"tool": "finish"})
        return PLAN_APPROVED.format(plan=plan), False, ""
    if not approved:
        emit("step", f"Denied by the lead: {description}" + (f" ({_shorten(text, 200)})" if text else ""),
             {"tool": pending.get("tool")})
        return DENIED.format(reason=text or "none given"), True, ""
    emit("step", f"Approved: {description}", {"tool": pending.get("tool")})
    actions.append(description)
    name, raw, parsed = _unpack(call)
    return _execute(state, call, name, raw, parsed, root, emit, extra_env, should_stop, options, external)


def _execute(state, call, name, raw, parsed, root, emit, extra_env, should_stop, options, external):
    """Run one call; returns ``(output, is_error, skip_reason)``."""
    read_only = bool(state.get("read_only"))
    if external:
        output, is_error = options.toolbox.call(name, parsed if isinstance(parsed, dict) else {})
    else:
        output, is_error = execute_tool(
            root, name, raw, extra_env=extra_env, should_stop=should_stop,
            allowed=READ_ONLY_TOOLS if read_only else None, base=options.base_commit,
            max_timeout=options.time_left, sandbox=options.sandbox,
        )
    if name == "finish" and not is_error:
        passed, report = (True, "") if read_only else _run_checks(state, root, emit, extra_env, should_stop, options)
        if not passed:
            return CHECK_FAILED.format(output=report), True, ""
        state["done"] = True
        state["summary"] = output
        return "Finished.", False, "finish was called before this tool call"
    if name == "ask_lead" and not is_error:
        output = "error: question must be a non-empty string"
        is_error = True
    emit("log", _shorten(output), {"tool": name, "error": is_error})
    return output, is_error, ""


def _run_checks(state, root, emit, extra_env, should_stop, options) -> tuple[bool, str]:
    """Syntax-check changed Python files and run the check command, when files changed since the
    last passing check. Returns ``(passed, report)`` and records ``state["check"]``."""
    tree = _tree_fingerprint(root)
    if tree is not None and tree == state.get("checked_tree") and state.get("check", {}).get("passed", True):
        return True, ""
    problems = syntax_errors(root, changed_paths(root, options.base_commit))
    report = ""
    if problems:
        report = "Python syntax errors:\n" + "\n".join(problems[:50])
    elif options.check_command.strip():
        emit("step", f"Check: $ {options.check_command}", {"tool": "check"})
        timeout = min(options.check_timeout, options.time_left or options.check_timeout)
        code, output = run_shell(root, options.check_command, timeout, extra_env=extra_env, should_stop=should_stop,
                                 sandbox=options.sandbox)
        if code != 0:
            report = f"The check command `{options.check_command}` failed:\n{output}"
    passed = not report
    state["check"] = {"passed": passed, "command": options.check_command, "output": _shorten(report, 2000)}
    if passed:
        state["checked_tree"] = tree
    emit("check", "Checks passed" if passed else _shorten(report), {"passed": passed})
    return passed, report


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
    options: LoopOptions | None = None,
) -> AgentResult:
    """Run :func:`step` until the agent finishes, fails, is stopped, or waits for the lead.

    After every step ``save_state(state)`` is called with the new state (store it: passing it
    back here resumes the run), then, if the step changed files, ``checkpoint("Step <n>:
    <short description>")`` (the caller commits). Ends with:

    - ``succeeded`` and the agent's summary when it finishes (a state already done returns at once);
    - ``waiting`` with ``pending`` when a call waits for the lead (see :func:`step`);
    - ``stopped`` as soon as ``should_stop()`` is true between steps (it is also polled during
      commands, which it kills), or when a budget is reached: ``config.max_steps`` model calls,
      ``config.max_cost`` US dollars or ``config.max_seconds`` of working time, each counted from
      ``state["budget_base"]`` (``{"steps", "cost", "seconds"}``, set by the caller when a new
      run begins; zero when absent), so a follow-up gets a fresh budget;
    - ``failed`` with the :class:`ModelError` reason.

    Exceptions raised by the callbacks propagate.
    """
    root = Path(root)
    base = state.get("budget_base") or {}
    while True:
        if state.get("done"):
            return AgentResult("succeeded", state.get("summary", ""), "")
        pending = state.get("pending")
        if pending and pending.get("decision") is None:
            return AgentResult("waiting", "", "", pending)
        if should_stop():
            return AgentResult("stopped", "", "stopped on request")
        steps = int(state.get("steps", 0)) - int(base.get("steps", 0))
        spent = float((state.get("usage") or {}).get("cost", 0.0) or 0.0) - float(base.get("cost", 0.0))
        seconds = float(state.get("seconds", 0.0)) - float(base.get("seconds", 0.0))
        if not state.get("queue"):
            # A step under way (calls queued after an approval) is always completed.
            if steps >= config.max_steps:
                return AgentResult("stopped", "", f"step budget of {config.max_steps} reached")
            if config.max_cost is not None and spent >= config.max_cost:
                return AgentResult("stopped", "", f"cost budget of ${config.max_cost:g} reached (spent ${spent:.4f})")
            if config.max_seconds is not None and seconds >= config.max_seconds:
                return AgentResult("stopped", "", f"time budget of {config.max_seconds / 60:g} min reached")
        started = time.monotonic()
        if options is not None and config.max_seconds is not None:
            options.time_left = max(1.0, config.max_seconds - seconds)
        try:
            state, changed = step(state, root, config, emit, extra_env, should_stop=should_stop, options=options)
        except ModelError as exc:
            return AgentResult("failed", "", str(exc))
        except CallStopped:
            return AgentResult("stopped", "", "stopped on request")
        state["seconds"] = float(state.get("seconds", 0.0)) + (time.monotonic() - started)
        save_state(state)
        if changed:
            checkpoint(f"Step {state['steps']}: {state.get('last_action') or 'changes'}")
