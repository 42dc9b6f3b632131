"""Pure timing rules (no I/O), so the bounds in README.md can be read off and unit-tested here."""

from __future__ import annotations

from app.config import Settings


def republish_delay(publish_count: int, settings: Settings) -> float:
    """Seconds after the ``publish_count``-th publish of one attempt before the reconciler publishes it
    again if still unclaimed: orphan timeout, doubling per re-publish, capped. A long queue backlog thus
    costs at most ~log2(backlog / orphan_timeout) + backlog / cap extra messages per task."""
    exp = max(publish_count - 1, 0)
    return float(min(settings.orphan_timeout_seconds * (2 ** min(exp, 30)), settings.orphan_max_backoff_seconds))


def max_publishes(backlog_seconds: float, settings: Settings) -> int:
    """Upper bound on publishes of one unclaimed attempt while it waits ``backlog_seconds`` in a queue
    (one reconciler interval of slack per re-publish)."""
    n, t = 1, 0.0
    while True:
        t += republish_delay(n, settings) + settings.reconcile_interval_seconds
        if t > backlog_seconds:
            return n + 1  # the one that may be in flight at the end of the window
        n += 1


def missing_row_backoff(retries: int, settings: Settings) -> float:
    """Countdown before re-checking a message whose task row was not visible (doubling, capped at 30 s)."""
    return float(min(settings.missing_row_initial_backoff_seconds * (2 ** min(retries, 20)), 30.0))


def celery_priority(priority: int, *, amqp: bool = False) -> int:
    """Tideflow priority 0..9 (9 = most urgent) -> the message's Celery priority: on Redis 0 is taken first, on
    RabbitMQ (``amqp``) the highest (the queues' ``x-max-priority`` is 9, :data:`app.broker.AMQP_MAX_PRIORITY`).
    Celery's "Message Priorities": https://docs.celeryq.dev/en/stable/userguide/routing.html#routing-options-rabbitmq-priorities"""
    clamped = max(0, min(9, priority))
    return clamped if amqp else 9 - clamped
