"""Several agents on one card, in a real browser: a Backlog card is started on two command agents
from its page, both variants reach Review live on an open board, the comparison shows each one's
diff size, state and checks, and landing one from there leaves it in Done while the other is gone
from the board, its worktree and branch with it; git confirms only the chosen work landed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import OUTPUT_DIR, git

pytestmark = pytest.mark.e2e

LIVE = 60_000  # ms for both runs to reach Review


def test_a_card_started_on_two_agents_is_compared_and_the_chosen_one_lands(board, browser, page, make_repo):
    repo = make_repo("compare-repo")
    project = board.manage("project", "add", str(repo), "--name", "compare").strip().splitlines()[-1]
    board.manage("agent", "add", "e2e-brief", "--command", "echo short > BRIEF.md")
    board.manage("agent", "add", "e2e-thorough", "--command",
                 "printf 'one\\ntwo\\nthree\\n' > THOROUGH.md; echo notes > NOTES.md")
    card = board.manage("card", "add", "--project", project, "--title", "Write the notes",
                        "--agent", "e2e-brief").strip().splitlines()[-1]

    # The board stays open in its own tab: the variants must reach Review there without a reload.
    page.goto(f"{board.url}/projects/{project}/")
    expect(page.locator("#ws-status")).to_have_text("live", timeout=20_000)
    page.evaluate("window.__noReload = 1")

    lead = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    lead.set_default_timeout(15_000)
    lead.goto(f"{board.url}/cards/{card}/")
    panel = lead.locator("#variants")
    panel.get_by_label("e2e-brief").check()
    panel.get_by_label("e2e-thorough").check()
    panel.get_by_role("button", name="Start on several").click()
    expect(lead).to_have_url(f"{board.url}/cards/{card}/compare")
    expect(lead.locator(".messages")).to_contain_text("Started 2 variants")

    original = page.locator(f"#list-review #card-{card}")
    variant = page.locator("#list-review article.card", has_text="Write the notes · e2e-thorough")
    expect(original).to_have_attribute("data-state", "succeeded", timeout=LIVE)
    expect(variant).to_have_attribute("data-state", "succeeded", timeout=LIVE)
    expect(original.locator(".variants-link")).to_have_text("Compare 2")
    expect(variant.locator(".variants-link")).to_have_text("Compare 2")
    variant_id = variant.get_attribute("id").removeprefix("card-")
    assert page.evaluate("window.__noReload") == 1, "the board was reloaded"

    # The comparison: it polled itself while the runs went on, and shows both finished.
    rows = lead.locator("tr.variant-row")
    expect(rows).to_have_count(2)
    brief, thorough = lead.locator(f"#variant-{card}"), lead.locator(f"#variant-{variant_id}")
    expect(brief).to_have_attribute("data-state", "succeeded", timeout=LIVE)
    expect(thorough).to_have_attribute("data-state", "succeeded", timeout=LIVE)
    expect(brief.locator(".variant-diff")).to_contain_text("1 file +1 −0")
    expect(thorough.locator(".variant-diff")).to_contain_text("2 files +4 −0")
    expect(brief.locator(".variant-check")).to_contain_text("passed")
    expect(thorough.locator(".variant-label")).to_contain_text("e2e-thorough")
    lead.screenshot(path=str(OUTPUT_DIR / "compare-view.png"), full_page=True)
    before = json.loads(board.manage("card", "show", card, "--json").strip().splitlines()[-1])

    thorough.get_by_role("button", name=f"Land #{variant_id} ").click()
    expect(lead).to_have_url(f"{board.url}/projects/{project}/")
    expect(lead.locator(".messages")).to_contain_text(f"Chose #{variant_id}")
    expect(lead.locator(f"#list-done #card-{variant_id}")).to_be_visible()
    expect(lead.locator(f"#card-{card}")).to_have_count(0)

    # The open board followed, live: the chosen one in Done, the other gone.
    expect(page.locator(f"#list-done #card-{variant_id}")).to_be_visible(timeout=15_000)
    expect(page.locator(f"#card-{card}")).to_have_count(0, timeout=15_000)
    assert page.evaluate("window.__noReload") == 1, "the board was reloaded"
    page.screenshot(path=str(OUTPUT_DIR / "compare-board-after.png"), full_page=True)

    # git: main has the chosen work only; the other's worktree and branch are gone.
    assert git(repo, "show", "main:THOROUGH.md") == "one\ntwo\nthree"
    assert not (repo / "BRIEF.md").exists()
    assert git(repo, "status", "--porcelain") == ""
    assert not Path(before["worktree"]).exists()
    assert git(repo, "branch", "--list", before["branch"]) == ""
