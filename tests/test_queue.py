"""Many runs at once: a project's parallel limit (runs held out of the broker until a slot frees)
and the queue's order, shown on the board and the card page, on real throwaway repositories."""

import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from agents import runner
from board.models import Card, Event, Run, RunState
from board.templatetags.board_tags import ordinal
from tests.conftest import execute_in_thread
from tests.fake_llm import FakeLLM

pytestmark = pytest.mark.django_db

WAITING = "Waiting for a free slot: this project runs at most"


@pytest.fixture
def client():
    return Client(HTTP_HOST="127.0.0.1", raise_request_exception=True)


@pytest.fixture
def enqueued(monkeypatch) -> list[int]:
    """Run.enqueue records the run's id instead of handing it to django-q2."""
    ids = []
    monkeypatch.setattr(Run, "enqueue", lambda run: ids.append(run.pk))
    return ids


def limit(project, n: int | None):
    project.max_parallel = n
    project.save(update_fields=["max_parallel"])


def claim(run: Run) -> Run | None:
    return Run.claim(run.pk, "test-host", 1)


def wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def state_event(run: Run, text: str) -> Event:
    return run.events.get(kind="state", text=text)


@pytest.mark.django_db(transaction=True)
def test_a_project_limited_to_one_runs_the_next_card_only_when_the_one_before_ends(
    make_card, project, monkeypatch, client, tmp_path
):
    # Every enqueue goes to a worker of its own, as django-q2 would with many workers: only the
    # project's limit keeps the runs apart.
    workers = []
    monkeypatch.setattr(Run, "enqueue", lambda run: workers.append(execute_in_thread(run.pk)))
    limit(project, 1)
    go = tmp_path / "go"
    first = make_card(f"while [ ! -e {go} ]; do sleep 0.05; done; echo first", title="First")
    second = make_card("echo second", title="Second")
    third = make_card("echo third", title="Third")
    try:
        run1 = first.start()
        wait_for(lambda: Run.objects.get(pk=run1.pk).state == RunState.RUNNING, "the first card to run")
        run2, run3 = second.start(), third.start()
        wait_for(lambda: Run.objects.filter(pk__in=[run2.pk, run3.pk], held=True).count() == 2, "both to be held")

        for run in (run2, run3):
            run.refresh_from_db()
            assert run.state == RunState.QUEUED and run.started_at is None
        assert Run.objects.queue_positions() == {run2.pk: (1, True), run3.pk: (2, True)}
        board = client.get(f"/projects/{project.pk}/").content.decode()
        assert "Waiting for a slot · 1st in line in this project (limit 1)" in board
        assert "Waiting for a slot · 2nd in line in this project (limit 1)" in board
        assert f"{WAITING} 1 at once" in board, "the held run's step is its card's last line"
        page = client.get(f"/cards/{third.pk}/").content.decode()
        assert "Waiting for a slot · 2nd in line in this project (limit 1)" in page

        go.touch()
        wait_for(lambda: Run.objects.filter(pk__in=[run1.pk, run2.pk, run3.pk], state=RunState.SUCCEEDED).count() == 3,
                 "all three to succeed by themselves")
    finally:
        go.touch()
        for worker in list(workers):
            worker.join(30)
    run1, run2, run3 = (Run.objects.get(pk=r.pk) for r in (run1, run2, run3))
    # One after the other: each started only once the one before had ended.
    assert state_event(run1, "succeeded").id < state_event(run2, "running").id
    assert state_event(run2, "succeeded").id < state_event(run3, "running").id
    for run in (run2, run3):
        assert run.events.filter(kind="step", text__startswith=WAITING).count() == 1, "said once, not per delivery"
        assert not run.held
    assert Run.objects.queue_positions() == {}


def test_queued_cards_show_their_place_in_line_in_the_order_they_were_queued(make_card, project, client):
    cards = [make_card(title=f"Card {i}") for i in range(4)]
    runs = [card.start() for card in cards]
    running = claim(runs[3])
    assert running is not None, "a running run has no place in line"
    # Cards 1 and 2 joined the queue before card 0 (as when card 0 came back from an approval).
    Run.objects.filter(pk=runs[1].pk).update(queued_at=timezone.now() - timedelta(seconds=20))
    Run.objects.filter(pk=runs[2].pk).update(queued_at=timezone.now() - timedelta(seconds=10))

    assert Run.objects.queue_positions() == {runs[1].pk: (1, False), runs[2].pk: (2, False), runs[0].pk: (3, False)}
    board = client.get(f"/projects/{project.pk}/").content.decode()
    shown = {card.pk: board.split(f'id="card-{card.pk}"')[1].split("</article>")[0] for card in cards}
    assert "Queued · 1st in line" in shown[cards[1].pk]
    assert "Queued · 2nd in line" in shown[cards[2].pk]
    assert "Queued · 3rd in line" in shown[cards[0].pk]
    assert "in line" not in shown[cards[3].pk]
    assert "Queued · 3rd in line" in client.get(f"/cards/{cards[0].pk}/").content.decode()
    # The htmx answer to Start shows the new run's place at once.
    late = make_card(title="Late")
    response = client.post(f"/cards/{late.pk}/start", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and "Queued · 4th in line" in response.content.decode()


def test_the_board_reads_the_queue_in_one_query_whatever_the_number_of_queued_cards(
    make_card, project, client, django_assert_max_num_queries
):
    for i in range(3):
        make_card(title=f"Card {i}").start()
    with django_assert_max_num_queries(30) as few:
        client.get(f"/projects/{project.pk}/")
    for i in range(5):
        make_card(title=f"More {i}").start()
    with django_assert_max_num_queries(len(few.captured_queries)):
        client.get(f"/projects/{project.pk}/")


def test_a_run_back_from_an_approval_joins_the_end_of_the_line(make_card, project, model_key):
    script = [{"tool_calls": [{"name": "ask_lead", "arguments": {"question": "Which?"}}]},
              {"tool_calls": [{"name": "finish", "arguments": {"summary": "ok"}}]}]
    with FakeLLM(script, api_key="sk-fake-llm-test") as llm:
        project.model, project.api_base, project.api_key_env = "openai/fake-model", llm.base_url, model_key
        project.save()
        waiting = make_card(kind="builtin", command="").start()
        runner.execute(waiting.pk)
        waiting.refresh_from_db()
        assert waiting.state == RunState.AWAITING_APPROVAL
        other = make_card(title="Other").start()
        waiting.decide(True, "This one")
    waiting.refresh_from_db()
    assert waiting.state == RunState.QUEUED and waiting.queued_at > other.queued_at
    assert Run.objects.queue_positions() == {other.pk: (1, False), waiting.pk: (2, False)}


def test_a_run_is_held_once_however_often_it_is_delivered_and_stopping_it_ends_it_at_once(make_card, project):
    limit(project, 1)
    first, second = make_card().start(), make_card(title="Second").start()
    assert claim(first) is not None
    assert claim(second) is None and claim(second) is None
    second.refresh_from_db()
    assert second.state == RunState.QUEUED and second.held
    assert list(second.events.filter(kind="step").values_list("text", flat=True)) == [
        f"{WAITING} 1 at once"]

    Card.objects.get(pk=second.card_id).stop()
    second.refresh_from_db()
    assert second.state == RunState.STOPPED and second.error == "Stopped before it started."
    assert not second.held


def test_a_run_that_ends_or_parks_for_the_lead_lets_the_oldest_held_run_go(
    make_card, project, enqueued, django_capture_on_commit_callbacks
):
    limit(project, 1)
    runs = [make_card(title=f"Card {i}").start() for i in range(3)]
    running = claim(runs[0])
    assert claim(runs[2]) is None and claim(runs[1]) is None
    # Held in the order of the queue, not of their deliveries.
    assert Run.objects.queue_positions() == {runs[1].pk: (1, True), runs[2].pk: (2, True)}

    with django_capture_on_commit_callbacks(execute=True):
        assert running.wait_for_lead({}, {"kind": "question", "title": "Which?"})
    assert enqueued == [runs[1].pk], "the oldest held run, and only as many as slots are free"
    runs[1].refresh_from_db()
    assert not runs[1].held and runs[1].last_line == "A slot is free: queued for the next worker"

    second = claim(runs[1])
    assert second is not None and claim(runs[2]) is None
    with django_capture_on_commit_callbacks(execute=True):
        second.finish(RunState.FAILED, error="broke")
    assert enqueued == [runs[1].pk, runs[2].pk]
    assert claim(runs[2]) is not None


def test_at_start_up_queued_runs_are_enqueued_and_held_ones_only_up_to_free_slots(
    make_card, project, enqueued, django_capture_on_commit_callbacks
):
    limit(project, 2)
    held = [make_card(title=f"Held {i}").start() for i in range(3)]
    waiting = make_card(title="Waiting").start()
    Run.objects.filter(pk__in=[r.pk for r in held]).update(held=True)
    with django_capture_on_commit_callbacks(execute=True):
        assert Run.objects.hand_out_queued() == 2
    # The queued run is with the workers already, so it takes one of the two slots.
    assert enqueued == [waiting.pk, held[0].pk]
    assert list(Run.objects.filter(held=True).order_by("id").values_list("id", flat=True)) == [held[1].pk, held[2].pk]


def test_the_parallel_limit_is_set_on_the_settings_page_and_raising_it_lets_held_runs_go(
    make_card, project, client, enqueued, django_capture_on_commit_callbacks
):
    from tests.test_settings_views import settings_data

    response = client.post(f"/projects/{project.pk}/settings", settings_data(project, max_parallel="1"))
    assert response.status_code == 302
    project.refresh_from_db()
    assert project.max_parallel == 1
    assert 'name="max_parallel"' in client.get(f"/projects/{project.pk}/settings").content.decode()

    runs = [make_card(title=f"Card {i}").start() for i in range(3)]
    claim(runs[0])
    assert claim(runs[1]) is None and claim(runs[2]) is None
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/projects/{project.pk}/settings", settings_data(project, max_parallel="2"))
    assert enqueued == [runs[1].pk]
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/projects/{project.pk}/settings", settings_data(project, max_parallel=""))
    project.refresh_from_db()
    assert project.max_parallel is None, "empty: no limit but the workers"
    assert enqueued == [runs[1].pk, runs[2].pk]


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", "5000", "99999999999999999999"])
def test_a_parallel_limit_that_is_not_a_whole_number_from_one_up_is_refused(client, project, value):
    from tests.test_settings_views import settings_data

    response = client.post(f"/projects/{project.pk}/settings", settings_data(project, max_parallel=value))
    assert response.status_code == 422
    page = response.content.decode()
    assert 'data-field="max_parallel"' in page
    assert "at least 1, or leave it empty" in page or "At most 1000 parallel runs" in page
    project.refresh_from_db()
    assert project.max_parallel is None


def test_project_set_takes_the_parallel_limit_and_refuses_garbage(project):
    call_command("project", "set", str(project.pk), "--max-parallel", "3", stdout=StringIO())
    project.refresh_from_db()
    assert project.max_parallel == 3 and project.base_branch == "main"
    for garbage in ("0", "many"):
        with pytest.raises(CommandError, match="max_parallel: Give a whole number of runs, at least 1"):
            call_command("project", "set", str(project.pk), "--max-parallel", garbage, stdout=StringIO())
    project.refresh_from_db()
    assert project.max_parallel == 3
    call_command("project", "set", str(project.pk), "--max-parallel", "", stdout=StringIO())
    project.refresh_from_db()
    assert project.max_parallel is None


@pytest.mark.django_db(transaction=True)
async def test_a_card_pushed_to_the_board_shows_its_place_in_line(make_card, project):
    import asyncio

    from channels.db import database_sync_to_async
    from channels.testing import WebsocketCommunicator

    from config.asgi import application

    def start_three():
        limit(project, 1)
        runs = [make_card(title=f"Card {i}").start() for i in range(3)]
        claim(runs[0])
        return runs

    runs = await database_sync_to_async(start_three)()
    board = WebsocketCommunicator(application, f"/ws/projects/{project.pk}/",
                                  headers=[(b"origin", b"http://127.0.0.1"), (b"host", b"127.0.0.1")])
    connected, _ = await board.connect()
    assert connected
    pushes = [await board.receive_from(timeout=5)]  # the columns, as the board stands
    assert "Waiting for a slot" not in pushes[0]
    await database_sync_to_async(claim)(runs[2])  # held: its step reaches the board as a push of its card
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not any("Waiting for a slot" in push for push in pushes) and loop.time() < deadline:
        try:
            pushes.append(await board.receive_from(timeout=max(0.1, deadline - loop.time())))
        except asyncio.TimeoutError:
            break
    await board.disconnect()
    pushed = next((push for push in pushes if "Waiting for a slot" in push), "")
    assert f'id="card-{runs[2].card_id}"' in pushed
    assert "Waiting for a slot · 1st in line in this project (limit 1)" in pushed


@pytest.mark.parametrize("number, text", [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"),
                                          (12, "12th"), (13, "13th"), (21, "21st"), (102, "102nd"), (111, "111th")])
def test_places_in_line_read_as_english_ordinals(number, text):
    assert ordinal(number) == text
