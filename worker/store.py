"""The shared run state in Redis: run metadata, live progress, results, cancellation.

Keys (all under ``dify-runner:`` and expiring after the settings' result TTL):

    run:{id}                hash   metadata (plan, totals, state, statistics when finished)
    run:{id}:progress       hash   final statuses counted as cases end (once each), plus retries
    run:{id}:final          hash   task_id -> final status: a case counts once, whatever redelivers it
    run:{id}:waiting        set    cases with a retry waiting (exact, unlike a difference of counters)
    run:{id}:publisher      string who is publishing the run (host:pid), with a short expiry
    run:{id}:cancel         string present once the run is cancelled (value: the reason)
    run:{id}:tests:{batch}  hash   task_id -> TestResult JSON (one hash per chord batch)
    run:{id}:ended:{batch}  hash   task_id -> TaskResult JSON, written by the worker as the case
                                   ends; read and removed by the batch's chord callback
    run:{id}:tasks:{batch}  hash   task_id -> TaskResult JSON, without the embedded result
    run:{id}:summary:{batch} string BatchSummary JSON
    run:{id}:done           set    batches whose chord callback has stored its results
    run:{id}:batch_ends     hash   batch -> how many of its cases ended (recovery.py closes full ones)
    run:{id}:messages:{batch} hash task_id -> task message, until the batch closes (recovery.py
                                   publishes a case again whose message was lost)
    runs                    zset   run ids by submission time
    active                  set    runs not finished yet (the fleet sweep watches them)

Results are kept per batch so that no single value grows with the size of the run,
and are written with HSET keyed by task id, so recording a case twice keeps one result.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .models import TaskResult, TestResult
from .run_state import (  # noqa: F401 - RunInfo and the lifecycle are part of the store's API
    CLOSED,
    INTERRUPTED,
    PUBLISHED,
    PUBLISHER_TTL_SECONDS,
    PUBLISHING,
    RunInfo,
    this_process,
)
from .statistics import BatchSummary, RunStatistics

PREFIX = "dify-runner:"
LUA = Path(__file__).with_name("lua")
# A finisher computes a run's statistics within this long (100k cases: a few seconds); a claim
# older than this is a dead finisher's, and the next finalize (the fleet sweep's) takes it over.
FINISH_CLAIM_MS = 60_000
# Connections a worker's Redis pools hold beyond one per pool thread: its own threads (the
# fleet watch, the call watcher, the lease keeper) and the consumer.
OWN_CONNECTIONS = 16


def connections_for(concurrency: int) -> int:
    """How many Redis connections a worker of ``concurrency`` threads may use at once."""
    return concurrency + OWN_CONNECTIONS


def run_key(run_id: str, *parts: object) -> str:
    """The name of one of a run's keys: ``dify-runner:run:{id}[:part...]``."""
    return PREFIX + ":".join(["run", run_id, *map(str, parts)])


def connect(url: str, max_connections: int = 100) -> redis.Redis:
    """A client for the run store that rides out a Redis restart or a short outage: each
    command is retried with backoff for about half a minute before it fails. Its pool holds
    ``max_connections`` (a worker sizes it from its concurrency) and a thread finding them
    all in use waits for one (redis-py's default pool raises MaxConnectionsError instead,
    which 500 threads met as "internal error" results, issue 17)."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=30,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=25),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=30,
    )
    return redis.Redis(connection_pool=pool)


class RunStore:
    """Run state over a redis-py client. One instance per process is enough."""

    def __init__(self, client: redis.Redis, ttl_seconds: int = 7 * 24 * 3600) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self._record_end = client.register_script((LUA / "record_end.lua").read_text())
        self._recount = client.register_script((LUA / "recount.lua").read_text())
        self._finish_begin = client.register_script((LUA / "finish_begin.lua").read_text())
        self._finish_commit = client.register_script((LUA / "finish_commit.lua").read_text())

    def _key(self, run_id: str, *parts: object) -> str:
        return run_key(run_id, *parts)

    # -- producer side ---------------------------------------------------------------

    def create_run(self, run_id: str, plan_name: str, total: int, batch_count: int, created_at: datetime,
                   pass_rate: float = 1.0, batch_size: int | None = None) -> None:
        key = self._key(run_id)
        pipe = self.redis.pipeline()
        pipe.hset(
            key,
            mapping={
                "run_id": run_id,
                "plan_name": plan_name,
                "total": total,
                "batch_count": batch_count,
                "created_at": created_at.isoformat(),
                "state": "running",
                "pass_rate": pass_rate,
                "publish_state": PUBLISHING,
                "published_batches": 0,
                "published_cases": 0,
                # With total, how many cases each original batch holds (recovery.py).
                "batch_size": batch_size or total or 1,
            },
        )
        pipe.expire(key, self.ttl)
        pipe.set(self._key(run_id, "publisher"), this_process(), ex=PUBLISHER_TTL_SECONDS)
        pipe.zadd(PREFIX + "runs", {run_id: created_at.timestamp()})
        pipe.sadd(PREFIX + "active", run_id)
        pipe.execute()

    def get_run(self, run_id: str) -> RunInfo | None:
        pipe = self.redis.pipeline()
        pipe.hgetall(self._key(run_id))
        pipe.scard(self._key(run_id, "done"))
        pipe.get(self._key(run_id, "publisher"))
        raw, done, publisher = pipe.execute()
        if not raw:
            return None
        fields: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
        if "statistics" in fields:
            fields["statistics"] = json.loads(fields["statistics"])
        fields["batches_done"] = done
        fields["publisher"] = publisher.decode() if publisher is not None else None
        return RunInfo.model_validate(fields)

    def list_runs(self, limit: int = 20) -> list[str]:
        return [r.decode() for r in self.redis.zrevrange(PREFIX + "runs", 0, limit - 1)]

    def progress(self, run_id: str) -> dict[str, int]:
        """Counts of final statuses (each case once), ``retries`` and ``retries_waiting``."""
        pipe = self.redis.pipeline()
        pipe.hgetall(self._key(run_id, "progress"))
        pipe.scard(self._key(run_id, "waiting"))
        raw, waiting = pipe.execute()
        counts = {k.decode(): int(v) for k, v in raw.items()}
        counts["retries_waiting"] = int(waiting)
        return counts

    def mark_published(self, run_id: str, batches: int, cases: int) -> None:
        """Record how much of the run is published, and that its publisher is alive."""
        pipe = self.redis.pipeline()
        pipe.hset(self._key(run_id), mapping={"published_batches": batches, "published_cases": cases})
        pipe.set(self._key(run_id, "publisher"), this_process(), ex=PUBLISHER_TTL_SECONDS)
        pipe.execute()

    def end_publishing(self, run_id: str, state: str) -> None:
        """PUBLISHED, INTERRUPTED or CLOSED: publishing is over, one way or the other."""
        pipe = self.redis.pipeline()
        pipe.hset(self._key(run_id), "publish_state", state)
        pipe.delete(self._key(run_id, "publisher"))
        pipe.execute()

    def start_publishing(self, run_id: str, batch_count: int | None = None) -> None:
        """A resume takes over publishing: mark it as this process's. With ``batch_count``, the
        run waits for that many batches: one more than it has holds it open while the resume
        closes dead batches, so nothing finishes it over its old batches before they are counted."""
        pipe = self.redis.pipeline()
        pipe.hset(self._key(run_id), "publish_state", PUBLISHING)
        if batch_count is not None:
            pipe.hset(self._key(run_id), "batch_count", batch_count)
        pipe.set(self._key(run_id, "publisher"), this_process(), ex=PUBLISHER_TTL_SECONDS)
        pipe.execute()

    def cancel(self, run_id: str, reason: str) -> bool:
        """Flag the run as cancelled; True if this call set the flag."""
        created = bool(self.redis.set(self._key(run_id, "cancel"), reason, nx=True, ex=self.ttl))
        if created:
            self.redis.hsetnx(self._key(run_id), "stop_reason", reason)
        return created

    def persistence(self) -> str | None:
        """A warning when this Redis keeps nothing on disk (a restart would lose results)."""
        try:
            config = self.redis.config_get("appendonly") | self.redis.config_get("save")
        except redis.RedisError:
            return None  # CONFIG is often disabled on managed Redis: nothing to tell
        if config.get("appendonly") == "yes" or config.get("save"):
            return None
        return ("this Redis keeps nothing on disk (appendonly no, no save points): a Redis restart would lose "
                "the run's state and results; enable appendonly, or keep the producer's reports")

    def reopen(self, run_id: str, batch_count: int, stale_waiting: set[str]) -> None:
        """Make a finished, cancelled or stalled run wait for ``batch_count`` batches again, its
        progress counted afresh from its final statuses (recount.lua: in the same step as the
        count is written, so a case ending meanwhile is not lost), and the cases in
        ``stale_waiting`` (their retry's message is gone) no longer waiting."""
        key = self._key(run_id)
        pipe = self.redis.pipeline()  # MULTI: the run reopens in one step
        pipe.hdel(key, "finished_at", "finishing", "statistics", "stop_reason")
        pipe.hset(key, mapping={"state": "running", "batch_count": batch_count,
                                "resumed_at": datetime.now(timezone.utc).isoformat()})
        pipe.delete(self._key(run_id, "cancel"))
        pipe.sadd(PREFIX + "active", run_id)
        self._recount(keys=[self._key(run_id, "final"), self._key(run_id, "progress"), key], args=[self.ttl],
                      client=pipe)
        if stale_waiting:
            pipe.srem(self._key(run_id, "waiting"), *stale_waiting)
        pipe.execute()

    def next_resume_round(self, run_id: str) -> int:
        return int(self.redis.hincrby(self._key(run_id), "resumes", 1))

    def waiting_cases(self, run_id: str) -> set[str]:
        return {m.decode() for m in self.redis.smembers(self._key(run_id, "waiting"))}

    def set_batch_members(self, run_id: str, batch: int, task_ids: list[str]) -> None:
        """Which cases a batch made by ``resume`` holds (the manifest tells it for the others)."""
        key = self._key(run_id, "members", batch)
        pipe = self.redis.pipeline()
        pipe.delete(key)
        if task_ids:
            pipe.sadd(key, *task_ids)
            pipe.expire(key, self.ttl)
        pipe.execute()

    def batch_members(self, run_id: str, batch: int) -> set[str]:
        return {m.decode() for m in self.redis.smembers(self._key(run_id, "members", batch))}

    def keep_messages(self, run_id: str, batch: int, messages: dict[str, str]) -> None:
        """Keep a batch's task messages (task id -> wire JSON) until the batch closes."""
        if messages:
            pipe = self.redis.pipeline()
            pipe.hset(self._key(run_id, "messages", batch), mapping=messages)
            pipe.expire(self._key(run_id, "messages", batch), self.ttl)
            pipe.execute()

    def kept_messages(self, run_id: str, batch: int) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self._key(run_id, "messages", batch)).items()}

    def replace_batch(self, run_id: str, batch: int, dropped: list[str], summary: BatchSummary) -> None:
        """Forget some results of a batch (they are run again: their final status goes too)
        and store its new summary."""
        pipe = self.redis.pipeline()
        if dropped:
            pipe.hdel(self._key(run_id, "tests", batch), *dropped)
            pipe.hdel(self._key(run_id, "tasks", batch), *dropped)
            pipe.hdel(self._key(run_id, "final"), *dropped)
        pipe.set(self._key(run_id, "summary", batch), summary.model_dump_json(), ex=self.ttl)
        pipe.execute()

    # -- worker side -----------------------------------------------------------------

    def cancel_reason(self, run_id: str) -> str | None:
        """Why the run was cancelled, or None while it is not."""
        raw = self.redis.get(self._key(run_id, "cancel"))
        return raw.decode() if raw is not None else None

    def count(self, run_id: str, field: str, by: int = 1) -> int:
        """Add to one of the run's progress counters."""
        key = self._key(run_id, "progress")
        pipe = self.redis.pipeline()
        pipe.hincrby(key, field, by)
        pipe.expire(key, self.ttl)
        return int(pipe.execute()[0])

    def retry_scheduled(self, run_id: str, task_id: str) -> None:
        """A case will be tried again after its countdown: it is waiting until it starts."""
        pipe = self.redis.pipeline()
        pipe.hincrby(self._key(run_id, "progress"), "retries", 1)
        pipe.sadd(self._key(run_id, "waiting"), task_id)
        pipe.expire(self._key(run_id, "waiting"), self.ttl)
        pipe.execute()

    def retry_started(self, run_id: str, task_id: str) -> None:
        self.redis.srem(self._key(run_id, "waiting"), task_id)

    def record_end(self, run_id: str, batch: int, task_id: str, result_json: str, status: str, failed: bool,
                   before: Callable[[redis.client.Pipeline], None] | None = None,
                   pipe: redis.client.Pipeline | None = None) -> int | None:
        """Store a case's TaskResult for its batch's chord callback and count its final status
        (and a failure), once per case (record_end.lua), in one round trip; ``before`` may add
        commands to the same pipeline. Returns the run's failure count when ``failed``, and
        None when the case had already ended (a redelivery: nothing is written). With
        ``pipe``, the command is only queued there (the caller executes it; returns None)."""
        own = pipe is None
        pipe = self.redis.pipeline() if pipe is None else pipe
        if before is not None:
            before(pipe)
        self._record_end(keys=[self._key(run_id, "final"), self._key(run_id, "ended", batch),
                               self._key(run_id, "progress"), self._key(run_id, "waiting"),
                               self._key(run_id, "batch_ends")],
                         args=[task_id, result_json, status, "1" if failed else "0", self.ttl, batch], client=pipe)
        if not own:
            return None
        failures = int(pipe.execute()[-1])
        return None if failures < 0 else failures

    def final_statuses(self, run_id: str) -> dict[str, str]:
        """Every case that ended, with its final status."""
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self._key(run_id, "final")).items()}

    def ended_results(self, run_id: str, batch: int) -> dict[str, bytes]:
        """The TaskResults (JSON) workers stored for a batch, by task id."""
        return {k.decode(): v for k, v in self.redis.hgetall(self._key(run_id, "ended", batch)).items()}

    def batch_count(self, run_id: str) -> int:
        """How many batches the run has now (resume adds some)."""
        return int(self.redis.hget(self._key(run_id), "batch_count") or 0)

    def batches_done(self, run_id: str) -> int:
        return int(self.redis.scard(self._key(run_id, "done")))

    def batch_ends(self, run_id: str, batch: int) -> int:
        """How many cases of ``batch`` have ended."""
        return int(self.redis.hget(self._key(run_id, "batch_ends"), batch) or 0)

    def batch_done(self, run_id: str, batch: int) -> bool:
        return bool(self.redis.sismember(self._key(run_id, "done"), batch))

    def save_batch(
        self,
        run_id: str,
        batch: int,
        task_results: list[TaskResult],
        test_results: list[TestResult],
        summary: BatchSummary,
    ) -> int:
        """Store one chord's results; returns how many batches are done."""
        tests_key, tasks_key = self._key(run_id, "tests", batch), self._key(run_id, "tasks", batch)
        summary_key, done_key = self._key(run_id, "summary", batch), self._key(run_id, "done")
        pipe = self.redis.pipeline()
        if test_results:
            pipe.hset(tests_key, mapping={t.execution_id: t.model_dump_json() for t in test_results})
            pipe.hset(
                tasks_key,
                mapping={t.task_id: t.model_dump_json(exclude={"test_result"}) for t in task_results},
            )
        pipe.set(summary_key, summary.model_dump_json(), ex=self.ttl)
        pipe.delete(self._key(run_id, "ended", batch), self._key(run_id, "messages", batch))  # now in tests/tasks
        pipe.sadd(done_key, batch)
        for key in (tests_key, tasks_key, done_key):
            pipe.expire(key, self.ttl)
        pipe.scard(done_key)
        return int(pipe.execute()[-1])

    def finalize(self, run_id: str) -> bool:
        """Compute the run's statistics once every one of its batches is stored; True for the
        one caller that does. The batch count is the run's own at this moment (finish_begin.lua);
        a resume that reopens the run meanwhile voids the finish (finish_commit.lua), and the
        claim of a finisher killed half way is taken over after FINISH_CLAIM_MS."""
        key = self._key(run_id)
        now = datetime.now(timezone.utc)
        claim = str(int(now.timestamp() * 1000))
        batch_count = int(self._finish_begin(keys=[key, self._key(run_id, "done")],
                                             args=[claim, int(claim) - FINISH_CLAIM_MS]))
        if batch_count < 0:
            return False
        info = self.get_run(run_id)
        assert info is not None
        duration = (now - info.created_at).total_seconds()
        statistics = RunStatistics.from_summaries(self.iter_summaries(run_id, batch_count), duration)
        return bool(self._finish_commit(keys=[key, PREFIX + "active"],
                                        args=[claim, now.isoformat(), statistics.model_dump_json(), run_id]))

    # -- readers ---------------------------------------------------------------------

    def done_batches(self, run_id: str) -> set[int]:
        return {int(b) for b in self.redis.smembers(self._key(run_id, "done"))}

    def batch_summary(self, run_id: str, batch: int) -> BatchSummary | None:
        raw = self.redis.get(self._key(run_id, "summary", batch))
        return None if raw is None else BatchSummary.model_validate_json(raw)

    def batch_results(self, run_id: str, batch: int) -> dict[str, TestResult]:
        """One batch's results, by task id."""
        raw = self.redis.hgetall(self._key(run_id, "tests", batch))
        return {k.decode(): TestResult.model_validate_json(v) for k, v in raw.items()}

    def batch_test_results(self, run_id: str, batch: int) -> list[TestResult]:
        """One batch's results, in task id order."""
        return [result for _, result in sorted(self.batch_results(run_id, batch).items())]

    def iter_summaries(self, run_id: str, batch_count: int) -> Iterator[BatchSummary]:
        for batch in range(batch_count):
            summary = self.batch_summary(run_id, batch)
            if summary is not None:
                yield summary

    def iter_test_results(self, run_id: str, batch_count: int) -> Iterator[TestResult]:
        for batch in range(batch_count):
            yield from self.batch_test_results(run_id, batch)

    def iter_task_results(self, run_id: str, batch_count: int) -> Iterator[TaskResult]:
        for batch in range(batch_count):
            for _, raw in sorted(self.redis.hgetall(self._key(run_id, "tasks", batch)).items()):
                yield TaskResult.model_validate_json(raw)
