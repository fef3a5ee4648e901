"""Tools from MCP servers for the built-in agent, through the official ``mcp`` SDK.

A project lists its servers as text (see :func:`parse_servers`); :class:`McpToolbox` starts them
for one run, offers their tools as OpenAI tool schemas named ``mcp__<server>__<tool>`` and calls
them. The agent loop is synchronous, so the SDK's async sessions live on a private event loop in
a background thread (an anyio blocking portal) and every public method here is a plain blocking
call, safe from any thread. A server that cannot start is reported in ``errors`` and left out; it
never stops the others or the run, and :meth:`McpToolbox.call` never raises.

This module knows nothing of Django, of the board or of the model provider.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import shlex
import signal
import threading
import time
import uuid
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from agents.tools import cap_middle

__all__ = ["ServerSpec", "parse_servers", "McpToolbox", "TOOL_PREFIX"]

TOOL_PREFIX = "mcp__"
NAME_MAX = 32  # characters of a server name, so that mcp__<server>__ leaves room for the tool's
# OpenAI rejects a function description longer than this.
DESCRIPTION_MAX = 1024
STDERR_KEEP = 4_000  # bytes of a server's stderr kept, to explain why it failed
# Every stdio server and whatever it starts inherits this variable, so that at exit even a process
# that left the server's process group can be found and ended.
MARKER_ENV = "BOARD_MCP_SERVER_ID"
STOP_WAIT = 12.0  # seconds for all sessions to close; the SDK's own stdio shutdown is bounded by ~7 s
GROUP_TERM_GRACE = 1.0  # seconds between SIGTERM and SIGKILL for what is left of a server's group

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class ServerSpec:
    """One MCP server a project lists.

    ``transport`` is ``"stdio"`` (``command`` holds the program and its arguments, ``url`` is
    empty), ``"http"`` (streamable HTTP) or ``"sse"`` (``url`` set, ``command`` empty).
    """

    name: str
    transport: Literal["stdio", "http", "sse"]
    command: tuple[str, ...] = ()
    url: str = ""


def parse_servers(text: str) -> list[ServerSpec]:
    """Parse a project's server list: one server per line, in order.

    A line is ``name: command arg arg…`` (a stdio server; the rest of the line is split like a
    shell would, with :func:`shlex.split`, but nothing is expanded) or ``name: http(s)://…`` (a
    streamable HTTP server; the older SSE transport when the URL's path ends with ``/sse``). Names
    are 1–32 letters, digits, ``_`` or ``-``, each used once. Blank lines and lines starting with
    ``#`` are ignored. Raises ``ValueError`` for the first bad line, with a message that starts
    with its line number (from 1) and is written for the person who typed it.
    """
    specs: list[ServerSpec] = []
    seen: dict[str, int] = {}  # name -> line number
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            spec = _parse_line(line)
            if spec.name in seen:
                raise ValueError(f"server name {spec.name!r} is already used on line {seen[spec.name]}")
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        seen[spec.name] = number
        specs.append(spec)
    return specs


def _parse_line(line: str) -> ServerSpec:
    if _URL_RE.match(line):
        raise ValueError("a server needs a name first, as in 'docs: https://example.com/mcp'")
    name, colon, rest = line.partition(":")
    name, rest = name.strip(), rest.strip()
    if not colon:
        raise ValueError("expected 'name: command arguments…' or 'name: https://…' (the ':' is missing)")
    if not name:
        raise ValueError("the server name before ':' is missing")
    if not _NAME_RE.match(name):
        raise ValueError(f"server name {name!r} may use only letters, digits, '_' and '-'")
    if len(name) > NAME_MAX:
        raise ValueError(f"server name {name!r} is longer than {NAME_MAX} characters")
    if not rest:
        raise ValueError(f"server {name!r} has no command or URL after ':'")
    if _URL_RE.match(rest):
        return _url_spec(name, rest)
    try:
        command = shlex.split(rest)
    except ValueError as exc:  # an unclosed quote, say
        raise ValueError(f"cannot split the command of {name!r}: {exc}") from None
    if not command:
        raise ValueError(f"server {name!r} has no command after ':'")
    return ServerSpec(name=name, transport="stdio", command=tuple(command))


def _url_spec(name: str, url: str) -> ServerSpec:
    if any(c.isspace() for c in url):
        raise ValueError(f"the URL of {name!r} contains a space")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"the URL of {name!r} must start with http:// or https://, not {parts.scheme}://")
    try:
        parts.port  # noqa: B018 -- raises for a port that is not a number
    except ValueError:
        raise ValueError(f"the URL of {name!r} has a bad port") from None
    if not parts.hostname:
        raise ValueError(f"the URL of {name!r} has no host")
    transport = "sse" if parts.path.rstrip("/").endswith("/sse") else "http"
    return ServerSpec(name=name, transport=transport, url=url)


# --------------------------------------------------------------------------- toolbox


@dataclass
class _Server:
    """What the toolbox knows of one server; fields are written on the event loop's thread."""

    spec: ServerSpec
    marker: str
    ready: threading.Event = field(default_factory=threading.Event)
    client: Any = None  # mcp.Client once connected and listed
    tools: list = field(default_factory=list)  # mcp.types.Tool, as listed
    error: str = ""
    scope: Any = None  # anyio.CancelScope of the server's task
    pgid: int | None = None
    stderr_tail: bytearray = field(default_factory=bytearray)
    stderr_reader: threading.Thread | None = None
    task: concurrent.futures.Future | None = None


class McpToolbox:
    """The tools of a project's MCP servers for one agent run; a context manager.

    ``McpToolbox(specs, cwd, env, start_timeout=20, call_timeout=120)``: ``specs`` from
    :func:`parse_servers`; ``cwd`` is the folder stdio servers run in (the card's worktree);
    ``env`` the variables they get, laid over the SDK's minimal safe set (``HOME``, ``PATH``,
    ``USER``…; ``None`` gives that set alone, never the board's own environment). Times are in
    seconds: ``start_timeout`` for all servers together to start, answer and list their tools
    (they start in parallel), ``call_timeout`` for one tool call. HTTP servers are connected to,
    not started.

    Entering starts every server and lists its tools; a server that fails is named in
    :attr:`errors` and otherwise left out. Leaving closes every session and ends every stdio
    server with everything it started (its process group, then any process that still carries
    the toolbox's marker variable). Entering twice raises ``RuntimeError``. All methods are
    blocking and thread-safe.
    """

    def __init__(
        self,
        specs: list[ServerSpec],
        cwd: Path,
        env: dict[str, str] | None,
        start_timeout: float = 20,
        call_timeout: float = 120,
    ) -> None:
        self._specs = list(specs)
        self._cwd = Path(cwd)
        self._env = {str(k): str(v) for k, v in (env or {}).items()}
        self.start_timeout = float(start_timeout)
        self.call_timeout = float(call_timeout)
        self._id = uuid.uuid4().hex
        self._servers: list[_Server] = []
        self._tools: dict[str, tuple[_Server, str]] = {}  # exposed name -> (server, tool name)
        self._schemas: list[dict] = []
        self._errors: list[str] = []
        self._stack: ExitStack | None = None
        self._portal = None
        self._closing = None  # anyio.Event, made on the loop
        self._entered = False
        self._closed = False

    # ----------------------------------------------------------------- public

    @property
    def errors(self) -> list[str]:
        """``"<server>: <reason>"`` for each server that failed to start or list its tools, in
        the order listed; empty when all started (or before entering)."""
        return list(self._errors)

    def schemas(self) -> list[dict]:
        """OpenAI tool schemas of every tool of every started server, servers in listed order:
        ``{"type": "function", "function": {"name", "description", "parameters"}}``, the name
        ``mcp__<server>__<tool>`` made to match ``^[a-zA-Z0-9_-]{1,64}$``, the parameters the
        tool's own input JSON Schema. A fresh copy each time."""
        return json.loads(json.dumps(self._schemas))

    def owns(self, name: str) -> bool:
        """Whether ``name`` is one of the tool names :meth:`schemas` gave."""
        return name in self._tools

    def call(self, name: str, arguments: dict | None) -> tuple[str, bool]:
        """Call the tool exposed as ``name`` with ``arguments`` (a JSON object; ``None`` is
        ``{}``); block until it answers or :attr:`call_timeout` seconds pass.

        Returns ``(text, is_error)``. ``text`` joins the result's text blocks (other blocks
        described in a line each, such as ``[image: image/png, 70 bytes]``; the structured
        result as JSON when there is no content), keeping at most agents.tools.OUTPUT_HEAD + OUTPUT_TAIL
        characters with a note of how many were cut. ``is_error`` is true, and ``text`` the
        reason, when the tool reported an error, the name is unknown, the server is gone, the
        call timed out or failed in any other way. Never raises.
        """
        entry = self._tools.get(name)
        if entry is None:
            return f"unknown MCP tool {name!r}", True
        server, tool = entry
        if self._closed or not self._entered:
            return "the MCP servers are not running (the toolbox is closed)", True
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return f"arguments of {name} must be a JSON object, got {type(arguments).__name__}", True
        try:
            future = self._portal.start_task_soon(self._call, server, tool, arguments)
        except Exception as exc:  # the loop has stopped
            return f"{server.spec.name}: cannot call {tool}: {_reason(exc)}", True
        try:
            # _call enforces call_timeout itself; this margin only guards against a stuck loop.
            return future.result(timeout=self.call_timeout + 10)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return f"{server.spec.name}: {tool} did not answer within {self.call_timeout:g} s", True
        except BaseException as exc:  # noqa: BLE001 -- including a cancelled future
            return f"{server.spec.name}: {tool} failed: {_reason(exc)}", True

    def __enter__(self) -> McpToolbox:
        if self._entered:
            raise RuntimeError("an McpToolbox can be entered only once")
        self._entered = True
        self._servers = [_Server(spec=spec, marker=f"{self._id}:{spec.name}") for spec in self._specs]
        if not self._servers:
            return self
        import anyio
        import anyio.from_thread

        # Here rather than on the loop: importing the SDK takes about a second, which would
        # hold the loop (and every server's start) while it runs.
        _import_sdk()
        self._stack = ExitStack()
        try:
            self._portal = self._stack.enter_context(
                anyio.from_thread.start_blocking_portal(name=f"mcp-toolbox-{self._id[:8]}")
            )
            self._closing = self._portal.call(anyio.Event)
            for server in self._servers:
                server.task = self._portal.start_task_soon(self._serve, server)
            deadline = time.monotonic() + self.start_timeout
            for server in self._servers:
                server.ready.wait(max(0.0, deadline - time.monotonic()))
            for server in self._servers:
                # Decided on the loop, so a server that becomes ready at this very moment is
                # either kept whole or dropped whole.
                self._portal.call(self._give_up_if_not_ready, server)
        except BaseException:
            self._close()
            raise
        for server in self._servers:
            if server.client is None:
                self._errors.append(f"{server.spec.name}: {server.error or 'did not start'}")
            else:
                self._add_tools(server)
        return self

    def __exit__(self, *exc_info) -> None:
        self._close()

    # ----------------------------------------------------------------- on the loop

    async def _serve(self, server: _Server) -> None:
        """Run one server's session from start to the toolbox's exit, in one task (the SDK's
        context managers must be left in the task that entered them)."""
        import anyio
        from mcp import Client

        failure = ""
        with anyio.CancelScope() as server.scope:
            try:
                async with AsyncExitStack() as stack:
                    transport, errlog = self._transport(server)
                    try:
                        client = await stack.enter_async_context(Client(transport, cache=None))
                    finally:
                        if errlog is not None:
                            # The server has its own copy by now; without ours, the reader sees
                            # the end of the pipe when the server ends.
                            errlog.close()
                    tools = await _list_all_tools(client)
                    server.pgid = _find_leader(server.marker) if server.spec.transport == "stdio" else None
                    server.tools, server.client = tools, client
                    server.ready.set()
                    await self._closing.wait()
            except Exception as exc:  # noqa: BLE001 -- any failure of one server is its own
                failure = _reason(exc)
        started = server.client is not None
        server.client = None
        # A server given up on at the start timeout was cancelled and already has its error.
        if failure:
            if server.stderr_reader is not None:
                # A moment for the reader to take in the last words of a server that died.
                for _ in range(25):
                    if not server.stderr_reader.is_alive():
                        break
                    await anyio.sleep(0.02)
            failure += _stderr_note(server)
            server.error = f"session ended: {failure}" if started else failure
        server.ready.set()

    def _transport(self, server: _Server):
        """The SDK transport for ``server``, and for a stdio server the write end of its stderr
        pipe, to be closed once the server has started (or failed to)."""
        spec = server.spec
        if spec.transport == "http":
            from mcp.client.streamable_http import streamable_http_client

            return streamable_http_client(spec.url), None
        if spec.transport == "sse":
            from mcp.client.sse import sse_client

            return sse_client(spec.url), None
        from mcp.client.stdio import StdioServerParameters, stdio_client

        if not self._cwd.is_dir():
            # Otherwise the spawn's FileNotFoundError would read as a missing command.
            raise NotADirectoryError(f"the working folder {self._cwd} does not exist")
        params = StdioServerParameters(
            command=spec.command[0],
            args=list(spec.command[1:]),
            env={**self._env, MARKER_ENV: server.marker},
            cwd=str(self._cwd),
            encoding_error_handler="replace",
        )
        # The server's stderr goes to a pipe read by a thread keeping its tail: bounded memory,
        # and the reason a server died at once can be shown.
        read_fd, write_fd = os.pipe()
        errlog = os.fdopen(write_fd, "w")
        server.stderr_reader = threading.Thread(
            target=_keep_tail, args=(read_fd, server.stderr_tail), daemon=True, name=f"mcp-stderr-{spec.name}"
        )
        server.stderr_reader.start()
        return stdio_client(params, errlog=errlog), errlog

    def _give_up_if_not_ready(self, server: _Server) -> None:
        if not server.ready.is_set() and server.scope is not None:
            server.scope.cancel()
            server.error = f"did not start within {self.start_timeout:g} s{_stderr_note(server)}"

    async def _call(self, server: _Server, tool: str, arguments: dict) -> tuple[str, bool]:
        import anyio

        client = server.client
        if client is None:
            return f"{server.spec.name}: the server is no longer running{_colon(server.error)}", True
        try:
            with anyio.fail_after(self.call_timeout):
                result = await client.call_tool(tool, arguments)
        except TimeoutError:
            return f"{server.spec.name}: {tool} did not answer within {self.call_timeout:g} s", True
        except Exception as exc:  # noqa: BLE001 -- the model gets the reason instead
            return f"{server.spec.name}: {tool} failed: {_reason(exc)}", True
        text = _result_text(result)
        if result.is_error:
            return cap_middle(text or f"{tool} reported an error without a message"), True
        return cap_middle(text), False

    # ----------------------------------------------------------------- helpers

    def _add_tools(self, server: _Server) -> None:
        for tool in server.tools:
            exposed = _exposed_name(server.spec.name, tool.name, self._tools)
            self._tools[exposed] = (server, tool.name)
            parameters = dict(tool.input_schema or {})
            parameters.setdefault("type", "object")
            parameters.setdefault("properties", {})
            description = tool.description or tool.title or f"{tool.name} from the MCP server {server.spec.name}"
            if len(description) > DESCRIPTION_MAX:
                description = description[: DESCRIPTION_MAX - 1] + "…"
            function = {"name": exposed, "description": description, "parameters": parameters}
            self._schemas.append({"type": "function", "function": function})

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._stack is None:
            return
        portal = self._portal
        try:
            if portal is not None and self._closing is not None:
                portal.call(self._closing.set)
                tasks = [s.task for s in self._servers if s.task is not None]
                concurrent.futures.wait(tasks, timeout=STOP_WAIT)
                # Cancels what is still running: a call another thread is waiting on (it gets an
                # error at once instead of holding the exit for its whole timeout), or a session
                # that would not close.
                portal.call(portal.stop, True)
        except RuntimeError:
            pass  # the loop is already gone
        finally:
            try:
                self._stack.close()
            finally:
                self._end_processes()

    def _end_processes(self) -> None:
        """End what the stdio servers left running: the members of each server's process group
        (the SDK kills the group only when the server itself outlives its grace, not children a
        server left behind when it exited) and any process that still carries this toolbox's
        marker, such as one that started a process group of its own. SIGTERM, then SIGKILL for
        what is still there after GROUP_TERM_GRACE seconds."""
        if not any(s.spec.transport == "stdio" for s in self._servers):
            return
        groups = {s.pgid for s in self._servers if s.pgid}
        for sig, wait in ((signal.SIGTERM, GROUP_TERM_GRACE), (signal.SIGKILL, 2.0)):
            left = _leftovers(self._id, groups)
            if not left:
                return
            for pgid in groups:
                _signal_group(pgid, sig)
            for proc in left:
                try:
                    proc.send_signal(sig)
                except Exception:  # noqa: BLE001 -- gone already
                    pass
            deadline = time.monotonic() + wait
            while _leftovers(self._id, groups) and time.monotonic() < deadline:
                time.sleep(0.02)


# --------------------------------------------------------------------------- small helpers


def _import_sdk() -> None:
    import mcp  # noqa: F401
    import mcp.client.sse  # noqa: F401
    import mcp.client.stdio  # noqa: F401
    import mcp.client.streamable_http  # noqa: F401


async def _list_all_tools(client) -> list:
    tools, cursor = [], None
    for _ in range(100):  # a server whose cursor never ends must not hang the start
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _exposed_name(server: str, tool: str, taken: dict) -> str:
    """``mcp__<server>__<tool>`` with every other character made ``_``, cut to 64 characters with
    a short hash when too long or already taken, so that it is unique and stable for a listing."""
    base = re.sub(r"[^a-zA-Z0-9_-]", "_", f"{TOOL_PREFIX}{server}__{tool}")
    if len(base) <= 64 and base not in taken:
        return base
    digest = hashlib.sha1(f"{server}\0{tool}".encode()).hexdigest()
    for length in range(8, 41):
        candidate = f"{base[: 64 - length - 1]}_{digest[:length]}"
        if candidate not in taken:
            return candidate
    raise RuntimeError(f"no free name for tool {tool!r} of {server!r}")  # sha1 of distinct inputs differs


def _result_text(result) -> str:
    parts: list[str] = []
    for block in result.content or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind}: {block.mime_type}, {_size(block.data)}]")
        elif kind == "resource_link":
            parts.append(f"[resource link: {block.uri}{' (' + block.name + ')' if block.name else ''}]")
        elif kind == "resource":
            res = block.resource
            if getattr(res, "text", None) is not None:
                parts.append(f"[resource {res.uri}]\n{res.text}")
            else:
                parts.append(f"[resource: {res.uri}, {res.mime_type or 'binary'}, {_size(getattr(res, 'blob', ''))}]")
        else:
            parts.append(f"[{kind or type(block).__name__} content]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts)


def _size(base64_data: str) -> str:
    """The decoded size of base64 data, in bytes."""
    n = len(base64_data or "") * 3 // 4 - (base64_data or "").count("=")
    return f"{n} bytes" if n < 10_000 else f"{n / 1024:.0f} KB"


def _reason(exc: BaseException) -> str:
    """A one-line reason for ``exc``: the first leaf of an exception group, with its type when
    the message alone would not say much."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    message = " ".join(str(exc).split())
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"command not found: {exc.filename}"
    name = type(exc).__name__
    if not message:
        return name
    text = message if name in ("MCPError", "McpError") else f"{name}: {message}"
    return text if len(text) <= 500 else text[:497] + "…"


def _colon(text: str) -> str:
    return f": {text}" if text else ""


def _stderr_note(server: _Server, lines: int = 3, limit: int = 400) -> str:
    """`` (stderr: <its last lines>)`` when the server wrote to stderr, else ``""``."""
    data = bytes(server.stderr_tail)
    kept = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    text = " | ".join(kept[-lines:])
    if not text:
        return ""
    return f" (stderr: {text if len(text) <= limit else '…' + text[-limit:]})"


def _keep_tail(fd: int, tail: bytearray) -> None:
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            tail += chunk
            del tail[:-STDERR_KEEP]


def _find_leader(marker: str) -> int | None:
    """The pid of the direct child that carries ``marker``: the stdio server itself, which the SDK
    starts as the leader of a new session and process group (so its pid is the group's id)."""
    import psutil

    for child in psutil.Process().children():
        try:
            if child.environ().get(MARKER_ENV) == marker and os.getpgid(child.pid) == child.pid:
                return child.pid
        except (psutil.Error, OSError):
            continue
    return None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _leftovers(toolbox_id: str, groups: set[int]) -> list:
    """The live processes (zombies are dead enough) in one of ``groups`` or whose environment
    carries a marker of this toolbox, this process excepted."""
    import psutil

    prefix = f"{MARKER_ENV}={toolbox_id}:".encode()
    found = []
    for proc in psutil.process_iter(["status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if os.getpgid(proc.pid) in groups or prefix in _raw_environ(proc):
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def _raw_environ(proc) -> bytes:
    try:
        # One read, no parsing: this runs for every process on the machine.
        with open(f"/proc/{proc.pid}/environ", "rb") as f:
            return f.read()
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            raise  # the process is gone
    # No /proc (macOS): psutil asks the system.
    return "\0".join(f"{k}={v}" for k, v in proc.environ().items()).encode()
