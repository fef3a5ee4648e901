"""Tests of agents/mcp_tools.py against real MCP servers (tests/mcp_server.py) over stdio, streamable
HTTP and SSE. No database: the module knows nothing of Django."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from agents.mcp_tools import McpToolbox, ServerSpec, parse_servers
from tests.conftest import free_port, processes_named

SERVER = Path(__file__).with_name("mcp_server.py")
PYTHON = shlex.quote(sys.executable)
NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def stdio_line(name: str, *extra: str) -> str:
    return " ".join([f"{name}:", PYTHON, shlex.quote(str(SERVER)), *extra])


# --------------------------------------------------------------------------- parsing


def test_parse_reads_stdio_and_http_servers_and_skips_blanks_and_comments():
    text = """
    # tools for this project
    files: npx -y @modelcontextprotocol/server-filesystem .

    docs_2: https://example.com/mcp
      old-one: http://127.0.0.1:9000/sse
    """
    assert parse_servers(text) == [
        ServerSpec("files", "stdio", command=("npx", "-y", "@modelcontextprotocol/server-filesystem", ".")),
        ServerSpec("docs_2", "http", url="https://example.com/mcp"),
        ServerSpec("old-one", "sse", url="http://127.0.0.1:9000/sse"),
    ]


def test_parse_splits_commands_like_a_shell_without_expanding_anything():
    [spec] = parse_servers("""tool: python "my server.py" --name 'a b' $HOME""")
    assert spec.command == ("python", "my server.py", "--name", "a b", "$HOME")


def test_parse_of_empty_text_gives_no_servers():
    assert parse_servers("") == []
    assert parse_servers("\n  # nothing yet\n") == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("ok: cmd\njust-a-command --flag", r"^line 2: .*':' is missing"),
        ("bad name: cmd", r"^line 1: server name 'bad name' may use only letters"),
        ("a: cmd\n\nb: cmd\na: other", r"^line 4: server name 'a' is already used on line 1"),
        ("empty:", r"^line 1: server 'empty' has no command or URL"),
        ("q: python 'unclosed", r"^line 1: cannot split the command of 'q'"),
        ("https://example.com/mcp", r"^line 1: a server needs a name first"),
        ("f: ftp://example.com/mcp", r"^line 1: the URL of 'f' must start with http:// or https://"),
        ("h: http:///mcp", r"^line 1: the URL of 'h' has no host"),
        ("h: http://example.com:port/mcp", r"^line 1: the URL of 'h' has a bad port"),
        (": cmd", r"^line 1: the server name before ':' is missing"),
        ("x" * 33 + ": cmd", r"^line 1: server name 'x+' is longer than 32 characters"),
    ],
)
def test_parse_rejects_a_bad_line_with_its_number_and_reason(text, message):
    with pytest.raises(ValueError, match=message):
        parse_servers(text)


# --------------------------------------------------------------------------- one stdio toolbox for many tests


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("worktree")


@pytest.fixture(scope="module")
def toolbox(workdir):
    """A started stdio server ``t`` beside two that cannot start: a missing command and one that
    exits at once after saying why on stderr."""
    specs = parse_servers(
        "\n".join(
            [
                "missing: /nonexistent/mcp-server --stdio",
                stdio_line("t"),
                f"quits: {PYTHON} -c \"import sys; sys.exit('no config found')\"",
            ]
        )
    )
    with McpToolbox(specs, cwd=workdir, env={"BOARD_TEST_VALUE": "from-env"}, call_timeout=1.5) as box:
        yield box


def test_stdio_server_tools_are_listed_with_prefixed_names_and_schemas(toolbox):
    schemas = {s["function"]["name"]: s for s in toolbox.schemas()}
    assert {"mcp__t__add", "mcp__t__shout", "mcp__t__fail", "mcp__t__slow"} <= set(schemas)
    add = schemas["mcp__t__add"]
    assert add["type"] == "function"
    assert add["function"]["description"] == "Add two integers and return the sum."
    params = add["function"]["parameters"]
    assert params["type"] == "object"
    assert set(params["properties"]) == {"a", "b"} and params["properties"]["a"]["type"] == "integer"
    assert sorted(params["required"]) == ["a", "b"]
    assert all(toolbox.owns(name) for name in schemas)
    assert not toolbox.owns("mcp__t__nope") and not toolbox.owns("read_file")


def test_tool_names_a_provider_would_refuse_are_renamed_and_still_reach_their_tool(toolbox):
    names = [s["function"]["name"] for s in toolbox.schemas()]
    assert all(NAME_RE.match(name) for name in names), names
    assert len(names) == len(set(names))
    assert toolbox.call("mcp__t__docs_search_v2", {"query": "x"}) == ("found x", False)
    [long_name] = [n for n in names if n.startswith("mcp__t__a_tool_name_long")]
    assert len(long_name) == 64
    assert toolbox.call(long_name, {}) == ("hello from the long name", False)


def test_call_returns_the_tools_text(toolbox):
    assert toolbox.call("mcp__t__add", {"a": 2, "b": 40}) == ("42", False)
    assert toolbox.call("mcp__t__shout", {"text": "hi"}) == ("HI!", False)


def test_stdio_server_runs_in_the_given_folder_with_the_given_environment(toolbox, workdir):
    text, is_error = toolbox.call("mcp__t__where", {})
    assert (text, is_error) == (f"{workdir}|from-env", False)


def test_tool_that_raises_comes_back_as_its_message_and_an_error(toolbox):
    text, is_error = toolbox.call("mcp__t__fail", {})
    assert is_error
    assert "this tool always fails" in text


def test_arguments_the_tool_rejects_come_back_as_an_error(toolbox):
    text, is_error = toolbox.call("mcp__t__add", {"a": "two"})
    assert is_error and "a" in text and "b" in text


def test_call_over_the_timeout_is_an_error_after_about_the_timeout_and_the_server_still_works(toolbox):
    started = time.monotonic()
    text, is_error = toolbox.call("mcp__t__slow", {"seconds": 10})
    elapsed = time.monotonic() - started
    assert is_error and "did not answer within 1.5 s" in text
    assert 1.4 < elapsed < 4
    assert toolbox.call("mcp__t__add", {"a": 1, "b": 1}) == ("2", False)


def test_long_output_keeps_head_and_tail_and_says_how_much_was_cut(toolbox):
    text, is_error = toolbox.call("mcp__t__big", {"chars": 100_000})
    assert not is_error
    assert text.startswith("BEGIN") and text.endswith("END")
    assert "[... 84000 characters cut ...]" in text
    assert len(text) < 16_100


def test_non_text_content_is_described_briefly(toolbox):
    text, is_error = toolbox.call("mcp__t__picture", {})
    assert (text, is_error) == ("a picture:\n[image: image/png, 67 bytes]", False)


def test_unknown_tools_and_arguments_that_are_not_an_object_are_errors_not_exceptions(toolbox):
    text, is_error = toolbox.call("mcp__t__nope", {})
    assert is_error and "unknown MCP tool" in text
    text, is_error = toolbox.call("mcp__t__add", ["a", "b"])
    assert is_error and "JSON object" in text
    assert toolbox.call("mcp__t__fail", None)[1] is True


def test_calls_from_several_threads_run_at_once(toolbox):
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(toolbox.call("mcp__t__slow", {"seconds": 1})))
        for _ in range(3)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [("slept 1.0s", False)] * 3
    assert time.monotonic() - started < 2.5  # one after the other would take 3 s


def test_missing_command_and_server_that_exits_at_once_are_reported_and_the_other_still_works(toolbox):
    missing, quits = toolbox.errors
    assert missing == "missing: command not found: /nonexistent/mcp-server"
    assert quits.startswith("quits: ") and "no config found" in quits
    assert not any(name.startswith(("mcp__missing__", "mcp__quits__")) for name in map(_name, toolbox.schemas()))
    assert toolbox.call("mcp__t__add", {"a": 1, "b": 2}) == ("3", False)


def _name(schema: dict) -> str:
    return schema["function"]["name"]


# --------------------------------------------------------------------------- lifecycle


def test_no_servers_give_no_tools_and_no_errors(tmp_path):
    with McpToolbox([], cwd=tmp_path, env=None) as box:
        assert box.schemas() == [] and box.errors == []
        assert box.call("mcp__x__y", {})[1] is True


def test_after_exit_no_server_process_is_left_even_one_a_server_started(tmp_path):
    tag = f"mcp-test-{uuid.uuid4().hex[:8]}"
    specs = parse_servers(stdio_line("t", "--tag", tag))
    with McpToolbox(specs, cwd=tmp_path, env=None) as box:
        assert box.errors == []
        text, is_error = box.call("mcp__t__spawn_helper", {})
        assert not is_error
        helper = psutil.Process(int(text))
        # The server and its helper, which ignores SIGTERM.
        assert len(processes_named(tag)) == 2
        started = time.monotonic()
    assert time.monotonic() - started < 8
    assert not processes_named(tag)
    assert not helper.is_running() or helper.status() == psutil.STATUS_ZOMBIE
    text, is_error = box.call("mcp__t__add", {"a": 1, "b": 1})
    assert is_error and "closed" in text


def test_a_server_that_dies_mid_run_makes_its_calls_fail_quickly(tmp_path):
    with McpToolbox(parse_servers(stdio_line("t")), cwd=tmp_path, env=None, call_timeout=20) as box:
        started = time.monotonic()
        assert box.call("mcp__t__crash", {})[1] is True
        text, is_error = box.call("mcp__t__add", {"a": 1, "b": 1})
        assert is_error and text.startswith("t: ")
        assert time.monotonic() - started < 5


def test_a_server_that_never_answers_is_reported_after_the_start_timeout(tmp_path):
    tag = f"mcp-test-{uuid.uuid4().hex[:8]}"
    specs = parse_servers(f"mute: bash -c 'exec -a {tag} sleep 60'")
    started = time.monotonic()
    with McpToolbox(specs, cwd=tmp_path, env=None, start_timeout=1) as box:
        # The SDK's import (about a second when this test runs alone) comes before the timeout.
        assert time.monotonic() - started < 4
        assert box.errors == ["mute: did not start within 1 s"]
    assert not processes_named(tag)


# --------------------------------------------------------------------------- HTTP


def _serve_http(option: str):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), option, str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"tests/mcp_server.py {option} {port} did not start listening") from None
            time.sleep(0.05)
    return port, proc


@pytest.fixture
def http_server():
    port, proc = _serve_http("--http")
    yield f"http://127.0.0.1:{port}/mcp"
    proc.kill()
    proc.wait()


@pytest.fixture
def sse_server():
    port, proc = _serve_http("--sse")
    yield f"http://127.0.0.1:{port}/sse"
    proc.kill()
    proc.wait()


def test_streamable_http_transport_lists_and_calls_tools(http_server, tmp_path):
    with McpToolbox(parse_servers(f"web: {http_server}"), cwd=tmp_path, env=None) as box:
        assert box.errors == []
        assert "mcp__web__add" in map(_name, box.schemas())
        assert box.call("mcp__web__add", {"a": 5, "b": 6}) == ("11", False)
        text, is_error = box.call("mcp__web__fail", {})
        assert is_error and "this tool always fails" in text


def test_sse_transport_lists_and_calls_tools(sse_server, tmp_path):
    [spec] = parse_servers(f"old: {sse_server}")
    assert spec.transport == "sse"
    with McpToolbox([spec], cwd=tmp_path, env=None) as box:
        assert box.errors == []
        assert box.call("mcp__old__shout", {"text": "sse"}) == ("SSE!", False)


def test_an_http_server_nobody_listens_on_is_reported(tmp_path):
    specs = parse_servers(f"gone: http://127.0.0.1:{free_port()}/mcp")
    with McpToolbox(specs, cwd=tmp_path, env=None, start_timeout=10) as box:
        [error] = box.errors
        assert error.startswith("gone: ") and "connect" in error.lower()
        assert box.schemas() == []
