"""A tiny MCP server for the tests of ``agents/mcp_tools.py``, made with the SDK's MCPServer
(mcp 2's name for FastMCP).

    python tests/mcp_server.py [--http PORT | --sse PORT] [--tag TEXT]

Without an option it serves over stdio; ``--http`` serves streamable HTTP at
``http://127.0.0.1:PORT/mcp`` and ``--sse`` the older SSE transport at
``http://127.0.0.1:PORT/sse``. ``--tag`` is ignored by the server: it only puts a word on the
command line (and on the helper processes ``spawn_helper`` starts), so a test can find every
process of its own with psutil.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import subprocess
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ImageContent, TextContent

server = MCPServer("board-test-server")
TAG = ""

# One transparent pixel, so the client has a non-text content block to describe.
PIXEL_PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
    )
).decode()


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers and return the sum."""
    return a + b


@server.tool()
def shout(text: str) -> str:
    """Return the text in capital letters with an exclamation mark."""
    return text.upper() + "!"


@server.tool()
def fail() -> str:
    """Always raise an error."""
    # ToolError, because the SDK hides the message of any other exception from the client.
    raise ToolError("this tool always fails")


@server.tool()
def crash() -> str:
    """End the server process at once, without answering."""
    os._exit(3)


@server.tool()
async def slow(seconds: float) -> str:
    """Sleep for the given number of seconds, then say so."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}s"


@server.tool()
def big(chars: int) -> str:
    """Return a text of the given length: 'BEGIN', then dots, then 'END'."""
    return "BEGIN" + "." * max(chars - 8, 0) + "END"


@server.tool()
def picture() -> list:
    """Return a caption and a one-pixel image."""
    return [
        TextContent(type="text", text="a picture:"),
        ImageContent(type="image", data=PIXEL_PNG, mime_type="image/png"),
    ]


@server.tool()
def where() -> str:
    """Return the server's working folder and the value of BOARD_TEST_VALUE."""
    return f"{os.getcwd()}|{os.environ.get('BOARD_TEST_VALUE', '')}"


# Names a model provider would refuse: the client must rename them and still reach them.
@server.tool(name="docs.search/v2")
def dotted(query: str) -> str:
    """Echo the query (a tool whose name has a dot and a slash)."""
    return f"found {query}"


@server.tool(name="a_tool_name_long_enough_that_the_prefixed_name_passes_sixty_four_chars")
def long_named() -> str:
    """Say hello (a tool whose name is too long once prefixed)."""
    return "hello from the long name"


@server.tool()
def spawn_helper() -> int:
    """Start a long-sleeping helper process in the server's process group; return its pid.

    The helper ignores SIGTERM, so only a group-wide SIGKILL (or a sweep) ends it."""
    helper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)",
            f"helper-{TAG}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return helper.pid


def main() -> None:
    global TAG
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT/mcp")
    group.add_argument("--sse", type=int, metavar="PORT", help="serve SSE on 127.0.0.1:PORT/sse")
    parser.add_argument("--tag", default="", help="a word for the command line only")
    args = parser.parse_args()
    TAG = args.tag
    if args.http:
        server.run("streamable-http", host="127.0.0.1", port=args.http)
    elif args.sse:
        server.run("sse", host="127.0.0.1", port=args.sse)
    else:
        server.run()


if __name__ == "__main__":
    main()
