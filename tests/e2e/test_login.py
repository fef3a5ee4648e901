"""Logging in through the login page in Chromium, on a board started with a login required
(BOARD_LOGIN_REQUIRED=true, as a board bound to the network is): the board, its live socket, and
the buttons a viewer may not use hidden, and the server's refusal shown when one is used anyway. Screenshots login.png and board-as-viewer.png in
test-output/e2e."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
from playwright.sync_api import expect

from tests.conftest import free_port
from tests.e2e.conftest import NOT_INHERITED, REPO_ROOT, START_TIMEOUT, Board, _stop, _tree, git

pytestmark = pytest.mark.e2e

PASSWORD = "a long e2e password"


@pytest.fixture(scope="module")
def login_board(tmp_path_factory, output_dir):
    """``./run --port N`` with BOARD_LOGIN_REQUIRED=true and a data folder of its own; stopped with
    SIGINT at the end, every process gone (conftest's _stop)."""
    import os

    port = free_port()
    data_dir = tmp_path_factory.mktemp("login") / "data"
    data_dir.mkdir()
    log_path = output_dir / "login-board.log"
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    env.update(BOARD_DATA_DIR=str(data_dir), BOARD_WORKERS="1", BOARD_LOGIN_REQUIRED="true", PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(["./run", "--port", str(port)], cwd=REPO_ROOT, env=env, start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    board = Board(url=f"http://127.0.0.1:{port}", port=port, proc=proc, data_dir=data_dir, log_path=log_path, env=env)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "Board running at http://" not in board.log():
            if proc.poll() is not None:
                pytest.fail(f"./run exited with status {proc.returncode} before the board ran:\n{board.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"The board did not start within {START_TIMEOUT:.0f} s:\n{board.log()}")
            time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port), 5):
            pass
        board.tree = _tree(proc.pid)
        yield board
    finally:
        _stop(board)


def test_a_viewer_logs_in_through_the_login_page_and_sees_the_board_and_a_member_more(login_board, page, tmp_path, output_dir):
    repo = tmp_path / "login-repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# Login\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "Initial commit")
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
