"""Runs that wait for the lead, plans, follow-ups and resumes, through the real runner with the
built-in agent talking HTTP to a scripted model (tests/fake_llm.py)."""

import sys
import time
from pathlib import Path

import pytest

from agents import builtin, runner
from board.models import BoardError, Card, Column, Mode, Run, RunState
from tests.conftest import execute_in_thread, git
from tests.fake_llm import EDIT_THEN_FINISH

pytestmark = pytest.mark.django_db



def call(name: str, **arguments) -> dict:
    return {"name": name, "arguments": arguments}


def answer(*calls: dict) -> dict:
    return {"tool_calls": list(calls)}


FINISH = answer(call("finish", summary="Done."))


@pytest.fixture(autouse=True)
def _key_set(model_key):
    """Every run here talks to a fake model that wants the key."""


@pytest.fixture
def llm(fake_llm):
    return fake_llm


def builtin_card(make_card, project, server, **project_settings) -> Card:
    """A card for the ready-made 'built-in' agent, the model set on the project."""
    for name, value in {"model": "openai/fake-model", "api_base": server.base_url, "api_key_env": "FAKE_LLM_KEY",
                        **project_settings}.items():
        setattr(project, name, value)
    project.save()
    card = make_card(kind="builtin", command="")
    return Card.objects.get(pk=card.pk)


def execute(run: Run) -> Run:
    runner.execute(run.pk)
    run.refresh_from_db()
    return run


@pytest.mark.django_db(transaction=True)
def test_a_waiting_run_holds_no_worker_and_resumes_once_approved_after_another_run(make_card, project, llm):
    server = llm([answer(call("run_command", command="echo approved > out.txt")), FINISH])
    card = builtin_card(make_card, project, server, approvals="commands")
    waiting = execute(card.start())

    assert waiting.state == RunState.AWAITING_APPROVAL
    assert waiting.pending["kind"] == "approval" and waiting.pending["detail"] == "echo approved > out.txt"
    assert waiting.worker_pid is None
    card.refresh_from_db()
    assert card.column == Column.IN_PROGRESS

    # The one worker takes another card's run meanwhile; the lead approves while it is busy.
    other = make_card("sleep 1.5; echo other > other.txt")
    other_run = other.start()
    worker = execute_in_thread(other_run.pk)
    time.sleep(0.5)
    waiting.decide(True)
    waiting.refresh_from_db()
    assert waiting.state == RunState.QUEUED
    worker.join(30)
    other_run.refresh_from_db()
    assert other_run.state == RunState.SUCCEEDED

    done = execute(waiting)

    assert done.state == RunState.SUCCEEDED, done.error
    assert git(project.repo_path, "show", f"{card.branch}:out.txt") == "approved\n"
    assert len(server.requests) == 2, "the model is not asked again for the approved step"
    assert done.events.filter(kind="step", text__startswith="Approved").exists()


def test_a_denied_command_never_runs_and_its_reason_reaches_the_model(make_card, project, llm):
    server = llm([answer(call("run_command", command="rm -rf src")), FINISH])
    card = builtin_card(make_card, project, server, approvals="commands")
    run = execute(card.start())

    run.decide(False, "never delete src")
    run = execute(run)

    assert run.state == RunState.SUCCEEDED
    assert "never delete src" in server.requests[1]["messages"][-1]["content"]
    with pytest.raises(BoardError):
        run.decide(True)  # decided already


def test_stop_while_waiting_ends_the_run_at_once(make_card, project, llm):
    server = llm([answer(call("ask_lead", question="Which file?"))])
    card = builtin_card(make_card, project, server)
    run = execute(card.start())
    assert run.pending["kind"] == "question"

    card.stop()

    run.refresh_from_db()
    assert run.state == RunState.STOPPED and run.pending is None


def test_a_plan_card_shows_its_plan_and_acts_on_the_edited_plan_once_approved(make_card, project, llm):
    server = llm([
        answer(call("finish", summary="Write NOTE.md")),
        answer(call("write_file", path="NOTE.md", content="planned\n")),
        FINISH,
    ])
    card = builtin_card(make_card, project, server)
    Card.objects.filter(pk=card.pk).update(mode=Mode.PLAN)
    card.refresh_from_db()
    run = execute(card.start())

    assert run.state == RunState.AWAITING_APPROVAL and run.pending == {**run.pending, "kind": "plan", "detail": "Write NOTE.md"}
    assert {t["function"]["name"] for t in server.requests[0]["tools"]} >= {"read_file"}
    assert "write_file" not in {t["function"]["name"] for t in server.requests[0]["tools"]}

    run.decide(True, "Write NOTE.md containing 'planned'")
    run = execute(run)

    assert run.state == RunState.SUCCEEDED
    card.refresh_from_db()
    assert git(project.repo_path, "show", f"{card.branch}:NOTE.md") == "planned\n"
    assert "Write NOTE.md containing 'planned'" in server.requests[1]["messages"][-1]["content"]


def test_a_follow_up_in_review_continues_the_conversation_on_the_same_branch(make_card, project, llm):
    server = llm(EDIT_THEN_FINISH + [answer(call("write_file", path="MORE.md", content="more\n")), FINISH])
    card = builtin_card(make_card, project, server)
    first = execute(card.start())
    card.refresh_from_db()
    assert card.column == Column.REVIEW

    second = execute(card.follow_up("Also add MORE.md"))

    card.refresh_from_db()
    assert second.state == RunState.SUCCEEDED and card.column == Column.REVIEW
    assert second.previous_id == first.pk and second.steps == 2
    messages = server.requests[2]["messages"]
    assert {"role": "user", "content": "Also add MORE.md"} in messages
    assert any("AGENT_NOTE.md" in (m.get("content") or "") for m in messages), "the first run's conversation"
    assert git(project.repo_path, "ls-tree", "--name-only", card.branch).split() == ["AGENT_NOTE.md", "MORE.md", "README.md"]


def test_a_follow_up_is_refused_outside_review_or_when_empty(make_card, project, llm):
    card = builtin_card(make_card, project, llm([]))
    with pytest.raises(BoardError, match="Review"):
        card.follow_up("more")
    with pytest.raises(BoardError, match="Write"):
        card.follow_up("  ")


class Killed(BaseException):
    """Stands for the worker process dying: nothing of ours catches it."""


def test_a_run_killed_mid_step_is_resumed_from_its_last_stored_step(make_card, project, llm, monkeypatch):
    server = llm(EDIT_THEN_FINISH)
    card = builtin_card(make_card, project, server)
    real = builtin.complete
    calls = []

    def dies_on_second_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Killed()
        return real(*args, **kwargs)

    monkeypatch.setattr(builtin, "complete", dies_on_second_call)
    run = card.start()
    with pytest.raises(Killed):
        runner.execute(run.pk)
    run.refresh_from_db()
    assert run.state == RunState.RUNNING and run.agent_state["steps"] == 1

    assert runner.interrupt_orphans(lambda host, pid: False, "the worker died") == 1
    run.refresh_from_db()
    assert run.state == RunState.INTERRUPTED
    monkeypatch.setattr(builtin, "complete", real)

    resumed = execute(card.resume())

    assert resumed.state == RunState.SUCCEEDED, resumed.error
    assert resumed.agent_state["steps"] == 2 and resumed.steps == 1
    assert len(server.requests) == 2, "step 1 is not asked for again"
    assert "created AGENT_NOTE.md" in server.requests[1]["messages"][-1]["content"]
    card.refresh_from_db()
    assert "Written by the fake model." in git(project.repo_path, "show", f"{card.branch}:AGENT_NOTE.md")


def test_resume_is_refused_for_a_run_that_succeeded(make_card, project, llm):
    card = builtin_card(make_card, project, llm(EDIT_THEN_FINISH))
    execute(card.start())
    with pytest.raises(BoardError, match="resumed"):
        card.resume()


def test_the_card_shows_steps_tokens_and_cost_of_its_run_against_the_budget(make_card, project, llm):
    card = builtin_card(make_card, project, llm([answer(call("list_files"))] * 5), max_steps=3)
    run = execute(card.start())

    assert run.state == RunState.STOPPED and "step budget of 3" in run.error
    assert run.steps == 3 and run.tokens > 0 and run.budget["steps"] == 3


def test_a_card_without_any_model_cannot_start(make_card, project):
    card = make_card(kind="builtin", command="")
    with pytest.raises(BoardError, match="model"):
        card.start()


MCP_SERVER = f"{sys.executable} {Path(__file__).resolve().parent / 'mcp_server.py'}"


def test_tools_of_the_project_mcp_servers_reach_the_agent_and_a_broken_server_is_only_named(make_card, project, llm):
    server = llm([answer(call("mcp__calc__add", a=2, b=3)), FINISH])
    card = builtin_card(make_card, project, server,
                        mcp_servers=f"calc: {MCP_SERVER}\nbroken: /nonexistent/mcp-server")
    run = execute(card.start())

    assert run.state == RunState.SUCCEEDED, run.error
    offered = {t["function"]["name"] for t in server.requests[0]["tools"]}
    assert "mcp__calc__add" in offered and "write_file" in offered
    assert server.requests[1]["messages"][-1]["content"].strip() == "5"
    assert run.events.filter(kind="log", text__contains="MCP server failed and is left out: broken").exists()


def test_an_mcp_tool_call_waits_for_approval_under_the_commands_policy(make_card, project, llm):
    server = llm([answer(call("mcp__calc__add", a=1, b=1)), FINISH])
    card = builtin_card(make_card, project, server, mcp_servers=f"calc: {MCP_SERVER}", approvals="commands")
    run = execute(card.start())

    assert run.state == RunState.AWAITING_APPROVAL
    assert run.pending["tool"] == "mcp__calc__add" and '"a": 1' in run.pending["detail"]
    run.decide(False, "no maths today")
    run = execute(run)
    assert run.state == RunState.SUCCEEDED
    assert "no maths today" in server.requests[1]["messages"][-1]["content"]


def test_a_stop_asked_just_before_the_run_would_wait_ends_it_stopped(make_card, project, llm, monkeypatch):
    server = llm([answer(call("ask_lead", question="Which file?"))])
    card = builtin_card(make_card, project, server)
    run = card.start()
    real_run = builtin.run

    def stop_then_run(*args, **kwargs):
        result = real_run(*args, **kwargs)
        Run.objects.filter(pk=run.pk).update(stop_requested=True)  # the lead's Stop lands right now
        return result

    monkeypatch.setattr(builtin, "run", stop_then_run)
    run = execute(run)

    assert run.state == RunState.STOPPED and run.pending is None


@pytest.mark.django_db(transaction=True)
def test_stop_during_a_stalled_model_call_ends_the_run_stopped_within_seconds(make_card, project, llm, settings):
    settings.BOARD_MODEL_TIMEOUT = 120
    card = builtin_card(make_card, project, llm([{"stall": 120, "content": "too late"}]))
    run = card.start()
    worker = execute_in_thread(run.pk)
    time.sleep(2)
    asked = time.monotonic()

    card.stop()
    worker.join(15)

    assert not worker.is_alive() and time.monotonic() - asked < 8
    run.refresh_from_db()
    assert run.state == RunState.STOPPED


def test_roll_back_of_a_run_stopped_while_waiting_then_resume_and_approve(make_card, project, llm):
    write = lambda name: answer(call("write_file", path=name, content=f"{name}\n"))  # noqa: E731
    server = llm([write("a.txt"), write("b.txt"), write("c.txt"), FINISH])
    card = builtin_card(make_card, project, server, approvals="changes")
    run = execute(card.start())
    for _ in range(2):  # a.txt, then b.txt approved; c.txt waits
        run.decide(True)
        run = execute(run)
    assert run.pending["title"] == "write_file c.txt"
    card.stop()
    card.refresh_from_db()
    first = card.current_run.commits[0]

    runner.roll_back_card(card, first)
    resumed = execute(card.resume())
    assert resumed.state == RunState.AWAITING_APPROVAL
    resumed.decide(True)
    resumed = execute(resumed)

    assert resumed.state == RunState.SUCCEEDED, resumed.error
    card.refresh_from_db()
    files = git(project.repo_path, "ls-tree", "--name-only", card.branch).split()
    assert "a.txt" in files and "c.txt" in files and "b.txt" not in files
    assert any("rolled the branch back" in (m.get("content") or "") for m in server.requests[-1]["messages"])
