"""The Celery app: JSON only, late acks, one message in hand per worker process.

Start a fleet worker with::

    celery -A dify_runner.worker.app worker --pool threads --concurrency 20

The broker and the result backend come from ``DIFY_RUNNER_BROKER_URL`` (and
optionally ``DIFY_RUNNER_RESULT_BACKEND``); both must be Redis.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.signals import celeryd_init
from kombu import Producer

from ..config.settings import Settings
from .backend import BACKEND_PATH
from .recovery import install as install_fleet_watch
from .store import connections_for

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
QUEUE = "dify-runner"


class RunnerCelery(Celery):
    """Celery, plus one way to hand a producer to code that does not take one.

    ``chord.apply_async(producer=...)`` does not pass the producer on to its header group,
    which acquires another from the pool, so a kombu ``Producer.batch()`` (pipelined
    publishing) on ours would never see the chord's messages. Inside ``publishing_through``
    every ``producer_or_acquire()`` of this thread gets the given producer instead.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._current_producer = threading.local()

    @contextmanager
    def publishing_through(self, producer: Producer) -> Iterator[Producer]:
        self._current_producer.value = producer
        try:
            yield producer
        finally:
            self._current_producer.value = None

    def producer_or_acquire(self, producer: Producer | None = None) -> Any:
        current = getattr(self._current_producer, "value", None)
        return super().producer_or_acquire(producer or current)


def create_app(broker_url: str | None = None, settings: Settings | None = None) -> Celery:
    """A configured app with the tasks registered. ``broker_url`` overrides the settings."""
    from .tasks import register_tasks  # tasks need the app's type only, not this module

    settings = settings or Settings.from_env()
    broker = broker_url or settings.broker_url or DEFAULT_BROKER
    backend = settings.state_url(broker)
    app = RunnerCelery("dify_runner")
    app.conf.update(
        broker_url=broker,
        result_backend=f"{BACKEND_PATH}+{backend}",
        # Only JSON crosses the wire: no pickle, so a message can never carry code.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A case is acknowledged after it ran: a worker that dies mid-case gives it back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        result_expires=settings.result_ttl_seconds,
        # One result backend (and Redis pool) per process, not one per thread: Celery's
        # default builds a backend per thread, which under gevent means one per task, each
        # with a new connection (issue 17's profile). redis-py's pool is thread-safe.
        result_backend_thread_safe=True,
        # Unacked messages (running, or waiting for a retry ETA) are redelivered after
        # this; retry waits are cut into hops of a few seconds, far below it (kombu#337).
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for messages of dead workers every few seconds (kombu's default
            # interval x throttle is 100 s), so they come back soon after the timeout.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 5)),
            "unacked_restore_throttle": 1,
            # The sweep holds a mutex in Redis; if its holder dies (SIGKILL mid-sweep) no
            # one sweeps until it expires: 30 s rather than kombu's 300 s.
            "unacked_mutex_expire": 30,
        },
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    app.dify_runner_settings = settings  # type: ignore[attr-defined]
    # The run store lives in the result backend's Redis.
    app.dify_runner_state_url = backend  # type: ignore[attr-defined]
    register_tasks(app)
    install_fleet_watch(app)
    return app


def size_pools(conf: Any, concurrency: int) -> None:
    """Size the worker's pools from its concurrency: every thread of the pool may publish (a
    retry), acknowledge and report to its chord at once. kombu's Redis channel holds 10
    connections and the result backend 100 (redis-py's default), and both raise rather than
    wait when they run dry: at 500 threads, cases met "Too many connections" (issue 17)."""
    conf.worker_concurrency = concurrency
    connections = connections_for(concurrency)
    conf.broker_transport_options = {**(conf.broker_transport_options or {}), "max_connections": connections}
    conf.redis_max_connections = connections
    conf.broker_pool_limit = max(10, concurrency)  # producers: one per publishing thread


@celeryd_init.connect
def _record_concurrency(conf: Any = None, options: dict[str, Any] | None = None, **_: Any) -> None:
    """`celery worker --concurrency N` does not reach app.conf; the pools are sized from it."""
    concurrency = (options or {}).get("concurrency")
    if conf is not None and concurrency:
        size_pools(conf, int(concurrency))


def __getattr__(name: str) -> Celery:
    """``app``, for `celery -A dify_runner.worker.app worker`: configured from the
    environment, and created on first use so that importing this module (as the
    producer does) does not build an app it will not use."""
    if name == "app":
        globals()["app"] = instance = create_app()
        return instance
    raise AttributeError(name)
