"""Outgoing webhooks (board/webhooks.py, agents/webhooks.py) against a real local receiver: the
JSON payload on each event, Slack's form, retries with backoff, giving up, and runs that never
wait for a receiver."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone
from django_q.models import OrmQ, Schedule

from agents import landing, runner, tasks
from agents.webhooks import post_json
from board import webhooks
from board.models import Column, Run, RunState, Webhook, WebhookDelivery

pytestmark = pytest.mark.django_db


class Receiver:
    """An HTTP server on 127.0.0.1 in a thread that records every POST (``received``: dicts of
    path, headers and parsed JSON body) and answers with the next of ``answers``: a status code,
    or "hang" (no answer until the test ends); 200 once they run out."""

    def __init__(self, answers=()):
        self.answers = list(answers)
        self.received: list[dict] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                answer = receiver.answers.pop(0) if receiver.answers else 200
                if answer == "hang":
                    receiver.release.wait(30)
                    return
                self.send_response(answer)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    servers = []

    def start(answers=()):
        server = Receiver(answers)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def queued(monkeypatch):
    """The delivery ids handed to the workers (board.webhooks.enqueue), instead of a broker."""
    ids: list[int] = []
    monkeypatch.setattr(webhooks, "enqueue", ids.append)
    return ids


def finish_run(card, commit_callbacks):
    """Start ``card`` and carry its run to the end here, running what waits for the commit."""
    with commit_callbacks(execute=True):
        run = card.start()
        runner.execute(run.pk)
    card.refresh_from_db()
    return Run.objects.get(pk=run.pk)


def deliver_all(ids: list[int]) -> list[str]:
    states = [tasks.deliver_webhook(delivery_id) for delivery_id in ids]
    ids.clear()
    return states


def test_a_run_that_succeeds_posts_ready_for_review_with_the_card_and_run(
        make_card, project, receiver, queued, django_capture_on_commit_callbacks, settings):
    settings.BOARD_PUBLIC_URL = "https://board.example.test/"
    hook = receiver()
    Webhook.objects.create(project=project, url=hook.url, events=["review"])
    card = make_card("echo done", title="Fix the login bug")
    run = finish_run(card, django_capture_on_commit_callbacks)
    assert run.state == RunState.SUCCEEDED and len(queued) == 1
    assert deliver_all(queued) == ["delivered"]
    [got] = hook.received
    body = got["body"]
    assert got["headers"]["Content-Type"].startswith("application/json")
    assert body["event"] == "review" and body["project"] == {"id": project.pk, "name": "demo"}
    assert body["card"] == {"id": card.pk, "title": "Fix the login bug", "column": Column.REVIEW,
                            "branch": card.branch, "url": f"https://board.example.test/cards/{card.pk}/"}
    assert body["run"] == {"id": run.pk, "state": "succeeded", "summary": run.summary, "error": ""}
    assert abs(timezone.datetime.fromisoformat(body["at"]) - timezone.now()) < timedelta(minutes=1)
    delivery = WebhookDelivery.objects.get()
    assert delivery.attempts == 1 and delivery.response_status == 200 and delivery.delivered_at is not None


def test_a_failed_run_posts_failed_with_its_error_only_to_hooks_that_want_it(
        make_card, project, receiver, queued, django_capture_on_commit_callbacks):
    wants, other, every = receiver(), receiver(), receiver()
    Webhook.objects.create(project=project, url=wants.url, events=["failed"])
    Webhook.objects.create(project=project, url=other.url, events=["landed", "review"])
    Webhook.objects.create(project=project, url=every.url, events=[])
    Webhook.objects.create(project=project, url=every.url, events=["failed"], enabled=False)
    run = finish_run(make_card("echo broken >&2; exit 3"), django_capture_on_commit_callbacks)
    assert run.state == RunState.FAILED
    deliver_all(queued)
    assert [r["body"]["event"] for r in wants.received] == ["failed"]
    assert wants.received[0]["body"]["run"]["error"] == run.error and run.error
    assert other.received == [] and [r["body"]["event"] for r in every.received] == ["failed"]


def test_a_run_waiting_for_approval_posts_needs_approval(make_card, project, receiver, queued,
                                                         django_capture_on_commit_callbacks):
    hook = receiver()
    Webhook.objects.create(project=project, url=hook.url, events=["approval"])
    card = make_card()
    with django_capture_on_commit_callbacks(execute=True):
        run = Run.claim(card.start().pk, "host", 1)
        assert run.wait_for_lead({}, {"kind": "approval", "title": "Run rm -rf build"})
    deliver_all(queued)
    [got] = hook.received
    assert got["body"]["event"] == "approval" and got["body"]["run"]["state"] == RunState.AWAITING_APPROVAL


def test_landing_posts_landed_and_the_slack_form_is_one_line_with_a_link(
        make_card, project, receiver, queued, django_capture_on_commit_callbacks):
    hook, slack = receiver(), receiver()
    Webhook.objects.create(project=project, url=hook.url, events=["landed"])
    Webhook.objects.create(project=project, url=slack.url, events=["landed"], slack=True)
    project.name = "shop <prod>"
    project.save()
    card = make_card("echo landed > landed.txt", title="Add landed.txt & more")
    finish_run(card, django_capture_on_commit_callbacks)
    assert queued == []  # nobody asked for review
    with django_capture_on_commit_callbacks(execute=True):
        landing.land_card(card)
    deliver_all(queued)
    card.refresh_from_db()
    [got] = hook.received
    assert got["body"]["event"] == "landed" and got["body"]["card"]["column"] == Column.DONE
    assert got["body"]["run"]["state"] == "succeeded"
    [text] = [r["body"] for r in slack.received]
    assert list(text) == ["text"] and "\n" not in text["text"]
    assert text["text"].startswith(f"[shop &lt;prod&gt;] Card #{card.pk} <http://")
    assert f"/cards/{card.pk}/|Add landed.txt &amp; more> landed" in text["text"]


def test_a_receiver_error_is_retried_with_backoff_by_a_one_off_schedule(project, make_card, receiver, queued,
                                                                       django_capture_on_commit_callbacks, monkeypatch):
    hook = receiver([500])
    Webhook.objects.create(project=project, url=hook.url)
    finish_run(make_card(), django_capture_on_commit_callbacks)
    [delivery_id] = queued
    before = timezone.now()
    assert deliver_all(queued) == ["pending"]
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert delivery.attempts == 1 and delivery.response_status == 500 and delivery.last_error == "HTTP 500 Internal Server Error"
    assert timedelta(seconds=9) < delivery.next_attempt_at - before < timedelta(seconds=12)
    [schedule] = Schedule.objects.all()
    assert schedule.func == "agents.tasks.deliver_webhook" and schedule.schedule_type == Schedule.ONCE
    assert schedule.next_run == delivery.next_attempt_at and eval(schedule.args) == delivery_id
    # When it is due, django-q2's scheduler makes it a task (and drops the one-off schedule).
    from django_q.brokers import get_broker
    from django_q import scheduler as q_scheduler

    monkeypatch.setattr(q_scheduler, "close_old_django_connections", lambda: None)  # the test's own connection
    Schedule.objects.update(next_run=timezone.now() - timedelta(seconds=1))
    q_scheduler.scheduler(broker=get_broker())
    assert not Schedule.objects.exists() and OrmQ.objects.count() >= 1
    assert tasks.deliver_webhook(delivery_id) == "delivered"
    delivery.refresh_from_db()
    assert delivery.attempts == 2 and delivery.response_status == 200 and len(hook.received) == 2
    assert hook.received[0]["body"] == hook.received[1]["body"]
    assert tasks.deliver_webhook(delivery_id) == "delivered" and len(hook.received) == 2  # never twice


def test_a_receiver_that_never_answers_leaves_runs_prompt_and_is_given_up_after_six_attempts(
        project, make_card, receiver, settings, django_capture_on_commit_callbacks):
    settings.BOARD_WEBHOOK_TIMEOUT = 0.3
    hook = receiver(["hang"] * 10)
    Webhook.objects.create(project=project, url=hook.url)
    card = make_card("echo quick")
    started = time.monotonic()
    run = finish_run(card, django_capture_on_commit_callbacks)  # the real enqueue: a task row, no POST
    assert run.state == RunState.SUCCEEDED and time.monotonic() - started < 5
    delivery = WebhookDelivery.objects.get()
    assert delivery.state == "pending" and delivery.attempts == 0 and hook.received == []
    assert OrmQ.objects.filter(key=settings.Q_CLUSTER["name"]).exists() or OrmQ.objects.exists()
    delays = []
    for attempt in range(1, webhooks.MAX_ATTEMPTS + 1):
        began = time.monotonic()
        state = tasks.deliver_webhook(delivery.pk)
        assert time.monotonic() - began < 3
        delivery.refresh_from_db()
        assert delivery.attempts == attempt
        if delivery.next_attempt_at:
            delays.append(round((delivery.next_attempt_at - timezone.now()).total_seconds()))
    assert state == "failed" and delivery.state == "failed" and delivery.next_attempt_at is None
    assert "0.3 s" in delivery.last_error or "timed out" in delivery.last_error
    assert [abs(d - e) <= 2 for d, e in zip(delays, webhooks.RETRY_DELAYS)] == [True] * 5
    assert Schedule.objects.count() == 5 and len(hook.received) == 6


def test_no_webhook_means_no_delivery_and_a_disabled_one_is_not_sent(project, make_card, receiver, queued,
                                                                     django_capture_on_commit_callbacks):
    finish_run(make_card(), django_capture_on_commit_callbacks)
    assert queued == [] and not WebhookDelivery.objects.exists()
    hook = receiver()
    webhook = Webhook.objects.create(project=project, url=hook.url)
    finish_run(make_card(title="Second"), django_capture_on_commit_callbacks)
    webhook.enabled = False
    webhook.save()
    assert deliver_all(queued) == ["failed"] and hook.received == []
    assert WebhookDelivery.objects.get().last_error == "The webhook was disabled."


def test_post_json_reports_refusals_redirects_and_bad_urls_without_raising(receiver):
    from tests.conftest import free_port

    assert post_json(f"http://127.0.0.1:{free_port()}/", {"a": 1}, timeout=1).status is None
    assert not post_json("ftp://example.invalid/", {}, timeout=1).ok
    assert post_json("http://[::1", {}, timeout=1).status is None
    redirect = post_json(receiver([302]).url, {"a": "é"}, timeout=1)
    assert redirect.status == 302 and not redirect.ok
    assert post_json(receiver([204]).url, {}, timeout=1).ok


def test_a_maintainer_adds_lists_and_deletes_webhooks_on_the_settings_page(project):
    from django.test import Client

    client = Client(HTTP_HOST="127.0.0.1", raise_request_exception=True)
    url = f"/projects/{project.pk}/webhooks"
    response = client.post(url, {"url": "https://hooks.example.test/T1/B2", "events": ["failed", "landed"], "slack": "on"})
    assert response.status_code == 302 and response["Location"] == f"/projects/{project.pk}/settings"
    hook = Webhook.objects.get()
    assert (hook.url, hook.events, hook.slack, hook.enabled) == ("https://hooks.example.test/T1/B2", ["failed", "landed"], True, True)
    WebhookDelivery.objects.create(webhook=hook, event="failed", state="failed", attempts=6, last_error="HTTP 404 Not Found")
    page = client.get(f"/projects/{project.pk}/settings").content.decode()
    row = page[page.index(f'id="webhook-{hook.pk}"'):]
    row = row[:row.index("</tr>")]
    assert "failed, landed" in row and "Slack" in row and "Given up" in row and "HTTP 404 Not Found" in row
    assert 'id="webhook-form"' in page
    client.post(url, {"url": "http://ci:8080/hook"})
    assert Webhook.objects.get(url="http://ci:8080/hook").events == [] and "every event" in client.get(
        f"/projects/{project.pk}/settings").content.decode()
    assert client.post(url, {"delete": str(hook.pk)}).status_code == 302
    assert list(Webhook.objects.values_list("url", flat=True)) == ["http://ci:8080/hook"]
    gone = client.post(url, {"delete": "junk"}, follow=True).content.decode()
    assert "gone already" in gone


@pytest.mark.parametrize("bad", ["ftp://example.test/x", "javascript:alert(1)", "hooks.example.test/x", "http://", "",
                                 "http://exa mple.test/", "http://example.test:99999/", "https://\x00/"])
def test_a_webhook_url_that_is_not_http_is_refused_with_a_clear_message(project, bad):
    from django.test import Client

    client = Client(HTTP_HOST="127.0.0.1", raise_request_exception=True)
    response = client.post(f"/projects/{project.pk}/webhooks", {"url": bad, "events": ["review"]})
    assert response.status_code == 422 and not Webhook.objects.exists()
    assert "http:// or https:// URL" in response.content.decode() or "required" in response.content.decode()
    odd = client.post(f"/projects/{project.pk}/webhooks", {"url": "https://ok.test/", "events": ["nope"]})
    assert odd.status_code == 422 and "Choose events among" in odd.content.decode()


def test_the_project_command_adds_lists_and_removes_webhooks(project, capsys):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    call_command("project", "webhook", "add", str(project.pk), "https://chat.example.test/hook", "--events",
                 "landed, failed", "--slack")
    hook = Webhook.objects.get(pk=int(capsys.readouterr().out.strip().splitlines()[-1]))
    assert (hook.events, hook.slack) == (["failed", "landed"], True)
    WebhookDelivery.objects.create(webhook=hook, event="landed", state="delivered", attempts=1)
    call_command("project", "webhook", "list", str(project.pk))
    assert capsys.readouterr().out.split("\t") == [str(hook.pk), "demo", hook.url, "failed,landed", "slack",
                                                   "delivered (landed, 1 attempt(s))\n"]
    with pytest.raises(CommandError, match="http:// or https://"):
        call_command("project", "webhook", "add", str(project.pk), "file:///etc/passwd")
    with pytest.raises(CommandError, match="Choose events among"):
        call_command("project", "webhook", "add", str(project.pk), "https://x.test/", "--events", "everything")
    call_command("project", "webhook", "remove", str(hook.pk))
    assert not Webhook.objects.exists()
    with pytest.raises(CommandError, match="No webhook"):
        call_command("project", "webhook", "remove", str(hook.pk))


def _public_url(**env) -> str:
    """BOARD_PUBLIC_URL as settings work it out in a fresh process with ``env``."""
    import os
    import subprocess
    import sys
    import tempfile

    from django.conf import settings as django_settings

    environment = {k: v for k, v in os.environ.items() if not k.startswith(("BOARD_", "DJANGO_"))}
    environment.update(env, BOARD_DATA_DIR=tempfile.mkdtemp(), DJANGO_SETTINGS_MODULE="config.settings")
    out = subprocess.run([sys.executable, "-c", "from django.conf import settings; print(settings.BOARD_PUBLIC_URL)"],
                         cwd=django_settings.BASE_DIR, env=environment, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_webhook_links_default_to_an_address_people_can_open():
    assert _public_url(BOARD_PORT="8412") == "http://127.0.0.1:8412"
    # A wildcard bind is no address: the first name people use, from DJANGO_ALLOWED_HOSTS.
    assert _public_url(BOARD_HOST="0.0.0.0", BOARD_PORT="8412",
                       DJANGO_ALLOWED_HOSTS="127.0.0.1,board.intranet") == "http://board.intranet:8412"
    assert _public_url(BOARD_HOST="0.0.0.0", BOARD_PORT="8412") == "http://127.0.0.1:8412"
    assert _public_url(BOARD_PUBLIC_URL="https://board.example.com") == "https://board.example.com"
