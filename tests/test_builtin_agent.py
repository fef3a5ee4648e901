"""The built-in agent: its tools, and its loop over litellm's real HTTP path against FakeLLM.

No database and no Django: the agent knows neither. Git tests use real throwaway repositories.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from agents import llm
from agents.builtin import (
    AgentResult,
    LoopOptions,
    add_note,
    ModelConfig,
    ModelError,
    decide,
    estimate_tokens,
    fit_context,
    follow_up,
    new_state,
    run,
    step,
)
from agents.tools import (
    OUTPUT_HEAD,
    OUTPUT_TAIL,
    ToolError,
    edit_file,
    execute_tool,
    list_files,
    read_file,
    resolve_inside,
    run_command,
    search_files,
    write_file,
)
from tests.conftest import FAKE_KEY
from tests.fake_llm import EDIT_THEN_FINISH, FakeLLM, conversation_error

KEY = FAKE_KEY


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A real git repository with one commit, standing in for a card's worktree."""
    root = tmp_path / "repo"
    root.mkdir()

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)

    git("init", "-b", "main")
    git("config", "user.name", "Test")
    git("config", "user.email", "test@example.com")
    (root / "README.md").write_text("# Demo\n")
    (root / "src").mkdir()
    (root / "src" / "app.py").write_text('def greet():\n    return "hello"\n')
    (root / ".gitignore").write_text("*.log\nbuild/\n")
    git("add", "-A")
    git("commit", "-m", "initial")
    return root


@pytest.fixture(scope="session")
def litellm_loaded() -> None:
    """Import litellm once up front, so timing assertions measure the call, not the import."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm  # noqa: F401


class Recorder:
    """Collects what the agent hands to the caller's callbacks."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict | None]] = []
        self.checkpoints: list[str] = []
        self.states: list[dict] = []

    def emit(self, kind: str, text: str, data: dict | None = None) -> None:
        self.events.append((kind, text, data))

    def checkpoint(self, message: str) -> None:
        self.checkpoints.append(message)

    def save_state(self, state: dict) -> None:
        # What the runner stores must survive JSON.
        self.states.append(json.loads(json.dumps(state)))

    def kinds(self, kind: str) -> list[str]:
        return [text for k, text, _ in self.events if k == kind]


def agent_run(repo: Path, config: ModelConfig, rec: Recorder, state: dict | None = None, **kw) -> AgentResult:
    return run(
        state or new_state("Add a note", "Write AGENT_NOTE.md."),
        repo,
        config,
        rec.emit,
        rec.checkpoint,
        rec.save_state,
        **kw,
    )


def config_for(server: FakeLLM, key_env: str, **kw) -> ModelConfig:
    return ModelConfig(model="openai/fake-model", api_base=server.base_url, api_key_env=key_env, **kw)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool_messages(body: dict) -> list[dict]:
    return [m for m in body["messages"] if m.get("role") == "tool"]


# --------------------------------------------------------------------------- the loop over HTTP


def test_agent_writes_file_then_finishes_through_litellm_http(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm(EDIT_THEN_FINISH)
    rec = Recorder()

    result = agent_run(repo, config_for(server, model_key), rec)

    assert result == AgentResult("succeeded", "Added AGENT_NOTE.md", "")
    assert (repo / "AGENT_NOTE.md").read_text() == EDIT_THEN_FINISH[0]["tool_calls"][0]["arguments"]["content"]
    assert rec.checkpoints == ["Step 1: write_file AGENT_NOTE.md"]
    assert rec.kinds("step") == ["write_file AGENT_NOTE.md", "finish: Added AGENT_NOTE.md"]
    assert [s["steps"] for s in rec.states] == [1, 2]
    assert rec.states[-1]["done"] is True and rec.states[-1]["summary"] == "Added AGENT_NOTE.md"
    usage = [data for kind, _, data in rec.events if kind == "usage"]
    assert len(usage) == 2 and all(u["prompt_tokens"] > 0 and u["cost"] >= 0 for u in usage)
    # The request carried the tools and the key read from the named variable (else 401).
    first = server.requests[0]
    assert {t["function"]["name"] for t in first["tools"]} >= {"write_file", "edit_file", "run_command", "finish"}
    assert first["tool_choice"] == "auto"
    assert tool_messages(server.requests[1])[0]["content"].startswith("created AGENT_NOTE.md")


def test_edit_file_script_replaces_exact_text(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm(
        [
            {"tool_calls": [{"name": "edit_file", "arguments": {
                "path": "src/app.py", "old": 'return "hello"', "new": 'return "hello, world"'}}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "Greeting extended"}}]},
        ]
    )
    rec = Recorder()

    result = agent_run(repo, config_for(server, model_key), rec)

    assert result.state == "succeeded" and result.summary == "Greeting extended"
    assert (repo / "src" / "app.py").read_text() == 'def greet():\n    return "hello, world"\n'
    assert rec.checkpoints == ["Step 1: edit_file src/app.py"]


def test_edit_without_match_sends_error_to_model_and_run_continues(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm(
        [
            {"tool_calls": [{"name": "edit_file", "arguments": {
                "path": "src/app.py", "old": 'return "goodbye"', "new": "x"}}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "Gave up politely"}}]},
        ]
    )
    rec = Recorder()

    result = agent_run(repo, config_for(server, model_key), rec)

    assert result.state == "succeeded"
    error = tool_messages(server.requests[1])[-1]["content"]
    assert error.startswith("error:") and "0 matches" in error
    assert 'return "hello"' in error  # the closest line is quoted so the model can retry
    assert rec.checkpoints == []  # nothing changed, nothing to commit
    assert any(data and data.get("error") for kind, _, data in rec.events if kind == "log")


def test_malformed_tool_arguments_from_the_model_come_back_as_an_error(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm(
        [
            {"tool_calls": [{"name": "write_file", "arguments": '{"path": "a.txt", "content": '}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "done"}}]},
        ]
    )
    result = agent_run(repo, config_for(server, model_key), Recorder())

    assert result.state == "succeeded"
    assert "not valid JSON" in tool_messages(server.requests[1])[-1]["content"]


def test_refused_connection_fails_quickly_with_connection_reason(repo, model_key, litellm_loaded):
    base = f"http://127.0.0.1:{closed_port()}/v1"
    config = ModelConfig("openai/fake-model", api_base=base, api_key_env=model_key, num_retries=0)
    started = time.monotonic()

    result = agent_run(repo, config, Recorder())

    assert time.monotonic() - started < 10
    assert result.state == "failed"
    assert result.error == f"could not connect to the model endpoint {base} (connection refused)"


def test_model_call_that_times_out_fails_with_timed_out(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm([{"delay": 3, "content": "too late"}])
    started = time.monotonic()

    result = agent_run(repo, config_for(server, model_key, timeout=1, num_retries=0), Recorder())

    assert time.monotonic() - started < 2.5
    assert result.state == "failed"
    assert "timed out" in result.error and "1 s" in result.error


def test_unauthorized_answer_fails_with_authentication_reason(repo, fake_llm, monkeypatch, litellm_loaded):
    server = fake_llm(EDIT_THEN_FINISH)
    monkeypatch.setenv("WRONG_KEY", "sk-wrong")

    result = agent_run(repo, config_for(server, "WRONG_KEY"), Recorder())

    assert result.state == "failed"
    assert result.error.startswith("authentication failed:") and "Incorrect API key" in result.error
    assert len(server.requests) == 1  # a bad key is not retried
    assert not (repo / "AGENT_NOTE.md").exists()


def test_missing_key_variable_fails_before_calling_the_model(repo, fake_llm, monkeypatch):
    server = fake_llm(EDIT_THEN_FINISH)
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)

    result = agent_run(repo, config_for(server, "NO_SUCH_KEY_VAR"), Recorder())

    assert result == AgentResult("failed", "", "the API key variable NO_SUCH_KEY_VAR is not set in the environment")
    assert server.requests == []


def test_server_error_is_retried_and_the_run_goes_on(repo, fake_llm, model_key, monkeypatch, litellm_loaded):
    monkeypatch.setattr(llm, "RETRY_BASE_WAIT", 0.01)
    calls = {"n": 0}

    def flaky_first(body: dict) -> dict:
        calls["n"] += 1
        if calls["n"] == 1:
            return {"status": 500, "error": "overloaded"}
        return EDIT_THEN_FINISH[0]

    server = fake_llm([flaky_first, EDIT_THEN_FINISH[1]])

    result = agent_run(repo, config_for(server, model_key, num_retries=1), Recorder())

    assert result.state == "succeeded"
    assert len(server.requests) == 3


def test_server_error_after_retries_fails_with_status(repo, fake_llm, model_key, monkeypatch, litellm_loaded):
    monkeypatch.setattr(llm, "RETRY_BASE_WAIT", 0.01)
    server = fake_llm([{"status": 503, "error": "down for maintenance"}])

    result = agent_run(repo, config_for(server, model_key, num_retries=2), Recorder())

    assert result == AgentResult("failed", "", "the model endpoint failed (HTTP 503): down for maintenance")
    assert len(server.requests) == 3


def test_plain_answer_is_nudged_once_then_counts_as_finish(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm([{"content": "I think it is fine."}, {"content": "Nothing needed changing."}])
    rec = Recorder()

    result = agent_run(repo, config_for(server, model_key), rec)

    assert result == AgentResult("succeeded", "Nothing needed changing.", "")
    nudge = server.requests[1]["messages"][-1]
    assert nudge["role"] == "user" and "finish" in nudge["content"]
    assert [s["steps"] for s in rec.states] == [1, 2]


def test_reaching_the_step_budget_stops_the_run_cleanly(repo, fake_llm, model_key, litellm_loaded):
    read = {"tool_calls": [{"name": "read_file", "arguments": {"path": "README.md"}}]}
    server = fake_llm([read] * 10)
    rec = Recorder()

    result = agent_run(repo, config_for(server, model_key, max_steps=3), rec)

    assert result == AgentResult("stopped", "", "step budget of 3 reached")
    assert len(server.requests) == 3 and len(rec.states) == 3


def test_stop_between_steps_and_resume_from_saved_state(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm(EDIT_THEN_FINISH)
    rec = Recorder()

    stopped = agent_run(repo, config_for(server, model_key), rec, should_stop=lambda: len(rec.states) >= 1)

    assert stopped.state == "stopped"
    assert len(server.requests) == 1 and (repo / "AGENT_NOTE.md").exists()
    # A new process picks the stored state up where it was.
    resumed = agent_run(repo, config_for(server, model_key), Recorder(), state=rec.states[-1])
    assert resumed == AgentResult("succeeded", "Added AGENT_NOTE.md", "")
    assert len(server.requests) == 2


def test_command_that_changes_files_makes_a_checkpoint(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm(
        [
            {"tool_calls": [{"name": "run_command", "arguments": {"command": "echo built > out.txt"}}]},
            {"tool_calls": [{"name": "run_command", "arguments": {"command": "echo noise > debug.log"}}]},
            {"tool_calls": [{"name": "finish", "arguments": {"summary": "ok"}}]},
        ]
    )
    rec = Recorder()

    agent_run(repo, config_for(server, model_key), rec)

    # The ignored debug.log is not a change worth a commit.
    assert rec.checkpoints == ["Step 1: run_command: echo built > out.txt"]


def test_plan_mode_offers_only_read_only_tools(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm(EDIT_THEN_FINISH)

    result = agent_run(repo, config_for(server, model_key), Recorder(), state=new_state("Plan", "x", read_only=True))

    offered = {t["function"]["name"] for t in server.requests[0]["tools"]}
    assert offered == {"list_files", "read_file", "search_files", "show_diff", "ask_lead", "finish"}
    assert "unknown tool 'write_file'" in tool_messages(server.requests[1])[0]["content"]
    assert not (repo / "AGENT_NOTE.md").exists()
    # The plan the model finishes with waits for the lead instead of ending the run.
    assert result.state == "waiting"
    assert result.pending["kind"] == "plan" and result.pending["detail"] == "Added AGENT_NOTE.md"


def test_step_leaves_the_given_state_untouched_and_raises_model_error(repo, model_key, litellm_loaded):
    state = new_state("t", "p")
    before = json.dumps(state)
    config = ModelConfig("openai/fake-model", api_base=f"http://127.0.0.1:{closed_port()}/v1",
                         api_key_env=model_key, num_retries=0)

    with pytest.raises(ModelError, match="connection refused"):
        step(state, repo, config, Recorder().emit)

    assert json.dumps(state) == before


# --------------------------------------------------------------------------- the loop with litellm's own mocking


def test_loop_with_litellm_mock_responses_reports_usage_and_cost(repo, monkeypatch, litellm_loaded):
    import litellm

    # litellm answers itself (mock_response / mock_tool_calls) without any HTTP.
    scripted = [
        [{"id": "c1", "type": "function", "function": {
            "name": "write_file", "arguments": json.dumps({"path": "docs/x.md", "content": "x\n"})}}],
        [{"id": "c2", "type": "function", "function": {
            "name": "finish", "arguments": json.dumps({"summary": "Wrote docs/x.md"})}}],
    ]
    real_completion = litellm.completion
    seen: list[dict] = []

    def mocked(**kwargs):
        seen.append(kwargs)
        return real_completion(**kwargs, mock_response="", mock_tool_calls=scripted[len(seen) - 1])

    monkeypatch.setattr(litellm, "completion", mocked)
    rec = Recorder()

    # litellm's mocking drops mock_tool_calls from a mocked stream.
    result = agent_run(repo, ModelConfig("openai/gpt-4o-mini", stream=False), rec)

    assert result == AgentResult("succeeded", "Wrote docs/x.md", "")
    assert (repo / "docs" / "x.md").read_text() == "x\n"
    assert seen[0]["timeout"] == 120.0 and seen[0]["tool_choice"] == "auto"
    assert seen[0]["tools"] and seen[0]["api_base"] is None
    usage = [data for kind, _, data in rec.events if kind == "usage"]
    assert usage[0]["prompt_tokens"] > 0 and usage[0]["completion_tokens"] > 0
    assert usage[0]["cost"] > 0  # gpt-4o-mini is in litellm's local price list
    assert rec.states[-1]["usage"]["cost"] == pytest.approx(sum(u["cost"] for u in usage))


def test_the_cost_budget_stops_the_run_after_the_step_that_spent_it(repo, monkeypatch, litellm_loaded):
    import litellm

    real_completion = litellm.completion
    calls = [{"id": "c1", "type": "function", "function": {"name": "list_files", "arguments": "{}"}}]
    monkeypatch.setattr(litellm, "completion",
                        lambda **kwargs: real_completion(**kwargs, mock_response="", mock_tool_calls=calls))
    rec = Recorder()

    result = agent_run(repo, ModelConfig("openai/gpt-4o-mini", stream=False, max_cost=1e-9), rec)

    assert result.state == "stopped" and result.error.startswith("cost budget of $1e-09 reached (spent $")
    assert len(rec.states) == 1 and rec.states[-1]["usage"]["cost"] > 1e-9


# --------------------------------------------------------------------------- tools


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "src/../../x", ".git/config", "~/x"])
def test_paths_outside_the_worktree_are_refused(repo, bad):
    with pytest.raises(ToolError):
        resolve_inside(repo, bad)


def test_symlink_pointing_outside_is_refused(repo, tmp_path):
    (tmp_path / "secret.txt").write_text("s3cret")
    (repo / "link").symlink_to(tmp_path / "secret.txt")
    (repo / "dirlink").symlink_to(tmp_path)

    for rel in ("link", "dirlink/secret.txt"):
        with pytest.raises(ToolError, match="outside"):
            resolve_inside(repo, rel)
    output, is_error = execute_tool(repo, "read_file", json.dumps({"path": "link"}))
    assert is_error and "s3cret" not in output


def test_paths_inside_the_worktree_resolve(repo):
    assert resolve_inside(repo, "src/../README.md") == (repo / "README.md").resolve()
    assert resolve_inside(repo, "new/dir/file.txt") == (repo / "new/dir/file.txt").resolve()
    assert resolve_inside(repo, ".") == repo.resolve()


def test_edit_file_with_no_match_quotes_nearby_lines(repo):
    with pytest.raises(ToolError) as info:
        edit_file(repo, "src/app.py", "  return 'hello'", "x")
    message = str(info.value)
    assert "0 matches" in message and 'return "hello"' in message and "2\t" in message


def test_edit_file_with_several_matches_gives_count_and_lines(repo):
    (repo / "dup.py").write_text("a = 1\nb = 2\na = 1\n")
    with pytest.raises(ToolError) as info:
        edit_file(repo, "dup.py", "a = 1", "a = 3")
    message = str(info.value)
    assert "2 times" in message and "line 1" in message and "line 3" in message
    assert (repo / "dup.py").read_text() == "a = 1\nb = 2\na = 1\n"


def test_write_file_creates_parent_folders(repo):
    assert write_file(repo, "a/b/c.txt", "hi") == "created a/b/c.txt (2 bytes)"
    assert (repo / "a" / "b" / "c.txt").read_text() == "hi"


def test_read_file_numbers_lines_and_says_what_was_cut(repo):
    (repo / "long.txt").write_text("".join(f"line {i}\n" for i in range(1, 2501)))

    whole = read_file(repo, "long.txt")
    assert whole.startswith("     1\tline 1\n") and "  2000\tline 2000" in whole
    assert "2001\t" not in whole and "start_line=2001" in whole
    assert read_file(repo, "long.txt", start_line=2499) == "  2499\tline 2499\n  2500\tline 2500"


def _live_members(pgid: int) -> list[psutil.Process]:
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            pass
    return members


def test_run_command_timeout_kills_the_process_group(repo):
    started = time.monotonic()

    output = run_command(repo, "echo pgid=$$; sleep 100 & sleep 100", timeout=1)

    assert time.monotonic() - started < 5
    assert output.startswith("timed out after 1 s")
    pgid = int(re.search(r"pgid=(\d+)", output).group(1))
    assert pgid != os.getpgid(0)
    deadline = time.monotonic() + 3
    while _live_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _live_members(pgid) == []


def test_run_command_kills_background_leftovers_when_it_ends(repo):
    started = time.monotonic()

    output = run_command(repo, "sleep 100 > /dev/null 2>&1 & echo pgid=$$")

    assert time.monotonic() - started < 5 and output.startswith("exit status 0")
    pgid = int(re.search(r"pgid=(\d+)", output).group(1))
    time.sleep(0.2)
    assert _live_members(pgid) == []


def test_run_command_output_cap_keeps_head_and_tail(repo):
    output = run_command(repo, "printf START; head -c 100000 /dev/zero | tr '\\0' x; printf END; exit 3")

    assert output.startswith("exit status 3\nSTART") and output.endswith("END")
    cut = int(re.search(r"\[\.\.\. (\d+) characters cut \.\.\.\]", output).group(1))
    assert cut == 100008 - OUTPUT_HEAD - OUTPUT_TAIL
    assert len(output) < OUTPUT_HEAD + OUTPUT_TAIL + 200


def test_run_command_has_no_stdin_and_a_scrubbed_environment(repo, monkeypatch):
    for name in ("OPENAI_API_KEY", "GITHUB_TOKEN", "DB_PASSWORD", "DATABASE_URL", "REDIS_URL",
                 "DJANGO_SECRET_KEY", "DJANGO_SETTINGS_MODULE", "aws_secret_access_key"):
        monkeypatch.setenv(name, "leak")
    monkeypatch.setenv("HARMLESS", "kept")

    output = run_command(repo, "cat; env", extra_env={"PROJECT_TOKEN": "given"})

    assert "leak" not in output
    assert "HARMLESS=kept" in output and "PROJECT_TOKEN=given" in output
    assert output.startswith("exit status 0")


def test_execute_tool_turns_every_mistake_into_an_error_string(repo):
    cases = {
        ("write_file", '{"path": "x.txt", "content": '): "not valid JSON",
        ("write_file", '["x.txt"]'): "must be a JSON object",
        ("no_such_tool", "{}"): "unknown tool",
        ("write_file", '{"path": "x.txt"}'): "wrong arguments",
        ("read_file", '{"path": "x", "colour": "red"}'): "wrong arguments",
        ("read_file", '{"path": "../outside"}'): "outside the worktree",
        ("finish", '{"summary": ""}'): "summary",
    }
    for (name, arguments), expected in cases.items():
        output, is_error = execute_tool(repo, name, arguments)
        assert is_error and output.startswith("error:") and expected in output, (name, arguments, output)
    assert execute_tool(repo, "read_file", '{"path": "README.md"}') == ("     1\t# Demo", False)


def test_list_files_respects_gitignore_and_shows_untracked(repo):
    (repo / "debug.log").write_text("noise")
    (repo / "build").mkdir()
    (repo / "build" / "out.bin").write_text("x")
    (repo / "new.py").write_text("print(1)\n")

    listing = list_files(repo).splitlines()

    assert listing == [".gitignore", "README.md", "new.py", "src/app.py"]
    assert list_files(repo, "src") == "src/app.py"


def test_list_files_is_capped_with_a_count_of_the_rest(repo):
    many = repo / "many"
    many.mkdir()
    for i in range(520):
        (many / f"f{i:04d}.txt").write_text("")

    listing = list_files(repo, "many").splitlines()

    assert len(listing) == 501 and "20 more files" in listing[-1]


def test_search_files_finds_matches_in_tracked_and_untracked_files(repo):
    (repo / "new.py").write_text("def greet_again():\n    pass\n")
    assert search_files(repo, r"def greet") == "new.py:1:def greet_again():\nsrc/app.py:1:def greet():"
    assert search_files(repo, "nothing-like-this") == "no matches"


# --------------------------------------------------------------------------- FakeLLM as a script


def test_fake_llm_runs_as_a_script_and_prints_its_url(tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"content": "hi"}]))
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("fake_llm.py")), "--port", "0", "--script", str(script)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert re.fullmatch(r"listening http://127\.0\.0\.1:\d+/v1", line)
        base = line.split()[1]
        with urllib.request.urlopen(f"{base}/models", timeout=5) as answer:
            assert json.load(answer)["data"][0]["id"] == "fake-model"
        request = urllib.request.Request(
            f"{base}/chat/completions",
            data=json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            body = json.load(answer)
        assert body["choices"][0]["message"]["content"] == "hi" and body["usage"]["total_tokens"] > 0
    finally:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- approvals, questions, plans, checks


def call(name: str, **arguments) -> dict:
    return {"name": name, "arguments": arguments}


def answer(*calls: dict) -> dict:
    return {"tool_calls": list(calls)}


FINISH = answer(call("finish", summary="Done."))


def test_a_command_waits_for_approval_and_runs_only_once_approved(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm([answer(call("run_command", command="echo hi > out.txt")), FINISH])
    rec = Recorder()
    options = LoopOptions(approvals="commands")

    result = agent_run(repo, config_for(server, model_key), rec, options=options)

    assert result.state == "waiting"
    assert result.pending["kind"] == "approval" and result.pending["detail"] == "echo hi > out.txt"
    assert not (repo / "out.txt").exists() and len(server.requests) == 1
    stored = rec.states[-1]
    assert stored["pending"]["decision"] is None and len(stored["queue"]) == 1

    result = agent_run(repo, config_for(server, model_key), rec, state=decide(stored, True), options=options)

    assert result.state == "succeeded"
    assert (repo / "out.txt").read_text() == "hi\n"
    assert tool_messages(server.requests[1])[0]["content"].startswith("exit status 0")


def test_a_denied_change_is_not_made_and_the_reason_goes_back_to_the_model(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm([answer(call("write_file", path="NOTE.md", content="# Note\n")), FINISH])
    rec = Recorder()
    options = LoopOptions(approvals="changes")

    waiting = agent_run(repo, config_for(server, model_key), rec, options=options)
    assert waiting.pending["kind"] == "approval"
    assert "+# Note" in waiting.pending["detail"] and "b/NOTE.md" in waiting.pending["detail"]

    result = agent_run(repo, config_for(server, model_key), rec, state=decide(rec.states[-1], False, "not that file"),
                       options=options)

    assert result.state == "succeeded"
    assert not (repo / "NOTE.md").exists()
    assert "not that file" in tool_messages(server.requests[1])[0]["content"]


def test_an_edit_that_cannot_apply_is_not_put_to_the_lead(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm([answer(call("edit_file", path="src/app.py", old="nowhere", new="x")), FINISH])

    result = agent_run(repo, config_for(server, model_key), Recorder(), options=LoopOptions(approvals="changes"))

    assert result.state == "succeeded"
    assert "not found" in tool_messages(server.requests[1])[0]["content"]


def test_two_calls_in_one_answer_run_in_order_and_the_second_waits(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm([
        answer(call("write_file", path="a.txt", content="first\n"), call("run_command", command="cat a.txt")),
        FINISH,
    ])
    rec = Recorder()
    options = LoopOptions(approvals="commands")

    waiting = agent_run(repo, config_for(server, model_key), rec, options=options)

    assert waiting.pending["detail"] == "cat a.txt"
    assert (repo / "a.txt").read_text() == "first\n"
    assert len(rec.checkpoints) == 1  # the write before the wait is committed, not left hanging

    agent_run(repo, config_for(server, model_key), rec, state=decide(rec.states[-1], True), options=options)

    results = [m["content"] for m in tool_messages(server.requests[1])]
    assert results[0].startswith("created a.txt") and "first" in results[1]


def test_a_question_waits_for_the_lead_and_the_answer_goes_into_the_conversation(repo, fake_llm, model_key,
                                                                                  litellm_loaded):
    server = fake_llm([answer(call("ask_lead", question="Tabs or spaces?")), FINISH])
    rec = Recorder()

    waiting = agent_run(repo, config_for(server, model_key), rec)

    assert waiting.pending["kind"] == "question" and waiting.pending["detail"] == "Tabs or spaces?"
    result = agent_run(repo, config_for(server, model_key), rec, state=decide(rec.states[-1], True, "Spaces."))
    assert result.state == "succeeded"
    assert tool_messages(server.requests[1])[0]["content"] == "The lead answered: Spaces."


def test_an_approved_plan_as_edited_switches_the_run_to_act_mode(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm([
        answer(call("finish", summary="1. Write NOTE.md")),
        answer(call("write_file", path="NOTE.md", content="planned\n")),
        FINISH,
    ])
    rec = Recorder()
    waiting = agent_run(repo, config_for(server, model_key), rec, state=new_state("t", "p", read_only=True))
    assert waiting.pending["kind"] == "plan"

    state = decide(rec.states[-1], True, "1. Write NOTE.md saying planned")
    result = agent_run(repo, config_for(server, model_key), rec, state=state)

    assert result.state == "succeeded" and (repo / "NOTE.md").read_text() == "planned\n"
    second = server.requests[1]
    assert "write_file" in {t["function"]["name"] for t in second["tools"]}
    assert second["messages"][0]["content"].startswith("You are a coding agent")
    assert "1. Write NOTE.md saying planned" in tool_messages(second)[0]["content"]


def test_a_denied_plan_asks_the_model_for_another_plan_in_plan_mode(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm([answer(call("finish", summary="Plan A")), answer(call("finish", summary="Plan B"))])
    rec = Recorder()
    agent_run(repo, config_for(server, model_key), rec, state=new_state("t", "p", read_only=True))

    result = agent_run(repo, config_for(server, model_key), rec, state=decide(rec.states[-1], False, "smaller"))

    assert result.state == "waiting" and result.pending["detail"] == "Plan B"
    assert "smaller" in tool_messages(server.requests[1])[0]["content"]
    assert "write_file" not in {t["function"]["name"] for t in server.requests[1]["tools"]}


def test_finish_is_refused_while_a_changed_python_file_does_not_compile(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm([
        answer(call("write_file", path="src/bad.py", content="def broken(:\n")),
        FINISH,
        answer(call("write_file", path="src/bad.py", content="def fixed():\n    return 1\n")),
        FINISH,
    ])
    rec = Recorder()

    result = agent_run(repo, config_for(server, model_key), rec)

    assert result.state == "succeeded" and len(server.requests) == 4
    refused = tool_messages(server.requests[2])[-1]["content"]
    assert "src/bad.py:1" in refused and "finish again" in refused
    assert [data["passed"] for kind, _, data in rec.events if kind == "check"] == [False, True]


def test_the_check_command_must_pass_before_the_agent_may_finish(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm([
        answer(call("write_file", path="x.txt", content="x\n")),
        FINISH,
        answer(call("write_file", path="CHECKED", content="ok\n")),
        FINISH,
    ])
    rec = Recorder()

    result = agent_run(repo, config_for(server, model_key), rec,
                       options=LoopOptions(check_command="test -f CHECKED || { echo missing CHECKED; exit 3; }"))

    assert result.state == "succeeded"
    refused = tool_messages(server.requests[2])[-1]["content"]
    assert "missing CHECKED" in refused and "exit status 3" in refused
    assert rec.states[-1]["check"]["passed"] is True


def test_a_finish_without_changes_runs_no_check(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm([FINISH])
    rec = Recorder()

    result = agent_run(repo, config_for(server, model_key), rec, options=LoopOptions(check_command="exit 1"))

    assert result.state == "succeeded" and not rec.kinds("check")


def test_show_diff_shows_uncommitted_and_checkpointed_changes_since_the_base(repo):
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    (repo / "src" / "app.py").write_text('def greet():\n    return "hi"\n')
    subprocess.run(["git", "commit", "-qam", "checkpoint"], cwd=repo, check=True)
    (repo / "new.txt").write_text("untracked\n")

    out, is_error = execute_tool(repo, "show_diff", "{}", base=base)

    assert not is_error
    assert '+    return "hi"' in out and "+untracked" in out


def test_old_tool_outputs_are_shortened_first_to_fit_the_context_window():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "task " * 50}]
    for i in range(10):
        messages.append({"role": "assistant", "content": f"thinking {i}", "tool_calls": []})
        messages.append({"role": "tool", "tool_call_id": str(i), "name": "read_file", "content": "x" * 6000})
    window = 10_000

    shortened = fit_context(messages, window)

    assert shortened > 0
    assert estimate_tokens(messages) <= window * 0.8
    assert messages[1]["content"] == "task " * 50  # the task is kept whole
    assert messages[-1]["content"] == "x" * 6000  # and so are the newest messages
    assert "context window" in messages[3]["content"]
    assert len(messages) == 22  # nothing is dropped: every tool call keeps its result


def test_a_follow_up_continues_the_same_conversation(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm(EDIT_THEN_FINISH + [FINISH])
    rec = Recorder()
    agent_run(repo, config_for(server, model_key), rec)

    result = agent_run(repo, config_for(server, model_key), rec, state=follow_up(rec.states[-1], "Also say hello."))

    assert result.state == "succeeded"
    last = server.requests[-1]["messages"]
    assert last[-1] == {"role": "user", "content": "Also say hello."}
    assert any(m.get("content") == "Finished." for m in last)  # the earlier conversation is there


def test_the_conversation_keeps_every_call_with_its_result_across_steps_and_waits(repo, fake_llm, model_key,
                                                                                 litellm_loaded):
    server = fake_llm([
        answer(call("write_file", path="a.txt", content="a\n"), call("run_command", command="cat a.txt")),
        FINISH,
    ])
    rec = Recorder()
    options = LoopOptions(approvals="commands")
    agent_run(repo, config_for(server, model_key), rec, options=options)
    agent_run(repo, config_for(server, model_key), rec, state=decide(rec.states[-1], True), options=options)

    sent = server.requests[1]["messages"]
    assert [c["function"]["name"] for c in sent[2]["tool_calls"]] == ["write_file", "run_command"]
    assert [m["tool_call_id"] for m in sent[3:5]] == [c["id"] for c in sent[2]["tool_calls"]]
    assert conversation_error(sent) == ""
    assert conversation_error(sent[:3] + sent[4:]) != "", "the fake server refuses what OpenAI's API refuses"


def test_ending_with_plain_text_still_has_to_pass_the_checks(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm([
        answer(call("write_file", path="bad.py", content="def f(:\n")),
        {"content": "All done."},
        {"content": "Really done."},
        answer(call("write_file", path="bad.py", content="def f():\n    pass\n")),
        {"content": "Fixed."},
        {"content": "Fixed, really."},
    ])
    rec = Recorder()

    result = agent_run(repo, config_for(server, model_key), rec)

    assert result == AgentResult("succeeded", "Fixed, really.", "")
    assert "bad.py:1" in server.requests[3]["messages"][-1]["content"]
    assert [data["passed"] for kind, _, data in rec.events if kind == "check"] == [False, True]


def test_a_plan_written_as_plain_text_waits_for_the_lead_too(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm([{"content": "1. Do it."}, {"content": "1. Do it, really."},
                       answer(call("write_file", path="P.md", content="p\n")), FINISH])
    rec = Recorder()
    waiting = agent_run(repo, config_for(server, model_key), rec, state=new_state("t", "p", read_only=True))
    assert waiting.state == "waiting" and waiting.pending["detail"] == "1. Do it, really."

    result = agent_run(repo, config_for(server, model_key), rec, state=decide(rec.states[-1], True, "1. Write P.md"))

    assert result.state == "succeeded" and (repo / "P.md").exists()
    assert "1. Write P.md" in server.requests[2]["messages"][-1]["content"]
    assert "write_file" in {t["function"]["name"] for t in server.requests[2]["tools"]}


def test_a_stop_ends_a_stalled_model_call_within_seconds(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm([{"stall": 60, "content": "too late"}])
    asked = time.monotonic()

    result = agent_run(repo, config_for(server, model_key, timeout=60), Recorder(),
                       should_stop=lambda: time.monotonic() - asked > 1)

    assert result == AgentResult("stopped", "", "stopped on request")
    assert time.monotonic() - asked < 5


def test_the_time_budget_caps_a_long_command(repo, fake_llm, model_key, litellm_loaded):
    server = fake_llm([answer(call("run_command", command="sleep 30; echo late > late.txt", timeout=1800)), FINISH])
    started = time.monotonic()

    rec = Recorder()

    result = agent_run(repo, config_for(server, model_key, max_seconds=3), rec, options=LoopOptions())

    assert time.monotonic() - started < 15
    assert result.state == "stopped" and "time budget" in result.error
    assert not (repo / "late.txt").exists()
    assert "timed out" in rec.states[-1]["messages"][-1]["content"]


def test_a_note_waits_until_the_queued_calls_have_their_results():
    state = new_state("t", "p")
    call_msg = {"id": "c1", "type": "function", "function": {"name": "list_files", "arguments": "{}"}}
    state["messages"].append({"role": "assistant", "content": None, "tool_calls": [call_msg]})
    state["queue"] = [call_msg]

    noted = add_note(state, "rolled back")

    assert noted["messages"] == state["messages"] and noted["notes"] == ["rolled back"]
    assert add_note(new_state("t", "p"), "hi")["messages"][-1] == {"role": "user", "content": "hi"}


def test_old_tool_call_arguments_are_shortened_and_stay_valid_json():
    big = {"path": "big.txt", "content": "y" * 60_000}
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "task"}]
    for i in range(4):
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": str(i), "type": "function", "function": {"name": "write_file", "arguments": json.dumps(big)}}]})
        messages.append({"role": "tool", "tool_call_id": str(i), "name": "write_file", "content": "ok"})
    messages += [{"role": "user", "content": "go on"}] * 6

    fit_context(messages, 8192)

    shortened = json.loads(messages[2]["tool_calls"][0]["function"]["arguments"])
    assert shortened["path"] == "big.txt" and "context window" in shortened["content"]
    assert estimate_tokens(messages) <= 8192 * 0.8
