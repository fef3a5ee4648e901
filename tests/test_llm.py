"""The model-call layer (agents/llm.py) over litellm's real HTTP path against FakeLLM: streaming,
timeouts that bound the whole call, retries, answers that are no chat completion, check_model."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from agents import llm
from agents.llm import ModelConfig, ModelError, check_model, complete
from tests.conftest import FAKE_KEY
from tests.fake_llm import FakeLLM

KEY = FAKE_KEY
MESSAGES = [{"role": "user", "content": "Add a note."}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "description": "Write a file.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                "required": ["path", "content"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "finish",
            "description": "End the task.",
            "parameters": {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]},
        },
    },
]
NOTE = {"path": "AGENT_NOTE.md", "content": "# Agent note\n\nWritten by the fake model.\n"}
HTML = "<html><head><title>Sign in</title></head><body>Welcome to the corporate proxy</body></html>"
BOTH = pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])


@pytest.fixture(scope="session", autouse=True)
def litellm_loaded() -> None:
    """Import litellm once up front (with its local price list: no internet), so timing
    assertions measure the call, not the import."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm  # noqa: F401


@pytest.fixture
def fake(fake_llm):
    return fake_llm


@pytest.fixture(autouse=True)
def _key_set(model_key):
    """Every server here wants the key."""


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm, "RETRY_BASE_WAIT", 0.01)


def config_for(server: FakeLLM, **kw) -> ModelConfig:
    kw.setdefault("api_key_env", "FAKE_LLM_KEY")
    return ModelConfig(model="openai/fake-model", api_base=server.base_url, **kw)


def call(server: FakeLLM, stream: bool = True, **kw) -> tuple[dict, dict, list[str]]:
    """complete() against ``server``; returns (answer, usage, the text pieces on_text got)."""
    pieces: list[str] = []
    answer, usage = complete(MESSAGES, config_for(server, stream=stream, **kw), TOOLS, 1, on_text=pieces.append)
    return answer, usage, pieces


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_call_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "model-call" and t.is_alive()]


def wait_until(predicate, seconds: float) -> bool:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# --------------------------------------------------------------------------- streaming


def test_streamed_text_comes_back_whole_and_reaches_on_text_in_pieces(fake):
    server = fake([{"content": "The note is written and nothing else changed."}])

    answer, _, pieces = call(server)

    assert server.requests[0]["stream"] is True
    assert answer == {"role": "assistant", "content": "The note is written and nothing else changed."}
    assert len(pieces) > 1 and "".join(pieces) == answer["content"]


def test_streamed_tool_call_split_over_chunks_comes_back_whole(fake):
    server = fake([{"content": "Writing it.", "tool_calls": [{"name": "write_file", "arguments": NOTE, "id": "call_w"}]}])

    answer, _, pieces = call(server)

    assert answer["content"] == "Writing it." and "".join(pieces) == "Writing it."
    assert answer["tool_calls"] == [
        {"id": "call_w", "type": "function", "function": {"name": "write_file", "arguments": json.dumps(NOTE)}}
    ]


def test_two_streamed_tool_calls_come_back_in_order_with_their_ids(fake):
    server = fake([{"tool_calls": [
        {"name": "write_file", "arguments": NOTE, "id": "call_first"},
        {"name": "finish", "arguments": {"summary": "Added the note"}, "id": "call_second"},
    ]}])

    answer, _, _ = call(server)

    calls = answer["tool_calls"]
    assert [(c["id"], c["function"]["name"]) for c in calls] == [("call_first", "write_file"), ("call_second", "finish")]
    assert json.loads(calls[0]["function"]["arguments"]) == NOTE
    assert json.loads(calls[1]["function"]["arguments"]) == {"summary": "Added the note"}


@BOTH
def test_broken_json_arguments_come_back_as_the_raw_string(fake, stream):
    broken = '{"path": "a.txt", "content": "unfinished'
    server = fake([{"tool_calls": [{"name": "write_file", "arguments": broken}]}])

    answer, _, _ = call(server, stream)

    assert answer["tool_calls"][0]["function"]["arguments"] == broken


def test_streamed_usage_is_filled_from_the_servers_usage_chunk(fake):
    server = fake([{"tool_calls": [{"name": "finish", "arguments": {"summary": "done"}}]}])

    _, usage, _ = call(server)

    body = server.requests[0]
    assert body["stream_options"] == {"include_usage": True}
    sent = FakeLLM.usage(body, server.message(server.script[0], 1))
    assert usage["prompt_tokens"] == sent["prompt_tokens"] > 0
    assert usage["completion_tokens"] == sent["completion_tokens"] > 0
    assert usage["cost"] == 0.0  # litellm has no price for fake-model


def test_a_server_that_rejects_stream_options_is_asked_again_without_them(fake):
    def picky(body: dict) -> dict:
        if "stream_options" in body:
            return {"status": 400, "error": "Unrecognized request argument supplied: stream_options"}
        return {"content": "fine without"}

    server = fake([picky])

    answer, usage, pieces = call(server, num_retries=0)

    assert answer["content"] == "fine without" and "".join(pieces) == "fine without"
    assert len(server.requests) == 2 and "stream_options" not in server.requests[1]
    assert usage["completion_tokens"] > 0  # counted by litellm, as no usage chunk came


def test_a_server_that_ignores_stream_and_answers_whole_still_gives_the_answer(fake):
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "fake-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "not streamed"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}}
    server = fake([{"raw": json.dumps(body), "content_type": "application/json"}])

    answer, usage, pieces = call(server)

    assert answer["content"] == "not streamed" and pieces == ["not streamed"]
    assert usage["prompt_tokens"] == 7 and usage["completion_tokens"] == 2


def test_a_whole_answer_reaches_on_text_once(fake):
    server = fake([{"content": "all at once"}])

    answer, _, pieces = call(server, stream=False)

    assert "stream" not in server.requests[0]
    assert answer["content"] == "all at once" and pieces == ["all at once"]


def test_calls_stream_by_default_and_are_made_whole_with_stream_off(fake):
    server = fake([{"content": "streamed"}, {"content": "whole"}])

    first, _ = complete(MESSAGES, config_for(server), TOOLS)
    second, _ = complete(MESSAGES + [{"role": "assistant", "content": "streamed"}],
                         config_for(server, stream=False), TOOLS)

    assert server.requests[0].get("stream") is True and first["content"] == "streamed"
    assert "stream" not in server.requests[1] and second["content"] == "whole"


def test_an_on_text_that_raises_abandons_the_streamed_call(fake):
    server = fake([{"content": "a long answer in pieces"}])

    def fail(text: str) -> None:
        raise RuntimeError("the board went away")

    before = set(model_call_threads())

    with pytest.raises(RuntimeError, match="the board went away"):
        complete(MESSAGES, config_for(server), TOOLS, on_text=fail)

    assert wait_until(lambda: not set(model_call_threads()) - before, 3)


def test_litellm_mocking_streams_text_to_on_text_and_reports_cost(monkeypatch):
    import litellm

    real_completion = litellm.completion
    seen: list[dict] = []

    def mocked(**kwargs):
        # litellm answers itself without HTTP; in a stream it sends the text only
        # (mock_tool_calls are dropped there), so this test streams text.
        seen.append(kwargs)
        return real_completion(**kwargs, mock_response="Nothing needed changing.")

    monkeypatch.setattr(litellm, "completion", mocked)
    pieces: list[str] = []

    answer, usage = complete(MESSAGES, ModelConfig("openai/gpt-4o-mini"), TOOLS, on_text=pieces.append)

    assert seen[0]["stream"] is True and seen[0]["stream_options"] == {"include_usage": True}
    assert answer == {"role": "assistant", "content": "Nothing needed changing."}
    assert len(pieces) > 1 and "".join(pieces) == "Nothing needed changing."
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["cost"] > 0  # gpt-4o-mini is in litellm's local price list


# --------------------------------------------------------------------------- timeouts


@BOTH
@pytest.mark.parametrize("reply", [{"delay": 30}, {"stall": 30}, {"trickle": 30}],
                         ids=["never-answers", "stalls-after-headers", "trickles"])
def test_a_server_that_does_not_finish_fails_in_seconds(fake, stream, reply):
    server = fake([{**reply, "content": "too late"}])
    started = time.monotonic()

    with pytest.raises(ModelError) as caught:
        call(server, stream, timeout=2, num_retries=2)

    assert time.monotonic() - started < 2 + 3
    assert str(caught.value) == "the model call timed out after 2 s"
    assert len(server.requests) == 1  # a timeout is not retried


@BOTH
def test_a_call_cut_off_by_its_deadline_leaves_no_thread_reading(fake, stream):
    server = fake([{"trickle": 30, "content": "too late"}])
    before = set(model_call_threads())

    with pytest.raises(ModelError, match="timed out"):
        call(server, stream, timeout=1, num_retries=0)

    # The socket is shut down at the deadline, so the reading thread ends at once rather
    # than with the trickle, 30 s later.
    assert wait_until(lambda: not set(model_call_threads()) - before, 1.5), model_call_threads()


# --------------------------------------------------------------------------- retries and refusals


@BOTH
def test_rate_limited_twice_then_answered_is_retried_to_the_answer(fake, quick_retries, stream):
    limited = {"status": 429, "error": "slow down", "retry_after": 0}
    calls = {"n": 0}

    def limited_twice(body: dict) -> dict:
        calls["n"] += 1
        return limited if calls["n"] <= 2 else {"content": "third time lucky"}

    server = fake([limited_twice])

    answer, _, _ = call(server, stream, num_retries=2)

    assert len(server.requests) == 3
    assert answer["content"] == "third time lucky"


def test_a_retry_waits_as_long_as_the_servers_retry_after(fake, quick_retries):
    calls = {"n": 0}

    def limited_once(body: dict) -> dict:
        calls["n"] += 1
        return {"status": 429, "retry_after": 1} if calls["n"] == 1 else {"content": "ok"}

    server = fake([limited_once])
    started = time.monotonic()

    call(server, num_retries=1)

    assert 1 <= time.monotonic() - started < 3  # not RETRY_BASE_WAIT's 0.01 s


def test_rate_limited_past_the_retries_fails_with_the_providers_words(fake, quick_retries):
    server = fake([{"status": 429, "error": "quota used up for today", "retry_after": 0}])

    with pytest.raises(ModelError) as caught:
        call(server, num_retries=1)

    assert str(caught.value) == "rate limited by the provider: quota used up for today"
    assert len(server.requests) == 2


@BOTH
def test_a_wrong_key_fails_at_once_with_authentication_failed(fake, monkeypatch, quick_retries, stream):
    server = fake([{"content": "never"}])
    monkeypatch.setenv("WRONG_KEY", "sk-wrong")

    with pytest.raises(ModelError) as caught:
        call(server, stream, api_key_env="WRONG_KEY", num_retries=3)

    assert str(caught.value) == "authentication failed: Incorrect API key provided."
    assert len(server.requests) == 1


def test_a_forbidden_answer_fails_at_once_with_authentication_failed(fake, quick_retries):
    server = fake([{"status": 403, "error": "this key may not use fake-model"}])

    with pytest.raises(ModelError) as caught:
        call(server, num_retries=3)

    assert str(caught.value) == "authentication failed: this key may not use fake-model"
    assert len(server.requests) == 1


# --------------------------------------------------------------------------- answers that are no chat completion


@BOTH
def test_a_page_that_is_not_json_gives_the_api_base_reason(fake, quick_retries, stream):
    server = fake([{"raw": HTML, "content_type": "text/html"}])

    with pytest.raises(ModelError) as caught:
        call(server, stream, num_retries=2)

    assert str(caught.value) == (
        "the model endpoint answered with something that is not an OpenAI-compatible response "
        "(is the API base right? it should usually end in /v1): " + HTML[:100]
    )
    assert len(server.requests) == 1  # asking again would get the same page


def test_json_that_is_no_chat_completion_gives_the_api_base_reason(fake):
    server = fake([{"raw": json.dumps({"status": "ok", "service": "auth-gateway"}), "content_type": "application/json"}])

    with pytest.raises(ModelError, match=r"not an OpenAI-compatible response .*: \{\"status\": \"ok\""):
        call(server, stream=False, num_retries=0)


# --------------------------------------------------------------------------- check_model


def test_check_model_answers_ok_with_latency_reply_and_model(fake):
    server = fake([{"content": "OK"}])

    result = check_model(config_for(server))

    assert result["ok"] is True and result["reply"] == "OK" and result["model"] == "fake-model"
    assert isinstance(result["latency_ms"], int) and 0 <= result["latency_ms"] < 5000
    body = server.requests[0]
    assert "tools" not in body and body["max_tokens"] == llm.CHECK_MAX_TOKENS
    assert body["messages"] == [{"role": "user", "content": "Reply with the word OK."}]


def test_check_model_cuts_a_long_reply_to_200_characters(fake):
    server = fake([{"content": "O" + "K" * 500}])

    result = check_model(config_for(server), prompt="Shout.")

    assert result["reply"] == ("O" + "K" * 500)[:200]
    assert server.requests[0]["messages"][0]["content"] == "Shout."


def test_check_model_reports_a_refused_port_as_an_error_result(quick_retries):
    base = f"http://127.0.0.1:{closed_port()}/v1"
    config = ModelConfig("openai/fake-model", api_base=base, api_key_env="FAKE_LLM_KEY")

    result = check_model(config)

    assert result == {"ok": False, "latency_ms": result["latency_ms"],
                      "error": f"could not connect to the model endpoint {base} (connection refused)"}
    assert isinstance(result["latency_ms"], int)


def test_check_model_reports_a_wrong_key_as_an_error_result(fake, monkeypatch):
    server = fake([{"content": "OK"}])
    monkeypatch.setenv("WRONG_KEY", "sk-wrong")

    result = check_model(config_for(server, api_key_env="WRONG_KEY"))

    assert result["ok"] is False and result["error"] == "authentication failed: Incorrect API key provided."
    assert len(server.requests) == 1


def test_check_model_reports_a_missing_key_variable_as_an_error_result(fake, monkeypatch):
    server = fake([{"content": "OK"}])
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)

    result = check_model(config_for(server, api_key_env="NO_SUCH_KEY_VAR"))

    assert result["ok"] is False
    assert result["error"] == "the API key variable NO_SUCH_KEY_VAR is not set in the environment"
    assert server.requests == []


def test_check_model_retries_at_most_once(fake, quick_retries):
    server = fake([{"status": 503, "error": "warming up"}])

    result = check_model(config_for(server, num_retries=5))

    assert result["ok"] is False and result["error"] == "the model endpoint failed (HTTP 503): warming up"
    assert len(server.requests) == 2


def test_check_model_honours_the_timeout(fake):
    server = fake([{"stall": 30, "content": "OK"}])
    started = time.monotonic()

    result = check_model(config_for(server, timeout=1))

    assert result["ok"] is False and result["error"] == "the model call timed out after 1 s"
    assert time.monotonic() - started < 1 + 2


# --------------------------------------------------------------------------- FakeLLM itself


def test_fake_llm_stops_promptly_while_a_reply_sleeps():
    server = FakeLLM([{"stall": 60, "content": "late"}])
    server.start()
    request = urllib.request.Request(
        f"{server.base_url}/chat/completions",
        data=json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    client = threading.Thread(target=lambda: urllib.request.urlopen(request, timeout=30).read(), daemon=True)
    client.start()
    assert wait_until(lambda: len(server.requests) == 1, 5)
    started = time.monotonic()

    server.stop()

    assert time.monotonic() - started < 2
    client.join(5)
    assert not client.is_alive(), "the sleeping reply dropped its connection"


def test_fake_llm_sends_retry_after_and_raw_bodies():
    with FakeLLM([{"status": 429, "retry_after": 7}]) as server:
        request = urllib.request.Request(
            f"{server.base_url}/chat/completions", data=b'{"messages": []}',
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=5)
        assert caught.value.code == 429 and caught.value.headers["Retry-After"] == "7"
        server.script[0] = {"raw": HTML, "content_type": "text/html"}
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.headers["Content-Type"] == "text/html" and answer.read().decode() == HTML


def test_a_server_that_cannot_stream_tool_calls_is_asked_unstreamed_from_then_on(fake):
    server = fake([
        {"empty_stream": True, "tool_calls": [{"name": "write_file", "arguments": NOTE}]},
        {"empty_stream": True, "content": "second"},
    ])
    config = config_for(server)

    first, _ = complete(MESSAGES, config, TOOLS)
    second, _ = complete(MESSAGES + [first, {"role": "tool", "tool_call_id": first["tool_calls"][0]["id"],
                                             "content": "created"}], config, TOOLS)

    assert first["tool_calls"][0]["function"]["name"] == "write_file"
    assert second["content"] == "second"
    assert [body.get("stream", False) for body in server.requests] == [True, False, False]


def test_an_empty_stream_without_tools_is_an_error_not_an_empty_answer(fake):
    server = fake([{"empty_stream": True, "content": "never streamed"}])

    with pytest.raises(ModelError, match="empty stream"):
        complete(MESSAGES, config_for(server), [])


def test_a_self_hosted_server_gets_an_empty_string_for_a_null_content_beside_tool_calls(fake):
    server = fake([{"content": "ok"}])
    call = {"id": "c1", "type": "function", "function": {"name": "finish", "arguments": "{}"}}
    history = MESSAGES + [{"role": "assistant", "content": None, "tool_calls": [call]},
                          {"role": "tool", "tool_call_id": "c1", "content": "done"}]

    complete(history, config_for(server), TOOLS)

    assert server.requests[0]["messages"][1]["content"] == ""
    assert history[1]["content"] is None, "the stored conversation is left as it was"
