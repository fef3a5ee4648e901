"""Landing in a real browser: a command agent's card reaches Review, is landed from its card page,
and an open board shows it move to Done live; git confirms the base branch, checked out and clean
in the user's own folder, holds the card's work with nothing left uncommitted."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import OUTPUT_DIR, git

pytestmark = pytest.mark.e2e


def test_a_card_landed_from_its_page_moves_to_done_live_on_the_board(board, browser, page, make_repo):
    repo = make_repo("landing-repo")
    project = board.manage("project", "add", str(repo), "--name", "landing").strip().splitlines()[-1]
    board.manage("agent", "add", "e2e-lander", "--command", "echo 'landed by the board' > LANDED.md; echo wrote LANDED.md")
    card = board.manage("card", "add", "--project", project, "--title", "Write LANDED.md",
                        "--agent", "e2e-lander").strip().splitlines()[-1]

    # The board, open in its own tab the whole time: it must follow the card without a reload.
    page.goto(f"{board.url}/projects/{project}/")
    expect(page.locator("#ws-status")).to_have_text("live", timeout=20_000)
    page.evaluate("window.__noReload = 1")
    page.locator(f"#card-{card} button.start").click()
    in_review = page.locator(f"#list-review #card-{card}")
    expect(in_review).to_have_attribute("data-state", "succeeded", timeout=60_000)
    expect(in_review.locator("button.land")).to_be_visible()

    # The card page: land it with the mode the project chose (merge commit), preselected.
    card_page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    card_page.set_default_timeout(15_000)
    card_page.goto(f"{board.url}/cards/{card}/")
    panel = card_page.locator("#land")
    expect(panel).to_contain_text("Land on main")
    expect(panel.locator("select[name=mode]")).to_have_value("merge")
    card_page.screenshot(path=str(OUTPUT_DIR / "landing-panel.png"), full_page=True)
    panel.get_by_role("button", name="Land", exact=True).click()
    expect(card_page.locator(".messages")).to_contain_text("Landed on main as", timeout=30_000)
    expect(card_page.locator("#land")).to_contain_text("Landed on main as")
    expect(card_page.locator("#card-header")).to_contain_text("Done")
    card_page.screenshot(path=str(OUTPUT_DIR / "landing-card-page.png"), full_page=True)

    # The board saw it move to Done, live.
    done = page.locator(f"#list-done #card-{card}")
    expect(done).to_be_visible(timeout=15_000)
    expect(done).to_contain_text("landed as")
    expect(page.locator(f"#list-review #card-{card}")).to_have_count(0)
    assert page.evaluate("window.__noReload") == 1, "the board was reloaded"
    page.screenshot(path=str(OUTPUT_DIR / "landing-board-done.png"), full_page=True)

    # git: main holds a merge commit with the card's work, and the user's checkout of main shows
    # it with nothing changed; the card's worktree is gone and its branch kept.
    deadline = time.monotonic() + 10
    while True:
        data = json.loads(board.manage("card", "show", card, "--json").strip().splitlines()[-1])
        if data["landed_commit"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert data["column"] == "done" and data["landed_commit"] == git(repo, "rev-parse", "main")
    assert len(git(repo, "rev-list", "--parents", "-n1", "main").split()) == 3
    assert git(repo, "show", "main:LANDED.md") == "landed by the board"
    assert (repo / "LANDED.md").read_text() == "landed by the board\n"
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "branch", "--list", data["branch"])
    assert not Path(data["worktree"]).exists()
    card_page.context.close()
