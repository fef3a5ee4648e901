"""Moving cards by keys in a real browser: Alt+ArrowUp/ArrowDown within a column, Alt+ArrowRight to
In Progress (which starts the card), refusals announced with their reason, through the same
request and rules as drag and drop (screenshot keyboard-move.png)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.test_card_page import add_project
from tests.e2e.test_drag_drop import ids_in

pytestmark = pytest.mark.e2e


def test_cards_move_by_keys_by_the_server_s_rules_and_say_so_aloud(board, page, tmp_path, output_dir):
    gate = tmp_path / "keys-gate"
    project = add_project(board, tmp_path / "keys-repo", "keys")
    board.manage("agent", "add", "gated", "--command", f"while [ ! -e '{gate}' ]; do sleep 0.1; done; echo done")

    def add(title: str, *extra: str) -> int:
        return int(board.manage("card", "add", "--project", project, "--title", title, "--agent", "gated",
                                *extra).strip().splitlines()[-1])

    first, second, third = add("First by keys"), add("Second by keys"), add("Third by keys")
    waiting = add("Waits by keys", "--waits-for", str(first))
    page.goto(f"{board.url}/projects/{project}/")
    expect(page.locator("#ws-status")).to_have_text("live", timeout=20_000)
    status = page.locator("#dnd-status")
    assert ids_in(page, "backlog") == [first, second, third, waiting]

    page.locator(f"#card-{third} a.card-title").focus()
    page.keyboard.press("Alt+ArrowUp")
    expect(status).to_have_text(f"Card #{third} moved to Backlog, place 2.")
    assert ids_in(page, "backlog") == [first, third, second, waiting]
    expect(page.locator(f"#card-{third} a.card-title")).to_be_focused()  # the keys go on from there
    page.keyboard.press("Alt+ArrowUp")
    expect(status).to_have_text(f"Card #{third} moved to Backlog, place 1.")
    page.keyboard.press("Alt+ArrowUp")
    expect(status).to_have_text(f"Card #{third} is at the top of its column already.")
    page.keyboard.press("Alt+ArrowLeft")
    expect(status).to_have_text(f"Card #{third} is in the first column already.")
    page.reload()
    assert ids_in(page, "backlog") == [third, first, second, waiting]  # kept by the server

    # To In Progress starts the card; back to the Backlog is refused while it runs.
    page.locator(f"#card-{third} .card-meta").click()  # selected, with nothing focused
    page.keyboard.press("Alt+ArrowRight")
    expect(status).to_have_text(f"Card #{third} moved to In Progress, place 1.")
    expect(page.locator(f"#list-in_progress #card-{third}")).to_have_attribute("data-state", "running", timeout=30_000)
    page.keyboard.press("Alt+ArrowLeft")
    expect(status).to_contain_text("stop it before moving it back to the Backlog")
    expect(page.locator(f"#list-in_progress #card-{third}")).to_be_visible()
    page.screenshot(path=str(output_dir / "keyboard-move.png"))

    # A card that waits for another is not started by keys either, and says why.
    page.locator(f"#card-{waiting} a.card-title").focus()
    page.keyboard.press("Alt+ArrowRight")
    expect(status).to_contain_text(f"This card waits for #{first}")
    expect(page.locator(f"#list-backlog #card-{waiting}")).to_be_visible()
    assert page.url.endswith(f"/projects/{project}/")  # Alt+ArrowLeft was not the browser's Back
    gate.touch()
