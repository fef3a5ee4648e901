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
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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
REASON_LIMIT = 300  # characters of a provider's error message kept in a ModelError
RETRY_BASE_WAIT = 1.0  # seconds before the first retry of a passing failure; doubles after
RETRY_MAX_WAIT = 30.0

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
class ModelConfig:
    """Which model to call and how.

    ``model`` is any litellm model string (``"openai/gpt-4o-mini"``,
    ``"ollama_chat/qwen2.5-coder"``, ``"anthropic/claude-…"``). ``api_base`` overrides the
    provider's endpoint URL. ``api_key_env`` is the *name* of the environment variable that
    holds the key, read at call time; ``None`` passes no key (litellm then falls back to the
    provider's usual variable, if any; an ``openai/…`` model with an ``api_base`` and no
    ``OPENAI_API_KEY`` gets a placeholder key, as local OpenAI-compatible servers need none
    but the openai client insists on one). ``timeout`` is in seconds per model call; ``max_steps``
    caps model calls per run; ``num_retries`` is how often a call that failed for a passing
    reason (429, 5xx, refused or dropped connection) is retried, with exponential backoff or
    the server's Retry-After — never a timeout, a bad key or a bad request.
    ``max_cost`` (US dollars, litellm's accounting, whole conversation) and ``max_seconds``
    (wall time of one :func:`run` call) are optional budgets; ``None`` means none.
    """

    model: str
    api_base: str | None = None
    api_key_env: str | None = None
    timeout: float = 120.0
    max_steps: int = 40
    num_retries: int = 2
    max_cost: float | None = None
    max_seconds: float | None = None


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


class ModelError(Exception):
    """The model could not be called; ``str(e)`` is a short human reason fit for a card.

    Examples: ``"could not connect to the model endpoint http://127.0.0.1:9/v1 (connection
    refused)"``, ``"the model call timed out after 5 s"``, ``"authentication failed: <provider
    message>"``. The litellm exception, if any, is chained as ``__cause__``.
    """


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


def _provider_message(exc: BaseException) -> str:
    """The provider's own words from a litellm exception, without litellm's prefixes."""
    text = str(getattr(exc, "message", "") or exc or type(exc).__name__)
    # litellm wraps messages as "litellm.AuthenticationError: AuthenticationError: OpenAIException - …"
    text = re.sub(r"^(litellm\.)?\w+(Error|Exception|Timeout)\s*:\s*", "", text.strip())
    text = re.sub(r"^(litellm\.)?\w+(Error|Exception|Timeout)\s*:\s*", "", text)
    text = re.sub(r"^\w+Exception\s*-\s*", "", text)
    text = re.sub(r"\s+", " ", text).strip()
    # Error bodies often are JSON; the "message" inside is the readable part.
    found = re.search(r"""['"]message['"]\s*:\s*['"]((?:[^'"\\]|\\.)+)['"]""", text)
    if found:
        text = found.group(1)
    if len(text) > REASON_LIMIT:
        text = text[: REASON_LIMIT - 1] + "…"
    return text or type(exc).__name__


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes: litellm wraps the openai error that wraps the httpx one."""
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not seen for seen in out):
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _is_timeout(exc: BaseException) -> bool:
    import httpx
    import openai
    from litellm import exceptions as lx

    return any(isinstance(e, (lx.Timeout, openai.APITimeoutError, httpx.TimeoutException, TimeoutError))
               for e in _chain(exc))


def _is_connection_failure(exc: BaseException) -> bool:
    import httpx
    import openai
    from litellm import exceptions as lx

    # litellm reports a refused connection to an OpenAI-compatible server as an HTTP 500
    # "InternalServerError"; the cause chain tells the truth.
    return any(
        isinstance(e, (lx.APIConnectionError, openai.APIConnectionError, httpx.TransportError, ConnectionError, OSError))
        and not isinstance(e, (openai.APITimeoutError, httpx.TimeoutException, TimeoutError))
        for e in _chain(exc)
    )


def _connection_reason(exc: BaseException) -> str:
    text = " ".join(str(e).lower() for e in _chain(exc))
    for needle, reason in (
        ("connection refused", "connection refused"),
        ("name or service not known", "host name not found"),
        ("nodename nor servname", "host name not found"),
        ("temporary failure in name resolution", "host name not found"),
        ("no route to host", "no route to host"),
        ("network is unreachable", "network unreachable"),
        ("certificate", "TLS certificate problem"),
        ("ssl", "TLS error"),
        ("connection reset", "connection reset"),
        ("server disconnected", "the server closed the connection"),
    ):
        if needle in text:
            return reason
    return _provider_message(exc)


def _to_model_error(exc: Exception, config: ModelConfig) -> ModelError:
    """Map a litellm (or openai, or httpx) exception to a ModelError with a short reason."""
    from litellm import exceptions as lx  # already imported by the caller; cheap here

    msg = _provider_message(exc)
    status = getattr(exc, "status_code", None)
    if _is_timeout(exc):
        reason = f"the model call timed out after {config.timeout:g} s"
    elif isinstance(exc, lx.AuthenticationError):
        reason = f"authentication failed: {msg}"
    elif isinstance(exc, lx.PermissionDeniedError):
        reason = f"permission denied by the provider: {msg}"
    elif isinstance(exc, lx.NotFoundError):
        reason = f"model or endpoint not found ({config.model}): {msg}"
    elif isinstance(exc, lx.ContextWindowExceededError):
        reason = "the conversation no longer fits in the model's context window"
    elif isinstance(exc, lx.ContentPolicyViolationError):
        reason = f"the provider refused the content: {msg}"
    elif isinstance(exc, lx.RateLimitError):
        reason = f"rate limited by the provider: {msg}"
    elif isinstance(exc, lx.BadRequestError):
        reason = f"the model endpoint rejected the request: {msg}"
    elif _is_connection_failure(exc):
        where = config.api_base or f"of {config.model}"
        reason = f"could not connect to the model endpoint {where} ({_connection_reason(exc)})"
    elif isinstance(exc, (lx.ServiceUnavailableError, lx.InternalServerError, lx.BadGatewayError)):
        code = f" (HTTP {status})" if status else ""
        reason = f"the model endpoint failed{code}: {msg}"
    elif isinstance(exc, lx.APIError) and status:
        reason = f"the model endpoint answered HTTP {status}: {msg}"
    else:
        reason = f"the model call failed: {type(exc).__name__}: {msg}"
    error = ModelError(reason)
    error.__cause__ = exc
    return error


def _is_transient(exc: Exception) -> bool:
    """Worth another try: 429, 5xx, a refused or dropped connection. Not timeouts (each costs
    ``config.timeout`` again), not bad keys, bad requests or missing models."""
    from litellm import exceptions as lx

    if _is_timeout(exc):
        return False
    if isinstance(exc, (lx.RateLimitError, lx.ServiceUnavailableError, lx.InternalServerError, lx.BadGatewayError)):
        return True
    if isinstance(exc, (lx.AuthenticationError, lx.PermissionDeniedError, lx.NotFoundError, lx.BadRequestError)):
        return False
    status = getattr(exc, "status_code", None)
    return (isinstance(status, int) and status >= 500) or _is_connection_failure(exc)


def _retry_after(exc: Exception, attempt: int) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): the server's Retry-After, else backoff."""
    headers = getattr(exc, "litellm_response_headers", None) or getattr(
        getattr(exc, "response", None), "headers", None
    )
    try:
        wanted = float((headers or {}).get("retry-after"))
        return min(max(wanted, 0.0), RETRY_MAX_WAIT)
    except (TypeError, ValueError, AttributeError):
        return min(RETRY_BASE_WAIT * 2 ** (attempt - 1), RETRY_MAX_WAIT)


def _call_model(messages: list[dict], config: ModelConfig, tools: list[dict]) -> Any:
    """One litellm.completion call, retried on passing failures; raises ModelError."""
    api_key = None
    if config.api_key_env:
        api_key = os.environ.get(config.api_key_env)
        if not api_key:
            raise ModelError(f"the API key variable {config.api_key_env} is not set in the environment")

    # Without it litellm fetches its price list from the internet at import time.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners in worker logs

    if api_key is None and config.api_base and config.model.startswith("openai/") and not os.environ.get(
        "OPENAI_API_KEY"
    ):
        # A local OpenAI-compatible server (llama.cpp, vLLM, LM Studio) needs no key, but
        # the openai client refuses to start without one.
        api_key = "no-key"
    attempt = 0
    while True:
        try:
            # Retries are ours, not litellm's: its num_retries needs tenacity (not installed)
            # and stacks on top of the openai client's own retries. num_retries=0 turns both off.
            return litellm.completion(
                model=config.model,
                messages=messages,
                tools=tools,
                tool_choice="auto",
                api_base=config.api_base,
                api_key=api_key,
                timeout=config.timeout,
                num_retries=0,
            )
        except Exception as exc:  # noqa: BLE001 - every provider failure becomes one short reason
            attempt += 1
            if attempt <= config.num_retries and _is_transient(exc):
                time.sleep(_retry_after(exc, attempt))
                continue
            raise _to_model_error(exc, config) from exc


def _usage(response: Any) -> dict:
    usage = getattr(response, "usage", None)
    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    cost = 0.0
    try:
        import litellm

        cost = float(litellm.completion_cost(completion_response=response) or 0.0)
    except Exception:  # noqa: BLE001 - unknown models have no price; cost stays 0
        hidden = getattr(response, "_hidden_params", None) or {}
        try:
            cost = float(hidden.get("response_cost") or 0.0)
        except (TypeError, ValueError):
            cost = 0.0
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "cost": cost}


def _assistant_message(response: Any, step_no: int) -> dict:
    """The answer as a plain JSON-serialisable dict (role, content, tool_calls)."""
    try:
        message = response.choices[0].message
    except (AttributeError, IndexError, TypeError):
        raise ModelError("the model returned no answer (empty choices)") from None
    content = getattr(message, "content", None)
    if content is not None and not isinstance(content, str):
        content = str(content)
    calls = []
    for i, call in enumerate(getattr(message, "tool_calls", None) or []):
        function = getattr(call, "function", None)
        name = getattr(function, "name", None) or ""
        arguments = getattr(function, "arguments", None)
        if arguments is None:
            arguments = "{}"
        elif not isinstance(arguments, str):
            # Some providers hand back an object; the conversation must hold a JSON string.
            arguments = json.dumps(arguments)
        calls.append(
            {
                # Some local servers send no ids; tool results must point at one.
                "id": getattr(call, "id", None) or f"call_{step_no}_{i}",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        )
    out: dict = {"role": "assistant", "content": content}
    if calls:
        out["tool_calls"] = calls
    return out


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

    response = _call_model(messages, config, schemas)
    step_no = int(state.get("steps", 0)) + 1
    answer = _assistant_message(response, step_no)
    messages.append(answer)
    state["steps"] = step_no

    usage = _usage(response)
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
