"""django-q2 tasks: a few lines each, taking ids, never model instances."""


def execute_run(run_id: int) -> str | None:
    """Carry run ``run_id`` to its end in this worker (agents.runner.execute)."""
    from agents import runner

    return runner.execute(run_id)


def deliver_webhook(delivery_id: int) -> str:
    """One attempt at webhook delivery ``delivery_id`` (board.webhooks.deliver)."""
    from board import webhooks

    return webhooks.deliver(delivery_id)
