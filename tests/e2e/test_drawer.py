"""The card's drawer on the board, in a real browser: opened from a card's title, its log follows
the run live, its tabs switch by keyboard, Esc closes it and ?card=<id> reopens it after a reload."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.test_card_page import add_project

pytestmark = pytest.mark.e2e


def test_a_cards_drawer_follows_its_run_live_and_reopens_after_a_reload(board, page, tmp_path, output_dir):
    gate = tmp_path / "drawer-gate"
    project = add_project(board, tmp_path / "drawer-repo", "drawer")
    board.manage(
        "agent", "add", "drawn", "--command",
        # Variables keep the printed words out of the command line, which the log shows too.
        f"a=before b=after; echo $a-gate; while [ ! -e '{gate}' ]; do sleep 0.1; done; "
        "echo $b-gate; echo drawn > drawn.txt",
    )
    card = board.manage("card", "add", "--project", project, "--title", "Draw me out", "--agent", "drawn").strip().splitlines()[-1]
    board_url = f"{board.url}/projects/{project}/"

    page.goto(board_url)
    tile = page.locator(f"#card-{card}")
    tile.get_by_role("button", name="Start", exact=True).click()
    expect(tile).to_have_attribute("data-state", "running", timeout=30_000)

    tile.locator("a.card-title").click()
    drawer = page.get_by_role("dialog", name=f"#{card} Draw me out")
    expect(drawer).to_be_visible()
    expect(page).to_have_url(re.compile(rf"\?card={card}$"))
    activity = drawer.get_by_role("tab", name="Activity")
    expect(activity).to_have_attribute("aria-selected", "true")
    log = drawer.locator("#log")
    expect(log).to_contain_text("before-gate", timeout=30_000)
    expect(log).not_to_contain_text("after-gate")

    gate.touch()
    expect(log).to_contain_text("after-gate", timeout=30_000)  # pushed into the open drawer
    expect(drawer.locator("#card-header")).to_have_attribute("data-state", "succeeded", timeout=30_000)
    expect(tile).to_have_attribute("data-state", "succeeded")
    expect(page.locator("#list-review")).to_contain_text("Draw me out")

    activity.focus()
    page.keyboard.press("ArrowRight")
    diff_tab = drawer.get_by_role("tab", name="Diff")
    expect(diff_tab).to_be_focused()
    expect(diff_tab).to_have_attribute("aria-selected", "true")
    expect(log).to_be_hidden()
    expect(drawer.locator("#diff")).to_contain_text("drawn.txt", timeout=15_000)
    page.screenshot(path=str(output_dir / "drawer.png"))

    page.keyboard.press("ArrowRight")
    expect(drawer.get_by_role("tab", name="Checkpoints")).to_have_attribute("aria-selected", "true")
    expect(drawer.locator("#commits li")).to_have_count(1)
    expect(drawer.locator("#runs")).to_contain_text("succeeded")

    page.keyboard.press("Escape")
    expect(page.locator("#drawer")).to_have_count(0)
    expect(page).to_have_url(board_url)

    page.goto(f"{board_url}?card={card}")
    expect(page.get_by_role("dialog", name=f"#{card} Draw me out")).to_be_visible()
    expect(page.locator("#log")).to_contain_text("after-gate")
    drawer.get_by_role("button", name="Close").click()
    expect(page.locator("#drawer")).to_have_count(0)

    tile.locator(".card-meta").click()  # selects the card; Enter opens the selected card
    page.keyboard.press("Enter")
    expect(drawer).to_be_visible()

    # A stale link to a card that does not exist says so and leaves the address clean.
    page.goto(f"{board_url}?card=999999")
    expect(page.locator("ul.messages .refused")).to_have_text(
        "Card #999999 was not found: it was deleted, or it is not yours to see.")
    expect(page.locator("#drawer")).to_have_count(0)
    expect(page).to_have_url(board_url)


def test_the_drawers_forms_answer_in_the_drawer_and_show_a_refusal_there(board, page, tmp_path, output_dir):
    project = add_project(board, tmp_path / "drawer-forms-repo", "drawer-forms")
    board.manage("agent", "add", "drawer-quiet", "--command", "echo quiet")
    first = board.manage("card", "add", "--project", project, "--title", "Land me first", "--agent", "drawer-quiet").strip().splitlines()[-1]
    card = board.manage("card", "add", "--project", project, "--title", "Wait in the drawer", "--agent", "drawer-quiet",
                        "--waits-for", first).strip().splitlines()[-1]
    board_url = f"{board.url}/projects/{project}/"

    page.goto(board_url)
    page.locator(f"#card-{card} a.card-title").click()
    drawer = page.get_by_role("dialog", name=f"#{card} Wait in the drawer")
    expect(drawer).to_be_visible()

    drawer.locator("#card-header").get_by_role("button", name="Start", exact=True).click()
    alert = drawer.get_by_role("alert")
    expect(alert).to_contain_text(f"This card waits for #{first}")
    expect(page).to_have_url(re.compile(rf"/projects/{project}/\?card={card}$"))  # still the board

    drawer.get_by_role("tab", name="Settings").click()
    drawer.get_by_label("Step budget").fill("9")
    drawer.get_by_role("button", name="Save card settings").click()
    expect(drawer.get_by_role("status")).to_have_text("Card settings saved; the next run uses them.")
    expect(drawer.get_by_role("tab", name="Settings")).to_have_attribute("aria-selected", "true")
    expect(drawer.get_by_label("Step budget")).to_have_value("9")
    page.screenshot(path=str(output_dir / "drawer-forms.png"))

    drawer.get_by_role("tab", name="Activity").click()
    drawer.get_by_role("button", name="Mark done").click()
    expect(drawer.locator("#card-header")).to_contain_text("Done")
    expect(page.locator(f"#list-done #card-{card}")).to_be_visible(timeout=15_000)
    expect(page).to_have_url(re.compile(rf"/projects/{project}/\?card={card}$"))
