"""The built-in agent's conversations with the lead, in a real browser: a plan reviewed, edited and
approved on the board; a command denied with a reason and another approved; a follow-up sent from
the card page. The ready-made agent ``built-in`` takes its model from the project's settings, set
through the settings page to a scripted fake model; every step is watched live on the open page
(no reload), and git and the model's received requests confirm what the pages show."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import FAKE_LLM_KEY, add_card, git
from tests.fake_llm import SCRIPT_EXHAUSTED, FakeLLM

pytestmark = pytest.mark.e2e

LIVE = 45_000  # ms a run may take to reach the next state a test waits for
MODEL = "openai/fake-model"
AGENT = "built-in"

# --- Plan first
PLAN_CARD = "Plan a greeting file"
PLAN = "1. Create GREETING.md with a greeting.\n2. Finish."
EDITED_PLAN = "1. Create GREETING.md saying: Hello from the edited plan.\n2. Nothing else; then finish."
GREETING = "Hello from the edited plan.\n"

# --- Approvals (exact commands, with characters HTML and shells care about)
DENY_CARD = "Deny the risky command"
DENY_COMMAND = "printf 'must not exist\\n' > DENIED.txt && echo \"wrote <DENIED.txt> & more\""
DENY_REASON = "No files from commands here; the lead says 'use write_file' <please>."
APPROVE_CARD = "Approve the effect command"
APPROVE_COMMAND = "printf '%s\\n' \"approved & run <ok>\" > APPROVED.txt && echo \"wrote 'APPROVED.txt'\""

# --- Follow-up
FOLLOW_CARD = "Notes with a follow-up"
FOLLOW_UP = "Please add a second line saying: Changed after the follow-up."


def call(name: str, **arguments) -> dict:
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


# One script per card, picked by the card's title (the task line of the conversation's first user
# message). Reply N answers the conversation's N-th request (N assistant messages already in it).
SCRIPTS: dict[str, list[dict]] = {
    PLAN_CARD: [
        call("finish", summary=PLAN),
        call("write_file", path="GREETING.md", content=GREETING),
        call("finish", summary="Wrote GREETING.md as the plan said"),
    ],
    DENY_CARD: [
        call("run_command", command=DENY_COMMAND),
        call("finish", summary="Left the command out, as the lead asked"),
    ],
    APPROVE_CARD: [
        call("run_command", command=APPROVE_COMMAND),
        call("finish", summary="Ran the approved command"),
    ],
    FOLLOW_CARD: [
        call("write_file", path="NOTES.md", content="First line.\n"),
        call("finish", summary="Wrote NOTES.md"),
        # The follow-up's first answer comes slowly, so the card is seen In Progress before Review.
        {"delay": 2.5, **call("write_file", path="NOTES.md", content="First line.\nChanged after the follow-up.\n")},
        call("finish", summary="Added the follow-up's line"),
    ],
}


def task_of(body: dict) -> str:
    """The card title a request's conversation is about ("" when none)."""
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            match = re.match(r"Task: (.*)", str(message.get("content") or ""))
            return match.group(1).strip() if match else ""
    return ""


class RoutedLLM(FakeLLM):
    """A FakeLLM serving several scripted conversations at once, each chosen by its card's title."""

    def reply_for(self, body: dict) -> dict:
        script = SCRIPTS.get(task_of(body), [])
        n = sum(1 for m in body.get("messages") or [] if isinstance(m, dict) and m.get("role") == "assistant")
        return script[n] if n < len(script) else {"content": SCRIPT_EXHAUSTED}

    def conversation(self, title: str) -> list[dict]:
        """The requests received for the card ``title``, in arrival order."""
        return [body for body in list(self.requests) if task_of(body) == title]


@pytest.fixture(scope="module")
def routed_llm():
    llm = RoutedLLM(api_key=FAKE_LLM_KEY)
    llm.start()
    yield llm
    llm.stop()


# --------------------------------------------------------------------------- helpers


def add_project(page, board, repo: Path) -> str:
    """Add ``repo`` as a project through the home page; returns the board's URL."""
    page.goto(board.url + "/")
    form = page.locator("#project-form")
    form.get_by_label("Repository path").fill(str(repo))
    form.get_by_role("button", name="Add project").click()
    page.wait_for_url(re.compile(r"/projects/\d+/$"))
    return page.url


def configure_model(page, board_url: str, llm: FakeLLM, approvals: str) -> None:
    """Set the project's model, endpoint, key variable and approvals on its settings page, reached
    by the board's "Settings" link; saving comes back to the page with a success message."""
    page.goto(board_url)
    page.locator(".board-head").get_by_role("link", name="Settings").click()
    page.wait_for_url(re.compile(r"/projects/\d+/settings$"))
    settings_url = page.url
    form = page.locator("#project-settings")
    form.get_by_label("Model", exact=True).fill(MODEL)
    form.get_by_label("API base URL").fill(llm.base_url)
    form.get_by_label("API key environment variable").fill("FAKE_LLM_KEY")
    form.get_by_label("Approvals").select_option(label=approvals)
    form.get_by_role("button", name="Save settings").click()
    expect(page.locator(".messages")).to_contain_text("Settings saved")
    assert page.url == settings_url, f"saving went to {page.url}, not back to {settings_url}"
    expect(form.get_by_label("Model", exact=True)).to_have_value(MODEL)
    expect(form.get_by_label("Approvals").locator("option:checked")).to_have_text(approvals)
    page.goto(board_url)
    expect(page.locator(".board-head")).to_contain_text(MODEL)
    expect(page.locator("#ws-status")).to_have_text("live", timeout=20_000)
    page.evaluate("window.__noReload = 1")


def start(page, card_id: int) -> None:
    card = page.locator(f"#card-{card_id}")
    card.get_by_role("button", name="Start").click()
    expect(card).not_to_have_attribute("data-state", "idle")


def expect_review(page, card_id: int, summary: str) -> None:
    card = page.locator(f"#list-review #card-{card_id}")
    expect(card).to_have_attribute("data-state", "succeeded", timeout=LIVE)
    expect(card.locator(".badge")).to_have_text("succeeded")
    expect(card.locator(".summary")).to_contain_text(summary)
    expect(card.locator(".pending")).to_have_count(0)


def settle(page) -> None:
    """Let the pushes of the events that led to the wait arrive (the relay batches a card's events
    a few times a second) before typing into the box they render, as a lead reading it would."""
    page.wait_for_timeout(1000)


def assert_not_reloaded(page) -> None:
    assert page.evaluate("window.__noReload") == 1, "the page was reloaded"


def card_branch(repo: Path, card_id: int) -> str:
    """The card's branch in the project's repository (``<prefix>/<card id>-<slug>``)."""
    branches = git(repo, "for-each-ref", "--format=%(refname:short)", f"refs/heads/agent/{card_id}-*").split()
    assert len(branches) == 1, f"card #{card_id} has branches {branches} in {repo}"
    return branches[0]


def files_on(repo: Path, branch: str) -> list[str]:
    return git(repo, "ls-tree", "-r", "--name-only", branch).splitlines()


def tool_results(body: dict) -> list[str]:
    return [str(m.get("content")) for m in body.get("messages") or [] if m.get("role") == "tool"]


def tool_names(body: dict) -> set[str]:
    return {t["function"]["name"] for t in body.get("tools") or []}


def watch_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    return errors


# --------------------------------------------------------------------------- tests


def test_plan_first_is_edited_and_approved_on_the_board_then_acted_on(
    board, routed_llm, page, output_dir, make_repo
):
    started = time.monotonic()
    errors = watch_errors(page)
    repo = make_repo("plan-repo")
    board_url = add_project(page, board, repo)
    configure_model(page, board_url, routed_llm, "Automatic")

    card_id = add_card(page, PLAN_CARD, "Plan first: a greeting file.", AGENT, mode="Plan first, act once approved")
    card = page.locator(f"#card-{card_id}")
    expect(card.locator(".card-meta")).to_contain_text("plan first")
    start(page, card_id)

    # The plan arrives live, in an editable box prefilled with the model's finish summary.
    expect(card.locator(".badge")).to_have_text("awaiting approval", timeout=LIVE)
    plan_box = card.locator(".pending textarea.plan")
    expect(plan_box).to_be_visible()
    expect(plan_box).to_have_value(PLAN)
    expect(card.get_by_role("button", name="Approve plan")).to_be_visible()
    expect(card.get_by_role("button", name="Ask for another plan")).to_be_visible()
    card.scroll_into_view_if_needed()
    page.screenshot(path=str(output_dir / "builtin-plan-review.png"), full_page=True)

    settle(page)
    expect(plan_box).to_have_value(PLAN)
    plan_box.fill(EDITED_PLAN)
    expect(plan_box).to_have_value(EDITED_PLAN)
    card.get_by_role("button", name="Approve plan").click()
    expect_review(page, card_id, "Wrote GREETING.md as the plan said")
    assert_not_reloaded(page)

    # The model planned with the read-only tools, then got the plan as the lead edited it, and all tools.
    requests = routed_llm.conversation(PLAN_CARD)
    assert len(requests) == 3, [tool_results(r) for r in requests]
    first, second = requests[0], requests[1]
    assert "finish" in tool_names(first) and not tool_names(first) & {"write_file", "edit_file", "run_command"}, (
        f"plan mode offered {sorted(tool_names(first))}"
    )
    assert {"write_file", "run_command"} <= tool_names(second), sorted(tool_names(second))
    answer = tool_results(second)[-1]
    assert EDITED_PLAN in answer, f"the model was not given the edited plan: {answer!r}"
    assert PLAN not in answer, f"the model was given the original plan too: {answer!r}"

    branch = card_branch(repo, card_id)
    assert git(repo, "show", f"{branch}:GREETING.md") == GREETING.strip()
    assert git(repo, "status", "--porcelain") == "" and not (repo / "GREETING.md").exists()
    assert not errors, f"errors in the page: {errors}"
    print(f"\nplan first: {time.monotonic() - started:.1f} s")


def test_a_command_waits_for_approval_a_denial_reaches_the_model_and_an_approval_runs_it(
    board, routed_llm, page, output_dir, make_repo
):
    started = time.monotonic()
    errors = watch_errors(page)
    repo = make_repo("approval-repo")
    board_url = add_project(page, board, repo)
    configure_model(page, board_url, routed_llm, "Ask before running a command")

    deny_id = add_card(page, DENY_CARD, "Run the command.", AGENT)
    approve_id = add_card(page, APPROVE_CARD, "Run the command.", AGENT)
    start(page, deny_id)
    start(page, approve_id)

    # Both wait for the lead with their exact command (no worker is held, so both can wait at once).
    for card_id, command in ((deny_id, DENY_COMMAND), (approve_id, APPROVE_COMMAND)):
        card = page.locator(f"#list-in_progress #card-{card_id}")
        expect(card.locator(".badge")).to_have_text("awaiting approval", timeout=LIVE)
        expect(card).to_have_attribute("data-state", "awaiting_approval")
        expect(card.locator(".pending pre.pending-detail")).to_have_text(command)
        expect(card.get_by_placeholder("Reason, if you deny")).to_be_visible()
        expect(card.get_by_role("button", name="Approve")).to_be_visible()
        expect(card.get_by_role("button", name="Deny")).to_be_visible()
    page.screenshot(path=str(output_dir / "builtin-approval-pending.png"), full_page=True)

    # Deny one, with a reason: the run goes on without the command and ends in Review.
    settle(page)
    deny = page.locator(f"#card-{deny_id}")
    deny.get_by_placeholder("Reason, if you deny").fill(DENY_REASON)
    deny.get_by_role("button", name="Deny").click()
    expect_review(page, deny_id, "Left the command out, as the lead asked")
    # Approve the other: the command runs and its effect is committed.
    approve = page.locator(f"#card-{approve_id}")
    approve.get_by_role("button", name="Approve").click()
    expect_review(page, approve_id, "Ran the approved command")
    assert_not_reloaded(page)

    denied = routed_llm.conversation(DENY_CARD)
    assert len(denied) == 2, [tool_results(r) for r in denied]
    answer = tool_results(denied[1])[-1]
    assert DENY_REASON in answer, f"the model did not get the lead's reason: {answer!r}"
    approved = routed_llm.conversation(APPROVE_CARD)
    assert len(approved) == 2, [tool_results(r) for r in approved]
    output = tool_results(approved[1])[-1]
    assert "wrote 'APPROVED.txt'" in output, f"the model did not get the command's output: {output!r}"

    deny_branch, approve_branch = card_branch(repo, deny_id), card_branch(repo, approve_id)
    assert "DENIED.txt" not in files_on(repo, deny_branch), "the denied command ran"
    assert git(repo, "show", f"{approve_branch}:APPROVED.txt") == "approved & run <ok>"
    assert git(repo, "rev-list", "--count", f"main..{approve_branch}") != "0"
    assert not errors, f"errors in the page: {errors}"
    print(f"\napprovals: {time.monotonic() - started:.1f} s")


def test_a_follow_up_from_the_card_page_continues_the_conversation_live(board, routed_llm, page, make_repo):
    started = time.monotonic()
    errors = watch_errors(page)
    repo = make_repo("follow-repo")
    board_url = add_project(page, board, repo)
    configure_model(page, board_url, routed_llm, "Automatic")

    card_id = add_card(page, FOLLOW_CARD, "Write NOTES.md.", AGENT)
    start(page, card_id)
    expect_review(page, card_id, "Wrote NOTES.md")
    assert len(routed_llm.conversation(FOLLOW_CARD)) == 2

    # The card page of a card in Review: usage and the follow-up form.
    detail = page.context.new_page()
    detail_errors = watch_errors(detail)
    detail.goto(f"{board.url}/cards/{card_id}/")
    expect(detail.locator("#ws-status")).to_have_text("live", timeout=20_000)
    header = detail.locator("#card-header")
    expect(header).to_have_attribute("data-state", "succeeded")
    expect(header.locator(".usage")).to_contain_text("Steps 2/")
    expect(header.locator(".usage")).to_contain_text("tokens")
    detail.get_by_role("textbox", name=re.compile(r"^Follow-up")).fill(FOLLOW_UP)
    detail.get_by_role("button", name="Send back with feedback").click()
    detail.wait_for_url(re.compile(rf"/cards/{card_id}/$"))
    detail.evaluate("window.__noReload = 1")

    # In Progress, then Review again, live on the card page and on the board left open meanwhile.
    board_card = page.locator(f"#card-{card_id}")
    expect(page.locator(f"#list-in_progress #card-{card_id}")).to_be_visible(timeout=LIVE)
    expect(board_card).to_have_attribute("data-state", re.compile("queued|running"))
    expect(header.locator("dd").first).to_have_text("In Progress")
    expect(header.locator("dd").first).to_have_text("Review", timeout=LIVE)
    expect(header).to_have_attribute("data-state", "succeeded")
    expect(header.locator(".summary")).to_contain_text("Added the follow-up's line")
    expect_review(page, card_id, "Added the follow-up's line")
    assert_not_reloaded(page)
    assert_not_reloaded(detail)

    # The follow-up is the last user message of a request that still holds the earlier conversation.
    requests = routed_llm.conversation(FOLLOW_CARD)
    assert len(requests) == 4, [m.get("role") for r in requests for m in r["messages"]]
    messages = requests[2]["messages"]
    assert messages[-1] == {"role": "user", "content": FOLLOW_UP}, messages[-1]
    assert messages[1]["role"] == "user" and messages[1]["content"].startswith(f"Task: {FOLLOW_CARD}")
    roles = [m.get("role") for m in messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool", "user"], roles
    earlier = [(m.get("name"), m.get("content")) for m in messages if m.get("role") == "tool"]
    assert earlier == [("write_file", "created NOTES.md (12 bytes)"), ("finish", "Finished.")], earlier
    before = requests[1]["messages"]
    assert messages[: len(before)] == before, "the follow-up's request does not start with the earlier conversation"

    branch = card_branch(repo, card_id)
    assert git(repo, "show", f"{branch}:NOTES.md") == "First line.\nChanged after the follow-up."
    # The card page shows both checkpoints, the earlier one offered for a roll back.
    expect(detail.locator("#commits li")).to_have_count(2, timeout=10_000)
    expect(detail.locator("#commits").get_by_role("button", name="Roll back to here")).to_have_count(1)
    assert not errors and not detail_errors, f"errors in the pages: {errors + detail_errors}"
    detail.close()
    print(f"\nfollow-up: {time.monotonic() - started:.1f} s")
