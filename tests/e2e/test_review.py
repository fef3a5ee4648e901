"""Reviewing a card in a real browser: a command agent's card reaches Review with a change in two
files (one renamed); the lead reads the diff unified and side by side (the choice is remembered),
comments on a line, and sends the comment back; the card runs again with the comment in its
follow-up, which the agent prints into the card's log."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.conftest import git
from tests.e2e.conftest import OUTPUT_DIR

pytestmark = pytest.mark.e2e

APP = "".join(f"def value_{n}():\n    return {n}\n\n" for n in range(1, 9))
# First run: rename notes.txt, change one line of app.py. A follow-up run prints the prompt it got
# (its own words read from the environment, so the log shows what the agent was told) and waits a
# little, so that the page can see it running.
AGENT = (
    "if [ -e NOTES.md ]; then printf 'FOLLOW-UP PROMPT: %s\\n' \"$CARD_PROMPT\"; sleep 4; "
    "else git mv notes.txt NOTES.md && sed -i 's/return 4$/return 40/' app.py && echo changed two files; fi"
)


def test_the_lead_comments_on_a_line_side_by_side_and_sends_it_back_to_the_agent(board, page, tmp_path):
    repo = tmp_path / "review-repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "app.py").write_text(APP)
    (repo / "notes.txt").write_text("Notes of the project.\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "Initial commit")
    project = board.manage("project", "add", str(repo), "--name", "review").strip().splitlines()[-1]
    board.manage("agent", "add", "reviewee", "--command", AGENT)
    card = board.manage("card", "add", "--project", project, "--title", "Change two files", "--agent", "reviewee").strip().splitlines()[-1]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    page.goto(f"{board.url}/cards/{card}/")
    expect(page.locator("#ws-status")).to_have_text("live")
    page.get_by_role("button", name="Start", exact=True).click()
    header = page.locator("#card-header")
    expect(header).to_have_attribute("data-state", "succeeded", timeout=30_000)

    # The diff, pushed when the run ended: loaded by the panel itself, unified by default.
    diff = page.locator("#diff")
    expect(diff.locator(".diff-summary")).to_contain_text("2 files", timeout=15_000)
    expect(diff.locator(".diff-files")).to_contain_text("notes.txt → NOTES.md")
    expect(diff.locator(".diff-file[data-path='NOTES.md']")).to_contain_text("Renamed; the contents did not change.")
    app = diff.locator(".diff-file[data-path='app.py']")
    expect(app.locator("table.diff-table.unified")).to_be_visible()
    expect(app.locator("tr.ln.add")).to_contain_text("return 40")
    expect(app.locator("tr.ln.add .k")).to_have_text("return")  # highlighted as Python
    diff.screenshot(path=str(OUTPUT_DIR / "review-diff-unified.png"))

    diff.get_by_role("link", name="Side by side").click()
    expect(diff.locator(".diff-file[data-path='app.py'] table.diff-table.split")).to_be_visible()
    changed = diff.locator(".diff-file[data-path='app.py'] tr.ln", has=page.locator("td.code.add"))
    expect(changed.locator("td.code.del")).to_contain_text("return 4")
    expect(changed.locator("td.code.add")).to_contain_text("return 40")
    diff.screenshot(path=str(OUTPUT_DIR / "review-diff-side-by-side.png"))
    page.reload()  # the choice is remembered
    expect(page.locator("#diff .diff-file[data-path='app.py'] table.diff-table.split")).to_be_visible()
    expect(page.locator("#ws-status")).to_have_text("live")

    # A comment on the new line 11 ("return 40"): the form opens under the line.
    diff = page.locator("#diff")
    diff.locator(".diff-file[data-path='app.py'] button.line-no[data-side='new'][data-line='11']").click()
    form = diff.locator("form.comment-form")
    expect(form.locator(".comment-where")).to_have_text("Comment on new line 11 of app.py")
    form.locator("textarea[name=text]").fill("Forty is wrong: keep it at four.")
    form.get_by_role("button", name="Add comment").click()
    shown = diff.locator(".diff-file[data-path='app.py'] .comments-row .comment")
    expect(shown).to_contain_text("Forty is wrong: keep it at four.")
    expect(diff.locator("form.comment-form")).to_have_count(0)
    listed = page.locator("#review-comments")
    expect(listed).to_contain_text("app.py:11 (new side)")
    page.locator("#diff").screenshot(path=str(OUTPUT_DIR / "review-diff-commented.png"))

    listed.locator("textarea[name=message]").fill("Then run the tests.")
    listed.get_by_role("button", name="Send 1 comment back to the agent").click()
    expect(listed).to_contain_text("Sent 1 comment to the agent as one follow-up")
    expect(header).to_have_attribute("data-state", "running", timeout=15_000)
    log = page.locator("#log")
    expect(log).to_contain_text("FOLLOW-UP PROMPT:", timeout=15_000)
    expect(log).to_contain_text("app.py:11 (new side)")
    expect(log).to_contain_text("Forty is wrong: keep it at four.")
    expect(log).to_contain_text("Then run the tests.")
    expect(header).to_have_attribute("data-state", "succeeded", timeout=30_000)
    expect(page.locator("#review-comments")).not_to_contain_text("Forty is wrong")
    page.screenshot(path=str(OUTPUT_DIR / "review-after-follow-up.png"), full_page=True)
    assert not errors, f"JavaScript errors on the page: {errors}"
