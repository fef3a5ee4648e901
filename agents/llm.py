"""Calls to a language model through litellm, one answer at a time.

:func:`complete` makes one chat call with tools and returns the answer as a plain dict; every
failure becomes a :class:`ModelError` with a short reason fit for a card. :func:`check_model`
makes one small call for a settings page's Test button. litellm is imported only inside the
functions that call it, because importing it costs seconds and hundreds of MB. This module
knows nothing of Django, of the board or of the tools.

How a call is bounded: the HTTP work of one attempt runs in a daemon thread while the caller
waits on a queue until ``config.timeout`` has passed. httpx's own timeouts are per read, so a
server that sends a keep-alive byte every second would hold a plain call forever; at the
deadline the caller shuts the attempt's socket down, which wakes the thread at once.
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["ModelConfig", "ModelError", "CallStopped", "complete", "check_model", "context_window"]

REASON_LIMIT = 300  # characters of a provider's error message kept in a ModelError
RETRY_BASE_WAIT = 1.0  # seconds before the first retry of a passing failure; doubles after
RETRY_MAX_WAIT = 30.0
SNIPPET_LIMIT = 100  # characters of a non-OpenAI body quoted in a ModelError
NOT_OPENAI = (
    "the model endpoint answered with something that is not an OpenAI-compatible response "
    "(is the API base right? it should usually end in /v1)"
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
    but the openai client insists on one). ``timeout`` is in seconds and bounds the whole of
    one model call, streamed or not, from sending the request to the last byte (each retry
    gets its own). ``max_steps`` caps model calls per run; ``num_retries`` is how often a
    call that failed for a passing reason (429, 5xx, refused or dropped connection) is
    retried, with exponential backoff or the server's Retry-After — never a timeout, a bad
    key or a bad request.
    ``max_cost`` (US dollars, litellm's accounting, whole conversation) and ``max_seconds``
    (wall time of one :func:`run` call) are optional budgets; ``None`` means none.
    ``stream`` (the default) has the answer streamed, as local servers and proxies that cut
    long silent requests need; ``on_text`` callers get the text as it arrives. Turn it off for
    a server that cannot stream tool calls, and for litellm's own mocking, which drops
    ``mock_tool_calls`` from a mocked stream.
    """

    model: str
    api_base: str | None = None
    api_key_env: str | None = None
    timeout: float = 120.0
    max_steps: int = 40
    num_retries: int = 2
    max_cost: float | None = None
    max_seconds: float | None = None
    stream: bool = True


class CallStopped(Exception):
    """The caller's ``should_stop()`` turned true while the model call ran; the call was
    abandoned (its connection closed) and nothing of its answer is kept."""


class ModelError(Exception):
    """The model could not be called; ``str(e)`` is a short human reason fit for a card.

    Examples: ``"could not connect to the model endpoint http://127.0.0.1:9/v1 (connection
    refused)"``, ``"the model call timed out after 5 s"``, ``"authentication failed: <provider
    message>"``, ``"the model endpoint answered with something that is not an OpenAI-compatible
    response (…): <html>…"``. The litellm exception, if any, is chained as ``__cause__``.
    """


class _Failed(Exception):
    """Carries a provider failure out of an attempt, apart from the caller's own exceptions
    (an ``on_text`` that raises), which must pass through the retry loop untouched."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _NotOpenAI(Exception):
    """The endpoint answered 200 with a body that is no chat completion; ``snippet`` starts it."""

    def __init__(self, snippet: str | None) -> None:
        super().__init__(snippet or "")
        self.snippet = snippet


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
    if isinstance(exc, _NotOpenAI):
        reason = f"{NOT_OPENAI}: {exc.snippet}" if exc.snippet else NOT_OPENAI
    elif _is_timeout(exc):
        reason = f"the model call timed out after {config.timeout:g} s"
    elif isinstance(exc, (lx.AuthenticationError, lx.PermissionDeniedError)) or status in (401, 403):
        # 401 and 403 alike: a key that is wrong or lacks access; the provider says which.
        # (litellm maps an OpenAI-compatible server's 403 to a plain APIError.)
        reason = f"authentication failed: {msg}"
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
    # A provider may echo the key it was given (a wrong key, a URL with it); the reason reaches
    # cards, logs and the Models page, so no secret value of the environment stays in it.
    from agents.secrets import redactor

    error = ModelError(redactor(config.api_key_env).text(reason))
    error.__cause__ = exc
    return error


def _is_transient(exc: Exception) -> bool:
    """Worth another try: 429, 5xx, a refused or dropped connection. Not timeouts (each costs
    ``config.timeout`` again), not bad keys, bad requests or missing models."""
    from litellm import exceptions as lx

    if isinstance(exc, _NotOpenAI) or _is_timeout(exc):
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


def _litellm() -> Any:
    """litellm, imported on first use and set up for this module (see _watch_http_client)."""
    # Without it litellm fetches its price list from the internet at import time.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners in worker logs
    _watch_http_client(litellm)
    return litellm


# ---------------------------------------------------------------------------- cutting a call off

_local = threading.local()  # .watch: the _Watch of the attempt running on this thread
_setup_lock = threading.Lock()


class _Watch:
    """The HTTP responses one attempt has open, so the caller can cut them off at its deadline.

    Only the socket is shut down from the caller's thread (a kernel call, safe from any
    thread; closing an httpx response there would race the attempt's thread inside it). The
    blocked read then ends at once and the attempt's thread closes the response itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._responses: list[Any] = []
        self.given_up = False
        self.last: Any = None  # the newest response, for the body of a non-OpenAI answer

    def add(self, response: Any) -> None:
        with self._lock:
            self.last = response
            if self.given_up:
                _shut(response)
            elif all(response is not seen for seen in self._responses):
                self._responses.append(response)

    def give_up(self) -> None:
        with self._lock:
            self.given_up = True
            for response in self._responses:
                # A closed response's connection may already serve another call from the pool.
                if not getattr(response, "is_closed", True):
                    _shut(response)

    def finish(self) -> None:
        with self._lock:
            self._responses.clear()


def _shut(response: Any) -> None:
    stream = (getattr(response, "extensions", None) or {}).get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        try:
            # socket.socket's own shutdown also for TLS sockets: SSLSocket's would first drop
            # its TLS state under the reading thread's feet.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


def _note_response(response: Any) -> None:
    """httpx response hook: hand the response of a watched attempt to its _Watch."""
    watch = getattr(_local, "watch", None)
    if watch is not None:
        watch.add(response)


def _watch_http_client(litellm: Any) -> None:
    """Give litellm's OpenAI-compatible calls an httpx client whose response hook tells us each
    response as soon as its headers arrive. litellm offers no per-call hook and the openai SDK
    reads a whole non-streamed body inside one call, so without this a body trickled a byte a
    second could not be cut off. ``litellm.client_session`` is litellm's own setting for it; a
    session someone else set keeps working, with our hook added. Other providers (anthropic,
    ollama_chat, …) use litellm's own clients: their streams are cut off through the stream's
    response when it exposes one; otherwise the caller still fails on time, but the abandoned
    thread reads on until httpx's read timeout (a stall) or the server's end (a trickle)."""
    with _setup_lock:
        client = litellm.client_session
        if client is None:
            import httpx

            try:
                from litellm.llms.custom_httpx.http_handler import get_ssl_configuration

                verify: Any = get_ssl_configuration()
            except Exception:  # noqa: BLE001 - an internal helper; httpx's default is sound
                verify = True
            client = httpx.Client(verify=verify, follow_redirects=True)
            litellm.client_session = client
        hooks = client.event_hooks
        if _note_response not in hooks.get("response", []):
            client.event_hooks = {**hooks, "response": [*hooks.get("response", []), _note_response]}


def _stream_response(result: Any) -> Any:
    """The httpx response under a litellm stream, when the provider's stream exposes it."""
    import httpx

    response = getattr(getattr(result, "completion_stream", None), "response", None)
    return response if isinstance(response, httpx.Response) else None


def _close_result(result: Any) -> None:
    for thing in (getattr(result, "completion_stream", None), _stream_response(result)):
        close = getattr(thing, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001 - closing after a failure may fail again; nothing lost
                pass


def _snippet(text: str | bytes | None) -> str | None:
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = re.sub(r"\s+", " ", text).strip()
    return text[:SNIPPET_LIMIT] if text else None


def _body(response: Any) -> str | bytes | None:
    """The body of an httpx response if it was read (never reads it: that could block)."""
    try:
        return response.content if response is not None else None
    except Exception:  # noqa: BLE001 - httpx.ResponseNotRead, or a response cut off
        return None


def _chat_completion(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("choices"), list)


def _unstreamed(litellm: Any, response: Any) -> Any:
    """An answer to a streamed request that is not an event stream: a server that ignores
    ``stream`` answers a whole chat completion (used as is); anything else, such as a proxy's
    HTML page, is a :class:`_NotOpenAI`. Without this litellm reads no events from it and
    quietly hands back an empty answer."""
    body = response.read()
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if _chat_completion(data):
        return litellm.ModelResponse(**data)
    raise _NotOpenAI(_snippet(body))


def _is_event_stream(response: Any) -> bool:
    kind = (response.headers.get("content-type") or "").lower()
    # Trust an unnamed or odd type; only a type that names another format is surely wrong.
    return not any(other in kind for other in ("html", "json", "xml"))


def _not_openai(exc: Exception, watch: _Watch) -> _NotOpenAI | None:
    """The failure of a whole (not streamed) answer that came as 200 with a body that is no
    chat completion: litellm reports it as an HTTP 500. None for any other failure."""
    if _is_timeout(exc) or _is_connection_failure(exc):
        return None
    response = watch.last
    if response is not None and getattr(response, "status_code", None) == 200:
        body = _body(response)
        if body is not None:
            try:
                data = json.loads(body)
            except ValueError:
                data = None
            if not _chat_completion(data):
                return _NotOpenAI(_snippet(body))
    # Providers whose responses we do not see: litellm's own words for it, which may quote the
    # body. Only these words: a 400 saying "arguments are not valid JSON" is another matter.
    text = " ".join(str(e) for e in _chain(exc))
    if "Empty or invalid response from LLM endpoint" in text or any(
        isinstance(e, json.JSONDecodeError) for e in _chain(exc)
    ):
        received = re.search(r"Received: '(.*?)'\. Check", text, re.S)
        return _NotOpenAI(_snippet(received.group(1)) if received else None)
    return None


def _attempt_io(litellm: Any, kwargs: dict, watch: _Watch, out: queue.Queue) -> None:
    """One attempt's HTTP work, on its own thread: puts ("whole", response), or ("chunk",
    chunk)… then ("end", None), or ("error", exception) on ``out``."""
    _local.watch = watch
    result = None
    try:
        result = litellm.completion(**kwargs)
        if isinstance(result, litellm.ModelResponse):  # not streamed, or a server that would not
            out.put(("whole", result))
            return
        response = _stream_response(result)
        if response is not None:
            watch.add(response)
            if not _is_event_stream(response):
                out.put(("whole", _unstreamed(litellm, response)))
                return
        for chunk in result:
            if watch.given_up:
                return
            out.put(("chunk", chunk))
        out.put(("end", None))
    except BaseException as exc:  # noqa: BLE001 - the caller's thread decides what it means
        if isinstance(exc, Exception) and not isinstance(exc, _NotOpenAI):
            exc = _not_openai(exc, watch) or exc
        out.put(("error", exc))
    finally:
        _local.watch = None
        watch.finish()
        _close_result(result)


def _delta_text(chunk: Any) -> str:
    try:
        text = chunk.choices[0].delta.content
    except (AttributeError, IndexError, TypeError):
        return ""
    return text if isinstance(text, str) else ""


# Seconds between looks at should_stop while a model call runs: a Stop ends the call this soon.
STOP_POLL = 0.5


def _attempt(litellm: Any, kwargs: dict, config: ModelConfig, on_text: Callable[[str], None] | None,
             should_stop: Callable[[], bool] | None = None) -> Any:
    """One litellm call, bounded by ``config.timeout`` as a whole; returns a ModelResponse
    (streams assembled by litellm's stream_chunk_builder). Raises ModelError on timeout (not
    to be retried), _Failed with litellm's exception for a provider failure; what ``on_text``
    raises passes through."""
    deadline = time.monotonic() + config.timeout
    watch = _Watch()
    out: queue.Queue = queue.Queue()
    threading.Thread(
        target=_attempt_io, args=(litellm, kwargs, watch, out), name="model-call", daemon=True
    ).start()
    chunks: list[Any] = []
    ended = False
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                kind, value = out.get(timeout=max(0.0, min(left, STOP_POLL)))
            except queue.Empty:
                if left <= STOP_POLL:
                    raise ModelError(f"the model call timed out after {config.timeout:g} s") from None
                if should_stop is not None and should_stop():
                    raise CallStopped() from None
                continue
            if kind == "chunk":
                chunks.append(value)
                text = _delta_text(value)
                if text and on_text is not None:
                    on_text(text)
                continue
            ended = True
            if kind == "error":
                raise _Failed(value)
            if kind == "whole":
                text = _answer_text(value)
                if text and on_text is not None:
                    on_text(text)
                return value
            return _assemble(litellm, chunks, kwargs["messages"])
    finally:
        if not ended:  # a timeout, or on_text raised: the thread must not read on
            watch.give_up()


def _answer_text(response: Any) -> str:
    try:
        text = response.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        return ""
    return text if isinstance(text, str) else ""


class _EmptyStream(ModelError):
    """A streamed answer with nothing in it: some servers (llama-cpp-python's
    chatml-function-calling) cannot stream tool calls and send an empty stream instead."""


# (model, api_base) pairs whose server sent an empty stream when tools were offered: asked
# unstreamed from then on, for the life of the process.
_NO_STREAMING: set[tuple[str, str | None]] = set()


def _is_empty(response: Any) -> bool:
    try:
        message = response.choices[0].message
    except (AttributeError, IndexError, TypeError):
        return True
    return not (getattr(message, "content", None) or getattr(message, "tool_calls", None))


def _wire_messages(messages: list[dict], config: ModelConfig) -> list[dict]:
    """``messages`` as the endpoint can take them. An OpenAI-compatible server of one's own
    (llama.cpp's, for one) fails with HTTP 500 on an assistant message whose content is null,
    as the OpenAI format allows beside tool calls; such servers get an empty string instead."""
    if not (config.api_base and config.model.split("/", 1)[0] in _SELF_HOSTED_PROVIDERS):
        return messages
    return [
        {**m, "content": ""} if m.get("role") == "assistant" and m.get("content") is None else m
        for m in messages
    ]


_SELF_HOSTED_PROVIDERS = {"openai", "hosted_vllm", "lm_studio", "llamafile", "openai_like"}


def _assemble(litellm: Any, chunks: list[Any], messages: list[dict]) -> Any:
    """litellm's own assembly of streamed chunks: tool calls joined by index with their ids,
    usage from the final usage chunk, or counted by litellm when the server sent none."""
    if not chunks:
        raise _EmptyStream("the model returned no answer (an empty stream)")
    try:
        response = litellm.stream_chunk_builder(chunks, messages=messages)
    except Exception as exc:  # noqa: BLE001 - a chunk litellm cannot read is the server's fault
        raise ModelError(f"could not read the model's streamed answer: {_provider_message(exc)}") from exc
    if response is None or _is_empty(response):
        raise _EmptyStream("the model returned no answer (an empty stream)")
    return response


def _rejects_stream_options(exc: Exception) -> bool:
    from litellm import exceptions as lx

    return isinstance(exc, lx.BadRequestError) and "stream_options" in str(exc)


def _call_model(messages: list[dict], config: ModelConfig, tools: list[dict], *,
                on_text: Callable[[str], None] | None = None, extra: dict | None = None,
                num_retries: int | None = None, should_stop: Callable[[], bool] | None = None) -> Any:
    """One model answer as a litellm ModelResponse, retried on passing failures; raises
    ModelError. ``extra`` adds litellm keywords; ``num_retries`` overrides the config's."""
    api_key = None
    if config.api_key_env:
        api_key = os.environ.get(config.api_key_env)
        if not api_key:
            raise ModelError(f"the API key variable {config.api_key_env} is not set in the environment")

    litellm = _litellm()
    if api_key is None and config.api_base and config.model.startswith("openai/") and not os.environ.get(
        "OPENAI_API_KEY"
    ):
        # A local OpenAI-compatible server (llama.cpp, vLLM, LM Studio) needs no key, but
        # the openai client refuses to start without one.
        api_key = "no-key"
    kwargs: dict[str, Any] = {
        "model": config.model,
        "messages": _wire_messages(messages, config),
        "api_base": config.api_base,
        "api_key": api_key,
        "timeout": config.timeout,  # httpx's per-read bound; the whole call is bounded by _attempt
        # Retries are ours, not litellm's: its num_retries needs tenacity (not installed) and
        # stacks on top of the openai client's own retries. num_retries=0 turns both off.
        "num_retries": 0,
    }
    if tools:
        kwargs.update(tools=tools, tool_choice="auto")
    if config.stream and not (tools and (config.model, config.api_base) in _NO_STREAMING):
        kwargs["stream"] = True
        if _supports_stream_options(litellm, config.model):
            kwargs["stream_options"] = {"include_usage": True}
    kwargs.update(extra or {})
    retries = config.num_retries if num_retries is None else num_retries
    attempt = 0
    while True:
        try:
            return _attempt(litellm, kwargs, config, on_text, should_stop)
        except _EmptyStream:
            if not (tools and kwargs.get("stream")):
                raise
            # Nothing in the stream, though tools were offered: a server that cannot stream tool
            # calls. The same call unstreamed, and unstreamed from now on.
            _NO_STREAMING.add((config.model, config.api_base))
            kwargs.pop("stream", None)
            kwargs.pop("stream_options", None)
            continue
        except _Failed as failed:
            if not isinstance(failed.error, Exception):
                raise failed.error from None  # KeyboardInterrupt and the like, on the call's thread
            # Every provider failure becomes one short reason.
            exc = failed.error
            if "stream_options" in kwargs and _rejects_stream_options(exc):
                # An older server that knows no stream_options; litellm counts the usage instead.
                del kwargs["stream_options"]
                continue
            attempt += 1
            if attempt <= retries and _is_transient(exc):
                _pause(_retry_after(exc, attempt), should_stop)
                continue
            raise _to_model_error(exc, config) from exc


def _pause(seconds: float, should_stop: Callable[[], bool] | None) -> None:
    """Sleep before a retry; raises CallStopped as soon as should_stop() is true."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        if should_stop is not None and should_stop():
            raise CallStopped()
        time.sleep(min(left, STOP_POLL))


def _supports_stream_options(litellm: Any, model: str) -> bool:
    """Whether litellm passes ``stream_options`` on for this model's provider (some reject it)."""
    try:
        _, provider, _, _ = litellm.get_llm_provider(model)
        return "stream_options" in (litellm.get_supported_openai_params(model=model, custom_llm_provider=provider) or [])
    except Exception:  # noqa: BLE001 - an unknown provider fails the call itself with a reason
        return False


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


def complete(messages: list[dict], config: ModelConfig, tools: list[dict], step_no: int = 1, *,
             on_text: Callable[[str], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> tuple[dict, dict]:
    """One model answer to ``messages`` (OpenAI chat format) with ``tools`` (OpenAI tool schemas).

    Returns ``(answer, usage)``: ``answer`` is a JSON-serialisable assistant message
    ``{"role": "assistant", "content": str | None, "tool_calls": [...]}`` (``tool_calls``
    only when there are some, in the model's order; each has an ``id``, made up from
    ``step_no`` when the server sent none, and ``function.arguments`` as a string, possibly
    not valid JSON); ``usage`` is ``{"prompt_tokens": int, "completion_tokens": int, "cost":
    float}``, cost in US dollars from litellm's own price list (0 for models it does not know).

    ``on_text``, when given, is called on the caller's thread with each piece of the answer's
    text as it arrives (the call streams when ``config.stream``; otherwise it gets the whole
    text once). An exception from it abandons the call and propagates as is.

    The whole call, streamed or not, takes at most ``config.timeout`` seconds (plus retries,
    see :class:`ModelConfig`). Raises :class:`ModelError` for every provider failure, and
    :class:`CallStopped` within about half a second of ``should_stop()`` turning true (polled
    while the call waits and between retries).
    """
    response = _call_model(messages, config, tools, on_text=on_text, should_stop=should_stop)
    return _assistant_message(response, step_no), _usage(response)


def context_window(model: str) -> int | None:
    """Tokens of input ``model`` takes, from litellm's local model list; None for a model it
    does not know (most self-hosted ones)."""
    try:
        info = _litellm().get_model_info(model)
    except Exception:  # noqa: BLE001 - litellm raises a bare Exception for models it does not know
        return None
    return int(info.get("max_input_tokens") or info.get("max_tokens") or 0) or None


CHECK_MAX_TOKENS = 32  # enough for "OK" from a model that thinks aloud a little
REPLY_LIMIT = 200


def check_model(config: ModelConfig, *, prompt: str = "Reply with the word OK.") -> dict:
    """One small real call to ``config``'s model (no tools, at most CHECK_MAX_TOKENS tokens,
    bounded by ``config.timeout``, retried at most once), for a settings page's Test button.

    Returns ``{"ok": True, "latency_ms": int, "reply": str, "model": str}`` (the first 200
    characters of the answer; the model name the provider reports, else ``config.model``) or
    ``{"ok": False, "latency_ms": int, "error": str}`` with the reason a :class:`ModelError`
    would give (a missing key variable included). Never raises for a provider's failure.
    """
    started = time.monotonic()
    try:
        response = _call_model(
            [{"role": "user", "content": prompt}],
            config,
            [],
            extra={"max_tokens": CHECK_MAX_TOKENS},
            num_retries=min(config.num_retries, 1),
        )
        answer = _assistant_message(response, 1)
    except ModelError as exc:
        return {"ok": False, "latency_ms": _ms_since(started), "error": str(exc)}
    return {
        "ok": True,
        "latency_ms": _ms_since(started),
        "reply": (answer.get("content") or "")[:REPLY_LIMIT],
        "model": str(getattr(response, "model", None) or config.model),
    }


def _ms_since(started: float) -> int:
    return int(round((time.monotonic() - started) * 1000))
