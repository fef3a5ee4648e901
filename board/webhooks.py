"""Outgoing webhooks: tell a project's configured URLs about card events, without ever making a
run wait for a receiver.

The flow:

1. Where a run or card changes (Run.finish, Run.wait_for_lead, Card.record_landing) the domain
   calls ``notify(event, card, run)``, one line inside its own transaction.
2. Once that transaction commits (so a receiver is never told about a change that was rolled
   back), one WebhookDelivery row is made per enabled webhook of the project that wants the event,
   holding the exact body to send, and a django-q2 task is queued for each
   (``agents.tasks.deliver_webhook``, taking the delivery's id).
3. The task (``deliver``) POSTs the body (agents/webhooks.py, timeout settings.BOARD_WEBHOOK_TIMEOUT,
   5 s) and records the answer. On an error, a timeout or a non-2xx answer it tries again after
   RETRY_DELAYS (10 s, 1 min, 5 min, 30 min, 2 h); after MAX_ATTEMPTS (6) tries it gives up and
   marks the delivery failed with the last error.

Why a django-q2 Schedule for a retry: the retry must survive a restart and wait minutes to hours
without holding a worker, and it must work however the workers are started (``manage.py board``,
or a plain ``qcluster`` per host in team-server mode, where no board process loops). A Schedule of
type ONCE with ``next_run`` is a row in the database that the cluster's own scheduler turns into a
task when it is due (and then deletes); django-q2 checks schedules about every 30 s, so a retry
comes up to 30 s late, which the backoff makes no matter. Sleeping in a worker instead would take a
slot from the agents for hours. The delivery's own row stays the truth (``state``, ``attempts``,
``next_attempt_at``): a task for a delivery that is no longer pending does nothing, so a
redelivered task or a duplicate schedule never sends a body twice in a row needlessly.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from board.models import Card, Run, Webhook, WebhookDelivery, WebhookEvent

log = logging.getLogger(__name__)

RETRY_DELAYS = (10, 60, 300, 1800, 7200)  # seconds before the 2nd, 3rd, … attempt
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
TASK_TIMEOUT = 60  # seconds django-q2 lets one delivery task run (the POST's own timeout is 5 s)

HEADLINES = {
    WebhookEvent.APPROVAL: "needs your approval",
    WebhookEvent.FAILED: "failed",
    WebhookEvent.REVIEW: "is ready for review",
    WebhookEvent.LANDED: "landed",
}


def notify(event: str, card_id: int, run: Run | None = None) -> None:
    """Tell the project's webhooks that ``event`` (a WebhookEvent value) happened to card
    ``card_id`` (in ``run``, if any), once the current transaction commits. Cheap and safe to call
    from the domain: nothing is read or sent now, and a failure later is logged, never raised into
    the change that caused it (``robust``)."""
    run_id = run.pk if run is not None else None
    transaction.on_commit(lambda: create_deliveries(event, card_id, run_id), robust=True)


def create_deliveries(event: str, card_id: int, run_id: int | None) -> list[WebhookDelivery]:
    """Make and queue one delivery of ``event`` for each enabled webhook of the card's project
    that wants it (``events`` lists it, or is empty: all). Returns them ([] when none wants it, or
    the card is gone)."""
    card = Card.objects.select_related("project").filter(pk=card_id).first()
    if card is None:
        return []
    hooks = [hook for hook in Webhook.objects.filter(project_id=card.project_id, enabled=True)
             if not hook.events or event in hook.events]
    if not hooks:
        return []
    run = Run.objects.filter(pk=run_id).first() if run_id is not None else None
    body = payload(event, card, run)
    deliveries = []
    for hook in hooks:
        delivery = WebhookDelivery.objects.create(
            webhook=hook, event=event, payload=slack_payload(body) if hook.slack else body,
            next_attempt_at=timezone.now(),
        )
        enqueue(delivery.pk)
        deliveries.append(delivery)
    return deliveries


def card_url(card: Card) -> str:
    """The card's page as a link from outside (settings.BOARD_PUBLIC_URL + its path)."""
    return settings.BOARD_PUBLIC_URL.rstrip("/") + reverse("card_detail", args=[card.pk])


def payload(event: str, card: Card, run: Run | None) -> dict:
    """The board's JSON body: ``{"event", "project": {"id", "name"}, "card": {"id", "title",
    "column", "branch", "url"}, "run": {"id", "state", "summary", "error"} or None, "at": ISO
    8601 time}``."""
    return {
        "event": event,
        "project": {"id": card.project_id, "name": card.project.name},
        "card": {"id": card.pk, "title": card.title, "column": card.column, "branch": card.branch,
                 "url": card_url(card)},
        "run": None if run is None else {"id": run.pk, "state": run.state, "summary": run.summary, "error": run.error},
        "at": timezone.now().isoformat(),
    }


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn reads <, > and & as markup (https://api.slack.com/reference/surfaces/formatting).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(body: dict) -> dict:
    """Slack's incoming-webhook form of a ``payload``: ``{"text": one line with a link}``, such as
    ``[shop] Card #12 <url|Fix the login bug> failed: tests fail``."""
    card, run = body["card"], body["run"] or {}
    headline = HEADLINES.get(body["event"], body["event"])
    reason = run.get("error") if body["event"] == WebhookEvent.FAILED else run.get("summary")
    reason = " ".join((reason or "").split())
    line = (f"[{_slack_escape(body['project']['name'])}] Card #{card['id']} "
            f"<{card['url']}|{_slack_escape(card['title'])}> {headline}")
    if reason:
        line += f": {_slack_escape(reason[:300])}{'…' if len(reason) > 300 else ''}"
    return {"text": line}


def enqueue(delivery_id: int) -> None:
    """Hand delivery ``delivery_id`` to the workers now (a django-q2 task)."""
    from django_q.tasks import async_task

    async_task("agents.tasks.deliver_webhook", delivery_id, task_name=f"webhook-{delivery_id}",
               timeout=TASK_TIMEOUT)


def schedule_retry(delivery_id: int, when) -> None:
    """Have the workers deliver ``delivery_id`` again at ``when`` (a ONCE Schedule; see the module's
    docstring for why)."""
    from django_q.models import Schedule

    Schedule.objects.create(
        name=f"webhook-{delivery_id}-retry"[:100], func="agents.tasks.deliver_webhook", args=repr(delivery_id),
        schedule_type=Schedule.ONCE, repeats=-1, next_run=when,
    )


def deliver(delivery_id: int) -> str:
    """One attempt at delivery ``delivery_id``: POST its body, then mark it delivered, schedule the
    next attempt (RETRY_DELAYS), or give up after MAX_ATTEMPTS (state failed, ``last_error``).
    A delivery that is no longer pending, or whose webhook was disabled, is left alone. Returns the
    delivery's state afterwards (or "gone")."""
    from agents.webhooks import post_json

    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None or delivery.state != WebhookDelivery.State.PENDING:
        return delivery.state if delivery else "gone"
    if not delivery.webhook.enabled:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            state=WebhookDelivery.State.FAILED, last_error="The webhook was disabled.", next_attempt_at=None)
        return WebhookDelivery.State.FAILED
    result = post_json(delivery.webhook.url, delivery.payload, timeout=settings.BOARD_WEBHOOK_TIMEOUT)
    attempts = delivery.attempts + 1
    now = timezone.now()
    fields = {"attempts": attempts, "response_status": result.status, "last_error": result.error[:2000]}
    if result.ok:
        fields.update(state=WebhookDelivery.State.DELIVERED, delivered_at=now, next_attempt_at=None)
    elif attempts >= MAX_ATTEMPTS:
        fields.update(state=WebhookDelivery.State.FAILED, next_attempt_at=None)
        log.warning("Gave up on webhook delivery %s to %s after %s attempts: %s", delivery.pk,
                    delivery.webhook.url, attempts, result.error)
    else:
        fields["next_attempt_at"] = now + timedelta(seconds=RETRY_DELAYS[attempts - 1])
    with transaction.atomic():
        # Only a delivery still pending is updated: two tasks for one delivery do not both count.
        if not WebhookDelivery.objects.filter(pk=delivery.pk, state=WebhookDelivery.State.PENDING,
                                              attempts=delivery.attempts).update(**fields):
            return WebhookDelivery.objects.values_list("state", flat=True).get(pk=delivery.pk)
        if fields.get("next_attempt_at"):
            schedule_retry(delivery.pk, fields["next_attempt_at"])
    return fields.get("state", WebhookDelivery.State.PENDING)
