"""Calls to a language model through litellm, one answer at a time.

:func:`complete` makes one chat call with tools and returns the answer as a plain dict; every
failure becomes a :class:`ModelError` with a short reason fit for a card. litellm is imported
only inside the functions that call it, because importing it costs seconds and hundreds of MB.
This module knows nothing of Django, of the board or of the tools.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelConfig", "ModelError", "complete"]

REASON_LIMIT = 300  # characters of a provider's error message kept in a ModelError
RETRY_BASE_WAIT = 1.0  # seconds before the first retry of a passing failure; doubles after
RETRY_MAX_WAIT = 30.0


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



class ModelError(Exception):
    """The model could not be called; ``str(e)`` is a short human reason fit for a card.

    Examples: ``"could not connect to the model endpoint http://127.0.0.1:9/v1 (connection
    refused)"``, ``"the model call timed out after 5 s"``, ``"authentication failed: <provider
    message>"``. The litellm exception, if any, is chained as ``__cause__``.
    """


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


def complete(messages: list[dict], config: ModelConfig, tools: list[dict], step_no: int = 1) -> tuple[dict, dict]:
    """One model answer to ``messages`` (OpenAI chat format) with ``tools`` (OpenAI tool schemas).

    Returns ``(answer, usage)``: ``answer`` is a JSON-serialisable assistant message
    ``{"role": "assistant", "content": str | None, "tool_calls": [...]}`` (``tool_calls``
    only when there are some; each has an ``id``, made up from ``step_no`` when the server
    sent none, and ``function.arguments`` as a string, possibly not valid JSON); ``usage`` is
    ``{"prompt_tokens": int, "completion_tokens": int, "cost": float}``, cost in US dollars from
    litellm's own price list (0 for models it does not know). Raises :class:`ModelError`.
    """
    response = _call_model(messages, config, tools)
    return _assistant_message(response, step_no), _usage(response)
