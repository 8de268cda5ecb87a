"""Self-healing fleet: a dead worker's cases run again within seconds, and every batch closes.

kombu's Redis transport keeps each delivered, unacknowledged message in its ``unacked``
hash and gives it back only after the visibility timeout (an hour by default): a worker
killed mid-run (an OOM kill, a lost node) would stall its cases for that long. So every
worker runs a ``FleetWatch`` consumer step (a Celery bootstep): a thread that

- **beats**: every HEARTBEAT_SECONDS it writes the delivery tags of the messages it holds
  (received and not acknowledged: running, waiting for a slot, or held for a retry's ETA)
  to ``holds:{node}``, which expires after HOLDS_TTL_MS unless renewed;
- **sweeps**, one worker of the fleet at a time (a lock), every SWEEP_SECONDS:
  a message delivered more than ORPHAN_AFTER seconds ago that no live worker holds is put
  back at the head of its queue (kombu's ``restore_by_tag``): its worker died. Then every
  unfinished run's batches whose cases had all ended at the previous sweep already, and that
  no chord callback closed
  (the callback was lost, gave up, or fired early on a double-counted redelivery) are
  closed from the run store, and the run finished. A published run that has not moved for
  STUCK_AFTER seconds is searched for lost messages (kombu pops a message with BRPOP before
  it records it as unacknowledged: a worker killed in between loses it): a case with no
  final result, no live lease and no message in the broker is published again from the
  copy the run store keeps of its batch's messages until the batch closes.

A message put back while its case still runs (a worker whose heartbeat stalled for longer
than ORPHAN_AFTER) cannot start a second attempt: the case's concurrency lease is named
after it, and a second delivery waits for it (``acquire_slot.lua``). A case with a final
result never runs again (the same script). Keys live in the broker's Redis, beside kombu's.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from celery import Celery, bootsteps
from celery.signals import task_received

from .batches import batch_complete, close_batch
from .live_messages import live_messages
from .messages import CaseMessage
from .run_state import PUBLISHED, RunInfo
from .store import PREFIX, RunStore, run_key
from .tasks import case_signature, runtime

HEARTBEAT_SECONDS = 2.0
# A worker's holds outlive its last beat this long: a beat late by up to this much (a loaded
# machine) is not taken for a death.
HOLDS_TTL_MS = 10_000
# A message must have been delivered this long ago before a sweep may call it orphaned: a live
# worker reports a new message within a beat.
ORPHAN_AFTER = 8.0
SWEEP_SECONDS = 5.0
# A run whose progress has not changed for this long is searched for lost messages; a search
# that finds the run's messages all alive doubles the wait before the next (a run of slow
# cases is not stuck), up to STUCK_MAX.
STUCK_AFTER, STUCK_MAX = 15.0, 300.0
HOLDERS = PREFIX + "holders"  # zset: node -> expiry of its holds (ms)
SWEEP_LOCK = PREFIX + "sweep"

log = logging.getLogger("dify_runner.worker")


def holds_key(node: str) -> str:
    return f"{PREFIX}holds:{node}"


class FleetWatch(bootsteps.StartStopStep):
    """The consumer step that beats and sweeps (see the module's docstring)."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._held: dict[str, Any] = {}  # delivery tag -> celery Request
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Any = None

    def start(self, c: Any) -> None:
        self._consumer = c
        self.node = f"{c.hostname}:{os.getpid()}"
        self._stop.clear()
        task_received.connect(self._received, weak=False)
        self._thread = threading.Thread(target=self._run, args=(c.app,), name="dify-runner-fleet-watch", daemon=True)
        self._thread.start()

    def stop(self, c: Any) -> None:
        task_received.disconnect(self._received)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    shutdown = stop

    def _received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        if sender is self._consumer and request is not None:
            tag = getattr(request.message, "delivery_tag", None)
            if tag is not None:
                self._held[str(tag)] = request

    def _run(self, app: Celery) -> None:
        with app.connection_for_write() as connection:
            if connection.transport.driver_type != "redis":
                return  # other brokers give a dead consumer's messages back by themselves
            channel = connection.default_channel
            sweeper = Sweeper(app, channel)
            next_sweep = time.monotonic() + SWEEP_SECONDS
            while not self._stop.wait(HEARTBEAT_SECONDS):
                try:
                    self._beat(channel.client)
                    if time.monotonic() >= next_sweep:
                        next_sweep = time.monotonic() + SWEEP_SECONDS
                        if channel.client.set(SWEEP_LOCK, self.node, nx=True, px=int(SWEEP_SECONDS * 1000)):
                            sweeper.sweep()
                except Exception:  # noqa: BLE001 - the watch must outlive a Redis outage
                    log.warning("fleet watch: beat or sweep failed", exc_info=True)

    def _beat(self, client: Any) -> None:
        for tag, request in list(self._held.items()):
            if request.acknowledged:
                self._held.pop(tag, None)
        key = holds_key(self.node)
        pipe = client.pipeline()
        pipe.delete(key)
        if self._held:
            pipe.sadd(key, *self._held)
            pipe.pexpire(key, HOLDS_TTL_MS)
        pipe.zadd(HOLDERS, {self.node: int(time.time() * 1000) + HOLDS_TTL_MS})
        pipe.execute()


class Sweeper:
    """One sweep of the fleet: orphaned messages back to their queue, full batches closed."""

    def __init__(self, app: Celery, channel: Any) -> None:
        self.app = app
        self.channel = channel
        self.client = channel.client
        self.store: RunStore = runtime(app).store
        self.restored = self.closed = self.republished = 0

    def sweep(self) -> None:
        self.restore_orphans()
        self.close_full_batches()

    def restore_orphans(self) -> int:
        """Give back the messages of dead workers; returns how many."""
        old = self.client.zrangebyscore(self.channel.unacked_index_key, "-inf", time.time() - ORPHAN_AFTER)
        if not old:
            return 0
        now_ms = int(time.time() * 1000)
        self.client.zremrangebyscore(HOLDERS, "-inf", now_ms)
        live = [n.decode() for n in self.client.zrangebyscore(HOLDERS, now_ms, "+inf")]
        held = self.client.sunion([holds_key(n) for n in live]) if live else set()
        orphans = [tag.decode() for tag in old if tag not in held]
        for tag in orphans:
            self.channel.qos.restore_by_tag(tag, leftmost=True)
        if orphans:
            self.restored += len(orphans)
            log.warning("fleet watch: %d messages of a dead worker put back in the queue", len(orphans))
        return len(orphans)

    def close_full_batches(self) -> int:
        """Close the batches whose cases have all ended and that no chord callback closed."""
        closed = 0
        for raw in self.store.redis.smembers(PREFIX + "active"):
            run_id = raw.decode()
            info = self.store.get_run(run_id)
            if info is None or info.finished:
                self.store.redis.srem(PREFIX + "active", run_id)
                continue
            done = self.store.done_batches(run_id)
            ends = {int(b): int(n) for b, n in self.store.redis.hgetall(run_key(run_id, "batch_ends")).items()}
            # A full batch is closed here only if it was full at an earlier sweep too: its chord
            # callback normally comes within milliseconds and is left to do it.
            full_key = run_key(run_id, "full")
            seen_full = {int(b) for b in self.store.redis.smembers(full_key)}
            for batch in sorted(ends):
                if batch in done or not batch_complete(self.store, run_id, batch, info, ends[batch]):
                    continue
                if batch not in seen_full:
                    self.store.redis.sadd(full_key, batch)
                    self.store.redis.expire(full_key, self.store.ttl)
                elif close_batch(self.store, run_id, batch, info.batch_count, require_complete=True):
                    closed += 1
                    # Info, not a warning: in a long run the callback's message waits behind the
                    # queued cases (10,000 at 5 s: most batches close here), and it is harmless.
                    log.info("fleet watch: run %s batch %d closed (its chord callback had not come)", run_id, batch)
            if self.store.batches_done(run_id) >= info.batch_count:  # a count: the set was read above
                self.store.finalize(run_id)
            elif info.publish_state == PUBLISHED and self._stuck(run_id, info):
                self.republish_lost(run_id, info)
        self.closed += closed
        return closed

    def _stuck(self, run_id: str, info: RunInfo) -> bool:
        """Whether the run's progress has not changed for its current wait (kept in Redis:
        the sweep moves between workers)."""
        key, now = run_key(run_id, "watch"), time.time()
        signature = f"{sum(self.store.progress(run_id).values())}:{info.batches_done}"
        seen = {k.decode(): v.decode() for k, v in self.store.redis.hgetall(key).items()}
        if seen.get("signature") != signature:
            self.store.redis.hset(key, mapping={"signature": signature, "since": now, "wait": STUCK_AFTER})
            self.store.redis.expire(key, self.store.ttl)
            return False
        wait = float(seen.get("wait", STUCK_AFTER))
        if now - float(seen.get("since", now)) < wait:
            return False
        self.store.redis.hset(key, mapping={"since": now, "wait": min(STUCK_MAX, wait * 2)})
        return True

    def republish_lost(self, run_id: str, info: RunInfo) -> int:
        """Publish again the cases of the run's open batches that have no final result, no
        live lease and no message in the broker."""
        live = live_messages(self.app, run_id)
        final = self.store.final_statuses(run_id)
        leased = {m.decode() for m in self.store.redis.zrange(run_key(run_id, "slots"), 0, -1)}
        done = self.store.done_batches(run_id)
        lost = 0
        for batch in range(info.batch_count):
            if batch in done:
                continue
            for task_id, raw in self.store.kept_messages(run_id, batch).items():
                if task_id in final or task_id in live.cases or task_id in leased:
                    continue
                message = CaseMessage.model_validate_json(raw)
                broker_id = f"{run_id}:{task_id}:{batch}:heal{int(time.time())}"
                case_signature(self.app, json.loads(raw), broker_id, message.policy).apply_async()
                lost += 1
        if lost:
            self.republished += lost
            log.warning("fleet watch: run %s had not moved; %d lost messages published again", run_id, lost)
        return lost


def install(app: Celery) -> None:
    """Run a FleetWatch in every worker of ``app``."""
    app.steps["consumer"].add(FleetWatch)
