"""A scripted, local, OpenAI-compatible chat server for tests (standard library only).

It answers ``POST /v1/chat/completions`` (and ``/chat/completions``) from a script: a list
of replies where reply N answers the N-th request *of a conversation*. N is the number of
assistant messages already in the request's ``messages``, so several conversations can run
at once against one server and a resumed conversation picks up where it was. A reply is a
dict:

- ``{"tool_calls": [{"name": "write_file", "arguments": {...}, "id": "optional"}],
  "content": "optional"}``; ``arguments`` may also be a string, sent as is (to test
  malformed JSON); ids default to ``call_<request number>_<index>``;
- ``{"content": "plain text"}``;
- ``{"delay": seconds, ...}``: sleep before sending anything, then answer with the rest (a
  server that never answers, to test timeouts);
- ``{"empty_stream": True, ...}``: a streamed request gets a stream with no chunk at all (as
  llama-cpp-python's server sends when it cannot stream tool calls); an unstreamed one gets the
  rest of the reply;
- ``{"stall": seconds, ...}``: send the 200 headers (of an SSE stream when the request asked
  to stream, of a JSON body otherwise), then sleep, then send the rest of the answer;
- ``{"trickle": seconds, ...}``: send the 200 headers, then every second one keep-alive
  (a space in a JSON body, an SSE comment line ``: keep-alive`` in a stream) for that long,
  then the rest of the answer; a per-read timeout never fires on it;
- ``{"status": 500, "error": "message"}``: answer with that HTTP status and an OpenAI-style
  error body; ``"retry_after": seconds`` adds a ``Retry-After`` header (429 and 503 replies);
- ``{"raw": "<html>…</html>", "content_type": "text/html"}``: send that body as is with
  status 200 (or ``"status"``), whatever the request asked (a proxy's page, a wrong URL).

Streaming: a request with ``"stream": true`` gets the answer as server-sent events in
OpenAI's ``chat.completion.chunk`` format (``data: {...}`` lines): a first chunk with the
role, the content in several pieces, each tool call announced with its ``index``, ``id`` and
name and then its arguments split over several chunks, a last chunk with the
``finish_reason``, a final usage chunk (empty ``choices``) when the request's
``stream_options.include_usage`` is true, then ``data: [DONE]``.

A request whose conversation OpenAI's API would refuse (see :func:`conversation_error`) gets that
400, so tests catch a loop that sends a malformed conversation.

A reply may also be a callable ``f(request_body: dict) -> reply``. Past the end of the
script the server answers a plain text saying so. Responses carry ``usage``.
``GET /v1/models`` lists one model, ``fake-model``. :meth:`FakeLLM.stop` returns promptly
even while replies are sleeping: they wake up, and their connections are dropped.

Library use::

    llm = FakeLLM(EDIT_THEN_FINISH)
    base_url = llm.start()          # "http://127.0.0.1:<port>/v1"
    ...                             # llm.requests holds the received JSON bodies
    llm.stop()

Script use (prints ``listening http://127.0.0.1:PORT/v1`` once ready, serves until killed)::

    python tests/fake_llm.py --port 0 --script script.json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

__all__ = ["FakeLLM", "EDIT_THEN_FINISH", "SCRIPT_EXHAUSTED"]

EDIT_THEN_FINISH: list[dict] = [
    {
        "tool_calls": [
            {
                "name": "write_file",
                "arguments": {"path": "AGENT_NOTE.md", "content": "# Agent note\n\nWritten by the fake model.\n"},
            }
        ]
    },
    {"tool_calls": [{"name": "finish", "arguments": {"summary": "Added AGENT_NOTE.md"}}]},
]

SCRIPT_EXHAUSTED = "The fake model has no more scripted replies."

Reply = dict | Callable[[dict], dict]


def _count_tokens(value: Any) -> int:
    # A rough 4-characters-a-token estimate is all tests need from usage.
    return max(1, len(json.dumps(value, default=str)) // 4)


def conversation_error(messages: list) -> str:
    """Why OpenAI's API would refuse ``messages`` with a 400, or "" when it would take them: an
    assistant message with an empty ``tool_calls`` list, a tool result that answers no call of the
    assistant message before it, or a call left without its result before the next message."""
    open_calls: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role")
        if role == "tool":
            if message.get("tool_call_id") not in open_calls:
                return f"messages[{i}]: a tool message must answer a tool_call_id of the preceding assistant message"
            open_calls.discard(message.get("tool_call_id"))
            continue
        if open_calls:
            return f"messages[{i}]: tool_call_ids {sorted(open_calls)} have no tool message answering them"
        if role == "assistant" and "tool_calls" in message:
            calls = message.get("tool_calls")
            if not calls:
                return f"messages[{i}].tool_calls: empty array; expected at least one tool call"
            open_calls = {call.get("id") for call in calls}
    if open_calls:
        return f"tool_call_ids {sorted(open_calls)} have no tool message answering them"
    return ""


class FakeLLM:
    """A scripted OpenAI-compatible server on 127.0.0.1.

    ``script`` is the list of replies described in the module docstring. ``port`` 0 picks a
    free port. ``api_key``, when given, makes every chat request without ``Authorization:
    Bearer <api_key>`` fail with 401. ``requests`` is the list of JSON bodies received by
    the chat endpoint, in arrival order (thread-safe to read once requests are answered).
    """

    def __init__(self, script: list[Reply] | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, model: str = "fake-model") -> None:
        self.script: list[Reply] = list(EDIT_THEN_FINISH if script is None else script)
        self.host = host
        self.port = port
        self.api_key = api_key
        self.model = model
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        # Set by stop(): sleeping replies wake up on it instead of outliving the server.
        self.stopping = threading.Event()

    @property
    def base_url(self) -> str:
        """``http://<host>:<port>/v1`` of the running server; raises RuntimeError before start()."""
        if self._server is None:
            raise RuntimeError("FakeLLM is not started")
        return f"http://{self.host}:{self._server.server_address[1]}/v1"

    def start(self) -> str:
        """Start serving in a daemon thread; return the base URL (``…/v1``)."""
        fake = self

        class Handler(_Handler):
            owner = fake

        self.stopping.clear()
        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True  # a delayed reply must not hold up stop()
        server = self._server
        # A short poll interval keeps stop() quick.
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05), name="fake-llm", daemon=True
        )
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        """Stop serving and close the socket; replies still sleeping wake up and drop their
        connections without answering."""
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> "FakeLLM":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ replies

    def reply_for(self, body: dict) -> dict:
        """The script entry for this request: index = assistant messages already in it."""
        messages = body.get("messages") or []
        n = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
        if n >= len(self.script):
            return {"content": SCRIPT_EXHAUSTED}
        reply = self.script[n]
        return reply(body) if callable(reply) else reply

    def message(self, reply: dict, n_request: int) -> dict:
        """The assistant message a script reply stands for (OpenAI format, arguments as strings)."""
        message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
        calls = []
        for i, call in enumerate(reply.get("tool_calls") or []):
            arguments = call.get("arguments", {})
            calls.append(
                {
                    "id": call.get("id") or f"call_{n_request}_{i}",
                    "type": "function",
                    "function": {
                        "name": call["name"],
                        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                    },
                }
            )
        if calls:
            message["tool_calls"] = calls
        return message

    @staticmethod
    def usage(body: dict, message: dict) -> dict:
        prompt_tokens = _count_tokens(body.get("messages"))
        completion_tokens = _count_tokens(message)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def completion(self, body: dict, reply: dict, n_request: int) -> dict:
        """Build an OpenAI chat.completion body from a script reply."""
        message = self.message(reply, n_request)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": "tool_calls" if "tool_calls" in message else "stop"}
            ],
            "usage": self.usage(body, message),
        }

    def chunks(self, body: dict, reply: dict, n_request: int) -> list[dict]:
        """The same answer as OpenAI ``chat.completion.chunk`` objects, in sending order.

        Content comes in three pieces; each tool call first with its index, id, name and
        empty arguments, then its arguments in three pieces (so a client must join them);
        a usage chunk with empty ``choices`` ends it when ``stream_options.include_usage``.
        """
        message = self.message(reply, n_request)
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model") or self.model,
        }

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        out = [chunk({"role": "assistant", "content": ""})]
        for piece in _pieces(message.get("content") or ""):
            out.append(chunk({"content": piece}))
        calls = message.get("tool_calls") or []
        for i, call in enumerate(calls):
            name = call["function"]["name"]
            out.append(chunk({"tool_calls": [
                {"index": i, "id": call["id"], "type": "function", "function": {"name": name, "arguments": ""}}
            ]}))
            for piece in _pieces(call["function"]["arguments"]):
                out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
        out.append(chunk({}, "tool_calls" if calls else "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            out.append({**head, "choices": [], "usage": self.usage(body, message)})
        return out


def _pieces(text: str, n: int = 3) -> list[str]:
    """``text`` cut into ``n`` nearly equal, non-empty pieces (fewer when it is shorter)."""
    if not text:
        return []
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)]


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: every answer ends by closing the connection, so a stalled or trickled body
    # needs no Content-Length and a stream needs no chunked encoding.
    owner: FakeLLM
    server_version = "FakeLLM/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output clean

    def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_bytes(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (a timeout test); nothing to tell it

    def _error(self, status: int, message: str, kind: str = "invalid_request_error",
               headers: dict[str, str] | None = None) -> None:
        self._send(status, {"error": {"message": message, "type": kind, "param": None, "code": status}}, headers)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops first; True when it did stop (drop the answer)."""
        return self.owner.stopping.wait(max(0.0, seconds))

    def _send_slowly(self, reply: dict, stream: bool, body_parts: list[bytes]) -> None:
        """Headers now; then the stall or the trickle; then ``body_parts``."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream" if stream else "application/json")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.flush()
            if reply.get("stall") and self._sleep(float(reply["stall"])):
                return
            if reply.get("trickle"):
                keep_alive = b": keep-alive\n\n" if stream else b" "
                until = time.monotonic() + float(reply["trickle"])
                while time.monotonic() < until:
                    self.wfile.write(keep_alive)
                    self.wfile.flush()
                    if self._sleep(min(1.0, until - time.monotonic())):
                        return
            for part in body_parts:
                self.wfile.write(part)
            self.wfile.flush()
        except OSError:
            pass  # the client gave up, which is what these replies are for

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            model = self.owner.model
            self._send(200, {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "fake"}]})
        elif self.path.rstrip("/") in ("/health", "/v1/health"):
            self._send(200, {"status": "ok"})
        else:
            self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        if self.path.split("?")[0].rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route {self.path}")
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._error(400, "request body is not JSON")
            return
        owner = self.owner
        with owner._lock:
            owner.requests.append(body)
            n_request = len(owner.requests)
        if owner.api_key is not None and self.headers.get("Authorization") != f"Bearer {owner.api_key}":
            self._error(401, "Incorrect API key provided.", "invalid_api_key")
            return
        malformed = conversation_error(body.get("messages") or [])
        if malformed:
            self._error(400, malformed)
            return
        reply = owner.reply_for(body)
        if reply.get("delay") and self._sleep(float(reply["delay"])):
            return
        if "raw" in reply:
            raw = reply["raw"]
            data = raw.encode() if isinstance(raw, str) else bytes(raw)
            self._send_bytes(int(reply.get("status") or 200), data, str(reply.get("content_type") or "text/html"))
            return
        if reply.get("status") and int(reply["status"]) >= 400:
            status = int(reply["status"])
            kind = {401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded"}.get(status, "server_error")
            headers = {"Retry-After": f"{reply['retry_after']:g}"} if "retry_after" in reply else None
            self._error(status, str(reply.get("error") or f"scripted error {status}"), kind, headers)
            return
        stream = bool(body.get("stream"))
        if stream and reply.get("empty_stream"):
            parts = [b"data: [DONE]\n\n"]  # as llama-cpp-python does when it cannot stream tool calls
        elif stream:
            parts = [b"data: " + json.dumps(c).encode() + b"\n\n" for c in owner.chunks(body, reply, n_request)]
            parts.append(b"data: [DONE]\n\n")
        else:
            parts = [json.dumps(owner.completion(body, reply, n_request)).encode()]
        if stream or reply.get("stall") or reply.get("trickle"):
            self._send_slowly(reply, stream, parts)
        else:
            self._send_bytes(200, parts[0], "application/json")


def main(argv: list[str] | None = None) -> int:
    """Command line: serve a script (JSON list of replies, default EDIT_THEN_FINISH) until killed."""
    parser = argparse.ArgumentParser(description="Scripted OpenAI-compatible chat server for tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--script", help="JSON file holding a list of replies")
    parser.add_argument("--api-key", help="require this bearer key")
    args = parser.parse_args(argv)
    script = None
    if args.script:
        with open(args.script, encoding="utf-8") as fh:
            script = json.load(fh)
        if not isinstance(script, list):
            parser.error("the script must be a JSON list of replies")
    fake = FakeLLM(script, host=args.host, port=args.port, api_key=args.api_key)
    fake.start()
    print(f"listening {fake.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
