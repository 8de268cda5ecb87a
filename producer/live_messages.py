"""Which of a run's messages are still in the broker: queued, running, or holding a retry.

``resume`` must never run a case twice on a run that is still going: a case whose message
is alive will end by itself. kombu's Redis transport keeps queued messages in one list per
priority step and delivered, unacknowledged ones (acks_late: running, or waiting for a
retry's countdown) in the ``unacked`` hash; ``live_messages.lua`` reads both atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from celery import Celery

from ..worker.app import QUEUE
from ..worker.store import LUA

# kombu's Redis transport: the priority steps' list names, and the unacked hash.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED = "unacked"


@dataclass
class LiveMessages:
    """The run's messages found in the broker, by case and by batch."""

    cases: set[str] = field(default_factory=set)
    batches: set[int] = field(default_factory=set)

    def add(self, broker_id: str, run_id: str) -> None:
        """Read ``<run_id>:<task_id>:<batch>[:r<n>]`` or ``<run_id>:finish:<batch>[:r<n>]``."""
        parts = broker_id[len(run_id) + 1:].split(":")
        if len(parts) < 2 or not parts[1].isdigit():
            return  # not one of ours (an id from an older version): nothing to read
        if parts[0] != "finish":
            self.cases.add(parts[0])
        self.batches.add(int(parts[1]))


def queue_keys(queue: str = QUEUE) -> list[str]:
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


def live_messages(app: Celery, run_id: str) -> LiveMessages:
    client = redis.Redis.from_url(app.conf.broker_url)
    try:
        script = client.register_script((LUA / "live_messages.lua").read_text())
        ids = script(keys=[*queue_keys(), UNACKED], args=[f'"id": "{run_id}:'])
    finally:
        client.close()
    found = LiveMessages()
    for raw in ids:
        found.add(raw.decode() if isinstance(raw, bytes) else str(raw), run_id)
    return found
