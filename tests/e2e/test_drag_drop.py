"""Drag and drop in a real browser: a Backlog card dropped on In Progress starts and runs, live; two
Backlog cards reordered keep their order after a reload; a drop on Done is refused with the reason
shown on the card, which goes back to its column; a card waiting for another shows it and is not
started by a drop. The server decides every drop."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import OUTPUT_DIR

pytestmark = pytest.mark.e2e


def drag(page, card, x: float, y: float) -> None:
    """Drag ``card`` (a locator) by its meta line to the page point (x, y) with real pointer moves,
    as SortableJS (forceFallback) needs them."""
    box = card.locator(".card-meta").bounding_box()
    sx, sy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(sx, sy)
    page.mouse.down()
    page.mouse.move(sx + 6, sy + 6, steps=4)
    page.mouse.move(x, y, steps=25)
    page.wait_for_timeout(150)
    page.mouse.move(x, y + 1, steps=2)
    page.mouse.up()


def ids_in(page, column: str) -> list[int]:
    return [int(i.removeprefix("card-")) for i in
            page.locator(f"#list-{column} > article.card").evaluate_all("els => els.map(e => e.id)")]


def test_cards_are_dragged_between_and_within_columns_by_the_server_s_rules(board, page, make_repo):
    repo = make_repo("dnd-repo")
    project = board.manage("project", "add", str(repo), "--name", "dnd").strip().splitlines()[-1]
    board.manage("agent", "add", "e2e-dragged", "--command", "sleep 1; echo dragged > DRAGGED.md; echo wrote DRAGGED.md")

    def add(title: str, *extra: str) -> int:
        out = board.manage("card", "add", "--project", project, "--title", title, "--agent", "e2e-dragged", *extra)
        return int(out.strip().splitlines()[-1])

    first, second, third = add("Dragged to In Progress"), add("Second in line"), add("Third in line")
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    page.goto(f"{board.url}/projects/{project}/")
    expect(page.locator("#ws-status")).to_have_text("live", timeout=20_000)
    assert ids_in(page, "backlog") == [first, second, third]

    # To In Progress: the server starts the card, and the open board follows its run, live.
    target = page.locator("#list-in_progress").bounding_box()
    with page.expect_response(lambda r: r.url.endswith(f"/cards/{first}/drop")) as answer:
        drag(page, page.locator(f"#card-{first}"), target["x"] + target["width"] / 2, target["y"] + 20)
    assert answer.value.status == 200
    expect(page.locator(f"#list-in_progress #card-{first}, #list-review #card-{first}")).to_be_visible()
    in_review = page.locator(f"#list-review #card-{first}")
    expect(in_review).to_have_attribute("data-state", "succeeded", timeout=60_000)

    # Within the Backlog: the third card dropped above the second; the order survives a reload.
    above = page.locator(f"#card-{second}").bounding_box()
    with page.expect_response(lambda r: r.url.endswith(f"/cards/{third}/drop")) as answer:
        drag(page, page.locator(f"#card-{third}"), above["x"] + above["width"] / 2, above["y"] + 4)
    assert answer.value.status == 200
    expect(page.locator("#list-backlog > article.card").first).to_have_id(f"card-{third}")
    page.reload()
    expect(page.locator("#ws-status")).to_have_text("live", timeout=20_000)
    assert ids_in(page, "backlog") == [third, second]

    # To Done: refused (only landing or Mark done put a card there); the card is back in the
    # Backlog with the reason on it.
    done = page.locator("#list-done").bounding_box()
    with page.expect_response(lambda r: r.url.endswith(f"/cards/{second}/drop")) as answer:
        drag(page, page.locator(f"#card-{second}"), done["x"] + done["width"] / 2, done["y"] + 20)
    assert answer.value.status == 409
    back = page.locator(f"#list-backlog #card-{second}")
    expect(back).to_be_visible()
    expect(back.locator(".error")).to_contain_text("reaches Done only by landing")
    expect(page.locator(f"#list-done #card-{second}")).to_have_count(0)
    assert ids_in(page, "backlog") == [third, second]

    # A card that waits for another says so, and a drop on In Progress is refused with what it
    # waits for.
    waiting = add("Waits for the second", "--waits-for", str(second), "--start-when-ready")
    card = page.locator(f"#list-backlog #card-{waiting}")
    expect(card.locator(".waits")).to_contain_text(f"waits for #{second}")
    with page.expect_response(lambda r: r.url.endswith(f"/cards/{waiting}/drop")) as answer:
        drag(page, card, target["x"] + target["width"] / 2, target["y"] + 20)
    assert answer.value.status == 409
    expect(page.locator(f"#list-backlog #card-{waiting} .error")).to_contain_text(f"waits for #{second}")
    page.screenshot(path=str(OUTPUT_DIR / "drag-drop-board.png"), full_page=True)
    assert not page_errors, page_errors
