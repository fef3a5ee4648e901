"""The card page in a real browser: its Start and Stop buttons keep working after the websocket
has re-rendered them, the header follows the run live, and a page cut off from the board while
its run ends is made right when it reconnects."""

from __future__ import annotations

import json
import time

import pytest
from playwright.sync_api import expect

from tests.conftest import git
from tests.e2e.conftest import OUTPUT_DIR

pytestmark = pytest.mark.e2e


def add_project(board, folder, name: str) -> str:
    """A one-commit repository at ``folder``, added to the board as project ``name``; its id."""
    folder.mkdir()
    git(folder, "init", "-q", "-b", "main")
    (folder / "README.md").write_text(f"# {name}\n")
    git(folder, "add", "README.md")
    git(folder, "commit", "-q", "-m", "Initial commit")
    return board.manage("project", "add", str(folder), "--name", name).strip().splitlines()[-1]


def test_start_and_stop_on_the_card_page_work_after_live_updates(board, page, tmp_path):
    project = add_project(board, tmp_path / "card-page-repo", "card-page")
    board.manage("agent", "add", "ticker", "--command", "for i in $(seq 1 600); do echo tick $i; sleep 0.2; done")
    card = board.manage("card", "add", "--project", project, "--title", "Tick away", "--agent", "ticker").strip().splitlines()[-1]

    page.goto(f"{board.url}/cards/{card}/")
    expect(page.locator("#ws-status")).to_have_text("live")  # the header has been pushed once already
    page.get_by_role("button", name="Start", exact=True).click()
    header = page.locator("#card-header")
    expect(header).to_have_attribute("data-state", "running", timeout=30_000)
    expect(header.locator(".last-line")).to_contain_text("tick", timeout=30_000)
    first = header.locator(".last-line").inner_text()
    expect(header.locator(".last-line")).not_to_have_text(first, timeout=10_000)  # it follows the output
    page.get_by_role("button", name="Stop").click()
    expect(header).to_have_attribute("data-state", "stopped", timeout=15_000)
    expect(page.locator("body")).not_to_contain_text("Forbidden")
    expect(header.get_by_role("button", name="Start again")).to_be_visible()


def test_a_card_page_cut_off_while_its_run_finishes_shows_it_right_after_reconnecting(board, page, tmp_path):
    go = tmp_path / "finish-now"
    project = add_project(board, tmp_path / "reconnect-repo", "reconnect")
    board.manage(
        "agent", "add", "waiter", "--command",
        # Variables keep the printed words out of the command line, which the log shows too.
        f"a=early b=late; echo $a-output; while [ ! -e '{go}' ]; do sleep 0.1; done; "
        "for i in 1 2 3; do echo $b-output-$i; done; echo done > result.txt",
    )
    card = board.manage("card", "add", "--project", project, "--title", "Wait for it", "--agent", "waiter").strip().splitlines()[-1]

    # Every websocket of the page goes through this route, so the test can cut the network and
    # keep it cut, the way a laptop's sleep or a proxy's restart does, and then let it back.
    cut = {"on": False}
    sockets = []

    def route(ws):
        if cut["on"]:
            ws.close(code=1012)  # "service restart": the page keeps trying, as after a real drop
            return
        sockets.append((ws, ws.connect_to_server()))

    page.route_web_socket("**/ws/**", route)
    page.goto(f"{board.url}/cards/{card}/")
    expect(page.locator("#ws-status")).to_have_text("live")
    page.get_by_role("button", name="Start", exact=True).click()
    log = page.locator("#log")
    expect(log).to_contain_text("early-output", timeout=30_000)

    cut["on"] = True
    for ws, server in sockets:
        server.close()
        ws.close(code=1012)
    expect(page.locator("#ws-status")).to_have_text("reconnecting…")
    go.touch()
    deadline = time.monotonic() + 30
    while json.loads(board.manage("card", "show", card, "--json").strip().splitlines()[-1])["state"] != "succeeded":
        assert time.monotonic() < deadline, "the run did not end"
        time.sleep(0.3)
    expect(log).not_to_contain_text("late-output")  # nothing reached the page meanwhile

    cut["on"] = False
    expect(page.locator("#ws-status")).to_have_text("live", timeout=15_000)
    expect(log).to_contain_text("late-output-3", timeout=10_000)
    header = page.locator("#card-header")
    expect(header).to_have_attribute("data-state", "succeeded")
    expect(header).to_contain_text("Review")
    expect(page.locator("#commits")).to_contain_text(f"Card #{card}: Wait for it")
    text = log.inner_text()
    assert text.count("early-output") == 1, "what the page had is not sent twice"
    assert text.index("late-output-1") < text.index("late-output-2") < text.index("late-output-3")
    page.screenshot(path=str(OUTPUT_DIR / "card-page-after-reconnect.png"), full_page=True)
