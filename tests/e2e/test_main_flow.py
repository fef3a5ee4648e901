"""The main flow in a real browser: the board started with ./run, a fresh clone of this repository
added as a project, one card on a command agent and one on the built-in agent (against a scripted
fake model), both started and seen to reach Review as succeeded on the open page, live, without a
reload; then git confirms each card's branch holds its agent's commit and the clone's own checkout
is untouched."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import add_card, git

pytestmark = pytest.mark.e2e

LIVE = 60_000  # ms: how long a card may take to reach Review
COMMAND_AGENT = "e2e-editor"
BUILTIN_AGENT = "e2e-builtin"
COMMAND_CARD = "Note the e2e run"
BUILTIN_CARD = "Write an agent note"
# A real edit in the worktree, from the card's title; its last line becomes the run's summary.
EDIT_COMMAND = 'printf \'%s\\n\' "$CARD_TITLE" >> E2E_NOTES.md && echo "edited E2E_NOTES.md"'


def add_agent(page, board, name: str, kind: str, **fields: str) -> None:
    page.goto(f"{board.url}/agents/")
    form = page.locator("#agent-form")
    form.get_by_label("Name").fill(name)
    form.get_by_label("Kind").select_option(kind)
    for label, value in fields.items():
        form.locator(f"[name={label}]").fill(value)
    form.get_by_role("button", name="Add agent").click()
    expect(page.locator(".messages")).to_contain_text(f"Agent '{name}' added.")
    expect(page.locator("table.agents tbody tr", has_text=name)).to_contain_text("enabled")


def card_json(board, card_id: int) -> dict:
    return json.loads(board.manage("card", "show", str(card_id), "--json").strip().splitlines()[-1])


def test_two_agents_reach_review_live_and_commit_on_their_own_branches(
    board, fake_llm, project_clone, page, output_dir, e2e_dir
):
    started = time.monotonic()
    clone = project_clone.path
    page_errors: list[str] = []
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))

    # --- Projects: a path that is not a repository is refused with a clear message, not a 500.
    not_a_repo = e2e_dir / "not-a-repo"
    not_a_repo.mkdir()
    page.goto(board.url + "/")
    expect(page.get_by_role("heading", name="Projects")).to_be_visible()
    form = page.locator("#project-form")
    form.get_by_label("Repository path").fill(str(not_a_repo))
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/projects/")) as bad:
        form.get_by_role("button", name="Add project").click()
    assert bad.value.status == 422, f"a bad repository path answered {bad.value.status}, expected 422"
    error = page.locator("#project-form .error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("is not a git repository")
    expect(error).to_contain_text(str(not_a_repo))

    # --- The fresh clone is added; the base branch defaults to the one checked out there.
    form.get_by_label("Repository path").fill(str(clone))
    form.get_by_role("button", name="Add project").click()
    page.wait_for_url(re.compile(r"/projects/\d+/$"))
    project_url = page.url
    expect(page.locator(".board-head")).to_contain_text(str(clone))
    expect(page.locator(".board-head code")).to_have_text(project_clone.branch)

    # --- Agents: a command that makes a real edit, and the built-in loop on the fake model.
    add_agent(page, board, COMMAND_AGENT, "command", command=EDIT_COMMAND)
    add_agent(
        page, board, BUILTIN_AGENT, "builtin",
        model="openai/fake-model", api_base=fake_llm.base_url, api_key_env="FAKE_LLM_KEY",
    )

    # --- Two cards, created through the htmx form into the Backlog.
    page.goto(project_url)
    expect(page.locator("#ws-status")).to_have_text("live", timeout=20_000)
    command_id = add_card(page, COMMAND_CARD, "Append the card's title to E2E_NOTES.md.", COMMAND_AGENT)
    builtin_id = add_card(page, BUILTIN_CARD, "Write AGENT_NOTE.md, then finish.", BUILTIN_AGENT)
    assert command_id != builtin_id

    # --- Start both and watch them reach Review on this same page: no reload, no navigation.
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    page.evaluate("window.__noReload = 1")
    for card_id in (command_id, builtin_id):
        card = page.locator(f"#card-{card_id}")
        card.locator("button.start").click()
        # The htmx answer replaces the card at once: it is no longer idle.
        expect(card).not_to_have_attribute("data-state", "idle")
    for card_id, summary in ((command_id, "edited E2E_NOTES.md"), (builtin_id, "Added AGENT_NOTE.md")):
        card = page.locator(f"#list-review #card-{card_id}")
        expect(card).to_have_attribute("data-state", "succeeded", timeout=LIVE)
        expect(card.locator(".badge")).to_have_text("succeeded")
        expect(card.locator(".summary")).to_contain_text(summary)
        expect(card.locator("button.start")).to_have_text("Start again")
    expect(page.locator("#list-review article.card")).to_have_count(2)
    expect(page.locator("#list-backlog article.card, #list-in_progress article.card")).to_have_count(0)
    assert page.evaluate("window.__noReload") == 1, "the page was reloaded"
    assert navigations == [], f"the page navigated while the cards ran: {navigations}"
    expect(page.locator("#ws-status")).to_have_text("live")
    page.screenshot(path=str(output_dir / "board-review.png"), full_page=True)

    # The built-in agent really talked to the model, with the key from the board's environment
    # (the fake model refuses requests without it) and the tools on offer.
    assert len(fake_llm.requests) >= 2, fake_llm.requests
    first = fake_llm.requests[0]
    assert first["model"] == "fake-model"
    assert {t["function"]["name"] for t in first.get("tools", [])} >= {"write_file", "finish"}

    # --- Each card's page: its log, its commit on the branch, its diff.
    for card_id, edited, output in (
        (command_id, "E2E_NOTES.md", "edited E2E_NOTES.md"),
        (builtin_id, "AGENT_NOTE.md", "AGENT_NOTE.md"),
    ):
        page.goto(f"{board.url}/cards/{card_id}/")
        expect(page.locator("#card-header")).to_have_attribute("data-state", "succeeded")
        expect(page.locator("#log")).to_contain_text(output)
        expect(page.locator("#log")).not_to_contain_text("No output yet.")
        expect(page.locator("#commits li").first).to_be_visible()
        expect(page.locator("#diff")).to_contain_text(edited)
        page.screenshot(path=str(output_dir / f"card-{card_id}.png"), full_page=True)

    assert not page_errors, f"JavaScript errors on the pages: {page_errors}"

    # --- git: each branch holds its agent's commit; the clone's own checkout is untouched.
    base = project_clone.branch
    expected = {command_id: ("E2E_NOTES.md", COMMAND_CARD), builtin_id: ("AGENT_NOTE.md", "Written by the fake model.")}
    branches = set()
    for card_id, (path, text) in expected.items():
        data = card_json(board, card_id)
        assert data["state"] == "succeeded", data
        assert data["column"] == "review", data
        branch = data["branch"]
        assert branch and branch != base, data
        branches.add(branch)
        assert git(clone, "branch", "--list", branch), f"branch {branch} is not in the clone"
        ahead = int(git(clone, "rev-list", "--count", f"{base}..{branch}"))
        assert ahead >= 1, f"{branch} has no commit beyond {base}"
        assert git(clone, "merge-base", base, branch) == project_clone.head, f"{branch} was not made from {base}"
        assert data["commits"], data
        assert data["commits"][-1] == git(clone, "rev-parse", branch), data
        assert text in git(clone, "show", f"{branch}:{path}")
        changed = git(clone, "diff", "--name-only", f"{base}...{branch}").splitlines()
        assert changed == [path], f"{branch} changed {changed}, expected only {path}"
        # The worktree lives in the board's data folder, not in the user's repository.
        worktree = Path(data["worktree"]).resolve()
        assert worktree.is_relative_to(board.data_dir.resolve()), data
        assert git(worktree, "symbolic-ref", "--short", "HEAD") == branch
        assert git(worktree, "status", "--porcelain") == "", f"{branch}: the agent's work was not all committed"
    assert len(branches) == 2
    assert set(git(clone, "for-each-ref", "--format=%(refname:short)", "refs/heads").split()) == {base, *branches}

    assert git(clone, "status", "--porcelain") == project_clone.status == ""
    assert git(clone, "rev-parse", "HEAD") == project_clone.head
    assert git(clone, "symbolic-ref", "--short", "HEAD") == project_clone.branch
    assert git(clone, "rev-parse", base) == project_clone.head
    for name in ("E2E_NOTES.md", "AGENT_NOTE.md"):
        assert not (clone / name).exists(), f"{name} appeared in the clone's own checkout"

    elapsed = time.monotonic() - started
    print(f"\ne2e main flow: {elapsed:.1f} s in the browser and git checks")
