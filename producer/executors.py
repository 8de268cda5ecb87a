"""The seeds' Python API, on the same machinery as the CLI.

``ConcurrentExecutor.run_manifest`` submits the manifest as chords to a Celery worker
and waits for the chord callbacks to store the results, exactly as ``dify-runner run``
does. With no ``broker_url`` it uses the embedded default (a private redis-server and
an in-process worker), which is also what lets a Python ``task_execution_func`` run:
functions cannot travel in JSON messages, so they are registered in this process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from uuid import uuid4

from celery import Celery

from ..config.manifest import RunManifest, Task
from ..config.plan import StubConfig
from ..config.settings import Settings
from ..worker.app import create_app
from ..worker.deadline import Deadline
from ..worker.exceptions import ExecutorException
from ..worker.execution import RunHooks, register_hooks, unregister_hooks
from ..worker.models import RunExecutionResult, TestResult
from ..worker.store import RunStore, connect
from ..worker.stub import run_stub
from .embedded import embedded_backend, mock_targets
from .submission import submit
from .waiting import wait_for_run


class CancellationToken:
    """A thread-safe flag: ``cancel()`` from any thread stops the run it was given to."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def is_cancelled(self) -> bool:
        return self._event.is_set()

    def reset(self) -> None:
        self._event.clear()


class ConcurrentExecutor:
    """Runs a manifest's cases concurrently (up to ``execution_policy.concurrency``).

    ``task_execution_func(task)`` (optionally also taking ``cancellation_token=``) runs
    one attempt: return a dict (``status``, ``outputs``, ``total_tokens``, ``cost``...)
    or a TestResult, or raise TaskExecutionException (FAILED), TaskTimeoutException
    (TIMEOUT) or anything else (ERROR). Without it, each workflow's own target runs:
    Dify over HTTP, or the stub.
    """

    def __init__(
        self,
        task_execution_func: Callable[..., Any] | None = None,
        now_fn: Callable[[], datetime] = datetime.now,
        sleep_fn: Callable[[float], None] = time.sleep,
        id_fn: Callable[[], str] = lambda: str(uuid4()),
        broker_url: str | None = None,
    ) -> None:
        if task_execution_func is not None and broker_url is not None:
            raise ValueError("a task_execution_func runs in this process only: it cannot be used with broker_url")
        self.task_execution_func = task_execution_func
        self.now_fn = now_fn
        self.sleep_fn = sleep_fn
        self.id_fn = id_fn
        self.broker_url = broker_url

    def run_manifest(self, manifest: RunManifest, cancellation_token: Any = None) -> RunExecutionResult:
        if manifest is None:
            raise ValueError("manifest cannot be None")
        if not manifest.cases:
            raise ExecutorException("RunManifest.cases cannot be empty")
        manifest = manifest.model_copy(update={"run_id": self.id_fn(), "created_at": self.now_fn()})
        execution_func = self._execution_func(manifest)
        # The real time.sleep is left to Celery's retry countdown, which frees the worker
        # thread while a case waits; an injected sleep_fn (a test's clock) is called instead.
        sleep_fn = None if self.sleep_fn is time.sleep else self.sleep_fn
        hooks = RunHooks(execution_func=execution_func, now_fn=self.now_fn, sleep_fn=sleep_fn,
                         token=cancellation_token)
        with self._backend(manifest.execution_policy.concurrency) as (app, store), \
                mock_targets(manifest) as manifest:
            register_hooks(manifest.run_id, hooks)
            try:
                submit(app, store, manifest, executor="hook" if execution_func else "plan")
                info = wait_for_run(store, manifest.run_id, token=cancellation_token)
                task_results = list(store.iter_task_results(manifest.run_id, info.batch_count))
                test_results = list(store.iter_test_results(manifest.run_id, info.batch_count))
            finally:
                unregister_hooks(manifest.run_id)
        assert info.statistics is not None
        return RunExecutionResult(
            run_id=manifest.run_id,
            task_results=task_results,
            test_results=test_results,
            statistics=info.statistics,
            started_at=info.created_at,
            finished_at=info.finished_at,
            stop_reason=info.stop_reason,
        )

    def _execution_func(self, manifest: RunManifest) -> Callable[..., Any] | None:
        return self.task_execution_func

    @contextmanager
    def _backend(self, concurrency: int) -> Iterator[tuple[Celery, RunStore]]:
        if self.broker_url is None:
            with embedded_backend(concurrency) as backend:
                yield backend
            return
        settings = Settings.from_env()
        app = create_app(self.broker_url, settings)
        yield app, RunStore(connect(settings.state_url(self.broker_url)), settings.result_ttl_seconds)


class StubExecutor(ConcurrentExecutor):
    """A ConcurrentExecutor whose cases run against the stub: no HTTP, configurable outcomes.

    Behaviours per task id or case id: ``success``, ``failure``, ``timeout``, ``error``,
    ``flaky:N``; otherwise a case fails with probability ``failure_rate``.
    """

    def __init__(
        self,
        simulated_delay: float = 0.0,
        failure_rate: float = 0.0,
        task_behaviors: dict[str, str] | None = None,
        now_fn: Callable[[], datetime] = datetime.now,
        sleep_fn: Callable[[float], None] = time.sleep,
        id_fn: Callable[[], str] = lambda: str(uuid4()),
    ) -> None:
        super().__init__(None, now_fn, sleep_fn, id_fn)
        self._config = StubConfig(
            simulated_delay=simulated_delay, failure_rate=failure_rate, task_behaviors=dict(task_behaviors or {})
        )

    def set_task_behavior(self, task_id: str, behavior: str) -> None:
        self._config.task_behaviors = {**self._config.task_behaviors, task_id: behavior}

    def set_failure_rate(self, failure_rate: float) -> None:
        self._config.failure_rate = failure_rate

    def set_simulated_delay(self, delay: float) -> None:
        self._config.simulated_delay = delay

    def clear_task_behaviors(self) -> None:
        self._config.task_behaviors = {}

    def _execution_func(self, manifest: RunManifest) -> Callable[..., Any]:
        config = self._config.model_copy(deep=True)
        timeout = manifest.execution_policy.stop_conditions.timeout_per_task
        sleep_fn = self.sleep_fn

        def stub(task: Task, cancellation_token: Any = None) -> dict[str, Any]:
            cancelled = cancellation_token.is_cancelled if cancellation_token is not None else None
            return run_stub(task, config, Deadline(timeout), sleep_fn, cancelled)

        return stub


class ExecutorService:
    """The entry point of the seeds: run a manifest, get one TestResult per case."""

    def __init__(
        self,
        task_execution_func: Callable[..., Any] | None = None,
        now_fn: Callable[[], datetime] = datetime.now,
        sleep_fn: Callable[[float], None] = time.sleep,
        id_fn: Callable[[], str] = lambda: str(uuid4()),
        broker_url: str | None = None,
    ) -> None:
        self.task_execution_func = task_execution_func
        self.executor = ConcurrentExecutor(task_execution_func, now_fn, sleep_fn, id_fn, broker_url)

    def execute_test_plan(self, manifest: RunManifest, cancellation_token: Any = None) -> list[TestResult]:
        if manifest is None:
            raise ValueError("manifest cannot be None")
        if not manifest.cases:
            raise ExecutorException("RunManifest.cases cannot be empty")
        return self.executor.run_manifest(manifest, cancellation_token).test_results
