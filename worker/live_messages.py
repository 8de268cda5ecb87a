"""Which of a run's messages are still in the broker: queued, running, or holding a retry.

``resume`` must never run a case twice on a run that is still going: a case whose message
is alive will end by itself. kombu's Redis transport keeps queued messages in one list per
priority step and delivered, unacknowledged ones (acks_late: running, or waiting for a
retry's countdown) in the ``unacked`` hash.

The lists are read in slices (``live_messages.lua``), so Redis is never held for long. A
message can move while they are read: the unacked hash is read before and after them (a
queued message delivered meanwhile is there), and the whole reading is done twice and the
two joined, so a message that moved to a place already read (a retry or a re-queue published
at the head of the list) in one pass is seen where it rests in the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from celery import Celery

from .store import LUA

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


def queue_keys(queue: str) -> list[str]:
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


SLICE = 2000  # list entries per script call: ~0.1 s of Redis at 2.5 KB a message


def live_messages(app: Celery, run_id: str, passes: int = 2) -> LiveMessages:
    """The run's messages found in the broker in any of ``passes`` readings."""
    client = redis.Redis.from_url(app.conf.broker_url)
    found = LiveMessages()
    try:
        script = client.register_script((LUA / "live_messages.lua").read_text())
        needle = f'"id": "{run_id}:'
        for key in (UNACKED, *queue_keys(app.conf.task_default_queue), UNACKED) * passes:
            start = 0
            while start >= 0:
                *ids, start = script(keys=[key], args=[needle, start, SLICE])
                for raw in ids:
                    found.add(raw.decode() if isinstance(raw, bytes) else str(raw), run_id)
    finally:
        client.close()
    return found
