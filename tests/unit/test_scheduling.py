from app.config import load_settings
from app.scheduling import celery_priority, max_publishes, missing_row_backoff, republish_delay

S = load_settings(orphan_timeout_seconds=10, orphan_max_backoff_seconds=300, reconcile_interval_seconds=5)


def test_republish_backoff_doubles_and_is_capped():
    assert [republish_delay(n, S) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]


def test_publishes_per_task_grow_logarithmically_with_backlog():
    # an hour of backlog costs a handful of duplicates per task, not one per orphan timeout (360)
    assert max_publishes(60, S) <= 4
    assert max_publishes(3600, S) <= 18


def test_missing_row_backoff_is_capped():
    s = load_settings(missing_row_initial_backoff_seconds=0.5)
    assert missing_row_backoff(0, s) == 0.5 and missing_row_backoff(1, s) == 1.0
    assert missing_row_backoff(50, s) == 30.0


def test_priority_mapping_puts_urgent_first():
    assert celery_priority(9) == 0 and celery_priority(0) == 9
    assert celery_priority(42) == 0 and celery_priority(-1) == 9
    # RabbitMQ counts upwards (queues declared with x-max-priority 9)
    assert celery_priority(9, amqp=True) == 9 and celery_priority(0, amqp=True) == 0
    assert celery_priority(42, amqp=True) == 9 and celery_priority(-1, amqp=True) == 0
