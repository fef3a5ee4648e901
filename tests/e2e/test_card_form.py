"""The board's new-card form in a real browser: "Waits for" loads the project's cards still to land
when the lead goes to it, and the card added waits for the ones chosen (screenshot card-form.png)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.test_card_page import add_project

pytestmark = pytest.mark.e2e


def test_a_card_added_on_the_board_waits_for_the_cards_chosen_in_the_form(board, page, tmp_path, output_dir):
    project = add_project(board, tmp_path / "card-form-repo", "card-form")
    board.manage("agent", "add", "form-quiet", "--command", "echo quiet")
    first = board.manage("card", "add", "--project", project, "--title", "Schema first", "--agent", "form-quiet").strip().splitlines()[-1]
    landed = board.manage("card", "add", "--project", project, "--title", "Old news", "--agent", "form-quiet").strip().splitlines()[-1]
    page.goto(f"{board.url}/projects/{project}/")
    page.locator(f"#card-{landed}").get_by_role("button", name="Mark done").click()
    expect(page.locator(f"#list-done #card-{landed}")).to_be_visible()

    form = page.locator("#card-form")
    form.get_by_label("Title").fill("API after the schema")
    form.locator("[name=agent]").select_option("form-quiet")
    waits = form.get_by_label("Waits for")
    expect(waits.locator("option")).to_have_count(0)  # nothing rendered with the page
    waits.focus()
    expect(waits.locator("option")).to_have_count(1)  # loaded now: the done card is not offered
    waits.select_option(first)
    form.get_by_label("Start by itself when they have landed").check()
    page.screenshot(path=str(output_dir / "card-form.png"))
    form.get_by_role("button", name="Add card").click()

    added = page.locator("#list-backlog article.card", has_text="API after the schema")
    expect(added).to_contain_text(f"waits for #{first}")
    expect(form.get_by_label("Title")).to_have_value("")


def test_a_card_that_could_not_start_by_itself_says_why_on_the_open_board(board, page, tmp_path, output_dir):
    project = add_project(board, tmp_path / "start-fail-repo", "start-fail")
    board.manage("agent", "add", "quiet-fail", "--command", "echo quiet")
    first = board.manage("card", "add", "--project", project, "--title", "Lands first", "--agent", "quiet-fail").strip().splitlines()[-1]
    # The built-in agent with no model set anywhere: it may not start.
    stuck = board.manage("card", "add", "--project", project, "--title", "No model yet", "--waits-for", first,
                         "--start-when-ready").strip().splitlines()[-1]
    page.goto(f"{board.url}/projects/{project}/")
    expect(page.locator("#ws-status")).to_have_text("live", timeout=20_000)
    tile = page.locator(f"#card-{stuck}")
    expect(tile.locator(".start-failure")).to_have_count(0)

    page.locator(f"#card-{first}").get_by_role("button", name="Mark done").click()
    expect(tile.locator(".start-failure")).to_have_text(
        "Did not start by itself: Set a model first: in the project's settings, or on this card.", timeout=15_000)
    expect(page.locator(f"#list-backlog #card-{stuck}")).to_be_visible()
    page.screenshot(path=str(output_dir / "start-failure.png"))
