"""The baseline: plain Celery with the delivery settings a careful user would pick (acks_late, prefetch 1,
JSON), no-op tasks. ``celery -A bench.raw_celery worker``. Each task counts itself in Redis so the
benchmark knows when a batch is done (one INCR, well under the cost of a task)."""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

BROKER = os.environ.get("BENCH_RAW_BROKER_URL", "redis://127.0.0.1:6379/0")
COUNTER_URL = os.environ.get("BENCH_RAW_COUNTER_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BENCH_RAW_PREFIX", "bench-raw:")
QUEUE = os.environ.get("BENCH_RAW_QUEUE", "bench.raw")

app = Celery("bench_raw", broker=BROKER)
_transport: dict[str, object] = {}
if BROKER.startswith("redis"):
    _transport["global_keyprefix"] = PREFIX
app.conf.update(
    broker_transport_options=_transport,
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
)

_counter: redis.Redis | None = None


def counter() -> redis.Redis:
    global _counter
    if _counter is None:
        _counter = redis.Redis.from_url(COUNTER_URL)
    return _counter


@app.task(name="bench.noop")
def noop(batch: str) -> None:
    counter().incr(f"{PREFIX}done:{batch}")


@app.task(name="bench.link")
def link(batch: str, index: int) -> None:
    """One link of a ``celery.chain``: records when its body started and ended (hop = next start - end)."""
    started = time.time()
    pipe = counter().pipeline()
    pipe.hset(f"{PREFIX}start:{batch}", str(index), repr(started))
    pipe.hset(f"{PREFIX}end:{batch}", str(index), repr(time.time()))
    pipe.execute()


@app.task(name="bench.sleep")
def sleep(batch: str, seconds: float) -> None:
    """A long task for the recovery baseline: every start (first delivery or redelivery) is recorded, with
    the pool process's pid, as JSON ``[time, pid]``."""
    counter().rpush(f"{PREFIX}starts:{batch}", json.dumps([time.time(), os.getpid()]))
    time.sleep(seconds)
    counter().incr(f"{PREFIX}done:{batch}")
