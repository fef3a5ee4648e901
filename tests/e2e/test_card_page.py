"""The card page in a real browser: its Start and Stop buttons keep working after the websocket
has re-rendered them, and the header follows the run live."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.conftest import git

pytestmark = pytest.mark.e2e


def test_start_and_stop_on_the_card_page_work_after_live_updates(board, page, tmp_path):
    repo = tmp_path / "card-page-repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# Card page\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "Initial commit")
    project = board.manage("project", "add", str(repo), "--name", "card-page").strip().splitlines()[-1]
    board.manage("agent", "add", "ticker", "--command", "for i in $(seq 1 600); do echo tick $i; sleep 0.2; done")
    card = board.manage("card", "add", "--project", project, "--title", "Tick away", "--agent", "ticker").strip().splitlines()[-1]

    page.goto(f"{board.url}/cards/{card}/")
    expect(page.locator("#ws-status")).to_have_text("live")  # the header has been pushed once already
    page.get_by_role("button", name="Start").click()
    header = page.locator("#card-header")
    expect(header).to_have_attribute("data-state", "running", timeout=30_000)
    expect(header.locator(".last-line")).to_contain_text("tick", timeout=30_000)
    first = header.locator(".last-line").inner_text()
    expect(header.locator(".last-line")).not_to_have_text(first, timeout=10_000)  # it follows the output
    page.get_by_role("button", name="Stop").click()
    expect(header).to_have_attribute("data-state", "stopped", timeout=15_000)
    expect(page.locator("body")).not_to_contain_text("Forbidden")
    expect(header.get_by_role("button", name="Start again")).to_be_visible()
