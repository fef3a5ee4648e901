"""Logging in through the login page in Chromium, on a board started with a login required
(BOARD_LOGIN_REQUIRED=true, as a board bound to the network is): the board, its live socket, and
the buttons a viewer may not use hidden, and the server's refusal shown when one is used anyway. Screenshots login.png and board-as-viewer.png in
test-output/e2e."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import running_board, session_log

pytestmark = pytest.mark.e2e

PASSWORD = "a long e2e password"


@pytest.fixture(scope="module")
def login_board(tmp_path_factory, output_dir):
    """``./run --port N`` with BOARD_LOGIN_REQUIRED=true and a data folder of its own
    (conftest's running_board: stopped with SIGINT at the end, every process gone)."""
    with running_board(tmp_path_factory.mktemp("login") / "data", session_log(output_dir, "login-board"),
                       BOARD_WORKERS="1", BOARD_LOGIN_REQUIRED="true") as board:
        yield board


def test_a_viewer_logs_in_through_the_login_page_and_sees_the_board_and_a_member_more(login_board, page, make_repo, output_dir):
    repo = make_repo("login-repo")
    project_id = login_board.manage("project", "add", str(repo), "--name", "shared-project").strip().splitlines()[-1]
    login_board.manage("card", "add", "--project", project_id, "--title", "Read me, do not start me")
    login_board.manage("shell", "-c", f"from django.contrib.auth.models import User; User.objects.create_user('vera', password={PASSWORD!r})")
    login_board.manage("member", "add", "vera", project_id, "viewer")
    login_board.manage("shell", "-c", f"from django.contrib.auth.models import User; User.objects.create_user('mia', password={PASSWORD!r})")
    login_board.manage("member", "add", "mia", project_id, "member")

    page.goto(f"{login_board.url}/projects/{project_id}/")
    expect(page).to_have_url(f"{login_board.url}/login?next=/projects/{project_id}/")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.screenshot(path=str(output_dir / "login.png"), full_page=True)

    page.get_by_label("Username").fill("vera")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-form .error")).to_contain_text("correct username and password")

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{login_board.url}/projects/{project_id}/")
    expect(page.locator("#who-name")).to_have_text("vera")
    card = page.locator("#list-backlog article.card", has_text="Read me, do not start me")
    expect(card).to_be_visible()
    expect(page.locator("#ws-status")).to_have_text("live")  # the socket let her in
    expect(page.locator("body")).to_have_attribute("data-role", "viewer")
    expect(card.locator("button.start")).to_be_hidden()  # a viewer reads
    expect(page.locator("#card-form")).to_be_hidden()
    expect(page.get_by_role("link", name="Settings")).to_be_hidden()  # a maintainer's
    # The s key still finds the hidden Start: the server refuses, and the page says why.
    card.locator(".card-meta").click()  # selects the card (its title would open the drawer)
    page.locator("body").press("s")
    expect(page.locator("ul.messages .refused")).to_have_text("This needs the member role in this project; you are a viewer.")
    expect(card).to_have_attribute("data-state", "idle")
    # A move by keys is refused as well, and what is said aloud is the refusal, not a move.
    card.locator(".card-meta").click()
    page.locator("body").press("Alt+ArrowRight")
    expect(page.locator("#dnd-status")).to_contain_text("stays where it was: This needs the member role")
    expect(page.locator("#list-backlog article.card", has_text="Read me, do not start me")).to_be_visible()
    page.screenshot(path=str(output_dir / "board-as-viewer.png"), full_page=True)

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{login_board.url}/login")
    page.goto(f"{login_board.url}/")
    expect(page).to_have_url(f"{login_board.url}/login?next=/")

    # A member starts cards but neither marks them done nor changes the project's settings.
    page.get_by_label("Username").fill("mia")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{login_board.url}/projects/{project_id}/")
    expect(page.locator("body")).to_have_attribute("data-role", "member")
    expect(card.locator("button.start")).to_be_visible()
    expect(card.locator("button.mark-done")).to_be_hidden()
    expect(page.get_by_role("link", name="Settings")).to_be_hidden()
    expect(page.locator("#card-form")).to_be_visible()
