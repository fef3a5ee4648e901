"""The board's everyday UX in a real browser (issue 7): keys (n, /, s, ?, Esc, and none while
typing), search and label filters that hold for cards pushed later, the title count when a card
fails or reaches Review live, and dark mode remembered; screenshots of the board, light and dark,
in test-output/e2e."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e

LIVE = 60_000  # ms for a command agent's run to end


def add_card_by_keys(page, title: str, agent: str, labels: str) -> None:
    """``n`` focuses the form's title; the rest is typed, and typed letters never fire keys."""
    page.locator("body").press("n")
    title_field = page.locator("#card-form [name=title]")
    expect(title_field).to_be_focused()
    title_field.type(title)  # holds n, s and / : none may act as a key here
    expect(title_field).to_have_value(title)
    title_field.press("Escape")  # leaves the field, keeping what was typed
    expect(title_field).not_to_be_focused()
    expect(title_field).to_have_value(title)
    page.locator("#card-form [name=labels]").fill(labels)
    page.locator("#card-form [name=agent]").select_option(agent)
    page.locator("#card-form").get_by_role("button", name="Add card").click()
    expect(page.locator("#list-backlog article.card", has_text=title)).to_be_visible()
    expect(page.locator("#card-form [name=title]")).to_have_value("")


def test_keys_search_filters_title_count_and_dark_mode(board, page, make_repo, output_dir):
    repo = make_repo("ux-repo")
    project = board.manage("project", "add", str(repo), "--name", "ux").strip().splitlines()[-1]
    board.manage("agent", "add", "e2e-ux-ok", "--command", "echo 'all done' > DONE.md; sleep 1; echo done")
    board.manage("agent", "add", "e2e-ux-fail", "--command", "sleep 1; echo broken; exit 3")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    page.goto(f"{board.url}/projects/{project}/")
    expect(page.locator("#ws-status")).to_have_text("live", timeout=20_000)
    expect(page.locator(".column-empty", has_text="No cards waiting")).to_be_visible()
    base_title = page.title()
    assert not base_title.startswith("(")

    # ? shows the keys; Esc closes them.
    page.locator("body").press("?")
    expect(page.locator("#keys-help")).to_be_visible()
    expect(page.locator("#keys-help")).to_contain_text("Start the focused or selected card")
    page.keyboard.press("Escape")
    expect(page.locator("#keys-help")).to_be_hidden()

    add_card_by_keys(page, "Alpha notes", "e2e-ux-ok", "docs, Good First")
    add_card_by_keys(page, "Beta breaks", "e2e-ux-fail", "backend")
    alpha = page.locator("article.card", has_text="Alpha notes")
    beta = page.locator("article.card", has_text="Beta breaks")
    expect(alpha.locator(".chip", has_text="good-first")).to_be_visible()
    expect(page.locator(".column-empty", has_text="No cards waiting")).to_be_hidden()
    assert alpha.get_attribute("data-state") == "idle"  # typing "s" in the title started nothing

    # / focuses the search; it filters at once; Esc leaves the field.
    page.locator("body").press("Escape")
    page.locator("body").press("/")
    search = page.locator("#board-search")
    expect(search).to_be_focused()
    search.type("alpha")
    expect(alpha).to_be_visible()
    expect(beta).to_be_hidden()
    search.fill("")
    page.locator("#filter-label").select_option("backend")
    expect(beta).to_be_visible()
    expect(alpha).to_be_hidden()
    page.locator("#filter-label").select_option("")
    expect(alpha).to_be_visible()

    # s starts the selected card; its failure arrives by push and counts in the title.
    beta.locator(".card-meta").click()
    expect(beta).to_have_class(re.compile(r"\bselected\b"))
    page.keyboard.press("s")
    expect(page.locator("#list-in_progress article.card", has_text="Beta breaks")).to_be_visible()
    expect(page.locator("article.card[data-state=failed]", has_text="Beta breaks")).to_have_count(1, timeout=LIVE)
    expect(page).to_have_title(f"(1) {base_title}", timeout=10_000)

    # Start Alpha, then search for Beta only: Alpha's pushes (running, then Review) stay hidden.
    alpha.locator(".card-meta").click()
    page.keyboard.press("s")
    expect(page.locator("#list-in_progress article.card", has_text="Alpha notes")).to_have_count(1)
    page.locator("body").press("/")
    search.type("beta")
    expect(page.locator("#list-review article.card[data-state=succeeded]", has_text="Alpha notes")).to_have_count(1, timeout=LIVE)
    expect(page.locator("article.card", has_text="Alpha notes")).to_be_hidden()
    expect(page.locator("#filter-status")).to_have_text("1 of 2 cards shown")
    expect(page).to_have_title(f"(2) {base_title}", timeout=10_000)

    search.fill("")
    page.locator("body").press("Escape")
    expect(page.locator("article.card", has_text="Alpha notes")).to_be_visible()
    page.screenshot(path=str(output_dir / "board-ux-light.png"), full_page=True)

    # Dark mode: a toggle with a label, remembered after a reload.
    toggle = page.get_by_role("button", name="Dark mode")
    toggle.click()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    expect(toggle).to_have_attribute("aria-pressed", "true")
    page.reload()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    expect(page.locator("#ws-status")).to_have_text("live", timeout=20_000)
    page.screenshot(path=str(output_dir / "board-ux-dark.png"), full_page=True)
    assert page.title() == base_title  # a reload counts only what changes from then on
    assert errors == [], errors
